"""Patterns users bring that are not Hugging Face models, for the coverage benchmark (and the tests): a YOLOv5-style
detection head caching its anchor grid, detection post-processing with a data-dependent output size, an LSTM
keyword spotter and a small U-Net."""

from __future__ import annotations

import torch
from torch import nn


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
        self.anchors: torch.Tensor
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


class LstmKeywordSpotter(nn.Module):
    """Frames of audio features -> 2-layer LSTM -> the last step's logits (a keyword spotter)."""

    def __init__(self, features: int = 6, hidden: int = 16, keywords: int = 4) -> None:
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, keywords)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def make_lstm_kws() -> LstmKeywordSpotter:
    torch.manual_seed(0)
    return LstmKeywordSpotter().eval()


class UNet(nn.Module):
    """Two down levels, a bottleneck, two up levels with skip connections (transposed convolutions)."""

    def __init__(self, channels: int = 8, classes: int = 2) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            )

        c = channels
        self.down1, self.down2, self.mid = block(3, c), block(c, 2 * c), block(2 * c, 4 * c)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2), block(4 * c, 2 * c)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2), block(2 * c, c)
        self.out = nn.Conv2d(c, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(nn.functional.max_pool2d(d1, 2))
        m = self.mid(nn.functional.max_pool2d(d2, 2))
        u2 = self.dec2(torch.cat([self.up2(m), d2], 1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], 1))
        return self.out(u1)


def make_unet() -> UNet:
    torch.manual_seed(0)
    return UNet().eval()
