"""End to end: the built-in demo model for every built-in target, as the README's first command does it."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch.jit.mobile as mobile

from edgepack import demo
from edgepack.bundle.files import sha256_of

EXPECTED_FORMATS = {
    "ios": ["coreml", "executorch", "onnx"],
    "android": ["executorch", "torchscript_lite", "onnx"],
    "iot": ["onnx", "executorch"],
}
ARTIFACT_KEYS = {"format", "path", "size_bytes", "sha256", "smoke", "latency_ms"}


@pytest.mark.parametrize("target", ["ios", "android", "iot"])
def test_every_target_builds_a_passing_bundle(demo_reports, target):
    report = demo_reports[target]
    assert report.ok, report.problems
    assert [a.format for a in report.artifacts] == EXPECTED_FORMATS[target]
    bundle = Path(report.bundle_dir)
    assert bundle.name == target and bundle.parent.name == "demo-digits"
    for name in ("manifest.json", "report.json", "report.md", "golden/inputs.npz", "golden/expected.npz"):
        assert (bundle / name).is_file(), name
    leftovers = [p.name for p in bundle.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], "staging folders must not survive a build"


@pytest.mark.parametrize("target", ["ios", "android", "iot"])
def test_report_json_follows_the_contract(demo_reports, target):
    report = json.loads((Path(demo_reports[target].bundle_dir) / "report.json").read_text())
    assert {"target", "model", "bundle_dir", "ok", "artifacts"} <= set(report)
    assert report["target"] == target and report["model"] == "demo-digits" and report["ok"] is True
    for artifact in report["artifacts"]:
        assert ARTIFACT_KEYS <= set(artifact)
        assert artifact["format"] in ("torchscript_lite", "coreml", "onnx", "executorch")
        assert set(artifact["smoke"]) == {"status", "reason", "max_abs_err", "cosine"}
        assert artifact["smoke"]["status"] in ("passed", "failed", "skipped")
        latency = artifact["latency_ms"]
        if latency is None:
            assert artifact["latency_reason"]
        else:
            assert set(latency) == {"p50", "p90", "p99", "mean"}
            assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    assert report["baseline"]["eager_latency_ms"]["p50"] > 0


def test_runnable_artifacts_pass_their_smoke_test_with_measured_error(demo_reports):
    for report in demo_reports.values():
        for artifact in report.artifacts:
            if artifact.format == "coreml":
                continue  # fp16 compute: its own tolerance, checked above
            if artifact.format == "executorch" and report.target == "ios":  # the Core ML delegate: not timed here
                assert artifact.smoke.status == "passed" and artifact.smoke.max_abs_err < 1e-4, artifact.smoke.reason
                assert artifact.latency is None and "Apple platforms" in artifact.latency_reason
                continue
            assert artifact.smoke.status == "passed", artifact.smoke.reason
            assert artifact.smoke.max_abs_err < 1e-4
            assert artifact.smoke.cosine > 0.9999
            assert artifact.latency is not None and artifact.latency.runs >= 30


@pytest.mark.skipif(platform.system() == "Darwin", reason="on macOS Core ML predictions run for real")
def test_coreml_numerics_are_checked_by_the_reference_executor_off_macos(demo_reports):
    coreml = demo_reports["ios"].artifacts[0]
    assert coreml.format == "coreml"
    assert coreml.smoke.status == "passed", coreml.smoke.reason
    assert "reference executor" in coreml.smoke.reason and "not Core ML itself" in coreml.smoke.reason
    assert 0 < coreml.smoke.max_abs_err < 0.05  # fp16 compute: close, never bit-exact
    assert coreml.latency is None and "macOS" in coreml.latency_reason  # the executor is never timed
    assert coreml.requirements["minimum_deployment_target"] == "iOS16"
    assert coreml.requirements["specification_version"] == 7
    assert "conv" in coreml.requirements["operators"]


def test_manifest_describes_inputs_outputs_and_hashes(demo_reports):
    bundle = Path(demo_reports["android"].bundle_dir)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["inputs"] == [
        {
            "name": "image",
            "shape": [1, 1, 32, 32],
            "dtype": "float32",
            "dynamic_axes": {},
            "layout": "NCHW",
            "preprocessing": {"scale": 1 / 16, "mean": demo.MEAN, "std": demo.STD},
        }
    ]
    assert manifest["outputs"] == [{"name": "logits", "shape": [1, 10], "dtype": "float32", "dynamic_axes": {}}]
    assert manifest["labels"] == [str(d) for d in range(10)]
    assert manifest["preprocessing"]["mean"] == demo.MEAN
    assert manifest["target"]["name"] == "android" and len(manifest["target"]["sha256"]) == 64
    assert {"torch", "onnx", "onnxruntime"} <= set(manifest["converters"])
    for artifact in manifest["artifacts"]:
        assert sha256_of(bundle / artifact["path"]) == artifact["sha256"]
        assert artifact["tolerance"]["atol"] > 0
    lite = next(a for a in manifest["artifacts"] if a["format"] == "torchscript_lite")
    assert lite["requirements"]["bytecode_version"] == 8
    assert "aten::_convolution" in lite["requirements"]["operators"]


def test_golden_vectors_reproduce_in_the_shipped_lite_model(demo_reports):
    bundle = Path(demo_reports["android"].bundle_dir)
    inputs, expected = np.load(bundle / "golden/inputs.npz"), np.load(bundle / "golden/expected.npz")
    assert inputs["image"].shape == (4, 1, 1, 32, 32) and expected["logits"].shape == (4, 1, 10)
    model = mobile._load_for_lite_interpreter(str(bundle / "demo-digits.ptl"))
    import torch

    for image, logits in zip(inputs["image"], expected["logits"]):
        (got,) = model(torch.from_numpy(image))
        np.testing.assert_allclose(got.numpy(), logits, atol=1e-5)


def test_iot_onnx_is_written_at_the_targets_opset(demo_reports):
    report = demo_reports["iot"]
    onnx_model = onnx.load(str(Path(report.bundle_dir) / report.artifacts[0].path))
    assert [o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert report.artifacts[0].requirements["opset"] == 17


def test_shipped_onnx_classifies_the_held_out_split_like_eager(demo_reports):
    """The real task, not just four samples: top-1 on all 360 held-out digits."""
    report = demo_reports["iot"]
    session = ort.InferenceSession(str(Path(report.bundle_dir) / report.artifacts[0].path))
    images, labels = demo.load_split("eval")
    predictions = np.array([session.run(None, {"image": img[None].numpy()})[0].argmax() for img in images])
    assert (predictions == labels.numpy()).mean() >= 0.95
