"""Safe paths: every path edgepack derives from user data (model name, target name, file names
listed in a bundle, --out) is checked here, and every destination it stages, renames or removes
is proven to lie inside the folder it belongs to before anything touches the disk.

Two rules, one per kind of input:
  folder_name()   a single path component chosen by the user (model name, target name): letters,
                  digits, '.', '_' and '-', starting with a letter or digit, at most MAX_NAME long.
                  So never '', '.', '..', a separator, a hidden name (edgepack's own staging
                  folders are hidden) or a name too long for the file system.
  contained()     a path (joined from such parts, or a relative path read from a bundle) resolved,
                  symlinks included, and shown to lie inside its root; else an error, never a write.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from . import interrupts
from .errors import UsageError

MAX_NAME = 100  # well under the 255 bytes of common file systems, with room for '.failed', '.zip', staging suffixes
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Names a target may not take: they are what edgepack writes beside a target's bundle folder.
_RESERVED_SUFFIXES = (".failed", ".zip")


def name_problem(value: object, reserved_suffixes: tuple[str, ...] = ()) -> str | None:
    """Why `value` cannot be a folder name edgepack creates, or None when it can."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if value == "":
        return "is empty"
    if len(value) > MAX_NAME:
        return f"is {len(value)} characters long (at most {MAX_NAME})"
    if not _NAME_RE.match(value):
        return "cannot be a folder name (letters, digits, '.', '_' and '-' only, starting with a letter or digit)"
    for suffix in reserved_suffixes:
        if value.endswith(suffix):
            return f"ends in '{suffix}', which edgepack uses for the files beside a bundle"
    return None


def folder_name(value: object, what: str, hint: str = "", target: bool = False) -> str:
    """`value` when it is a safe single folder name, else UsageError '<what> '<value>' <why>'."""
    problem = name_problem(value, _RESERVED_SUFFIXES if target else ())
    if problem:
        shown = repr(value) if not isinstance(value, str) else f"'{value[:120]}{'...' if len(value) > 120 else ''}'"
        raise UsageError(
            f"{what} {shown} {problem}.",
            hint or f"Use letters, digits, '.', '_' and '-' (at most {MAX_NAME} characters).",
        )
    return value  # type: ignore[return-value]


def contained(root: Path, path: Path, what: str = "path") -> Path:
    """`path` resolved (symlinks followed), proven to lie inside `root` resolved (or be `root` itself when
    allowed by the caller). UsageError otherwise (a name or a link in the output folder leads out of it):
    edgepack never writes, renames or removes outside it."""
    base = Path(root).resolve()
    resolved = Path(path).resolve()
    if resolved != base and base not in resolved.parents:
        raise UsageError(
            f"Refusing to touch {path}: the {what} resolves to {resolved}, outside {base}.",
            "Check the names in the target file and --name, and remove links inside --out that lead out "
            "of it; edgepack only writes inside --out.",
        )
    return resolved


def strictly_inside(root: Path, path: Path, what: str = "path") -> Path:
    """Like `contained`, but `path` may not be `root` itself (a bundle folder is never its own parent)."""
    resolved = contained(root, path, what)
    if resolved == Path(root).resolve():
        raise UsageError(
            f"Refusing to touch {path}: the {what} is {resolved} itself, not a folder inside it.",
            "Check the names in the target file and --name.",
        )
    return resolved


def relative_problem(relative: object) -> str | None:
    """Why a relative path read from a bundle (a manifest entry) is unsafe, or None."""
    if not isinstance(relative, str) or not relative:
        return "is not a non-empty string"
    if "\0" in relative or "\\" in relative:
        return "holds a NUL or a backslash"
    pure = PurePosixPath(relative)
    if pure.is_absolute() or relative.startswith("~"):
        return "is absolute"
    if any(part in ("..", ".", "") for part in relative.split("/")):
        return "holds '..', '.' or an empty part"
    return None


def bundle_member(root: Path, relative: object, what: str = "file") -> Path:
    """root / relative for a path a bundle names, refused (UsageError) when it is absolute, climbs out with
    '..', or resolves (through a link) outside `root`."""
    problem = relative_problem(relative)
    if problem is None:
        candidate = Path(root) / str(relative)
        base = Path(root).resolve()
        resolved = candidate.resolve()
        if resolved == base or base not in resolved.parents:
            problem = f"resolves to {resolved}, outside the bundle"
        elif _links_on_the_way(Path(root), str(relative)):
            problem = "goes through a symbolic link"
    if problem:
        raise UsageError(
            f"The bundle's {what} path {relative!r} {problem}.",
            "A bundle lists only plain relative paths inside it; rebuild it with edgepack build.",
        )
    return Path(root) / str(relative)


def _links_on_the_way(root: Path, relative: str) -> bool:
    current = root
    for part in relative.split("/"):
        current = current / part
        if os.path.islink(current):
            return True
    return False


def missing_file_text(path: Path | str) -> str:
    """'does not exist' or 'is a folder, not a file': why an existing-file option is wrong (call when not is_file())."""
    return "is a folder, not a file" if Path(path).expanduser().is_dir() else "does not exist"


@contextlib.contextmanager
def scratch_folder(prefix: str = "edgepack-tmp-", parent: Path | str | None = None) -> Iterator[Path]:
    """A fresh temporary folder, removed when the block ends, whatever ends it. Unlike
    tempfile.TemporaryDirectory, a SIGINT or SIGTERM cannot land between the folder being made and its
    removal being armed (nor interrupt the removal): it is held back meanwhile and raises after."""
    folder: str | None = None
    try:
        with interrupts.held():
            folder = tempfile.mkdtemp(prefix=prefix, dir=parent)
        yield Path(folder)
    finally:
        if folder is not None:
            with interrupts.held():
                shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def scratch_cwd(prefix: str = "edgepack-scratch-") -> Iterator[Path]:
    """Run a tool that drops files into the working folder (onnxruntime's quant_pre_process writes
    sym_shape_infer_temp.onnx and a <uuid>.data holding the weights there) inside a fresh temporary folder:
    the working folder is always restored and the scratch folder always removed, whatever happens.
    Callers pass the tool absolute paths."""
    previous = os.getcwd()
    with scratch_folder(prefix) as folder:
        try:
            os.chdir(folder)
            yield folder
        finally:
            os.chdir(previous)


@contextlib.contextmanager
def scratch_tempdir(prefix: str = "edgepack-tmp-") -> Iterator[Path]:
    """Point `tempfile` at a fresh folder while a converter runs and remove it afterwards. coremltools keeps
    every converted or compressed model as a tmp*.mlpackage in the temporary folder until the process exits
    (a long-running Python process, or the ladder's many attempts, pile them up): whatever a tool leaves
    there goes with the folder. Nothing made inside may be used after the block."""
    previous = tempfile.tempdir
    with scratch_folder(prefix) as folder:
        tempfile.tempdir = str(folder)
        try:
            yield folder
        finally:
            tempfile.tempdir = previous
