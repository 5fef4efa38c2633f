"""Hazards: what in a model makes a trace record something other than what the model computes.

Each hazard carries the user's file and line (never torch's), why it matters and the idiomatic
fix, for build reports and `edgepack doctor`. Sources: torch's TracerWarnings, and what torch does
not warn about: random ops, Python attributes changed by forward, and Python loops unrolled over
a dimension the user declared dynamic.
"""

from __future__ import annotations

import copy
import inspect
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# kind -> (why it matters, the idiomatic fix)
EXPLANATIONS: dict[str, tuple[str, str]] = {
    "python_bool": (
        "A Python if/while on a tensor value: the trace keeps only the branch the example input took.",
        "Use torch.where(cond, a, b) or masking instead of a Python if on a tensor; or move the branch into a "
        "@torch.jit.script function or submodule, which keeps both branches.",
    ),
    "python_number": (
        "A tensor became a Python number (int(), float(), .item()): the trace freezes the example's value.",
        "Keep the value a tensor and use tensor ops on it; if it must be a number, compute it in a scripted helper.",
    ),
    "python_index": (
        "A tensor was used as a Python index: the trace freezes the example's index.",
        "Index with tensor ops (torch.gather, index_select, masking) instead of a Python int taken from a tensor.",
    ),
    "python_list": (
        "A tensor became a Python list (.tolist()): the trace freezes the example's values.",
        "Keep the values in a tensor and operate on them with tensor ops.",
    ),
    "tensor_iteration": (
        "Iterating over a tensor unrolls the loop to the example's length.",
        "Vectorize the loop (operate on the whole dimension at once), or script it with @torch.jit.script_if_tracing.",
    ),
    "tensor_constant": (
        "torch.tensor(...) in forward is baked into the trace as a constant: right only if its values never "
        "depend on the input (edgepack's device pass moves it to the input's device, and reports it).",
        "Create it once in __init__ with self.register_buffer(name, torch.tensor(...), persistent=False), "
        "or build it from an input with x.new_tensor(...).",
    ),
    "nondeterministic": (
        "A random op runs at inference: outputs differ from run to run, so no artifact can be checked against eager.",
        "Keep randomness out of inference (dropout is fine in eval mode); pass noise in as an input if the model needs it.",
    ),
    "python_state": (
        "forward changes a Python attribute: eager results depend on how often the model was called, the trace "
        "bakes in the value at trace time, and ONNX and Core ML cannot carry the state at all.",
        "Keep inference stateless: pass the state in as an input and return the new state as an output.",
    ),
    "unrolled_loop": (
        "A Python loop over a dynamic dimension was unrolled: the trace only works for the example's size.",
        "Vectorize the loop over that dimension, or put it in a @torch.jit.script_if_tracing helper.",
    ),
    "tracer_warning": (
        "torch.jit.trace warned that the trace may not generalize to other inputs.",
        "Read the warning; it usually names a Python-side value computed from a tensor.",
    ),
}
# Hazards no capture strategy can make safe: the build stops on them.
FATAL_KINDS = ("python_state", "nondeterministic")

_TRACER_KINDS = (
    ("python_bool", re.compile(r"Python boolean")),
    ("python_index", re.compile(r"Python index")),
    ("python_number", re.compile(r"Python (number|float|integer)")),
    ("python_list", re.compile(r"Python list")),
    ("tensor_iteration", re.compile(r"Iterating over a tensor")),
    ("tensor_constant", re.compile(r"torch\.tensor results are registered as constants")),
)
_RANDOM_OPS = {
    "aten::rand",
    "aten::randn",
    "aten::rand_like",
    "aten::randn_like",
    "aten::randint",
    "aten::randint_like",
    "aten::bernoulli",
    "aten::bernoulli_",
    "aten::multinomial",
    "aten::normal",
    "aten::randperm",
    "aten::uniform_",
    "aten::normal_",
    "aten::exponential_",
    "aten::native_dropout",
}
_TRAIN_FLAG_OPS = {"aten::dropout", "aten::feature_dropout", "aten::alpha_dropout", "aten::feature_alpha_dropout"}
_FRAME_RE = re.compile(r"^(?P<file>.+)\((?P<line>\d+)\): (?P<func>\S+)$")
_LIBRARY_DIRS = (str(Path(torch.__file__).parent), str(Path(__file__).parent))


