"""User-supplied check inputs (`--check-inputs`): a .npz laid out like golden/inputs.npz (one array
per input name, axis 0 = sample), or a `module:attr` / `file.py:attr` callable yielding dicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..datafiles import read_npz
from ..errors import UsageError
from ..inputs import InputSpec
from ..load import resolve_reference
from ..paths import missing_file_text
from ..user_code import items_from_callable


def load_check_inputs(
    source: str, specs: list[InputSpec], search_dir: Path | None = None
) -> list[dict[str, torch.Tensor]]:
    if source.endswith(".npz"):
        return _from_npz(Path(source), specs)
    factory = resolve_reference(source, search_dir or Path.cwd())
    if not callable(factory):
        raise UsageError(
            f"Check inputs '{source}' is not callable.", "Point --check-inputs at a function yielding dicts of tensors."
        )
    items = items_from_callable(factory, source, "--check-inputs")
    samples = [_as_sample(item, specs, f"{source} item {i}") for i, item in enumerate(items)]
    if not samples:
        raise UsageError(f"Check inputs '{source}' yielded nothing.", "Yield at least one dict of input tensors.")
    return samples


def _from_npz(path: Path, specs: list[InputSpec]) -> list[dict[str, torch.Tensor]]:
    if not path.is_file():
        raise UsageError(f"Check inputs file '{path}' {missing_file_text(path)}.", "Check the --check-inputs path.")
    data = read_npz(path, "--check-inputs")  # a junk or oversized file is a usage error, read before anything runs
    missing = [s.name for s in specs if s.name not in data]
    if missing:
        raise UsageError(
            f"{path} has no array for input(s) {', '.join(missing)} (it has {', '.join(data)}).",
            "Store one array per input name, with the samples along axis 0.",
        )
    counts = {len(data[s.name]) for s in specs}
    if len(counts) != 1:
        raise UsageError(
            f"{path}: inputs have different sample counts {sorted(counts)}.",
            "Give every input the same number of samples.",
        )
    return [
        _as_sample({s.name: data[s.name][i] for s in specs}, specs, f"{path} sample {i}") for i in range(counts.pop())
    ]


def _as_sample(item: object, specs: list[InputSpec], where: str) -> dict[str, torch.Tensor]:
    if not isinstance(item, dict):
        raise UsageError(f"{where} is a {type(item).__name__}, not a dict of input name -> array.", "Yield dicts.")
    sample = {}
    for spec in specs:
        if spec.name not in item:
            raise UsageError(f"{where} has no value for input '{spec.name}'.", "Give every input a value.")
        tensor = torch.as_tensor(np.asarray(item[spec.name])).to(spec.torch_dtype)
        if not spec.accepts_shape(tuple(tensor.shape)):
            raise UsageError(
                f"{where}: input '{spec.name}' has shape {list(tensor.shape)}, expected {list(spec.shape)} "
                "(only dimensions declared dynamic may differ).",
                "Fix the check input's shape.",
            )
        spec.check_finite(tensor, where)
        sample[spec.name] = tensor
    return sample
