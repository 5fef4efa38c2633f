"""Tracing you can trust: the seed articles' models and more, each asserting the diagnosis and the outcome."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.jit.mobile as mobile
from typer.testing import CliRunner

from edgepack.bundle.manifest import read_manifest
from edgepack.capture.ladder import CaptureError
from edgepack.cli import app
from edgepack.inputs import parse_input_spec
from edgepack.pipeline import BuildRequest, build

from . import seed_models

SEEDS = Path(seed_models.__file__)


def line_of(text: str) -> int:
    return next(i for i, source in enumerate(SEEDS.read_text().splitlines(), 1) if text in source)


def android(tmp_path: Path, model: str, spec: str, **options):
    request = BuildRequest(
        targets=["android"], model=f"{SEEDS}:{model}", inputs=[parse_input_spec(spec)], out_dir=tmp_path, **options
    )
    return build(request)[0]


def run_bundle(report, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The shipped .ptl and .onnx on an input of our choosing."""
    bundle = Path(report.bundle_dir)
    paths = {a.format: bundle / a.path for a in report.artifacts if a.path}
    (lite,) = mobile._load_for_lite_interpreter(str(paths["torchscript_lite"]))(x)
    (onnx_out,) = ort.InferenceSession(str(paths["onnx"])).run(None, {"x": x.numpy()})
    return lite.numpy(), onnx_out


def test_seed_control_flow_model_is_scripted_and_both_branches_ship(tmp_path):
    report = android(tmp_path, "ControlFlowModel", "x=1x10")
    assert report.ok, report.problems
    assert report.capture["strategy"] == "script"
    assert [(h["kind"], h["line"]) for h in report.capture["hazards"]] == [
        ("python_bool", line_of("if x.mean() > 0.1"))
    ]
    model = seed_models.ControlFlowModel().eval()
    for x in (torch.randn(1, 10) * 2, torch.randn(1, 10) * -2, torch.full((1, 10), 3.0), torch.full((1, 10), -3.0)):
        for got in run_bundle(report, x):
            np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5)
    # ExecuTorch is built only from a torch.export capture, which a Python branch on data has none of: left out, said.
    assert {a.format: a.smoke.status for a in report.artifacts} == {
        "executorch": "skipped",
        "torchscript_lite": "passed",
        "onnx": "passed",
    }
    assert report.artifacts[0].path is None and "torch.export" in report.artifacts[0].smoke.reason


def test_seed_conditional_op_trace_alone_fails_naming_the_line(tmp_path):
    with pytest.raises(CaptureError) as failure:
        android(tmp_path, "ConditionalOp", "x=2x3", capture_mode="trace")
    assert f"seed_models.py:{line_of('if x.sum() > self.threshold')}: python_bool" in failure.value.message
    assert "trace: failed: diverges on" in failure.value.message


def test_seed_conditional_op_auto_ships_both_branches(tmp_path):
    report = android(tmp_path, "ConditionalOp", "x=2x3")
    assert report.ok and report.capture["strategy"] == "script"
    for x in (torch.ones(2, 3), -torch.ones(2, 3)):
        for got in run_bundle(report, x):
            np.testing.assert_allclose(got, seed_models.ConditionalOp()(x).numpy())


def test_seed_dynamic_loop_ships_the_lite_model_and_says_why_onnx_cannot(tmp_path):
    with pytest.raises(AssertionError):  # without --allow-partial the incomplete build is a failure
        assert android(tmp_path / "strict", "DynamicLoopModel", "x=1x10").ok
    report = android(tmp_path, "DynamicLoopModel", "x=1x10", allow_partial=True)
    assert report.ok and report.capture["strategy"] == "script"
    assert report.capture["hazards"][0]["kind"] == "python_number"
    pte, lite, onnx_artifact = report.artifacts
    assert pte.path is None and pte.smoke.status == "skipped"  # no torch.export capture either
    assert lite.smoke.status == "passed" and lite.path
    assert onnx_artifact.path is None and onnx_artifact.smoke.status == "failed"
    assert "excluded from the bundle" in onnx_artifact.notes[-1]
    recorded = read_manifest(Path(report.bundle_dir) / "manifest.json")["build"]  # what ships says what it lacks
    assert recorded["ok"] is True and [e["format"] for e in recorded["left_out"]] == ["executorch", "onnx"]
    model = seed_models.DynamicLoopModel().eval()
    runtime = mobile._load_for_lite_interpreter(str(Path(report.bundle_dir) / lite.path))
    for scale in (0.1, 1.0, 3.0):  # 0, ~3 and ~9 iterations
        x = torch.ones(1, 10) * scale
        np.testing.assert_allclose(runtime(x)[0].numpy(), model(x).detach().numpy(), atol=1e-5)


