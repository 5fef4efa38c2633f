"""Issue 15: edgepack tried as a hostile new user would. Grouped by the issue's classes; every case asserts
the exit code, the `error:`/`hint:` lines and the file system before and after: the working folder,
--out, the temporary folder and a folder outside them all (`victim/`), which must never change.

Most cases fail before the model is loaded (milliseconds); those that need a build use a tiny model and
a one-format fast target. Signals and the onnxruntime telemetry need real processes: test_hostile_processes.py.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import signal
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgepack import interrupts
from edgepack.bundle.manifest import dumps as manifest_dumps
from edgepack.cli import app
from edgepack.compare import compare_outputs, merge
from edgepack.errors import UsageError
from edgepack.paths import bundle_member, folder_name, scratch_cwd

from .conftest import FAST_TARGET_TEXT

runner = CliRunner()
ONNX_ONLY = '[formats.onnx]\nprecision = "fp32"\nopset = 18\n'
ONNX_AND_LITE = ONNX_ONLY + '[formats.torchscript_lite]\nprecision = "fp32"\n'

MODELS = '''import sys
import warnings
import torch
from torch import nn


class Lin(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.l = nn.Linear(4, 2)

    def forward(self, x):
        return self.l(x)


class ExitsInForward(nn.Module):
    def forward(self, x):
        sys.exit(0)  # LINE exit-forward


class ExitsWithCode(nn.Module):
    def forward(self, x):
        raise SystemExit(3)  # LINE exit-code


def exiting_factory():
    sys.exit("factory gave up")  # LINE exit-factory


class AllNan(nn.Module):
    def forward(self, x):
        return x * float("nan")


class AllInf(nn.Module):
    def forward(self, x):
        return x * 0 + float("inf")


class AllMinusInf(nn.Module):
    def forward(self, x):
        return x * 0 - float("inf")


class Empty(nn.Module):
    def forward(self, x):
        return x[:, :0]


class NanBesideGood(nn.Module):
    def forward(self, x):
        return {"good": x * 2, "bad": x * float("nan")}


class EmptyBesideGood(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(4, 2)

    def forward(self, x):
        return {"scores": self.l(x), "boxes": x[:, :0]}


class Emb(nn.Module):
    def __init__(self):
        super().__init__()
        self.e = nn.Embedding(50, 4)

    def forward(self, ids):
        return self.e(ids)


class WarnsThenFails(nn.Module):
    def forward(self, x):
        warnings.warn("torch-like warning before the failure")
        return x @ torch.ones(3, 3)


class ThisModelClassNameIsSoLongThatNoFileSystemShouldHaveToHoldItAsAFolderNameEvenThoughPythonIsHappyWithIdentifiersThatLong(nn.Module):
    def forward(self, x):
        return x + 1


class SwallowsCtrlC(nn.Module):
    """Ctrl-C arrives while the model runs and the model's own code swallows it (as a converter's
    `except Exception` does when TorchScript wraps the KeyboardInterrupt)."""
    sent = False

    def __init__(self):
        super().__init__()
        self.l = nn.Linear(4, 2)

    def forward(self, x):
        if not SwallowsCtrlC.sent:
            SwallowsCtrlC.sent = True
            import os, signal, time
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.5)
            except KeyboardInterrupt:
                pass
        return self.l(x)


def exits_in_data():
    sys.exit(4)  # LINE exit-data
    yield {}
'''
EXITS_AT_IMPORT = "import sys\n\nsys.exit(5)  # LINE exit-import\n"
CALLS_EXIT_AT_IMPORT = "exit(6)  # LINE exit-builtin\n"


def line_of(marker: str, text: str = MODELS) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if f"# LINE {marker}" in line)


# The world a hostile command runs in ---------------------------------------------------------------------


@dataclass
class World:
    root: Path
    work: Path  # the working folder
    out: Path  # --out
    tmp: Path  # the temporary folder (tempfile.tempdir)
    victim: Path  # outside all of them: must never change

    def models(self) -> str:
        return str(self.work / "models.py")

    def target(
        self,
        name: str = "fast",
        formats: str = ONNX_ONLY,
        name_line: str | None = None,
        extra: str = "",
        file: str = "t.toml",
    ) -> Path:
        text = FAST_TARGET_TEXT.format(name=name, formats=formats + extra)
        if name_line is not None:
            text = text.replace(f'name = "{name}"', name_line, 1)
        path = self.work / file
        path.write_text(text, encoding="utf-8")
        return path

    def snapshot(self) -> dict[str, str]:
        """Every file and folder under root: kind and content hash (links: their target)."""
        listing = {}
        for path in sorted(self.root.rglob("*")):
            relative = path.relative_to(self.root).as_posix()
            if "__pycache__" in relative:
                continue
            if path.is_symlink():
                listing[relative] = "link:" + os.readlink(path)
            elif path.is_dir():
                listing[relative] = "dir"
            else:
                listing[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
        return listing


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    w = World(tmp_path, tmp_path / "work", tmp_path / "work" / "dist", tmp_path / "tmp", tmp_path / "victim")
    for folder in (w.work, w.tmp, w.victim / "inner"):
        folder.mkdir(parents=True)
    (w.victim / "precious.txt").write_text("do not touch")
    (w.victim / "inner" / "file").write_text("nor this")
    (w.work / "models.py").write_text(MODELS, encoding="utf-8")
    (w.work / "exits_at_import.py").write_text(EXITS_AT_IMPORT, encoding="utf-8")
    (w.work / "calls_exit.py").write_text(CALLS_EXIT_AT_IMPORT, encoding="utf-8")
    w.target()  # the default fast target exists before any snapshot (writing it again changes nothing)
    monkeypatch.chdir(w.work)
    monkeypatch.setattr(tempfile, "tempdir", str(w.tmp))
    return w


def invoke(*args: object, env: dict | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def assert_error(result, code: int, *texts: str) -> None:
    """One `error:` line first (nothing printed before it), a `hint:`, the exit code, no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    first = next(i for i, line in enumerate(lines) if line.startswith("error:"))
    assert all(line[:1] in "✓!✗" for line in lines[:first]), result.output  # only progress lines before it
    assert any(line.startswith("hint:") for line in lines), result.output
    for text in texts:
        assert text in result.output, result.output


