"""The checked torch.export capture: tried on every model, checked on the trace's own check inputs,
each failure diagnosed at the user's line with a fix, consumed by ONNX (and Core ML when asked), and
never a reason for a build to fail while the TorchScript capture can serve."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgepack.bundle.manifest import read_manifest
from edgepack.capture.export import STRATEGIES
from edgepack.capture.ladder import CaptureError, capture
from edgepack.cli import app
from edgepack.errors import UsageError
from edgepack.formats import FORMATS
from edgepack.inputs import parse_input_spec, sample_inputs
from edgepack.load import LoadedModel
from edgepack.pipeline import BuildRequest, build

from . import models as test_models
from . import seed_models
from .conftest import write_fast_target
from .test_formats import settings

SEEDS = Path(seed_models.__file__)
MODELS = Path(test_models.__file__)
ONNX_18 = '[formats.onnx]\nprecision = "fp32"\nopset = 18\n'
LITE_AND_ONNX = '[formats.torchscript_lite]\nprecision = "fp32"\n' + ONNX_18
COREML_EXPORT = '[formats.coreml]\nprecision = "fp32"\ncapture = "export"\n'


def line_in(path: Path, text: str) -> int:
    return next(i for i, source in enumerate(path.read_text().splitlines(), 1) if text in source)


def export_of(module: nn.Module, *specs: str):
    """The export record of a capture, also when the TorchScript ladder finds no trustworthy capture."""
    inputs = [parse_input_spec(s) for s in specs]
    loaded = LoadedModel("m", module.eval(), inputs, {"kind": "test"})
    try:
        return capture(loaded, [sample_inputs(inputs, module, seed) for seed in range(4)]).export
    except CaptureError as failure:
        return failure.export


# The seed articles' models and the tests' hazard models: (model, input, kind, the line torch.export trips on).
FAILURES = [
    (seed_models.ControlFlowModel, "x=1x10", "data_dependent_branch", SEEDS, ["if x.mean() > 0.1"]),
    (
        seed_models.DynamicLoopModel,
        "x=1x10",
        "guard_on_data",
        SEEDS,
        ["num_iterations = int(torch.norm(x))", "for _ in range(num_iterations)"],
    ),
    (seed_models.ListAppendingModel, "x=1xN=3x5", "dim_specialized", SEEDS, ["for i in range(x.shape[1])"]),
    (seed_models.StatefulModel, "x=1x5", "module_state", SEEDS, ["self.counter += 1"]),
    (seed_models.ConditionalOp, "x=2x3", "data_dependent_branch", SEEDS, ["if x.sum() > self.threshold"]),
    (seed_models.Gate, "x=1x6", "data_dependent_branch", SEEDS, ["if x.mean() > 0:"]),
    (seed_models.UnscriptableRoot, "x=1x6", "data_dependent_branch", SEEDS, ["if x.mean() > 0:"]),
    (seed_models.NoisyModel, "x=1x4", "nondeterministic", SEEDS, ["torch.randn_like"]),
    (seed_models.UnscriptableControlFlow, "x=1x4", "guard_on_data", SEEDS, ["if float(x.sum())"]),
    (test_models.make_device_patterns, "x=3x4", "scripted_submodule", MODELS, ["return self.branch(h), picked"]),
    (test_models.BoundedLength, "x=1xT=4x4", "dim_range", MODELS, [test_models.BoundedLength.forward]),
]


@pytest.mark.parametrize("make, spec, kind, source, lines", FAILURES, ids=[f[0].__name__ for f in FAILURES])
def test_every_export_failure_names_the_users_line_and_a_fix(make, spec, kind, source, lines):
    export = export_of(make(), spec)
    assert export is not None and not export.ok and export.program is None
    assert [a.strategy for a in export.attempts] == list(STRATEGIES)  # strict, then non-strict: both tried
    # A function: its definition line (torch names no line for a range of sizes it cannot promise).
    wanted = {line_in(source, line) if isinstance(line, str) else inspect.getsourcelines(line)[1] for line in lines}
    for attempt in export.attempts:
        d = attempt.diagnosis
        assert not attempt.ok and d is not None, attempt
        assert (d.kind, Path(d.file).resolve(), d.line in wanted) == (kind, source.resolve(), True), (d, wanted)
        assert d.fix and d.why and "\x1b" not in d.message and len(d.message) < 300
    assert export.reason.startswith(f"export-strict: {kind} at {export.attempts[0].diagnosis.file}:")


def test_fixes_name_the_idiomatic_remedy():
    by_kind = {make.__name__: export_of(make(), spec).attempts[0].diagnosis.fix for make, spec, *_ in FAILURES}
    assert "torch.cond" in by_kind["ControlFlowModel"]
    assert "torch._check" in by_kind["DynamicLoopModel"]
    assert "Dim" in by_kind["ListAppendingModel"] and "Dim" in by_kind["BoundedLength"]
    assert "Return the state instead of mutating it" in by_kind["StatefulModel"]


def test_list_appending_with_a_fixed_size_exports_and_matches():
    export = export_of(seed_models.ListAppendingModel(), "x=1x3x5")
    assert export.ok and export.strategy == "export-strict" and export.checked_inputs == 6


def test_an_export_that_differs_from_eager_is_rejected_not_shipped(tmp_path):
    export = export_of(test_models.ExportOnlyBranch(), "x=2x4")
    assert not export.ok and all(a.diagnosis.kind == "diverges" and a.divergence for a in export.attempts)
    target = write_fast_target(tmp_path, "edge18", ONNX_18)
    report = build(
        BuildRequest(
            targets=[str(target)],
            model=f"{MODELS}:ExportOnlyBranch",
            inputs=[parse_input_spec("x=2x4")],
            out_dir=tmp_path / "dist",
        )
    )[0]
    assert report.ok, report.problems
    [artifact] = report.artifacts
    assert artifact.capture_consumed == "torchscript"
    assert any("no checked torch.export capture (export-strict: diverges" in note for note in artifact.notes)


def test_demo_exports_and_its_onnx_is_the_checked_program(demo_reports):
    for report in demo_reports.values():
        export = report.capture["export"]
        assert export["ok"] and export["strategy"] == "export-strict", export
        assert export["checked_inputs"] == report.capture["checked_inputs"] - 1  # the traced sample is the example
        consumed = {a.format: a.capture_consumed for a in report.artifacts}
        manifest = read_manifest(Path(report.bundle_dir) / "manifest.json")
        assert {a["format"]: a["capture_consumed"] for a in manifest["artifacts"]} == consumed
        assert manifest["capture"]["export"]["strategy"] == "export-strict"
        assert json.loads(json.dumps(report.to_json()))["artifacts"][0]["capture_consumed"] in ("export", "torchscript")
    assert {a.format: a.capture_consumed for a in demo_reports["android"].artifacts} == {
        "torchscript_lite": "torchscript",
        "onnx": "export",
        "executorch": "export",
    }
    assert {a.format: a.capture_consumed for a in demo_reports["ios"].artifacts} == {
        "coreml": "torchscript",
        "onnx": "export",
        "executorch": "export",
    }
    [iot_onnx] = [
        a for a in demo_reports["iot"].artifacts if a.format == "onnx"
    ]  # opset 17: the TorchScript exporter, said in the notes
    assert iot_onnx.capture_consumed == "torchscript" and "opset >= 18" in iot_onnx.notes[0]
    assert "torch.export capture: export-strict" in (Path(demo_reports["android"].bundle_dir) / "report.md").read_text()


def test_data_dependent_branch_ships_through_the_torchscript_capture_and_says_why(tmp_path):
    target = write_fast_target(tmp_path, "both", LITE_AND_ONNX)
    report = build(
        BuildRequest(
            targets=[str(target)],
            model=f"{SEEDS}:ControlFlowModel",
            inputs=[parse_input_spec("x=1x10")],
            out_dir=tmp_path / "dist",
        )
    )[0]
    assert report.ok, report.problems
    assert report.capture["strategy"] == "script" and not report.capture["export"]["ok"]
    onnx_artifact = next(a for a in report.artifacts if a.format == "onnx")
    assert onnx_artifact.capture_consumed == "torchscript" and onnx_artifact.smoke.status == "passed"
    line = line_in(SEEDS, "if x.mean() > 0.1")
    [note] = [n for n in onnx_artifact.notes if "no checked torch.export capture" in n]
    assert f"data_dependent_branch at {SEEDS}:{line}" in note
    manifest = read_manifest(Path(report.bundle_dir) / "manifest.json")
    assert {a["format"]: a["capture_consumed"] for a in manifest["artifacts"]} == {
        "torchscript_lite": "torchscript",
        "onnx": "torchscript",
    }
    diagnosis = manifest["capture"]["export"]["attempts"][0]["diagnosis"]
    assert diagnosis["line"] == line and "torch.cond" in diagnosis["fix"]
    markdown = (Path(report.bundle_dir) / "report.md").read_text()
    assert (
        f"data_dependent_branch at {SEEDS}:{line}" in markdown
        and "onnx was converted from the torchscript capture" in markdown
    )


def test_a_dynamic_dimension_is_exported_and_the_onnx_runs_at_two_sizes(tmp_path):
    """A recurrent net over T frames: torch.export needs T as a Dim (else it unrolls the LSTM to the example's 5)."""
    target = write_fast_target(tmp_path, "edge18", ONNX_18)
    report = build(
        BuildRequest(
            targets=[str(target)],
            model=f"{MODELS}:make_tiny_recurrent",
            inputs=[parse_input_spec("x=1xT=5x6")],
            out_dir=tmp_path / "dist",
        )
    )[0]
    assert report.ok, report.problems
    export = report.capture["export"]
    assert export["ok"] and export["dynamic_dims"] == {"T": {"min": 1, "max": None}}
    [artifact] = report.artifacts
    assert artifact.capture_consumed == "export" and artifact.notes[0] == "exporter: torch.export-based (dynamo)"
    path = Path(report.bundle_dir) / artifact.path
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == [1, "T", 6]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = test_models.make_tiny_recurrent()
    for frames in (3, 11):  # neither the example size nor a checked one (2, 10)
        x = torch.randn(1, frames, 6)
        with torch.no_grad():
            expected = model(x).numpy()
        np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected, atol=1e-5, rtol=1e-4)


