"""Every JSON document edgepack writes goes through `dumps`: strictly valid JSON, never NaN or Infinity.

Python's json module writes NaN/Infinity by default, which JavaScript's JSON.parse and most other
parsers reject. Values that can be non-finite (accuracy and smoke-test figures) are turned into null
by their own `to_json` with `finite_or_none`, next to the text that says why; `dumps` then refuses
any non-finite number left (allow_nan=False), naming where it is, so that a new field that forgets
it fails loudly in tests instead of writing a file apps cannot read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def finite_or_none(value: float | None) -> float | None:
    """The value when it is a finite number, else None (JSON null)."""
    return None if value is None or not math.isfinite(value) else value


def dumps(document: Any, **options: Any) -> str:
    """json.dumps that rejects NaN and +-Infinity, saying at which key they are."""
    try:
        return json.dumps(document, allow_nan=False, **options)
    except ValueError as exc:
        where = _first_non_finite(document, "$")
        if where is None:
            raise
        raise ValueError(f"{exc}: {where} (use jsonio.finite_or_none where the value is made)") from exc


def write(path: Path, document: Any, **options: Any) -> None:
    """`dumps` into a UTF-8 file, with a final newline."""
    path.write_text(dumps(document, **options) + "\n", encoding="utf-8")


def _first_non_finite(value: Any, where: str) -> str | None:
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} = {value}"
    if isinstance(value, dict):
        items = ((f"{where}.{key}", item) for key, item in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    return next((found for path, item in items if (found := _first_non_finite(item, path)) is not None), None)