def assert_untouched(world: World, before: dict[str, str]) -> None:
    """Nothing changed anywhere: working folder, --out (not even created), temp folder, victim."""
    assert world.snapshot() == before


def build_args(world: World, target: Path | str, model: str = "Lin", inputs: str = "x=1x4", *extra: object) -> list:
    return [
        "build",
        "--target",
        target,
        "--model",
        f"{world.models()}:{model}",
        "--input",
        inputs,
        "--out",
        world.out,
        *extra,
    ]


# 1. Nothing outside --out is written, renamed or removed ------------------------------------------------

HOSTILE_TARGET_NAMES = [
    ('name = "./../../victim"', "cannot be a folder name"),
    ('name = "../victim"', "cannot be a folder name"),
    ('name = ""', "is empty"),
    ('name = "."', "cannot be a folder name"),
    ('name = ".."', "cannot be a folder name"),
    ('name = "/tmp/abs"', "cannot be a folder name"),
    ('name = "a/b"', "cannot be a folder name"),
    ('name = "a\\\\b"', "cannot be a folder name"),
    ('name = ".hidden"', "cannot be a folder name"),
    ('name = "fast.failed"', "ends in '.failed'"),
    ('name = "fast.zip"', "ends in '.zip'"),
    ('name = "' + "x" * 300 + '"', "300 characters long"),
    ("name = 123", "must be a string"),
    ('name = "nul\\u0000byte"', "cannot be a folder name"),
]


@pytest.mark.parametrize(
    "name_line,text", HOSTILE_TARGET_NAMES, ids=[f"target-name-{i}" for i in range(len(HOSTILE_TARGET_NAMES))]
)
def test_hostile_target_names_are_refused_before_anything_is_written(world, name_line, text):
    target = world.target(name_line=name_line)
    before = world.snapshot()
    result = invoke(*build_args(world, target))
    assert_error(result, 2, str(target), "'name'", text)
    assert_untouched(world, before)


HOSTILE_MODEL_NAMES = [
    ("../../victim", "cannot be a folder name"),
    ("", "is empty"),
    ("..", "cannot be a folder name"),
    ("y" * 300, "300 characters long"),
    (".staging", "cannot be a folder name"),
    ("a/../../b", "cannot be a folder name"),
]


@pytest.mark.parametrize(
    "name,text", HOSTILE_MODEL_NAMES, ids=[f"model-name-{i}" for i in range(len(HOSTILE_MODEL_NAMES))]
)
def test_hostile_model_names_are_refused_before_the_model_is_loaded(world, name, text):
    target = world.target()
    before = world.snapshot()
    result = invoke(*build_args(world, target, "Lin", "x=1x4", "--name", name))
    assert_error(result, 2, "Model name", text)
    assert_untouched(world, before)


def test_a_derived_model_name_that_is_no_folder_name_asks_for_name(world):
    before = world.snapshot()
    model = "ThisModelClassNameIsSoLongThatNoFileSystemShouldHaveToHoldItAsAFolderNameEvenThoughPythonIsHappyWithIdentifiersThatLong"
    result = invoke(*build_args(world, world.target(), model))
    assert_error(result, 2, "Model name 'this-model-class-name", "characters long", "Pass --name")
    assert_untouched(world, before)


