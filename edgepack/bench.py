"""Bench stage: one latency protocol for every runtime and for the eager baseline.

Warm up, then time single runs until both `min_runs` and `min_seconds` are reached (or
`max_runs`), with a fixed thread count; report percentiles, mean and the load time.
Cold start and memory are measured apart, in a fresh Python process per artifact (edgepack/footprint.py).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .targets import BenchSettings

BLOCK = 5  # timed runs per call and round in an interleaved run


@dataclass
class Latency:
    p50: float
    p90: float
    p99: float
    mean: float
    runs: int
    load_ms: float | None = None
    # The rest of the distribution ({"min", "p25", "p75", "max"}), for the HTML report's box plots.
    spread: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"p50": self.p50, "p90": self.p90, "p99": self.p99, "mean": self.mean}

    def details(self) -> dict:
        return {"runs": self.runs, "load_ms": self.load_ms, **self.spread}


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Eager PyTorch and the lite interpreter share torch's intra-op pool: pin it for fair timings."""
    import torch  # here, not at the top: a footprint probe of an ONNX artifact need not load torch

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
    return summarize(samples_ms, load_ms)


def summarize(samples_ms: list[float], load_ms: float | None = None) -> Latency:
    p50, p90, p99 = np.percentile(samples_ms, [50, 90, 99])
    low, p25, p75, high = np.percentile(samples_ms, [0, 25, 75, 100])
    spread = {"min": float(low), "p25": float(p25), "p75": float(p75), "max": float(high)}
    return Latency(float(p50), float(p90), float(p99), float(np.mean(samples_ms)), len(samples_ms), load_ms, spread)


class OtherProcessesLoad:
    """How many cores other processes kept busy during a block (Linux: /proc/stat's busy time of every
    CPU minus this process's own CPU time, over the wall time). Timings taken under such load are not
    representative, and OpenMP-based runtimes (eager PyTorch, the lite interpreter) suffer far more
    than onnxruntime, so ratios between them shift too. `cores` stays None where it cannot be read."""

    cores: float | None = None

    def __enter__(self) -> OtherProcessesLoad:
        self._start = (_busy_cpu_seconds(), time.process_time(), time.perf_counter())
        return self

    def __exit__(self, *exc_info: object) -> None:
        busy_start, own_start, wall_start = self._start
        busy_end, wall = _busy_cpu_seconds(), time.perf_counter() - wall_start
        if busy_start is None or busy_end is None or wall <= 0:
            return
        others = (busy_end - busy_start) - (time.process_time() - own_start)
        self.cores = max(0.0, others / wall)


def _busy_cpu_seconds() -> float | None:
    """Seconds every CPU of the machine spent busy (not idle or waiting on I/O), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(value) for value in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = sum(ticks[:8]) - idle  # user nice system idle iowait irq softirq steal; guest is inside user
    return busy / os.sysconf("SC_CLK_TCK")


def time_interleaved(
    calls: dict[str, Callable[[], Any]], settings: BenchSettings, block: int = BLOCK, settle_s: float = 0.02
) -> dict[str, Latency]:
    """The same protocol for several calls at once, in round-robin blocks of `block` timed runs, so
    that load from other processes on a shared machine falls on every candidate alike. Before each
    block: a pause, so the previous runtime's spinning worker threads (onnxruntime's and OpenMP's
    spin-wait after a run) park instead of competing for the cores, then one untimed run."""
    return {name: summarize(s) for name, s in interleaved_samples(calls, settings, block, settle_s).items()}


def interleaved_samples(
    calls: dict[str, Callable[[], Any]], settings: BenchSettings, block: int = BLOCK, settle_s: float = 0.02
) -> dict[str, list[float]]:
    """`time_interleaved`'s timings themselves (ms), in the order taken: a call's samples
    [r * block, (r + 1) * block) are its block of round r, taken seconds from the other calls' block of
    the same round (what `paired_ratio` pairs). Each round starts one call further on, so that no call
    always follows the same one (what a runtime leaves in the caches and thread pools falls on all)."""
    for call in calls.values():
        for _ in range(settings.warmup):
            call()
    block = max(1, min(block, settings.max_runs))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    started = time.perf_counter()
    for round_index in itertools.count():
        shift = round_index % len(order)
        for name in order[shift:] + order[:shift]:
            call = calls[name]
            time.sleep(settle_s)
            call()
            for _ in range(block):
                t0 = time.perf_counter_ns()
                call()
                samples[name].append((time.perf_counter_ns() - t0) / 1e6)
        runs = min(len(s) for s in samples.values())
        if runs >= settings.max_runs or (
            runs >= settings.min_runs and time.perf_counter() - started >= settings.min_seconds
        ):
            break
    return samples


def paired_ratio(
    numerator: list[float], denominator: list[float], block: int = BLOCK, resamples: int = 2000
) -> tuple[float, float, float]:
    """p50(numerator) / p50(denominator) of two calls timed in one interleaved run, with a 95% interval:
    the rounds are resampled (a bootstrap), each round keeping both calls' blocks, so that what disturbed a
    round falls on both sides as it did in the run. An interval that holds 1.0 is a difference this run
    cannot tell from its noise."""
    rounds = min(len(numerator), len(denominator)) // block
    if rounds < 2:
        raise ValueError(f"a paired ratio needs two rounds of {block} runs at least, got {rounds}")
    top = np.asarray(numerator[: rounds * block]).reshape(rounds, block)
    bottom = np.asarray(denominator[: rounds * block]).reshape(rounds, block)
    picks = np.random.default_rng(0).integers(0, rounds, size=(resamples, rounds))  # seeded: the same figures
    ratios = np.median(top[picks].reshape(resamples, -1), axis=1) / np.median(
        bottom[picks].reshape(resamples, -1), axis=1
    )
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(np.median(top) / np.median(bottom)), float(low), float(high)


def time_loaded(load: Callable[[], Callable[[], Any]], settings: BenchSettings) -> Latency:
    """Time `load()` once (cold load), then the call it returns."""
    t0 = time.perf_counter_ns()
    call = load()
    load_ms = (time.perf_counter_ns() - t0) / 1e6
    return time_calls(call, settings, load_ms)
