"""Quantization benchmark: per format and int8 scheme, the size ratio, the accuracy against eager fp32 and
the latency ratio against the same format in fp32, all measured in one run on this machine.

    python -m edgepack.benchmarks.quantization [--out DIR] [--threads N]

Models: the built-in demo CNN (its calibration and held-out splits) and a MiniLM-size encoder
(edgepack.benchmarks.models.minilm_encoder; seeded random token ids for calibration and evaluation,
so its top-1 figure is the agreement of the arg-max embedding dimension, not a task accuracy).
Each build goes through `edgepack.pipeline.build` with a permissive accuracy budget, so the requested
scheme ships and its own figures are printed (a real target's budget would walk the fallback ladder).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..inputs import parse_input_spec
from ..paths import scratch_folder
from ..pipeline import BuildRequest, build
from ..report import ArtifactReport
from .models import INPUTS

SCHEMES = ("int8-dynamic", "int8-static")
FORMATS_TABLE = """
[formats.torchscript_lite]
precision = "fp32"
[formats.onnx]
precision = "fp32"
opset = 18
[formats.coreml]
precision = "fp32"
"""
TARGET_TEXT = (
    """
name = "quantization-benchmark"
description = "every format, timed; accuracy recorded, not gated"
[accuracy]
min_top1_agreement = 0.0
min_cosine = 0.0
[quantized_smoke]
atol = 1e9
rtol = 1.0
min_cosine = 0.0
[bench]
threads = {threads}
warmup = 5
min_runs = 30
max_runs = 300
min_seconds = 1.0
"""
    + FORMATS_TABLE
)


@dataclass
class Case:
    label: str
    model: str | None  # None: the built-in demo model
    inputs: list[str]
    calibration: str | None = None
    eval_data: str | None = None


def cases(folder: Path) -> list[Case]:
    """The demo model with its own splits; the encoder with seeded random token ids written to .npz files."""
    spec = parse_input_spec(INPUTS["minilm_encoder"])
    low, high = spec.value_range or (0, 30522)
    for name, seed, count in (("calib", 0, 32), ("eval", 1, 32)):
        ids = np.random.default_rng(seed).integers(low, high, size=(count, *spec.shape), dtype=np.int64)
        np.savez(folder / f"minilm-{name}.npz", **{spec.name: ids})  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
    return [
        Case("demo CNN (digits)", None, []),
        Case(
            "MiniLM-size encoder",
            "edgepack.benchmarks.models:minilm_encoder",
            [INPUTS["minilm_encoder"]],
            str(folder / "minilm-calib.npz"),
            str(folder / "minilm-eval.npz"),
        ),
    ]


def run(out: Path, threads: int) -> list[tuple[Case, str, ArtifactReport]]:
    with scratch_folder(prefix="edgepack-qbench-") as tmp:
        folder = Path(tmp)
        target = folder / "quantization-benchmark.toml"
        target.write_text(TARGET_TEXT.format(threads=threads), encoding="utf-8")
        rows = []
        for case in cases(folder):
            for scheme in SCHEMES:
                print(f"building {case.label} in {scheme} ...", file=sys.stderr, flush=True)
                request = BuildRequest(
                    targets=[str(target)],
                    model=case.model,
                    inputs=[parse_input_spec(i) for i in case.inputs],
                    out_dir=out,
                    precision=scheme,
                    calibration=case.calibration,
                    eval_data=case.eval_data,
                    check_budgets=False,
                    allow_partial=True,
                )
                report = build(request)[0]
                rows += [(case, scheme, artifact) for artifact in report.artifacts]
        return rows


def table(rows: list[tuple[Case, str, ArtifactReport]]) -> str:
    lines = [
        "| model | format | requested | shipped | size fp32 | size | size ratio | top-1 agreement | cosine | "
        "max abs err | SQNR dB | p50 fp32 ms | p50 ms | latency ratio | weights ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, scheme, a in rows:
        acc = a.accuracy
        before = a.latency_before.p50 if a.latency_before else None
        after = a.latency.p50 if a.latency else None
        lines.append(
            "| "
            + " | ".join(
                [
                    case.label,
                    a.format,
                    scheme,
                    a.precision if a.path else f"failed: {a.smoke.reason[:60]}",
                    _size(a.size_before_bytes),
                    _size(a.size_bytes),
                    _num(a.size_ratio, "{:.2f}x"),
                    _num(acc.top1_agreement if acc else None, "{:.4f}"),
                    _num(acc.cosine if acc else None, "{:.5f}"),
                    _num(acc.max_abs_err if acc else None, "{:.3g}"),
                    _num(acc.sqnr_db if acc else None, "{:.1f}"),
                    _num(before, "{:.3f}"),
                    _num(after, "{:.3f}"),
                    _num(a.latency_ratio, "{:.2f}x"),
                    _num(a.weight_ratio, "{:.2f}x"),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def _size(size: int | None) -> str:
    return f"{size / 1024:.0f} KiB" if size is not None else "-"


def _num(value: float | None, pattern: str) -> str:
    return pattern.format(value) if value is not None else "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="where the bundles go (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every timing (default 2)")
    args = parser.parse_args(argv)
    with scratch_folder(prefix="edgepack-qbench-out-") as tmp:
        rows = run(args.out or Path(tmp), args.threads)
    print(table(rows))
    print(
        "\nSizes and latencies are against the same format built in fp32 in the same run; accuracy is against "
        "eager fp32 PyTorch (demo: its held-out split; encoder: 32 random token sequences). "
        "Core ML latency needs macOS; off macOS its accuracy comes from edgepack's reference executor."
    )


if __name__ == "__main__":
    main()