def test_a_link_inside_out_that_leads_outside_is_not_followed(world):
    world.out.mkdir()
    (world.out / "lin").symlink_to(world.victim, target_is_directory=True)
    before = world.snapshot()
    result = invoke(*build_args(world, world.target()))
    assert_error(result, 2, "outside", "only writes inside --out")
    assert_untouched(world, before)


def test_an_empty_target_name_cannot_replace_the_models_other_bundles(world):
    good = invoke(*build_args(world, world.target("keep")))
    assert good.exit_code == 0, good.output
    bundle = world.out / "lin" / "keep"
    empty = world.target(name_line='name = ""', file="empty.toml")
    before = world.snapshot()
    result = invoke(*build_args(world, empty))
    assert_error(result, 2, "'name'", "is empty")
    assert world.snapshot() == before and (bundle / "manifest.json").is_file()


def test_paths_unit_rules():
    assert folder_name("ok-name_1.2", "x") == "ok-name_1.2"
    for bad in ("", ".", "..", "a/b", "../x", "x" * 101):
        with pytest.raises(UsageError):
            folder_name(bad, "x")
    with pytest.raises(UsageError):
        folder_name("t.failed", "x", target=True)


@pytest.mark.parametrize("relative", ["../victim/precious.txt", "/etc/passwd", "a/../../x", "", "a\\b", "./x", "a//b"])
def test_bundle_member_refuses_paths_that_leave_the_bundle(world, relative):
    with pytest.raises(UsageError, match="bundle"):
        bundle_member(world.work, relative)


def test_bundle_member_refuses_a_link_out_of_the_bundle(world):
    (world.work / "bundle").mkdir()
    (world.work / "bundle" / "model.onnx").symlink_to(world.victim / "precious.txt")
    with pytest.raises(UsageError, match="outside the bundle|symbolic link"):
        bundle_member(world.work / "bundle", "model.onnx")


# A real small bundle, for verify/inspect/install-into with hostile contents --------------------------------


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile-bundle")
    (folder / "models.py").write_text(MODELS, encoding="utf-8")
    target = folder / "t.toml"
    target.write_text(FAST_TARGET_TEXT.format(name="fast", formats=ONNX_AND_LITE), encoding="utf-8")
    result = invoke(
        "build",
        "--target",
        target,
        "--model",
        f"{folder / 'models.py'}:Lin",
        "--input",
        "x=1x4",
        "--out",
        folder / "dist",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    return folder / "dist" / "lin" / "fast"


def copy_bundle(small_bundle: Path, world: World) -> Path:
    import shutil

    destination = world.work / "bundle"
    shutil.copytree(small_bundle, destination)
    return destination


def rewrite_manifest(bundle: Path, change) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(manifest_dumps(manifest))


def android_app(world: World) -> Path:
    app_dir = world.work / "app"
    for marker in ("settings.gradle.kts", "app/build.gradle.kts", "app/src/main/AndroidManifest.xml"):
        (app_dir / marker).parent.mkdir(parents=True, exist_ok=True)
        (app_dir / marker).write_text("")
    return app_dir


@pytest.mark.parametrize("path", ["../../victim/precious.txt", "/tmp/x.ptl"])
def test_install_into_refuses_manifest_paths_outside_the_bundle(world, small_bundle, path):
    bundle = copy_bundle(small_bundle, world)
    rewrite_manifest(
        bundle, lambda m: next(a for a in m["artifacts"] if a["format"] == "torchscript_lite").update(path=path)
    )
    app_dir = android_app(world)
    before = world.snapshot()
    result = invoke("install-into", app_dir, "--bundle", bundle)
    assert_error(result, 2, "does not match the manifest schema")
    assert_untouched(world, before)


def test_install_into_refuses_an_artifact_that_is_a_link_out_of_the_bundle(world, small_bundle):
    bundle = copy_bundle(small_bundle, world)
    (bundle / "lin.ptl").unlink()
    (bundle / "lin.ptl").symlink_to(world.victim / "precious.txt")
    app_dir = android_app(world)
    before = world.snapshot()
    result = invoke("install-into", app_dir, "--bundle", bundle)
    assert_error(result, 2, "lin.ptl")
    assert_untouched(world, before)


def test_install_into_removes_what_a_killed_install_left_and_touches_nothing_else(world, small_bundle):
    app_dir = android_app(world)
    assets = app_dir / "app/src/main/assets"
    (assets / ".edgepack.staging-killed").mkdir(parents=True)
    (assets / ".edgepack.staging-killed" / "lin.ptl").write_text("half a copy")
    outside = {k: v for k, v in world.snapshot().items() if not k.startswith("work/app")}
    result = invoke("install-into", app_dir, "--bundle", small_bundle)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in assets.iterdir()) == ["edgepack"]
    assert {k: v for k, v in world.snapshot().items() if not k.startswith("work/app")} == outside


