"""What a bundle's files are, independent of what wrote them: hashes, sizes, and the build's timestamp."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import UsageError


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a folder (an .mlpackage) as its sorted relative paths and contents."""
    digest = hashlib.sha256()
    if path.is_file():
        _hash_file(digest, path)
        return digest.hexdigest()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        _hash_file(digest, file)
    return digest.hexdigest()


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _hash_file(digest: hashlib._Hash, path: Path) -> None:
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)


def source_date_epoch() -> int | None:
    text = os.environ.get("SOURCE_DATE_EPOCH")
    if text is None or text == "":
        return None
    if not text.isdigit():
        raise UsageError(
            f"SOURCE_DATE_EPOCH={text!r} is not a number of seconds.", "Set it to e.g. $(git log -1 --format=%ct)."
        )
    return int(text)
