"""Patterns users bring that are not Hugging Face models: a text encoder built from nn.TransformerEncoder,
a YOLO-style detection head that caches its anchor grid, a counter (real state), an output whose size
depends on the data, an anchor-box head traced at one shape."""

from __future__ import annotations

import torch
from torch import nn


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


class Detect(nn.Module):
    """Ultralytics YOLOv5's `Detect` head as it ships (models/yolo.py), small: per level a 1x1 conv, then box
    centres and sizes from an anchor grid cached in `self.grid[i]`/`self.anchor_grid[i]` (lists of tensors) on
    the first call, rebuilt only when the feature map's size changes."""

    def __init__(self, nc: int = 2, anchors=((10, 13, 16, 30), (30, 61, 62, 45)), ch=(8, 16)) -> None:
        super().__init__()
        self.nc, self.no = nc, nc + 5
        self.nl, self.na = len(anchors), len(anchors[0]) // 2
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.stride = torch.tensor([4.0, 8.0])

    def forward(self, x: list[torch.Tensor]):
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if self.grid[i].shape[2:4] != x[i].shape[2:4]:
                self.grid[i], self.anchor_grid[i] = self._make_grid(nx, ny, i)
            xy, wh, conf = x[i].sigmoid().split((2, 2, self.nc + 1), 4)
            xy = (xy * 2 + self.grid[i]) * self.stride[i]
            wh = (wh * 2) ** 2 * self.anchor_grid[i]
            z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        return torch.cat(z, 1), x

    def _make_grid(self, nx: int, ny: int, i: int):
        d, t = self.anchors[i].device, self.anchors[i].dtype
        shape = 1, self.na, ny, nx, 2
        y, x = torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t)
        yv, xv = torch.meshgrid(y, x, indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
        anchor_grid = (self.anchors[i] * self.stride[i]).view((1, self.na, 1, 1, 2)).expand(shape)
        return grid, anchor_grid


class TinyYolo(nn.Module):
    """Two strided conv levels (strides 4 and 8) feeding the Detect head."""

    def __init__(self) -> None:
        super().__init__()
        self.p1 = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.SiLU())
        self.p2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.SiLU())
        self.detect = Detect()

    def forward(self, image: torch.Tensor):
        a = self.p1(image)
        return self.detect([a, self.p2(a)])


def make_tiny_yolo() -> TinyYolo:
    torch.manual_seed(0)
    return TinyYolo().eval()


class CallCounter(nn.Module):
    """Real state: every call changes what the next one returns."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x) * self.calls


class KeepAboveThreshold(nn.Module):
    """Detection post-processing in small: scores, then only the boxes above a threshold (`x[mask]`)."""

    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Linear(4, 1)

    def forward(self, boxes: torch.Tensor) -> torch.Tensor:
        scores = self.score(boxes).squeeze(-1).sigmoid()
        return boxes[scores > 0.5]


def make_keep_above_threshold() -> KeepAboveThreshold:
    torch.manual_seed(0)
    return KeepAboveThreshold().eval()


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