def _zip_with(world: World, small_bundle: Path, name: str, attr: int | None = None) -> Path:
    archive = world.work / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(p for p in small_bundle.rglob("*") if p.is_file()):
            zf.write(file, f"fast/{file.relative_to(small_bundle).as_posix()}")
        info = zipfile.ZipInfo(name)
        if attr is not None:
            info.external_attr = attr << 16
        zf.writestr(info, "payload")
    return archive


@pytest.mark.parametrize(
    "entry,attr,text",
    [
        ("../../victim/evil.txt", None, "unsafe entry"),
        ("/victim/evil.txt", None, "unsafe entry"),
        ("fast/link", 0o120777, "symbolic link"),
    ],
)
@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_hostile_archives_extract_nothing_anywhere(world, small_bundle, entry, attr, text, command):
    archive = _zip_with(world, small_bundle, entry, attr)
    before = world.snapshot()
    result = invoke(command, archive)
    assert_error(result, 2, text)
    assert_untouched(world, before)


# 2. Exit codes a build script can trust --------------------------------------------------------------


@pytest.mark.parametrize("command", ["build", "doctor"])
@pytest.mark.parametrize(
    "model,texts",
    [
        ("models.py:ExitsInForward", ["sys.exit(0)", f"models.py:{line_of('exit-forward')}"]),
        ("models.py:ExitsWithCode", ["sys.exit(3)", f"models.py:{line_of('exit-code')}"]),
        ("models.py:exiting_factory", ["sys.exit('factory gave up')", f"models.py:{line_of('exit-factory')}"]),
        ("exits_at_import.py:Net", ["sys.exit(5)", f"exits_at_import.py:{line_of('exit-import', EXITS_AT_IMPORT)}"]),
        ("calls_exit.py:Net", ["sys.exit(6)", f"calls_exit.py:{line_of('exit-builtin', CALLS_EXIT_AT_IMPORT)}"]),
        ("sys:exit", ["sys.exit()"]),
    ],
)
def test_user_code_exiting_is_a_usage_error_naming_the_line(world, command, model, texts):
    reference = model if model.startswith("sys:") else f"{world.work / model}"
    target = ["--target", world.target(), "--out", world.out] if command == "build" else []
    before = world.snapshot()
    result = invoke(command, *target, "--model", reference, "--input", "x=1x4")
    assert_error(result, 2, "nothing was built", *texts)
    assert_untouched(world, before)


@pytest.mark.parametrize("command", ["build", "doctor"])
def test_user_code_exiting_with_json_prints_one_json_document(world, command):
    target = ["--target", world.target(), "--out", world.out] if command == "build" else []
    result = invoke(command, *target, "--model", f"{world.models()}:ExitsInForward", "--input", "x=1x4", "--json")
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert document["ok"] is False and "sys.exit(0)" in document["error"] and document["hint"]


def test_a_data_callable_exiting_is_a_usage_error(world):
    result = invoke(*build_args(world, world.target(), "Lin", "x=1x4", "--check-inputs", "models:exits_in_data"))
    assert_error(result, 2, "sys.exit(4)", f"models.py:{line_of('exit-data')}")


def test_a_swallowed_ctrl_c_still_stops_the_build_and_keeps_the_previous_bundle(world):
    good = invoke(*build_args(world, world.target()))
    assert good.exit_code == 0, good.output
    bundle = world.out / "lin" / "fast"
    before = world.snapshot()
    result = invoke(*build_args(world, world.target(), "SwallowsCtrlC", "x=1x4", "--name", "lin"))
    assert_error(result, 130, "interrupted (SIGINT)")
    assert world.snapshot() == before and (bundle / "manifest.json").is_file()
    assert signal.getsignal(signal.SIGINT) is not interrupts._handler  # handlers restored after the command


def test_a_staging_folder_left_by_a_killed_build_is_removed_by_the_next_one(world):
    abandoned = world.out / "lin" / ".fast.staging-killed"
    abandoned.mkdir(parents=True)
    (abandoned / "lin.onnx").write_text("half a bundle")
    old = world.out / "lin" / ".fast.old-killed"
    old.mkdir()
    result = invoke(*build_args(world, world.target()))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (world.out / "lin").iterdir()) == ["fast"]


