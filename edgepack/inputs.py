"""Model inputs: how users declare them (`--input x=1x3x224x224:float32`) and sample values for them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import UsageError

if TYPE_CHECKING:  # parsing specs needs no torch: `edgepack verify` and `inspect` import this module's syntax
    import torch

# The input dtypes a spec may name; each is also the name of its torch dtype.
DTYPES = ("float32", "float16", "int64", "int32", "bool")
_DEFAULT_INT_RANGE = (0, 10)
_SPEC_RE = re.compile(
    r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<dims>[^:]+)"
    r"(?::(?P<dtype>[a-z0-9]+))?(?::(?P<low>-?\d+)\.\.(?P<high>-?\d+))?$"
)
SPEC_SYNTAX = (
    "NAME=DIMS[:DTYPE][:LOW..HIGH], e.g. x=1x3x224x224, ids=1x128:int64:0..30522, "
    "or with dynamic dimensions x=1x3xH=224xW=224"
)
_DYNAMIC_DIM_RE = re.compile(r"^(?P<name>[A-Z][A-Z0-9_]*)(?:=(?P<size>\d+))?$")


@dataclass(frozen=True)
class InputSpec:
    """One named model input. `value_range` is [low, high) for integer inputs (token ids, indices)."""

    name: str
    shape: tuple[int, ...]  # the example size of every dimension
    dtype: str = "float32"
    value_range: tuple[int, int] | None = None
    dynamic: tuple[str | None, ...] = ()  # per dimension: a symbol (H, SEQ) when it may vary, else None

    def dynamic_axes(self) -> dict[int, str]:
        return {axis: symbol for axis, symbol in enumerate(self.dynamic) if symbol}

    def accepts_shape(self, shape: tuple[int, ...] | list[int]) -> bool:
        """Same rank, and the same size on every dimension not declared dynamic."""
        dynamic = self.dynamic_axes()
        return len(shape) == len(self.shape) and all(
            shape[axis] == size for axis, size in enumerate(self.shape) if axis not in dynamic
        )

    def check_finite(self, values: torch.Tensor, where: str) -> None:
        """UsageError for inf/NaN in user-given input values: they make every comparison and range meaningless."""
        import torch

        if values.is_floating_point() and not bool(torch.isfinite(values).all()):
            bad = int((~torch.isfinite(values)).sum())
            raise UsageError(
                f"{where}: input '{self.name}' has inf/NaN in {bad} of {values.numel()} values.",
                "Give finite values (NaN often means a preprocessing step divided by zero).",
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype)

    @property
    def is_integer(self) -> bool:
        return self.dtype in ("int64", "int32")

    def to_json(self) -> dict:
        out: dict = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.value_range is not None:
            out["value_range"] = list(self.value_range)
        if self.dynamic_axes():
            out["dynamic_axes"] = {str(axis): symbol for axis, symbol in self.dynamic_axes().items()}
        return out

    def __str__(self) -> str:
        dims = [
            f"{d}={size}" if d else str(size) for d, size in zip(self.dynamic or [None] * len(self.shape), self.shape)
        ]
        return f"{self.name}={'x'.join(dims)}:{self.dtype}"


def parse_input_spec(text: str) -> InputSpec:
    """Parse `NAME=DIMS[:DTYPE][:LOW..HIGH]`; raise UsageError saying what is wrong."""
    match = _SPEC_RE.match(text.strip())
    if not match:
        raise UsageError(f"Cannot read input '{text}'.", f"Write it as {SPEC_SYNTAX}.")
    shape, dynamic = _parse_dims(text, match["dims"])
    dtype = match["dtype"] or "float32"
    if dtype not in DTYPES:
        raise UsageError(f"Input '{text}' has unknown dtype '{dtype}'.", f"Use one of: {', '.join(DTYPES)}.")
    value_range = None
    if match["low"] is not None:
        value_range = (int(match["low"]), int(match["high"]))
        if value_range[0] >= value_range[1]:
            raise UsageError(
                f"Input '{text}' has an empty range.", "Write LOW..HIGH with LOW < HIGH (HIGH is excluded)."
            )
        if dtype not in ("int64", "int32"):
            raise UsageError(
                f"Input '{text}' gives a range for a {dtype} input.", "Ranges apply to int64/int32 inputs only."
            )
    spec = InputSpec(match["name"], shape, dtype, value_range, dynamic if any(dynamic) else ())
    _check_size(text, spec)
    return spec


# Largest sample edgepack makes for one input (checked before allocating): sampling goes through float64, and a
# dynamic dimension is also checked at double its size.
MAX_SAMPLE_BYTES = 1 << 30


def _check_size(text: str, spec: InputSpec) -> None:
    values = 1
    for size in spec.shape:
        values *= size
    largest = values * 2 ** len(spec.dynamic_axes())  # every dynamic dimension doubled
    needed = largest * 8  # numpy samples in float64/int64 before the cast
    if needed > MAX_SAMPLE_BYTES:
        raise UsageError(
            f"Input '{text}' needs {needed / 2**30:.1f} GiB per sample ({largest:,} values"
            f"{', dynamic dimensions at double size' if spec.dynamic_axes() else ''}), over edgepack's limit of "
            f"{MAX_SAMPLE_BYTES / 2**30:.0f} GiB.",
            "Declare a smaller example size (a dynamic dimension, SEQ=128, is checked at half and double its size).",
        )


def _parse_dims(text: str, dims_text: str) -> tuple[tuple[int, ...], tuple[str | None, ...]]:
    """`1x3xH=224xW=224` -> ((1, 3, 224, 224), (None, None, "H", "W"))."""
    shape: list[int] = []
    dynamic: list[str | None] = []
    for token in dims_text.split("x"):
        if token.isdigit() and int(token) > 0:
            shape.append(int(token))
            dynamic.append(None)
            continue
        symbol = _DYNAMIC_DIM_RE.match(token)
        if symbol and symbol["size"] is None:
            raise UsageError(
                f"Dynamic dimension '{token}' in input '{text}' has no example size.",
                f"Write {token}=SIZE, e.g. {token}=224: edgepack traces with that size and checks others.",
            )
        if not symbol or int(symbol["size"]) < 1:
            raise UsageError(
                f"Input '{text}' has a dimension that is neither a positive integer nor SYMBOL=SIZE: '{token}'.",
                "Give every dimension as a number (224) or, when it may vary, as an upper-case symbol with "
                "its example size (H=224).",
            )
        shape.append(int(symbol["size"]))
        dynamic.append(symbol["name"])
    return tuple(shape), tuple(dynamic)


def resized(specs: list[InputSpec], sizes: dict[str, int]) -> list[InputSpec]:
    """The specs with their dynamic dimensions set to `sizes` (symbol -> size)."""
    out = []
    for spec in specs:
        shape = tuple(
            sizes.get(symbol, size) if symbol else size
            for symbol, size in zip(spec.dynamic or [None] * len(spec.shape), spec.shape)
        )
        out.append(InputSpec(spec.name, shape, spec.dtype, spec.value_range, spec.dynamic))
    return out


def dynamic_symbols(specs: list[InputSpec]) -> dict[str, int]:
    """Every dynamic symbol with its example size (the first input that names it decides)."""
    symbols: dict[str, int] = {}
    for spec in specs:
        for symbol, size in zip(spec.dynamic, spec.shape):
            if symbol:
                symbols.setdefault(symbol, size)
    return symbols


def integer_range(spec: InputSpec, model: torch.nn.Module) -> tuple[int, int]:
    """The [low, high) range to sample an integer input from.

    Token ids must stay below the smallest embedding table, or eager PyTorch itself fails.
    """
    if spec.value_range is not None:
        return spec.value_range
    import torch

    sizes = [m.num_embeddings for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    return (0, min(sizes)) if sizes else _DEFAULT_INT_RANGE


def sample_inputs(specs: list[InputSpec], model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Deterministic sample values for every input (normal floats, uniform integers, random bools)."""
    rng = np.random.default_rng(seed)
    import torch

    values: dict[str, torch.Tensor] = {}
    for spec in specs:
        array: np.ndarray
        if spec.is_integer:
            low, high = integer_range(spec, model)
            array = rng.integers(low, high, size=spec.shape)
        elif spec.dtype == "bool":
            array = rng.random(spec.shape) < 0.5
        else:
            array = rng.standard_normal(spec.shape)
        values[spec.name] = torch.from_numpy(np.asarray(array)).to(spec.torch_dtype)
    return values
