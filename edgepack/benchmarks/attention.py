"""The cost of running on the lite runtime apps have: a .ptl with torch 2.x's fused attention
(aten::scaled_dot_product_attention, which pytorch_android_lite 1.13.1 cannot load) against the .ptl
edgepack ships (attention rewritten to matmul, scale, mask, softmax and matmul), both timed in torch's
own lite interpreter on this host, beside eager PyTorch, in one interleaved run.

    python -m edgepack.benchmarks.attention [--quick] [--threads N] [--json PATH]

Models at MiniLM size (6 layers, 384 wide, 12 heads, GELU, 1536 feed-forward; token ids 1x128):
nn.TransformerEncoder (no mask), and Hugging Face-style layers calling F.scaled_dot_product_attention
with the padding mask as an additive float mask (the last quarter of the tokens padded).
Host figures: a phone's CPU differs; the ratio between the two .ptl rows is what this measures.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import jsonio
from ..bench import time_interleaved, torch_threads
from ..capture.ladder import capture
from ..formats import FORMATS
from ..formats.torchscript_lite import rewrites
from ..hostarch import host_cpu
from ..inputs import InputSpec, sample_inputs
from ..load import LoadedModel
from ..paths import scratch_folder
from ..targets import BenchSettings, Budgets, FormatSettings, Tolerance

FULL = BenchSettings(threads=2, warmup=10, min_runs=100, max_runs=2000, min_seconds=20.0)
QUICK = BenchSettings(threads=2, warmup=3, min_runs=20, max_runs=300, min_seconds=3.0)
TOKENS = 128


class TransformerEncoderModel(nn.Module):
    """Token ids -> nn.TransformerEncoder at MiniLM size -> mean-pooled (torch's own attention module)."""

    def __init__(self, layers: int = 6, width: int = 384, heads: int = 12, ffn: int = 1536, vocab: int = 30522) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(width, heads, ffn, activation="gelu", batch_first=True), layers
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embed(input_ids)).mean(dim=1)


class HFStyleLayer(nn.Module):
    """A BERT layer as Hugging Face's SDPA attention writes it: separate projections and
    F.scaled_dot_product_attention with the padding mask as an additive float mask."""

    def __init__(self, width: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(width, width) for _ in range(4))
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, ffn), nn.GELU(), nn.Linear(ffn, width))

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, tokens, self.heads, width // self.heads).transpose(1, 2)

        context = F.scaled_dot_product_attention(
            split(self.query(x)), split(self.key(x)), split(self.value(x)), attn_mask=additive_mask
        )
        x = self.norm1(x + self.out(context.transpose(1, 2).reshape(batch, tokens, width)))
        return self.norm2(x + self.ffn(x))


