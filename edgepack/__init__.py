"""edgepack: package PyTorch models as tested TorchScript Lite, Core ML and ONNX bundles for phones and devices."""

__version__ = "0.1.0"

from . import hygiene as _hygiene  # noqa: E402  (before torch or onnxruntime load: telemetry off, no temp litter)

_hygiene.apply()
