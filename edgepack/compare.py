"""Output comparison shared by the trace check and the smoke tests: shapes first, then values."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import precisions
from .errors import RuntimeUnavailable
from .jsonio import finite_or_none

if TYPE_CHECKING:
    from .capture.ladder import CapturedModel
    from .targets import FormatSettings, Tolerance

# One sample through an artifact: input arrays in the model's order -> output arrays in its order.
Runner = Callable[[list[np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class Comparison:
    ok: bool
    reason: str
    max_abs_err: float = math.nan  # nan: not measured; inf: outputs with inf/NaN where the reference differs
    cosine: float = math.nan  # nan: not measured, or undefined because of such values
    label: str = ""
    non_finite: int = 0  # output values that are inf/NaN where the reference's are not (or the reverse)
    # Outputs this case could not check: all inf/NaN in the reference (so any such answer 'matches'), or empty.
    # One such case is no failure (eager may give NaN on a synthetic input); `merge` fails an output never checked.
    outputs: tuple[str, ...] = ()
    unchecked: tuple[str, ...] = ()
    empty: tuple[str, ...] = ()

    @staticmethod
    def error(label: str, reason: str) -> Comparison:
        return Comparison(False, reason, label=label)

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "ok": self.ok,
            "reason": self.reason,
            "max_abs_err": finite_or_none(self.max_abs_err),
            "cosine": finite_or_none(self.cosine),
            "non_finite": self.non_finite,
        }


def compare_outputs(
    got: list[np.ndarray],
    expected: list[np.ndarray],
    atol: float,
    rtol: float,
    min_cosine: float,
    label: str = "",
    names: list[str] | None = None,
) -> Comparison:
    """Pass when counts and shapes match, every output is within atol + rtol * max|expected|,
    and every output's cosine similarity with the expected one is at least min_cosine."""
    names = names or [f"output {i}" for i in range(len(expected))]
    if len(got) != len(expected):
        return Comparison.error(label, f"{len(got)} outputs, expected {len(expected)}")
    worst_err, worst_cos, failures, non_finite = 0.0, 1.0, [], 0
    unchecked: list[str] = []
    empty: list[str] = []
    for name, g, e in zip(names, got, expected):
        g, e = np.asarray(g), np.asarray(e)
        if g.shape != e.shape:  # np broadcasting would hide a wrong shape
            return Comparison.error(label, f"'{name}' has shape {list(g.shape)}, expected {list(e.shape)}")
        g64, e64 = g.astype(np.float64), e.astype(np.float64)
        mismatch = non_finite_mismatch(g64, e64)
        if mismatch.any():  # an inf/NaN where eager has none is never within tolerance, whatever the rest
            non_finite += int(mismatch.sum())
            failures.append(f"'{name}' {non_finite_text(g64, e64, mismatch)}")
            worst_err, worst_cos = math.inf, math.nan
            continue
        both = np.isfinite(e64)  # no mismatch: the non-finite values are the same in both
        if not both.any():  # empty, or all inf/NaN in both: equal, but nothing was checked
            (unchecked if e64.size else empty).append(name)
            continue
        with np.errstate(invalid="ignore"):  # inf - inf where both are inf: masked out by `where`
            err = float(np.max(np.abs(g64 - e64), initial=0.0, where=both))
        cos = cosine_similarity(g64[both], e64[both])
        limit = atol + rtol * float(np.max(np.abs(e64), initial=0.0, where=both))
        worst_err, worst_cos = max(worst_err, err), _worst_cosine(worst_cos, cos)
        if err > limit:
            failures.append(f"'{name}' max abs error {err:.3g} > {limit:.3g}")
        if cos < min_cosine:
            failures.append(f"'{name}' cosine {cos:.6f} < {min_cosine}")
    reason = (
        "; ".join(failures) if failures else f"within tolerance (max abs error {worst_err:.3g}, cosine {worst_cos:.6f})"
    )
    if len(unchecked) + len(empty) == len(names) and not failures:
        worst_err, worst_cos = math.nan, math.nan  # nothing measured: no figures to show
        reason = "nothing checkable: " + ", ".join(f"'{n}' {'empty' if n in empty else 'all inf/NaN'}" for n in names)
    return Comparison(
        not failures,
        reason,
        worst_err,
        worst_cos,
        label,
        non_finite,
        tuple(names[: len(expected)]),
        tuple(unchecked),
        tuple(empty),
    )


def never_checked(comparisons: list[Comparison]) -> tuple[list[str], list[str]]:
    """(outputs all inf/NaN in the reference on every case that ran, outputs empty on every case that ran)."""
    ran = [c for c in comparisons if c.outputs]
    if not ran:
        return [], []
    names = ran[0].outputs
    empty = [n for n in names if all(n in c.empty for c in ran)]
    unchecked = [n for n in names if n not in empty and all(n in c.unchecked or n in c.empty for c in ran)]
    return unchecked, empty


