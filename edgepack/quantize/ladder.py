"""The precision ladder: build the requested scheme, measure it against eager fp32, and when it misses the
target's accuracy budget, keep the layers that cost the most accuracy in float and retry, then step down
to milder schemes (static -> dynamic -> fp16 -> fp32). Every attempt is recorded with its figures.

Formats are driven only through the Format contract: `nearest_precision`, `quantizable_layers`, and
`emit` honouring `settings.precision` and `settings.options[FLOAT_LAYERS]`.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from .. import precisions
from ..bundle.files import size_of
from ..bundle.staging import remove_path
from ..capture.ladder import CapturedModel
from ..errors import BuildError, RuntimeUnavailable, UsageError
from ..formats.base import FLOAT_LAYERS, Emitted, Format
from ..noise import native_stderr_quiet
from ..targets import FormatSettings
from .accuracy import Accuracy, EvalSet, budget_misses, measure
from .calibration import Samples

# Accuracy does not depend on the thread count; one thread avoids thread-pool contention on busy hosts.
MEASURE_THREADS = 1
# Per-layer sensitivity builds one artifact per layer on a subset of the data: cap its cost.
MAX_PROBED_LAYERS = 32
PROBE_EVAL_SAMPLES = 64
PROBE_CALIBRATION_SAMPLES = 32
Progress = Callable[[str], None]
# The step an attempt did not get past: built, run, or measured (its runtime cannot run on this machine).
Failure = Literal["build", "run", "measure"]
_WHY_NOT = {
    "build": "could not be built",
    "run": "could not be run here",
    "measure": "could not be measured on this machine",
}


@dataclass
class QuantData:
    """What the ladder measures with: calibration samples (static schemes) and the evaluation set."""

    calibration: Samples | None
    calibration_source: str
    eval: EvalSet


@dataclass
class Attempt:
    precision: str
    float_layers: list[str]
    ok: bool
    reason: str
    size_bytes: int | None = None
    accuracy: Accuracy | None = None
    failure: Failure | None = None  # for an attempt that was not measured: the step that failed

    @property
    def verdict(self) -> str:
        """ok; missed (measured, outside the budget); failed (could not be built, run or measured)."""
        return "ok" if self.ok else "missed" if self.accuracy is not None else "failed"

    def to_json(self) -> dict:
        return {
            "precision": self.precision,
            "float_layers": self.float_layers,
            "ok": self.ok,
            "verdict": self.verdict,
            "reason": self.reason,
            "size_bytes": self.size_bytes,
            "accuracy": self.accuracy.to_json() if self.accuracy else None,
        }


@dataclass
class LadderResult:
    """The shipped artifact (still in the work folder) and how it was chosen."""

    requested: str
    precision: str
    float_layers: list[str]
    emitted: Emitted
    accuracy: Accuracy | None
    baseline: Emitted | None  # the fp32 version, for size and latency before quantization
    attempts: list[Attempt] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    eval_description: str = ""
    calibration_source: str = ""

    @property
    def fell_back(self) -> bool:
        return len(self.attempts) > 1 and not self.attempts[0].ok

    def to_json(self) -> dict:
        return {
            "requested": self.requested,
            "shipped": self.precision,
            "float_layers": self.float_layers,
            "fell_back": self.fell_back,
            "eval_set": self.eval_description,
            "calibration": self.calibration_source,
            "sensitivity": self.sensitivity,
            "attempts": [a.to_json() for a in self.attempts],
        }


def rungs(fmt: Format, requested: str) -> tuple[list[str], list[str]]:
    """The distinct schemes the format builds for `requested` and each milder step, with notes where a
    name maps to another scheme."""
    first, note = fmt.nearest_precision(requested)
    schemes, notes = [first], [note] if note else []
    # A format maps each milder name to its nearest scheme; the ladder walks the distinct ones.
    for name in precisions.ladder_after(first):
        scheme, _ = fmt.nearest_precision(name)
        if scheme not in schemes:
            schemes.append(scheme)
    return schemes, notes


def needs_calibration(fmt: Format, requested: str) -> bool:
    """The first scheme built needs calibration samples (a milder rung that needs them and has none fails
    as an attempt instead)."""
    return rungs(fmt, requested)[0][0] in fmt.calibrated_precisions


class Ladder:
    """One format's walk down the ladder, building every attempt in `workdir` under the artifact's
    final file name (`artifact_name`), made byte-stable as it will ship: a size measured here is
    the size shipped (a .ptl archive's entries are named after the file, and its debug records are
    stripped when it ships)."""

    def __init__(
        self,
        fmt: Format,
        captured: CapturedModel,
        settings: FormatSettings,
        workdir: Path,
        data: QuantData,
        artifact_name: str,
        progress: Progress = lambda _: None,
    ) -> None:
        self.fmt, self.captured, self.settings, self.workdir = fmt, captured, settings, workdir
        self.data, self.artifact_name, self.progress = data, artifact_name, progress
        self._count = 0

    def run(self) -> LadderResult:
        requested = self.settings.precision
        schemes, notes = rungs(self.fmt, requested)
        baseline = self._emit("fp32", [], self.data.calibration)[0] if schemes[0] != "fp32" else None
        attempts: list[Attempt] = []
        sensitivity: list[dict] = []
        for index, scheme in enumerate(schemes):
            attempt, emitted = self._try(scheme, [], baseline)
            attempts.append(attempt)
            if not attempt.ok and index == 0:
                sensitivity, retried = self._keep_costliest_float(scheme, attempts)
                emitted = retried or emitted
            if attempts[-1].ok and emitted is not None:
                last = attempts[-1]
                if attempts[0] is not last:
                    notes.append(
                        f"{attempts[0].precision} {_why_not(attempts[0])}; shipped {last.precision}"
                        + (f" with {', '.join(last.float_layers)} in float" if last.float_layers else "")
                        + f" ({len(attempts)} attempts in the report)"
                    )
                kept_baseline = baseline if last.precision != "fp32" else None  # fp32 shipped: it is the baseline
                return LadderResult(
                    requested,
                    last.precision,
                    last.float_layers,
                    emitted,
                    last.accuracy,
                    kept_baseline,
                    attempts,
                    sensitivity,
                    notes,
                    self.data.eval.description,
                    self._calibration_text(schemes),
                )
        raise BuildError(
            f"No precision of {self.fmt.name} could be built: "
            + "; ".join(f"{a.precision}: {a.reason}" for a in attempts),
            "Fix the first failure above (the fp32 one is the converter's own).",
        )

    def candidate(self, scheme: str) -> tuple[Attempt, Emitted | None]:
        """One scheme built and judged on its own, without stepping down (what `--precision auto` compares)."""
        return self._try(scheme, [], None)

    def _try(self, scheme: str, float_layers: list[str], baseline: Emitted | None) -> tuple[Attempt, Emitted | None]:
        emitted: Emitted | None
        if scheme == "fp32" and baseline is not None and not float_layers:
            emitted = baseline
        else:
            emitted, error = self._emit(scheme, float_layers, self.data.calibration)
            if emitted is None:
                attempt = Attempt(scheme, float_layers, False, f"building failed: {error}", failure="build")
                self.progress(f"{scheme}: {attempt.reason}")
                return attempt, None
        attempt = self._judge(scheme, float_layers, emitted, self.data.eval)
        self.progress(
            f"{scheme}{' + ' + str(len(float_layers)) + ' float layers' if float_layers else ''}: "
            f"{attempt.verdict}: {attempt.reason}"
        )
        return attempt, emitted

    def _judge(self, scheme: str, float_layers: list[str], emitted: Emitted, data: EvalSet) -> Attempt:
        size = size_of(emitted.path)
        try:
            accuracy = self._measure(emitted, data)
        except RuntimeUnavailable as exc:
            # Float schemes are accepted unmeasured (their smoke test says 'skipped', --strict fails it), so
            # a host that cannot run the format builds the same artifact as one that can. int8 and
            # palettized weights are never shipped unmeasured.
            if not precisions.is_quantized(scheme):
                return Attempt(
                    scheme, float_layers, True, f"{scheme} accepted; accuracy not measurable here: {exc}", size
                )
            return Attempt(
                scheme,
                float_layers,
                False,
                f"accuracy cannot be measured on this machine: {exc}",
                size,
                failure="measure",
            )
        except Exception as exc:  # a runtime can fail in any way on a quantized graph
            failure = f"running it failed here: {type(exc).__name__}: {exc}"
            if scheme == "fp32":  # the reference precision ends the ladder; its smoke test gives the verdict
                return Attempt(scheme, float_layers, True, f"fp32 accepted (the reference precision); {failure}", size)
            return Attempt(scheme, float_layers, False, failure, size, failure="run")
        misses = budget_misses(accuracy, self.settings.accuracy, gate_top1=data.real)
        if scheme == "fp32":  # the reference precision ends the ladder; its smoke test is its gate
            return Attempt(
                scheme,
                float_layers,
                True,
                accuracy.summary() + ("; misses: " + "; ".join(misses) if misses else ""),
                size,
                accuracy,
            )
        reason = (
            "within the accuracy budget: " + accuracy.summary()
            if not misses
            else "misses the budget: " + "; ".join(misses)
        )
        return Attempt(scheme, float_layers, not misses, reason, size, accuracy)

    def _measure(self, emitted: Emitted, data: EvalSet) -> Accuracy:
        with native_stderr_quiet():  # quantized kernels' first-use notices from C++
            return measure(self.fmt.open(emitted.path, MEASURE_THREADS), data, self.captured.input_names)

    def _keep_costliest_float(self, scheme: str, attempts: list[Attempt]) -> tuple[list[dict], Emitted | None]:
        """Per-layer sensitivity (each layer quantized alone, on a subset), then retries keeping the
        1, 2, 4... costliest layers in float, up to half of them."""
        layers = self.fmt.quantizable_layers(self.captured, replace(self.settings, precision=scheme))
        if len(layers) < 2:
            return [], None
        if len(layers) > MAX_PROBED_LAYERS:
            attempts[-1].reason += (
                f"; {len(layers)} quantizable layers is more than the sensitivity pass probes "
                f"({MAX_PROBED_LAYERS}): went straight to milder schemes"
            )
            return [], None
        sensitivity = self._sensitivity(scheme, layers)
        ranked = [entry["layer"] for entry in sensitivity]
        count = 1
        while count <= len(layers) // 2:
            attempt, emitted = self._try(scheme, ranked[:count], None)
            attempts.append(attempt)
            if attempt.ok:
                return sensitivity, emitted
            count *= 2
        return sensitivity, None

    def _sensitivity(self, scheme: str, layers: list[str]) -> list[dict]:
        probe = EvalSet(self.data.eval.samples[:PROBE_EVAL_SAMPLES], self.data.eval.expected[:PROBE_EVAL_SAMPLES], "")
        calibration = self.data.calibration[:PROBE_CALIBRATION_SAMPLES] if self.data.calibration else None
        found = []
        for layer in layers:
            emitted, error = self._emit(scheme, [other for other in layers if other != layer], calibration)
            sqnr, cosine = None, None
            if emitted is not None:
                try:
                    accuracy = self._measure(emitted, probe)
                    sqnr, cosine = accuracy.sqnr_db, accuracy.cosine
                    if accuracy.non_finite:  # ranks with the failures, first; no nan figure in the report
                        sqnr, cosine, error = None, None, accuracy.non_finite_text()
                except Exception as exc:  # noqa: BLE001 - a layer that cannot run alone ranks as costliest
                    error = f"{type(exc).__name__}: {exc}"
                remove_path(emitted.path.parent)
            found.append({"layer": layer, "sqnr_db": sqnr, "cosine": cosine, **({"error": error} if error else {})})
        self.progress(f"sensitivity of {len(layers)} layers measured (each quantized alone)")
        # Lowest SQNR first: the layer whose quantization alone loses the most signal. Exact (None) is harmless.
        return sorted(found, key=lambda e: (e.get("error") is None, math.inf if e["sqnr_db"] is None else e["sqnr_db"]))

    def _emit(self, scheme: str, float_layers: list[str], calibration: Samples | None) -> tuple[Emitted | None, str]:
        self._count += 1
        folder = self.workdir / f"{self.fmt.name}-{self._count}-{scheme}"
        folder.mkdir()
        path = folder / self.artifact_name
        settings = replace(
            self.settings, precision=scheme, options={**self.settings.options, FLOAT_LAYERS: float_layers}
        )
        try:
            with native_stderr_quiet():
                emitted = self.fmt.emit(self.captured, settings, path, calibration)
            emitted.notes += self.fmt.stabilize(path)
            return emitted, ""
        except UsageError:
            raise
        except Exception as exc:  # converters fail in many ways; the ladder records it and steps down
            remove_path(folder)
            return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"

    def _calibration_text(self, schemes: list[str]) -> str:
        return self.data.calibration_source if set(schemes) & set(self.fmt.calibrated_precisions) else ""


def _why_not(attempt: Attempt) -> str:
    """Why the first rung did not ship, for the note: built, run, or within budget."""
    if attempt.failure is not None:
        return _WHY_NOT[attempt.failure]
    if attempt.accuracy is not None and attempt.accuracy.non_finite:
        return f"missed the accuracy budget ({attempt.accuracy.non_finite_text()})"
    return "missed the accuracy budget"


def ship(result: LadderResult, destination: Path) -> Emitted:
    """Move the chosen artifact from the work folder to its place in the bundle."""
    remove_path(destination)
    shutil.move(str(result.emitted.path), str(destination))
    return replace(result.emitted, path=destination)
