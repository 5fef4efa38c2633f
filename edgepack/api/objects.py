"""A model object (or factory, or `module:attr` reference) and example inputs become a LoadedModel.

What the CLI learns from `--model` and `--input` specs, the Python API reads off the objects: the input
names from `forward`'s signature (or the dict's keys), shapes and dtypes from the example tensors, and the
dynamic dimensions from `dynamic={"input_ids": {1: "SEQ"}}`.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UsageError
from ..inputs import DTYPES, InputSpec, parse_input_spec, sample_inputs
from ..load import LoadedModel, check_weights_file, default_name, instantiate, load_weights, resolve_reference
from ..pipeline import GOLDEN_SAMPLES  # the caller's example, then seeded random samples up to this count

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SYMBOL_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")


def loaded_from_objects(
    model: Any,
    example_inputs: Any,
    dynamic: Mapping[str, Mapping[int, str]] | None = None,
    name: str | None = None,
    weights: Path | None = None,
    trust_weights: bool = False,
) -> LoadedModel:
    """The model as the pipeline's load stage would give it. A module object is deep-copied first: the
    build puts its copy in eval mode on the CPU and edits it (tensor attributes become buffers), and
    the caller's object, with its training state, must come out of the call unchanged."""
    module, source = _module_of(model)
    if weights is not None:
        check_weights_file(weights)
        load_weights(module, weights, trust_weights)
        source.update(weights=str(weights), weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
    module = module.to("cpu").eval()
    example = _named_examples(module, example_inputs)
    _check_dynamic(dynamic or {}, list(example))
    specs = [_spec(input_name, tensor, (dynamic or {}).get(input_name)) for input_name, tensor in example.items()]
    samples = [example] + [sample_inputs(specs, module, seed) for seed in range(1, GOLDEN_SAMPLES)]
    return LoadedModel(
        name=name or default_name(module), module=module, inputs=specs, source=source, sample_inputs=samples
    )


def _module_of(model: Any) -> tuple[nn.Module, dict[str, Any]]:
    source: dict[str, Any] = {"kind": "python-object", "reference": "", "weights": None, "weights_sha256": None}
    if isinstance(model, nn.Module):
        source["reference"] = _reference_of(type(model))
        try:
            return copy.deepcopy(model), source
        except Exception as exc:  # a module holding an open file, a lock, a CUDA stream...
            raise UsageError(
                f"model: edgepack copies the module before building (so that your object is left as it was), "
                f"and copy.deepcopy failed: {type(exc).__name__}: {exc}",
                "Pass a factory instead (a class or a function taking no arguments that returns the model).",
            ) from exc
    if isinstance(model, str):
        source.update(kind="python", reference=model)
        return instantiate(resolve_reference(model, Path.cwd()), model), source
    if callable(model):
        source["reference"] = _reference_of(model)
        return instantiate(model, source["reference"]), source
    raise UsageError(
        f"model is a {type(model).__name__}, not an nn.Module, a factory or a 'module:attr' string.",
        "Pass the model object (edgepack.build(model.eval(), example_inputs, ...)), a class or function "
        "taking no arguments that returns it, or a reference such as 'mypkg.models:make_net'.",
    )


def _reference_of(obj: Any) -> str:
    """`module:qualname` of a class or function: the provenance names where the model was defined."""
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__name__)}"


def _named_examples(module: nn.Module, example_inputs: Any) -> dict[str, torch.Tensor]:
    """Example tensors by input name, in the order forward takes them (the pipeline calls it positionally)."""
    params = _forward_params(module)
    if isinstance(example_inputs, Mapping):
        return _from_mapping(example_inputs, params)
    values = list(example_inputs) if isinstance(example_inputs, (tuple, list)) else [example_inputs]
    if not values:
        raise UsageError("example_inputs is empty.", "Pass a tensor, a tuple of tensors or a dict of named tensors.")
    names = params.positional
    if len(values) > len(names) and not params.var_positional:
        raise UsageError(
            f"example_inputs holds {len(values)} tensors, but {type(module).__name__}.forward takes "
            f"{len(names)} input(s) ({', '.join(names) or 'none'}).",
            "Pass one example tensor per input of forward.",
        )
    names = names + [f"input_{i}" for i in range(len(names), len(values))]
    return {names[i]: _tensor(value, f"example_inputs[{i}]") for i, value in enumerate(values)}


@dataclass(frozen=True)
class _Params:
    positional: list[str]  # forward's positional parameters, in order
    var_positional: bool  # forward takes *args


def _forward_params(module: nn.Module) -> _Params:
    try:
        signature = inspect.signature(module.forward)
    except (TypeError, ValueError):  # a builtin or C++ forward: no names to read
        return _Params([], True)
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [p for p in signature.parameters.values() if p.kind in kinds]
    return _Params(
        [p.name for p in params],
        any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in signature.parameters.values()),
    )


