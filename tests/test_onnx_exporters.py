"""The two ONNX exporters on real models: quiet on failure, dynamic dimensions kept by the
torch.export-based one, both reasons when both fail, and a capture no converter changes."""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from edgepack.capture.ladder import capture
from edgepack.cli import app
from edgepack.errors import BuildError
from edgepack.formats import FORMATS
from edgepack.inputs import parse_input_spec, sample_inputs
from edgepack.load import LoadedModel
from edgepack.noise import quiet_converter, short_reason
from edgepack.pipeline import BuildRequest, build

from .conftest import write_fast_target
from .models import QRHead, make_small_linear, make_tiny_recurrent
from .test_formats import settings

MODELS = Path(__file__).parent / "models.py"
ONNX_17 = '[formats.onnx]\nprecision = "fp32"\nopset = 17\n'
COREML = '[formats.coreml]\nprecision = "fp32"\n'
# The iot target with the torch.export-based exporter: opset 18, standard ops only, plus the .ort file.
IOT_18 = '[formats.onnx]\nprecision = "fp32"\nopset = 18\noptimization = "basic"\nort_format = true\n'


def _captured(module: torch.nn.Module, *specs: str):
    inputs = [parse_input_spec(s) for s in specs]
    return capture(
        LoadedModel("m", module, inputs, {"kind": "test"}), [sample_inputs(inputs, module, s) for s in range(2)]
    )


def test_converter_output_is_captured_down_to_the_file_descriptors(capfd):
    """C++ code writes to fds 1 and 2 past sys.stdout; none of it may reach the real stdout/stderr."""
    with quiet_converter() as log:
        print("from python")
        os.write(1, b"from fd 1\n")
        os.write(2, b"from fd 2\n")
        ctypes.CDLL(None).printf(b"from C stdio\n")  # buffered in C, flushed by the capture
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    for text in ("from python", "from fd 1", "from fd 2", "from C stdio"):
        assert text in log.getvalue()


def test_exception_reasons_lose_colour_codes_and_extra_lines():
    exc = RuntimeError("Failed to export. \x1b[96mThis is step 1/3\x1b[0m of exporting.\nNext steps: ...")
    assert short_reason(exc) == "RuntimeError: Failed to export. This is step 1/3 of exporting."
    assert (
        short_reason(RuntimeError("x" * 500), 50).endswith("...")
        and len(short_reason(RuntimeError("x" * 500), 50)) == 50
    )


def test_transformer_at_opset_17_fails_quietly_with_the_opset_hint(tmp_path, capfd):
    """The TorchScript exporter dumps the whole IR graph from C++ when it fails: --json stays one document."""
    target = write_fast_target(tmp_path, "edge", ONNX_17)
    result = CliRunner().invoke(
        app,
        [
            "build",
            "--target",
            str(target),
            "--model",
            f"{MODELS}:make_torch_encoder_layer",
            "--input",
            "x=1x4x16",
            "--json",
            "--out",
            str(tmp_path / "dist"),
        ],
    )
    out, err = capfd.readouterr()
    assert "Torch IR graph" not in out + err + result.stdout
    report = json.loads(result.stdout)
    assert result.exit_code == 1 and report["ok"] is False
    problem = next(p for p in report["problems"] if p.startswith("onnx:"))
    assert "unknown rank" in problem
    assert "set opset = 18 in the target's [formats.onnx] to use the torch.export-based exporter" in problem
    assert len(problem) < 1500


def test_transformer_at_opset_18_builds_for_an_iot_target_with_the_ort_format(tmp_path):
    target = write_fast_target(tmp_path, "iot18", IOT_18)
    report = build(
        BuildRequest(
            targets=[str(target)],
            model=f"{MODELS}:make_torch_encoder_layer",
            inputs=[parse_input_spec("x=1x4x16")],
            out_dir=tmp_path / "dist",
        )
    )[0]
    assert report.ok, report.problems
    onnx_report = report.artifacts[0]
    assert onnx_report.notes[0] == "exporter: torch.export-based (dynamo)"
    assert onnx_report.requirements["ort_format"]["path"].endswith(".ort")


def test_dynamic_dimension_survives_the_torch_export_based_exporter(tmp_path):
    module = make_tiny_recurrent()
    captured = _captured(module, "x=1xT=5x6")
    assert captured.strategy == "trace"
    emitted = FORMATS["onnx"].emit(captured, settings("onnx", opset=18), tmp_path / "kws.onnx")
    assert emitted.notes[0] == "exporter: torch.export-based (dynamo)", emitted.notes
    dims = onnx.load(str(emitted.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == [1, "T", 6]
    session = ort.InferenceSession(str(emitted.path), providers=["CPUExecutionProvider"])
    for frames in (3, 11):
        x = torch.randn(1, frames, 6)
        with torch.no_grad():
            expected = module(x).numpy()
        np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected, atol=1e-5, rtol=1e-4)


def test_when_both_exporters_fail_the_error_gives_both_reasons_dynamo_first(tmp_path):
    with pytest.raises(BuildError) as failure:
        FORMATS["onnx"].emit(_captured(QRHead().eval(), "x=4x4"), settings("onnx", opset=18), tmp_path / "qr.onnx")
    message = failure.value.message
    assert "\x1b" not in message
    dynamo, torchscript = message.split("torch.export-based: ")[1].split("; TorchScript-based: ")
    assert "linalg_qr" in dynamo and "linalg_qr" in torchscript
    assert "--allow-partial" in failure.value.hint


@pytest.mark.parametrize(
    "name, options", [("onnx", {"opset": 17}), ("onnx", {"opset": 18}), ("torchscript_lite", {}), ("coreml", {})]
)
def test_no_format_changes_the_shared_capture(name, options, tmp_path):
    captured = _captured(make_small_linear(), "x=1x6")
    before = str(captured.scripted.graph)
    FORMATS[name].emit(captured, settings(name, **options), tmp_path / f"m{FORMATS[name].suffix}")
    assert str(captured.scripted.graph) == before


def test_onnx_bytes_do_not_depend_on_the_other_targets_built(tmp_path):
    """Core ML conversion first (an ios-like target) once changed what the iot ONNX export saw."""
    apple, edge = write_fast_target(tmp_path, "apple", COREML), write_fast_target(tmp_path, "edge", ONNX_17)
    built = {}
    for label, targets in (("together", [apple, edge]), ("alone", [edge])):
        reports = build(
            BuildRequest(
                targets=[str(t) for t in targets],
                model=f"{MODELS}:make_small_linear",
                inputs=[parse_input_spec("x=1x6")],
                out_dir=tmp_path / label,
            )
        )
        assert all(r.ok for r in reports), [r.problems for r in reports]
        built[label] = next((tmp_path / label).rglob("edge/*.onnx")).read_bytes()
    assert built["together"] == built["alone"]