@dataclass(frozen=True)
class Hazard:
    kind: str
    message: str
    file: str
    line: int

    def location(self) -> str:
        return f"{self.file}:{self.line}" if self.file else "(unknown location)"

    @property
    def in_library(self) -> bool:
        """Raised inside PyTorch's own code (shape checks in nn.functional, say): nothing the user can
        change. It does not push the capture off the trace; the check inputs still test the trace."""
        return bool(self.file) and self.file.startswith(_LIBRARY_DIRS[0])

    @property
    def why(self) -> str:
        why = EXPLANATIONS.get(self.kind, EXPLANATIONS["tracer_warning"])[0]
        if self.in_library:
            return (
                "Inside PyTorch's own code, usually a shape check: reported, and the trace is kept only if it "
                "matches eager on every check input. " + why
            )
        return why

    @property
    def fix(self) -> str:
        if self.in_library:  # advice to rewrite torch's own code would only mislead
            return (
                "Nothing to change in your code. If a check input diverges, the branch depends on a shape or "
                "value your example fixes: declare that dimension dynamic, or add --check-inputs that take the other branch."
            )
        return EXPLANATIONS.get(self.kind, EXPLANATIONS["tracer_warning"])[1]

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "message": self.message,
            "file": self.file,
            "line": self.line,
            "why": self.why,
            "fix": self.fix,
            "in_library": self.in_library,
        }


def dedupe(hazards: list[Hazard]) -> list[Hazard]:
    seen: dict[tuple, Hazard] = {}
    for hazard in hazards:
        seen.setdefault((hazard.kind, hazard.file, hazard.line), hazard)
    return list(seen.values())


def from_tracer_warnings(caught: list[warnings.WarningMessage]) -> list[Hazard]:
    hazards = []
    for warning in caught:
        if not issubclass(warning.category, torch.jit.TracerWarning):
            continue
        text = str(warning.message).split("\n")[0]
        kind = next((k for k, pattern in _TRACER_KINDS if pattern.search(text)), "tracer_warning")
        hazards.append(Hazard(kind, text, str(warning.filename), warning.lineno))
    return dedupe(hazards)


def random_ops(graph: torch.Graph) -> list[Hazard]:
    """Random ops anywhere in the graph, and dropout whose training flag is a constant True."""
    hazards = []
    for node in all_nodes(graph):
        kind = node.kind()
        train_flag = kind in _TRAIN_FLAG_OPS and _constant_bool(list(node.inputs())[2]) is True
        if kind in _RANDOM_OPS or train_flag:
            file, line = user_location(node)
            hazards.append(Hazard("nondeterministic", f"{kind} runs at inference", file, line))
    return dedupe(hazards)


@dataclass(frozen=True)
class Cache:
    """An attribute forward fills on its first call and then only reuses (an anchor grid, an attention-bias
    table): idempotent, so not state. The capture runs every call from its `cold` value, so what is captured
    is the path that recomputes it."""

    owner: str
    attr: str
    cold: Any
    warm: str  # what the first call put there, for the report
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.owner}.{self.attr}" if self.owner else self.attr

    def to_json(self) -> dict:
        return {
            "attribute": self.where,
            "file": self.file,
            "line": self.line,
            "detail": f"forward fills self.{self.attr} ({_short(self.cold)} -> {self.warm}) and a second call with "
            "the same input leaves it and the outputs as they were: a cache, captured from its cold value "
            "(the path that recomputes it) and checked against eager",
        }


def snapshot(model: nn.Module) -> dict[tuple[str, str], Any]:
    """The model's Python attributes and buffers, copied: take it before the model's first call (the cold state)."""
    return _snapshot(model)


def state_changes(
    model: nn.Module, run: Any, cold: dict[tuple[str, str], Any] | None = None
) -> tuple[list[Hazard], list[Cache]]:
    """Attributes and buffers forward changes: hazards for real state (located at the assignment in forward), and
    the caches among them. `run()` calls the model once on the example and returns its outputs; `cold` is the
    snapshot from before the model's first call (default: now). Each changed attribute is set back to its cold
    value, then the model runs twice: an attribute that the second call leaves as the first left it, with the
    same outputs both times, is a cache; anything else (a counter, running statistics) is state."""
    cold = _snapshot(model) if cold is None else cold
    for key, value in cold.items():
        if not _same(value, _snapshot_value(model, key)):
            restore(model, key, value)
    first = run()
    filled = _snapshot(model)
    second = run()
    after = _snapshot(model)
    same_outputs = len(first) == len(second) and all(_same(a, b) for a, b in zip(first, second))
    hazards, caches = [], []
    for key, old in cold.items():
        warm, new = filled.get(key), after.get(key)
        if _same(old, warm) and _same(warm, new):
            continue
        owner, attr = key
        file, line = _assignment_line(model.get_submodule(owner) if owner else model, attr)
        if same_outputs and _same(warm, new):
            caches.append(Cache(owner, attr, old, _short(warm), file, line))
            continue
        where = f"{owner}.{attr}" if owner else attr
        hazards.append(
            Hazard("python_state", f"forward changes self.{attr} ({where}: {_short(old)} -> {_short(new)})", file, line)
        )
    return hazards, caches


