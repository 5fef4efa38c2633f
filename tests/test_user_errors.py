"""Every user mistake is an `error:` line with a hint and the right exit code, never a traceback, and
leaves nothing half-written; a failed build's bundle says so in what ships."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgepack.bundle.manifest import read_manifest
from edgepack.cli import app
from edgepack.pipeline import BuildRequest, build

from .conftest import write_fast_target

runner = CliRunner()

USER_MODELS = """import torch
from torch import nn


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x):
        return self.net(x)  # LINE mlp


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 2), nn.Linear(3, 2)

    def forward(self, image, meta):  # LINE twoin
        return self.a(image) + self.b(meta)


class Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("forward exploded")  # LINE boom
"""
BROKEN_AT_IMPORT = 'import torch\n\nraise RuntimeError("boom at import")\n'


def line_of(marker: str) -> int:
    return next(i for i, line in enumerate(USER_MODELS.splitlines(), 1) if f"# LINE {marker}" in line)


@pytest.fixture
def user_files(tmp_path: Path) -> Path:
    (tmp_path / "nets.py").write_text(USER_MODELS, encoding="utf-8")
    (tmp_path / "broken.py").write_text(BROKEN_AT_IMPORT, encoding="utf-8")
    return tmp_path


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, code: int, *texts: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    assert "error:" in result.output and "hint:" in result.output, result.output
    for text in texts:
        assert text in result.output, result.output


# 1, 2: the model's forward fails on the declared inputs, in build and in doctor -------------------------


@pytest.mark.parametrize("command", ["build", "doctor"])
@pytest.mark.parametrize(
    "model,inputs,texts",
    [
        (
            "Mlp",
            ["x=1x33"],
            [
                "forward failed on the example inputs (x=1x33:float32): RuntimeError: mat1 and mat2 shapes "
                "cannot be multiplied (1x33 and 32x8)",
                f"nets.py:{line_of('mlp')}",
                "Mlp.forward(x)",
            ],
        ),
        (
            "TwoInputs",
            ["image=1x4"],
            [
                "missing 1 required positional argument: 'meta'",
                f"nets.py:{line_of('twoin')}",
                "TwoInputs.forward(image, meta)",
            ],
        ),
        ("Boom", ["x=1x4"], ["RuntimeError: forward exploded", f"nets.py:{line_of('boom')}"]),
    ],
)
def test_forward_failing_on_the_inputs_is_a_usage_error_at_the_users_line(user_files, command, model, inputs, texts):
    options = ["--target", "android", "--out", user_files / "dist"] if command == "build" else []
    specs = [arg for spec in inputs for arg in ("--input", spec)]
    result = invoke(command, "--model", f"{user_files / 'nets.py'}:{model}", *specs, *options)
    assert_user_error(result, 2, *texts, "Check the --input names, shapes and dtypes")
    assert not (user_files / "dist").exists()


def test_forward_failure_in_json_mode_is_one_json_error(user_files):
    result = invoke("doctor", "--model", f"{user_files / 'nets.py'}:Mlp", "--input", "x=1x33", "--json")
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert document["ok"] is False and "mat1 and mat2" in document["error"] and document["hint"]


# 8: a model file that fails at import names its line ----------------------------------------------------


def test_model_file_failing_at_import_names_its_line(user_files):
    result = invoke("doctor", "--model", f"{user_files / 'broken.py'}:make", "--input", "x=1x4")
    assert_user_error(result, 2, "RuntimeError: boom at import", "broken.py:3")


def test_syntax_error_in_the_model_file_names_its_line(user_files):
    (user_files / "typo.py").write_text("import torch\n\ndef make(:\n    pass\n", encoding="utf-8")
    result = invoke("doctor", "--model", f"{user_files / 'typo.py'}:make", "--input", "x=1x4")
    assert_user_error(result, 2, "SyntaxError", "typo.py:3")


# 3, 7: cheap checks run before the model is loaded ------------------------------------------------------
# The model file raises at import: an error about the option proves the option was checked first.


@pytest.mark.parametrize(
    "options,text",
    [
        (["--capture", "magic"], "Unknown capture mode 'magic'"),
        (["--device-policy", "agnostc"], "Unknown device policy 'agnostc'. Did you mean 'agnostic'?"),
        (["--trace-device", "tpu"], "'tpu' is not a device name"),
        (["--precision", "int9"], "Unknown precision 'int9'"),
        (["--target", "androd"], "Did you mean 'android'?"),
        (["--name", "a/b"], "cannot be a folder name"),
        (["--weights", "missing.pt"], "Weights file 'missing.pt' does not exist"),
        (["--check-inputs", "missing.npz"], "--check-inputs file 'missing.npz' does not exist"),
        (["--eval-data", "missing.npz"], "--eval-data file 'missing.npz' does not exist"),
    ],
)
def test_bad_options_are_rejected_before_the_model_is_loaded(user_files, options, text):
    target = [] if "--target" in options else ["--target", "android"]
    result = invoke("build", *target, "--model", f"{user_files / 'broken.py'}:make", "--input", "x=1x4", *options)
    assert_user_error(result, 2, text)
    assert "boom at import" not in result.output


@pytest.mark.parametrize("out", ["outfile", "outfile/sub"])
def test_out_that_is_a_file_is_rejected_before_the_model_is_loaded(user_files, out):
    (user_files / "outfile").write_text("not a folder")
    result = invoke(
        "build",
        "--target",
        "android",
        "--model",
        f"{user_files / 'broken.py'}:make",
        "--input",
        "x=1x4",
        "--out",
        user_files / out,
    )
    assert_user_error(result, 2, "outfile is a file, not a folder")
    assert (user_files / "outfile").read_text() == "not a folder"


def test_doctor_checks_its_options_before_loading(user_files):
    result = invoke("doctor", "--model", f"{user_files / 'broken.py'}:make", "--input", "x=1x4", "--capture", "magic")
    assert_user_error(result, 2, "Unknown capture mode 'magic'")


# 5: keygen into a folder that does not exist ------------------------------------------------------------


def test_keygen_into_a_missing_folder_exits_2_and_writes_nothing(tmp_path):
    result = invoke("keygen", tmp_path / "keys" / "rel.key")
    assert_user_error(result, 2, "does not exist", "mkdir -p")
    assert not (tmp_path / "keys").exists()
    result = invoke("keygen", tmp_path / "rel.key", "--public-key", tmp_path / "nope" / "rel.pub")
    assert_user_error(result, 2, "nope does not exist")
    assert list(tmp_path.iterdir()) == []  # not half a key pair


# 6: a file that is not a torch.save checkpoint as --weights ---------------------------------------------


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"hello world\n", "it is a text file (it starts with 'hello world"),
        (b"", "the file is empty"),
        (b"\x80\x02truncated", "torch.load failed"),
    ],
)
def test_weights_that_are_not_a_checkpoint_say_so(user_files, content, reason):
    weights = user_files / "not_a_torch_file.pt"
    weights.write_bytes(content)
    result = invoke("doctor", "--model", f"{user_files / 'nets.py'}:Mlp", "--input", "x=1x32", "--weights", weights)
    assert_user_error(result, 2, f"{weights} is not a PyTorch checkpoint (torch.save file): {reason}", "torch.save(")


# 4, 9: verify and inspect on bundles that must not pass -------------------------------------------------


@pytest.fixture(scope="session")
def failed_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model over its size budget: the build writes <target>.failed."""
    folder = tmp_path_factory.mktemp("failed-build")
    target = write_fast_target(
        folder,
        formats='[formats.onnx]\nprecision = "fp32"\nopset = 18\n[formats.onnx.budgets]\nmax_size_mb = 0.000001\n',
    )
    (folder / "nets.py").write_text(USER_MODELS, encoding="utf-8")
    from edgepack.inputs import parse_input_spec

    [report] = build(
        BuildRequest(
            [str(target)],
            model=f"{folder / 'nets.py'}:Mlp",
            inputs=[parse_input_spec("x=1x32")],
            out_dir=folder / "dist",
        )
    )
    assert not report.ok and report.bundle_dir.endswith("fast.failed")
    return Path(report.bundle_dir)


