"""`edgepack compare OLD NEW`: quiet on two builds of one model, loud on an enlarged or a slowed one, and its
--fail-on gates exit 1 (2 for a rule it cannot read)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import edgepack
from edgepack.bundle.diff import compare_bundles, latency_change
from edgepack.bundle.gates import Gate, parse_gates
from edgepack.cli import app
from edgepack.errors import UsageError

from .conftest import FAST_TARGET_TEXT

# Enough timed runs for a p50/p90 spread worth the name; ONNX only, so each build takes seconds.
TIMED_ONNX = FAST_TARGET_TEXT.replace("min_runs = 3", "min_runs = 40").replace("max_runs = 3", "max_runs = 40")
FORMATS = '[formats.onnx]\nprecision = "fp32"\nopset = 18\n'


class Net(nn.Module):
    def __init__(self, width: int = 16, repeats: int = 0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, width)
        self.fc2 = nn.Linear(width, 10)
        self.register_buffer("eye", torch.eye(width))
        self.repeats = repeats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        for _ in range(self.repeats):  # x @ I is exactly x: the same outputs, much more work
            h = h @ self.eye
        return self.fc2(h)


def _model(width: int = 16, repeats: int = 0) -> Net:
    torch.manual_seed(0)
    net = Net(width, repeats).eval()
    if width > 16:  # the same function as the base model on its first 16 units: only the size grows
        base = _model()
        with torch.no_grad():
            net.fc1.weight.zero_(), net.fc1.bias.zero_(), net.fc2.weight.zero_()
            net.fc1.weight[:16], net.fc1.bias[:16] = base.fc1.weight, base.fc1.bias
            net.fc2.weight[:, :16], net.fc2.bias[:] = base.fc2.weight, base.fc2.bias
    return net


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    """The base model built twice, an enlarged one (4x the hidden width) and a slowed one (400 identity
    matmuls), each as the `timed` target's bundle folder, with a .zip beside it."""
    root = tmp_path_factory.mktemp("compare")
    target = root / "timed.toml"
    target.write_text(TIMED_ONNX.format(name="timed", formats=FORMATS), encoding="utf-8")
    example = torch.randn(1, 32, generator=torch.Generator().manual_seed(3))
    variants = {"base": _model(), "again": _model(), "enlarged": _model(width=64), "slowed": _model(repeats=400)}
    bundles = {}
    for label, net in variants.items():
        result = edgepack.build(net, example, target=target, out=root / label, name="net", archive=True)
        bundles[label] = result.raise_for_status()["timed"].path
    return bundles


def _compare(*args: str | Path) -> tuple[int, str]:
    """Exit code, and stdout alone with --json (the one document), else stdout and stderr."""
    result = CliRunner().invoke(app, ["compare", *map(str, args)])
    return result.exit_code, result.stdout if "--json" in args else result.output


def test_two_builds_of_the_same_model_are_quiet(builds):
    diff = compare_bundles(builds["base"], builds["again"])
    assert [c.to_json() for t in diff.targets for c in t.flagged] == []
    assert all(c.metric in ("p50_ms", "p90_ms") for t in diff.targets for c in t.changes)  # only timings move
    code, output = _compare(builds["base"], builds["again"], "--fail-on", "size=+5%,p50=+10%,p90=+10%")
    assert code == 0, output
    assert "0 flagged change(s)" in output and "0 of 3 check(s) failed" in output


def test_an_enlarged_model_is_flagged_and_fails_the_size_gate(builds):
    diff = compare_bundles(builds["base"], builds["enlarged"])
    flagged = {(c.scope, c.metric) for t in diff.targets for c in t.flagged}
    assert ("onnx", "size_bytes") in flagged
    size = next(c for t in diff.targets for c in t.changes if c.metric == "size_bytes")
    assert size.new > size.old and size.relative is not None and size.relative > 0.05
    code, output = _compare(builds["base"], builds["enlarged"], "--fail-on", "size=+5%", "--json")
    assert code == 1, output
    document = json.loads(output)
    assert document["ok"] is False and document["failed_gates"][0]["gate"] == "size=+5%"
    assert any(c["metric"] == "model version" for c in document["targets"][0]["changes"])  # other weights
    # The archives compare the same way (sizes are in the manifest).
    zips = [builds[k].with_name("timed.zip") for k in ("base", "enlarged")]
    assert _compare(*zips, "--fail-on", "size=+5%")[0] == 1


