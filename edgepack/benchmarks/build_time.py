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
