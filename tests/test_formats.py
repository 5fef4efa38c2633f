"""Each format on its own: emit, read back, run; and proof that a broken artifact fails its smoke test."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch.jit.mobile import _load_for_lite_interpreter

from edgepack.capture.ladder import capture
from edgepack.formats import FORMATS
from edgepack.inputs import InputSpec, sample_inputs
from edgepack.load import LoadedModel
from edgepack.smoke import smoke_test
from edgepack.targets import Budgets, FormatSettings, Tolerance

from .models import make_small_linear


def settings(name: str, precision: str = "fp32", **options) -> FormatSettings:
    return FormatSettings(name, precision, Tolerance(1e-4, 1e-4, 0.9999), Budgets(), options)


@pytest.fixture(scope="module")
def captured():
    module = make_small_linear().eval()
    specs = [InputSpec("x", (1, 6))]
    loaded = LoadedModel("small", module, specs, {"kind": "test"})
    return capture(loaded, [sample_inputs(specs, module, seed) for seed in range(4)])


@pytest.fixture(scope="module")
def emitted(captured, tmp_path_factory):
    folder = tmp_path_factory.mktemp("artifacts")
    return {
        name: FORMATS[name].emit(captured, settings(name), folder / f"small{FORMATS[name].suffix}")
        for name in ("onnx", "torchscript_lite", "coreml")
    }


def test_fresh_artifacts_pass(emitted, captured):
    for name in ("onnx", "torchscript_lite"):
        result = smoke_test(FORMATS[name], emitted[name], captured, settings(name), threads=1)
        assert result.status == "passed", result.reason
        assert result.max_abs_err < 1e-5


def test_onnx_with_altered_weights_fails_its_smoke_test(emitted, captured, tmp_path):
    model = onnx.load(str(emitted["onnx"].path))
    weight = model.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) + 0.05, weight.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    result = smoke_test(FORMATS["onnx"], type(emitted["onnx"])(broken, {}), captured, settings("onnx"), threads=1)
    assert result.status == "failed"
    assert "max abs error" in result.reason and result.max_abs_err > 1e-3


def test_truncated_onnx_fails_to_load(emitted, captured, tmp_path):
    broken = tmp_path / "truncated.onnx"
    broken.write_bytes(emitted["onnx"].path.read_bytes()[:200])
    result = smoke_test(FORMATS["onnx"], type(emitted["onnx"])(broken, {}), captured, settings("onnx"), threads=1)
    assert result.status == "failed" and "could not load" in result.reason


def test_lite_model_of_other_weights_fails(emitted, captured, tmp_path):
    other = torch.jit.trace(
        torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).eval(), torch.zeros(1, 6)
    )
    broken = tmp_path / "other.ptl"
    other._save_for_lite_interpreter(str(broken))
    result = smoke_test(
        FORMATS["torchscript_lite"],
        type(emitted["onnx"])(broken, {}),
        captured,
        settings("torchscript_lite"),
        threads=1,
    )
    assert result.status == "failed"


def test_lite_module_returns_a_tuple_even_for_one_output_as_its_requirements_say(emitted, captured):
    requirement = emitted["torchscript_lite"].requirements["returns"]
    assert "tuple" in requirement and len(captured.output_names) == 1
    module = _load_for_lite_interpreter(str(emitted["torchscript_lite"].path))
    result = module(*(captured.samples[0][name] for name in captured.input_names))
    assert isinstance(result, tuple) and len(result) == 1


def test_lite_backport_to_an_older_bytecode(captured, tmp_path):
    fmt = FORMATS["torchscript_lite"]
    result = fmt.emit(captured, settings("torchscript_lite", bytecode_version=6), tmp_path / "old.ptl")
    assert result.requirements["bytecode_version"] == 6
    assert smoke_test(fmt, result, captured, settings("torchscript_lite"), threads=1).status == "passed"


def test_coreml_structure_check_catches_a_damaged_package(emitted, captured, tmp_path):
    fmt, good = FORMATS["coreml"], emitted["coreml"]
    assert fmt.check_structure(good, captured, settings("coreml")) == []
    damaged = tmp_path / "damaged.mlpackage"
    shutil.copytree(good.path, damaged)
    weights = damaged / "Data/com.apple.CoreML/weights/weight.bin"
    weights.write_bytes(weights.read_bytes()[:64])
    problems = fmt.check_structure(type(good)(damaged, {}), captured, settings("coreml"))
    assert problems and "beyond the end" in problems[0]
    result = smoke_test(fmt, type(good)(damaged, {}), captured, settings("coreml"), threads=1)
    assert result.status == "failed"


def test_coreml_package_with_altered_weights_fails_its_smoke_test(emitted, captured, tmp_path):
    fmt, good = FORMATS["coreml"], emitted["coreml"]
    assert smoke_test(fmt, good, captured, settings("coreml"), threads=1).status == "passed"
    damaged = tmp_path / "negated.mlpackage"
    shutil.copytree(good.path, damaged)
    weights = damaged / "Data/com.apple.CoreML/weights/weight.bin"
    raw = np.frombuffer(weights.read_bytes(), dtype=np.uint8).copy()
    sign_bytes = np.arange(raw.size) % 4 == 3
    sign_bytes[:128] = False  # keep the blob headers; flip the sign of every float32 after them
    raw[sign_bytes] ^= 0x80
    weights.write_bytes(raw.tobytes())
    result = smoke_test(fmt, type(good)(damaged, {}), captured, settings("coreml"), threads=1)
    assert result.status == "failed" and "altered after the build" in result.reason, result.reason


def test_coreml_structure_check_catches_a_wrong_deployment_target(emitted, captured):
    problems = FORMATS["coreml"].check_structure(
        emitted["coreml"], captured, settings("coreml", minimum_deployment_target="iOS17")
    )
    assert any("specification version 7, expected 8" in p for p in problems)


def test_coreml_keeps_float32_inputs_and_outputs_under_fp16_compute(captured, tmp_path):
    import coremltools as ct

    result = FORMATS["coreml"].emit(captured, settings("coreml", "fp16"), tmp_path / "half.mlpackage")
    spec = ct.utils.load_spec(str(result.path))
    float32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    assert spec.description.input[0].type.multiArrayType.dataType == float32
    assert spec.description.output[0].type.multiArrayType.dataType == float32
    assert "cast" in result.requirements["operators"]


@pytest.mark.parametrize(
    "name, bad, message",
    [
        ("onnx", {"opset": 7}, "opset"),
        ("torchscript_lite", {"bytecode_version": 2}, "bytecode_version"),
        ("coreml", {"minimum_deployment_target": "iOS12"}, "minimum_deployment_target"),
    ],
)
def test_unsupported_format_options_are_rejected_up_front(name, bad, message):
    from edgepack.errors import UsageError

    with pytest.raises(UsageError, match=message):
        FORMATS[name].validate(settings(name, **bad))


def test_unknown_precision_names_the_known_ones():
    from edgepack.errors import UsageError

    with pytest.raises(UsageError, match="Did you mean 'int8-static'") as caught:
        FORMATS["onnx"].validate(settings("onnx", "int8-statik"))
    assert "palettize-4" in caught.value.hint and "onnx implements fp32, int8-dynamic, int8-static" in caught.value.hint


def test_a_precision_without_a_scheme_maps_to_the_nearest_one():
    assert FORMATS["onnx"].nearest_precision("int8-static") == ("int8-static", "")
    scheme, note = FORMATS["torchscript_lite"].nearest_precision("palettize-4")
    assert scheme == "int8-dynamic" and "no palettization" in note
