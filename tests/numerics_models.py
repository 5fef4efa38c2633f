"""Small models for tests/test_numerics.py, in a file of their own so that `--model path.py:attr` can load them."""

from __future__ import annotations

import torch
from torch import nn


class Overflow(nn.Module):
    """An intermediate above fp16's largest value (65504): fine in fp32, inf in an fp16 program."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.out = nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.inner(x) * 1e5 / 1e5))


def make_overflow() -> Overflow:
    torch.manual_seed(0)
    return Overflow().eval()


class SeqFeatures(nn.Module):
    """unsqueeze on a (1, SEQ) input: an expand_dims whose declared input shape is symbolic."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(-1.0, 1.0, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x.unsqueeze(-1) * self.scale)
