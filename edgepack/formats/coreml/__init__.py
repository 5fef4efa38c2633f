"""Core ML (.mlpackage ML programs), checked off macOS by a NumPy reference executor."""

from .format import CoreML

__all__ = ["CoreML"]
