"""Deployment formats. Adding one means adding a folder here (formats/<name>/) and naming it in a target file."""

from ..errors import RuntimeUnavailable
from . import coreml, executorch, onnx, torchscript_lite  # noqa: F401  (each registers its format)
from .base import FORMATS, Emitted, Format, Runner, get_format, register_format

__all__ = [
    "FORMATS",
    "Emitted",
    "Format",
    "Runner",
    "RuntimeUnavailable",
    "get_format",
    "register_format",
    "known_options",
]


def known_options() -> dict[str, set[str]]:
    """Format name -> option keys a target may set, for validating target files."""
    return {name: set(fmt.option_defaults) for name, fmt in FORMATS.items()}