def test_seed_list_appending_with_a_fixed_size_keeps_the_exact_trace(tmp_path):
    report = android(tmp_path, "ListAppendingModel", "x=1x3x5")
    assert report.ok and report.capture["strategy"] == "trace" and report.capture["hazards"] == []


def test_seed_list_appending_over_a_dynamic_dimension_is_detected_and_scripted(tmp_path):
    report = android(tmp_path, "ListAppendingModel", "x=1xN=3x5")
    assert report.ok, report.problems
    hazard = report.capture["hazards"][0]
    assert (hazard["kind"], hazard["line"]) == ("unrolled_loop", line_of("out = self.linear(x[:, i, :])"))
    assert report.capture["strategy"] == "script"
    model = seed_models.ListAppendingModel().eval()
    x = torch.randn(1, 7, 5)  # a length never traced nor checked
    for got in run_bundle(report, x):
        np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5)


def test_seed_stateful_counter_fails_naming_the_assignment(tmp_path):
    with pytest.raises(CaptureError) as failure:
        android(tmp_path, "StatefulModel", "x=1x5")
    assert f"seed_models.py:{line_of('self.counter += 1')}: python_state" in failure.value.message
    assert "stateless" in failure.value.hint
    assert not any(tmp_path.rglob("*.ptl"))


def test_hazard_in_a_submodule_of_an_unscriptable_model_gives_a_hybrid(tmp_path):
    report = android(tmp_path, "UnscriptableRoot", "x=1x6")
    assert report.ok
    attempts = {a["strategy"]: a for a in report.capture["attempts"]}
    assert report.capture["strategy"] == "hybrid" and attempts["hybrid"]["scripted_submodules"] == ["gate"]
    assert not attempts["script"]["ok"] and "numpy" in attempts["script"]["error"].lower()
    model = seed_models.UnscriptableRoot().eval()
    for x in (torch.ones(1, 6), -torch.ones(1, 6)):
        for got in run_bundle(report, x):
            np.testing.assert_allclose(got, model(x).detach().numpy(), atol=1e-5)


def test_random_ops_at_inference_fail_naming_the_line(tmp_path):
    with pytest.raises(CaptureError, match=f"seed_models.py:{line_of('torch.randn_like')}: nondeterministic"):
        android(tmp_path, "NoisyModel", "x=1x4")


def test_unfixable_control_flow_fails_with_every_attempt(tmp_path):
    with pytest.raises(CaptureError) as failure:
        android(tmp_path, "UnscriptableControlFlow", "x=1x4")
    message = failure.value.message
    assert f"seed_models.py:{line_of('if float(x.sum())')}: python_number" in message
    assert "trace: failed: diverges on" in message and "script: failed" in message
    assert "hybrid: failed" in message


def test_user_check_inputs_catch_what_generated_ones_miss(tmp_path):
    """Generated inputs never reach x.sum() > 100; a user's check input at 50 per element does."""

    def trace_only(**options):
        request = BuildRequest(
            targets=["android"],
            model=f"{SEEDS}:HighThresholdOp",
            inputs=[parse_input_spec("x=2x3")],
            out_dir=tmp_path,
            capture_mode="trace",
            **options,
        )
        return build(request)[0]

    assert trace_only().capture["strategy"] == "trace"  # nothing generated shows the trace is wrong
    checks = tmp_path / "checks.npz"
    np.savez(checks, x=np.full((1, 2, 3), 50.0, dtype=np.float32))
    with pytest.raises(CaptureError, match="diverges on user check input 0"):
        trace_only(check_inputs=str(checks))


def test_doctor_explains_each_hazard_with_a_fix():
    result = CliRunner().invoke(app, ["doctor", "--model", f"{SEEDS}:ControlFlowModel", "-i", "x=1x10", "--json"])
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["ok"] and report["strategy"] == "script"
    (hazard,) = report["hazards"]
    assert hazard["line"] == line_of("if x.mean() > 0.1") and "torch.where" in hazard["fix"] and hazard["why"]


def test_doctor_text_shows_the_source_line_and_exits_1_when_nothing_works():
    result = CliRunner().invoke(app, ["doctor", "--model", f"{SEEDS}:StatefulModel", "-i", "x=1x5"])
    assert result.exit_code == 1
    assert (
        "self.counter += 1" in result.stdout and "fix:" in result.stdout and "no trustworthy capture" in result.stdout
    )
