"""The fresh-process footprint probe counts the artifact's own load, not its runtime's Python imports."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepack.bench import measure_footprint
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
