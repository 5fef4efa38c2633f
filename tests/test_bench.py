"""The latency protocol's pieces (interleaved timing, the fresh-process footprint probe, report fields)
and the benchmark's table and JSON on a tiny real run. Nothing here asserts a timing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgepack.bench import Latency, OtherProcessesLoad, interleaved_samples, paired_ratio, time_interleaved
from edgepack.benchmarks.suite import Case, Row, run_case
from edgepack.benchmarks.table import TARGETS, check_targets, markdown, onnx_against_by_hand, to_json
from edgepack.footprint import measure_footprint
from edgepack.pipeline import _note_if_slower, _note_if_unsteady
from edgepack.report import ArtifactReport
from edgepack.targets import BenchSettings

TINY = BenchSettings(threads=1, warmup=1, min_runs=5, max_runs=5, min_seconds=0.0)


def test_interleaved_timing_gives_every_call_the_same_runs():
    counts = {"a": 0, "b": 0}

    def call(name):
        counts[name] += 1

    timed = time_interleaved({"a": lambda: call("a"), "b": lambda: call("b")}, TINY, block=5, settle_s=0.0)
    assert {name: t.runs for name, t in timed.items()} == {"a": 5, "b": 5}
    assert counts == {"a": 1 + 1 + 5, "b": 1 + 1 + 5}  # warm-up, the untimed run of the block, the timed runs
    assert all(0 <= t.p50 <= t.p99 for t in timed.values())


def test_each_round_starts_one_call_further_on():
    """Round r's blocks are taken in the order rotated by r, and a call's block r is its samples of round r."""
    order: list[str] = []
    calls = {name: (lambda name=name: order.append(name)) for name in "abc"}
    settings = BenchSettings(threads=1, warmup=0, min_runs=4, max_runs=4, min_seconds=0.0)
    samples = interleaved_samples(calls, settings, block=1, settle_s=0.0)
    blocks = [order[i : i + 2][0] for i in range(0, len(order), 2)]  # one untimed + one timed run per block
    assert blocks == list("abcbcacababc")
    assert {name: len(s) for name, s in samples.items()} == {"a": 4, "b": 4, "c": 4}


def test_demo_bundle_reports_cold_load_and_peak_memory(demo_reports):
    """Built-in targets measure the footprint; Core ML cannot run here, so it has none."""
    for report in demo_reports.values():
        for artifact in report.artifacts:
            data = artifact.to_json()
            if artifact.latency is None:
                assert data["cold_load_ms"] is None and data["peak_memory_mb"] is None
                continue
            assert data["cold_load_ms"] > 0 and data["peak_memory_mb"] >= 0, data
            assert "fresh process" in data["footprint_method"]
    assert "## Cold start and memory" in demo_reports["android"].to_markdown()


def test_footprint_probe_failure_says_why(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(RuntimeError, match="footprint probe failed"):
        measure_footprint("onnx", broken, [np.zeros((1, 1, 8, 8), np.float32)], 1)


@pytest.fixture(scope="module")
def demo_rows(tmp_path_factory: pytest.TempPathFactory) -> list[Row]:
    return run_case(Case("demo", None), TINY, tmp_path_factory.mktemp("bench"), footprint=False, log=lambda _: None)


def test_benchmark_tiny_run_has_every_path(demo_rows):
    labels = {(r.path, r.format, r.precision) for r in demo_rows}
    assert {
        ("eager", "pytorch", "fp32"),
        ("edgepack", "onnx", "fp32"),
        ("edgepack", "torchscript_lite", "fp32"),
        ("by hand", "onnx", "fp32"),
        ("by hand", "onnx", "int8-dynamic"),
        ("by hand", "torchscript_lite", "fp32"),
        ("edgepack", "executorch", "fp32"),
        ("edgepack", "executorch", "int8-static"),
    } <= labels
    fp32 = [r for r in demo_rows if r.precision == "fp32"]
    assert all(r.p50_ms is not None and r.runs == TINY.max_runs for r in fp32)
    assert all(r.max_abs_err < 1e-4 and r.cosine > 0.9999 for r in fp32)
    assert {r.flavour for r in demo_rows if r.path == "edgepack"} >= {"android", "iot"}


def test_benchmark_table_and_json(demo_rows, tmp_path):
    text = markdown(demo_rows, check_targets(demo_rows), 1)
    assert text.count("\n| demo |") == len(demo_rows)
    assert "The issue's targets" not in text  # the demo model has none
    document = json.loads(json.dumps(to_json(demo_rows, [], 1, {"min_runs": 5})))
    assert len(document["rows"]) == len(demo_rows) and document["protocol"]["threads"] == 1


def _row(model: str, path: str, fmt: str, precision: str, p50: float) -> Row:
    return Row(model, path, fmt, precision, p50_ms=p50)


def test_targets_met_not_met_and_missing():
    rows = [
        _row("resnet_style", "eager", "pytorch", "fp32", 10.0),
        _row("resnet_style", "edgepack", "onnx", "fp32", 3.0),
        _row("resnet_style", "by hand", "onnx", "fp32", 5.0),
        _row("resnet_style", "edgepack", "torchscript_lite", "fp32", 6.0),
    ]
    checks = {c.what: c for c in check_targets(rows)}
    assert len(checks) == len([t for t in TARGETS if t[0] == "resnet_style"])
    onnx = checks["ONNX fp32 vs eager"]
    assert (onnx.status, round(onnx.ratio, 2), round(onnx.by_hand_ratio, 2)) == ("met", 0.3, 0.5)
    assert checks[".ptl vs eager"].status == "not met" and "1.20x the target" in checks[".ptl vs eager"].distance
    int8 = checks["ONNX int8 vs ONNX fp32"]
    assert int8.status == "not measured" and "no onnx int8" in int8.distance
    assert "| resnet_style | ONNX fp32 vs eager | <= 0.40x | 0.30x | 0.50x |" in markdown(
        rows, list(checks.values()), 2
    )


def _latency(p50: float, p90: float) -> Latency:
    return Latency(p50=p50, p90=p90, p99=p90, mean=p50, runs=30)


def test_int8_is_called_slower_only_beyond_the_fp32_spread():
    clear, noise, faster = (ArtifactReport("onnx", "int8-static") for _ in range(3))
    clear.latency, clear.latency_before = _latency(2.0, 2.2), _latency(1.0, 1.1)
    noise.latency, noise.latency_before = _latency(1.02, 1.1), _latency(1.0, 1.2)
    faster.latency, faster.latency_before = _latency(0.5, 0.6), _latency(1.0, 1.1)
    for report in (clear, noise, faster):
        _note_if_slower(report)
    assert "slower than fp32" in clear.notes[0] and "2.00x" in clear.notes[0]
    assert "no faster than fp32" in noise.notes[0] and "spread" in noise.notes[0]
    assert faster.notes == []


def test_a_busy_host_makes_the_report_say_its_timings_are_unsteady():
    steady, busy = ArtifactReport("onnx", "fp32"), ArtifactReport("onnx", "fp32")
    steady.latency = busy.latency = _latency(0.05, 0.06)
    _note_if_unsteady(steady, _latency(0.9, 1.1))
    _note_if_unsteady(busy, _latency(0.9, 208.0))
    assert steady.notes == []
    assert "unsteady" in busy.notes[0] and "eager PyTorch" in busy.notes[0]


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads Linux's /proc/stat")
def test_other_processes_keeping_a_core_busy_are_measured():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # the child is up and spinning
        with OtherProcessesLoad() as load:
            time.sleep(1.0)
    finally:
        spinner.kill()
        spinner.wait()
    assert load.cores is not None and load.cores >= 0.5  # one spinning process, whatever else runs here


def test_a_busy_host_is_named_in_the_notes():
    report = ArtifactReport("onnx", "fp32")
    report.latency = _latency(0.05, 0.06)
    _note_if_unsteady(report, _latency(0.9, 1.0), other_cores=1.2)
    assert "busy host" in report.notes[0] and "1.2 of" in report.notes[0]


def test_a_paired_ratio_tells_a_real_difference_from_the_run_s_noise():
    """Two calls timed in one interleaved run: the same call twice is level (its interval holds 1.0) even when
    a round was disturbed for both; 10% slower is slower; the table and JSON say which."""
    rng = np.random.default_rng(3)
    rounds, block = 40, 5
    disturbed = np.repeat(rng.choice([1.0, 1.5], size=rounds, p=[0.8, 0.2]), block)  # whole rounds slowed
    base = 3.0 * disturbed * (1 + 0.02 * rng.standard_normal(rounds * block))
    same = 3.0 * disturbed * (1 + 0.02 * rng.standard_normal(rounds * block))
    slower = 1.1 * same
    ratio, low, high = paired_ratio(list(same), list(base))
    assert low <= 1.0 <= high and high - low < 0.05
    assert paired_ratio(list(slower), list(base))[1] > 1.05
    with pytest.raises(ValueError, match="two rounds"):
        paired_ratio([1.0] * 5, [1.0] * 5)

    def rows(edgepack_samples):
        mine = Row("resnet_style", "edgepack", "onnx", "fp32", "android", p50_ms=float(np.median(edgepack_samples)))
        hand = Row("resnet_style", "by hand", "onnx", "fp32", p50_ms=float(np.median(base)))
        mine.samples_ms, hand.samples_ms = list(edgepack_samples), list(base)
        return [mine, hand]

    level, behind = onnx_against_by_hand(rows(same)), onnx_against_by_hand(rows(slower))
    assert level[0].status == "met" and level[0].verdict.startswith("level")
    assert behind[0].status == "not met" and behind[0].verdict == "slower"
    text = markdown(rows(slower), [], 2)
    assert "| resnet_style | android | 1.1" in text and "| slower | not met |" in text
    document = json.loads(json.dumps(to_json(rows(same), [], 2, {})))
    assert document["onnx_fp32_vs_by_hand"][0]["status"] == "met"
    assert "samples_ms" not in document["rows"][0]
