"""Retrain the demo DigitNet reproducibly: ``python -m edgepack.demo.train [--out PATH]``.

Trains on the train split only (CPU, 2 threads, fixed seed, deterministic ops)
and writes a plain state_dict. Calib and eval splits are only measured.

No augmentation: the UCI digits are already centred and size-normalised, and
random shifts/rotations lowered calib accuracy over three seeds; dropout,
weight decay and label smoothing are the regularisers instead.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch import nn

from edgepack.demo import DigitNet, load_split

SEED = 0
EPOCHS = 30
BATCH_SIZE = 64
LR = 1e-2
WEIGHT_DECAY = 1e-4
DEFAULT_OUT = Path(__file__).with_name("weights.pt")


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def train(epochs: int = EPOCHS) -> DigitNet:
    """Train a fresh DigitNet on the train split and return it in eval mode."""
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    x, y = load_split("train")
    model = DigitNet()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = epochs * math.ceil(len(x) / BATCH_SIZE)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), BATCH_SIZE):
            idx = perm[i : i + BATCH_SIZE]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 5 == 0:
            print(f"epoch {epoch + 1:3d}  loss {total / len(x):.4f}", flush=True)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="state_dict output path")
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    model = train()
    for split in ("train", "calib", "eval"):
        print(f"{split} accuracy: {accuracy(model, *load_split(split)):.4f}")
    torch.save(model.state_dict(), args.out)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params}  wrote {args.out}  ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
