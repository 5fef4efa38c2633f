"""edgepack: package PyTorch models as tested TorchScript Lite, Core ML and ONNX bundles for phones and devices.

The Python API behind the `edgepack` command, on the model object you hold (edgepack/api/):

    import torch, edgepack
    result = edgepack.build(MyNet().eval(), torch.randn(1, 3, 64, 64), target="android")
    result.raise_for_status()

The older form, a BuildRequest naming the model as an importable string, still works and returns a list
of BuildReport:

    from edgepack import BuildRequest, build, parse_input_spec
    reports = build(BuildRequest(targets=["android"], model="mypkg.models:make_net",
                                 inputs=[parse_input_spec("x=1x3x224x224")]))

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
    "build": "api",
    "doctor": "api",
    "verify": "api",
    "inspect": "api",
    "BuildResult": "api",
    "Bundle": "api",
    "Artifact": "api",
    "Diagnosis": "api",
    "BuildFailed": "api",
    "diagnose": "pipeline",
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
    "doctor",
    "verify",
    "inspect",
    "BuildResult",
    "Bundle",
    "Artifact",
    "Diagnosis",
    "BuildFailed",
    "diagnose",
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
    from .api import Artifact, BuildFailed, BuildResult, Bundle, Diagnosis, build, doctor, inspect, verify
    from .bundle.inspect import inspect_bundle
    from .bundle.verify import verify_bundle
    from .capture.ladder import CaptureError
    from .errors import BuildError, EdgepackError, UsageError
    from .inputs import InputSpec, parse_input_spec
    from .pipeline import BuildRequest, diagnose
    from .report import ArtifactReport, BuildReport


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'edgepack' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
