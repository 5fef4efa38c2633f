"""Small models for the Core ML checks (tests/test_coreml_checks.py), loadable by file path."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Declared provenance: the Core ML metadata takes author and license from here (version is not declared).
__author__ = "edgepack test suite"
__license__ = "MIT"


class SmallCNN(nn.Module):
    """Three weight tensors above the compression threshold (648, 6912 and 768 elements)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 24, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(24, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(32, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CausalAttention(nn.Module):
    """Attention from plain ops plus F.scaled_dot_product_attention (one Core ML op from iOS18 on)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).reshape(x.shape[0], x.shape[1], 3, 2, 8).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class Warp(nn.Module):
    """grid_sample on a computed grid becomes Core ML's `resample` (bilinear, zero padding)."""

    def __init__(self) -> None:
        super().__init__()
        self.flow = nn.Conv2d(2, 2, 3, padding=1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, 6), torch.linspace(-1, 1, 6), indexing="ij")
        self.register_buffer("base", torch.stack([xs, ys], -1)[None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.base + 0.1 * torch.tanh(self.flow(x)).permute(0, 2, 3, 1)
        return F.grid_sample(x, grid, align_corners=False)


class AffineWarp(nn.Module):
    """affine_grid feeding grid_sample becomes Core ML's `affine`, an op the reference executor does not implement."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.register_buffer("theta", torch.tensor([[[0.9, 0.1, 0.05], [-0.1, 1.1, 0.0]]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = F.affine_grid(self.theta, [1, 2, 6, 6], align_corners=True)
        return F.grid_sample(self.conv(x), grid, align_corners=True)


def make_small_cnn() -> SmallCNN:
    torch.manual_seed(5)
    return SmallCNN().eval()
