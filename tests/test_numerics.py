"""Non-finite numbers (inf/NaN) handled honestly: never within tolerance or budget, never written into JSON,
and the Core ML executor on flexible shapes evaluates or says it cannot, never crashes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgepack import jsonio
from edgepack.capture.ladder import capture
from edgepack.cli import app
from edgepack.compare import compare_outputs, merge
from edgepack.formats import FORMATS
from edgepack.formats.coreml import executor as coreml_executor
from edgepack.formats.coreml.executor import UnsupportedOp, coremltools_module, run_package
from edgepack.inputs import InputSpec, sample_inputs
from edgepack.load import LoadedModel
from edgepack.noise import quiet_converter
from edgepack.quantize.accuracy import EvalSet, budget_misses, measure
from edgepack.smoke import FAILED, smoke_test
from edgepack.targets import AccuracyBudget, Budgets, FormatSettings, Tolerance

from .conftest import write_fast_target
from .models import SeqFeatures, make_overflow

MODELS = Path(__file__).parent / "models.py"


def _strict_json(text: str):
    """json.loads that fails on NaN, Infinity and -Infinity (which JavaScript's JSON.parse rejects)."""

    def refuse(constant: str):
        raise AssertionError(f"non-finite {constant} in JSON")

    return json.loads(text, parse_constant=refuse)


# --- comparison and accuracy figures ------------------------------------------------------------------


def test_inf_or_nan_where_eager_is_finite_is_never_within_tolerance():
    expected = [np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)]
    bad = compare_outputs(
        [np.array([[1.0, np.inf, np.nan, 4.0]], np.float32)], expected, 1e3, 1e3, -1.0, "golden 0", ["y"]
    )
    assert not bad.ok and "'y' has inf/NaN in 2 of 4 values where eager's are finite" in bad.reason
    assert bad.max_abs_err == math.inf and math.isnan(bad.cosine) and bad.non_finite == 2
    good = compare_outputs([expected[0] + 1e-6], expected, 1e-4, 1e-4, 0.999, "golden 1", ["y"])
    merged = merge([good, bad])  # the finite sample's figures must not stand for the whole artifact
    assert not merged.ok and merged.max_abs_err == math.inf and math.isnan(merged.cosine)
    assert _strict_json(jsonio.dumps(merged.to_json()))["max_abs_err"] is None


def test_inf_and_nan_where_eager_has_the_same_are_equal():
    expected = np.array([1.0, np.inf, np.nan, -np.inf])
    same = compare_outputs([expected.copy()], [expected], 1e-6, 0.0, 0.9999)
    assert same.ok and same.max_abs_err == 0.0 and same.cosine == 1.0, same.reason
    swapped = compare_outputs([np.array([1.0, np.nan, np.inf, -np.inf])], [expected], 1e3, 1e3, -1.0)
    assert not swapped.ok and "where eager's differ" in swapped.reason
    finite = compare_outputs([np.array([1.0, 5.0, 6.0, -np.inf])], [expected], 1e3, 1e3, -1.0)
    assert not finite.ok and "is finite in 2 of 4 values where eager's are inf/NaN" in finite.reason


def test_accuracy_with_inf_misses_every_budget_even_an_empty_one():
    expected = [[np.array([[0.5, 0.25]], np.float32)] for _ in range(3)]
    data = EvalSet([{"x": torch.zeros(1, 2)} for _ in range(3)], expected, "three samples")
    accuracy = measure(lambda arrays: [np.array([[np.inf, 0.25]], np.float32)], data, ["x"])
    assert accuracy.non_finite == 3 and accuracy.values == 6 and accuracy.max_abs_err == math.inf
    misses = budget_misses(accuracy, AccuracyBudget(None, None, None, None))
    assert misses == ["output has inf/NaN in 3 of 6 values where eager's are finite"]
    as_json = _strict_json(jsonio.dumps(accuracy.to_json()))
    assert as_json["cosine"] is None and as_json["max_abs_err"] is None and as_json["non_finite_values"] == 3
    assert "inf/NaN in 3 of 6" in accuracy.summary()


def test_json_writer_refuses_non_finite_numbers_and_says_where():
    with pytest.raises(ValueError, match=r"\$\.artifacts\[0\]\.cosine = nan"):
        jsonio.dumps({"artifacts": [{"format": "coreml", "cosine": float("nan")}]})
    with pytest.raises(ValueError, match=r"\$\.p50 = inf"):
        jsonio.dumps({"p50": np.float64("inf")})
    assert jsonio.finite_or_none(float("-inf")) is None and jsonio.finite_or_none(0.5) == 0.5


# --- an fp16 program that overflows ---------------------------------------------------------------


@pytest.fixture(scope="module")
def overflow_captured():
    module, specs = make_overflow(), [InputSpec("x", (1, 16))]
    loaded = LoadedModel("overflow", module, specs, {"kind": "test"})
    return capture(loaded, [sample_inputs(specs, module, seed) for seed in range(4)])