def _from_mapping(example_inputs: Mapping[Any, Any], params: _Params) -> dict[str, torch.Tensor]:
    keys = list(example_inputs)
    if not keys or not all(isinstance(k, str) for k in keys):
        raise UsageError(
            f"example_inputs is a dict with keys {keys!r}; name each example tensor by a string.",
            "Pass {'input_ids': ids, 'attention_mask': mask}: forward's parameter names as keys.",
        )
    unknown = [k for k in keys if k not in params.positional]
    if unknown and params.positional:
        raise UsageError(
            f"example_inputs names {', '.join(unknown)}, which forward does not take "
            f"(its inputs: {', '.join(params.positional)}).",
            "Name each example tensor after a parameter of forward.",
        )
    order = [n for n in params.positional if n in keys] or keys
    # edgepack calls the capture with the inputs by position: a skipped parameter before a given one would
    # receive the wrong tensor.
    last = params.positional.index(order[-1]) if order[-1] in params.positional else 0
    skipped = [n for n in params.positional[:last] if n not in keys]
    if skipped:
        raise UsageError(
            f"example_inputs skips {', '.join(skipped)}, which forward takes before {order[-1]}: the bundle's "
            "inputs are passed by position.",
            f"Give a tensor for {', '.join(skipped)} too, or reorder forward's parameters.",
        )
    return {k: _tensor(example_inputs[k], f"example_inputs[{k!r}]") for k in order}


def _tensor(value: Any, where: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise UsageError(
            f"{where} is a {type(value).__name__}, not a tensor.",
            "Pass torch tensors (or NumPy arrays): one per input of forward.",
        )
    return value.detach().to("cpu").clone()


def _spec(name: str, tensor: torch.Tensor, axes: Mapping[int, str] | None) -> InputSpec:
    """The input as the CLI's spec syntax would declare it, read through the same parser (and its checks)."""
    where = f"example_inputs[{name!r}]"
    if not _NAME_RE.match(name):
        raise UsageError(f"{where}: '{name}' cannot name an input.", "Use letters, digits and '_' (not first).")
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in DTYPES:
        raise UsageError(f"{where} is {dtype}; edgepack takes {', '.join(DTYPES)} inputs.", "Convert the tensor.")
    if tensor.dim() == 0 or 0 in tensor.shape:
        raise UsageError(
            f"{where} has shape {list(tensor.shape)}; every input needs at least one dimension, none of size 0.",
            "Pass an example with the shape the app will feed, e.g. torch.randn(1, 3, 224, 224).",
        )
    symbols = _axes(name, tensor, axes or {})
    dims = "x".join(f"{symbols[i]}={size}" if i in symbols else str(size) for i, size in enumerate(tensor.shape))
    value_range = ""
    if dtype in ("int64", "int32"):  # samples stay within the example's values (token ids, masks)
        value_range = f":{int(tensor.min())}..{int(tensor.max()) + 1}"
    spec = parse_input_spec(f"{name}={dims}:{dtype}{value_range}")
    spec.check_finite(tensor, "example_inputs")
    return spec


def _axes(name: str, tensor: torch.Tensor, axes: Mapping[int, str]) -> dict[int, str]:
    if not isinstance(axes, Mapping):
        raise UsageError(
            f"dynamic[{name!r}] is a {type(axes).__name__}, not a dict of axis -> symbol.",
            f'Write dynamic={{"{name}": {{1: "SEQ"}}}}.',
        )
    checked = {}
    for axis, symbol in axes.items():
        if not isinstance(axis, int) or not -tensor.dim() <= axis < tensor.dim():
            raise UsageError(
                f"dynamic[{name!r}] names axis {axis!r}, but the example has {tensor.dim()} dimensions.",
                f"Give axes from 0 to {tensor.dim() - 1}.",
            )
        if not isinstance(symbol, str) or not _SYMBOL_RE.match(symbol):
            raise UsageError(
                f"dynamic[{name!r}][{axis}] is {symbol!r}; a dynamic dimension is named by an upper-case symbol.",
                'Write it like "SEQ", "H" or "BATCH" (the same symbol on two inputs means the same size).',
            )
        checked[axis % tensor.dim()] = symbol
    return checked


def _check_dynamic(dynamic: Mapping[str, Any], names: list[str]) -> None:
    if not isinstance(dynamic, Mapping):
        raise UsageError(
            f"dynamic is a {type(dynamic).__name__}, not a dict.", 'Write dynamic={"input_ids": {1: "SEQ"}}.'
        )
    unknown = [str(k) for k in dynamic if k not in names]
    if unknown:
        raise UsageError(
            f"dynamic names {', '.join(unknown)}, which is not an input (the inputs: {', '.join(names)}).",
            "Key dynamic by the input names (forward's parameter names, or example_inputs' keys).",
        )
