"""Models for the `--precision auto` tests."""

from __future__ import annotations

import torch
from torch import nn


class NearTies(nn.Module):
    """Class scores that differ by ~1e-3 on top of a shared weight of 1.0: int8's step (max|w| / 127, ~0.008)
    is wider than the differences, so every int8 scheme loses the model's top-1 answer; fp32 keeps it."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.scores = nn.Linear(16, 8, bias=False)
        with torch.no_grad():
            self.scores.weight.copy_(1.0 + 1e-3 * torch.randn(8, 16, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores(x)


def make_near_ties() -> NearTies:
    return NearTies()
