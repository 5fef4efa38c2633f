"""Models as users bring them (issue 16): a target's defaults build the common architectures, caches are not
state, data-dependent output sizes are refused before any work, and a .ptl fixed to its traced shapes says so
and refuses the others."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgepack.capture.ladder import CaptureError
from edgepack.inputs import parse_input_spec
from edgepack.pipeline import BuildRequest, build

from .conftest import write_fast_target

PATTERNS = Path(__file__).parent / "pattern_models.py"
LITE_AND_ONNX = '[formats.torchscript_lite]\nprecision = "fp32"\n[formats.onnx]\nprecision = "fp32"\nopset = 18\n'


def _build(tmp_path: Path, target: str, model: str, *specs: str):
    return build(
        BuildRequest(
            targets=[target],
            model=f"{PATTERNS}:{model}",
            inputs=[parse_input_spec(s) for s in specs],
            out_dir=tmp_path / "dist",
        )
    )[0]


def test_the_iot_target_builds_a_transformer_text_encoder_with_its_defaults(tmp_path):
    """iot's opset 17 sends nn.TransformerEncoder to the TorchScript exporter, which cannot export it: the
    torch.export-based graph, converted down to opset 17, ships instead, checked like any ONNX graph (and its .ort)."""
    report = _build(tmp_path, "iot", "make_text_encoder", "ids=1x8:int64")
    assert report.ok, report.problems
    onnx_report = report.artifacts[0]
    assert onnx_report.smoke.status == "passed" and onnx_report.requirements["opset"] == 17
    assert "converted to opset 17 with onnx.version_converter" in onnx_report.notes[0]
    assert onnx_report.requirements["ort_format"]["path"].endswith(".ort")


@pytest.fixture(scope="module")
def yolo_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("yolo")
    target = write_fast_target(folder, "lite-onnx", LITE_AND_ONNX)
    return _build(folder, str(target), "make_tiny_yolo", "image=1x3xH=32xW=32")


def test_a_yolo_anchor_grid_cache_is_recognised_captured_cold_and_checked(yolo_report):
    report = yolo_report
    assert report.ok, report.problems
    caches = {c["attribute"]: c for c in report.capture["caches"]}
    assert set(caches) == {"detect.grid", "detect.anchor_grid"}
    assert caches["detect.grid"]["file"].endswith("patterns.py") and caches["detect.grid"]["line"] > 0
    assert not [h for h in report.capture["hazards"] if h["kind"] == "python_state"]
    assert all(a.smoke.status == "passed" for a in report.artifacts)


@pytest.mark.parametrize("size", [32, 64])
def test_the_yolo_head_matches_eager_at_two_input_sizes(yolo_report, size):
    """What ships recomputes the grid: a warm eager model at another size and the .ptl and ONNX agree."""
    import onnxruntime as ort

    from .pattern_models import make_tiny_yolo

    bundle = Path(yolo_report.bundle_dir)
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    eager = make_tiny_yolo()
    with torch.no_grad():
        eager(torch.randn(1, 3, 48, 48))  # warm at a third size: the cache must not leak into the answer
        expected = eager(image)[0].numpy()
    lite = torch.jit.mobile._load_for_lite_interpreter(str(next(bundle.glob("*.ptl"))))
    np.testing.assert_allclose(lite(image)[0].numpy(), expected, atol=1e-4, rtol=1e-4)
    session = ort.InferenceSession(str(next(bundle.glob("*.onnx"))), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"image": image.numpy()})[0], expected, atol=1e-3, rtol=1e-4)


def test_a_counter_is_state_and_stays_refused(tmp_path):
    target = write_fast_target(tmp_path, "lite-onnx", LITE_AND_ONNX)
    with pytest.raises(CaptureError) as refused:
        _build(tmp_path, str(target), "CallCounter", "x=1x4")
    assert "python_state: forward changes self.calls" in refused.value.message
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").rglob("*.ptl"))


def test_a_data_dependent_output_size_is_refused_before_any_work(tmp_path):
    """boxes[scores > 0.5]: the output's length follows the values. Refused as a usage error (exit 2) naming the
    output and the sizes seen, with the fix; nothing written (it used to crash writing the golden vectors)."""
    from edgepack.errors import UsageError

    target = write_fast_target(tmp_path, "lite-onnx", LITE_AND_ONNX)
    with pytest.raises(UsageError) as refused:
        _build(tmp_path, str(target), "make_keep_above_threshold", "boxes=1x16x4")
    assert refused.value.exit_code == 2
    assert "Output 'output' changes size with the input's values" in refused.value.message
    assert "torch.topk" in refused.value.hint
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").rglob("*"))


@pytest.fixture(scope="module")
def anchor_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("anchors")
    target = write_fast_target(folder, "lite", '[formats.torchscript_lite]\nprecision = "fp32"\n')
    report = _build(folder, str(target), "make_anchor_boxes", "x=1x3x8x8")
    assert report.ok, report.problems
    return report


def test_a_ptl_traced_at_fixed_shapes_raises_on_an_undeclared_shape(anchor_bundle):
    """The anchor table is a trace constant for 8x8: the saved program refuses 16x16 instead of returning numbers."""
    lite = torch.jit.mobile._load_for_lite_interpreter(str(next(Path(anchor_bundle.bundle_dir).glob("*.ptl"))))
    assert lite(torch.randn(1, 3, 8, 8))[0].shape == (1, 64, 2)
    for wrong in (torch.randn(1, 3, 16, 16), torch.randn(2, 3, 8, 8), torch.randn(3, 8, 8)):
        with pytest.raises(Exception, match="edgepack shape guard: input 'x' must have shape 1x3x8x8"):
            lite(wrong)


def test_the_manifest_says_which_dimensions_are_fixed(anchor_bundle, yolo_report):
    import json

    manifest = json.loads((Path(anchor_bundle.bundle_dir) / "manifest.json").read_text())
    assert manifest["artifacts"][0]["requirements"]["shape_guard"] == {"x": [1, 3, 8, 8]}
    lite = next(a for a in yolo_report.artifacts if a.format == "torchscript_lite")
    assert lite.requirements["shape_guard"] == {"image": [1, 3, "H", "W"]}
    assert any(n.startswith("shape guard:") for n in lite.notes)


def test_a_core_ml_conversion_failure_names_the_op_its_line_and_a_workaround_without_progress_bars(tmp_path):
    from edgepack.capture.ladder import capture
    from edgepack.errors import BuildError
    from edgepack.formats import FORMATS
    from edgepack.inputs import sample_inputs
    from edgepack.load import LoadedModel

    from .models import QRHead
    from .test_formats import settings

    inputs = [parse_input_spec("x=4x4")]
    module = QRHead().eval()
    captured = capture(
        LoadedModel("qr", module, inputs, {"kind": "test"}), [sample_inputs(inputs, module, s) for s in range(2)]
    )
    with pytest.raises(BuildError) as failure:
        FORMATS["coreml"].emit(captured, settings("coreml"), tmp_path / "qr.mlpackage")
    message, hint = failure.value.message, failure.value.hint
    assert "op aten::linalg_qr, at " in message and "models.py:" in message
    assert "from the torch.export capture:" in message  # the fallback was tried too
    assert "%|" not in hint and "Converting PyTorch Frontend" not in hint
    assert "@register_torch_op" in hint and "--allow-partial" in hint


def test_an_optimization_whose_graph_fails_the_onnx_checker_is_dropped_and_said_so():
    """T5's RMSNorm fused into SimplifiedLayerNormalization (an onnxruntime op in the standard domain, which the
    standard does not define): the step is dropped, the graph before it ships, the notes say why."""
    import onnx
    from onnx import TensorProto, helper

    from edgepack.formats.onnx.optimize import _step

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    def fuse_badly(m):
        m.graph.node[0].op_type = "SimplifiedLayerNormalization"
        return m

    notes: list[str] = []
    kept = _step(notes, "onnxruntime.transformers fusions", model, fuse_badly)
    assert [n.op_type for n in kept.graph.node] == ["Relu"]
    onnx.checker.check_model(kept)
    assert notes[0].startswith("onnxruntime.transformers fusions dropped: its graph fails the ONNX checker (")


def test_the_coverage_benchmark_lists_30_architectures_of_every_family_and_tabulates_totals():
    """Without transformers: the list, the families the issue names, and the table's totals (the builds run in the
    benchmark, `python -m edgepack.benchmarks.coverage`)."""
    from edgepack.benchmarks import coverage

    hf = [a for a in coverage.ARCHS.values() if a.family != "pattern"]
    assert len(hf) >= 30
    assert {
        "vision CNN",
        "vision transformer",
        "windowed transformer",
        "segmentation",
        "text encoder",
        "decoder LM",
        "encoder of enc-dec",
        "audio",
    } <= {a.family for a in hf}
    assert {"yolo_detect", "data_dependent_keep", "lstm_kws", "unet"} <= set(coverage.ARCHS)
    rows = [
        {"name": "a", "family": "x", "cells": {c: {"status": "passed", "reason": "ok"} for c in coverage.COLUMNS}},
        {
            "name": "b",
            "family": "x",
            "cells": {c: {"status": "failed", "reason": "op foo at m.py:3"} for c in coverage.COLUMNS},
        },
    ]
    assert coverage.totals(rows)["ios/coreml"] == {"passed": 1, "failed": 1}
    text = coverage.markdown(rows, {"command": "c", "cpu": "cpu", "torch": "t", "transformers": "t"})
    # The columns are the built-in targets' formats, the .pte included; one reason line per distinct reason.
    assert {"android/executorch", "android/torchscript_lite", "ios/coreml", "iot/onnx"} <= set(coverage.COLUMNS)
    assert "| b | x | **failed**" in text and text.count("- b ") == 1
    assert f"- b {coverage.COLUMNS[0]} (failed): op foo at m.py:3" in text


def test_a_key_value_cache_output_is_flattened_into_named_present_key_value_tensors():
    """Decoder LMs with use_cache=True return a DynamicCache: its layers' keys and values become outputs named as
    the ONNX community does (present.N.key/value, identifier-safe)."""
    from torch import nn

    from edgepack.capture.flatten import flatten_model
    from edgepack.load import LoadedModel

    class _Layer:
        def __init__(self, k, v):
            self.keys, self.values = k, v

    class DynamicCache:  # the shape of transformers' class, without transformers
        def __init__(self, layers):
            self.layers = layers

    class TinyDecoder(nn.Module):
        def forward(self, x):
            return {"logits": x * 2, "past_key_values": DynamicCache([_Layer(x + 1, x + 2), _Layer(x + 3, x + 4)])}

    inputs = [parse_input_spec("x=1x3")]
    flat, names = flatten_model(LoadedModel("d", TinyDecoder(), inputs, {"kind": "test"}), {"x": torch.ones(1, 3)})
    assert names == ["logits", "present_0_key", "present_0_value", "present_1_key", "present_1_value"]
    assert [float(t[0, 0]) for t in flat(torch.ones(1, 3))] == [2.0, 2.0, 3.0, 4.0, 5.0]


def test_a_key_value_cache_fed_back_in_builds_and_matches_eager_at_two_past_lengths(tmp_path):
    """Decoder LMs as users run them: the cache the model returned comes back as past_key_values_N_key/value
    inputs (gathered into the model's own cache class), and the grown cache goes out as present_N_key/value."""
    past = [f"past_key_values_{n}_{part}=1x2xPAST=6x8" for n in (0, 1) for part in ("key", "value")]
    formats = '[formats.onnx]\nprecision = "fp32"\nopset = 18\n[formats.executorch]\nprecision = "fp32"\n'
    target = write_fast_target(tmp_path, "onnx-pte", formats)
    report = _build(tmp_path, str(target), "make_tiny_causal_lm", "input_ids=1xSEQ=3:int64:0..50", *past)
    assert report.ok, report.problems
    bundle = Path(report.bundle_dir)
    manifest = json.loads((bundle / "manifest.json").read_text())
    presents = [f"present_{n}_{part}" for n in (0, 1) for part in ("key", "value")]
    assert [o["name"] for o in manifest["outputs"]] == ["logits", *presents]
    assert {i["name"]: i["layout"] for i in manifest["inputs"]}["past_key_values_0_key"] is None
    from edgepack.formats import FORMATS

    from .pattern_models import KVCache, make_tiny_causal_lm

    model = make_tiny_causal_lm()
    for past_length in (2, 11):  # neither the declared 6 nor the checker's half and double sizes
        ids = torch.randint(0, 50, (1, 3))
        cache = [(torch.randn(1, 2, past_length, 8), torch.randn(1, 2, past_length, 8)) for _ in range(2)]
        with torch.no_grad():
            out = model(ids, cache=KVCache(cache))
        expected = [out["logits"]] + [t for layer in out["past_key_values"].layers for t in (layer.keys, layer.values)]
        feed = [ids.numpy()] + [t.numpy() for pair in cache for t in pair]
        for artifact in report.artifacts:
            got = FORMATS[artifact.format].open(bundle / artifact.path, 1)(feed)
            for g, e in zip(got, expected):
                np.testing.assert_allclose(np.asarray(g), e.numpy(), atol=1e-4, err_msg=artifact.format)


def test_every_format_gets_its_own_copy_of_the_exported_program(tmp_path):
    """Converters consume what they are given: after one format had lowered the shared ExportedProgram, the next
    failed on its non-persistent buffers (Qwen2's rotary inv_freq, RoBERTa's token_type_ids). Each format takes a
    copy, whatever ran before it."""
    onnx = '[formats.onnx]\nprecision = "fp32"\nopset = 18\n'
    pte_coreml = '[formats.executorch]\nprecision = "fp32"\nbackends = ["coreml"]\n'
    coreml = '[formats.coreml]\nprecision = "fp32"\ncapture = "export"\n'
    targets = [
        write_fast_target(tmp_path, "first", coreml + pte_coreml + onnx),
        write_fast_target(tmp_path, "then", '[formats.executorch]\nprecision = "fp32"\n' + onnx),
    ]
    reports = build(
        BuildRequest(
            targets=[str(t) for t in targets],
            model=f"{PATTERNS}:make_rotary_like",
            inputs=[parse_input_spec("x=1x6x8")],
            out_dir=tmp_path / "dist",
        )
    )
    for report in reports:
        assert report.ok, report.problems
        assert all(a.capture_consumed == "export" for a in report.artifacts), [a.notes for a in report.artifacts]


def test_a_pooling_stride_left_to_its_default_lowers_to_the_core_ml_delegate(tmp_path):
    """Core ML's converter refused max_pool2d(x, 2) in the .pte ('got 2 input(s), expected minimum 3')."""
    target = write_fast_target(
        tmp_path, "pte-coreml", '[formats.executorch]\nprecision = "fp32"\nbackends = ["coreml"]\n'
    )
    report = _build(tmp_path, str(target), "make_pool_net", "x=1x3x8x8")
    assert report.ok, report.problems
    delegation = report.artifacts[0].requirements["delegation"]
    assert "aten.max_pool2d" in str(delegation["delegated_op_types"]) and not delegation["compute_fallback_ops"]


def test_what_tracing_changed_in_the_model_is_put_back_before_torch_export(tmp_path):
    """Swin's .pte was skipped: the TorchScript trace had left a tensor in `self.window_size`, and torch.export
    then refused a branch on it. The export capture starts from the model as eager ran it."""
    target = write_fast_target(tmp_path, "onnx", '[formats.onnx]\nprecision = "fp32"\nopset = 18\n')
    report = _build(tmp_path, str(target), "make_clamps_while_traced", "x=1x4")
    assert report.ok, report.problems
    assert report.capture["export"]["strategy"].startswith("export"), report.capture["export"]
    assert report.artifacts[0].capture_consumed == "export"
