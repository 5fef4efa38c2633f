"""Bundle stage: everything is written into a staging folder beside the destination and moved
into place only when complete, so a crash or a failed check never leaves a half bundle at
dist/<model>/<target>/."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import interrupts, jsonio
from ..errors import UsageError
from ..paths import folder_name, strictly_inside
from .files import source_date_epoch

if TYPE_CHECKING:  # verify and inspect use this module without torch
    from ..capture.ladder import CapturedModel

NOT_ARCHIVED = ("report.json", "report.md", "report.html")

GOLDEN_INPUTS = "golden/inputs.npz"
GOLDEN_EXPECTED = "golden/expected.npz"
GOLDEN_INDEX = "golden/index.json"
# Archive entries get this time when SOURCE_DATE_EPOCH is unset: 1980-01-01, the zip format's first day.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class StagedBundle:
    """A bundle being built. `commit(ok)` moves it to dist/<model>/<target>/ when the build passed,
    or to dist/<model>/<target>.failed/ (for inspection) when it did not; the previous good bundle
    stays in place then."""

    def __init__(self, out_dir: Path, model_name: str, target_name: str) -> None:
        # The names come from the user (--name, the model's class, the target file): each is one safe
        # folder name, and every path below is proven inside --out before anything is created or moved.
        folder_name(model_name, "Model name")
        folder_name(target_name, "Target name", target=True)
        self.out_dir = out_dir
        self.final_dir = out_dir / model_name / target_name
        self.failed_dir = out_dir / model_name / f"{target_name}.failed"
        model_dir = strictly_inside(out_dir, self.final_dir.parent, "model folder")
        for path in (self.final_dir, self.failed_dir):
            strictly_inside(model_dir, path, "bundle folder")
        self.final_dir.parent.mkdir(parents=True, exist_ok=True)
        strictly_inside(out_dir, self.final_dir.parent, "model folder")  # as created: no link swapped in meanwhile
        remove_abandoned(self.final_dir.parent)  # staging folders of builds that were killed
        # Same parent as the destination, so the final move is a rename on one filesystem. Locked while this
        # process lives, so that a later build can tell an abandoned staging folder from one in use.
        claimed: tuple[Path, int | None] | None = None
        try:  # a signal between making the folder and the caller holding this object would leave it behind
            with interrupts.held():
                claimed = locked_folder(self.final_dir.parent, f".{target_name}.staging-")
                claimed[0].chmod(0o777 & ~_umask())  # mkdtemp makes it private; a bundle is as readable as any folder
        except BaseException:
            if claimed is not None:
                self.dir, self._lock, self._released = *claimed, False
                self.discard()
            raise
        self.dir, self._lock, self._released = *claimed, False

    def destination(self, ok: bool) -> Path:
        return self.final_dir if ok else self.failed_dir

    def commit(self, ok: bool) -> Path:
        destination = self.destination(ok)
        strictly_inside(self.final_dir.parent, destination, "bundle folder")
        if destination.exists() or destination.is_symlink():
            retired, lock = locked_folder(destination.parent, f".{destination.name}.old-")
            try:
                destination.rename(retired / "bundle")
                self.dir.rename(destination)
                shutil.rmtree(retired, ignore_errors=True)
            finally:
                _unlock(lock)
        else:
            self.dir.rename(destination)
        self._release()
        if ok and not self.failed_dir.is_symlink():
            shutil.rmtree(self.failed_dir, ignore_errors=True)  # a stale failure report would mislead
        return destination

    def discard(self) -> None:
        """Remove the staging folder; nothing once the bundle is committed (or already discarded)."""
        if not self._released:
            shutil.rmtree(self.dir, ignore_errors=True)
            self._release()

    def _release(self) -> None:
        _unlock(self._lock)  # once: the descriptor's number may be reused by the next file opened
        self._released = True


# Hidden folders edgepack makes beside bundles: `.new-` while being claimed, then `.staging-` (a bundle being
# built) or `.old-` (a previous bundle being retired). Each is locked (flock) by the process using it.
_WORK_FOLDER = re.compile(r"^\..+\.(staging|old|new)-[^/]+$")


def locked_folder(parent: Path, prefix: str) -> tuple[Path, int | None]:
    """A new folder `<parent>/<prefix>XXXX` (prefix `.<name>.staging-` or `.<name>.old-`), locked by this
    process (the lock is the returned open descriptor). It is made as `.<name>.new-XXXX`, locked, then
    renamed: the lock follows the folder, so it never shows under its final name unlocked."""
    stem = prefix[: prefix.rindex(".", 0, len(prefix) - 1)]  # ".<name>"
    for _ in range(3):
        claimed = Path(tempfile.mkdtemp(prefix=f"{stem}.new-", dir=parent))
        lock = _lock_folder(claimed)
        folder = parent / (prefix + claimed.name.rsplit(".new-", 1)[1])
        try:
            claimed.rename(folder)
            return folder, lock
        except FileNotFoundError:  # another build's cleanup took it in the instant before the lock
            _unlock(lock)
    raise OSError(f"could not claim a working folder in {parent}")


def remove_abandoned(parent: Path) -> list[Path]:
    """Remove the staging and retired folders in `parent` that no live process holds (their build was
    killed); folders of builds still running are locked and left alone."""
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not _WORK_FOLDER.match(entry.name) or entry.is_symlink() or not entry.is_dir():
            continue
        lock = _lock_folder(entry)
        if lock is None:  # in use by a running build (or no locking on this file system): leave it
            continue
        try:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        finally:
            _unlock(lock)
    return removed


def _lock_folder(folder: Path) -> int | None:
    """An exclusive, non-blocking flock on the folder, held by the returned descriptor; None when another
    process holds it (or the platform cannot lock folders)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no way to tell abandoned folders from live ones; keep them all
        return None
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def unlock(lock: int | None) -> None:
    """Release a lock from `locked_folder` (closing its descriptor); None is a no-op."""
    _unlock(lock)


