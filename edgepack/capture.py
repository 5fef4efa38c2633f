"""Capture stage: wrap the model so inputs and outputs are flat and named, trace it, and check the trace.

Models as users have them return tuples, dicts or Hugging Face ModelOutputs and take keyword
arguments; converters want positional tensors in and a tuple of tensors out. `FlatModel` bridges
the two, and `capture` records every tracer warning and checks the trace against eager PyTorch on
inputs it was not traced with.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .compare import Comparison, compare_outputs
from .errors import BuildError, UsageError
from .load import LoadedModel
from .noise import filter_known_warnings

PathStep = tuple[str, Any]  # ("key", k) | ("index", i) | ("attr", name)


@dataclass(frozen=True)
class Hazard:
    """Something in the model that tracing may have recorded wrongly, with the user's source line."""

    kind: str
    message: str
    file: str
    line: int

    def location(self) -> str:
        return f"{self.file}:{self.line}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "message": self.message, "file": self.file, "line": self.line}


@dataclass
class CaptureAttempt:
    strategy: str
    ok: bool
    error: str = ""
    divergence: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class CapturedModel:
    """The flat eager model, its TorchScript capture, how it was obtained, and the golden samples:
    `samples[i]` are input tensors by name and `expected[i]` eager PyTorch's outputs for them."""

    loaded: LoadedModel
    eager: "FlatModel"
    scripted: torch.jit.ScriptModule
    output_names: list[str]
    strategy: str
    attempts: list[CaptureAttempt]
    hazards: list[Hazard]
    samples: list[dict[str, torch.Tensor]] = field(repr=False, default_factory=list)
    expected: list[list[np.ndarray]] = field(repr=False, default_factory=list)

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.loaded.inputs]


class FlatModel(nn.Module):
    """Positional tensors in, a tuple of tensors out, whatever the wrapped model's signature and output type."""

    def __init__(self, model: nn.Module, input_names: list[str], by_keyword: bool, output_paths: list[list[PathStep]]):
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.by_keyword = by_keyword
        self.output_paths = output_paths

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.by_keyword:
            result = self.model(**dict(zip(self.input_names, tensors)))
        else:
            result = self.model(*tensors)
        return tuple(_follow(result, path) for path in self.output_paths)


def flatten_model(loaded: LoadedModel, example: dict[str, torch.Tensor]) -> tuple[FlatModel, list[str]]:
    """Wrap the loaded model; run it once on `example` to learn its output structure and names."""
    names = [spec.name for spec in loaded.inputs]
    by_keyword = _call_by_keyword(loaded.module, names)
    args = [example[n] for n in names]
    with torch.no_grad():
        result = loaded.module(**example) if by_keyword else loaded.module(*args)
    leaves = list(_leaves(result, []))
    if not leaves:
        raise UsageError("The model's forward returned no tensors.", "Return the output tensor(s) from forward.")
    raw_names = [_name_of(path) for path, _ in leaves]
    if loaded.output_names and len(loaded.output_names) == len(leaves):
        raw_names = loaded.output_names
    output_names = _unique_names(raw_names, set(names))
    return FlatModel(loaded.module, names, by_keyword, [path for path, _ in leaves]).eval(), output_names


def capture(loaded: LoadedModel, samples: list[dict[str, torch.Tensor]], tolerance_atol: float = 1e-5) -> CapturedModel:
    """Trace with the first sample and check the trace against eager on all the others."""
    eager, output_names = flatten_model(loaded, samples[0])
    traced, hazards, attempt = _trace(eager, loaded, samples, tolerance_atol, output_names)
    if not attempt.ok:
        raise BuildError(_divergence_message(attempt, hazards), _divergence_hint(hazards))
    expected = [run_eager(eager, sample, loaded) for sample in samples]
    return CapturedModel(loaded, eager, traced, output_names, "trace", [attempt], hazards, samples, expected)


def run_eager(eager: FlatModel, sample: dict[str, torch.Tensor], loaded: LoadedModel) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.detach().numpy() for t in eager(*(sample[spec.name] for spec in loaded.inputs))]


def _trace(
    eager: FlatModel, loaded: LoadedModel, samples: list[dict[str, torch.Tensor]], atol: float, output_names: list[str]
) -> tuple[torch.jit.ScriptModule | None, list[Hazard], CaptureAttempt]:
    names = [spec.name for spec in loaded.inputs]
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        filter_known_warnings()
        try:
            traced = torch.jit.trace(eager, tuple(samples[0][n] for n in names), check_trace=False)
        except Exception as exc:  # tracing failures come in many exception types
            return None, [], CaptureAttempt("trace", False, error=f"{type(exc).__name__}: {exc}")
    hazards = _hazards_from(caught)
    checks = [(f"golden sample {i}", s) for i, s in enumerate(samples) if i > 0] + _branch_variants(samples[0])
    divergence = [c.to_json() for c in _check_against_eager(traced, eager, checks, names, output_names, atol) if not c.ok]
    attempt = CaptureAttempt("trace", not divergence, divergence=divergence)
    if divergence:
        attempt.error = "the trace's outputs differ from eager PyTorch on inputs it was not traced with"
    return traced, hazards, attempt


