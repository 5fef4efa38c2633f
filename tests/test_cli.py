"""The command line as users and firmware scripts call it: exit codes, --json, config files, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgepack.cli import app

from .conftest import write_fast_target
from .models import make_small_linear

MODELS = Path(__file__).parent / "models.py"
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_build_json_prints_only_json_and_exits_zero(tmp_path):
    """A real process, as a firmware build script runs it: stdout must parse as one JSON document."""
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "edgepack", "build", "--target", "iot", "--json", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["target"] == "iot" and report["model"] == "demo-digits"
    assert Path(report["bundle_dir"]) == (tmp_path / "demo-digits" / "iot").resolve()
    assert report["artifacts"][0]["smoke"]["status"] == "passed"


def test_targets_lists_each_target_with_its_formats():
    result = invoke("targets", "--json")
    assert result.exit_code == 0
    listed = {t["name"]: [f["format"] for f in t["formats"]] for t in json.loads(result.stdout)}
    assert listed == {
        "android": ["executorch", "torchscript_lite", "onnx"],
        "ios": ["coreml", "executorch", "onnx"],
        "iot": ["onnx", "executorch"],
    }


def test_unknown_target_suggests_the_closest(tmp_path):
    result = invoke("build", "--target", "andriod", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert "Did you mean 'android'" in result.stderr and "ios" in result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "x=1x-3x3"], "neither a positive integer nor SYMBOL=SIZE"),
        (["--input", "x=1xHx3"], "has no example size"),
        (["--input", "x=1x3:float64"], "unknown dtype"),
        (["--input", "x"], "Cannot read input"),
    ],
)
def test_bad_inputs_exit_2_with_the_syntax(tmp_path, args, message):
    result = invoke("build", "-t", "iot", "--model", f"{MODELS}:make_small_linear", *args, "--out", str(tmp_path))
    assert result.exit_code == 2
    assert message in result.stderr


@pytest.mark.parametrize(
    "model, message",
    [
        ("no_such_module_xyz:make", "Cannot import module"),
        (f"{MODELS}:make_smal_linear", "Did you mean 'make_small_linear'"),
        (f"{MODELS}:NeedsArguments", "needs arguments (width)"),
        (f"{MODELS}:not_a_module", "not an nn.Module"),
        ("models.py", "Cannot read model reference"),
    ],
)
def test_bad_model_references_exit_2(tmp_path, model, message):
    result = invoke("build", "-t", "iot", "--model", model, "-i", "x=1x6", "--out", str(tmp_path))
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr


def test_model_without_inputs_is_a_usage_error(tmp_path):
    result = invoke("build", "-t", "iot", "--model", f"{MODELS}:make_small_linear", "--out", str(tmp_path))
    assert result.exit_code == 2 and "--input NAME=DIMS" in result.stderr


def test_weights_are_loaded_and_mismatches_explained(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(make_small_linear().state_dict(), good)
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.nn.Linear(3, 3).state_dict(), wrong)
    target = write_fast_target(tmp_path, formats='[formats.onnx]\nprecision = "fp32"\nopset = 18\n')
    ok = invoke(
        "build",
        "-t",
        str(target),
        "--model",
        f"{MODELS}:make_small_linear",
        "--weights",
        str(good),
        "-i",
        "x=1x6",
        "--out",
        str(tmp_path / "dist"),
        "--json",
    )
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    bad = invoke(
        "build",
        "-t",
        str(target),
        "--model",
        f"{MODELS}:make_small_linear",
        "--weights",
        str(wrong),
        "-i",
        "x=1x6",
        "--out",
        str(tmp_path / "dist"),
    )
    assert bad.exit_code == 2 and "do not fit the model" in bad.stderr


def test_pickled_weights_need_explicit_trust(tmp_path):
    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": make_small_linear().state_dict(), "note": object.__new__(_Opaque)}, pickled)
    result = invoke(
        "build",
        "-t",
        "iot",
        "--model",
        f"{MODELS}:make_small_linear",
        "--weights",
        str(pickled),
        "-i",
        "x=1x6",
        "--out",
        str(tmp_path / "dist"),
        "--json",
    )
    assert result.exit_code == 2
    assert "--trust-weights" in result.stderr
    document = json.loads(result.stdout)
    assert set(document) == {"ok", "error", "hint"} and document["ok"] is False
    assert "besides tensors" in document["error"]


class _Opaque:
    """Not loadable with weights_only=True."""


def test_settings_come_from_edgepack_toml(tmp_path, monkeypatch):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "net.py").write_text(MODELS.read_text())
    write_fast_target(project, formats='[formats.onnx]\nprecision = "fp32"\nopset = 18\n')
    (project / "edgepack.toml").write_text(
        'model = "net.py:make_two_input"\ninputs = ["image=1x3x16x16", "meta=1x4"]\ntarget = "fast.toml"\nout = "bundles"\n'
    )
    monkeypatch.chdir(project)
    result = invoke("build", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["bundle_dir"] == str((project / "bundles/two-input-net/fast").resolve())


def test_settings_come_from_pyproject_tool_table(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text('[tool.edgepack]\ntarget = "iot"\nmodle = "x:y"\n')
    monkeypatch.chdir(tmp_path)
    result = invoke("build")
    assert (
        result.exit_code == 2
        and "unknown edgepack setting 'modle'" in result.stderr
        and "Did you mean 'model'" in result.stderr
    )


@pytest.mark.parametrize("value", ["5", '["iot", 5]'])
def test_a_target_setting_that_is_not_names_is_a_usage_error(tmp_path, monkeypatch, value):
    (tmp_path / "edgepack.toml").write_text(f"target = {value}\n")
    monkeypatch.chdir(tmp_path)
    for command in ("build", "doctor"):
        result = invoke(command)
        assert result.exit_code == 2 and "'target' must be a target name or a list of them" in result.stderr, (
            result.stderr
        )


def test_no_target_anywhere_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("build")
    assert result.exit_code == 2 and "No target given" in result.stderr


def test_failed_check_exits_1_and_keeps_the_previous_good_bundle(tmp_path):
    target = write_fast_target(
        tmp_path,
        formats='[formats.onnx]\nprecision = "fp32"\nopset = 18\n[formats.onnx.budgets]\nmax_size_mb = 0.000001\n',
    )
    out = tmp_path / "dist"
    good_dir = out / "demo-digits" / "fast"
    good_dir.mkdir(parents=True)
    (good_dir / "marker").write_text("previous good bundle")
    result = invoke("build", "-t", str(target), "--out", str(out), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and "exceeds the budget" in report["problems"][0]
    assert (good_dir / "marker").read_text() == "previous good bundle"
    assert Path(report["bundle_dir"]).name == "fast.failed"
    assert (Path(report["bundle_dir"]) / "report.json").is_file()
    assert invoke("build", "-t", str(target), "--out", str(out), "--no-budgets", "--quiet").exit_code == 0
    assert not (good_dir / "marker").exists() and not Path(report["bundle_dir"]).exists()


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("edgepack ")


def test_messages_keep_their_square_brackets(tmp_path):
    """rich reads '[formats.onnx]' as a style tag and drops it unless the text is escaped."""
    target = tmp_path / "typo.toml"
    target.write_text('name = "typo"\n[formats.onnx]\nprecision = "fp32"\nopsett = 18\n', encoding="utf-8")
    result = invoke("build", "-t", str(target))
    assert result.exit_code == 2 and "[formats.onnx] has an unknown key 'opsett'" in result.stderr, result.stderr
