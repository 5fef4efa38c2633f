"""ExecuTorch (.pte): PyTorch's on-device runtime, with the XNNPACK and Core ML delegates."""

from .format import ExecuTorch

__all__ = ["ExecuTorch"]
