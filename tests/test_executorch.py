"""The ExecuTorch format (.pte) in ExecuTorch's real runtime (no mocks): the demo's android and ios bundles,
int8 through pt2e, a dynamic dimension at two sizes, the delegation table on a CNN and an encoder,
install-into, and reproducible bytes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgepack.bundle.inspect import inspect_bundle
from edgepack.bundle.install import install_bundle
from edgepack.bundle.verify import verify_bundle
from edgepack.errors import UsageError
from edgepack.formats import FORMATS
from edgepack.inputs import parse_input_spec
from edgepack.pipeline import BuildRequest, build

from .conftest import write_fast_target
from .test_install import app_copy

MODELS = Path(__file__).parent / "models.py"
PTE = FORMATS["executorch"]


def _artifact(report, name="executorch"):
    return next(a for a in report.artifacts if a.format == name)


def _run_pte(path: Path, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The .pte in ExecuTorch's runtime, called directly (not through edgepack)."""
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(path.read_bytes())  # kept alive: the method runs in its memory
    return list(program.load_method("forward").execute(inputs))


def _build(tmp_path: Path, name: str, formats: str, **request) -> object:
    tmp_path.mkdir(parents=True, exist_ok=True)
    target = write_fast_target(tmp_path, name, formats)
    (report,) = build(BuildRequest(targets=[str(target)], out_dir=tmp_path / "dist", **request))
    return report


# --- the demo bundles (built once per session by conftest) ------------------------------------


def test_the_android_demo_ships_a_passing_xnnpack_pte_that_matches_eager(demo_reports):
    report = demo_reports["android"]
    pte = _artifact(report)
    assert report.ok and pte.smoke.status == "passed" and pte.precision == "fp32"
    assert "ExecuTorch's runtime" in pte.smoke.reason
    assert pte.latency is not None and pte.latency.p50 > 0  # timed with the other formats, in the same run
    requirements = pte.requirements
    assert requirements["backends"] == ["XnnpackBackend"]
    assert requirements["delegation"]["compute_ops_delegated_percent"] == 100.0
    assert requirements["delegation"]["by_delegate"]["XnnpackBackend"] == requirements["delegation"]["total_ops"]
    assert any(note.startswith("delegation: XnnpackBackend") for note in pte.notes)
    bundle = Path(report.bundle_dir)
    golden_in, golden_out = np.load(bundle / "golden/inputs.npz"), np.load(bundle / "golden/expected.npz")
    for i in range(golden_in["image"].shape[0]):
        (out,) = _run_pte(bundle / pte.path, [torch.from_numpy(golden_in["image"][i])])
        np.testing.assert_allclose(out.numpy(), golden_out["logits"][i], atol=1e-4, rtol=1e-4)


def test_the_android_bundle_verifies_with_its_bundled_program_and_inspects(demo_reports, tmp_path):
    bundle = Path(demo_reports["android"].bundle_dir)
    result = verify_bundle(bundle)
    assert result.ok, result.to_json()["failures"]
    statuses = {c.name: c.status for c in result.checks}
    assert statuses["smoke executorch demo-digits.pte"] == "ok"
    assert statuses["smoke bundled program demo-digits.bpte"] == "ok"
    manifest = json.loads((bundle / "manifest.json").read_text())
    (entry,) = [a for a in manifest["artifacts"] if a["format"] == "executorch"]
    assert entry["requirements"]["bundled_program"]["test_cases"] == manifest["golden"]["samples"]
    assert manifest["provenance"]["versions"]["executorch"].startswith("1.5")
    assert manifest["provenance"]["versions"]["torchao"]
    assert manifest["converters"]["executorch"].startswith("1.5")
    inspected = inspect_bundle(bundle)
    assert "executorch" in [a["format"] for a in inspected["artifacts"]]
    # A changed byte in the bundled program is found (and never loaded).
    copy = tmp_path / "android"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / "demo-digits.bpte").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "demo-digits.bpte").write_bytes(bytes(data))
    broken = verify_bundle(copy)
    assert not broken.ok and any("demo-digits.bpte" in c.name and c.status == "failed" for c in broken.checks)


