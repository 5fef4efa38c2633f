"""ONNX (.onnx, and the .ort flatbuffer for reduced onnxruntime builds)."""

from .format import Onnx

__all__ = ["Onnx"]
