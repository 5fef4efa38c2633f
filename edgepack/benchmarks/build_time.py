"""The 3-target demo build's wall time, as a user runs it: `edgepack build --target all` in a fresh process,
several times in a row (the first may pay for cold disk caches), with the CPU model and the load average."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ..hostarch import host_cpu


def time_demo_builds(folder: Path, runs: int) -> list[str]:
    """One line per run: wall seconds, exit code, load average before it."""
    lines = []
    for index in range(runs):
        out = folder / f"run-{index}"
        load = os.getloadavg()[0]
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "edgepack", "build", "--target", "all", "--out", str(out), "-q"],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        wall = time.perf_counter() - started
        lines.append(
            f"- run {index + 1}: {wall:.1f} s wall, exit {done.returncode}, load average {load:.2f} before it "
            f"({host_cpu()}, {os.cpu_count()} CPUs)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """`python -m edgepack.benchmarks.build_time [--runs N]`: the demo's 3-target build, N times in a row."""
    import argparse

    from ..paths import scratch_folder

    parser = argparse.ArgumentParser(prog="python -m edgepack.benchmarks.build_time", description=main.__doc__)
    parser.add_argument("--runs", type=int, default=3, help="timed builds (the first may pay for cold caches)")
    options = parser.parse_args(argv)
    with scratch_folder(prefix="edgepack-build-time-") as folder:
        for line in time_demo_builds(folder, options.runs):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