def test_the_checked_program_runs_at_every_checked_size():
    export = export_of(test_models.make_encoder(), "ids=1xSEQ=8:int64")
    assert export.ok
    for size in (3, 8, 16):
        ids = torch.randint(0, 50, (1, size))
        with torch.no_grad():
            got = export.program.module()(ids)
            expected = test_models.make_encoder().eval()(ids)
        np.testing.assert_allclose(got[0].numpy(), expected["logits"].numpy(), atol=1e-5)


def test_core_ml_converts_the_checked_program_when_asked(tmp_path):
    captured = _small()
    emitted = FORMATS["coreml"].emit(captured, settings("coreml", capture="export"), tmp_path / "small.mlpackage")
    assert emitted.capture == "export" and any("checked torch.export capture" in n for n in emitted.notes)
    assert not (emitted.path / "executorch_debug_handle_mapping.json").exists()  # coremltools' ExecuTorch debug map
    default = FORMATS["coreml"].emit(captured, settings("coreml"), tmp_path / "default.mlpackage")
    assert default.capture == "torchscript"
    assert set(emitted.requirements["operators"]) == set(default.requirements["operators"])


def test_core_ml_falls_back_to_the_torchscript_capture_with_the_reason(tmp_path):
    target = write_fast_target(tmp_path, "apple", COREML_EXPORT)
    report = build(
        BuildRequest(
            targets=[str(target)], model=f"{SEEDS}:Gate", inputs=[parse_input_spec("x=1x6")], out_dir=tmp_path / "dist"
        )
    )[0]
    assert report.ok, report.problems
    [coreml] = report.artifacts
    assert coreml.capture_consumed == "torchscript"
    assert any(
        n.startswith(
            "converted the TorchScript capture (script): no checked torch.export capture "
            "(export-strict: data_dependent_branch at"
        )
        for n in coreml.notes
    ), coreml.notes


