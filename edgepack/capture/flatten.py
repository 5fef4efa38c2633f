"""Flattening: models as users have them return tuples, dicts, Hugging Face ModelOutputs or
dataclasses and may take keyword-only arguments; converters want positional tensors in and a
tuple of tensors out. `FlatModel` bridges the two, for eager, scripted and hybrid models alike."""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..load import LoadedModel
from ..noise import short_reason
from ..user_code import at_line, defining_files, definition_site

PathStep = tuple[str, Any]  # ("key", k) | ("index", i) | ("attr", name)

# A key/value cache fed back in, one input per layer and part, as the ONNX community names them
# (past_key_values.N.key), identifier-safe; forward receives them as one `past_key_values` cache object.
_PAST_RE = re.compile(r"past_key_values_(\d+)_(key|value)")


class FlatModel(nn.Module):
    """Positional tensors in, a tuple of tensors out, whatever the wrapped model's signature and output type."""

    def __init__(
        self,
        model: nn.Module,
        input_names: list[str],
        by_keyword: bool,
        output_paths: list[list[PathStep]],
        cache_feed: tuple[type, str] | None = None,
    ):
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.by_keyword = by_keyword
        self.output_paths = output_paths
        # (class, forward's keyword) of the cache the model returns (transformers' DynamicCache), when
        # past_key_values_N_key/value inputs feed one back in: built from those tensors on every call, never state.
        self.cache_feed = cache_feed
        # ((submodule path, attribute), cold value) of the caches forward fills (hazards.Cache): set back before
        # every call, so that eager, every capture and every check run the path that computes them.
        self.caches: list[tuple[tuple[str, str], Any]] = []

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.caches:
            from .hazards import restore

            for key, cold in self.caches:
                restore(self.model, key, cold)
        if self.cache_feed is not None:
            result = self.model(**_with_cache(self.cache_feed, dict(zip(self.input_names, tensors))))
        elif self.by_keyword:
            result = self.model(**dict(zip(self.input_names, tensors)))
        else:
            result = self.model(*tensors)
        return tuple(_follow(result, path) for path in self.output_paths)

    def around(self, model: nn.Module) -> FlatModel:
        """The same flattening around another version of the model (scripted, hybrid)."""
        flat = FlatModel(model, self.input_names, self.by_keyword, self.output_paths, self.cache_feed).eval()
        flat.caches = self.caches
        return flat


def flatten_model(loaded: LoadedModel, example: dict[str, torch.Tensor]) -> tuple[FlatModel, list[str]]:
    """Wrap the loaded model; run it once on `example` to learn its output structure and names."""
    names = [spec.name for spec in loaded.inputs]
    cache_feed = _past_cache_feed(loaded, example) if any(_PAST_RE.fullmatch(n) for n in names) else None
    by_keyword = cache_feed is not None or _call_by_keyword(loaded.module, names)
    args = [example[n] for n in names]
    with torch.no_grad():
        try:  # the model's first run: a mistake here is in the inputs or the model, not in edgepack
            if cache_feed is not None:
                result = loaded.module(**_with_cache(cache_feed, example))
            else:
                result = loaded.module(**example) if by_keyword else loaded.module(*args)
        except Exception as exc:
            raise forward_failed(loaded, exc) from exc
    leaves = list(_leaves(result, []))
    if not leaves:
        raise UsageError("The model's forward returned no tensors.", "Return the output tensor(s) from forward.")
    raw_names = [_name_of(path) for path, _ in leaves]
    if loaded.output_names and len(loaded.output_names) == len(leaves):
        raw_names = loaded.output_names
    output_names = _unique_names(raw_names, set(names))
    flat = FlatModel(loaded.module, names, by_keyword, [path for path, _ in leaves], cache_feed)
    return flat.eval(), output_names


def _past_layers(names: list[str]) -> dict[int, dict[str, str]]:
    """layer -> {"key": input name, "value": input name} of the declared past_key_values_N_key/value inputs."""
    layers: dict[int, dict[str, str]] = {}
    for name in names:
        match = _PAST_RE.fullmatch(name)
        if match:
            layers.setdefault(int(match.group(1)), {})[match.group(2)] = name
    return layers


