"""Output comparison shared by the trace check and the smoke tests: shapes first, then values."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Comparison:
    ok: bool
    reason: str
    max_abs_err: float = math.nan
    cosine: float = math.nan
    label: str = ""

    @staticmethod
    def error(label: str, reason: str) -> "Comparison":
        return Comparison(False, reason, label=label)

    def to_json(self) -> dict:
        return {"label": self.label, "ok": self.ok, "reason": self.reason,
                "max_abs_err": _finite_or_none(self.max_abs_err), "cosine": _finite_or_none(self.cosine)}


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
    worst_err, worst_cos, failures = 0.0, 1.0, []
    for name, g, e in zip(names, got, expected):
        g, e = np.asarray(g), np.asarray(e)
        if g.shape != e.shape:  # np broadcasting would hide a wrong shape
            return Comparison.error(label, f"'{name}' has shape {list(g.shape)}, expected {list(e.shape)}")
        g64, e64 = g.astype(np.float64), e.astype(np.float64)
        if not np.all(np.isfinite(g64)) and np.any(np.isfinite(e64) != np.isfinite(g64)):
            return Comparison.error(label, f"'{name}' has NaN or infinite values where the reference has none")
        err = float(np.max(np.abs(g64 - e64), initial=0.0, where=np.isfinite(e64)))
        cos = cosine_similarity(g64, e64)
        limit = atol + rtol * float(np.max(np.abs(e64), initial=0.0, where=np.isfinite(e64)))
        worst_err, worst_cos = max(worst_err, err), min(worst_cos, cos)
        if err > limit:
            failures.append(f"'{name}' max abs error {err:.3g} > {limit:.3g}")
        if cos < min_cosine:
            failures.append(f"'{name}' cosine {cos:.6f} < {min_cosine}")
    reason = "; ".join(failures) if failures else f"within tolerance (max abs error {worst_err:.3g}, cosine {worst_cos:.6f})"
    return Comparison(not failures, reason, worst_err, worst_cos, label)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the flattened arrays; two all-zero arrays count as identical."""
    a, b = np.nan_to_num(a.ravel()), np.nan_to_num(b.ravel())
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
    errs = [c.max_abs_err for c in comparisons if not math.isnan(c.max_abs_err)]
    coss = [c.cosine for c in comparisons if not math.isnan(c.cosine)]
    worst_err = max(errs) if errs else math.nan
    worst_cos = min(coss) if coss else math.nan
    if failed:
        first = failed[0]
        reason = f"{first.label}: {first.reason}" if first.label else first.reason
        if len(failed) > 1:
            reason += f" (and {len(failed) - 1} more of {len(comparisons)} samples)"
        return Comparison(False, reason, worst_err, worst_cos, label)
    return Comparison(True, f"{len(comparisons)} inputs within tolerance "
                            f"(max abs error {worst_err:.3g}, cosine {worst_cos:.6f})", worst_err, worst_cos, label)


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value
