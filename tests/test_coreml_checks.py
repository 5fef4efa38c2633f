"""The Core ML format off macOS: every precision emitted, read back, structure-checked and evaluated
by the reference executor against eager PyTorch; tampered and mis-converted packages fail.

Run with `-s` to see the measured errors and sizes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import platform
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgepack import precisions
from edgepack.capture.ladder import CapturedModel, capture
from edgepack.compare import cosine_similarity
from edgepack.errors import UsageError
from edgepack.formats import FORMATS
from edgepack.formats.base import FLOAT_LAYERS
from edgepack.formats.coreml.executor import supported_op_types
from edgepack.formats.coreml.format import PROVENANCE_KEYS, _kmeans_lut
from edgepack.inputs import InputSpec, parse_input_spec, sample_inputs
from edgepack.load import LoadedModel
from edgepack.noise import quiet_converter
from edgepack.pipeline import BuildRequest, build
from edgepack.smoke import smoke_test
from edgepack.targets import Budgets, FormatSettings, Tolerance

from .conftest import write_fast_target
from .coreml_models import CausalAttention, make_small_cnn
from .models import make_encoder, make_two_input

PRECISIONS = tuple(precisions.names())

with quiet_converter():
    import coremltools as ct

FMT = FORMATS["coreml"]
MODELS = Path(__file__).parent / "coreml_models.py"
# Per precision: (max abs error relative to max |eager|, min cosine) against the float eager model.
# Compressed weights cost accuracy by design; fp16 compute rounds every op.
BOUNDS = {
    "fp32": (1e-5, 0.99999),
    "fp16": (5e-3, 0.9999),
    "int8-dynamic": (1e-2, 0.9999),
    "int8-static": (1e-2, 0.9999),
    "palettize-8": (1e-2, 0.9999),
    "palettize-6": (3e-2, 0.999),
    "palettize-4": (0.15, 0.995),
}
# The ios target's Core ML tolerance (targets/ios.toml): fp16 compute, about 3 significant digits.
IOS_TOLERANCE = (1e-2, 1e-2, 0.999)
COMPRESSION_OP = {
    "int8-dynamic": "constexpr_affine_dequantize",
    "int8-static": "constexpr_affine_dequantize",
    "palettize-4": "constexpr_lut_to_dense",
    "palettize-6": "constexpr_lut_to_dense",
    "palettize-8": "constexpr_lut_to_dense",
}


def settings(precision: str = "fp32", tolerance: tuple = (1e-4, 1e-4, 0.9999), **options) -> FormatSettings:
    return FormatSettings("coreml", precision, Tolerance(*tolerance), Budgets(), options)


def loose(precision: str, **options) -> FormatSettings:
    """A smoke tolerance that fits what the precision costs (BOUNDS)."""
    rel, cosine = BOUNDS[precision]
    return settings(precision, (0.0, rel, cosine), **options)


def _capture(module: torch.nn.Module, name: str, specs: list[InputSpec]) -> CapturedModel:
    loaded = LoadedModel(name, module, specs, {"kind": "test", "reference": f"{MODELS}:{type(module).__name__}"})
    return capture(loaded, [sample_inputs(specs, module, seed) for seed in range(4)])


@pytest.fixture(scope="module")
def captured() -> CapturedModel:
    return _capture(make_small_cnn(), "small-cnn", [InputSpec("x", (1, 3, 8, 8))])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("coreml_checks")


@pytest.fixture(scope="module")
def emit(captured: CapturedModel, folder: Path):
    """Emit each (precision, deployment target) once for the module."""
    cache = {}

    def get(precision: str, target: str = "iOS16"):
        if (precision, target) not in cache:
            path = folder / f"{precision}-{target}.mlpackage"
            cache[precision, target] = FMT.emit(captured, settings(precision, minimum_deployment_target=target), path)
        return cache[precision, target]

    return get


def _weights_file(package: Path) -> Path:
    return package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"


def _worst(run, captured: CapturedModel) -> tuple[float, float]:
    """(max abs error relative to max |eager|, min cosine) over the golden samples."""
    rel, cosine = 0.0, 1.0
    for sample, expected in zip(captured.samples, captured.expected):
        got, want = run([sample["x"].numpy()])[0], expected[0]
        rel = max(rel, float(np.abs(got - want).max() / np.abs(want).max()))
        cosine = min(cosine, cosine_similarity(got, want))
    return rel, cosine


# --- precisions ------------------------------------------------------------------------------


def test_every_precision_name_is_accepted():
    assert set(FMT.precisions) == set(PRECISIONS)
    for precision in PRECISIONS:
        FMT.validate(settings(precision))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_precision_is_verified_against_eager(precision, emit, captured):
    emitted = emit(precision)
    ops = set(emitted.requirements["operators"])
    if precision in COMPRESSION_OP:
        assert COMPRESSION_OP[precision] in ops
        assert emitted.requirements["compute_precision"] == "fp16"
    else:
        assert not any(op.startswith("constexpr_") for op in ops)
    assert FMT.check_structure(emitted, captured, settings(precision)) == []

    rel, cosine = _worst(FMT.open(emitted.path, 1), captured)
    print(
        f"\n[coreml] {precision:12s} weight.bin {_weights_file(emitted.path).stat().st_size:6d} B: "
        f"max rel err {rel:.2e}, cosine {cosine:.7f}"
    )
    max_rel, min_cosine = BOUNDS[precision]
    assert rel <= max_rel and cosine >= min_cosine
    if precision != "fp32":
        assert rel > 1e-6  # the reduced precision really was evaluated: not bit-identical to fp32

    result = smoke_test(FMT, emitted, captured, loose(precision), threads=1)
    assert result.status == "passed", result.reason
    assert "reference executor" in result.reason


def test_sizes_shrink_with_precision(emit):
    size = {p: _weights_file(emit(p).path).stat().st_size for p in PRECISIONS}
    print("\n[coreml] weight.bin bytes:", size)
    assert 0.45 < size["fp16"] / size["fp32"] < 0.55
    assert size["int8-dynamic"] == size["int8-static"]
    assert size["int8-dynamic"] < 0.6 * size["fp16"]
    assert size["fp16"] > size["palettize-8"] > size["palettize-6"] > size["palettize-4"]
    assert size["palettize-4"] < 0.6 * size["int8-dynamic"]


def test_executor_evaluates_compressed_weights_exactly(emit, captured):
    """Against eager with the compressed weights decoded independently, the only error left is fp16 compute."""
    eager = _with_weights(captured, lambda w: _int8_per_channel(w.astype(np.float16)))
    int8 = FMT.open(emit("int8-dynamic").path, 1)
    palettized = FMT.open(emit("palettize-6").path, 1)
    lut = _kmeans_lut(6)
    eager6 = _with_weights(captured, lambda w: _palettized(lut, w.astype(np.float16)))
    for run, model in ((int8, eager), (palettized, eager6)):
        for sample in captured.samples:
            x = sample["x"]
            with torch.no_grad():
                want = model(x).numpy()
            got = run([x.numpy()])[0]
            assert np.abs(got - want).max() <= 2e-3 * np.abs(want).max()


def _with_weights(captured: CapturedModel, transform) -> torch.nn.Module:
    model = copy.deepcopy(captured.loaded.module)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.weight.copy_(torch.from_numpy(transform(module.weight.numpy()).astype(np.float32)))
    return model


def _int8_per_channel(w: np.ndarray) -> np.ndarray:
    rows = w.astype(np.float32).reshape(w.shape[0], -1)
    scale = (np.abs(rows).max(axis=1, keepdims=True) / 127).astype(np.float16).astype(np.float32)
    return (np.clip(np.round(rows / scale), -128, 127) * scale).reshape(w.shape)


def _palettized(lut_function, w: np.ndarray) -> np.ndarray:
    lut, indices = lut_function(w)
    return lut.astype(np.float32)[indices].reshape(w.shape)


@pytest.mark.parametrize(
    "precision, op", [("int8-dynamic", "constexpr_blockwise_shift_scale"), ("palettize-4", "constexpr_lut_to_dense")]
)
def test_ios18_compressed_packages_are_verified(precision, op, emit, captured):
    emitted = emit(precision, "iOS18")
    assert emitted.requirements["specification_version"] == 9 and op in emitted.requirements["operators"]
    result = smoke_test(FMT, emitted, captured, loose(precision, minimum_deployment_target="iOS18"), threads=1)
    assert result.status == "passed", result.reason


@pytest.fixture(scope="module")
def encoder() -> CapturedModel:
    return _capture(make_encoder().eval(), "encoder", [parse_input_spec("ids=1x16:int64")])


@pytest.mark.parametrize("precision", ["int8-dynamic", "palettize-8"])
def test_compressed_attention_encoder_is_verified(precision, encoder, folder):
    """Embedding table, attention and MLP weights compressed; int64 ids travel as int32."""
    emitted = FMT.emit(encoder, settings(precision), folder / f"encoder-{precision}.mlpackage")
    assert {"gather", "layer_norm", "softmax", COMPRESSION_OP[precision]} <= set(emitted.requirements["operators"])
    assert emitted.requirements["io_types"]["ids"] == "INT32"  # the manifest says int64: the app must pass Int32
    result = smoke_test(FMT, emitted, encoder, settings(precision, IOS_TOLERANCE), threads=1)
    print(f"\n[coreml] encoder {precision}: {result.reason.split(';')[0]}")
    assert result.status == "passed", result.reason


@pytest.mark.parametrize("make, spec", [(make_encoder, "ids=1xSEQ=16:int64"), (make_two_input, "image=1x3xH=16xW=16")])
def test_flexible_shapes_are_verified_at_every_checked_size(make, spec, folder):
    """Inputs with a dimension that may vary: the capture's check inputs halve and double it."""
    specs = [parse_input_spec(spec)] + ([parse_input_spec("meta=1x4")] if make is make_two_input else [])
    flexible = _capture(make().eval(), f"flexible-{make.__name__}", specs)
    samples = flexible.samples + [check.sample for check in flexible.checks]
    sizes = {tuple(sample[specs[0].name].shape) for sample in samples}
    assert len(sizes) >= 3  # the example size, half and double
    emitted = FMT.emit(flexible, settings("fp16"), folder / f"{make.__name__}-flexible.mlpackage")
    result = smoke_test(FMT, emitted, flexible, settings("fp16", IOS_TOLERANCE), threads=1)
    print(f"\n[coreml] {make.__name__} flexible {sorted(sizes)}: {result.reason.split(';')[0]}")
    assert result.status == "passed", result.reason