def restore_changed(model: nn.Module, saved: dict[tuple[str, str], Any]) -> list[str]:
    """Put back every attribute and buffer of `saved` (a snapshot) that has changed since; their names."""
    changed = [key for key, value in saved.items() if not _same(value, _snapshot_value(model, key))]
    for key in changed:
        restore(model, key, saved[key])
    return [f"{owner}.{attr}" if owner else attr for owner, attr in changed]


def restore(model: nn.Module, key: tuple[str, str], value: Any) -> None:
    """Put a copy of `value` back into the attribute or buffer `key` of `model` (skipped in scripted submodules,
    which keep their attributes in C++)."""
    owner, attr = key
    try:
        module = model.get_submodule(owner) if owner else model
    except AttributeError:
        return
    if isinstance(module, torch.jit.ScriptModule):
        return
    if attr in module._buffers:
        module._buffers[attr] = value.clone() if isinstance(value, torch.Tensor) else value
    elif attr not in module._modules and attr not in module._parameters:
        setattr(module, attr, _fresh(value))


def _fresh(value: Any) -> Any:
    """A copy made of tensor clones and new containers (torch.export can follow these; not copy.deepcopy)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_fresh(v) for v in value)
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    return value  # numbers, strings, None: immutable


def _snapshot_value(model: nn.Module, key: tuple[str, str]) -> Any:
    owner, attr = key
    module = model.get_submodule(owner) if owner else model
    return module._buffers[attr] if attr in module._buffers else vars(module).get(attr)


def unrolled_loops(graph_at_example: torch.Graph, graph_at_other_size: torch.Graph, symbol: str) -> list[Hazard]:
    """Lines of user code that produced a different number of graph nodes when `symbol` changed size."""
    first, second = _nodes_per_line(graph_at_example), _nodes_per_line(graph_at_other_size)
    hazards = []
    for location in sorted(set(first) | set(second)):
        if first.get(location, 0) != second.get(location, 0):
            file, line = location
            hazards.append(
                Hazard(
                    "unrolled_loop",
                    f"this line's work changes with dynamic dimension {symbol} "
                    f"({first.get(location, 0)} vs {second.get(location, 0)} graph nodes)",
                    file,
                    line,
                )
            )
    return hazards


def all_nodes(graph: torch.Graph) -> list[torch.Node]:
    found, stack = [], list(graph.nodes())
    while stack:
        node = stack.pop()
        found.append(node)
        for block in node.blocks():
            stack.extend(block.nodes())
    return found


def user_location(node: torch.Node) -> tuple[str, int]:
    """The innermost frame of the node's source range that is the user's code, not torch's or ours."""
    for frame in node.sourceRange().splitlines():
        match = _FRAME_RE.match(frame.strip())
        if match and not match["file"].startswith(_LIBRARY_DIRS):
            return match["file"], int(match["line"])
    return "", 0


def _nodes_per_line(graph: torch.Graph) -> Counter:
    counts: Counter = Counter()
    for node in all_nodes(graph):
        if node.kind() != "prim::Constant":
            location = user_location(node)
            if location[0]:
                counts[location] += 1
    return counts


def _constant_bool(value: torch.Value) -> bool | None:
    node = value.node()
    if node.kind() == "prim::Constant" and value.type().kind() == "BoolType":
        return bool(value.toIValue())
    return None


def _snapshot(model: nn.Module) -> dict[tuple[str, str], Any]:
    state: dict[tuple[str, str], Any] = {}
    for owner, module in model.named_modules():
        for attr, value in vars(module).items():
            if attr.startswith("_") or attr == "training":
                continue
            if isinstance(value, (int, float, str, bool, tuple, list, dict, torch.Tensor)) or value is None:
                state[(owner, attr)] = _copy(value)
        for attr, buffer in module.named_buffers(recurse=False):
            state[(owner, attr)] = buffer.detach().clone()
    return state


def _copy(value: Any) -> Any:
    try:
        return copy.deepcopy(value)
    except Exception:
        return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):  # lists of tensors: element by element
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:
        return a is b


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        text = f"{type(value).__name__} of {len(value)} tensors {[list(v.shape) for v in value]}"
        return text if len(text) <= 60 else text[:57] + "..."
    text = f"tensor{list(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _assignment_line(module: nn.Module, attr: str) -> tuple[str, int]:
    """Where forward assigns self.<attr> (or updates a buffer in place), for the report."""
    try:
        lines, start = inspect.getsourcelines(type(module).forward)
        file = inspect.getsourcefile(type(module).forward) or ""
    except (OSError, TypeError):
        return "", 0
    pattern = re.compile(rf"self\.{re.escape(attr)}\b(\s*[-+*/%@|&^]?=(?!=)|\.\w+_\(|\[)")
    for offset, text in enumerate(lines):
        if pattern.search(text):
            return file, start + offset
    return file, start