def test_the_bundled_program_self_test_can_fail(demo_reports, tmp_path):
    from edgepack.formats.executorch import bundled

    bundle = Path(demo_reports["android"].bundle_dir)
    golden_in, golden_out = np.load(bundle / "golden/inputs.npz"), np.load(bundle / "golden/expected.npz")
    good, bad = tmp_path / "good.bpte", tmp_path / "bad.bpte"
    bundled.write(bundle / "demo-digits.pte", good, [[golden_in["image"][0]]], [[golden_out["logits"][0]]])
    bundled.write(bundle / "demo-digits.pte", bad, [[golden_in["image"][0]]], [[golden_out["logits"][0] + 1.0]])
    assert bundled.self_test(good, 1e-3, 0.0) == 1
    with pytest.raises(RuntimeError):
        bundled.self_test(bad, 1e-3, 0.0)


def test_inspect_of_a_pte_bundle_does_not_import_executorch(demo_reports):
    bundle = demo_reports["android"].bundle_dir
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom edgepack.cli import app\n"
        f"result = CliRunner().invoke(app, ['inspect', {bundle!r}])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'executorch'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_ios_pte_is_core_ml_delegated_and_its_embedded_program_checked_by_the_reference_executor(
    demo_reports, tmp_path
):
    from edgepack.formats.coreml.executor import run_package
    from edgepack.formats.executorch.program import extract_coreml, read

    report = demo_reports["ios"]
    pte = _artifact(report)
    assert report.ok and pte.smoke.status == "passed"
    assert "reference executor" in pte.smoke.reason and "not from ExecuTorch" in pte.smoke.reason
    assert pte.requirements["backends"] == ["CoreMLBackend"]
    assert pte.requirements["delegation"]["by_delegate"] == {
        "CoreMLBackend": pte.requirements["delegation"]["total_ops"]
    }
    assert pte.latency is None and "Apple platforms" in pte.latency_reason  # the reference executor is never timed
    bundle = Path(report.bundle_dir)
    saved = read(bundle / pte.path)
    assert saved.delegates == ["CoreMLBackend"] and saved.kernels == []
    package, metadata = extract_coreml(saved.delegate_payload(0), tmp_path / "coreml")
    golden_in, golden_out = np.load(bundle / "golden/inputs.npz"), np.load(bundle / "golden/expected.npz")
    result = run_package(package, {metadata["inputNames"][0]: golden_in["image"][0]})
    np.testing.assert_allclose(result[metadata["outputNames"][0]], golden_out["logits"][0], atol=1e-3, rtol=1e-3)
    # The embedded model's identifier (the phone's compiled-model cache key) comes from its content.
    assert metadata["identifier"].startswith("executorch_")
    verification = verify_bundle(bundle)
    assert verification.ok, verification.to_json()["failures"]
    assert {c.name: c.status for c in verification.checks}["smoke bundled program demo-digits.bpte"] == "skipped"


def test_install_into_takes_the_pte_and_its_bundled_program_and_refuses_bundles_without_it(demo_reports, tmp_path):
    android = app_copy(tmp_path, "android")
    installed = install_bundle(android, Path(demo_reports["android"].bundle_dir))
    assert {"demo-digits.pte", "demo-digits.bpte", "demo-digits.ptl", "demo-digits.onnx"} <= set(installed.files)
    assert (installed.destination / "demo-digits.bpte").is_file()
    ios = app_copy(tmp_path, "ios")
    installed = install_bundle(ios, Path(demo_reports["ios"].bundle_dir))
    assert {"demo-digits.pte", "demo-digits.bpte", "demo-digits.mlpackage"} <= set(installed.files)
    with pytest.raises(UsageError, match="ios demo app runs coreml"):
        install_bundle(app_copy(tmp_path / "again", "ios"), Path(demo_reports["android"].bundle_dir))


# --- precisions, dynamic sizes, delegation on other models --------------------------------------


