"""Bench stage: one latency protocol for every runtime and for the eager baseline.

Warm up, then time single runs until both `min_runs` and `min_seconds` are reached (or
`max_runs`), with a fixed thread count; report percentiles, mean and the cold load time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .targets import BenchSettings


@dataclass
class Latency:
    p50: float
    p90: float
    p99: float
    mean: float
    runs: int
    load_ms: float | None = None

    def to_json(self) -> dict:
        return {"p50": self.p50, "p90": self.p90, "p99": self.p99, "mean": self.mean}

    def details(self) -> dict:
        return {"runs": self.runs, "load_ms": self.load_ms}


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Eager PyTorch and the lite interpreter share torch's intra-op pool: pin it for fair timings."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def time_calls(call: Callable[[], Any], settings: BenchSettings, load_ms: float | None = None) -> Latency:
    for _ in range(settings.warmup):
        call()
    samples_ms: list[float] = []
    started = time.perf_counter()
    while len(samples_ms) < settings.max_runs:
        t0 = time.perf_counter_ns()
        call()
        samples_ms.append((time.perf_counter_ns() - t0) / 1e6)
        enough_runs = len(samples_ms) >= settings.min_runs
        if enough_runs and time.perf_counter() - started >= settings.min_seconds:
            break
    p50, p90, p99 = np.percentile(samples_ms, [50, 90, 99])
    return Latency(float(p50), float(p90), float(p99), float(np.mean(samples_ms)), len(samples_ms), load_ms)


def time_loaded(load: Callable[[], Callable[[], Any]], settings: BenchSettings) -> Latency:
    """Time `load()` once (cold load), then the call it returns."""
    t0 = time.perf_counter_ns()
    call = load()
    load_ms = (time.perf_counter_ns() - t0) / 1e6
    return time_calls(call, settings, load_ms)