def test_int8_static_is_int8_weights_with_a_note(emit):
    precision, note = FMT.nearest_precision("int8-static")
    assert precision == "int8-static" and "no activation quantization" in note and "int8 weights" in note
    assert FMT.nearest_precision("fp16") == ("fp16", "")
    assert emit("int8-static").requirements["operators"] == emit("int8-dynamic").requirements["operators"]


def test_float_layers_stay_float(captured, folder):
    layers = FMT.quantizable_layers(captured, settings("int8-dynamic"))
    assert layers == ["model_features_0_weight_to_fp16", "model_features_2_weight_to_fp16", "model_head_weight_to_fp16"]
    kept = layers[1]
    emitted = FMT.emit(captured, settings("palettize-4", **{FLOAT_LAYERS: [kept]}), folder / "kept.mlpackage")
    spec = ct.utils.load_spec(str(emitted.path))
    ops = spec.mlProgram.functions["main"].block_specializations["CoreML6"].operations
    palettized = [op for op in ops if op.type == "constexpr_lut_to_dense"]
    assert len(palettized) == 2 and all(op.outputs[0].name != kept for op in palettized)
    assert any(op.type == "const" and op.outputs[0].name == kept for op in ops)
    assert any(kept in note for note in emitted.notes)
    # The float layer carries the error budget: less error than palettizing everything.
    assert (
        _worst(FMT.open(emitted.path, 1), captured)[0]
        < _worst(FMT.open(folder / "palettize-4-iOS16.mlpackage", 1), captured)[0]
    )