def test_smoke_test_of_an_overflowing_fp16_program_fails_with_inf_figures(overflow_captured, tmp_path):
    """The fp16 Core ML program run by the reference executor gives inf: the smoke test says so and its
    figures are inf/nan (shown as such), null in JSON."""
    fmt = FORMATS["coreml"]
    settings = FormatSettings("coreml", "fp16", Tolerance(1e-2, 1e-2, 0.999), Budgets())
    emitted = fmt.emit(overflow_captured, settings, tmp_path / "overflow.mlpackage")
    result = smoke_test(fmt, emitted, overflow_captured, settings, threads=1)
    assert result.status == FAILED and "'output' has inf/NaN in" in result.reason, result.reason
    assert result.max_abs_err == math.inf and math.isnan(result.cosine)
    as_json = _strict_json(jsonio.dumps(result.to_json()))
    assert as_json["max_abs_err"] is None and as_json["cosine"] is None


def test_fp16_overflow_steps_down_to_fp32_and_every_json_stays_strict(tmp_path):
    """`edgepack build --json` with Core ML asked in fp16: the ladder sees inf, ships fp32 with a note
    naming the inf/NaN, the build passes, and stdout, report.json, manifest.json and golden/index.json
    are strict JSON (the fp16 attempt's figures are null)."""
    target = write_fast_target(tmp_path, "fp16", '[formats.coreml]\nprecision = "fp16"\n')
    result = CliRunner().invoke(
        app,
        [
            "build",
            "-t",
            str(target),
            "--model",
            f"{MODELS}:make_overflow",
            "-i",
            "x=1x16",
            "--out",
            str(tmp_path / "dist"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    report = _strict_json(result.stdout)
    coreml = report["artifacts"][0]
    assert (coreml["precision_requested"], coreml["precision"], coreml["smoke"]["status"]) == ("fp16", "fp32", "passed")
    assert any("fp16 missed the accuracy budget (output has inf/NaN in" in note for note in coreml["notes"]), coreml[
        "notes"
    ]
    first = coreml["quantization"]["attempts"][0]
    assert not first["ok"] and "inf/NaN" in first["reason"]
    assert first["accuracy"]["cosine"] is None and first["accuracy"]["non_finite_values"] > 0
    bundle = Path(report["bundle_dir"])
    for name in ("report.json", "manifest.json", "golden/index.json"):
        _strict_json((bundle / name).read_text(encoding="utf-8"))


# --- the Core ML executor on a flexible sequence length -----------------------------------------------


@pytest.fixture(scope="module")
def flexible_seq_package(tmp_path_factory) -> Path:
    ct = coremltools_module()
    with quiet_converter():
        traced = torch.jit.trace(SeqFeatures().eval(), torch.randn(1, 16))
        shape = ct.Shape([1, ct.RangeDim(2, 64, default=16)])
        model = ct.convert(
            traced,
            inputs=[ct.TensorType(name="x", shape=shape)],
            outputs=[ct.TensorType(name="y")],
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS16,
            compute_precision=ct.precision.FLOAT32,
        )
    path = tmp_path_factory.mktemp("flexible") / "seq.mlpackage"
    model.save(str(path))
    return path


def test_expand_dims_on_a_flexible_length_runs_at_every_length(flexible_seq_package):
    model = SeqFeatures().eval()
    for length in (3, 16, 40):
        x = torch.randn(1, length)
        got = run_package(flexible_seq_package, {"x": x.numpy()})["y"]
        with torch.no_grad():
            expected = model(x).numpy()
        assert got.shape == (1, length, 4) and np.allclose(got, expected, atol=1e-6), length


def test_value_inference_that_needs_a_flexible_shape_is_unsupported_not_a_crash(flexible_seq_package, monkeypatch):
    """Without edgepack's own expand_dims, coremltools' value_inference meets the Symbol: the executor must
    name the op (UnsupportedOp, so the smoke test says 'skipped'), not raise a TypeError."""
    monkeypatch.delitem(coreml_executor._IMPLS, "expand_dims")
    with pytest.raises(UnsupportedOp, match="expand_dims.*flexible"):
        run_package(flexible_seq_package, {"x": np.zeros((1, 5), np.float32)})


def test_json_stdout_is_shielded_from_c_level_prints():
    """What C/C++ code prints to stdout while `--json` works (torch's ONNX exporter logs whole graphs there)
    goes to stderr, so that stdout holds the JSON document alone."""
    code = (
        "import ctypes, json\nfrom edgepack.noise import stdout_to_stderr\n"
        "with stdout_to_stderr():\n    ctypes.CDLL(None).printf(b'graph from C++\\n')\n    print('from Python')\n"
        "print(json.dumps({'ok': True}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent
    )
    assert done.returncode == 0, done.stderr
    assert _strict_json(done.stdout) == {"ok": True}
    assert "graph from C++" in done.stderr and "from Python" in done.stderr
