"""`--precision auto`: build every scheme a format offers, gate each by the target's accuracy budget
(against eager fp32 on the evaluation set), time the ones that pass interleaved in one run, and ship the
fastest (`--optimize-for latency`) or the smallest (`--optimize-for size`).

Timings are evidence only where they can be: a format that cannot be timed here (Core ML off macOS) is
chosen by size, and a scheme tuned for the device's ARM CPU (qnnpack int8 .ptl) is not ranked against the
others on an x86 host's timings. Every candidate, its figures and its verdict go into the report, with the
sentence saying why the winner won and on which evidence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import precisions
from ..bench import Latency, time_interleaved, torch_threads
from ..capture.ladder import CapturedModel
from ..errors import BuildError, RuntimeUnavailable
from ..formats.base import Emitted, Format
from ..hostarch import LatencyOrigin
from ..targets import BenchSettings, FormatSettings
from .ladder import Attempt, Ladder, LadderResult, Progress, QuantData

CRITERIA = ("latency", "size")
_EAGER = "eager PyTorch"


@dataclass
class Candidate:
    attempt: Attempt
    emitted: Emitted | None
    latency: Latency | None = None
    timing: str = ""  # why it was not timed, or what its timing is evidence of
    host_only: bool = False  # its timing on this host says nothing about the device (hostarch)

    @property
    def precision(self) -> str:
        return self.attempt.precision

    @property
    def eligible(self) -> bool:
        return self.attempt.ok and self.emitted is not None

    def to_json(self, chosen: bool) -> dict[str, Any]:
        return {
            **self.attempt.to_json(),
            "p50_ms": self.latency.p50 if self.latency else None,
            "p90_ms": self.latency.p90 if self.latency else None,
            "timing": self.timing,
            "host_timing_only": self.host_only,
            "chosen": chosen,
        }


@dataclass
class AutoChoice:
    criterion: str
    chosen: Candidate
    candidates: list[Candidate]
    why: str
    evidence: str
    eager_p50: float | None
    left_out: list[str] = field(default_factory=list)  # schemes not tried, with why

    def to_json(self) -> dict[str, Any]:
        return {
            "criterion": self.criterion,
            "chosen": self.chosen.precision,
            "why": self.why,
            "evidence": self.evidence,
            "eager_p50_ms": self.eager_p50,
            "candidates": [c.to_json(c is self.chosen) for c in self.candidates],
            "left_out": self.left_out,
        }


def candidate_schemes(fmt: Format, settings: FormatSettings, has_calibration: bool) -> tuple[list[str], list[str]]:
    """The schemes auto builds for this format, mildest first, and those it leaves out with why."""
    offered = fmt.auto_precisions(settings)
    chosen, left_out = [], []
    for name in precisions.names():
        if name not in offered:
            continue
        if name in fmt.calibrated_precisions and not has_calibration:
            left_out.append(f"{name}: no calibration data (pass --calibration to try it)")
            continue
        chosen.append(name)
    return chosen, left_out


def choose(
    fmt: Format,
    captured: CapturedModel,
    settings: FormatSettings,
    workdir: Path,
    data: QuantData,
    artifact_name: str,
    bench: BenchSettings,
    origin: LatencyOrigin,
    criterion: str = "latency",
    progress: Progress = lambda _: None,
) -> tuple[LadderResult, AutoChoice]:
    """Build, judge and time every candidate; the LadderResult holds the winner as the ladder's would."""
    ladder = Ladder(fmt, captured, settings, workdir, data, artifact_name, progress)
    schemes, left_out = candidate_schemes(fmt, settings, data.calibration is not None)
    candidates = [Candidate(*ladder.candidate(scheme)) for scheme in schemes]
    eager_p50 = _time(fmt, captured, candidates, bench, origin)
    eligible = [c for c in candidates if c.eligible]
    if not eligible:
        raise BuildError(
            f"No precision of {fmt.name} could be built: "
            + "; ".join(f"{c.precision}: {c.attempt.reason}" for c in candidates),
            "Fix the fp32 failure first (it is the converter's own).",
        )
    chosen, why, evidence = _pick(eligible, criterion, origin)
    choice = AutoChoice(criterion, chosen, candidates, why, evidence, eager_p50, left_out)
    fp32 = next((c for c in candidates if c.precision == precisions.REFERENCE and c.emitted), None)
    notes = [f"auto chose {chosen.precision}: {why}"]
    if not data.eval.real:
        notes.append("auto: accuracy was measured on seeded random inputs, not on real data (pass --eval-data)")
    result = LadderResult(
        precisions.AUTO,
        chosen.precision,
        [],
        chosen.emitted,  # type: ignore[arg-type]  # eligible candidates have one
        chosen.attempt.accuracy,
        fp32.emitted if fp32 is not None and chosen is not fp32 else None,
        [c.attempt for c in candidates],
        [],
        notes,
        data.eval.description,
        data.calibration_source if "int8-static" in schemes and fmt.calibrated_precisions else "",
    )
    progress(f"auto: {chosen.precision} ({why})")
    return result, choice


