"""Work shared across a build's targets keeps every bundle byte-identical to building it alone, and a Core ML
package loaded once and run many times gives, on every run, what a fresh load gives."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from edgepack.benchmarks.roofline import count_flops
from edgepack.formats.coreml.executor import LoadedPackage, run_package
from edgepack.inputs import parse_input_spec
from edgepack.pipeline import BuildRequest, build

from .conftest import write_fast_target

TESTS = Path(__file__).parent
ONNX = '[formats.onnx]\nprecision = "fp32"\nopset = 18\noptimization = "extended"\n'


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_conversion_shared_by_two_targets_is_the_bytes_each_gets_alone(tmp_path):
    first, second = write_fast_target(tmp_path, "first", ONNX), write_fast_target(tmp_path, "second", ONNX)
    model, inputs = f"{TESTS / 'models.py'}:make_small_linear", [parse_input_spec("x=1x6")]
    together = build(BuildRequest([str(first), str(second)], model, inputs=inputs, out_dir=tmp_path / "together"))
    alone = build(BuildRequest([str(second)], model, inputs=inputs, out_dir=tmp_path / "alone"))[0]
    shared = together[1]
    assert all(r.ok for r in together) and alone.ok
    copied, converted = (
        Path(shared.bundle_dir) / shared.artifacts[0].path,
        Path(alone.bundle_dir) / alone.artifacts[0].path,
    )
    assert _sha(copied) == _sha(converted) == shared.artifacts[0].sha256
    # The copy carries the conversion's notes (the timing notes of each run aside).
    assert _conversion_notes(shared) == _conversion_notes(alone) != []


def _conversion_notes(report) -> list[str]:
    return [n for n in report.artifacts[0].notes if not n.startswith(("timings", "latency:"))]


def test_the_targets_of_a_build_are_timed_in_one_run_and_the_same_bytes_once(tmp_path):
    """Three targets, two sharing an ONNX table and one with its own opset: one timing run (one "bench" stage),
    one eager figure in every report, and the shared bytes' figure given to both targets, said so."""
    from edgepack.progress import Status

    first, second = write_fast_target(tmp_path, "first", ONNX), write_fast_target(tmp_path, "second", ONNX)
    other = write_fast_target(tmp_path, "other", ONNX.replace("opset = 18", "opset = 17"))
    model, inputs = f"{TESTS / 'models.py'}:make_small_linear", [parse_input_spec("x=1x6")]
    events: list[tuple[str, Status, str]] = []

    class Recorder:
        def event(self, stage: str, status: Status, detail: str) -> None:
            events.append((stage, status, detail))

    request = BuildRequest([str(first), str(second), str(other)], model, inputs=inputs, out_dir=tmp_path / "dist")
    reports = build(request, Recorder())
    assert [e[1] for e in events if e[0] == "bench"] == [Status.START, Status.DONE]
    assert "first, second, other" in next(e[2] for e in events if e[0] == "bench")
    bench_done = max(i for i, e in enumerate(events) if e[0] == "bench")
    assert all(i > bench_done for i, e in enumerate(events) if e[0] == "bundle")  # each bundle after the timing
    assert reports[0].eager_latency is reports[1].eager_latency is reports[2].eager_latency  # one eager run
    shared, own = reports[1].artifacts[0], reports[2].artifacts[0]
    assert shared.sha256 == reports[0].artifacts[0].sha256 != own.sha256
    assert shared.latency == reports[0].artifacts[0].latency and shared.latency is not reports[0].artifacts[0].latency
    assert own.latency is not None and own.latency != shared.latency
    assert any("same bytes as first's onnx" in n for n in shared.notes)
    assert not any(n.startswith("latency:") for n in reports[0].artifacts[0].notes + own.notes)


def test_a_loaded_package_run_twice_matches_fresh_loads(tmp_path):
    target = write_fast_target(tmp_path, "coreml", '[formats.coreml]\nprecision = "fp16"\n')
    model, inputs = f"{TESTS / 'models.py'}:make_small_linear", [parse_input_spec("x=1x6")]
    report = build(BuildRequest([str(target)], model, inputs=inputs, out_dir=tmp_path / "dist"))[0]
    package = Path(report.bundle_dir) / report.artifacts[0].path
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((1, 6)).astype(np.float32)} for _ in range(2)]
    loaded = LoadedPackage(package)
    reused = [loaded.run(feed) for feed in feeds]
    fresh = [run_package(package, feed) for feed in feeds]
    for got, want in zip(reused, fresh):
        assert got.keys() == want.keys()
        for name in got:
            np.testing.assert_array_equal(got[name], want[name])
    assert not np.array_equal(*(next(iter(r.values())) for r in reused))  # two inputs, two answers


def test_flops_are_counted_from_the_eager_model():
    linear = torch.nn.Linear(16, 8)
    assert count_flops(linear, (torch.randn(1, 16),)) == 2 * 16 * 8
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    assert count_flops(conv, (torch.randn(1, 3, 8, 8),)) == 2 * 3 * 4 * 9 * 8 * 8
