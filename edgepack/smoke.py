"""Verify stage: load each artifact in its real runtime and compare it with eager PyTorch on the golden samples."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .capture.ladder import CapturedModel
from .compare import Comparison, compare_outputs, merge
from .formats import Emitted, Format, Runner, RuntimeUnavailable
from .jsonio import finite_or_none
from .targets import QUANTIZED_PRECISIONS, FormatSettings, Tolerance

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass
class SmokeResult:
    """The verdict and the worst figures over the checked inputs. None: not measured; inf (error) and nan
    (cosine): the artifact gave inf/NaN where eager did not, which the reason spells out (JSON: null)."""

    status: str
    reason: str
    max_abs_err: float | None = None
    cosine: float | None = None

    def to_json(self) -> dict:
        return {"status": self.status, "reason": self.reason, "max_abs_err": finite_or_none(self.max_abs_err),
                "cosine": finite_or_none(self.cosine)}


def smoke_test(fmt: Format, emitted: Emitted, captured: CapturedModel, settings: FormatSettings, threads: int) -> SmokeResult:
    """Structure first (reading the saved file back), then numerics in the format's runtime on the golden
    samples and on every input the capture was checked with (other branches, other sizes)."""
    problems = fmt.check_structure(emitted, captured, settings)
    if problems:
        return SmokeResult(FAILED, "structural check failed: " + "; ".join(problems))
    try:
        run = fmt.open(emitted.path, threads)
    except RuntimeUnavailable as exc:
        return _not_verified(fmt, exc)
    except Exception as exc:
        return SmokeResult(FAILED, f"the runtime could not load the artifact: {type(exc).__name__}: {exc}")
    try:
        verdict, quantized = compare_runner(run, captured, settings)
    except RuntimeUnavailable as exc:
        return _not_verified(fmt, exc)
    note = "; ".join(filter(None, [f"{settings.precision} tolerance (golden samples only)" if quantized else "",
                                   fmt.verification_note()]))
    return SmokeResult(
        PASSED if verdict.ok else FAILED,
        f"{verdict.reason}; {note}" if note else verdict.reason,
        *_figures(verdict),
    )


def _figures(verdict: Comparison) -> tuple[float | None, float | None]:
    """Max abs error and cosine as measured; nan is 'not measured' (None) unless inf/NaN outputs made it."""
    if verdict.non_finite:
        return math.inf, math.nan
    return (None if math.isnan(verdict.max_abs_err) else verdict.max_abs_err,
            None if math.isnan(verdict.cosine) else verdict.cosine)


def compare_runner(run: Runner, captured: CapturedModel, settings: FormatSettings) -> tuple[Comparison, bool]:
    """Run every check input through `run` and compare with eager, with the tolerance for the precision.
    A quantized artifact is checked on real samples only: the capture's synthetic check inputs
    (negated, scaled by 4, zeroed) lie outside the calibrated ranges by construction."""
    tol = settings.tolerance_for(settings.precision)
    quantized = settings.precision in QUANTIZED_PRECISIONS
    cases = [(f"golden sample {i}", s, e) for i, (s, e) in enumerate(zip(captured.samples, captured.expected))]
    cases += [] if quantized else [(c.label, c.sample, c.expected) for c in captured.checks]
    arrays = [(label, [sample[name].numpy() for name in captured.input_names], expected) for label, sample, expected in cases]
    return compare_cases(run, arrays, tol, captured.output_names), quantized


def compare_cases(run: Runner, cases: list[tuple[str, list[np.ndarray], list[np.ndarray]]], tol: Tolerance,
                  output_names: list[str]) -> Comparison:
    """Each (label, input arrays, expected outputs) through `run`, compared within `tol`. A case that
    fails to run is a failed comparison; RuntimeUnavailable (cannot run on this OS) propagates."""
    comparisons = []
    for label, inputs, expected in cases:
        try:
            got = run(inputs)
        except RuntimeUnavailable:
            raise
        except Exception as exc:
            comparisons.append(Comparison.error(label, f"running failed: {type(exc).__name__}: {str(exc)[:300]}"))
            continue
        comparisons.append(compare_outputs(got, expected, tol.atol, tol.rtol, tol.min_cosine, label, output_names))
    return merge(comparisons)


def _not_verified(fmt: Format, exc: RuntimeUnavailable) -> SmokeResult:
    checked = ("structure checked (spec version, opset, op availability, inputs, outputs, metadata, weights digest); "
               if _has_structure_check(fmt) else "")
    return SmokeResult(SKIPPED, f"{checked}numerics not verified on this OS: {exc}")


def _has_structure_check(fmt: Format) -> bool:
    return type(fmt).check_structure is not Format.check_structure
