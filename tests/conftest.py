"""Shared fixtures: the demo model is built once per session for every built-in target."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgepack.pipeline import BuildRequest, build
from edgepack.report import BuildReport

TESTS = Path(__file__).parent
# Fast timing settings for tests that build models other than the demo (timing is not what they test).
FAST_TARGET_TEXT = """
name = "{name}"
description = "test target"
[smoke]
atol = 1e-4
rtol = 1e-4
min_cosine = 0.9999
[bench]
threads = 1
warmup = 1
min_runs = 3
max_runs = 3
min_seconds = 0.0
footprint = false
{formats}
"""
ALL_FORMATS = """
[formats.torchscript_lite]
precision = "fp32"
[formats.coreml]
precision = "fp32"
[formats.onnx]
precision = "fp32"
opset = 18
"""


def write_fast_target(folder: Path, name: str = "fast", formats: str = ALL_FORMATS) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(FAST_TARGET_TEXT.format(name=name, formats=formats), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def demo_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuildReport]:
    """The README's first command, through the Python API: the demo model for every built-in target."""
    out = tmp_path_factory.mktemp("dist")
    reports = build(BuildRequest(targets=["ios", "android", "iot"], out_dir=out))
    return {r.target: r for r in reports}


@pytest.fixture(scope="session")
def fast_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fast_target(tmp_path_factory.mktemp("targets"))


# The precision ladder walked to its end: the demo's ONNX asked in int8-static under an accuracy budget no
# int8 build meets, so every rung is tried and the per-layer sensitivity is measured (for the HTML report's
# precision and sensitivity charts and for the MLflow run's figures).
LADDER_FORMATS = """
[accuracy]
min_sqnr_db = 60
[quantized_smoke]
atol = 0.1
rtol = 0.1
min_cosine = 0.99
[formats.onnx]
precision = "int8-static"
opset = 18
"""


@pytest.fixture(scope="session")
def ladder_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[BuildReport, Path]:
    """A signed bundle whose ONNX went down the whole precision ladder; with the private key it was signed with."""
    from edgepack.bundle.signing import generate_keypair

    folder = tmp_path_factory.mktemp("ladder")
    key = folder / "release.key"
    generate_keypair(key, folder / "release.pub")
    target = write_fast_target(folder, "ladder", LADDER_FORMATS)
    (report,) = build(BuildRequest(targets=[str(target)], out_dir=folder / "dist", sign_key=key))
    return report, key
