"""`edgepack verify`: is this bundle (a folder or its .zip) what its manifest says, and does it still work?

Checks, each reported by name: the manifest against the schema; the signature (with a public key);
every listed file's sha256 and size, and no file that the manifest does not list; each artifact's
own hash; the golden .bin files against the .npz; then each artifact's smoke test in its runtime on
the golden vectors, with the manifest's tolerance. An artifact or golden file whose hash does not
match is never loaded into a runtime: a tampered file is named, not executed.
"""

from __future__ import annotations

import json
import stat
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..compare import compare_cases
from ..datafiles import loads_json
from ..errors import RuntimeUnavailable, UsageError
from ..paths import scratch_folder
from ..targets import Tolerance
from .files import sha256_of
from .manifest import MANIFEST, UNLISTED_FILES, schema_problems
from .staging import read_raw

# Zip limits: far above any bundle edgepack writes, far below what would exhaust a build machine.
MAX_MEMBERS = 10_000
MAX_UNCOMPRESSED_BYTES = 4 << 30


class CheckStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


OK, FAIL, SKIP = CheckStatus.OK, CheckStatus.FAILED, CheckStatus.SKIPPED


@dataclass
class BundleCheck:
    name: str  # what was checked: "schema", "sha256 golden/inputs.npz", "smoke onnx", ...
    status: CheckStatus
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


@dataclass
class Verification:
    path: str
    checks: list[BundleCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.status != FAIL for c in self.checks)

    @property
    def failures(self) -> list[BundleCheck]:
        return [c for c in self.checks if c.status == FAIL]

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(BundleCheck(name, OK if ok else FAIL, detail))
        return ok

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "checks": [c.to_json() for c in self.checks],
            "failures": [f"{c.name}: {c.detail}" for c in self.failures],
        }


def verify_bundle(path: Path, public_key: Path | None = None, threads: int = 1) -> Verification:
    """Every check on a bundle folder or a .zip written by `--archive`."""
    with opened_bundle(path) as bundle_dir:
        result = Verification(str(path))
        manifest = _check_manifest(bundle_dir, result)
        if manifest is None:
            return result
        if public_key is not None:
            from .signing import signature_problem

            problem = signature_problem(bundle_dir, public_key)
            result.add("signature manifest.sig", problem is None, problem or "signed by the holder of this key")
        elif (bundle_dir / "manifest.sig").exists():
            result.checks.append(
                BundleCheck("signature manifest.sig", SKIP, "present but not checked: pass --public-key")
            )
        _check_build(manifest, result)
        intact = _check_files(bundle_dir, manifest, result)
        golden = _check_golden(bundle_dir, manifest, intact, result)
        for artifact in manifest["artifacts"]:
            _check_artifact(bundle_dir, artifact, manifest, golden, intact, threads, result)
        return result


@contextmanager
def opened_bundle(path: Path) -> Iterator[Path]:
    """The bundle folder: `path` itself, or a zip's contents extracted safely into a temporary folder."""
    if path.is_dir():
        yield path
        return
    if not path.is_file():
        raise UsageError(f"{path} does not exist.", "Pass a bundle folder (dist/<model>/<target>) or its .zip.")
    if not zipfile.is_zipfile(path):
        raise UsageError(
            f"{path} is neither a bundle folder nor a zip.", "Pass a bundle folder or the .zip written by --archive."
        )
    with scratch_folder(prefix="edgepack-verify-") as tmp:
        yield _bundle_root(safe_extract(path, Path(tmp)), path)


def safe_extract(archive: Path, destination: Path) -> Path:
    """Extract a zip refusing absolute paths, `..`, links, special files, duplicate names, more than
    MAX_MEMBERS entries and more than MAX_UNCOMPRESSED_BYTES (counted while extracting, since the
    sizes in the zip's headers can lie)."""
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        if len(members) > MAX_MEMBERS:
            raise UsageError(
                f"{archive} has {len(members)} entries (limit {MAX_MEMBERS}).",
                "This is not an edgepack bundle archive.",
            )
        seen: set[str] = set()
        budget = MAX_UNCOMPRESSED_BYTES
        for info in members:
            relative = _safe_member_path(info, archive)
            if relative in seen:
                raise UsageError(
                    f"{archive} holds '{info.filename}' twice.", "Rebuild the archive with edgepack build --archive."
                )
            seen.add(relative)
            target = destination / relative
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            budget = _copy_limited(zf, info, target, budget, archive)
    return destination


def _safe_member_path(info: zipfile.ZipInfo, archive: Path) -> str:
    name = info.filename
    parts = PurePosixPath(name).parts
    if not name or name.startswith(("/", "\\")) or "\\" in name or (parts and ":" in parts[0]) or ".." in parts:
        raise UsageError(
            f"{archive} has an unsafe entry '{name}' (absolute path or '..').",
            "Do not extract or trust this archive; rebuild it with edgepack build --archive.",
        )
    kind_bits = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip gives no unix file type
    if kind_bits not in (0, stat.S_IFREG, stat.S_IFDIR):
        kind = "a symbolic link" if kind_bits == stat.S_IFLNK else "a special file"
        raise UsageError(f"{archive} entry '{name}' is {kind}.", "Bundle archives hold regular files only; rebuild it.")
    return PurePosixPath(*parts).as_posix()


