"""`python -m edgepack.benchmarks [--quick] [--json PATH]`: edgepack's bundles against eager PyTorch
and the by-hand path, for the demo model, a ResNet-style CNN (224x224) and a MiniLM-size encoder
(128 tokens), timed in one run on this machine with one protocol (batch 1, 2 threads)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from .. import jsonio
from ..hostarch import host_cpu
from ..paths import scratch_folder
from ..targets import BenchSettings
from .build_time import time_demo_builds
from .roofline import gemm_peaks
from .suite import CASES, Row, run_case
from .table import check_targets, markdown, to_json

THREADS = 2
# Runs are interleaved across candidates, so min_seconds is for all of a model's candidates together.
FULL = BenchSettings(threads=THREADS, warmup=10, min_runs=100, max_runs=2000, min_seconds=30.0)
QUICK = BenchSettings(threads=THREADS, warmup=3, min_runs=15, max_runs=300, min_seconds=3.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgepack.benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer timed runs and no cold-start/memory probes")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--models", nargs="+", choices=[c.key for c in CASES], help="only these models")
    parser.add_argument("--workdir", type=Path, help="keep the built artifacts here (default: a temporary folder)")
    parser.add_argument(
        "--build-runs", type=int, default=2, help="timed `edgepack build --target all` runs of the demo (0: none)"
    )
    options = parser.parse_args(argv)
    settings = QUICK if options.quick else FULL
    cases = [c for c in CASES if not options.models or c.key in options.models]
    print(f"measuring fp32 and int8 GEMM peaks, {settings.threads} threads", file=sys.stderr, flush=True)
    peaks = gemm_peaks(settings.threads)
    with scratch_folder(prefix="edgepack-bench-") as tmp:
        workdir = options.workdir or Path(tmp)
        rows = run_all(cases, settings, workdir, footprint=not options.quick)
        build_times = time_demo_builds(workdir / "demo-build", options.build_runs)
    checks = check_targets(rows)
    print(markdown(rows, checks, settings.threads, peaks, host_cpu(), build_times))
    if options.json:
        document = to_json(
            rows, checks, settings.threads, _settings_json(settings, not options.quick), peaks, build_times
        )
        jsonio.write(options.json, document, indent=2)
        print(f"JSON written to {options.json}", file=sys.stderr)
    return 0


def run_all(cases, settings: BenchSettings, workdir: Path, footprint: bool) -> list[Row]:
    rows: list[Row] = []
    for case in cases:
        rows += run_case(
            case, settings, workdir / case.key, footprint, log=lambda m: print(m, file=sys.stderr, flush=True)
        )
    return rows


def _settings_json(settings: BenchSettings, footprint: bool) -> dict:
    fields = asdict(settings)
    fields.pop("threads")
    fields["footprint"] = footprint
    fields["timing"] = (
        "round-robin blocks per candidate after warm-up (each block: 20 ms pause, one untimed run, 5 timed runs; each round "
        "starts one candidate further on), until every candidate has "
        "min_runs and min_seconds have passed for the model; p50 over all runs"
    )
    return fields


if __name__ == "__main__":
    sys.exit(main())
