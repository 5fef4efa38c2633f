"""The Python API on model objects (edgepack.build / doctor / verify / inspect), with models defined here:
nothing is named by an importable string."""

from __future__ import annotations

import gc
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import edgepack
from edgepack.errors import UsageError

from .conftest import write_fast_target

LITE_AND_ONNX = '[formats.torchscript_lite]\nprecision = "fp32"\n[formats.onnx]\nprecision = "fp32"\nopset = 18\n'
ONNX_ONLY = '[formats.onnx]\nprecision = "fp32"\nopset = 18\n'


class SmallNet(nn.Module):
    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)
        self.head = nn.Linear(channels, 5)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(image))).mean(dim=(2, 3)))


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.proj = nn.Linear(16, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)
        return self.proj(hidden).sum(dim=1) / attention_mask.sum(dim=1, keepdim=True).to(torch.float32)


class BranchyNet(nn.Module):
    """Data-dependent control flow: a trace records one branch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # the hazard doctor must point at
            return self.fc(x)
        return -self.fc(x)


def _net() -> SmallNet:
    torch.manual_seed(0)
    return SmallNet()


def _files(bundle: Path) -> dict[str, str]:
    """Every file of a bundle but the reports (which hold this run's timings) with its sha256."""
    return {
        p.relative_to(bundle).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(bundle.rglob("*"))
        if p.is_file() and not p.name.startswith("report.")
    }


def test_build_takes_the_model_object_and_returns_typed_results(tmp_path):
    """The issue's first 'done when': a model object and an example tensor, the built-in android target."""
    net = _net()  # left in training mode on purpose: the build must not switch the caller's object
    before = {k: v.clone() for k, v in net.state_dict().items()}
    example = torch.randn(1, 3, 16, 16)
    frozen = gc.get_freeze_count()
    result = edgepack.build(net, example, target="android", out=tmp_path / "dist")
    assert gc.get_freeze_count() == frozen  # only the `edgepack` command, which owns its process, freezes imports
    assert result.raise_for_status() is result and result.ok and result.problems == []
    bundle = result["android"]
    assert bundle.path == tmp_path / "dist" / "small-net" / "android" and bundle.manifest_path.is_file()
    assert result.paths == {"android": bundle.path}
    assert bundle.eager_latency is not None and bundle.eager_latency.p50 > 0
    assert {a.format for a in bundle.artifacts} == {f.name for f in edgepack_target("android").formats}
    for artifact in bundle.artifacts:
        assert artifact.path is not None and artifact.path.exists() and artifact.path.parent == bundle.path
        assert artifact.smoke.passed and artifact.smoke.max_abs_err is not None
        assert artifact.size_bytes and artifact.sha256 and artifact.precision == "fp32"
        assert artifact.latency is not None and artifact.latency.p50 > 0 and artifact.latency.runs >= 30
    assert bundle.artifact("onnx").format == "onnx"
    with pytest.raises(KeyError, match="no 'coreml' artifact in the android bundle"):
        bundle.artifact("coreml")
    # The example is golden sample 0 of the bundle; the caller's object came out as it went in.
    golden = json.loads((bundle.path / "golden" / "index.json").read_text())
    assert golden["inputs"][0]["name"] == "image" and golden["inputs"][0]["shape"] == [4, 1, 3, 16, 16]
    raw = (bundle.path / golden["inputs"][0]["file"]).read_bytes()
    assert raw[: example.numel() * 4] == example.numpy().tobytes()
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    manifest = json.loads(bundle.manifest_path.read_text())
    assert manifest["model"]["source"]["kind"] == "python-object"
    assert manifest["model"]["source"]["reference"].endswith("test_api:SmallNet")


def edgepack_target(name: str):
    from edgepack.formats import known_options
    from edgepack.targets import load_target

    return load_target(name, known_options())


def test_named_inputs_with_a_dynamic_dimension_build_for_iot(tmp_path):
    """The second 'done when': a dict of named tensors and dynamic={...} on the built-in iot target."""
    torch.manual_seed(0)
    ids, mask = torch.randint(0, 100, (1, 12)), torch.ones(1, 12, dtype=torch.int64)
    result = edgepack.build(
        TinyEncoder(),
        {"attention_mask": mask, "input_ids": ids},  # any order: forward's decides
        target="iot",
        out=tmp_path,
        dynamic={"input_ids": {1: "SEQ"}, "attention_mask": {1: "SEQ"}},
    )
    result.raise_for_status()
    manifest = json.loads(result["iot"].manifest_path.read_text())
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask"]
    assert all(i["dynamic_axes"] == {"1": "SEQ"} for i in manifest["inputs"])
    assert manifest["inputs"][1]["value_range"] == [1, 2]  # samples stay within the example's values
    assert all(a.smoke.passed for a in result.artifacts), [a.smoke.reason for a in result.artifacts]
    capture = result["iot"].report.capture
    assert capture["checked_inputs"] > 4  # the golden samples, and the dynamic dimension at other sizes


def test_two_builds_of_one_object_in_one_process_give_identical_bundles(tmp_path, monkeypatch):
    """No state carried between calls: TorchScript numbers the classes it compiles per process (the .ptl's
    shape guard is ___torch_mangle_N, N counting every compile so far); the .ptl renumbers them."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    target = write_fast_target(tmp_path, "lite-onnx", LITE_AND_ONNX)
    net, example = _net().eval(), torch.randn(1, 3, 16, 16)
    first = edgepack.build(net, example, target=str(target), out=tmp_path / "a").raise_for_status()
    second = edgepack.build(net, example, target=target, out=tmp_path / "b").raise_for_status()
    one, two = _files(first["lite-onnx"].path), _files(second["lite-onnx"].path)
    assert one == two
    assert {"small-net.ptl", "small-net.onnx", "manifest.json"} <= set(one)


def test_doctor_on_an_object_returns_typed_hazards_with_their_line():
    diagnosis = edgepack.doctor(BranchyNet(), torch.randn(2, 4))
    assert isinstance(diagnosis, edgepack.Diagnosis)
    found = [h for h in diagnosis.hazards if not h.in_library]
    assert found, diagnosis.raw
    line = next(n for n, text in enumerate(Path(__file__).read_text().splitlines(), 1) if "the hazard doctor" in text)
    assert any(h.file == __file__ and h.line == line and h.fix for h in found), found
    assert diagnosis.attempts and diagnosis.attempts[0].strategy == "trace"
    assert diagnosis.ok == (diagnosis.strategy is not None)
    assert diagnosis.model == "branchy-net"


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("api-onnx")
    target = write_fast_target(folder, "onnx-only", ONNX_ONLY)
    result = edgepack.build(_net().eval(), torch.randn(1, 3, 16, 16), target=target, out=folder / "dist", archive=True)
    return result.raise_for_status()["onnx-only"].path


def test_verify_and_inspect_take_a_path(onnx_bundle):
    check = edgepack.verify(onnx_bundle)
    assert check.ok, check.to_json()
    assert edgepack.verify(str(onnx_bundle.with_name("onnx-only.zip"))).ok
    summary = edgepack.inspect(onnx_bundle)
    assert summary["model"]["name"] == "small-net" and summary["artifacts"][0]["latency_ms"]["p50"] > 0
    model = onnx_bundle / "small-net.onnx"
    original = model.read_bytes()
    model.write_bytes(b"not a model")
    try:
        failed = edgepack.verify(onnx_bundle)
        assert not failed.ok and any("small-net.onnx" in f"{c.name} {c.detail}" for c in failed.failures)
    finally:
        model.write_bytes(original)
    with pytest.raises(UsageError, match="does not exist"):
        edgepack.inspect(onnx_bundle.parent / "nowhere")


def test_verify_and_inspect_from_python_do_not_import_torch(onnx_bundle):
    archive = str(onnx_bundle.with_name("onnx-only.zip"))
    code = (
        "import sys, edgepack\n"
        f"assert edgepack.verify({archive!r}).ok\n"
        f"assert edgepack.inspect({archive!r})['target']['name'] == 'onnx-only'\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_calibration_takes_a_dataloader_of_labelled_batches(tmp_path):
    target = write_fast_target(tmp_path, "onnx-int8", '[formats.onnx]\nprecision = "int8-static"\nopset = 18\n')
    torch.manual_seed(1)
    images = torch.randn(24, 3, 16, 16)
    loader = DataLoader(TensorDataset(images, torch.zeros(24, dtype=torch.int64)), batch_size=8)
    result = edgepack.build(
        _net().eval(),
        images[:1],
        target=target,
        out=tmp_path / "dist",
        calibration=loader,
        eval_data=[images[i : i + 4].numpy() for i in range(0, 24, 4)],
    )
    (artifact,) = result.raise_for_status().artifacts
    assert artifact.precision_requested == "int8-static" and artifact.accuracy is not None
    quantization = result["onnx-int8"].report.artifacts[0].quantization or {}
    assert quantization["calibration"] == "24 samples from a DataLoader of batches"
    assert quantization["eval_set"] == "24 samples from a list of batches"


def test_errors_name_the_python_parameter_not_the_cli_flag(tmp_path):
    net, example = _net(), torch.randn(1, 3, 16, 16)
    target = write_fast_target(tmp_path, "onnx-only", ONNX_ONLY)
    with pytest.raises(UsageError) as missing:
        edgepack.build(net, example, target=target, out=tmp_path, eval_data=str(tmp_path / "missing.npz"))
    assert "eval_data" in str(missing.value) and "--eval-data" not in str(missing.value)
    with pytest.raises(UsageError) as precision:
        edgepack.build(net, example, target=target, out=tmp_path, precision="int9")
    assert "precision=" in precision.value.message and "--precision" not in str(precision.value)
    with pytest.raises(UsageError, match="example_inputs is missing"):
        edgepack.build(net, target=target)
    with pytest.raises(UsageError, match=r"example_inputs\[0\] is a list"):
        edgepack.build(net, ([1.0, 2.0],), target=target)
    with pytest.raises(UsageError, match="example_inputs holds 2 tensors, but SmallNet.forward takes 1"):
        edgepack.build(net, (example, example), target=target)
    with pytest.raises(UsageError, match="dynamic names pixels, which is not an input"):
        edgepack.build(net, example, target=target, dynamic={"pixels": {2: "H"}})
    with pytest.raises(UsageError, match=r"dynamic\['image'\]\[2\] is 'h'"):
        edgepack.build(net, example, target=target, dynamic={"image": {2: "h"}})
    with pytest.raises(UsageError, match="example_inputs skips input_ids"):
        edgepack.build(TinyEncoder(), {"attention_mask": torch.ones(1, 4, dtype=torch.int64)}, target=target)
    with pytest.raises(UsageError, match="target is missing"):
        edgepack.build(net, example)
    with pytest.raises(UsageError, match="model is a int"):
        edgepack.build(3, example, target=target)
    assert not any(tmp_path.glob("small-net*")), "a refused build wrote nothing"


def test_a_factory_works_and_a_failed_check_raises_for_status(tmp_path):
    """A class is a factory; a budget no model meets fails the build, and raise_for_status says why."""
    target = write_fast_target(tmp_path, "tiny-budget", ONNX_ONLY + "[formats.onnx.budgets]\nmax_size_mb = 0.0001\n")
    result = edgepack.build(SmallNet, torch.randn(1, 3, 16, 16), target=target, out=tmp_path / "dist")
    assert not result.ok and result["tiny-budget"].path.name == "tiny-budget.failed"
    with pytest.raises(edgepack.BuildFailed, match="size_mb .* exceeds the budget") as failed:
        result.raise_for_status()
    assert failed.value.result is result and failed.value.exit_code == 1


def test_the_object_api_is_exported():
    import edgepack.api as api

    for name in (
        "build",
        "doctor",
        "verify",
        "inspect",
        "BuildResult",
        "Bundle",
        "Artifact",
        "Diagnosis",
        "BuildFailed",
    ):
        assert getattr(edgepack, name) is getattr(api, name), name


def test_the_build_request_form_still_returns_reports(tmp_path):
    from edgepack import BuildRequest

    target = write_fast_target(tmp_path, "onnx-only", ONNX_ONLY)
    reports = edgepack.build(BuildRequest(targets=[str(target)], out_dir=tmp_path / "dist"))
    assert isinstance(reports, list) and reports[0].ok and reports[0].model == "demo-digits"
