"""Exporting backbones to other runtimes: ONNX graphs checked against PyTorch."""
