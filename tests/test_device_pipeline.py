"""The device pass through whole builds: a model traced with cuda-pinned placements (imitated on
this CPU-only machine, see gpu_imitation) ships for android and iot with bundles whose saved code
pins no device, that run on the CPU and match eager PyTorch."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.jit.mobile as mobile

from edgepack.capture import ladder as capture_module
from edgepack.capture.devices import pinned_devices
from edgepack.capture.ladder import CaptureError
from edgepack.inputs import parse_input_spec
from edgepack.noise import quiet_converter
from edgepack.pipeline import BuildRequest, build

from . import models
from .conftest import write_fast_target
from .gpu_imitation import pin

MODELS = Path(models.__file__)
MODEL = f"{MODELS}:make_device_patterns"
INPUT = "x=2x4"


def _gpu_like_trace(original):
    def trace(model, example, device="cpu"):
        return pin(original(model, example, device))

    return trace


def _request(targets: list[str], out: Path) -> BuildRequest:
    return BuildRequest(
        targets=targets, model=MODEL, inputs=[parse_input_spec(INPUT)], out_dir=out, check_budgets=False
    )


@pytest.fixture(scope="module")
def gpu_reports(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(capture_module, "trace_module", _gpu_like_trace(capture_module.trace_module))
        reports = build(_request(["android", "iot"], tmp_path_factory.mktemp("gpu")))
    return {r.target: r for r in reports}


def _line(text: str) -> int:
    return next(n for n, line in enumerate(MODELS.read_text().splitlines(), start=1) if text in line)


def test_the_imitated_gpu_trace_fails_on_the_cpu_without_the_pass(tmp_path):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(capture_module, "trace_module", _gpu_like_trace(capture_module.trace_module))
        patch.setattr(capture_module.rewrite, "make_device_agnostic", lambda module, policy: (module, []))
        with pytest.raises(CaptureError) as failure:
            build(_request(["iot"], tmp_path))
    [trace] = [a for a in failure.value.attempts if a.strategy == "trace"]
    assert not trace.ok and "cuda" in trace.divergence[0]["reason"].lower()


def test_gpu_traced_bundles_are_device_agnostic_and_list_every_rewrite(gpu_reports):
    for report in gpu_reports.values():
        assert report.ok, report.problems
        assert report.device_agnostic
        document = report.to_json()
        assert document["device_agnostic"] is True
        capture = document["capture"]
        assert capture["device_policy"] == "agnostic" and capture["device_agnostic"] and not capture["pinned_devices"]
        # The scripted branch asks the data for a bool: meta tensors have none, so the run cannot finish.
        assert capture["meta_check"].startswith("could not check") and "meta" in capture["meta_check"]
        rewrites = capture["rewrites"]
        kinds = {r["kind"] for r in rewrites}
        assert {"attribute_to_buffer", "device_constant", "mask_to_index", "param_device", "tensor_constant"} <= kinds
        ops = {r["op"] for r in rewrites if r["kind"] == "device_constant"}
        assert {"aten::zeros", "aten::arange", "aten::to", "aten::ones", "aten::linspace"} <= ops, ops
        manifest = json.loads((Path(report.bundle_dir) / "manifest.json").read_text())
        assert manifest["capture"]["device_agnostic"] is True and manifest["capture"]["rewrites"] == rewrites
        assert manifest["provenance"]["capture"]["rewrites"] == rewrites
        sources = {r["source"] for r in rewrites}
        for pattern in (
            "torch.zeros(x.shape[0]",
            "h = x.to(self.weight.device)",
            "torch.linspace(0.0",
            "torch.ones(h.shape[-1]",
            "torch.full([h.shape[-1]]",
        ):
            assert f"{MODELS}:{_line(pattern)}" in sources, pattern


def test_the_saved_lite_code_pins_nothing_and_matches_eager_on_the_cpu(gpu_reports):
    report = gpu_reports["android"]
    [lite] = [a for a in report.artifacts if a.format == "torchscript_lite"]
    path = Path(report.bundle_dir) / lite.path
    assert lite.devices.to_json() == {
        "checked": True,
        "device_agnostic": True,
        "pinned": [],
        "kept": [],
        "note": "device literals read back from the saved code",
    }
    assert pinned_devices(path).clean
    code = "".join(
        zipfile.ZipFile(path).read(n).decode()
        for n in zipfile.ZipFile(path).namelist()
        if "/code/" in n and n.endswith(".py")
    )
    assert "cuda" not in code and "prim.device(" in code
    model = models.make_device_patterns()
    for x in (torch.randn(2, 4), -torch.randn(3, 4)):  # both scripted branches, another batch size
        with quiet_converter():
            got = mobile._load_for_lite_interpreter(str(path))(x)
        with torch.no_grad():
            want = model(x)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            torch.testing.assert_close(g, w, atol=1e-6, rtol=0)


def test_the_onnx_bundles_run_on_the_cpu_and_match_eager(gpu_reports):
    model = models.make_device_patterns()
    x = torch.randn(2, 4)
    for report in gpu_reports.values():
        [onnx] = [a for a in report.artifacts if a.format == "onnx"]
        assert onnx.devices.checked is False and "no device placement" in onnx.devices.note
        session = ort.InferenceSession(str(Path(report.bundle_dir) / onnx.path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            want = model(x)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), atol=1e-5, rtol=1e-5)


def test_a_bundle_left_pinned_is_reported_not_device_agnostic(tmp_path):
    """Without the graph pass a CPU trace keeps torch.device("cpu") literals: it runs here, but the
    check on the saved .ptl finds them, and the build is not ok."""
    target = write_fast_target(tmp_path, "lite", '[formats.torchscript_lite]\nprecision = "fp32"\n')
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(capture_module.rewrite, "make_device_agnostic", lambda module, policy: (module, []))
        [report] = build(_request([str(target)], tmp_path / "dist"))
    [lite] = report.artifacts
    assert lite.smoke.status == "passed"
    assert lite.devices.checked and not lite.devices.device_agnostic
    assert any('torch.device("cpu")' in p for p in lite.devices.pinned)
    assert not report.ok and not report.device_agnostic
    assert any("not device-agnostic" in p for p in report.problems)
    assert Path(report.bundle_dir).name == "lite.failed"


def test_target_policy_pins_to_the_phone_cpu_and_says_so(tmp_path):
    target = write_fast_target(
        tmp_path,
        "lite",
        '[formats.torchscript_lite]\nprecision = "fp32"\n[formats.onnx]\nprecision = "fp32"\nopset = 18\n',
    )
    request = _request([str(target)], tmp_path / "dist")
    request.device_policy = "target"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(capture_module, "trace_module", _gpu_like_trace(capture_module.trace_module))
        [report] = build(request)
    assert report.ok, report.problems
    capture = report.to_json()["capture"]
    assert capture["device_policy"] == "target"
    assert any(r["kind"] == "target_device" and r["device"] == "cuda:0" for r in capture["rewrites"])
    lite, onnx = report.artifacts
    assert not lite.devices.device_agnostic and not lite.devices.pinned  # pinned to the CPU on purpose
    assert onnx.devices.device_agnostic and not onnx.devices.checked  # an ONNX graph has nothing to pin
    assert not report.device_agnostic and capture["meta_check"].startswith("not run")
    assert any('torch.device("cpu")' in kept for kept in lite.devices.kept), lite.devices


def test_trace_device_options_are_checked_before_any_work(tmp_path):
    from edgepack.errors import UsageError

    for device, message in (
        ("cuda", "no usable CUDA device"),
        ("npu", "not a device name"),
        ("mps", "only cpu and cuda"),
    ):
        request = _request(["iot"], tmp_path)
        request.trace_device = device
        with pytest.raises(UsageError, match=message):
            build(request)
    request = _request(["iot"], tmp_path)
    request.trace_device, request.check_budgets = "auto", False
    [report] = build(request)
    assert report.capture["trace_device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_quantized_variant_goes_through_the_same_device_pass(tmp_path):
    """int8-dynamic .ptl recaptures the quantized eager model: it must be as device-agnostic as the capture."""
    target = write_fast_target(tmp_path, "lite", '[formats.torchscript_lite]\nprecision = "int8-dynamic"\n')
    request = BuildRequest(
        targets=[str(target)],
        model=f"{MODELS}:make_tiny_minilm",
        inputs=[parse_input_spec("ids=1x16:int64:0..100")],
        out_dir=tmp_path / "dist",
    )
    [report] = build(request)
    [lite] = report.artifacts
    assert lite.precision == "int8-dynamic", lite.notes
    assert lite.devices.checked and lite.devices.device_agnostic, lite.devices
    assert report.device_agnostic and report.ok, report.problems
