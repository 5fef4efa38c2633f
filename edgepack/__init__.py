"""edgepack: package PyTorch models as tested TorchScript Lite, Core ML and ONNX bundles for phones and devices.

The Python API behind the `edgepack` command:

    from edgepack import BuildRequest, build, parse_input_spec
    reports = build(BuildRequest(targets=["android"], model="mypkg.models:make_net",
                                 inputs=[parse_input_spec("x=1x3x224x224")]))
    assert all(r.ok for r in reports)

Names are imported on first use, so that `edgepack verify` and `inspect` (and `import edgepack`) do not
load torch and the converters.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Before torch or onnxruntime load: onnxruntime telemetry off, no temp-folder litter (see edgepack/hygiene.py).
from . import hygiene as _hygiene

_hygiene.apply()

# Public name -> the module that defines it.
_EXPORTS = {
    "build": "pipeline",
    "diagnose": "pipeline",
    "doctor": "pipeline",
    "BuildRequest": "pipeline",
    "BuildReport": "report",
    "ArtifactReport": "report",
    "InputSpec": "inputs",
    "parse_input_spec": "inputs",
    "verify_bundle": "bundle.verify",
    "inspect_bundle": "bundle.inspect",
    "EdgepackError": "errors",
    "UsageError": "errors",
    "BuildError": "errors",
    "CaptureError": "capture.ladder",
}

__all__ = [
    "__version__",
    "build",
    "diagnose",
    "doctor",
    "BuildRequest",
    "BuildReport",
    "ArtifactReport",
    "InputSpec",
    "parse_input_spec",
    "verify_bundle",
    "inspect_bundle",
    "EdgepackError",
    "UsageError",
    "BuildError",
    "CaptureError",
]

if TYPE_CHECKING:
    from .bundle.inspect import inspect_bundle
    from .bundle.verify import verify_bundle
    from .capture.ladder import CaptureError
    from .errors import BuildError, EdgepackError, UsageError
    from .inputs import InputSpec, parse_input_spec
    from .pipeline import BuildRequest, build, diagnose, doctor
    from .report import ArtifactReport, BuildReport


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'edgepack' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
