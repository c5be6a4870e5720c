"""Exporting the graph to ONNX (float32, float16, int8, in-graph maps, raw pixels) and validating it."""
