"""Model inputs: how users declare them (`--input x=1x3x224x224:float32`) and sample values for them."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from .errors import UsageError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}
_DEFAULT_INT_RANGE = (0, 10)
_SPEC_RE = re.compile(
    r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<dims>[^:]+)"
    r"(?::(?P<dtype>[a-z0-9]+))?(?::(?P<low>-?\d+)\.\.(?P<high>-?\d+))?$"
)
SPEC_SYNTAX = "NAME=DIMS[:DTYPE][:LOW..HIGH], e.g. x=1x3x224x224 or ids=1x128:int64:0..30522"


@dataclass(frozen=True)
class InputSpec:
    """One named model input. `value_range` is [low, high) for integer inputs (token ids, indices)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    value_range: tuple[int, int] | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def is_integer(self) -> bool:
        return self.dtype in ("int64", "int32")

    def to_json(self) -> dict:
        out: dict = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.value_range is not None:
            out["value_range"] = list(self.value_range)
        return out

    def __str__(self) -> str:
        return f"{self.name}={'x'.join(map(str, self.shape))}:{self.dtype}"


def parse_input_spec(text: str) -> InputSpec:
    """Parse `NAME=DIMS[:DTYPE][:LOW..HIGH]`; raise UsageError saying what is wrong."""
    match = _SPEC_RE.match(text.strip())
    if not match:
        raise UsageError(f"Cannot read input '{text}'.", f"Write it as {SPEC_SYNTAX}.")
    dims = match["dims"].lower().split("x")
    if not all(d.isdigit() and int(d) > 0 for d in dims):
        raise UsageError(
            f"Input '{text}' has a dimension that is not a positive integer: {match['dims']}.",
            "Give every dimension as a number, e.g. 1x3x224x224 (dynamic dimensions are not supported yet).",
        )
    dtype = match["dtype"] or "float32"
    if dtype not in DTYPES:
        raise UsageError(f"Input '{text}' has unknown dtype '{dtype}'.", f"Use one of: {', '.join(DTYPES)}.")
    value_range = None
    if match["low"] is not None:
        value_range = (int(match["low"]), int(match["high"]))
        if value_range[0] >= value_range[1]:
            raise UsageError(f"Input '{text}' has an empty range.", "Write LOW..HIGH with LOW < HIGH (HIGH is excluded).")
        if dtype not in ("int64", "int32"):
            raise UsageError(f"Input '{text}' gives a range for a {dtype} input.", "Ranges apply to int64/int32 inputs only.")
    return InputSpec(match["name"], tuple(int(d) for d in dims), dtype, value_range)


def integer_range(spec: InputSpec, model: torch.nn.Module) -> tuple[int, int]:
    """The [low, high) range to sample an integer input from.

    Token ids must stay below the smallest embedding table, or eager PyTorch itself fails.
    """
    if spec.value_range is not None:
        return spec.value_range
    sizes = [m.num_embeddings for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    return (0, min(sizes)) if sizes else _DEFAULT_INT_RANGE


def sample_inputs(specs: list[InputSpec], model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic sample values for every input (normal floats, uniform integers, random bools)."""
    rng = np.random.default_rng(seed)
    values: dict[str, torch.Tensor] = {}
    for spec in specs:
        if spec.is_integer:
            low, high = integer_range(spec, model)
            array = rng.integers(low, high, size=spec.shape)
        elif spec.dtype == "bool":
            array = rng.random(spec.shape) < 0.5
        else:
            array = rng.standard_normal(spec.shape)
        values[spec.name] = torch.from_numpy(np.asarray(array)).to(spec.torch_dtype)
    return values