def test_core_ml_capture_option_is_checked():
    with pytest.raises(UsageError, match="Did you mean 'export'"):
        FORMATS["coreml"].validate(settings("coreml", capture="exprt"))


def test_doctor_reports_both_captures():
    result = CliRunner().invoke(app, ["doctor", "--model", f"{SEEDS}:ControlFlowModel", "-i", "x=1x10", "--json"])
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["strategy"] == "script" and report["export"]["ok"] is False
    assert [a["diagnosis"]["line"] for a in report["export"]["attempts"]] == [line_in(SEEDS, "if x.mean() > 0.1")] * 2
    failed = CliRunner().invoke(app, ["doctor", "--model", f"{SEEDS}:StatefulModel", "-i", "x=1x5"])
    assert failed.exit_code == 1
    assert "torch.export capture" in failed.stdout and "module_state" in failed.stdout
    assert "Return the state instead of mutating it" in failed.stdout


def _small():
    module = test_models.make_small_linear().eval()
    specs = [parse_input_spec("x=1x6")]
    return capture(
        LoadedModel("small", module, specs, {"kind": "test"}), [sample_inputs(specs, module, s) for s in range(4)]
    )


def test_a_declared_dimension_fixed_in_the_program_is_a_failed_attempt():
    """The guard behind the Dims: a program whose input placeholder holds a plain size for a declared axis."""
    from edgepack.capture.export import _specialized_dims

    spec = parse_input_spec("x=1xN=3x5")
    fixed = torch.export.export(seed_models.ListAppendingModel().eval(), (torch.randn(1, 3, 5),))
    assert _specialized_dims(fixed, [spec]) == "x[1] (N) fixed to 3"
    dynamic = torch.export.export(
        test_models.SeqFeatures().eval(), (torch.randn(1, 3),), dynamic_shapes=({1: torch.export.Dim("N")},)
    )
    assert _specialized_dims(dynamic, [parse_input_spec("x=1xN=3")]) == ""
