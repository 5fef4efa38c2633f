"""Capture stage: turn the flattened model into TorchScript that computes what eager PyTorch does.

A ladder of strategies, each a small class; every attempt is recorded with what went wrong:
  trace   torch.jit.trace; kept when it has no hazards and matches eager on every check input
  script  torch.jit.script of the whole model (keeps data-dependent control flow)
  hybrid  script only the submodules where the hazards are, trace the rest
If none is clean, a trace that matches eager everywhere is kept with its hazards reported;
otherwise the build fails naming the hazards and their lines. Check inputs are the golden
samples, the traced sample negated, scaled and zeroed (other branches), other sizes for every
dynamic dimension, and the user's own.
"""

from __future__ import annotations

import copy
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from . import hazards as hz
from .compare import Comparison, compare_outputs
from .errors import BuildError, UsageError
from .flatten import FlatModel, flatten_model
from .hazards import Hazard
from .inputs import dynamic_symbols, resized, sample_inputs
from .load import LoadedModel
from .noise import filter_known_warnings

MODES = ("auto", "trace", "script")
_CHECK_ATOL, _CHECK_RTOL, _CHECK_COSINE = 1e-5, 1e-4, 0.9999


class CaptureError(BuildError):
    """No capture can be trusted; carries what was found, for reports and `edgepack doctor`."""

    def __init__(self, message: str, hint: str, hazards: list[Hazard], attempts: list["CaptureAttempt"]) -> None:
        super().__init__(message, hint)
        self.hazards = hazards
        self.attempts = attempts


@dataclass
class Check:
    """An input the capture must handle like eager PyTorch, with eager's outputs for it."""

    label: str
    sample: dict[str, torch.Tensor]
    expected: list[np.ndarray]


@dataclass
class CaptureAttempt:
    strategy: str
    ok: bool
    error: str = ""
    divergence: list[dict] = field(default_factory=list)
    scripted_submodules: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"strategy": self.strategy, "ok": self.ok, "error": self.error, "divergence": self.divergence,
                "scripted_submodules": self.scripted_submodules}


@dataclass
class CapturedModel:
    """The flat eager model, its TorchScript capture, how it was obtained, and what it was checked on:
    `samples[i]` are golden input tensors by name, `expected[i]` eager's outputs for them."""

    loaded: LoadedModel
    eager: FlatModel
    scripted: torch.jit.ScriptModule
    output_names: list[str]
    strategy: str
    attempts: list[CaptureAttempt]
    hazards: list[Hazard]
    samples: list[dict[str, torch.Tensor]] = field(repr=False, default_factory=list)
    expected: list[list[np.ndarray]] = field(repr=False, default_factory=list)
    checks: list[Check] = field(repr=False, default_factory=list)

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.loaded.inputs]

    def to_json(self) -> dict:
        return {"strategy": self.strategy, "attempts": [a.to_json() for a in self.attempts],
                "hazards": [h.to_json() for h in self.hazards], "checked_inputs": len(self.samples) + len(self.checks)}


# Strategies ---------------------------------------------------------------------------------------

class Strategy(ABC):
    name: str

    @abstractmethod
    def build(self, flat: FlatModel, example: tuple[torch.Tensor, ...], found: list[Hazard]) -> tuple[torch.jit.ScriptModule, list[str]]:
        """Return the capture and the submodules it scripted; raise when the strategy does not apply."""


class Trace(Strategy):
    name = "trace"

    def __init__(self, prior: torch.jit.ScriptModule | None = None) -> None:
        self.prior = prior  # the trace the hazard pass already made: tracing twice costs time on big models

    def build(self, flat, example, found):
        return (self.prior if self.prior is not None else _trace(flat, example)), []


class Script(Strategy):
    name = "script"

    def build(self, flat, example, found):
        scripted = torch.jit.script(copy.deepcopy(flat.model))
        return _trace(flat.around(scripted), example), ["(whole model)"]


class Hybrid(Strategy):
    name = "hybrid"

    def build(self, flat, example, found):
        model = copy.deepcopy(flat.model)
        targets = _submodules_holding(model, found)
        if not targets:
            raise BuildError("no hazard lies inside a submodule: nothing smaller than the whole model to script")
        for name in targets:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, torch.jit.script(model.get_submodule(name)))
        return _trace(flat.around(model), example), targets


