"""Host figures are not device figures: latency timed on another CPU architecture than the target's is
labelled a host measurement everywhere and fails no device budget; on the target's own architecture it does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgepack import hostarch
from edgepack.cli import app
from edgepack.errors import UsageError
from edgepack.formats import known_options
from edgepack.targets import load_target

from .conftest import write_fast_target

MODELS = Path(__file__).parent / "models.py"
# A p50 no artifact can meet: 1 ns.
IMPOSSIBLE_BUDGET = '[formats.onnx]\nprecision = "fp32"\nopset = 18\n[formats.onnx.budgets]\nmax_p50_ms = 0.000001\n'
OTHER_ARCH = "arm64" if hostarch.host_arch() != "arm64" else "x86_64"


def _target(folder: Path, arch: str) -> Path:
    path = write_fast_target(folder, f"dev-{arch}", IMPOSSIBLE_BUDGET)
    path.write_text(f'arch = "{arch}"\n' + path.read_text(), encoding="utf-8")
    return path


def _build(tmp_path: Path, arch: str):
    return CliRunner().invoke(
        app,
        ["build", "--target", str(_target(tmp_path, arch)), "--model", f"{MODELS}:make_small_linear"]
        + ["--input", "x=1x6", "--out", str(tmp_path / "dist")],
    )


def test_a_host_measurement_is_labelled_and_does_not_fail_the_device_budget(tmp_path):
    result = _build(tmp_path, OTHER_ARCH)
    assert result.exit_code == 0, result.output
    assert f"p50 ms ({hostarch.host_arch()} host)" in result.stdout
    assert "not applied" in result.stdout
    bundle = next((tmp_path / "dist").glob(f"*/dev-{OTHER_ARCH}"))
    report = json.loads((bundle / "report.json").read_text())
    origin = report["latency_measured_on"]
    assert origin["host_measurement"] and not origin["latency_budget_applied"]
    assert origin["measured_on"] == hostarch.host_arch() and origin["target_arch"] == OTHER_ARCH
    onnx = report["artifacts"][0]
    assert onnx["latency_measured_on"] == f"{hostarch.host_arch()} host"
    latency_budget = next(b for b in onnx["budgets"] if b["metric"] == "p50_ms")
    assert latency_budget["value"] > latency_budget["limit"] and latency_budget["ok"] and not latency_budget["applied"]
    assert any("not failed" in note for note in onnx["notes"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["target"]["arch"] == OTHER_ARCH
    assert manifest["build"]["latency_measured_on"]["host_measurement"] is True
    markdown = (bundle / "report.md").read_text()
    assert "**host measurement**" in markdown and f"p50 ms ({hostarch.host_arch()} host)" in markdown


def test_on_the_targets_own_architecture_the_latency_budget_fails_the_build(tmp_path):
    result = _build(tmp_path, hostarch.host_arch())
    assert result.exit_code == 1
    assert "p50_ms" in result.stdout and "exceeds the budget" in result.stdout
    assert "host)" not in result.stdout


def test_an_unknown_arch_is_a_usage_error_naming_the_file(tmp_path):
    path = _target(tmp_path, "sparc")
    with pytest.raises(UsageError) as caught:
        load_target(str(path), known_options())
    assert str(path) in caught.value.message and "'arch'" in caught.value.message
    assert "arm64" in caught.value.hint


def test_spellings_of_one_architecture_are_one_name():
    assert hostarch.normalize("aarch64") == hostarch.normalize("ARM64") == "arm64"
    assert hostarch.normalize("AMD64") == "x86_64" and hostarch.normalize("sparc") is None
