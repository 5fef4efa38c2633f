"""edgepack: package PyTorch models as tested TorchScript Lite, Core ML and ONNX bundles for phones and devices."""

__version__ = "0.1.0"

# Before torch or onnxruntime load: onnxruntime telemetry off, no temp-folder litter (see edgepack/hygiene.py).
from . import hygiene as _hygiene

_hygiene.apply()