def test_unknown_float_layer_is_a_usage_error(captured, folder):
    with pytest.raises(UsageError, match="Did you mean 'model_head_weight_to_fp16'"):
        FMT.emit(captured, settings("int8-dynamic", **{FLOAT_LAYERS: ["model_head_weight"]}), folder / "bad.mlpackage")


# --- metadata --------------------------------------------------------------------------------


def test_metadata_names_its_sources_and_provenance(emit):
    spec = ct.utils.load_spec(str(emit("palettize-6").path))
    meta = spec.description.metadata
    assert meta.author == "edgepack test suite" and meta.license == "MIT"  # declared in tests/coreml_models.py
    assert "small-cnn" in meta.versionString  # not declared: edgepack's default
    assert "small-cnn" in meta.shortDescription and "palettize-6" in meta.shortDescription
    user = dict(meta.userDefined)
    assert set(PROVENANCE_KEYS) <= set(user)
    assert user["edgepack.precision"] == "palettize-6" and user["edgepack.minimum_deployment_target"] == "iOS16"
    assert user["edgepack.torch"] == torch.__version__ and user["edgepack.coremltools"] == ct.__version__
    assert user["edgepack.capture"] == "trace"
    assert json.loads(user["edgepack.metadata_sources"]) == {
        "author": "tests.coreml_models.__author__",
        "license": "tests.coreml_models.__license__",
        "version": "edgepack default",
    }


