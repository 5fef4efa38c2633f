"""`--precision auto`: every candidate the format offers, gated by the accuracy budget, timed in one run;
the winner is within budget, and a scheme that breaks the model's answers is never chosen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgepack import hostarch
from edgepack.errors import UsageError
from edgepack.inputs import parse_input_spec
from edgepack.pipeline import BuildRequest, build

from .conftest import write_fast_target

TESTS = Path(__file__).parent
ONNX_AUTO = '[formats.onnx]\nprecision = "auto"\nopset = 18\n'


def _build(tmp_path: Path, model: str, inputs: str, **options) -> tuple:
    target = write_fast_target(tmp_path, "auto", ONNX_AUTO)
    request = BuildRequest(
        targets=[str(target)], model=model, inputs=[parse_input_spec(inputs)], out_dir=tmp_path / "dist", **options
    )
    report = build(request)[0]
    return report, report.artifacts[0]


def test_auto_lists_every_candidate_with_a_verdict_and_ships_one_within_budget(tmp_path):
    report, onnx = _build(tmp_path, f"{TESTS / 'models.py'}:make_small_linear", "x=1x6")
    assert report.ok and onnx.precision_requested == "auto"
    auto = onnx.quantization["auto"]
    candidates = {c["precision"]: c for c in auto["candidates"]}
    # No calibration data for this model: int8-static is left out, and the report says how to get it tried.
    assert list(candidates) == ["fp32", "int8-dynamic"]
    assert any(why.startswith("int8-static: no calibration data") for why in auto["left_out"])
    assert all(c["verdict"] in ("ok", "missed", "failed") and c["size_bytes"] for c in candidates.values())
    assert all(c["p50_ms"] is not None for c in candidates.values() if c["verdict"] == "ok")
    chosen = candidates[auto["chosen"]]
    assert chosen["chosen"] and chosen["verdict"] == "ok" and onnx.precision == auto["chosen"]
    fastest = min((c for c in candidates.values() if c["verdict"] == "ok"), key=lambda c: c["p50_ms"])
    assert chosen is fastest and auto["why"].startswith("fastest within the accuracy budget")
    assert any("seeded random inputs, not on real data" in note for note in onnx.notes)
    bundle = Path(report.bundle_dir)
    markdown = (bundle / "report.md").read_text()
    assert "### onnx: --precision auto (optimize for latency)" in markdown
    assert all(f"| {name} |" in markdown or f"| **{name}** (shipped) |" in markdown for name in candidates)
    shipped = json.loads((bundle / "report.json").read_text())["artifacts"][0]
    assert shipped["quantization"]["auto"]["chosen"] == onnx.precision
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["artifacts"][0]["precision"] == onnx.precision
    # report.html charts every candidate's p50 and size, the winner marked as shipped.
    html = (bundle / "report.html").read_text()
    assert f"onnx: --precision auto (latency) chose {onnx.precision}" in html
    for chart in ("auto-latency", "auto-size"):
        start = html.index(f'data-chart="{chart}"')
        assert html[start : html.index("</svg>", start)].count("<rect") >= len(candidates)


def test_auto_never_ships_an_int8_that_breaks_the_answers(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", x=rng.uniform(0, 1, size=(32, 1, 16)).astype(np.float32))
    np.savez(tmp_path / "eval.npz", x=rng.uniform(0, 1, size=(64, 1, 16)).astype(np.float32))
    report, onnx = _build(
        tmp_path,
        f"{TESTS / 'auto_models.py'}:make_near_ties",
        "x=1x16",
        calibration=str(tmp_path / "calib.npz"),
        eval_data=str(tmp_path / "eval.npz"),
    )
    auto = onnx.quantization["auto"]
    verdicts = {c["precision"]: c["verdict"] for c in auto["candidates"]}
    assert verdicts == {"fp32": "ok", "int8-dynamic": "missed", "int8-static": "missed"}
    missed = [c for c in auto["candidates"] if c["verdict"] == "missed"]
    assert all(c["accuracy"]["top1_agreement"] < 0.99 for c in missed)
    assert onnx.precision == "fp32" and report.ok
    assert not any("seeded random" in note for note in onnx.notes)


def test_size_criterion_ships_the_smallest_within_budget(tmp_path):
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(2).normal(size=(16, 1, 6)).astype(np.float32))
    report, onnx = _build(
        tmp_path,
        f"{TESTS / 'models.py'}:make_small_linear",
        "x=1x6",
        calibration=str(tmp_path / "calib.npz"),
        optimize_for="size",
    )
    auto = onnx.quantization["auto"]
    within = [c for c in auto["candidates"] if c["verdict"] == "ok"]
    assert auto["criterion"] == "size" and auto["evidence"] == "file size"
    assert onnx.size_bytes == min(c["size_bytes"] for c in within)


def test_an_unknown_criterion_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError) as caught:
        _build(tmp_path, f"{TESTS / 'models.py'}:make_small_linear", "x=1x6", optimize_for="speed")
    assert "--optimize-for 'speed'" in caught.value.message and "latency" in caught.value.hint
    assert not (tmp_path / "dist").exists()


@pytest.mark.skipif(hostarch.host_arch() == "arm64", reason="needs a host of another architecture than arm64")
def test_qnnpack_timings_on_a_non_arm_host_do_not_rank_the_ptl_candidates(tmp_path):
    """int8 .ptl runs qnnpack, the phones' fast path and slow on x86: auto does not rank it on x86 timings
    (for it or against it); it ships the smallest within budget and says the host timings were not used."""
    target = write_fast_target(tmp_path, "phone", '[formats.torchscript_lite]\nprecision = "auto"\n')
    target.write_text('arch = "arm64"\n' + target.read_text(), encoding="utf-8")
    request = BuildRequest(
        targets=[str(target)],
        model=f"{TESTS / 'models.py'}:make_small_linear",
        inputs=[parse_input_spec("x=1x6")],
        out_dir=tmp_path / "dist",
    )
    ptl = build(request)[0].artifacts[0]
    auto = ptl.quantization["auto"]
    candidates = {c["precision"]: c for c in auto["candidates"]}
    assert candidates["int8-dynamic"]["host_timing_only"] and not candidates["fp32"]["host_timing_only"]
    assert "no evidence for the device" in candidates["int8-dynamic"]["timing"]
    within = [c for c in candidates.values() if c["verdict"] == "ok"]
    assert auto["evidence"].startswith("file size; host timings")
    assert candidates[ptl.precision]["size_bytes"] == min(c["size_bytes"] for c in within)