def test_a_failed_build_records_it_and_a_renamed_failed_bundle_does_not_verify(failed_bundle, tmp_path):
    recorded = read_manifest(failed_bundle / "manifest.json")["build"]
    assert recorded["ok"] is False and "exceeds the budget" in recorded["problems"][0]
    renamed = Path(shutil.copytree(failed_bundle, tmp_path / "fast"))
    result = invoke("verify", renamed)
    assert result.exit_code == 1 and "this bundle is from a failed build: onnx: size_mb" in result.output, result.output
    assert "Traceback" not in result.output
    result = invoke("inspect", renamed)
    assert result.exit_code == 0 and "build: FAILED" in result.output and "exceeds the budget" in result.output
    assert json.loads(invoke("inspect", renamed, "--json").stdout)["build"]["ok"] is False


def test_verify_reports_a_manifest_input_without_golden_vector_as_a_failed_check(failed_bundle, tmp_path):
    bundle = Path(shutil.copytree(failed_bundle, tmp_path / "renamed-input"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["inputs"][0]["name"] = "y"  # schema-valid, inconsistent with golden/
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    result = invoke("verify", bundle, "--json")
    assert result.exit_code == 1, result.output
    failures = json.loads(result.stdout)["failures"]
    assert any("manifest input 'y' has no golden vector in golden/inputs.npz (it holds x)" in f for f in failures), (
        failures
    )


def test_verify_on_a_folder_that_is_not_a_bundle_exits_2(tmp_path):
    result = invoke("verify", tmp_path)
    assert_user_error(result, 2, "is not a bundle: it has no manifest.json")


def test_install_into_refuses_a_failed_bundle_even_without_its_report(failed_bundle, tmp_path):
    bundle = Path(shutil.copytree(failed_bundle, tmp_path / "iot"))
    (bundle / "report.json").unlink()
    app_dir = Path(shutil.copytree(Path(__file__).parent.parent / "android-demo", tmp_path / "android-demo"))
    result = invoke("install-into", app_dir, "--bundle", bundle)
    assert_user_error(result, 2, "is from a failed build: onnx: size_mb")


# User callables for --check-inputs / --calibration / --eval-data that fail are the user's errors ---------

USER_DATA = """def boom():
    raise ValueError("no data today")  # LINE data-boom


def not_batches():
    return 5


def half_way():
    yield {"x": [[0.0] * 32]}
    raise OSError("disk went away")  # LINE data-half
"""


def data_line(marker: str) -> int:
    return next(i for i, line in enumerate(USER_DATA.splitlines(), 1) if f"# LINE {marker}" in line)


@pytest.mark.parametrize("option", ["--check-inputs", "--calibration", "--eval-data"])
@pytest.mark.parametrize(
    "function,texts",
    [
        ("boom", ["raised ValueError: no data today", f"data.py:{data_line('data-boom')}"]),
        ("not_batches", ["returned int, not an iterable of batches"]),
        ("half_way", ["raised OSError: disk went away", f"data.py:{data_line('data-half')}"]),
    ],
)
def test_a_failing_data_callable_is_a_usage_error_at_the_users_line(user_files, option, function, texts):
    (user_files / "data.py").write_text(USER_DATA, encoding="utf-8")
    # Calibration is read for a static scheme, evaluation data for any quantized one.
    precision = {
        "--check-inputs": [],
        "--calibration": ["--precision", "int8-static"],
        "--eval-data": ["--precision", "int8-dynamic"],
    }[option]
    result = invoke(
        "build",
        "--model",
        f"{user_files / 'nets.py'}:Mlp",
        "--input",
        "x=1x32",
        "--target",
        "android",
        "--out",
        user_files / "dist",
        *precision,
        option,
        f"{user_files / 'data.py'}:{function}",
    )
    assert_user_error(result, 2, *texts)
    assert not (user_files / "dist").exists()


@pytest.mark.parametrize(
    "option,precision", [("--check-inputs", []), ("--calibration", ["--precision", "int8-static"])]
)
def test_inf_or_nan_in_user_input_values_is_a_usage_error(user_files, option, precision):
    import numpy as np

    values = np.ones((4, 1, 32), dtype=np.float32)
    values[2, 0, 5] = np.nan
    np.savez(user_files / "bad.npz", x=values)
    result = invoke(
        "build",
        "--model",
        f"{user_files / 'nets.py'}:Mlp",
        "--input",
        "x=1x32",
        "--target",
        "android",
        "--out",
        user_files / "dist",
        *precision,
        option,
        user_files / "bad.npz",
    )
    assert_user_error(result, 2, "input 'x' has inf/NaN in 1 of 32 values")
