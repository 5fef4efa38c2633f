"""Quantization: real int8 artifacts measured against eager fp32, the accuracy budget, the fallback ladder,
and the calibration / evaluation data sources."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pytest
import torch

from edgepack.bundle.verify import verify_bundle
from edgepack.errors import UsageError
from edgepack.inputs import parse_input_spec
from edgepack.load import load_model
from edgepack.pipeline import BuildRequest, build
from edgepack.quantize.accuracy import Accuracy, EvalSet, budget_misses, measure
from edgepack.quantize.calibration import load_samples
from edgepack.targets import AccuracyBudget

from .conftest import write_fast_target

MODELS = Path(__file__).parent / "models.py"
# The int8 weights are a quarter of fp32 plus their scales and int32 biases; a 24k-parameter model adds a
# fixed container overhead (lite bytecode and code, QDQ nodes and names, the ML program) of 7-9 KB on top.
# The fp32 ONNX it is compared with is the graph-optimized one (folded constants).
DEMO_MAX_SIZE_RATIO = 0.37
DEMO_MAX_WEIGHT_RATIO = 0.28


@pytest.fixture(scope="session")
def int8_reports(tmp_path_factory) -> dict:
    """`edgepack build --target android --target ios --target iot --precision int8-static` on the demo
    model (.ptl, .mlpackage with int8 weights, .onnx; iot's ONNX also ships as .ort)."""
    out = tmp_path_factory.mktemp("int8")
    reports = build(BuildRequest(targets=["android", "ios", "iot"], precision="int8-static", out_dir=out))
    return {r.target: json.loads((Path(r.bundle_dir) / "report.json").read_text()) for r in reports}


@pytest.mark.parametrize("target", ["android", "ios", "iot"])
def test_int8_static_demo_bundle_keeps_top1_on_held_out_split(int8_reports, target):
    report = int8_reports[target]
    assert report["ok"], report["problems"]
    for artifact in report["artifacts"]:
        assert artifact["precision"] == artifact["precision_requested"] == "int8-static"
        assert artifact["accuracy"]["samples"] == 360  # the demo's held-out eval split
        assert artifact["accuracy"]["top1_agreement"] >= 0.99
        assert artifact["accuracy"]["cosine"] >= 0.99
        assert artifact["size_ratio"] <= DEMO_MAX_SIZE_RATIO
        assert artifact["size_bytes"] < artifact["size_before_bytes"]
        assert 0.24 <= artifact["weight_ratio"] <= DEMO_MAX_WEIGHT_RATIO  # int8: one byte for four, plus scales
        if artifact["format"] == "coreml" and platform.system() != "Darwin":
            assert artifact["latency_ms"] is None and "macOS" in artifact["latency_reason"]
        elif artifact["format"] == "executorch" and target == "ios":  # the Core ML delegate: Apple platforms only
            assert artifact["latency_ms"] is None and "Apple platforms" in artifact["latency_reason"]
        else:
            assert artifact["latency_before_ms"]["p50"] > 0 and artifact["latency_ratio"] > 0
        assert artifact["smoke"]["status"] == "passed" and "int8-static tolerance" in artifact["smoke"]["reason"]
        assert "held-out eval split" in artifact["quantization"]["eval_set"]
        if artifact["format"] != "coreml":  # Core ML int8 is weight-only: no calibration
            assert "calibration split" in artifact["quantization"]["calibration"]


def test_the_fp32_size_compared_is_the_fp32_artifact_as_it_ships(int8_reports, demo_reports):
    """The ratio's denominator is the fp32 artifact exactly as an fp32 build ships it (same file name,
    debug records stripped), not the ladder's work copy."""
    shipped_fp32 = {a.format: a for a in demo_reports["android"].artifacts}
    for artifact in int8_reports["android"]["artifacts"]:
        fp32 = shipped_fp32[artifact["format"]]
        assert fp32.precision == "fp32"
        # TorchScript numbers a class recompiled in one process (___torch_mangle_N): the two builds ran in
        # this process at different counts, so a .ptl's code may differ by a digit or two.
        assert abs(artifact["size_before_bytes"] - fp32.size_bytes) <= (
            8 if artifact["format"] == "torchscript_lite" else 0
        )
        assert artifact["weight_bytes_before"] == fp32.weight_bytes
        assert artifact["quantization"]["attempts"][-1]["size_bytes"] == artifact["size_bytes"]


def test_int8_artifacts_run_int8_kernels(int8_reports):
    operators = {a["format"]: a["requirements"]["operators"] for a in int8_reports["android"]["artifacts"]}
    assert any(op.startswith("quantized::conv2d") for op in operators["torchscript_lite"])
    assert "ai.onnx::QuantizeLinear" in operators["onnx"] and "ai.onnx::DequantizeLinear" in operators["onnx"]


def test_the_int8_onnx_declares_only_the_domains_it_uses(int8_reports):
    """onnxruntime's quantizer imports training and experimental domains no node uses; they are removed."""
    import onnx

    model = onnx.load(str(Path(int8_reports["android"]["bundle_dir"]) / "demo-digits.onnx"))
    assert {o.domain for o in model.opset_import} <= {node.domain for node in model.graph.node} | {""}
    assert not model.graph.value_info


def test_manifest_and_markdown_name_the_shipped_precision(int8_reports):
    bundle = Path(int8_reports["android"]["bundle_dir"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        assert entry["precision"] == "int8-static" and entry["accuracy"]["top1_agreement"] >= 0.99
        assert entry["tolerance"]["rtol"] == 0.1  # the quantized smoke tolerance, not fp32's 1e-4
    markdown = (bundle / "report.md").read_text()
    assert "## Precision" in markdown and "| onnx | int8-static | int8-static |" in markdown


def test_a_budget_int8_cannot_meet_walks_the_ladder_to_fp32(tmp_path):
    """SQNR >= 60 dB: int8 static (even with its costliest layers float) and dynamic miss it on the demo."""
    target = write_fast_target(
        tmp_path,
        "tight",
        formats='[formats.onnx]\nprecision = "int8-static"\nopset = 18\n[formats.onnx.accuracy]\nmin_sqnr_db = 60\n',
    )
    report = build(BuildRequest(targets=[str(target)], out_dir=tmp_path / "dist"))[0]
    onnx = report.artifacts[0]
    ladder = onnx.quantization
    tried = [(a["precision"], len(a["float_layers"])) for a in ladder["attempts"]]
    assert tried == [("int8-static", 0), ("int8-static", 1), ("int8-static", 2), ("int8-dynamic", 0), ("fp32", 0)]
    assert [a["verdict"] for a in ladder["attempts"]] == ["missed", "missed", "missed", "missed", "ok"]
    assert all("SQNR" in a["reason"] for a in ladder["attempts"][:4])
    assert ladder["fell_back"] and onnx.precision == "fp32" and report.ok
    # The sensitivity pass ranked the four quantizable layers; the first kept float is the costliest.
    assert len(ladder["sensitivity"]) == 4
    assert ladder["attempts"][1]["float_layers"] == [ladder["sensitivity"][0]["layer"]]
    assert any("int8-static missed the accuracy budget; shipped fp32" in note for note in onnx.notes)


def test_int8_static_says_that_recurrent_layers_stay_float(tmp_path):
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).normal(size=(8, 1, 5, 6)).astype(np.float32))
    target = write_fast_target(
        tmp_path,
        "rnn",
        formats='[formats.torchscript_lite]\nprecision = "int8-static"\n'
        '[formats.onnx]\nprecision = "int8-static"\nopset = 18\n',
    )
    report = build(
        BuildRequest(
            targets=[str(target)],
            model=f"{MODELS}:make_tiny_recurrent",
            inputs=[parse_input_spec("x=1x5x6")],
            calibration=str(tmp_path / "calib.npz"),
            out_dir=tmp_path / "dist",
        )
    )[0]
    notes = {a.format: " ".join(a.notes) for a in report.artifacts}
    assert "LSTM layers stay float in int8-static" in notes["torchscript_lite"]
    assert "LSTM nodes stay float in int8-static" in notes["onnx"]
    assert all("int8-dynamic quantizes them" in text for text in notes.values())


def test_user_model_per_format_precision_with_its_own_calibration_and_eval_data(tmp_path):
    """A Linear-only user model, precisions chosen per format by the target file, the user's .npz data."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(64, 1, 6)).astype(np.float32))  # samples of 1x6
    np.savez(tmp_path / "eval.npz", x=rng.normal(size=(100, 6)).astype(np.float32))  # rows of a batch
    target = write_fast_target(
        tmp_path,
        formats='[formats.torchscript_lite]\nprecision = "int8-static"\n'
        '[formats.onnx]\nprecision = "int8-dynamic"\nopset = 18\n',
    )
    report = build(
        BuildRequest(
            targets=[str(target)],
            model=f"{MODELS}:make_small_linear",
            inputs=[parse_input_spec("x=1x6")],
            calibration=str(tmp_path / "calib.npz"),
            eval_data=str(tmp_path / "eval.npz"),
            out_dir=tmp_path / "dist",
        )
    )[0]
    assert report.ok, report.problems
    assert {a.format: a.precision for a in report.artifacts} == {
        "torchscript_lite": "int8-static",
        "onnx": "int8-dynamic",
    }
    for artifact in report.artifacts:
        assert artifact.accuracy.samples == 100 and artifact.accuracy.cosine >= 0.99
        assert artifact.quantization["eval_set"] == f"100 samples from {tmp_path / 'eval.npz'}"
    assert report.artifacts[0].quantization["calibration"] == f"64 samples from {tmp_path / 'calib.npz'}"


def test_static_int8_without_calibration_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="needs calibration data") as caught:
        build(
            BuildRequest(
                targets=["iot"],
                model=f"{MODELS}:make_small_linear",
                inputs=[parse_input_spec("x=1x6")],
                precision="int8-static",
                out_dir=tmp_path,
            )
        )
    assert "--calibration" in caught.value.hint


def test_unknown_precision_suggests_the_nearest_name(tmp_path):
    with pytest.raises(UsageError, match="Did you mean 'int8-static'"):
        build(BuildRequest(targets=["iot"], precision="int8-statc", out_dir=tmp_path))


# Calibration and evaluation sources -----------------------------------------------------------------


@pytest.fixture(scope="module")
def image_model():
    return load_model(f"{MODELS}:make_two_input", [parse_input_spec("image=1x3x16x16"), parse_input_spec("meta=1x4")])


@pytest.fixture(scope="module")
def single_input_model():
    return load_model(f"{MODELS}:make_small_linear", [parse_input_spec("x=1x6")])


def test_npz_with_one_array_per_input(tmp_path, image_model):
    np.savez(tmp_path / "c.npz", image=np.zeros((5, 1, 3, 16, 16), np.float32), meta=np.ones((5, 1, 4), np.float32))
    samples = load_samples(str(tmp_path / "c.npz"), image_model)
    assert len(samples) == 5 and samples[0]["image"].shape == (1, 3, 16, 16) and samples[0]["meta"].shape == (1, 4)


def test_npz_missing_an_input_says_which(tmp_path, image_model):
    np.savez(tmp_path / "c.npz", image=np.zeros((5, 1, 3, 16, 16), np.float32))
    with pytest.raises(UsageError, match="no array for input.*meta"):
        load_samples(str(tmp_path / "c.npz"), image_model)


def test_folder_of_npy_batches(tmp_path, single_input_model):
    np.save(tmp_path / "a.npy", np.zeros((3, 6), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((2, 1, 6), np.float32))
    assert len(load_samples(str(tmp_path), single_input_model)) == 5


def test_folder_of_images_goes_through_preprocessing(tmp_path):
    from PIL import Image

    loaded = load_model(None, [])  # the demo: grayscale 32x32, preprocessing scale 1/16, mean, std
    Image.fromarray(np.full((8, 8), 16, np.uint8)).save(tmp_path / "white.png")
    samples = load_samples(str(tmp_path), loaded)
    expected = (1.0 - loaded.preprocessing["mean"]) / loaded.preprocessing["std"]
    assert samples[0]["image"].shape == (1, 1, 32, 32)
    assert torch.allclose(samples[0]["image"], torch.full((1, 1, 32, 32), expected))


def test_callable_yielding_batches(tmp_path, single_input_model):
    (tmp_path / "batches.py").write_text(
        "import numpy as np\ndef batches():\n    for _ in range(3):\n        yield np.ones((4, 6), np.float32)\n"
    )
    samples = load_samples(f"{tmp_path / 'batches.py'}:batches", single_input_model)
    assert len(samples) == 12 and samples[0]["x"].shape == (1, 6)


def test_empty_folder_is_a_usage_error(tmp_path, single_input_model):
    with pytest.raises(UsageError, match="no .npy files or images"):
        load_samples(str(tmp_path), single_input_model)


# Accuracy figures ----------------------------------------------------------------------------------


def _eval_set() -> EvalSet:
    rng = np.random.default_rng(1)
    expected = [[rng.normal(size=(1, 10)).astype(np.float32)] for _ in range(50)]
    return EvalSet([{"x": torch.from_numpy(e[0])} for e in expected], expected, "test")


def test_identical_outputs_are_exact():
    data = _eval_set()
    accuracy = measure(lambda inputs: [inputs[0]], data, ["x"])
    assert accuracy.top1_agreement == 1.0 and accuracy.sqnr_db is None and accuracy.max_abs_err == 0.0


def test_noise_lowers_sqnr_and_flips_classes():
    data = _eval_set()
    noise = np.random.default_rng(2)
    accuracy = measure(lambda inputs: [inputs[0] + noise.normal(scale=1.0, size=inputs[0].shape)], data, ["x"])
    assert accuracy.top1_agreement < 0.9 and accuracy.sqnr_db < 3 and accuracy.cosine < 0.9
    assert len(budget_misses(accuracy, AccuracyBudget(min_sqnr_db=20))) == 3  # top-1, cosine, SQNR


def test_budget_ignores_top1_when_not_gated():
    accuracy = Accuracy(10, 0.5, 0.999, 0.999, 0.01, 40.0)
    assert budget_misses(accuracy, AccuracyBudget()) == ["top-1 agreement 0.5000 < 0.99"]
    assert budget_misses(accuracy, AccuracyBudget(), gate_top1=False) == []


# The Format contract the ladder drives: quantizable layers and FLOAT_LAYERS -----------------------


@pytest.fixture(scope="module")
def demo_captured():
    from edgepack.capture.ladder import capture
    from edgepack.quantize.calibration import demo_split

    loaded = load_model(None, [])
    return capture(loaded, loaded.sample_inputs[:4]), demo_split(loaded, "calib")[:16]


@pytest.mark.parametrize(
    "fmt_name, float_op, int8_op",
    [
        ("torchscript_lite", "aten::conv2d", "quantized::conv2d_relu"),
        ("onnx", "ai.onnx::Conv", "ai.onnx::DequantizeLinear"),
    ],
)
def test_float_layers_keep_the_named_layer_float(demo_captured, tmp_path, fmt_name, float_op, int8_op):
    from edgepack.formats import FORMATS
    from edgepack.formats.base import FLOAT_LAYERS
    from edgepack.targets import Budgets, FormatSettings, Tolerance

    captured, calibration = demo_captured
    fmt = FORMATS[fmt_name]
    plain = FormatSettings(fmt_name, "int8-static", Tolerance(), Budgets(), {})
    layers = fmt.quantizable_layers(captured, plain)
    assert len(layers) == 4  # three convolutions and the linear head
    all_int8 = fmt.emit(captured, plain, tmp_path / f"a{fmt.suffix}", calibration)
    first_float = fmt.emit(
        captured,
        FormatSettings(fmt_name, "int8-static", Tolerance(), Budgets(), {FLOAT_LAYERS: layers[:1]}),
        tmp_path / f"b{fmt.suffix}",
        calibration,
    )

    def uses(emitted, op: str) -> bool:  # lite operator names carry an overload suffix (".new")
        return any(name == op or name.startswith(op + ".") for name in emitted.requirements["operators"])

    assert uses(all_int8, int8_op) and uses(first_float, int8_op)
    if fmt_name == "torchscript_lite":
        assert not uses(all_int8, float_op) and uses(first_float, float_op)
    else:  # QDQ keeps Conv nodes either way; the float layer's weight stays a float initializer
        import onnx

        floats = [
            i.name
            for i in onnx.load(str(first_float.path)).graph.initializer
            if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 4
        ]
        assert len(floats) == 1
    assert any("kept in float" in note for note in first_float.notes)


def test_a_scheme_that_cannot_be_built_is_an_attempt_and_the_ladder_goes_on(tmp_path):
    """quantize_jit cannot observe a scripted if/else whose branches differ: the first attempt fails to
    build, keeping the layer that breaks it float succeeds (or a milder scheme does), and the report says so."""
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(0).normal(size=(64, 1, 10)).astype(np.float32))
    target = write_fast_target(tmp_path, formats='[formats.torchscript_lite]\nprecision = "int8-static"\n')
    report = build(
        BuildRequest(
            targets=[str(target)],
            model=f"{Path(__file__).parent / 'seed_models.py'}:ControlFlowModel",
            inputs=[parse_input_spec("x=1x10")],
            calibration=str(tmp_path / "data.npz"),
            eval_data=str(tmp_path / "data.npz"),
            out_dir=tmp_path / "dist",
        )
    )[0]
    lite = report.artifacts[0]
    assert report.capture["strategy"] == "script"
    first = lite.quantization["attempts"][0]
    assert not first["ok"] and first["reason"].startswith("building failed") and first["verdict"] == "failed"
    assert lite.quantization["attempts"][-1]["ok"] and report.ok
    assert "int8-static: failed, " in (Path(report.bundle_dir) / "report.md").read_text()
    assert any("int8-static could not be built; shipped" in note for note in lite.notes)


def test_the_ort_file_is_made_from_the_shipped_int8_model_and_verifies(int8_reports):
    """The .ort companion is converted from the artifact the ladder chose, checked with that precision's
    tolerance, listed in the manifest, and `edgepack verify` reruns it."""
    bundle = Path(int8_reports["iot"]["bundle_dir"])
    [onnx] = [a for a in int8_reports["iot"]["artifacts"] if a["format"] == "onnx"]
    entry = onnx["requirements"]["ort_format"]
    assert (bundle / entry["path"]).is_file() and (bundle / entry["required_operators"]).is_file()
    assert (
        "QLinearConv" in (bundle / entry["required_operators"]).read_text()
        or "QuantizeLinear" in (bundle / entry["required_operators"]).read_text()
    )
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert entry["path"] in {f["path"] for f in manifest["files"]}
    result = verify_bundle(bundle)
    assert result.ok, [c for c in result.checks if c.status != "ok"]
    assert any(c.name == f"smoke ort {entry['path']}" and c.status == "ok" for c in result.checks)


@pytest.mark.parametrize("optimization", ["transformer", "basic"])
def test_int8_dynamic_on_a_transformer_target_quantizes_the_fused_attention(tmp_path, optimization):
    """At the transformer level the encoder's attention fuses and is quantized whole (QAttention; where the
    embeddings fuse too, QEmbedLayerNormalization), and the bundle says it needs a full onnxruntime; at basic
    (a reduced runtime, iot) the graph stays standard ops. Either way the smoke test and budget hold."""
    formats = f'[formats.onnx]\nprecision = "int8-dynamic"\nopset = 18\noptimization = "{optimization}"\n'
    target = write_fast_target(tmp_path, "enc", formats)
    report = build(
        BuildRequest(
            [str(target)],
            f"{MODELS}:make_tiny_minilm",
            inputs=[parse_input_spec("input_ids=1x16:int64:0..100")],
            out_dir=tmp_path / "dist",
        )
    )[0]
    artifact = report.artifacts[0]
    assert report.ok and artifact.precision == "int8-dynamic", artifact.notes
    operators = artifact.requirements["operators"]
    fused = optimization == "transformer"
    assert ("com.microsoft::QAttention" in operators) == fused, operators
    assert artifact.requirements["contrib_ops"] == fused
    assert artifact.requirements["graph_optimization"] == ("transformer" if fused else "none")
    assert any("quantized after transformer fusions" in note for note in artifact.notes) == fused
    assert artifact.weight_bytes / artifact.weight_bytes_before < 0.35  # int8 weights; a tiny model's norms stay float
