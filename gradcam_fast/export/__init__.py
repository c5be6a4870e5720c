"""Export to ONNX (float32, float16, int8, in-graph maps, raw pixels) and its validation."""
