"""Load stage: a model reference (`pkg.mod:attr` or `file.py:attr`) plus weights becomes an nn.Module in eval mode."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UsageError
from .inputs import InputSpec
from .paths import missing_file_text
from .user_code import at_line

DEMO_REFERENCE = "edgepack.demo:make_model"


@dataclass
class LoadedModel:
    """An eval-mode CPU module with what later stages need to know about it."""

    name: str
    module: nn.Module
    inputs: list[InputSpec]
    source: dict[str, Any]
    labels: list[str] | None = None
    preprocessing: dict[str, Any] | None = None
    output_names: list[str] | None = None  # names for the flattened outputs, when the model knows better
    # Real samples to use as golden inputs (the demo's held-out images); None means sample them.
    sample_inputs: list[dict[str, torch.Tensor]] | None = field(default=None, repr=False)


def load_model(
    reference: str | None,
    inputs: list[InputSpec],
    weights: Path | None = None,
    name: str | None = None,
    trust_weights: bool = False,
    search_dir: Path | None = None,
) -> LoadedModel:
    """Import the model, load its weights and check the declared inputs; UsageError on any mistake."""
    if reference is None:
        if inputs or weights:
            raise UsageError("--input and --weights need --model.", "Name your model with --model pkg.module:attr.")
        return _load_demo(name)
    if not inputs:
        raise UsageError(
            f"No inputs declared for model '{reference}'.",
            "Add --input NAME=DIMS, e.g. --input x=1x3x224x224 (repeat it for several inputs).",
        )
    _check_unique_names(inputs)
    if weights is not None:
        check_weights_file(weights)  # before importing the model, which can take long
    module = _instantiate(resolve_reference(reference, search_dir or Path.cwd()), reference)
    source: dict[str, Any] = {"kind": "python", "reference": reference, "weights": None, "weights_sha256": None}
    if weights is not None:
        _load_weights(module, weights, trust_weights)
        source.update(weights=str(weights), weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
    module = module.to("cpu").eval()
    return LoadedModel(name=name or _default_name(module), module=module, inputs=list(inputs), source=source)


def _load_demo(name: str | None) -> LoadedModel:
    from . import demo

    eval_images, _ = demo.load_split("eval")
    samples = [{demo.INPUT_NAME: eval_images[i : i + 1]} for i in range(len(eval_images))]
    return LoadedModel(
        name=name or "demo-digits",
        module=demo.make_model(),
        inputs=[InputSpec(demo.INPUT_NAME, tuple(demo.INPUT_SHAPE), "float32")],
        source={
            "kind": "builtin-demo",
            "reference": DEMO_REFERENCE,
            "weights": "edgepack/demo/weights.pt",
            "weights_sha256": hashlib.sha256(resources.files(demo).joinpath("weights.pt").read_bytes()).hexdigest(),
        },
        labels=list(demo.LABELS),
        preprocessing=dict(demo.PREPROCESSING),
        output_names=[demo.OUTPUT_NAME],
        sample_inputs=samples,
    )


def _check_unique_names(inputs: list[InputSpec]) -> None:
    names = [spec.name for spec in inputs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"Input name(s) given twice: {', '.join(duplicates)}.", "Give each --input a distinct name.")


def resolve_reference(reference: str, search_dir: Path) -> Any:
    """`pkg.module:attr` imports a module; `path/to/file.py:attr` loads a file. attr may be dotted."""
    target, sep, attr = reference.rpartition(":")
    if not sep or not target or not attr:
        raise UsageError(
            f"Cannot read model reference '{reference}'.",
            "Write it as pkg.module:attr or path/to/file.py:attr (attr: an nn.Module, a class or a factory).",
        )
    module = _import_file(target) if target.endswith(".py") else _import_module(target, search_dir)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(obj) if not n.startswith("_")]
            from .errors import did_you_mean

            raise UsageError(
                f"'{target}' has no attribute '{attr}'.{did_you_mean(part, public)}",
                "Check the name after the colon in --model.",
            )
        obj = getattr(obj, part)
    return obj


def _import_module(dotted: str, search_dir: Path) -> Any:
    if str(search_dir) not in sys.path:
        sys.path.insert(0, str(search_dir))  # users run edgepack from their project root
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as exc:
        if exc.name and dotted.startswith(exc.name):
            raise UsageError(
                f"Cannot import module '{dotted}' ({exc}).",
                "Run edgepack from your project's root, install your package, or give a file path: path/to/file.py:attr.",
            ) from exc
        raise UsageError(
            f"Importing '{dotted}' failed: {exc}.{at_line(exc, [])}", "Install what your model module imports."
        ) from exc
    except Exception as exc:  # the module itself raised while it was imported
        raise UsageError(
            f"Importing '{dotted}' failed: {type(exc).__name__}: {exc}{at_line(exc, [])}",
            "Fix the error in that module.",
        ) from exc


def _import_file(path_text: str) -> Any:
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise UsageError(
            f"Model file '{path_text}' {missing_file_text(path)}.", "Check the path before the colon in --model."
        )
    module_name = "edgepack_user_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # let the file import its siblings
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise UsageError(
            f"Running model file {path} failed: {type(exc).__name__}: {exc}{at_line(exc, [path])}",
            "Fix the error in that file.",
        ) from exc
    return module


def _instantiate(obj: Any, reference: str) -> nn.Module:
    if isinstance(obj, nn.Module):
        return obj
    if not callable(obj):
        raise UsageError(
            f"'{reference}' is a {type(obj).__name__}, not an nn.Module or a factory.",
            "Point --model at a module, class or function.",
        )
    required = (
        [
            p
            for p in inspect.signature(obj).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        if _has_signature(obj)
        else []
    )
    if required:
        raise UsageError(
            f"'{reference}' needs arguments ({', '.join(p.name for p in required)}).",
            "Point --model at a factory that takes no arguments, e.g. def make_model(): return Net(width=64).",
        )
    try:
        module = obj()
    except Exception as exc:
        raise UsageError(
            f"Calling '{reference}' failed: {type(exc).__name__}: {exc}{at_line(exc, [])}",
            "Fix the factory or the class.",
        ) from exc
    if not isinstance(module, nn.Module):
        raise UsageError(
            f"'{reference}' returned a {type(module).__name__}, not an nn.Module.", "Return the model from the factory."
        )
    return module


def _has_signature(obj: Any) -> bool:
    try:
        inspect.signature(obj)
        return True
    except (TypeError, ValueError):
        return False


def _load_weights(module: nn.Module, path: Path, trust: bool) -> None:
    """Load a state dict; refuse arbitrary pickles unless the user says the file is trusted."""
    check_weights_file(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        raise UsageError(
            f"{path} holds Python objects besides tensors; edgepack does not unpickle them by default.",
            "Save a plain state dict (torch.save(model.state_dict(), path)), or pass --trust-weights "
            "if you trust this file: unpickling can run arbitrary code.",
        ) from exc
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        raise UsageError(
            f"{path} is not a PyTorch checkpoint (torch.save file): torch.load failed with "
            f"{type(exc).__name__}: {reason} (a truncated or damaged file?)",
            _CHECKPOINT_HINT,
        ) from exc
    state = _state_dict_of(loaded, path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UsageError(
            f"The weights in {path} do not fit the model: {str(exc).splitlines()[0]} {_mismatch_summary(exc)}",
            "Check that --model builds the same architecture the weights were saved from.",
        ) from exc


_CHECKPOINT_HINT = "Pass the file written by torch.save(model.state_dict(), path)."


def check_weights_file(path: Path) -> None:
    """UsageError unless `path` exists and may be a torch.save file: checked before torch.load, whose errors
    on other files are a bare KeyError or a misleading 'objects besides tensors'."""
    if not path.is_file():
        raise UsageError(
            f"Weights file '{path}' {missing_file_text(path)}.",
            "Check the --weights path: a file saved with torch.save.",
        )
    not_a_checkpoint = _not_a_checkpoint(path)
    if not_a_checkpoint:
        raise UsageError(f"{path} is not a PyTorch checkpoint (torch.save file): {not_a_checkpoint}.", _CHECKPOINT_HINT)


def _not_a_checkpoint(path: Path) -> str:
    """Why the file cannot be a torch.save file ('' when it may be one): torch.save writes a zip archive,
    or (before PyTorch 1.6, or with the legacy option) a pickle, which starts with the byte 0x80."""
    with path.open("rb") as handle:
        head = handle.read(64)
    if not head:
        return "the file is empty"
    if zipfile.is_zipfile(path) or head[:1] == b"\x80":
        return ""
    if len(head) > 9 and head[8:10] == b'{"':  # 8-byte header length, then a JSON header
        return (
            "it looks like a safetensors file; load it with safetensors.torch.load_file(path) and "
            "torch.save the resulting dict"
        )
    if head.startswith(b"PK"):
        return "it starts like a zip archive but is not a readable one (truncated or damaged?)"
    text = head.decode("utf-8", errors="replace")
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"it is a text file (it starts with {head[:24].decode('utf-8', errors='replace')!r})"
    return f"it is neither a zip archive nor a pickle (it starts with the bytes {head[:8].hex(' ')})"


def _state_dict_of(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, nn.Module):
        return loaded.state_dict()
    if isinstance(loaded, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(loaded.get(key), dict):
                return loaded[key]  # a training checkpoint wrapping the state dict
        if loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
            return loaded
    raise UsageError(
        f"{path} is not a state dict (found {type(loaded).__name__}).",
        "Save it with torch.save(model.state_dict(), path).",
    )


def _mismatch_summary(exc: RuntimeError) -> str:
    lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
    return ("(" + "; ".join(lines)[:300] + ")") if lines else ""


def _default_name(module: nn.Module) -> str:
    """PascalCase class name to kebab-case: TinyBert -> tiny-bert."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", type(module).__name__)
    return re.sub(r"[^a-z0-9-]+", "-", words.lower()).strip("-") or "model"


# The steps of load_model that edgepack.api (a model object or factory from Python) reuses.
instantiate = _instantiate
load_weights = _load_weights
default_name = _default_name
