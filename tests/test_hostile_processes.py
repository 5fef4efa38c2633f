"""Issue 15, in real processes: signals (Ctrl-C, SIGTERM, a kill) during a build, and what an edgepack
process leaves in the temporary folder, the user's cache and the working folder (onnxruntime telemetry,
torch's inductor cache folder). Every interruption exits 130/143 (never 0), leaves the previous bundle
exactly as it was, and no staging folder survives the next build."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from .conftest import FAST_TARGET_TEXT

ROOT = Path(__file__).resolve().parent.parent
EDGEPACK = Path(sys.executable).parent / "edgepack"
MODEL = """import torch
from torch import nn


class Lin(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.l = nn.Linear(4, 2)

    def forward(self, x):
        return self.l(x)
"""

pytestmark = pytest.mark.skipif(
    os.name != "posix" or not EDGEPACK.exists(), reason="POSIX signals and the console script"
)


@pytest.fixture(scope="module")
def first_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One good build, copied as 'the previous bundle' into each test's --out (a build costs seconds)."""
    folder = tmp_path_factory.mktemp("first")
    project = _project(folder)
    done = run(project)
    assert done.returncode == 0, done.stderr
    return project["out"]


@pytest.fixture
def project(tmp_path: Path) -> dict:
    return _project(tmp_path)


def _project(tmp_path: Path) -> dict:
    work, tmp, home = tmp_path / "work", tmp_path / "tmp", tmp_path / "home"
    for folder in (work, tmp, home):
        folder.mkdir()
    (work / "models.py").write_text(MODEL)
    (work / "t.toml").write_text(
        FAST_TARGET_TEXT.format(name="fast", formats='[formats.onnx]\nprecision = "fp32"\nopset = 18\n')
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "ORT_DISABLE_TELEMETRY")}
    env.update(PYTHONPATH=str(ROOT), TMPDIR=str(tmp), HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    return {"work": work, "tmp": tmp, "home": home, "env": env, "out": work / "dist"}


def command(project: dict, *extra: str) -> list[str]:
    return [
        str(EDGEPACK),
        "build",
        "--target",
        "t.toml",
        "--model",
        "models.py:Lin",
        "--input",
        "x=1x4",
        "--out",
        "dist",
        *extra,
    ]


def run(project: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(project, *extra),
        cwd=project["work"],
        env=project["env"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def tree(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
        for p in sorted(folder.rglob("*"))
        if "__pycache__" not in p.parts
    }


def interrupt(project: dict, signum: int, after_line: str | None) -> tuple[int, str]:
    """Start a build, send `signum` once stderr shows `after_line` (None: at once, during the imports)."""
    process = subprocess.Popen(
        command(project),
        cwd=project["work"],
        env=project["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    if after_line is None:
        time.sleep(0.5)
    else:
        for line in process.stderr:
            seen.append(line)
            if after_line in line:
                break
    process.send_signal(signum)
    _, err = process.communicate(timeout=300)
    return process.returncode, "".join(seen) + err


@pytest.mark.parametrize(
    "signum,after,code",
    [
        (signal.SIGINT, None, 130),  # Ctrl-C while torch is still importing
        (signal.SIGINT, "✓ load", 130),  # Ctrl-C during capture and the device check
        (signal.SIGTERM, "✓ capture", 143),  # SIGTERM while converting
    ],
)
def test_an_interrupted_build_exits_non_zero_and_keeps_the_previous_bundle(project, first_bundle, signum, after, code):
    shutil.copytree(first_bundle, project["out"])
    bundle_before = tree(project["out"])
    returncode, stderr = interrupt(project, signum, after)
    assert returncode == code, stderr
    assert "Traceback" not in stderr
    if after is not None:
        assert f"interrupted ({signal.Signals(signum).name})" in stderr
    assert tree(project["out"]) == bundle_before  # the previous bundle, byte for byte; no staging folder
    assert not any(project["tmp"].iterdir()), list(project["tmp"].iterdir())


def test_a_killed_build_leaves_a_staging_folder_that_the_next_build_removes(project):
    process = subprocess.Popen(
        command(project),
        cwd=project["work"],
        env=project["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stderr:
        if "✓ smoke" in line or "✓ bench" in line:  # the staging folder exists from emit on
            break
    process.kill()  # SIGKILL: no handler runs, nothing is cleaned
    process.communicate(timeout=60)
    leftovers = [p.name for p in (project["out"] / "lin").iterdir()] if (project["out"] / "lin").exists() else []
    again = run(project)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (project["out"] / "lin").iterdir()) == ["fast"], leftovers


def test_no_telemetry_and_no_temp_litter_from_help_or_a_build(project):
    work_before = tree(project["work"])
    helped = subprocess.run(
        [str(EDGEPACK), "--help"],
        cwd=project["work"],
        env=project["env"],
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )
    assert helped.returncode == 0
    built = run(project, "--quiet")
    assert built.returncode == 0, built.stderr
    assert list(project["tmp"].iterdir()) == []  # no .ses, no torchinductor_<user>, no scratch folders
    assert list(project["home"].rglob("*")) == []  # no ~/.cache/Microsoft/DeveloperTools/.onnxruntime
    assert {k: v for k, v in tree(project["work"]).items() if not k.startswith("dist")} == work_before


def test_a_write_the_system_refuses_is_an_error_and_keeps_the_previous_bundle(project, first_bundle):
    """As on a full disk: files beyond a small size limit (ulimit -f) cannot be written (EFBIG)."""
    import resource

    shutil.copytree(first_bundle, project["out"])
    bundle_before = tree(project["out"])

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write beyond the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    env = {**project["env"], "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        command(project),
        cwd=project["work"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=small_files,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "error: Could not write" in done.stderr and "hint:" in done.stderr and "Traceback" not in done.stderr
    assert tree(project["out"]) == bundle_before


@pytest.mark.parametrize("when", ["made", "removed"])
def test_a_signal_while_a_scratch_folder_is_made_or_removed_never_leaves_it_behind(tmp_path, monkeypatch, when):
    """The race CI once hit: SIGTERM right after "capture" landed between tempfile.mkdtemp making the build's
    shared folder and TemporaryDirectory arming its removal, and the folder stayed in the temporary folder."""
    from edgepack import interrupts
    from edgepack.paths import scratch_folder

    real_mkdtemp, real_rmtree = tempfile.mkdtemp, shutil.rmtree

    def mkdtemp_then_signal(*args, **kwargs):
        folder = real_mkdtemp(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # unless held back, raises here: the folder exists, nobody owns it
        return folder

    def signal_then_rmtree(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # unless held back, raises before anything is removed
        return real_rmtree(*args, **kwargs)

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    if when == "made":
        monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp_then_signal)
    else:
        monkeypatch.setattr(shutil, "rmtree", signal_then_rmtree)
    # Another thread with no signal blocked, as torch's workers: the kernel may hand it the signal, so a
    # signal mask in the main thread would not hold it back.
    release = threading.Event()
    bystander = threading.Thread(target=release.wait)
    bystander.start()
    try:
        with pytest.raises(interrupts.Interrupted), interrupts.guarded(), scratch_folder() as folder:
            (folder / "work.bin").write_bytes(b"x")
    finally:
        release.set()
        bystander.join()
    assert list(tmp_path.iterdir()) == []


def test_edgepack_makes_temporary_folders_in_one_place():
    """Every temporary folder goes through paths.scratch_folder (signal-safe); the one exception is a staging
    folder inside --out, which the next build removes if a signal or SIGKILL left it behind."""
    package = Path(__file__).resolve().parents[1] / "edgepack"
    offenders = [
        f"{path.relative_to(package)}:{number}"
        for path in package.rglob("*.py")
        if path.relative_to(package).as_posix() not in ("paths.py", "bundle/staging.py")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "TemporaryDirectory(" in line or "mkdtemp(" in line
    ]
    assert offenders == []


def test_a_signal_during_a_bundle_move_waits_for_the_move_even_with_other_threads_running():
    from edgepack import interrupts

    release = threading.Event()
    bystander = threading.Thread(target=release.wait)  # nothing blocked in it: the kernel may pick it
    bystander.start()
    moved = []
    try:
        with pytest.raises(interrupts.Interrupted), interrupts.guarded(), interrupts.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            moved.append("bundle")  # the move finishes before the signal is acted on
    finally:
        release.set()
        bystander.join()
    assert moved == ["bundle"]


def test_a_signal_while_the_staging_folder_is_made_never_leaves_it_in_out(tmp_path, monkeypatch):
    """CI's second sighting of the race: SIGTERM right after "capture" landed while the target's staging
    folder was being claimed, and `.fast.staging-*` stayed in --out."""
    from edgepack import interrupts
    from edgepack.bundle.staging import StagedBundle

    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp_then_signal(*args, **kwargs):
        folder = real_mkdtemp(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return folder

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp_then_signal)
    release = threading.Event()
    bystander = threading.Thread(target=release.wait)  # nothing blocked in it, as torch's workers
    bystander.start()
    try:
        with pytest.raises(interrupts.Interrupted), interrupts.guarded():
            StagedBundle(tmp_path / "out", "model", "fast")
    finally:
        release.set()
        bystander.join()
    assert [p.name for p in (tmp_path / "out" / "model").iterdir()] == []