def _unlock(lock: int | None) -> None:
    if lock is not None:
        with contextlib.suppress(OSError):
            os.close(lock)


def check_out_dir(folder: Path) -> None:
    """UsageError unless bundles can be written under `folder`: checked before the build, not after it.
    The nearest existing ancestor must be a folder we may write into (the rest is created)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(
            f"Cannot write bundles into {folder}: {existing} is a file, not a folder.",
            "Pass --out a folder (it is created when missing), or move that file away.",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(
            f"Cannot write bundles into {folder}: no write permission in {existing}.",
            "Pass --out a folder you can write to.",
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_golden(bundle_dir: Path, captured: CapturedModel) -> dict[str, Any]:
    """Golden inputs and eager outputs, each array stacked over samples (axis 0 = sample index)."""
    (bundle_dir / "golden").mkdir(exist_ok=True)
    inputs = {name: np.stack([s[name].numpy() for s in captured.samples]) for name in captured.input_names}
    expected = {name: np.stack([e[i] for e in captured.expected]) for i, name in enumerate(captured.output_names)}
    # numpy writes .npz entries with the zip format's fixed 1980 date, so these are reproducible.
    np.savez(bundle_dir / GOLDEN_INPUTS, **inputs)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
    np.savez(bundle_dir / GOLDEN_EXPECTED, **expected)  # type: ignore[arg-type]
    write_json(
        bundle_dir / GOLDEN_INDEX,
        {
            "samples": len(captured.samples),
            "byte_order": "little",
            "inputs": _write_raw(bundle_dir, "inputs", inputs),
            "expected": _write_raw(bundle_dir, "expected", expected),
        },
    )
    return {
        "inputs": GOLDEN_INPUTS,
        "expected": GOLDEN_EXPECTED,
        "samples": len(captured.samples),
        "layout": "one array per input/output name; axis 0 indexes the samples",
        "index": GOLDEN_INDEX,
    }


def _write_raw(bundle_dir: Path, kind: str, arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Each array as raw little-endian C-order bytes, for apps and firmware without NumPy."""
    (bundle_dir / "golden" / kind).mkdir(exist_ok=True)
    entries = []
    for name, array in arrays.items():
        relative = f"golden/{kind}/{name}.bin"
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        (bundle_dir / relative).write_bytes(little.tobytes(order="C"))
        entries.append({"name": name, "file": relative, "dtype": str(array.dtype), "shape": list(array.shape)})
    return entries


def read_raw(bundle_dir: Path, entry: dict[str, Any]) -> np.ndarray:
    """An array written by `_write_raw`, from its index entry."""
    dtype = np.dtype(entry["dtype"]).newbyteorder("<")
    data = np.fromfile(bundle_dir / entry["file"], dtype=dtype)
    return data.reshape(entry["shape"]).astype(dtype.newbyteorder("="))


def write_json(path: Path, document: dict[str, Any]) -> None:
    jsonio.write(path, document, indent=2)


def remove_path(path: Path, root: Path | None = None) -> None:
    """Remove a file or folder; with `root`, only when it lies inside `root` (else BuildError, nothing removed)."""
    if root is not None:
        strictly_inside(root, path, "file to remove")
    if path.is_symlink():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        os.remove(path)


def archive_bundle(bundle_dir: Path, wanted: bool = True) -> Path | None:
    """The deterministic archive of a finished bundle: every file but the reports (report.json, .md, .html), which
    hold this run's timings and paths and so differ between otherwise identical builds. When not
    wanted, an archive left by an earlier build is removed: it no longer matches the bundle."""
    if not wanted:
        bundle_dir.with_name(bundle_dir.name + ".zip").unlink(missing_ok=True)
        return None
    members = sorted(p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file())
    return write_archive(bundle_dir, [m for m in members if m not in NOT_ARCHIVED], source_date_epoch())


def write_archive(bundle_dir: Path, members: list[str], epoch: int | None) -> Path:
    """`<bundle>.zip` beside the bundle folder holding `members` (paths relative to it) under one top
    folder named like the bundle: sorted entries, one fixed timestamp, fixed permissions, so the
    same files always give the same bytes."""
    archive = bundle_dir.with_name(bundle_dir.name + ".zip")
    date_time = _zip_time(epoch)
    staged = archive.with_name(f".{archive.name}.tmp")
    try:
        with zipfile.ZipFile(staged, "w", zipfile.ZIP_DEFLATED) as zf:
            for relative in sorted(members):
                info = zipfile.ZipInfo(f"{bundle_dir.name}/{relative}", date_time)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.create_system = 3  # unix, whatever the build host
                zf.writestr(info, (bundle_dir / relative).read_bytes(), compresslevel=9)
        staged.replace(archive)
    except BaseException:  # a full disk or an interruption: no half archive left beside the bundle
        staged.unlink(missing_ok=True)
        raise
    return archive


def _zip_time(epoch: int | None) -> tuple[int, int, int, int, int, int]:
    if epoch is None:
        return _ZIP_EPOCH
    moment = time.gmtime(max(epoch, 315532800))  # the zip format cannot date before 1980
    return (moment.tm_year, moment.tm_mon, moment.tm_mday, moment.tm_hour, moment.tm_min, moment.tm_sec)
