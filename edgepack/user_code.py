"""Where in the user's own code an exception was raised, so that an error message can point at it.

The innermost traceback frame in the user's model file is what they need to open; frames inside
PyTorch, edgepack or the standard library are noise to them. A SyntaxError has no frame in the file
it is about, so its own filename and line are used.
"""

from __future__ import annotations

import inspect
import linecache
import sys
import sysconfig
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from .noise import short_reason

_LIBRARY_DIRS = tuple(
    {
        str(Path(p).resolve())
        for p in (
            Path(torch.__file__).parent,
            Path(__file__).parent,
            sysconfig.get_paths()["stdlib"],
            sysconfig.get_paths()["purelib"],
            sysconfig.get_paths()["platlib"],
        )
    }
)


def user_location(exc: BaseException, files: Iterable[str | Path] = ()) -> str | None:
    """`file:line: code` of the innermost frame in one of `files` (else outside any library), or None."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return _describe(exc.filename, exc.lineno)
    frames = traceback.extract_tb(exc.__traceback__)
    wanted = {_resolved(f) for f in files if f}
    for frame in reversed(frames):
        if _resolved(frame.filename) in wanted:
            return _describe(frame.filename, frame.lineno or 0)
    for frame in reversed(frames):
        if not _in_library(frame.filename):
            return _describe(frame.filename, frame.lineno or 0)
    return None


def at_line(exc: BaseException, files: Iterable[str | Path] = (), fallback: str | None = None) -> str:
    """'\n  at file:line (code)' for an error message: where in the user's files `exc` was raised (else
    `fallback`); '' when neither is known."""
    where = user_location(exc, files) or fallback
    return f"\n  at {where}" if where else ""


def defining_files(obj: object) -> list[str]:
    """The source files of an object's class and of the module that holds it (where a model lives)."""
    files = []
    for candidate in (type(obj), sys.modules.get(type(obj).__module__)):
        try:
            files.append(inspect.getsourcefile(candidate))  # type: ignore[arg-type]
        except TypeError:  # built-ins have no source file
            continue
    return [f for f in files if f]


def definition_site(function: object) -> str | None:
    """`file:line: code` where a function is defined, for errors raised before its body runs."""
    try:
        file = inspect.getsourcefile(function)  # type: ignore[arg-type]
        line = inspect.getsourcelines(function)[1]  # type: ignore[arg-type]
    except (TypeError, OSError):
        return None
    return _describe(file, line) if file else None


def _describe(file: str, line: int) -> str:
    code = linecache.getline(file, line).strip()
    return f"{file}:{line}" + (f" ({code[:120]})" if code else "")


def _resolved(file: str | Path) -> str:
    try:
        return str(Path(file).resolve())
    except OSError:
        return str(file)


def _in_library(file: str) -> bool:
    return file.startswith("<") or _resolved(file).startswith(_LIBRARY_DIRS)


def items_from_callable(function: Callable[[], Any], reference: str, option: str) -> list[Any]:
    """Everything a user's callable yields (for --check-inputs, --calibration, --eval-data), with its
    failures reported as the user's: what it raised and where in their file, or what it returned."""
    from .errors import UsageError

    hint = f"Fix {reference}: it must yield (or return a list of) dicts of input name -> array."
    try:
        produced = function()
    except Exception as exc:
        raise _raised(exc, function, reference, option, hint) from exc
    if isinstance(produced, (str, bytes, dict)) or not isinstance(produced, Iterable):
        raise UsageError(f"{option} {reference} returned {type(produced).__name__}, not an iterable of batches.", hint)
    try:
        return list(produced)
    except Exception as exc:  # a generator fails while it runs
        raise _raised(exc, function, reference, option, hint) from exc


def _raised(exc: Exception, function: object, reference: str, option: str, hint: str) -> Exception:
    from .errors import UsageError

    files = [f for f in [_source_file(function)] if f]
    return UsageError(f"{option} {reference} raised {short_reason(exc, 320)}{at_line(exc, files)}", hint)


def _source_file(function: object) -> str | None:
    try:
        return inspect.getsourcefile(function)  # type: ignore[arg-type]
    except TypeError:
        return None