# 3. Checks that a broken model cannot pass --------------------------------------------------------------


@pytest.mark.parametrize(
    "model,texts",
    [
        ("AllNan", ["'output'", "all inf/NaN"]),
        ("AllInf", ["'output'", "all inf/NaN"]),
        ("AllMinusInf", ["'output'", "all inf/NaN"]),
        ("NanBesideGood", ["'bad'", "no finite value"]),
        ("Empty", ["Every output of the model is empty"]),
    ],
)
def test_outputs_with_nothing_checkable_are_an_error(world, model, texts):
    before = world.snapshot()
    result = invoke(*build_args(world, world.target(), model))
    assert_error(result, 2, *texts)
    assert_untouched(world, before)


def test_an_empty_output_beside_checked_ones_is_a_named_warning(world):
    result = invoke(*build_args(world, world.target(), "EmptyBesideGood"))
    assert result.exit_code == 0, result.output
    assert "output 'boxes' is empty on every golden sample" in result.output


@pytest.mark.parametrize("values", [np.nan, np.inf, -np.inf])
def test_comparing_uncheckable_outputs_never_passes(values):
    reference = [np.full((1, 3), values, dtype=np.float32)]
    single = compare_outputs(reference, reference, 1e-4, 1e-4, 0.9999, "sample", ["y"])
    verdict = merge([single, single])
    assert not verdict.ok and "nothing checkable" in verdict.reason


def test_comparing_empty_outputs_only_never_passes():
    empty = [np.zeros((1, 0), dtype=np.float32)]
    verdict = merge([compare_outputs(empty, empty, 1e-4, 1e-4, 0.9999, "s", ["y"])])
    assert not verdict.ok and "every output is empty" in verdict.reason


def test_verify_fails_a_bundle_whose_golden_outputs_are_all_nan(world, small_bundle):
    """NaN golden inputs make every artifact answer NaN, equal to NaN golden outputs: that 'matched' before
    (max abs error 0, cosine 1) and verify said OK. Nothing was checked: it must fail."""
    bundle = copy_bundle(small_bundle, world)
    for kind in ("inputs", "expected"):
        with np.load(bundle / f"golden/{kind}.npz") as data:
            arrays = {k: np.full_like(data[k], np.nan) for k in data.files}
        np.savez(bundle / f"golden/{kind}.npz", **arrays)
        for name, array in arrays.items():
            (bundle / f"golden/{kind}/{name}.bin").write_bytes(array.astype(array.dtype.newbyteorder("<")).tobytes())

    def rehash(manifest):
        for entry in manifest["files"]:
            data = (bundle / entry["path"]).read_bytes()
            entry["sha256"], entry["size_bytes"] = hashlib.sha256(data).hexdigest(), len(data)

    rewrite_manifest(bundle, rehash)
    result = invoke("verify", bundle)
    assert result.exit_code == 1, result.output
    assert "nothing checkable" in result.output and "OK" not in result.output.splitlines()[-1]


# 4. Input and disk errors are clear errors, not tracebacks ------------------------------------------------


@pytest.mark.parametrize(
    "spec,text",
    [
        ("x=1x3x40000x20000", "GiB per sample"),
        ("x=1xN=60000x60000", "GiB per sample"),
        ("x=99999999999999999999", "GiB per sample"),
    ],
)
def test_absurd_input_sizes_are_refused_before_allocating(world, spec, text):
    before = world.snapshot()
    result = invoke(*build_args(world, world.target(), "Lin", spec))
    assert_error(result, 2, text)
    assert_untouched(world, before)


def _write_junk(world: World, kind: str) -> Path:
    path = world.work / ("data.npz" if kind != "npy" else "folder/a.npy")
    path.parent.mkdir(exist_ok=True)
    if kind == "bytes":
        path.write_bytes(os.urandom(300))
    elif kind == "truncated":
        np.savez(path, x=np.zeros((4, 1, 4), np.float32))
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "pickled":
        np.savez(path, x=np.array([{"a": 1}], dtype=object))
    elif kind == "scalar":
        np.savez(path, x=np.float32(1.0))
    elif kind == "strings":
        np.savez(path, x=np.array(["a", "b"]))
    elif kind == "not-npy-inside":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("x.npy", "this is not an array")
    elif kind == "npy":
        path.write_bytes(b"\x93NUMPY junk")
    return path


@pytest.mark.parametrize("kind", ["bytes", "truncated", "pickled", "scalar", "strings", "not-npy-inside"])
def test_junk_check_inputs_are_usage_errors(world, kind):
    path = _write_junk(world, kind)
    before = world.snapshot()
    result = invoke(*build_args(world, world.target(), "Lin", "x=1x4", "--check-inputs", path))
    assert_error(result, 2, "--check-inputs", "data.npz")
    assert_untouched(world, before)