def _branch_variants(sample: dict[str, torch.Tensor]) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """The traced sample negated, scaled up and zeroed: values that take other data-dependent branches."""
    def vary(transform):
        return {name: transform(t) if t.is_floating_point() else t for name, t in sample.items()}

    return [("the traced sample negated", vary(torch.neg)), ("the traced sample times 4", vary(lambda t: t * 4)),
            ("all-zero floats", vary(torch.zeros_like))]


def _check_against_eager(
    traced: torch.jit.ScriptModule, eager: FlatModel, checks: list[tuple[str, dict[str, torch.Tensor]]], names: list[str],
    output_names: list[str], atol: float,
) -> list[Comparison]:
    results = []
    with torch.no_grad():
        for label, sample in checks:
            args = tuple(sample[n] for n in names)
            try:
                expected = [t.numpy() for t in eager(*args)]
            except Exception:  # eager itself rejects this input (e.g. all zeros): nothing to compare
                continue
            try:
                got = [t.numpy() for t in traced(*args)]
            except Exception as exc:
                results.append(Comparison.error(label, f"{type(exc).__name__}: {exc}"))
                continue
            results.append(compare_outputs(got, expected, atol=atol, rtol=1e-4, min_cosine=0.9999, label=label,
                                           names=output_names))
    return results


_HAZARD_KINDS = (
    ("python_bool", re.compile(r"Python boolean")),
    ("python_index", re.compile(r"Python index")),
    ("python_number", re.compile(r"Python (number|float|integer)")),
    ("python_list", re.compile(r"Python list")),
    ("tensor_iteration", re.compile(r"Iterating over a tensor")),
    ("tensor_constant", re.compile(r"torch\.tensor results are registered as constants")),
)


def _hazards_from(caught: list[warnings.WarningMessage]) -> list[Hazard]:
    hazards: dict[tuple, Hazard] = {}
    for warning in caught:
        if not issubclass(warning.category, torch.jit.TracerWarning):
            continue
        text = str(warning.message).split("\n")[0]
        kind = next((k for k, pattern in _HAZARD_KINDS if pattern.search(text)), "tracer_warning")
        hazard = Hazard(kind, text, str(Path(warning.filename)), warning.lineno)
        hazards.setdefault((hazard.kind, hazard.file, hazard.line), hazard)
    return list(hazards.values())


def _divergence_message(attempt: CaptureAttempt, hazards: list[Hazard]) -> str:
    if not attempt.divergence:
        return f"Tracing the model failed: {attempt.error}"
    first = attempt.divergence[0]
    lines = [f"The traced model computes something different from eager PyTorch on an input it was not traced with "
             f"({first['label']}: {first['reason']})."]
    lines += [f"  {h.location()}: {h.message}" for h in hazards]
    return "\n".join(lines)


def _divergence_hint(hazards: list[Hazard]) -> str:
    if hazards:
        return "The lines above make the trace depend on the example input's values; replace data-dependent Python " \
               "control flow with tensor ops (torch.where, masking), or move it into a @torch.jit.script function."
    return "Look for Python-side state or values computed from tensors in forward; the trace baked them in."


def _call_by_keyword(module: nn.Module, names: list[str]) -> bool:
    """Keyword calls reach keyword-only parameters; positional calls suit models whose names differ from ours."""
    params = inspect.signature(module.forward).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()) or all(n in params for n in names):
        return True
    positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind is p.VAR_POSITIONAL for p in params.values()) or len(names) <= len(positional):
        return False
    raise UsageError(
        f"{type(module).__name__}.forward takes {len(positional)} positional input(s) but {len(names)} were declared.",
        f"Name the inputs after forward's parameters ({', '.join(params)}) or declare fewer --input.",
    )


def _leaves(value: Any, path: list[PathStep]):
    """Yield (path, tensor) for every tensor in a nested output; None entries are skipped (ModelOutput does too)."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif value is None:
        return
    elif isinstance(value, dict):  # includes Hugging Face ModelOutput, an OrderedDict
        for key, item in value.items():
            yield from _leaves(item, path + [("key", key)])
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _leaves(getattr(value, f.name), path + [("attr", f.name)])
    elif isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            yield from _leaves(item, path + [("index", index)])
    else:
        raise UsageError(
            f"The model's output contains a {type(value).__name__}, which no deployment format can carry.",
            "Return tensors (alone, or in a tuple, dict or dataclass) from forward.",
        )


def _follow(value: Any, path: list[PathStep]) -> torch.Tensor:
    for kind, step in path:
        value = getattr(value, step) if kind == "attr" else value[step]
    return value


def _name_of(path: list[PathStep]) -> str:
    if not path:
        return "output"
    if all(kind == "index" for kind, _ in path):
        return "output_" + "_".join(str(step) for _, step in path)
    return "_".join(str(step) for _, step in path)


def _unique_names(raw: list[str], taken: set[str]) -> list[str]:
    """Identifier-safe output names that clash neither with each other nor with input names (Core ML needs both)."""
    names: list[str] = []
    for name in raw:
        clean = re.sub(r"\W", "_", name)
        clean = clean if re.match(r"[A-Za-z_]", clean) else f"output_{clean}"
        candidate, n = clean, 1
        while candidate in taken or candidate in names:
            candidate, n = f"{clean}_{n}", n + 1
        names.append(candidate)
    return names