def uncheckable_text(unchecked: list[str], empty: list[str], outputs: tuple[str, ...] | list[str]) -> str | None:
    """The failure when an output could never be checked (or nothing at all could), else None."""
    if unchecked:
        return (
            f"nothing checkable: output(s) {', '.join(repr(n) for n in unchecked)} hold no finite value on any "
            "input (all inf/NaN in eager PyTorch's output too), so any artifact giving inf/NaN would pass"
        )
    if outputs and len(empty) == len(outputs):
        return "nothing checkable: every output is empty on every input"
    return None


def non_finite_mismatch(got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Where one array is inf/NaN and the other is not the same inf/NaN (a boolean mask)."""
    same = (got == expected) | (np.isnan(got) & np.isnan(expected))
    return ~same & ~(np.isfinite(got) & np.isfinite(expected))


def non_finite_text(got: np.ndarray, expected: np.ndarray, mismatch: np.ndarray) -> str:
    """What a `non_finite_mismatch` mask found, in words: how many values, of how many, and which way."""
    ours_mask = mismatch & ~np.isfinite(got)
    ours = int(np.sum(ours_mask))
    theirs_text = "are finite" if np.all(np.isfinite(expected[ours_mask])) else "differ"
    text = f"has inf/NaN in {ours} of {got.size} values where eager's {theirs_text}" if ours else ""
    theirs = int(np.sum(mismatch & np.isfinite(got)))
    if theirs:
        text += ("; and " if text else "") + f"is finite in {theirs} of {got.size} values where eager's are inf/NaN"
    return text


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the flattened arrays; two all-zero arrays count as identical; nan when either holds inf/NaN
    (a cosine of such values would be meaningless, and nan fails every `>=` gate)."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return math.nan
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def merge(comparisons: list[Comparison], label: str = "") -> Comparison:
    """One verdict over several samples: the worst error and cosine, the first failure's reason."""
    if not comparisons:
        return Comparison.error(label, "nothing was compared")
    failed = [c for c in comparisons if not c.ok]
    non_finite = sum(c.non_finite for c in comparisons)
    # Figures of the samples that were measured; inf/NaN in any sample makes the merged ones inf and nan,
    # so that a summary never shows the finite samples' error for an artifact that gave inf/NaN.
    errs = [c.max_abs_err for c in comparisons if not math.isnan(c.max_abs_err)]
    coss = [c.cosine for c in comparisons if not math.isnan(c.cosine)]
    worst_err = max(errs) if errs else math.nan
    worst_cos = math.nan if non_finite or not coss else min(coss)
    unchecked, empty = never_checked(comparisons)
    nothing = uncheckable_text(unchecked, empty, next((c.outputs for c in comparisons if c.outputs), ()))
    if nothing and not failed:
        return Comparison(False, nothing, math.nan, math.nan, label, non_finite)
    if failed:
        first = failed[0]
        reason = f"{first.label}: {first.reason}" if first.label else first.reason
        if len(failed) > 1:
            reason += f" (and {len(failed) - 1} more of {len(comparisons)} samples)"
        return Comparison(False, reason, worst_err, worst_cos, label, non_finite)
    note = f"; output(s) {', '.join(repr(n) for n in empty)} empty on every input: not checked" if empty else ""
    return Comparison(
        True,
        f"{len(comparisons)} inputs within tolerance (max abs error {worst_err:.3g}, cosine {worst_cos:.6f}){note}",
        worst_err,
        worst_cos,
        label,
    )


def _worst_cosine(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else min(a, b)


def compare_runner(run: Runner, captured: CapturedModel, settings: FormatSettings) -> tuple[Comparison, bool]:
    """Run every check input through `run` and compare with eager, with the tolerance for the precision.
    A quantized artifact is checked on real samples only: the capture's synthetic check inputs
    (negated, scaled by 4, zeroed) lie outside the calibrated ranges by construction."""
    tol = settings.tolerance_for(settings.precision)
    quantized = precisions.is_quantized(settings.precision)
    cases = [(f"golden sample {i}", s, e) for i, (s, e) in enumerate(zip(captured.samples, captured.expected))]
    cases += [] if quantized else [(c.label, c.sample, c.expected) for c in captured.checks]
    arrays = [
        (label, [sample[name].numpy() for name in captured.input_names], expected) for label, sample, expected in cases
    ]
    return compare_cases(run, arrays, tol, captured.output_names), quantized


def compare_cases(
    run: Runner, cases: list[tuple[str, list[np.ndarray], list[np.ndarray]]], tol: Tolerance, output_names: list[str]
) -> Comparison:
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