@pytest.mark.parametrize("kind", ["bytes", "pickled", "npy"])
def test_junk_calibration_data_is_a_usage_error(world, kind):
    path = _write_junk(world, kind)
    source = path.parent if kind == "npy" else path
    result = invoke(
        *build_args(world, world.target(), "Lin", "x=1x4", "--precision", "int8-static", "--calibration", source)
    )
    assert_error(result, 2, "--calibration")
    assert not world.out.exists()


@pytest.mark.parametrize("content", [b"not a png at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_junk_calibration_images_are_a_usage_error(world, content):
    folder = world.work / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(content)
    result = invoke(
        *build_args(world, world.target(), "Lin", "x=1x1x4x4", "--precision", "int8-static", "--calibration", folder)
    )
    assert_error(result, 2, "a.png cannot be read")
    assert not world.out.exists()


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "document,command,code",
    [
        (_nested(100_000), "verify", 1),
        (_nested(100_000), "inspect", 2),
        (_nested(500), "verify", 1),
        ("[1, 2]", "verify", 1),
        ('{"schema_version": 2}', "inspect", 2),
    ],
)
def test_deep_or_junk_manifests_are_reported_not_tracebacks(world, document, command, code):
    bundle = world.work / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(document)
    result = invoke(command, bundle)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output


@pytest.mark.parametrize(
    "errno_value,text", [(errno.ENOSPC, "No space left"), (errno.EDQUOT, "quota"), (errno.EROFS, "Read-only")]
)
def test_a_full_disk_is_an_error_and_keeps_the_previous_bundle(world, monkeypatch, errno_value, text):
    assert invoke(*build_args(world, world.target())).exit_code == 0
    before = world.snapshot()
    from edgepack.bundle import staging

    def full(path, document):
        raise OSError(errno_value, os.strerror(errno_value), str(path))

    monkeypatch.setattr(staging, "write_json", full)
    monkeypatch.setattr("edgepack.pipeline.write_json", full)
    result = invoke(*build_args(world, world.target()))
    assert_error(result, 1, "Could not write", text)
    assert world.snapshot() == before  # no staging folder left, previous bundle intact


# 5. Target values are range-checked when the target is loaded -----------------------------------------------

BAD_VALUES = [
    ("[smoke]\natol = -1.0\n", "[smoke]", "'atol'"),
    ("[smoke]\nrtol = -0.1\n", "[smoke]", "'rtol'"),
    ("[smoke]\nmin_cosine = 2.0\n", "[smoke]", "'min_cosine'"),
    ("[smoke]\nmin_cosine = nan\n", "[smoke]", "'min_cosine'"),
    ("[smoke]\natol = inf\n", "[smoke]", "'atol'"),
    ("[quantized_smoke]\nmin_cosine = 7\n", "[quantized_smoke]", "'min_cosine'"),
    ("[budgets]\nmax_size_mb = -1\n", "[budgets]", "'max_size_mb'"),
    ("[budgets]\nmax_p50_ms = 0\n", "[budgets]", "'max_p50_ms'"),
    ("[accuracy]\nmin_top1_agreement = 1.5\n", "[accuracy]", "'min_top1_agreement'"),
    ("[accuracy]\nmax_abs_err = -1\n", "[accuracy]", "'max_abs_err'"),
    ('[accuracy]\nmin_cosine = "high"\n', "[accuracy]", "'min_cosine'"),
    ("[formats.onnx.smoke]\natol = -1\n", "[formats.onnx] smoke", "'atol'"),
    ("[formats.onnx.budgets]\nmax_size_mb = -3\n", "[formats.onnx] budgets", "'max_size_mb'"),
]


@pytest.mark.parametrize("extra,section,key", BAD_VALUES, ids=[f"value-{i}" for i in range(len(BAD_VALUES))])
def test_out_of_range_target_values_name_file_and_key(world, extra, section, key):
    target = world.target(extra="\n" + extra)
    if extra.startswith("[smoke]"):  # the fast target has its own [smoke] table: this one replaces it
        target.write_text(target.read_text().replace("[smoke]\natol = 1e-4\nrtol = 1e-4\nmin_cosine = 0.9999\n", "", 1))
    before = world.snapshot()
    result = invoke(*build_args(world, target))
    assert_error(result, 2, str(target), section, key)
    assert_untouched(world, before)


BAD_BENCH = [
    ("threads = 2.5", "'threads'"),
    ('min_runs = "3"', "'min_runs'"),
    ("min_seconds = -1.0", "'min_seconds'"),
    ('footprint = "yes"', "'footprint'"),
    ("warmup = -1", "'warmup'"),
    ("threads = 100000", "'threads'"),
]


@pytest.mark.parametrize("line,key", BAD_BENCH, ids=[f"bench-{i}" for i in range(len(BAD_BENCH))])
def test_bad_bench_values_name_file_and_key(world, line, key):
    target = world.target()
    text = target.read_text().replace("[bench]\n", f"[bench]\n{line}\n", 1)
    for field in ("threads", "min_runs", "min_seconds", "footprint", "warmup"):  # the fast target's own value goes
        if line.startswith(field):
            text = "\n".join(x for x in text.splitlines() if not (x.startswith(f"{field} =") and x != line)) + "\n"
    target.write_text(text)
    result = invoke(*build_args(world, target))
    assert_error(result, 2, str(target), "[bench]", key)


@pytest.mark.parametrize(
    "extra,text",
    [
        ('description = ["x"]\n', "'description' must be a string"),
    ],
)
def test_bad_target_top_level_values(world, extra, text):
    target = world.target()
    target.write_text(target.read_text().replace('description = "test target"\n', extra, 1))
    result = invoke(*build_args(world, target))
    assert_error(result, 2, str(target), text)


def test_a_precision_that_is_not_a_string_names_file_and_key(world):
    result = invoke(*build_args(world, world.target(formats="[formats.onnx]\nprecision = 8\n")))
    assert_error(result, 2, "[formats.onnx]", "'precision' must be a string")


# 6. Litter: nothing left in the working folder or the temporary folder -----------------------------------


def test_an_int8_onnx_build_leaves_the_working_folder_and_temp_folder_as_they_were(world):
    np.savez(world.root / "calib.npz", x=np.random.default_rng(0).standard_normal((8, 1, 4)).astype(np.float32))
    target = world.target(formats='[formats.onnx]\nprecision = "int8-static"\nopset = 18\n')
    before = {p: h for p, h in world.snapshot().items() if not p.startswith("work/dist")}
    result = invoke(*build_args(world, target, "Lin", "x=1x4", "--calibration", world.root / "calib.npz", "--quiet"))
    assert result.exit_code in (0, 1), result.output
    after = {p: h for p, h in world.snapshot().items() if not p.startswith("work/dist")}
    assert after == before, sorted(set(after) ^ set(before))
    assert not any(world.tmp.iterdir())


def test_ort_preprocess_litter_never_reaches_the_working_folder(world, monkeypatch):
    """onnxruntime's quant_pre_process writes sym_shape_infer_temp.onnx and a <uuid>.data (the weights) into the
    working folder and leaves them when symbolic shape inference fails; edgepack's retry used to leave them."""
    import onnx
    from onnx import TensorProto, helper

    from edgepack.formats.onnx import quantize as ort_quant

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model_path = world.root / "m.onnx"
    onnx.save(helper.make_model(graph), str(model_path))
    calls = []

    def like_ort(source, out, skip_symbolic_shape=False, **kwargs):
        Path("sym_shape_infer_temp.onnx").write_bytes(b"temp model")
        Path("3f2a9c1e-weights.data").write_bytes(b"the model's weights")
        calls.append(Path.cwd())
        if not skip_symbolic_shape:
            raise RuntimeError("symbolic shape inference failed")
        Path(out).write_bytes(Path(source).read_bytes())

    monkeypatch.setattr(ort_quant, "quant_pre_process", like_ort)
    before = world.snapshot()
    notes = ort_quant.preprocess(model_path, world.root / "prepared.onnx")
    assert "without symbolic shape inference" in notes[0] and len(calls) == 2
    after = world.snapshot()
    assert {k: v for k, v in after.items() if not k.startswith("prepared.")} == before  # its outputs only
    assert all(not c.exists() for c in calls) and Path.cwd() == world.work


def test_scratch_cwd_always_restores_and_removes(world):
    with pytest.raises(RuntimeError), scratch_cwd() as folder:
        assert Path.cwd() == folder.resolve()
        (folder / "sym_shape_infer_temp.onnx").write_text("litter")
        raise RuntimeError("the tool failed")
    assert Path.cwd() == world.work and not folder.exists()


# 7. The error contract ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,text",
    [
        (["build", "--json", "--bogus"], "No such option: --bogus"),
        (["build", "--json", "--target"], "requires an argument"),
        (["verify", "--json"], "Missing argument"),
        (["doctor", "--json", "--frobnicate", "1"], "No such option"),
    ],
)
def test_click_usage_errors_keep_the_json_and_error_contract(world, args, text):
    before = world.snapshot()
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    document = json.loads(result.stdout)
    assert document["ok"] is False and text in document["error"] and "--help" in document["hint"]
    assert "╭" not in result.output and "error:" in result.output and "hint:" in result.output
    assert_untouched(world, before)