def _rewrite_spec(source: Path, target: Path, change) -> Path:
    shutil.copytree(source, target)
    model_file = target / "Data" / "com.apple.CoreML" / "model.mlmodel"
    spec = ct.proto.Model_pb2.Model()
    spec.ParseFromString(model_file.read_bytes())
    change(spec)
    model_file.write_bytes(spec.SerializeToString())
    return target


def test_missing_metadata_fails_the_structure_check(emit, captured, tmp_path):
    def strip(spec):
        spec.description.metadata.license = ""
        del spec.description.metadata.userDefined["edgepack.capture"]

    package = _rewrite_spec(emit("fp32").path, tmp_path / "bare.mlpackage", strip)
    problems = FMT.check_structure(dataclasses.replace(emit("fp32"), path=package), captured, settings())
    assert "metadata has no license" in problems
    assert "metadata lacks edgepack provenance: edgepack.capture" in problems


# --- tampered and mis-converted packages ------------------------------------------------------


def test_one_changed_weight_byte_fails_the_smoke_test(emit, captured, tmp_path):
    good = emit("fp32")
    assert smoke_test(FMT, good, captured, settings(), threads=1).status == "passed"
    package = tmp_path / "one-byte.mlpackage"
    shutil.copytree(good.path, package)
    data = bytearray(_weights_file(package).read_bytes())
    data[-3] ^= 0x01  # the lowest mantissa bit of one weight: no tolerance would notice it
    _weights_file(package).write_bytes(bytes(data))
    result = smoke_test(FMT, dataclasses.replace(good, path=package), captured, settings(), threads=1)
    assert result.status == "failed" and "altered after the build" in result.reason


def test_a_package_with_other_numbers_fails_on_the_executor(captured, folder):
    """Intact and well-formed, but not the model's numbers (what a converter bug looks like): only
    evaluating the program catches it."""
    torch.manual_seed(6)
    other = _capture(type(captured.loaded.module)().eval(), "small-cnn", [InputSpec("x", (1, 3, 8, 8))])
    emitted = FMT.emit(other, settings(), folder / "other-weights.mlpackage")
    assert FMT.check_structure(emitted, captured, settings()) == []
    result = smoke_test(FMT, emitted, captured, loose("fp16"), threads=1)
    assert result.status == "failed" and "max abs error" in result.reason and result.cosine < 0.99


def test_damaged_blob_header_fails_the_smoke_test(emit, captured, tmp_path):
    good = emit("int8-dynamic")
    package = tmp_path / "header.mlpackage"
    shutil.copytree(good.path, package)
    data = bytearray(_weights_file(package).read_bytes())
    data[64] ^= 0xFF  # the first blob's sentinel (the file starts with a 64-byte header)
    _weights_file(package).write_bytes(bytes(data))
    result = smoke_test(FMT, dataclasses.replace(good, path=package), captured, loose("int8-dynamic"), threads=1)
    assert result.status == "failed" and "header at offset 64" in result.reason


