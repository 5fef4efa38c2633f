"""The wheel users install carries the built-in targets, the manifest schema and the demo model's data and weights."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_targets_and_demo_files(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("edgepack-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for target in ("ios", "android", "iot"):
        assert f"edgepack/targets/{target}.toml" in names
    for data in ("weights.pt", "digits.npz", "DATA.md"):
        assert f"edgepack/demo/{data}" in names
    # Every package of the source tree ships (a format folder missing from pyproject.toml's list would not).
    for init in (ROOT / "edgepack").rglob("__init__.py"):
        assert init.relative_to(ROOT).as_posix() in names
    assert "edgepack/formats/coreml/format.py" in names
    for fragment in (ROOT / "edgepack" / "formats").glob("*/requirements.schema.json"):  # read by manifest_schema()
        assert fragment.relative_to(ROOT).as_posix() in names
    assert "edgepack/schemas/manifest.schema.json" in names  # verify and inspect read it on users' machines
    assert (
        "edgepack/formats/torchscript_lite/runtimes/pytorch_lite_1.13.1.json" in names
    )  # every .ptl is checked with it
    assert not any(n.startswith("tests/") for n in names)
