"""Small models for the tests: shapes and output types that users really have."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


class TinyEncoderClassifier(nn.Module):
    """Token ids -> embedding -> one self-attention block with LayerNorm and a GELU MLP -> dict outputs."""

    def __init__(self, vocab: int = 50, width: int = 32, heads: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.norm2 = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.embed(ids)
        batch, seq, width = x.shape
        q, k, v = self.qkv(x).reshape(batch, seq, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(width // self.heads), dim=-1)
        x = self.norm1(x + self.proj((attn @ v).transpose(1, 2).reshape(batch, seq, width)))
        x = self.norm2(x + self.mlp(x))
        pooled = x.mean(dim=1)
        return {"logits": self.head(pooled), "pooled": pooled}


def make_encoder() -> TinyEncoderClassifier:
    torch.manual_seed(0)
    return TinyEncoderClassifier()


class TwoInputNet(nn.Module):
    """An image and a feature vector, the vector keyword-only; returns a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.meta = nn.Linear(4, 8)
        self.out = nn.Linear(16, 2)

    def forward(self, image: torch.Tensor, *, meta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.cat([self.conv(image).flatten(1), torch.relu(self.meta(meta))], dim=1)
        return self.out(features), features


def make_two_input() -> TwoInputNet:
    torch.manual_seed(1)
    return TwoInputNet().eval()


@dataclass
class SegmenterOutput:
    """Shaped like a Hugging Face ModelOutput, as a plain dataclass."""

    mask: torch.Tensor
    score: torch.Tensor
    aux: torch.Tensor | None = None


class DataclassOutputNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> SegmenterOutput:
        mask = torch.sigmoid(self.conv(x))
        return SegmenterOutput(mask=mask, score=mask.mean(dim=(1, 2, 3)))


class NeedsArguments(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def make_small_linear() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))


not_a_module = 42
