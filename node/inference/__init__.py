"""Model registry, card-driven preprocessing, ONNX Runtime inference, measurements and QC."""