# The ladder ---------------------------------------------------------------------------------------

def capture(
    loaded: LoadedModel,
    samples: list[dict[str, torch.Tensor]],
    mode: str = "auto",
    user_checks: list[dict[str, torch.Tensor]] | None = None,
) -> CapturedModel:
    """Capture the model with the first strategy that holds on every check input (see the module doc)."""
    if mode not in MODES:
        raise UsageError(f"Unknown capture mode '{mode}'.", f"Use one of: {', '.join(MODES)}.")
    flat, output_names = flatten_model(loaded, samples[0])
    names = [spec.name for spec in loaded.inputs]
    example = tuple(samples[0][n] for n in names)
    state = hz.state_changes(loaded.module, lambda: [flat(*example) for _ in range(2)])
    checks = _checks(loaded, flat, samples, user_checks or [])
    first_trace, trace_hazards = _trace_hazards(flat, loaded, example)
    found = state + trace_hazards
    fatal = [h for h in found if h.kind in hz.FATAL_KINDS]
    if fatal:
        raise CaptureError(diagnosis("No capture can be trusted", fatal, []), fatal[0].fix, found, [])

    attempts: list[CaptureAttempt] = []
    accepted: tuple[str, torch.jit.ScriptModule] | None = None
    fallback = None
    for strategy in _strategies_for(mode, first_trace):
        module, attempt = _attempt(strategy, flat, example, found, checks, output_names, names)
        attempts.append(attempt)
        clean = attempt.ok and (strategy.name != "trace" or not found or mode == "trace")
        if clean:
            accepted = (strategy.name, module)
            break
        if strategy.name == "trace" and attempt.ok:
            fallback = module  # matches eager everywhere we looked: kept if nothing cleaner works
    else:
        if mode == "auto" and attempts[0].ok:
            accepted = ("trace", fallback)
    if accepted is None:
        raise CaptureError(diagnosis("No capture matches eager PyTorch", found, attempts), _hint(found, mode), found, attempts)
    expected = [_eager(flat, sample, names) for sample in samples]
    return CapturedModel(loaded, flat, accepted[1], output_names, accepted[0], attempts, found, samples, expected,
                         [c for c in checks if not c.label.startswith("golden sample")])


def _strategies_for(mode: str, first_trace: torch.jit.ScriptModule | None) -> tuple[Strategy, ...]:
    ladder = (Trace(first_trace), Script(), Hybrid())
    return {"auto": ladder, "trace": ladder[:1], "script": ladder[1:2]}[mode]


def _attempt(strategy, flat, example, found, checks, output_names, names) -> tuple[Any, CaptureAttempt]:
    try:
        with torch.no_grad():
            module, scripted = strategy.build(flat, example, found)
    except Exception as exc:  # scripting fails in many exception types; the message is the diagnosis
        return None, CaptureAttempt(strategy.name, False, error=_first_lines(exc))
    divergence = [c.to_json() for c in _compare(module, checks, names, output_names) if not c.ok]
    error = "outputs differ from eager PyTorch on inputs it was not traced with" if divergence else ""
    return module, CaptureAttempt(strategy.name, not divergence, error, divergence, scripted)


def _trace(flat: FlatModel, example: tuple[torch.Tensor, ...]) -> torch.jit.ScriptModule:
    with warnings.catch_warnings(), torch.no_grad():
        filter_known_warnings()
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the hazard pass records these
        return torch.jit.trace(flat, example, check_trace=False)


def _trace_hazards(
    flat: FlatModel, loaded: LoadedModel, example: tuple[torch.Tensor, ...]
) -> tuple[torch.jit.ScriptModule | None, list[Hazard]]:
    """Trace once with warnings recorded; also look for random ops and loops unrolled over dynamic sizes."""
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        filter_known_warnings()
        try:
            traced = torch.jit.trace(flat, example, check_trace=False)
        except Exception:
            return None, hz.from_tracer_warnings(caught)  # the trace attempt reports the failure itself
    found = hz.from_tracer_warnings(caught) + hz.random_ops(traced.inlined_graph)
    for symbol, size in dynamic_symbols(loaded.inputs).items():
        other = sample_inputs(resized(loaded.inputs, {symbol: size * 2}), loaded.module, seed=7)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                retraced = torch.jit.trace(flat, tuple(other[s.name] for s in loaded.inputs), check_trace=False)
        except Exception:
            continue  # the other size fails in eager too; the checks will say so
        found += hz.unrolled_loops(traced.inlined_graph, retraced.inlined_graph, symbol)
    return traced, hz.dedupe(found)