def _with_cache(cache_feed: tuple[type, str], inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The keyword arguments of one call: the past_key_values_N_key/value tensors gathered into one cache."""
    layers = _past_layers(list(inputs))
    others = {name: value for name, value in inputs.items() if not _PAST_RE.fullmatch(name)}
    pairs = [(inputs[layers[n]["key"]], inputs[layers[n]["value"]]) for n in sorted(layers)]
    cache_type, keyword = cache_feed
    return {**others, keyword: cache_type(pairs)}


def _past_cache_feed(loaded: LoadedModel, example: dict[str, torch.Tensor]) -> tuple[type, str]:
    """The cache class the model returns when called without a past (its own DynamicCache) and the keyword forward
    takes it by, after checking that the declared past inputs cover layers 0..N-1 with a key and a value each."""
    names = [spec.name for spec in loaded.inputs]
    layers = _past_layers(names)
    complete = sorted(layers) == list(range(len(layers))) and all(len(parts) == 2 for parts in layers.values())
    if not complete:
        raise UsageError(
            f"The past key/value inputs ({', '.join(n for n in names if _PAST_RE.fullmatch(n))}) do not cover "
            "layers 0..N-1 with a key and a value each.",
            "Declare past_key_values_N_key and past_key_values_N_value for every layer N from 0, "
            "e.g. --input past_key_values_0_key=1xHEADSxPASTxHEAD_DIM.",
        )
    first = {name: value for name, value in example.items() if not _PAST_RE.fullmatch(name)}
    with torch.no_grad():
        try:
            result = loaded.module(**first)
        except Exception as exc:
            raise forward_failed(loaded, exc) from exc
    caches = [v for v in (result.values() if isinstance(result, dict) else [result]) if _is_kv_cache(v)]
    if not caches:
        raise UsageError(
            "past_key_values_N_key/value inputs were declared, but the model returns no key/value cache to feed "
            "them back into.",
            "Declare past inputs only for a decoder that returns past_key_values (use_cache=True).",
        )
    if len(caches[0].layers) != len(layers):
        raise UsageError(
            f"The model's cache has {len(caches[0].layers)} layers but past inputs were declared for {len(layers)}.",
            f"Declare past_key_values_N_key/value for N = 0..{len(caches[0].layers) - 1}.",
        )
    # transformers 5 renamed forward's past_key_values to cache (the old name warns until it is removed).
    params = inspect.signature(loaded.module.forward).parameters
    return type(caches[0]), "cache" if "cache" in params else "past_key_values"


def forward_failed(loaded: LoadedModel, exc: Exception) -> UsageError:
    """The model's forward raised on the declared example inputs: say on which inputs, where in the
    user's file (the innermost frame there; else forward's definition, for a call that never got in)."""
    module = loaded.module
    where = at_line(exc, defining_files(module), definition_site(module.forward))
    inputs = ", ".join(str(spec) for spec in loaded.inputs)
    return UsageError(
        f"The model's forward failed on the example inputs ({inputs}): {short_reason(exc, 520)}{where}",
        _range_hint(loaded, exc)
        or f"Check the --input names, shapes and dtypes against {type(module).__name__}.forward"
        f"{_signature_text(module.forward)}, in forward's order.",
    )


def _range_hint(loaded: LoadedModel, exc: Exception) -> str | None:
    """When an integer input's values overran an index (an embedding table, say): the hint is about the
    :LOW..HIGH range the values were sampled from, not about names and shapes."""
    if "out of range" not in str(exc) and "out of bounds" not in str(exc):
        return None
    from ..inputs import integer_range

    sizes = [m.num_embeddings for m in loaded.module.modules() if isinstance(m, nn.Embedding)]
    for spec in loaded.inputs:
        if not spec.is_integer:
            continue
        low, high = integer_range(spec, loaded.module)
        dims = "x".join(str(d) for d in spec.shape)
        if sizes and (high > min(sizes) or low < 0):
            return (
                f"Input '{spec.name}' was sampled from [{low}, {high}) (its :LOW..HIGH range), but the model's "
                f"smallest nn.Embedding has {min(sizes)} rows: give a range inside it, e.g. "
                f"--input {spec.name}={dims}:{spec.dtype}:0..{min(sizes)}."
            )
        return (
            f"Input '{spec.name}' was sampled from [{low}, {high}) (its :LOW..HIGH range) and an index went out "
            f"of range: give the range of values the model accepts, e.g. --input {spec.name}={dims}:{spec.dtype}:0..N."
        )
    return None


def _signature_text(function: Any) -> str:
    try:
        return str(inspect.signature(function))
    except (TypeError, ValueError):
        return "(...)"


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
    elif _is_kv_cache(value):  # Hugging Face's DynamicCache (use_cache=True): present key/value per layer
        for index, layer in enumerate(value.layers):
            for part in ("keys", "values"):
                if isinstance(getattr(layer, part, None), torch.Tensor):
                    yield path + [("cache", (index, part))], getattr(layer, part)
    else:
        raise UsageError(
            f"The model's output contains a {type(value).__name__}, which no deployment format can carry.",
            "Return tensors (alone, or in a tuple, dict or dataclass) from forward.",
        )


def _is_kv_cache(value: Any) -> bool:
    """A transformers Cache (DynamicCache and kin): `.layers`, each holding `keys` and `values` tensors."""
    return type(value).__name__.endswith("Cache") and isinstance(getattr(value, "layers", None), list)


def _follow(value: Any, path: list[PathStep]) -> torch.Tensor:
    for kind, step in path:
        if kind == "cache":
            value = getattr(value.layers[step[0]], step[1])
        else:
            value = getattr(value, step) if kind == "attr" else value[step]
    return value


def _name_of(path: list[PathStep]) -> str:
    if not path:
        return "output"
    if path[-1][0] == "cache":  # the ONNX community's names: present.N.key / present.N.value, identifier-safe
        index, part = path[-1][1]
        return f"present_{index}_{part[:-1]}"
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
