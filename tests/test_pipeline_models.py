"""End to end on user-shaped models: dict, tuple and dataclass outputs, keyword-only and integer inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgepack.inputs import parse_input_spec
from edgepack.pipeline import BuildRequest, build, diagnose

from .conftest import write_fast_target

MODELS = Path(__file__).parent / "models.py"


BUILTIN_TARGETS = ["ios", "android", "iot"]


def _build_all(targets: list[str], out: Path, model: str, *inputs: str):
    request = BuildRequest(
        targets=targets, model=f"{MODELS}:{model}", inputs=[parse_input_spec(i) for i in inputs], out_dir=out
    )
    return {r.target: r for r in build(request)}


def _build(fast_target: Path, out: Path, model: str, *inputs: str):
    return _build_all([str(fast_target)], out, model, *inputs)["fast"]


@pytest.fixture(scope="module")
def encoder_reports(tmp_path_factory):
    return _build_all(BUILTIN_TARGETS, tmp_path_factory.mktemp("enc"), "make_encoder", "ids=1x16:int64")


@pytest.fixture(scope="module")
def two_input_reports(tmp_path_factory):
    return _build_all(BUILTIN_TARGETS, tmp_path_factory.mktemp("two"), "make_two_input", "image=1x3x16x16", "meta=1x4")


@pytest.fixture(scope="module")
def encoder_report(encoder_reports):
    return encoder_reports["android"]


@pytest.fixture(scope="module")
def two_input_report(two_input_reports):
    return two_input_reports["android"]


@pytest.mark.parametrize("target", BUILTIN_TARGETS)
def test_both_models_build_for_every_builtin_target(encoder_reports, two_input_reports, target):
    for reports in (encoder_reports, two_input_reports):
        report = reports[target]
        assert report.ok, report.problems
        for artifact in report.artifacts:
            assert artifact.smoke.status == "passed", artifact.smoke.reason


def test_attention_encoder_with_dict_outputs(encoder_report):
    manifest = json.loads((Path(encoder_report.bundle_dir) / "manifest.json").read_text())
    assert [o["name"] for o in manifest["outputs"]] == ["logits", "pooled"]
    assert manifest["outputs"][1]["shape"] == [1, 32]


def test_integer_inputs_stay_inside_the_embedding_table(encoder_report):
    golden = np.load(Path(encoder_report.bundle_dir) / "golden/inputs.npz")
    ids = golden["ids"]
    assert ids.dtype == np.int64 and ids.shape == (4, 1, 16)
    assert ids.min() >= 0 and ids.max() < 50 and len(np.unique(ids)) > 10


def test_onnx_artifact_keeps_the_output_names(encoder_report):
    onnx_path = Path(encoder_report.bundle_dir) / next(a.path for a in encoder_report.artifacts if a.format == "onnx")
    session = ort.InferenceSession(str(onnx_path))
    assert [o.name for o in session.get_outputs()] == ["logits", "pooled"]
    assert session.get_inputs()[0].type == "tensor(int64)"


def test_two_inputs_with_a_keyword_only_one(two_input_report):
    assert two_input_report.ok, two_input_report.problems
    manifest = json.loads((Path(two_input_report.bundle_dir) / "manifest.json").read_text())
    assert [i["name"] for i in manifest["inputs"]] == ["image", "meta"]
    assert [o["name"] for o in manifest["outputs"]] == ["output_0", "output_1"]
    lite = next(a for a in two_input_report.artifacts if a.format == "torchscript_lite")
    assert any("aten::batch_norm: 1 -> 0" in note for note in lite.notes), lite.notes


def test_dataclass_outputs_are_named_by_field(fast_target, tmp_path):
    report = _build(fast_target, tmp_path, "DataclassOutputNet", "x=1x1x8x8")
    assert report.ok, report.problems
    manifest = json.loads((Path(report.bundle_dir) / "manifest.json").read_text())
    assert [o["name"] for o in manifest["outputs"]] == ["mask", "score"]  # aux=None is skipped


def test_a_torch_transformer_with_a_dynamic_length_is_not_mistaken_for_an_unrolled_loop():
    """The unrolled-loop check traces again at another length; that trace must also take the plain ops,
    or the fused fast path's few nodes against the plain ops' many look like a loop over the length."""
    result = diagnose(
        BuildRequest(
            targets=["android"], model=f"{MODELS}:make_torch_encoder_layer", inputs=[parse_input_spec("x=1xSEQ=5x16")]
        )
    )
    assert result["ok"] and result["strategy"] == "trace"
    assert not [h for h in result["hazards"] if h["kind"] == "unrolled_loop"]


def test_a_torch_transformer_layer_in_dynamic_int8_keeps_attention_projections_float(tmp_path):
    """MultiheadAttention reads out_proj.weight as a tensor: dynamic int8 leaves that Linear alone, as torch does,
    instead of failing the first attempt and finding it by sensitivity."""
    target = write_fast_target(tmp_path, "dyn", formats='[formats.torchscript_lite]\nprecision = "int8-dynamic"\n')
    report = build(
        BuildRequest(
            targets=[str(target)],
            model=f"{MODELS}:make_torch_encoder_layer",
            inputs=[parse_input_spec("x=1x5x16")],
            out_dir=tmp_path / "dist",
        )
    )[0]
    [lite] = report.artifacts
    assert report.ok and lite.precision == "int8-dynamic"
    assert [(a["ok"], a["float_layers"]) for a in lite.quantization["attempts"]] == [(True, [])]
    assert any("projections stay float" in note for note in lite.notes)


def test_a_dynamic_size_eager_itself_rejects_is_reported_as_unchecked():
    """SEQ=12 (double the example) is past the model's 8 learned positions: the capture cannot be checked
    there, and the report says so instead of dropping the check in silence."""
    result = diagnose(
        BuildRequest(targets=["android"], model=f"{MODELS}:BoundedLength", inputs=[parse_input_spec("x=1xSEQ=6x4")])
    )
    assert result["ok"]
    [unchecked] = result["unchecked_sizes"]
    assert unchecked["size"] == "SEQ=12" and "size of tensor" in unchecked["reason"]


def test_torch_transformer_layers_are_traced_without_their_fused_fast_path(fast_target, tmp_path):
    """Traced on the fast path, nn.TransformerEncoderLayer becomes one fused op that Core ML cannot
    convert; edgepack traces the plain ops, and torch's own shape-check warnings do not push the
    capture off the trace."""
    report = _build(fast_target, tmp_path, "make_torch_encoder_layer", "x=1x5x16")
    assert report.ok, report.problems
    assert report.capture["strategy"] == "trace"
    assert report.capture["hazards"] and all(h["in_library"] for h in report.capture["hazards"])
    assert all(h["fix"].startswith("Nothing to change in your code") for h in report.capture["hazards"])
    assert {a.format: a.smoke.status for a in report.artifacts} == {
        "torchscript_lite": "passed",
        "coreml": "passed",
        "onnx": "passed",
    }
    [lite] = [a for a in report.artifacts if a.format == "torchscript_lite"]
    assert not any("transformer_encoder_layer_fwd" in op for op in lite.requirements["operators"])