def _copy_limited(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int, archive: Path) -> int:
    with zf.open(info) as source, target.open("wb") as sink:
        while chunk := source.read(1 << 20):
            budget -= len(chunk)
            if budget < 0:
                raise UsageError(
                    f"{archive} expands to more than {MAX_UNCOMPRESSED_BYTES >> 20} MiB.",
                    "This is not an edgepack bundle archive (or it is a zip bomb).",
                )
            sink.write(chunk)
    return budget


def _bundle_root(extracted: Path, archive: Path) -> Path:
    if (extracted / MANIFEST).is_file():
        return extracted
    entries = list(extracted.iterdir())
    if len(entries) == 1 and (entries[0] / MANIFEST).is_file():
        return entries[0]
    raise UsageError(
        f"{archive} holds no manifest.json (at its top or in its one top folder).",
        "Pass the .zip written by edgepack build --archive.",
    )


def _check_manifest(bundle_dir: Path, result: Verification) -> dict[str, Any] | None:
    path = bundle_dir / MANIFEST
    if not path.is_file():  # nothing to check against: a wrong path, like a missing one, is a usage error
        raise UsageError(
            f"{result.path} is not a bundle: it has no {MANIFEST} (a wrong folder, or the manifest was removed).",
            "Pass a bundle folder (dist/<model>/<target>) or the .zip written by --archive.",
        )
    try:
        document = loads_json(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        result.add(f"schema {MANIFEST}", False, f"not valid JSON: {exc}")
        return None
    problems = schema_problems(document)
    result.add(
        f"schema {MANIFEST}",
        not problems,
        "; ".join(problems[:5]) or f"valid (schema version {document['schema_version']})",
    )
    return None if problems else document


def _check_build(manifest: dict[str, Any], result: Verification) -> None:
    """A bundle from a failed build (a renamed <target>.failed folder) must not verify, however intact."""
    build = manifest.get("build")
    if build is None:
        result.checks.append(
            BundleCheck("build", SKIP, "not recorded (a manifest written before edgepack recorded the build's outcome)")
        )
        return
    left_out = "; ".join(f"{e['format']} left out: {e['reason']}" for e in build["left_out"])
    if build["ok"]:
        result.add("build", True, "passed" + (f" (partial: {left_out})" if left_out else ""))
    else:
        result.add(
            "build",
            False,
            f"this bundle is from a failed build: {'; '.join(build['problems']) or 'no problem recorded'}",
        )


def _check_files(bundle_dir: Path, manifest: dict[str, Any], result: Verification) -> set[str]:
    """Hash every listed file; name unlisted ones. Returns the paths that match the manifest."""
    intact = set()
    listed = {entry["path"] for entry in manifest["files"]}
    for entry in manifest["files"]:
        path = bundle_dir / entry["path"]
        if not path.is_file() or path.is_symlink():
            result.add(f"sha256 {entry['path']}", False, "missing")
            continue
        digest = sha256_of(path)
        if result.add(
            f"sha256 {entry['path']}",
            digest == entry["sha256"],
            "matches"
            if digest == entry["sha256"]
            else f"changed: sha256 {digest}, the manifest says {entry['sha256']}",
        ):
            intact.add(entry["path"])
    present = sorted(
        p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file() or p.is_symlink()
    )
    for relative in present:
        if (bundle_dir / relative).is_symlink():
            result.add(f"file {relative}", False, "is a symbolic link: bundles hold regular files only")
            continue
        if relative not in listed and relative not in UNLISTED_FILES:
            result.add(f"file {relative}", False, "not listed in the manifest (added after the build)")
    return intact


def _check_golden(
    bundle_dir: Path, manifest: dict[str, Any], intact: set[str], result: Verification
) -> dict[str, dict] | None:
    """The golden arrays (from the .npz), after checking the .bin files hold the same values."""
    golden = manifest["golden"]
    paths = [golden["inputs"], golden["expected"], golden["index"]]
    if not all(p in intact for p in paths):
        result.checks.append(BundleCheck("golden vectors", SKIP, "not read: a golden file does not match the manifest"))
        return None
    try:
        with np.load(bundle_dir / golden["inputs"]) as inputs, np.load(bundle_dir / golden["expected"]) as expected:
            arrays = {
                "inputs": {k: inputs[k] for k in inputs.files},
                "expected": {k: expected[k] for k in expected.files},
            }
        index = loads_json((bundle_dir / golden["index"]).read_text(encoding="utf-8"))
        for kind in ("inputs", "expected"):
            for entry in index[kind]:
                if entry["file"] not in intact:
                    continue  # already named by its hash check
                same = entry["name"] in arrays[kind] and _same_values(
                    read_raw(bundle_dir, entry), arrays[kind][entry["name"]]
                )
                result.add(
                    f"golden {entry['file']}",
                    same,
                    "equals the .npz" if same else "differs from the .npz array of the same name",
                )
    except (OSError, ValueError, KeyError, TypeError) as exc:  # files that hash right but were written wrong
        result.add("golden vectors", False, f"cannot be read: {type(exc).__name__}: {exc}")
        return None
    return arrays if _golden_matches_manifest(manifest, arrays, result) else None


def _same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shapes, dtypes and values, NaN equal to NaN (a NaN golden value is judged by the smoke test)."""
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
    )


def _golden_matches_manifest(manifest: dict[str, Any], arrays: dict[str, dict], result: Verification) -> bool:
    """Every input and output the manifest names has a golden array with a row per sample: the smoke test
    feeds and compares by these names, and an app reads them the same way."""
    golden, consistent = manifest["golden"], True
    for kind, entries, file in (
        ("input", manifest["inputs"], golden["inputs"]),
        ("output", manifest["outputs"], golden["expected"]),
    ):
        held = arrays["inputs" if kind == "input" else "expected"]
        for entry in entries:
            name = entry["name"]
            if name not in held:
                consistent = result.add(
                    f"golden {kind} {name}",
                    False,
                    f"manifest {kind} '{name}' has no golden vector in "
                    f"{file} (it holds {', '.join(sorted(held)) or 'nothing'})",
                )
            elif held[name].ndim == 0 or held[name].shape[0] < golden["samples"]:
                consistent = result.add(
                    f"golden {kind} {name}",
                    False,
                    f"{file} holds {held[name].shape[:1] or 'no'} "
                    f"sample(s) of '{name}', the manifest says {golden['samples']}",
                )
    return consistent


def _check_artifact(
    bundle_dir: Path,
    artifact: dict[str, Any],
    manifest: dict[str, Any],
    golden: dict | None,
    intact: set[str],
    threads: int,
    result: Verification,
) -> None:
    name = f"{artifact['format']} {artifact['path']}"
    path = bundle_dir / artifact["path"]
    if not path.exists():
        result.add(f"artifact {name}", False, "missing")
        return
    digest = sha256_of(path)
    if not result.add(
        f"artifact {name}",
        digest == artifact["sha256"],
        "sha256 matches"
        if digest == artifact["sha256"]
        else f"changed: sha256 {digest}, the manifest says {artifact['sha256']}",
    ):
        result.checks.append(BundleCheck(f"smoke {name}", SKIP, "not run: the artifact does not match the manifest"))
        return
    if golden is None:
        result.checks.append(
            BundleCheck(f"smoke {name}", SKIP, "not run: the golden vectors do not match the manifest")
        )
        return
    from ..formats import get_format

    fmt = get_format(artifact["format"])
    _smoke(name, lambda: fmt.open(path, threads), artifact, manifest, golden, result)
    listed = {entry["path"] for entry in manifest["files"]}
    for companion in fmt.companions(artifact["requirements"]):
        _check_companion(bundle_dir, companion, listed, intact, threads, artifact, manifest, golden, result)


def _check_companion(
    bundle_dir: Path,
    companion,
    listed: set[str],
    intact: set[str],
    threads: int,
    artifact: dict[str, Any],
    manifest: dict[str, Any],
    golden: dict,
    result: Verification,
) -> None:
    """A file the artifact's requirements name (ONNX's .ort): listed, intact, and passing in its runtime."""
    if companion.path not in listed:
        result.add(
            f"file {companion.path}", False, "named in the artifact's requirements but not among the manifest's files"
        )
        return
    name = f"{companion.label} {companion.path}"
    if companion.path not in intact:
        result.checks.append(BundleCheck(f"smoke {name}", SKIP, "not run: the file does not match the manifest"))
        return
    path = bundle_dir / companion.path
    _smoke(name, lambda: companion.open(path, threads), artifact, manifest, golden, result)


def _smoke(
    name: str, opener, artifact: dict[str, Any], manifest: dict[str, Any], golden: dict, result: Verification
) -> None:
    """Run every golden sample and compare with the expected outputs at the artifact's tolerance."""

    input_names = [i["name"] for i in manifest["inputs"]]
    output_names = [o["name"] for o in manifest["outputs"]]
    cases = [
        (
            f"golden sample {i}",
            [golden["inputs"][n][i] for n in input_names],
            [golden["expected"][n][i] for n in output_names],
        )
        for i in range(manifest["golden"]["samples"])
    ]
    tol = artifact["tolerance"]
    try:
        verdict = compare_cases(opener(), cases, Tolerance(tol["atol"], tol["rtol"], tol["min_cosine"]), output_names)
    except RuntimeUnavailable as exc:
        result.checks.append(BundleCheck(f"smoke {name}", SKIP, f"numerics not verified on this OS: {exc}"))
        return
    except Exception as exc:  # a runtime can fail in any way on a bad file; that is a failed check
        result.add(f"smoke {name}", False, f"the runtime failed: {type(exc).__name__}: {str(exc)[:300]}")
        return
    result.add(f"smoke {name}", verdict.ok, verdict.reason)
