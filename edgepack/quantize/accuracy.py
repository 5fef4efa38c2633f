"""Accuracy of an artifact against eager fp32 PyTorch on an evaluation set: top-1 agreement for
classifier outputs, cosine similarity, max abs error and SQNR for every output."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ..capture.ladder import CapturedModel
from ..compare import cosine_similarity, non_finite_mismatch
from ..formats.base import Runner
from ..jsonio import finite_or_none
from ..targets import AccuracyBudget


@dataclass
class EvalSet:
    """Samples with eager fp32's outputs for them, and a sentence saying where the samples came from."""

    samples: list[dict[str, torch.Tensor]]
    expected: list[list[np.ndarray]]
    description: str
    real: bool = True  # False for seeded random inputs: their top-1 flips between near-tied classes mean little


def eval_set(
    captured: CapturedModel, samples: list[dict[str, torch.Tensor]], description: str, real: bool = True
) -> EvalSet:
    """Run eager fp32 once over the samples; every artifact is compared with these outputs."""
    expected = []
    with torch.inference_mode():
        for sample in samples:
            outputs = captured.eager(*(sample[name] for name in captured.input_names))
            expected.append([o.detach().numpy().copy() for o in outputs])
    return EvalSet(samples, expected, description, real)


@dataclass
class Accuracy:
    """Worst output's figures over the evaluation set. `top1_agreement` is None when no output is a
    (batch, classes) score; `sqnr_db` is None when the artifact reproduces eager exactly. When the
    artifact gives inf/NaN where eager does not (`non_finite` > 0), max abs error is inf and cosine
    and SQNR are nan: such an artifact is never within any budget."""

    samples: int
    top1_agreement: float | None
    cosine: float  # of each output over the whole set (samples concatenated), worst output
    worst_cosine: float  # the lowest per-sample cosine (degenerate for outputs of one or two values)
    max_abs_err: float
    sqnr_db: float | None
    non_finite: int = 0  # output values that are inf/NaN where eager's are not (or the reverse)
    values: int = 0  # output values compared, over every output and sample
    eager_finite_there: bool = True  # eager's values are finite wherever the artifact's and eager's disagree

    def to_json(self) -> dict:
        # JSON has no NaN/Infinity: non-finite figures are null, and `non_finite_values` says why.
        return {
            "samples": self.samples,
            "top1_agreement": self.top1_agreement,
            "cosine": finite_or_none(self.cosine),
            "worst_cosine": finite_or_none(self.worst_cosine),
            "max_abs_err": finite_or_none(self.max_abs_err),
            "sqnr_db": finite_or_none(self.sqnr_db),
            "non_finite_values": self.non_finite,
            "values": self.values,
        }

    def non_finite_text(self) -> str:
        if not self.non_finite:
            return ""
        if self.eager_finite_there:
            return f"output has inf/NaN in {self.non_finite} of {self.values} values where eager's are finite"
        return f"output and eager disagree on inf/NaN in {self.non_finite} of {self.values} values"

    def summary(self) -> str:
        top1 = f"top-1 agreement {self.top1_agreement:.4f}, " if self.top1_agreement is not None else ""
        sqnr = f"{self.sqnr_db:.1f} dB" if self.sqnr_db is not None else "exact"
        figures = f"{top1}cosine {self.cosine:.5f}, max abs error {self.max_abs_err:.3g}, SQNR {sqnr}"
        return f"{self.non_finite_text()}: {figures}" if self.non_finite else figures


def measure(run: Runner, data: EvalSet, input_names: list[str]) -> Accuracy:
    """Run the artifact on every evaluation sample and compare with eager's outputs."""
    got = [run([sample[name].numpy() for name in input_names]) for sample in data.samples]
    outputs = len(data.expected[0])
    per_output = [
        _output_figures(
            [np.asarray(g[i], np.float64) for g in got], [np.asarray(e[i], np.float64) for e in data.expected]
        )
        for i in range(outputs)
    ]
    top1 = [f["top1"] for f in per_output if f["top1"] is not None]
    sqnr = [f["sqnr"] for f in per_output if f["sqnr"] is not None]
    return Accuracy(
        samples=len(data.samples),
        top1_agreement=min(top1) if top1 else None,
        cosine=_worst(f["cosine"] for f in per_output),
        worst_cosine=_worst(f["worst_cosine"] for f in per_output),
        max_abs_err=max(f["max_abs_err"] for f in per_output),
        sqnr_db=_worst(sqnr) if sqnr else None,
        non_finite=sum(f["non_finite"] for f in per_output),
        values=sum(f["values"] for f in per_output),
        eager_finite_there=all(f["eager_finite_there"] for f in per_output),
    )