def test_int8_static_is_pt2e_within_the_accuracy_budget_or_walks_the_ladder(tmp_path):
    report = _build(tmp_path, "pte-int8", '[formats.executorch]\nprecision = "int8-static"\n')
    pte = _artifact(report)
    assert report.ok, report.problems
    attempts = pte.quantization["attempts"]
    assert attempts[0]["precision"] == "int8-static" and attempts[0]["accuracy"] is not None
    if pte.precision == "int8-static":
        assert pte.accuracy.top1_agreement >= 0.99 and pte.accuracy.cosine >= 0.99
        assert any("pt2e static int8" in note for note in pte.notes)
        kinds = pte.requirements["delegation"]["delegated_op_types"]["XnnpackBackend"]
        assert any(op.startswith("quantized_decomposed.") for op in kinds)  # the int8 kernels run in XNNPACK
        assert pte.size_before_bytes and pte.size_bytes < 0.5 * pte.size_before_bytes
    else:
        assert len(attempts) > 1 and not attempts[0]["ok"]


def test_int8_dynamic_quantizes_the_linear_layers(tmp_path):
    report = _build(tmp_path, "pte-dyn", '[formats.executorch]\nprecision = "int8-dynamic"\n')
    pte = _artifact(report)
    assert report.ok, report.problems
    assert pte.precision == "int8-dynamic" and any("dynamic int8 for linear layers" in n for n in pte.notes)


@pytest.fixture(scope="module")
def encoder_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pte-encoder")
    target = write_fast_target(folder, "pte-encoder", '[formats.executorch]\nprecision = "fp32"\n')
    (report,) = build(
        BuildRequest(
            targets=[str(target)],
            model=f"{MODELS}:make_encoder",
            inputs=[parse_input_spec("ids=1xSEQ=8:int64:0..50")],
            out_dir=folder / "dist",
        )
    )
    return report


def test_a_dynamic_dimension_runs_at_two_sizes(encoder_report):
    from tests.models import make_encoder

    pte = _artifact(encoder_report)
    assert encoder_report.ok, encoder_report.problems
    assert pte.requirements["dynamic_dims"] == {"SEQ": {"min": 1, "max": 16}}
    model = make_encoder().eval()
    path = Path(encoder_report.bundle_dir) / pte.path
    for seq in (5, 16):
        ids = torch.randint(0, 50, (1, seq))
        outputs = _run_pte(path, [ids])
        with torch.no_grad():
            expected = model(ids)
        np.testing.assert_allclose(outputs[0].numpy(), expected["logits"].numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(outputs[1].numpy(), expected["pooled"].numpy(), atol=1e-4, rtol=1e-4)
    with pytest.raises(RuntimeError):  # beyond the planned bound: refused by the runtime, not wrong numbers
        _run_pte(path, [torch.randint(0, 50, (1, 17))])


def test_the_encoder_delegation_table_names_what_falls_back(encoder_report):
    delegation = _artifact(encoder_report).requirements["delegation"]
    # XNNPACK has no float embedding lookup (and, with a dynamic length, leaves layer norms and reductions): the
    # portable kernels run them, and each is named.
    assert "aten.embedding" in delegation["compute_fallback_ops"]
    for op in delegation["compute_fallback_ops"]:
        assert any(entry.startswith(op + " x") for entry in delegation["fallback_ops"])
    assert delegation["by_delegate"]["XnnpackBackend"] > 0
    assert "aten.linear" in delegation["delegated_op_types"]["XnnpackBackend"]
    notes = _artifact(encoder_report).notes
    assert any("portable CPU fallback" in n and "aten.embedding" in n for n in notes)


def test_a_resnet_style_cnn_is_fully_delegated_to_xnnpack(tmp_path):
    report = _build(
        tmp_path,
        "pte-cnn",
        '[formats.executorch]\nprecision = "fp32"\n',
        model="edgepack.benchmarks.models:ResNetStyle",
        inputs=[parse_input_spec("image=1x3x32x32")],
    )
    pte = _artifact(report)
    assert report.ok, report.problems
    delegation = pte.requirements["delegation"]
    assert delegation["compute_ops_delegated_percent"] == 100.0 and delegation["compute_fallback_ops"] == []
    assert {"aten.convolution", "aten.add"} <= set(delegation["delegated_op_types"]["XnnpackBackend"])


# --- reproducible bytes --------------------------------------------------------------------------


def test_two_builds_give_identical_pte_bytes(tmp_path, monkeypatch, demo_reports):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    coreml = '[formats.executorch]\nprecision = "fp32"\nbackends = ["coreml"]\n'
    first = _build(tmp_path / "a", "pte-repro", coreml)
    second = _build(tmp_path / "b", "pte-repro", coreml)
    paths = [Path(r.bundle_dir) / "demo-digits.pte" for r in (first, second)]
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].with_suffix(".bpte").read_bytes() == paths[1].with_suffix(".bpte").read_bytes()
    # XNNPACK: the same settings as the android target's build earlier in this session give the same bytes.
    xnnpack = _build(tmp_path / "c", "pte-xnnpack", '[formats.executorch]\nprecision = "fp32"\n')
    android = Path(demo_reports["android"].bundle_dir) / "demo-digits.pte"
    assert (Path(xnnpack.bundle_dir) / "demo-digits.pte").read_bytes() == android.read_bytes()


