"""Torch to ONNX export, graph checks and numeric parity against torch, and the model card."""