class HFStyleEncoder(nn.Module):
    """Token ids and a 1/0 attention mask -> 6 HF-style layers at MiniLM size -> mean-pooled."""

    def __init__(self, layers: int = 6, width: int = 384, heads: int = 12, ffn: int = 1536, vocab: int = 30522) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.layers = nn.ModuleList(HFStyleLayer(width, heads, ffn) for _ in range(layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        additive = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, additive)
        return x.mean(dim=1)


@dataclass
class Result:
    case: str
    candidate: str
    p50_ms: float
    p90_ms: float
    runs: int
    max_abs_err: float | None
    missing_in_runtime: list[str]
    capture: str = ""


def run_case(
    name: str, model: nn.Module, specs: list[InputSpec], settings: BenchSettings, workdir: Path
) -> list[Result]:
    model = model.eval()
    samples = [sample_inputs(specs, model, seed) for seed in range(2)]
    if len(specs) > 1:  # right padding: the last quarter of the tokens masked out
        for sample in samples:
            sample["attention_mask"] = torch.ones(1, TOKENS, dtype=torch.int64)
            sample["attention_mask"][:, -TOKENS // 4 :] = 0
    captured = capture(
        LoadedModel(re.sub(r"[^A-Za-z0-9._-]+", "_", name), model, specs, {"kind": "benchmark"}), samples
    )
    fmt = FORMATS["torchscript_lite"]
    options = FormatSettings("torchscript_lite", "fp32", Tolerance(), Budgets(), {})
    emitted = {"ptl rewritten (ships)": fmt.emit(captured, options, workdir / f"{captured.loaded.name}-rewritten.ptl")}
    saved_rules = dict(rewrites.RULES)
    rewrites.RULES.clear()  # the same emit without rewrites: torch 2.13's own operators
    try:
        emitted["ptl native sdpa"] = fmt.emit(captured, options, workdir / f"{captured.loaded.name}-native.ptl")
    finally:
        rewrites.RULES.update(saved_rules)
    inputs = [samples[0][spec.name].numpy() for spec in specs]
    runners = {label: fmt.open(e.path, settings.threads) for label, e in emitted.items()}
    errors = {
        label: float(max(np.abs(got - want).max() for got, want in zip(run(inputs), captured.expected[0])))
        for label, run in runners.items()
    }
    tensors = tuple(samples[0][spec.name] for spec in specs)
    calls: dict[str, Callable[[], Any]] = {"eager": functools.partial(captured.eager, *tensors)}
    calls.update({label: functools.partial(run, inputs) for label, run in runners.items()})
    with torch_threads(settings.threads), torch.inference_mode():
        timed = time_interleaved(calls, settings)
    results = []
    for label, latency in timed.items():
        check = emitted[label].requirements["runtime_check"] if label in emitted else None
        results.append(
            Result(
                name,
                label,
                latency.p50,
                latency.p90,
                latency.runs,
                errors.get(label),
                [m["operator"] for m in check["missing"]] if check else [],
                captured.strategy,
            )
        )
    return results


def markdown(results: list[Result], threads: int) -> str:
    lines = [
        f"Host: {host_cpu()}, {threads} threads, batch 1, torch {torch.__version__} (its lite interpreter runs both .ptl)",
        "",
        "| model (capture) | candidate | p50 ms | p90 ms | vs native .ptl | max abs err vs eager | loads on pytorch_android_lite 1.13.1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        native = next(r for r in results if r.case == result.case and r.candidate == "ptl native sdpa")
        loads = (
            ""
            if result.candidate == "eager"
            else ("yes" if not result.missing_in_runtime else "no: lacks " + ", ".join(result.missing_in_runtime))
        )
        error = "" if result.max_abs_err is None else f"{result.max_abs_err:.2e}"
        lines.append(
            f"| {result.case} ({result.capture}) | {result.candidate} | {result.p50_ms:.2f} | {result.p90_ms:.2f} | "
            f"{result.p50_ms / native.p50_ms:.2f}x | {error} | {loads} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgepack.benchmarks.attention",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer timed runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    options = parser.parse_args(argv)
    base = QUICK if options.quick else FULL
    settings = BenchSettings(
        threads=options.threads,
        warmup=base.warmup,
        min_runs=base.min_runs,
        max_runs=base.max_runs,
        min_seconds=base.min_seconds,
    )
    ids = InputSpec("input_ids", (1, TOKENS), dtype="int64", value_range=(0, 30522))
    mask = InputSpec("attention_mask", (1, TOKENS), dtype="int64", value_range=(0, 2))
    results: list[Result] = []
    with scratch_folder(prefix="edgepack-attention-") as tmp:
        for name, make, specs in (
            ("nn.TransformerEncoder", TransformerEncoderModel, [ids]),
            ("HF-style SDPA + padding mask", HFStyleEncoder, [ids, mask]),
        ):
            print(f"{name}: capturing, emitting and timing...", file=sys.stderr, flush=True)
            torch.manual_seed(0)
            results += run_case(name, make(), specs, settings, Path(tmp))
    print(markdown(results, settings.threads))
    if options.json:
        jsonio.write(
            options.json,
            {
                "host": host_cpu(),
                "threads": settings.threads,
                "torch": torch.__version__,
                "results": [vars(r) for r in results],
            },
            indent=2,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