def _checks(loaded: LoadedModel, flat: FlatModel, samples, user_checks) -> list[Check]:
    names = [spec.name for spec in loaded.inputs]
    candidates = [(f"golden sample {i}", s) for i, s in enumerate(samples) if i > 0]
    candidates += _branch_variants(samples[0])
    for symbol, size in dynamic_symbols(loaded.inputs).items():
        for other in sorted({max(1, size // 2), size * 2} - {size}):
            specs = resized(loaded.inputs, {symbol: other})
            candidates.append((f"{symbol}={other}", sample_inputs(specs, loaded.module, seed=100 + other)))
    candidates += [(f"user check input {i}", s) for i, s in enumerate(user_checks)]
    checks = []
    for label, sample in candidates:
        try:
            checks.append(Check(label, sample, _eager(flat, sample, names)))
        except Exception as exc:
            if label.startswith("user"):
                raise UsageError(f"Eager PyTorch fails on {label}: {_first_lines(exc)}", "Fix the check input.") from exc
            # eager itself rejects this generated input (e.g. all zeros): nothing to compare against
    return checks


def _branch_variants(sample: dict[str, torch.Tensor]) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """The traced sample negated, scaled up and zeroed: values that take other data-dependent branches."""
    if not any(t.is_floating_point() for t in sample.values()):
        return []

    def vary(transform):
        return {name: transform(t) if t.is_floating_point() else t for name, t in sample.items()}

    return [("the traced sample negated", vary(torch.neg)), ("the traced sample times 4", vary(lambda t: t * 4)),
            ("all-zero floats", vary(torch.zeros_like))]


def _compare(module: torch.jit.ScriptModule, checks: list[Check], names, output_names) -> list[Comparison]:
    results = []
    with torch.no_grad():
        for check in checks:
            try:
                got = [t.numpy() for t in module(*(check.sample[n] for n in names))]
            except Exception as exc:
                results.append(Comparison.error(check.label, _first_lines(exc)))
                continue
            results.append(compare_outputs(got, check.expected, _CHECK_ATOL, _CHECK_RTOL, _CHECK_COSINE,
                                           check.label, output_names))
    return results


def _eager(flat: FlatModel, sample: dict[str, torch.Tensor], names: list[str]) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.detach().numpy() for t in flat(*(sample[n] for n in names))]


def _submodules_holding(model: nn.Module, found: list[Hazard]) -> list[str]:
    """The outermost non-root submodules whose forward source contains a hazard's line."""
    import inspect

    holders = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(h + ".") for h in holders):
            continue
        try:
            lines, start = inspect.getsourcelines(type(module).forward)
            file = inspect.getsourcefile(type(module).forward)
        except (OSError, TypeError):
            continue
        if any(h.file == file and start <= h.line < start + len(lines) for h in found):
            holders.append(name)
    return holders


def diagnosis(headline: str, found: list[Hazard], attempts: list[CaptureAttempt]) -> str:
    lines = [f"{headline}."]
    lines += [f"  {h.location()}: {h.kind}: {h.message}" for h in found]
    for attempt in attempts:
        detail = attempt.error
        if attempt.divergence:
            first = attempt.divergence[0]
            detail = f"diverges on {first['label']}: {first['reason']}"
        lines.append(f"  {attempt.strategy}: {'ok' if attempt.ok else 'failed'}{': ' + detail if detail else ''}")
    return "\n".join(lines)


def _hint(found: list[Hazard], mode: str) -> str:
    if found:
        return found[0].fix + " (`edgepack doctor` explains every hazard.)"
    if mode != "auto":
        return "Try --capture auto, which falls back to scripting."
    return "Look for Python-side values computed from tensors in forward; the trace baked them in."


def _first_lines(exc: BaseException, limit: int = 6) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return "\n".join(text.splitlines()[:limit])