def test_bad_options_are_usage_errors():
    from edgepack.targets import Budgets, FormatSettings, Tolerance

    def settings(**options):
        return FormatSettings("executorch", "fp32", Tolerance(), Budgets(), options)

    for options, match in (
        ({"backends": ["xnnpak"]}, "Did you mean 'xnnpack'"),
        ({"backends": "xnnpack"}, "not a list"),
        ({"minimum_deployment_target": "iOS15"}, "not supported"),
        ({"dynamic_max": {"SEQ": "big"}}, "whole numbers"),
    ):
        with pytest.raises(UsageError, match=match):
            PTE.validate(settings(**options))


def test_every_xnnpack_fusion_pattern_holds_the_op_edgepack_looks_for_before_skipping_its_family():
    """The shortcut in lower.without_unmatchable_patterns is only exact while every pattern of a family
    contains an op named by one of the family's words: checked here against the installed ExecuTorch."""
    import importlib

    from edgepack.formats.executorch.lower import PATTERN_FAMILIES

    for module_name, function, _, words in PATTERN_FAMILIES:
        patterns = list(getattr(importlib.import_module(module_name), function)())
        assert patterns, module_name
        for pattern in patterns:
            names = {str(node.target).lower() for node in pattern.graph.nodes if node.op == "call_function"}
            assert any(word in name for name in names for word in words), (module_name, sorted(names))


@pytest.mark.parametrize("with_patterns", [False, True])
def test_skipping_unmatchable_fusion_patterns_changes_no_byte(monkeypatch, with_patterns):
    """The demo CNN has neither anchor, so its patterns are skipped; an attention + bilinear model keeps them
    (this one matches none of them either). Either way the .pte is the one lowering with every pattern gives."""
    import torch.nn.functional as F
    from torch import nn

    from edgepack.demo import INPUT_SHAPE, make_model
    from edgepack.formats.executorch import lower

    class AttendAndUpsample(nn.Module):
        def forward(self, x):
            q = x.flatten(2).transpose(1, 2)
            attended = F.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(x.shape)
            return F.interpolate(attended, scale_factor=2, mode="bilinear")

    model = AttendAndUpsample() if with_patterns else make_model()
    example = (torch.randn(1, 3, 8, 8) if with_patterns else torch.randn(INPUT_SHAPE),)
    assert bool(lower.op_names(torch.export.export(model, example)) & {"upsample_bilinear2d.vec"}) == with_patterns

    def pte() -> bytes:
        return lower.lower(torch.export.export(model, example), ["xnnpack"], "fp32", "iOS16", {})[1]

    shortcut = pte()
    monkeypatch.setattr(lower, "PATTERN_FAMILIES", ())
    assert pte() == shortcut