def test_a_slowed_model_is_flagged_beyond_the_noise_and_fails_the_latency_gate(builds):
    diff = compare_bundles(builds["base"], builds["slowed"])
    p50 = next(c for t in diff.targets for c in t.changes if c.metric == "p50_ms")
    assert p50.flagged and "beyond the timings' run-to-run spread" in p50.note, p50
    assert not any(c.metric == "model version" for t in diff.targets for c in t.changes)  # same weights
    code, output = _compare(builds["base"], builds["slowed"], "--fail-on", "p50=+10%")
    assert code == 1, output
    assert "FAILED" in output and "p50=+10%" in output


def test_a_latency_gate_on_archives_is_refused_with_the_reason(builds):
    zips = [builds[k].with_name("timed.zip") for k in ("base", "slowed")]
    code, output = _compare(*zips, "--fail-on", "p50=+10%")
    assert code == 2 and "report.json" in output and "a .zip leaves it out" in output


def test_a_change_within_the_spread_is_noise_and_beyond_it_is_not(builds):
    """The noise rule on a real report's figures: a +20 % median still inside the run-to-run spread is not
    flagged; the same change with a tight spread is."""
    report = json.loads((builds["base"] / "report.json").read_text())
    before = report["artifacts"][0]["latency_ms"]
    spread = before["p90"] - before["p50"]
    within = {**before, "p50": before["p50"] + 0.9 * spread, "p90": before["p90"] + 0.9 * spread}
    if spread > 0:  # p90 == p50 to the nanosecond leaves no spread to stay within
        change = latency_change("onnx", "p50", before, within, same_bytes=False)
        assert change is not None and not change.flagged and "within" in change.note
    tight = {"p50": 1.0, "p90": 1.02, "p99": 1.05, "mean": 1.0}
    slower = {"p50": 1.3, "p90": 1.33, "p99": 1.4, "mean": 1.3}
    change = latency_change("onnx", "p50", tight, slower, same_bytes=False)
    assert change is not None and change.flagged
    change = latency_change("onnx", "p50", tight, slower, same_bytes=True)
    assert change is not None and not change.flagged and "machine's" in change.note


def test_the_same_bytes_timed_with_other_threads_are_not_excused_as_noise(builds, tmp_path):
    copy = tmp_path / "timed"
    shutil.copytree(builds["again"], copy)
    report = json.loads((copy / "report.json").read_text())
    report["threads"] += 1
    (copy / "report.json").write_text(json.dumps(report))
    (target,) = compare_bundles(builds["base"], copy).targets
    assert any(c.metric == "timing threads" and c.flagged for c in target.changes)
    assert not any("the difference is the machine's" in c.note for c in target.changes)


def test_model_folders_compare_every_common_target(builds, tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(builds["base"].parent, old)
    shutil.copytree(builds["enlarged"].parent, new)
    diff = compare_bundles(old, new)
    assert [t.target for t in diff.targets] == ["timed"] and diff.ok


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("size=5%", "write the sign '\\+'"),
        ("accuracy=+0.5pt", "write the sign '-'"),
        ("size=+5ms", "takes the unit %"),
        ("p50=+10", "takes the units % or ms"),
        ("sise=+5%", "Did you mean 'size'"),
        ("size=+5%,", "empty rule"),
        ("size=+5%,size=+6%", "size twice"),
        ("size>5%", "cannot be read"),
    ],
)
def test_fail_on_rules_are_read_strictly(rule, message):
    with pytest.raises(UsageError, match=message):
        parse_gates(rule)


def test_fail_on_reads_every_metric():
    assert parse_gates("size=+5%, p50=+10%,p90=+2ms,accuracy=-0.5pt") == [
        Gate("size", 5.0, "%"),
        Gate("p50", 10.0, "%"),
        Gate("p90", 2.0, "ms"),
        Gate("accuracy", 0.5, "pt"),
    ]


def test_compare_of_a_path_that_is_not_a_bundle_is_a_usage_error(tmp_path, builds):
    code, output = _compare(tmp_path, builds["base"])
    assert code == 2 and "neither a bundle" in output
    code, output = _compare(builds["base"], builds["base"], "--fail-on", "size=5%", "--json")
    assert code == 2 and json.loads(output)["ok"] is False
