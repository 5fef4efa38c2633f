"""The fresh-process footprint probe counts the artifact's own load, not its runtime's Python imports."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepack.footprint import measure_footprint
from edgepack.inputs import parse_input_spec
from edgepack.pipeline import BuildRequest, build

from .conftest import write_fast_target

TESTS = Path(__file__).parent
# Importing ExecuTorch's Python runtime raises a process's peak memory by ~140 MB; a 6x4x2 MLP's program
# needs a few MB. Counted inside the timed window (as before the fix), the import alone exceeds this.
MAX_TINY_PROGRAM_MB = 50


def test_a_pte_probe_excludes_the_runtime_import(tmp_path):
    target = write_fast_target(tmp_path, "pte", '[formats.executorch]\nprecision = "fp32"\nbackends = ["xnnpack"]\n')
    model, inputs = f"{TESTS / 'models.py'}:make_small_linear", [parse_input_spec("x=1x6")]
    report = build(BuildRequest([str(target)], model, inputs=inputs, out_dir=tmp_path / "dist"))[0]
    pte = Path(report.bundle_dir) / report.artifacts[0].path
    footprint = measure_footprint("executorch", pte, [np.zeros((1, 6), np.float32)], 1)
    assert 0 <= footprint.peak_memory_mb < MAX_TINY_PROGRAM_MB


def test_probes_started_ahead_are_the_ones_the_build_uses_and_none_outlives_it(tmp_path, monkeypatch):
    """android then iot: at the start of the build, android's ONNX, .ptl and .pte probes and iot's opset-17
    ONNX probe (iot's .pte is android's bytes, measured once); each is taken, none started late or for
    nothing, and every probe process has exited when the build returns."""
    from edgepack import pipeline
    from edgepack.footprint import Probes

    log: dict[str, list] = {"started": [], "late": [], "stopped": [], "processes": []}

    class RecordingProbes(Probes):
        def start(self, format_name: str, threads: int, owner: str = "") -> None:
            super().start(format_name, threads, owner)
            log["started"].append(f"{owner}:{format_name}")
            log["processes"].append(self._waiting[-1]._process)

        def take(self, format_name: str, threads: int):
            if not any(p.key == (format_name, threads) for p in self._waiting):
                log["late"].append(format_name)
            return super().take(format_name, threads)

        def stop_unused(self, owner: str | None = None) -> None:
            log["stopped"] += [p.key[0] for p in self._waiting if owner is None or p.owner == owner]
            super().stop_unused(owner)

    monkeypatch.setattr(pipeline, "Probes", RecordingProbes)
    reports = build(BuildRequest(targets=["android", "iot"], out_dir=tmp_path / "dist"))
    assert sorted(log["started"]) == [
        "android:executorch",
        "android:onnx",
        "android:torchscript_lite",
        "iot:onnx",
    ]
    assert log["late"] == [] and log["stopped"] == []
    assert all(process.poll() is not None for process in log["processes"])
    for report in reports:
        for artifact in report.artifacts:
            assert artifact.cold_load_ms is not None and artifact.cold_load_ms > 0, (report.target, artifact.format)


def test_a_probe_that_is_never_asked_is_stopped_and_one_that_fails_says_why(tmp_path):
    from edgepack.footprint import Probes

    with Probes(tmp_path) as probes:
        probes.start("onnx", 1)
        probes.settle()
        process = probes._waiting[0]._process
        assert process.poll() is None  # ready and waiting
    assert process.poll() is not None  # stopped with the pool

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with Probes(tmp_path) as probes:
        probes.start("onnx", 1)
        try:
            measure_footprint("onnx", broken, [np.zeros((1, 1, 8, 8), np.float32)], 1, probes=probes)
        except RuntimeError as exc:
            assert "footprint probe failed" in str(exc) and "Traceback" not in str(exc)
        else:
            raise AssertionError("a probe of a broken file must fail")
