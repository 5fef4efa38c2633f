"""Bundle stage: everything is written into a staging folder beside the destination and moved
into place only when complete, so a crash or a failed check never leaves a half bundle at
dist/<model>/<target>/."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .capture import CapturedModel

GOLDEN_INPUTS = "golden/inputs.npz"
GOLDEN_EXPECTED = "golden/expected.npz"


class StagedBundle:
    """A bundle being built. `commit(ok)` moves it to dist/<model>/<target>/ when the build passed,
    or to dist/<model>/<target>.failed/ (for inspection) when it did not; the previous good bundle
    stays in place then."""

    def __init__(self, out_dir: Path, model_name: str, target_name: str) -> None:
        self.final_dir = out_dir / model_name / target_name
        self.failed_dir = out_dir / model_name / f"{target_name}.failed"
        self.final_dir.parent.mkdir(parents=True, exist_ok=True)
        # Same parent as the destination, so the final move is a rename on one filesystem.
        self.dir = Path(tempfile.mkdtemp(prefix=f".{target_name}.staging-", dir=self.final_dir.parent))
        self.dir.chmod(0o777 & ~_umask())  # mkdtemp makes it private; a bundle is as readable as any folder

    def destination(self, ok: bool) -> Path:
        return self.final_dir if ok else self.failed_dir

    def commit(self, ok: bool) -> Path:
        destination = self.destination(ok)
        if destination.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
            destination.rename(retired / "bundle")
            self.dir.rename(destination)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            self.dir.rename(destination)
        if ok:
            shutil.rmtree(self.failed_dir, ignore_errors=True)  # a stale failure report would mislead
        return destination

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_golden(bundle_dir: Path, captured: CapturedModel) -> dict[str, Any]:
    """Golden inputs and eager outputs, each array stacked over samples (axis 0 = sample index)."""
    (bundle_dir / "golden").mkdir(exist_ok=True)
    inputs = {name: np.stack([s[name].numpy() for s in captured.samples]) for name in captured.input_names}
    expected = {name: np.stack([e[i] for e in captured.expected]) for i, name in enumerate(captured.output_names)}
    np.savez(bundle_dir / GOLDEN_INPUTS, **inputs)
    np.savez(bundle_dir / GOLDEN_EXPECTED, **expected)
    return {"inputs": GOLDEN_INPUTS, "expected": GOLDEN_EXPECTED, "samples": len(captured.samples),
            "layout": "one array per input/output name; axis 0 indexes the samples"}


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n", encoding="utf-8")


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


def _hash_file(digest: "hashlib._Hash", path: Path) -> None:
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)


def remove_path(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        os.remove(path)
