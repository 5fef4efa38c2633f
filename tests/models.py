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


class _ScriptedBranch(nn.Module):
    """Scripted: data-dependent branches that create tensors on a literal device and on a parameter's."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.full((4,), 0.25))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if bool(h.sum() > 0):
            bias = torch.ones(h.shape[-1], device=torch.device("cpu"))
        else:
            bias = torch.full([h.shape[-1]], 2.0, device=self.offset.device)
        return h * bias + self.offset


class _PlacesOnItsInput(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + torch.linspace(0.0, 1.0, h.shape[-1], device=h.device)


class DevicePatterns(nn.Module):
    """Every placement pattern a GPU trace pins (see edgepack.rewrite), in one model: factories with
    device=x.device, x.to(self.weight.device), torch.tensor(..., device=...), a plain tensor
    attribute, masks built from constants, a submodule that places tensors, a scripted branch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4) * 0.5)
        self.lin = nn.Linear(4, 4)
        self.scale = torch.tensor([1.0, 2.0, 3.0, 4.0])  # neither parameter nor buffer
        self.keep = torch.tensor([True, False, True, True])
        self.inner = _PlacesOnItsInput()
        self.branch = torch.jit.script(_ScriptedBranch())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        base = torch.zeros(x.shape[0], 4, device=x.device) + torch.arange(4, device=x.device)
        h = x.to(self.weight.device) @ self.weight
        h = h * torch.tensor([0.5, 1.0, 1.5, 2.0], device=x.device) * self.scale
        picked = h[:, self.keep]
        causal = torch.tril(torch.ones(4, 4, device=x.device)).bool()
        h = self.inner(self.lin(h + base)) + (h.unsqueeze(-1) * causal).sum(-1)
        return self.branch(h), picked


def make_device_patterns() -> DevicePatterns:
    torch.manual_seed(0)
    return DevicePatterns().eval()


class TorchEncoderLayer(nn.Module):
    """nn.TransformerEncoderLayer: at inference without grad it takes a fused fast path."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def make_torch_encoder_layer() -> TorchEncoderLayer:
    torch.manual_seed(0)
    return TorchEncoderLayer().eval()


def make_tiny_minilm() -> nn.Module:
    """The benchmark's encoder, tiny: its positions come from torch.arange(..., device=ids.device)."""
    from edgepack.benchmarks.models import MiniLMEncoder

    torch.manual_seed(0)
    return MiniLMEncoder(layers=1, width=32, heads=2, ffn=64, vocab=100, max_tokens=32).eval()


class TinyRecurrent(nn.Module):
    """A keyword-spotter shape: a projection, an LSTM over a variable number of frames (dimension 1) and a head.
    Static int8 quantizes the Linear layers, not the LSTM."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 8)
        self.rnn = nn.LSTM(8, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.rnn(torch.relu(self.proj(x)))
        return self.head(hidden[:, -1])


def make_tiny_recurrent() -> TinyRecurrent:
    torch.manual_seed(0)
    return TinyRecurrent().eval()


class QRHead(nn.Module):
    """torch.linalg.qr has no ONNX conversion in either of torch's exporters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.qr(x)[1]


class BoundedLength(nn.Module):
    """Learned positions for at most 8 steps: longer sequences fail in eager PyTorch itself."""

    def __init__(self) -> None:
        super().__init__()
        self.positions = nn.Parameter(torch.linspace(0, 1, 32).reshape(1, 8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.positions[:, : x.shape[1]]


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


class ExportOnlyBranch(nn.Module):
    """Computes something else while torch.export traces it: an exported program that silently differs from eager."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            return self.linear(x) * 2
        return self.linear(x)
