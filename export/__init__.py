"""Model directory -> ONNX graphs -> TensorRT engines / ONNX Runtime artifacts + manifest (see the export issue)."""