def _time(
    fmt: Format, captured: CapturedModel, candidates: list[Candidate], bench: BenchSettings, origin: LatencyOrigin
) -> float | None:
    """Every measured candidate and eager, interleaved in one run (the build's timing protocol)."""
    sample = captured.samples[0]
    args = tuple(sample[name] for name in captured.input_names)
    arrays = [t.numpy() for t in args]
    calls: dict[str, Callable[[], Any]] = {_EAGER: lambda: captured.eager(*args)}
    for c in candidates:
        if c.emitted is None or c.attempt.accuracy is None:
            c.timing = "not timed: " + ("not built" if c.emitted is None else "its accuracy could not be measured")
            continue
        try:
            run = fmt.open_for_timing(c.emitted.path, bench.threads)
        except RuntimeUnavailable as exc:
            c.timing = f"not timed: {exc}"
            continue
        calls[c.precision] = _bound(run, arrays)
    with torch_threads(bench.threads), torch.inference_mode():
        timed = time_interleaved(calls, bench)
    for c in candidates:
        if c.precision in timed:
            c.latency = timed[c.precision]
            c.host_only = origin.host_measurement and c.precision in fmt.arm_tuned_precisions
            c.timing = (
                f"timed on this {origin.measured_on} host; {c.precision} {fmt.name} runs kernels tuned for "
                f"{origin.target_arch} (qnnpack): no evidence for the device"
                if c.host_only
                else f"timed on this {origin.label}"
            )
    return timed[_EAGER].p50


def _pick(eligible: list[Candidate], criterion: str, origin: LatencyOrigin) -> tuple[Candidate, str, str]:
    """The winner, why, and the evidence it rests on."""
    smallest = min(eligible, key=_size_key)
    if criterion == "size":
        return smallest, f"smallest within the accuracy budget ({_kib(smallest)})", "file size"
    timed = [c for c in eligible if c.latency is not None]
    if not timed:
        return (
            smallest,
            f"no candidate within budget could be timed here ({eligible[0].timing.removeprefix('not timed: ')}): "
            f"the smallest within the accuracy budget ({_kib(smallest)}) instead",
            "file size (latency could not be measured on this machine)",
        )
    fastest = min(timed, key=lambda c: c.latency.p50 if c.latency else 0.0)
    tuned = [c for c in eligible if c.host_only]
    if tuned:
        # The host's ranking of an ARM-tuned engine says nothing about the phone, for it or against it.
        names = " and ".join(c.precision for c in tuned)
        return (
            smallest,
            f"{names} {'run' if len(tuned) > 1 else 'runs'} kernels tuned for {origin.target_arch}, and this "
            f"{origin.measured_on} host's timings are no evidence for the device ({fastest.precision} was fastest "
            f"here): latency cannot rank the candidates on this host, so the smallest within the accuracy budget "
            f"({_kib(smallest)}) ships",
            f"file size; host timings ({origin.measured_on}) reported but not used",
        )
    others = sorted((c for c in timed if c is not fastest), key=lambda c: c.latency.p50 if c.latency else 0.0)
    runner_up = (
        f"; next {others[0].precision} at {others[0].latency.p50:.3f} ms" if others and others[0].latency else ""
    )
    latency = fastest.latency.p50 if fastest.latency else 0.0
    evidence = f"p50 on this {origin.label}" + (
        f" (a host measurement: assumed to rank the same on {origin.target_arch})" if origin.host_measurement else ""
    )
    return fastest, f"fastest within the accuracy budget: p50 {latency:.3f} ms{runner_up}", evidence


def _size_key(c: Candidate) -> tuple[int, int]:
    """Smallest file first; among equal sizes the milder scheme (fewer approximations)."""
    order = precisions.names()
    return (c.attempt.size_bytes or 0, order.index(c.precision))


def _kib(c: Candidate) -> str:
    return f"{(c.attempt.size_bytes or 0) / 1024:.1f} KiB"


def _bound(run: Callable[[list], Any], arrays: list) -> Callable[[], Any]:
    return lambda: run(arrays)