@pytest.mark.parametrize(
    "option,text",
    [
        ("--target", "Target file"),
        ("--weights", "Weights file"),
        ("--config", "Config file"),
    ],
)
def test_a_folder_given_for_a_file_is_said_to_be_a_folder(world, option, text):
    folder = world.work / "a-folder.toml"
    folder.mkdir()
    args = build_args(world, folder if option == "--target" else world.target())
    if option != "--target":
        args += [option, folder]
    result = invoke(*args)
    assert_error(result, 2, text, "is a folder")
    assert "does not exist" not in result.output


def test_a_folder_given_as_model_file_is_said_to_be_a_folder(world):
    (world.work / "pkg.py").mkdir()
    result = invoke("build", "--target", world.target(), "--model", f"{world.work / 'pkg.py'}:Net", "--input", "x=1x4")
    assert_error(result, 2, "is a folder")


@pytest.mark.parametrize(
    "formats,text",
    [
        ('[formats.onnx]\nopset = "17"\n', "opset must be a whole number, got str '17'"),
        ("[formats.onnx]\nopset = 17.0\n", "opset must be a whole number"),
        ('[formats.torchscript_lite]\nbytecode_version = "8"\n', "bytecode_version must be a whole number"),
    ],
)
def test_option_types_are_said_as_types(world, formats, text):
    target = world.target(formats=formats)
    result = invoke(*build_args(world, target))
    assert_error(result, 2, text, str(target))
    assert "not supported" not in result.output


