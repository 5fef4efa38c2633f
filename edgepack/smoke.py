"""Verify stage: load each artifact in its real runtime and compare it with eager PyTorch on the golden samples."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from .capture.ladder import CapturedModel
from .compare import Comparison, compare_runner
from .formats import Emitted, Format, RuntimeUnavailable
from .jsonio import finite_or_none
from .targets import FormatSettings


class SmokeStatus(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"  # the runtime cannot run here (Core ML off macOS); --strict counts it as failed


PASSED, FAILED, SKIPPED = SmokeStatus.PASSED, SmokeStatus.FAILED, SmokeStatus.SKIPPED


@dataclass
class SmokeResult:
    """The verdict and the worst figures over the checked inputs. None: not measured; inf (error) and nan
    (cosine): the artifact gave inf/NaN where eager did not, which the reason spells out (JSON: null)."""

    status: SmokeStatus
    reason: str
    max_abs_err: float | None = None
    cosine: float | None = None

    def to_json(self) -> dict:
        return {
            "status": self.status,
            "reason": self.reason,
            "max_abs_err": finite_or_none(self.max_abs_err),
            "cosine": finite_or_none(self.cosine),
        }


def smoke_test(
    fmt: Format, emitted: Emitted, captured: CapturedModel, settings: FormatSettings, threads: int
) -> SmokeResult:
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
    note = "; ".join(
        filter(
            None,
            [f"{settings.precision} tolerance (golden samples only)" if quantized else "", fmt.verification_note()],
        )
    )
    return SmokeResult(
        PASSED if verdict.ok else FAILED,
        f"{verdict.reason}; {note}" if note else verdict.reason,
        *_figures(verdict),
    )


def _figures(verdict: Comparison) -> tuple[float | None, float | None]:
    """Max abs error and cosine as measured; nan is 'not measured' (None) unless inf/NaN outputs made it."""
    if verdict.non_finite:
        return math.inf, math.nan
    return (
        None if math.isnan(verdict.max_abs_err) else verdict.max_abs_err,
        None if math.isnan(verdict.cosine) else verdict.cosine,
    )


def _not_verified(fmt: Format, exc: RuntimeUnavailable) -> SmokeResult:
    described = fmt.structure_check_description()
    checked = f"structure checked ({described}); " if described else ""
    return SmokeResult(SKIPPED, f"{checked}numerics not verified on this OS: {exc}")