def test_op_newer_than_the_deployment_target_fails(folder, tmp_path):
    """A package claiming iOS16 that holds an iOS18 op (scaled_dot_product_attention) is mis-converted."""
    torch.manual_seed(0)
    attention = _capture(CausalAttention().eval(), "attention", [InputSpec("x", (1, 5, 16))])
    ios18 = FMT.emit(attention, settings(minimum_deployment_target="iOS18"), folder / "sdpa.mlpackage")
    assert FMT.check_structure(ios18, attention, settings(minimum_deployment_target="iOS18")) == []

    def claim_ios16(spec):  # every version mark says iOS16; only the op gives it away
        spec.specificationVersion = 7
        function = spec.mlProgram.functions["main"]
        function.block_specializations["CoreML6"].CopyFrom(function.block_specializations["CoreML8"])
        del function.block_specializations["CoreML8"]
        function.opset = "CoreML6"

    package = _rewrite_spec(ios18.path, tmp_path / "claims-ios16.mlpackage", claim_ios16)
    problems = FMT.check_structure(dataclasses.replace(ios18, path=package), attention, settings())
    assert problems == ["op 'scaled_dot_product_attention' needs iOS18 or newer; the package targets iOS16"]

    package = _rewrite_spec(
        ios18.path, tmp_path / "version-only.mlpackage", lambda spec: setattr(spec, "specificationVersion", 7)
    )
    problems = FMT.check_structure(dataclasses.replace(ios18, path=package), attention, settings())
    assert "program opset CoreML8, expected CoreML6 for iOS16" in problems
    assert "specification version 9, expected 7 (minimum deployment target iOS16)" in FMT.check_structure(
        ios18, attention, settings()
    )


def test_inputs_and_outputs_must_match_what_edgepack_recorded(emit, captured):
    emitted = emit("fp32")
    other_input = dataclasses.replace(captured.loaded, inputs=[InputSpec("x", (1, 3, 8, 8), "int64")])
    problems = FMT.check_structure(emitted, dataclasses.replace(captured, loaded=other_input), settings())
    assert problems == ["input 'x' is FLOAT32, expected INT32 (for int64)"]

    renamed = dataclasses.replace(captured, output_names=["logits"])
    assert FMT.check_structure(emitted, renamed, settings()) == ["outputs are ['output'], expected ['logits']"]

    wider = dataclasses.replace(captured, expected=[[np.zeros((1, 25), np.float32)]])
    assert FMT.check_structure(emitted, wider, settings()) == ["output 'output' has shape [1, 24], expected [1, 25]"]


# --- the pipeline ----------------------------------------------------------------------------


def test_a_grid_sample_model_passes_its_smoke_test_in_the_build(tmp_path):
    """grid_sample converts to `resample`, which the reference executor evaluates: verified, not skipped."""
    target = write_fast_target(tmp_path, "coreml-only", '[formats.coreml]\nprecision = "fp32"\n')
    report = build(
        BuildRequest(
            targets=[str(target)],
            model=f"{MODELS}:Warp",
            inputs=[parse_input_spec("x=1x2x6x6")],
            out_dir=tmp_path / "dist",
        )
    )[0]
    coreml = report.artifacts[0]
    assert "resample" in coreml.requirements["operators"]
    assert coreml.smoke.status == "passed", coreml.smoke.reason
    assert coreml.smoke.max_abs_err is not None and coreml.smoke.max_abs_err <= 1e-4
    assert report.ok


def test_an_op_the_executor_lacks_is_skipped_by_name_in_the_build(tmp_path):
    """affine_grid + grid_sample converts to `affine`, which the executor does not implement: the
    smoke test says so by name and is `skipped`, never `passed`."""
    assert "affine" not in supported_op_types()
    target = write_fast_target(tmp_path, "coreml-only", '[formats.coreml]\nprecision = "fp32"\n')
    request = BuildRequest(
        targets=[str(target)],
        model=f"{MODELS}:AffineWarp",
        inputs=[parse_input_spec("x=1x2x6x6")],
        out_dir=tmp_path / "dist",
    )
    report = build(request)[0]
    coreml = report.artifacts[0]
    assert "affine" in coreml.requirements["operators"]
    assert coreml.smoke.status == "skipped"
    assert "cannot evaluate op(s) affine" in coreml.smoke.reason
    assert coreml.smoke.max_abs_err is None
    assert report.ok  # not verified is not failed, unless --strict
    strict = build(dataclasses.replace(request, out_dir=tmp_path / "strict", strict=True))[0]
    assert not strict.ok


@pytest.mark.skipif(platform.system() != "Darwin", reason="Core ML prediction needs macOS")
def test_macos_predicts_with_cpu_only_and_all_compute_units(emit, captured):
    emitted = emit("fp16")
    assert FMT.check_structure(emitted, captured, loose("fp16")) == []
    assert any(n.startswith("Core ML CPU_ONLY:") for n in emitted.notes)
    assert any(n.startswith("Core ML ALL:") for n in emitted.notes)
