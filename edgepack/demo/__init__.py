"""Built-in demo model: a small CNN trained on the UCI 8x8 handwritten digits.

The data (``digits.npz``, with fixed train/calib/eval splits) and the trained
weights (``weights.pt``) ship with the package; see ``DATA.md`` for provenance.
Retrain with ``python -m edgepack.demo.train``.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DigitNet",
    "INPUT_NAME",
    "INPUT_SHAPE",
    "LABELS",
    "MEAN",
    "OUTPUT_NAME",
    "PREPROCESSING",
    "SPLITS",
    "STD",
    "load_split",
    "make_model",
    "preprocess",
]

INPUT_NAME = "image"
INPUT_SHAPE = (1, 1, 32, 32)
OUTPUT_NAME = "logits"
LABELS = [str(d) for d in range(10)]
SPLITS = ("train", "calib", "eval")

# Mean/std of the train split after /16 and the 32x32 bilinear resize,
# computed once and frozen so preprocessing never depends on the data at hand.
MEAN = 0.3051
STD = 0.3235

_SCALE = 1.0 / 16.0
_SIZE = (32, 32)

PREPROCESSING: dict[str, Any] = {
    "source": "8x8 grayscale, values 0..16",
    "scale": _SCALE,
    "resize": list(_SIZE),
    "resize_mode": "bilinear",
    "align_corners": False,
    "mean": MEAN,
    "std": STD,
    "layout": "NCHW",
}

_DATA_FILE = "digits.npz"
_WEIGHTS_FILE = "weights.pt"


def _block(c_in: int, c_out: int) -> nn.Sequential:
    # bias=False: BatchNorm's shift makes a conv bias redundant.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class DigitNet(nn.Module):
    """CNN for (N, 1, 32, 32) float32 images -> (N, 10) logits.

    Three conv/BN/ReLU blocks (32 -> 16 -> 8 spatial), global average pooling,
    dropout and a linear head; only static-shape ops, so it traces and converts
    cleanly to TorchScript, Core ML and ONNX.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _block(1, 16),
            nn.MaxPool2d(2),
            _block(16, 32),
            nn.MaxPool2d(2),
            _block(32, 64),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(64, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(image))
        return self.head(self.dropout(torch.flatten(x, 1)))


def make_model() -> DigitNet:
    """Build a DigitNet with the shipped trained weights, in eval mode."""
    model = DigitNet()
    with files(__name__).joinpath(_WEIGHTS_FILE).open("rb") as f:
        state = torch.load(f, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def preprocess(images_u8: np.ndarray) -> torch.Tensor:
    """(N, 8, 8) uint8 values 0..16 -> normalized (N, 1, 32, 32) float32."""
    images = np.asarray(images_u8)
    if images.ndim != 3 or images.shape[1:] != (8, 8):
        raise ValueError(f"expected images of shape (N, 8, 8), got {images.shape}")
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1) * _SCALE
    x = F.interpolate(x, size=_SIZE, mode="bilinear", align_corners=False)
    return (x - MEAN) / STD


def _load_data() -> dict[str, np.ndarray]:
    with files(__name__).joinpath(_DATA_FILE).open("rb") as f, np.load(f) as npz:
        return {k: npz[k] for k in npz.files}


def load_split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (preprocessed images, int64 labels) for "train", "calib" or "eval"."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
    data = _load_data()
    idx = data[f"{name}_idx"]
    labels = torch.from_numpy(data["labels"][idx].astype(np.int64))
    return preprocess(data["images"][idx]), labels
