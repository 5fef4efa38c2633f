"""Array files a user hands edgepack (--check-inputs, --calibration, --eval-data): read whole, checked
first, so that a junk, truncated, pickled or oversized file is a usage error naming the file and
never a traceback or an allocation of whatever size its header claims."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError

# What one data file may expand to in memory (the golden, calibration and evaluation sets are small).
MAX_DATA_BYTES = 2 << 30
# What numpy and zipfile raise on files that are not what they claim to be.
_UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, TypeError, MemoryError)


def read_npz(path: Path | str, option: str) -> dict[str, np.ndarray]:
    """Every array of a .npz, by name; UsageError when it is not a readable .npz of plain arrays."""
    path = Path(path).expanduser()
    hint = f"Give {option} a .npz written by numpy.savez (one array per input name, samples along axis 0)."
    try:
        with zipfile.ZipFile(path) as archive:
            expanded = sum(info.file_size for info in archive.infolist())
    except _UNREADABLE as exc:
        raise UsageError(f"{option} file '{path}' is not a .npz archive: {_reason(exc)}.", hint) from exc
    _check_size(path, expanded, option)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: np.asarray(data[name]) for name in data.files}
    except _UNREADABLE as exc:
        raise UsageError(f"{option} file '{path}' cannot be read as arrays: {_reason(exc)}.", hint) from exc
    for name, array in arrays.items():
        _check_array(path, name, array, option)
    return arrays


def read_npy(path: Path | str, option: str) -> np.ndarray:
    """One .npy array; UsageError when it is not a readable .npy of a plain array."""
    path = Path(path)
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)  # the header only: nothing read or allocated yet
        _check_size(path, float(np.prod(mapped.shape, dtype=np.float64)) * mapped.dtype.itemsize, option)
        del mapped
        array = np.load(path, allow_pickle=False)
    except UsageError:
        raise
    except _UNREADABLE as exc:
        raise UsageError(
            f"{option} file '{path}' cannot be read as an array: {_reason(exc)}.",
            f"Give {option} .npy files written by numpy.save.",
        ) from exc
    _check_array(path, path.stem, array, option)
    return array


def _check_size(path: Path, expanded: float, option: str) -> None:
    if expanded > MAX_DATA_BYTES:
        raise UsageError(
            f"{option} file '{path}' expands to {expanded / 2**30:.1f} GiB, over edgepack's limit of "
            f"{MAX_DATA_BYTES / 2**30:.0f} GiB for a data file.",
            "Use fewer samples: a few hundred are enough for calibration, evaluation or checks.",
        )


def _check_array(path: Path, name: str, array: np.ndarray, option: str) -> None:
    if array.dtype.kind not in "biuf" or array.ndim == 0:
        raise UsageError(
            f"{option} file '{path}': array '{name}' is {array.dtype} with shape {list(array.shape)}, "
            "not a numeric array with a sample axis.",
            "Store numbers (float, int or bool), samples along axis 0.",
        )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


MAX_JSON_DEPTH = 64  # a manifest nests about 8 deep; validators and printers recurse per level


def loads_json(text: str) -> Any:
    """json.loads for documents from outside (manifest.json, report.json, index.json): one nested too deeply
    for the parser or for the validators that walk it is a JSONDecodeError, like any malformed document."""
    import json

    try:
        document = json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply to be an edgepack document", text[:64], 0) from None
    depth, stack = 0, [(document, 1)]
    while stack:
        value, level = stack.pop()
        depth = max(depth, level)
        if depth > MAX_JSON_DEPTH:
            raise json.JSONDecodeError(
                f"nested more than {MAX_JSON_DEPTH} levels deep, which no edgepack document is", text[:64], 0
            )
        if isinstance(value, dict):
            stack.extend((v, level + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, level + 1) for v in value)
    return document
