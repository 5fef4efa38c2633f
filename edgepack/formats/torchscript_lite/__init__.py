"""TorchScript Lite (.ptl): the legacy PyTorch Mobile runtime."""

from .format import TorchScriptLite

__all__ = ["TorchScriptLite"]
