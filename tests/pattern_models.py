"""Patterns users bring that are not Hugging Face models: a text encoder built from nn.TransformerEncoder,
a YOLO-style detection head that caches its anchor grid, a counter (real state), an output whose size
depends on the data, an anchor-box head traced at one shape."""

from __future__ import annotations

import torch
from torch import nn

from edgepack.benchmarks.patterns import Detect, KeepAboveThreshold, TinyYolo, make_keep_above_threshold, make_tiny_yolo  # noqa: F401 (the tests build them by this file's path)


class TextEncoder(nn.Module):
    """Token ids -> nn.Embedding -> nn.TransformerEncoder (2 layers) -> mean pool -> classes."""

    def __init__(self, vocab: int = 64, width: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, 2, 32, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(ids)).mean(dim=1))


def make_text_encoder() -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder().eval()


class CallCounter(nn.Module):
    """Real state: every call changes what the next one returns."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x) * self.calls


class AnchorBoxes(nn.Module):
    """Anchor centres built in a Python list from the feature map's size: a trace at one size silently computes
    another size's anchors wrongly (the list is baked in)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        height, width = int(y.shape[2]), int(y.shape[3])
        centres = torch.tensor([[i + 0.5, j + 0.5] for i in range(height) for j in range(width)])
        return y.flatten(2).transpose(1, 2) + centres


def make_anchor_boxes() -> AnchorBoxes:
    torch.manual_seed(0)
    return AnchorBoxes().eval()


class _KVLayer:
    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values


class KVCache:
    """The shape of transformers' DynamicCache without transformers: built from (key, value) pairs, `.layers`."""

    def __init__(self, pairs=()) -> None:
        self.layers = [_KVLayer(k, v) for k, v in pairs]


class TinyCausalLM(nn.Module):
    """A two-layer decoder as Hugging Face's are called: `cache=None` on the first call, the returned cache fed
    back on the next; each layer attends over past + new keys and returns the grown cache."""

    def __init__(self, vocab: int = 50, dim: int = 16, heads: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.embed = nn.Embedding(vocab, dim)
        self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim) for _ in range(layers))
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None):
        x = self.embed(input_ids)
        batch, seq, _ = x.shape
        grown = []
        for index, qkv in enumerate(self.qkv):
            q, k, v = (t.view(batch, seq, self.heads, self.head_dim).transpose(1, 2) for t in qkv(x).chunk(3, -1))
            if cache is not None:
                k = torch.cat([cache.layers[index].keys, k], dim=2)
                v = torch.cat([cache.layers[index].values, v], dim=2)
            grown.append((k, v))
            attended = torch.softmax(q @ k.transpose(-1, -2) / self.head_dim**0.5, dim=-1) @ v
            x = x + attended.transpose(1, 2).reshape(batch, seq, -1)
        return {"logits": self.head(x), "past_key_values": KVCache(grown)}


def make_tiny_causal_lm() -> TinyCausalLM:
    torch.manual_seed(0)
    return TinyCausalLM().eval()


class RotaryLike(nn.Module):
    """Rotary embeddings' frequencies and BERT's token-type ids as Hugging Face keeps them: non-persistent
    buffers (in the exported program's constants, not its state dict)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = torch.arange(x.shape[1], dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        return self.proj(x) * torch.cat([angles.cos(), angles.sin()], dim=-1)


def make_rotary_like() -> RotaryLike:
    torch.manual_seed(0)
    return RotaryLike().eval()


class PoolNet(nn.Module):
    """U-Net's down step as written everywhere: F.max_pool2d(x, 2), the stride left to its default."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)


def make_pool_net() -> PoolNet:
    torch.manual_seed(0)
    return PoolNet().eval()


class ClampsWhileTraced(nn.Module):
    """Hugging Face Swin's set_shift_and_window_size: an attribute reassigned as a tensor only under
    torch.jit.is_tracing() (an int in eager), which a later torch.export would branch on."""

    def __init__(self) -> None:
        super().__init__()
        self.window = 4
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] <= self.window:
            self.window = torch.min(torch.tensor(x.shape[-1])) if torch.jit.is_tracing() else x.shape[-1]
        return self.proj(x) * self.window


def make_clamps_while_traced() -> ClampsWhileTraced:
    torch.manual_seed(0)
    return ClampsWhileTraced().eval()