def test_an_integer_range_beyond_the_embedding_gets_a_hint_about_the_range(world):
    result = invoke(*build_args(world, world.target(), "Emb", "ids=1x4:int64:0..100"))
    assert_error(result, 2, "index out of range", "[0, 100)", "has 50 rows", "ids=1x4:int64:0..50")


def test_a_warning_is_never_printed_before_the_error_line(world):
    result = invoke(*build_args(world, world.target(), "WarnsThenFails"))
    assert_error(result, 2, "forward failed")
    assert "torch-like warning before the failure" in result.output.split("hint:", 1)[1]


def test_build_help_at_80_columns_shows_the_whole_input_syntax():
    result = invoke("build", "--help", env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0
    assert max(len(line) for line in result.output.splitlines()) <= 80
    squeezed = "".join(result.output.replace("│", "").split())
    assert "NAME=DIMS[:DTYPE][:LOW..HIGH]" in squeezed and "ids=1x128:int64:0..30522" in squeezed
    assert "…" not in result.output


# 8. The manifest is as strict as its schema, and verify names the wrong key --------------------------------

SCHEMA_BREAKS = [
    (
        "artifact key misspelled",
        lambda m: m["artifacts"][0].update(precision_requsted=m["artifacts"][0].pop("precision_requested")),
        "precision_requsted",
    ),
    ("unknown artifact key", lambda m: m["artifacts"][0].update(backdoor=True), "backdoor"),
    ("unknown capture key", lambda m: m["capture"].update(stratgy="trace"), "stratgy"),
    ("unknown smoke_detail key", lambda m: m["artifacts"][0]["smoke_detail"].update(ok=True), "'ok'"),
    ("unknown requirements key", lambda m: m["artifacts"][0]["requirements"].update(run_anything=True), "run_anything"),
    ("unknown files entry key", lambda m: m["files"][0].update(executable=True), "executable"),
    ("unknown provenance.capture key", lambda m: m["provenance"]["capture"].update(extra=1), "extra"),
    ("unknown tolerance key", lambda m: m["artifacts"][0]["tolerance"].update(atol_override=1.0), "atol_override"),
    ("unknown source key", lambda m: m["model"]["source"].update(url="http://x"), "url"),
]


@pytest.mark.parametrize("change,key", [(c, k) for _, c, k in SCHEMA_BREAKS], ids=[n for n, _, _ in SCHEMA_BREAKS])
def test_verify_names_the_key_the_schema_does_not_know(world, small_bundle, change, key):
    bundle = copy_bundle(small_bundle, world)
    rewrite_manifest(bundle, change)
    result = invoke("verify", bundle, "--json")
    assert result.exit_code == 1, result.output
    document = json.loads(result.stdout)
    assert document["ok"] is False and any(key in failure for failure in document["failures"]), document["failures"]


def test_the_unchanged_small_bundle_verifies(world, small_bundle):
    bundle = copy_bundle(small_bundle, world)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert copy.deepcopy(manifest) == manifest
    result = invoke("verify", bundle)
    assert result.exit_code == 0, result.output