def _worst(values: Iterable[float]) -> float:
    """The lowest value, nan when any is nan (Python's min would skip it or not, depending on order)."""
    values = list(values)
    return math.nan if any(math.isnan(v) for v in values) else min(values)


def _output_figures(got: list[np.ndarray], expected: list[np.ndarray]) -> dict:
    for g, e in zip(got, expected):
        if g.shape != e.shape:
            raise ValueError(f"output shape {list(g.shape)} differs from eager's {list(e.shape)}")
    masks = [non_finite_mismatch(g, e) for g, e in zip(got, expected)]
    non_finite = sum(int(np.sum(m)) for m in masks)
    values = sum(g.size for g in got)
    if non_finite:  # no figure describes inf/NaN where eager has numbers: every one is a miss
        return {
            "top1": _top1_agreement(got, expected),
            "cosine": math.nan,
            "worst_cosine": math.nan,
            "max_abs_err": math.inf,
            "sqnr": math.nan,
            "non_finite": non_finite,
            "values": values,
            "eager_finite_there": all(bool(np.all(np.isfinite(e[m]))) for e, m in zip(expected, masks)),
        }
    # Non-finite values left are the same in both (eager's own inf/NaN): the figures are over the rest.
    got = [np.where(np.isfinite(e), g, 0.0) for g, e in zip(got, expected)]
    expected = [np.where(np.isfinite(e), e, 0.0) for e in expected]
    cosines = [cosine_similarity(g, e) for g, e in zip(got, expected)]
    signal = sum(float(np.sum(e * e)) for e in expected)
    noise = sum(float(np.sum((g - e) ** 2)) for g, e in zip(got, expected))
    return {
        "top1": _top1_agreement(got, expected),
        "cosine": cosine_similarity(
            np.concatenate([g.ravel() for g in got]), np.concatenate([e.ravel() for e in expected])
        ),
        "worst_cosine": float(np.min(cosines)),
        "max_abs_err": max(float(np.max(np.abs(g - e), initial=0.0)) for g, e in zip(got, expected)),
        "sqnr": None if noise == 0.0 else 10.0 * math.log10(max(signal, 1e-30) / noise),
        "non_finite": 0,
        "values": values,
        "eager_finite_there": True,
    }


def _top1_agreement(got: list[np.ndarray], expected: list[np.ndarray]) -> float | None:
    """Share of rows whose arg-max class matches eager's, for (batch, classes) outputs only."""
    if expected[0].ndim != 2 or expected[0].shape[1] < 2:
        return None
    same = sum(int(np.sum(np.argmax(g, axis=1) == np.argmax(e, axis=1))) for g, e in zip(got, expected))
    return same / sum(e.shape[0] for e in expected)


def budget_misses(accuracy: Accuracy, budget: AccuracyBudget, gate_top1: bool = True) -> list[str]:
    """What the figures miss of the target's accuracy budget (empty when it holds). inf/NaN in the outputs
    is always a miss, and a nan figure misses its bound (the comparisons are written so that nan fails)."""
    misses = [accuracy.non_finite_text()] if accuracy.non_finite else []
    if (
        gate_top1
        and budget.min_top1_agreement is not None
        and accuracy.top1_agreement is not None
        and not accuracy.top1_agreement >= budget.min_top1_agreement
    ):
        misses.append(f"top-1 agreement {accuracy.top1_agreement:.4f} < {budget.min_top1_agreement}")
    if budget.min_cosine is not None and not accuracy.cosine >= budget.min_cosine:
        misses.append(f"cosine {accuracy.cosine:.5f} < {budget.min_cosine}")
    if budget.min_sqnr_db is not None and accuracy.sqnr_db is not None and not accuracy.sqnr_db >= budget.min_sqnr_db:
        misses.append(f"SQNR {accuracy.sqnr_db:.1f} dB < {budget.min_sqnr_db} dB")
    if budget.max_abs_err is not None and not accuracy.max_abs_err <= budget.max_abs_err:
        misses.append(f"max abs error {accuracy.max_abs_err:.3g} > {budget.max_abs_err}")
    return misses
