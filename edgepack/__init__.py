"""edgepack: package PyTorch models as tested TorchScript Lite, Core ML and ONNX bundles for phones and devices."""

__version__ = "0.1.0"
