"""Running an exported model: the session, its backends (ONNX Runtime, OpenVINO, torch), int8 making."""
