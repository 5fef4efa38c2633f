"""`edgepack build --target all --precision int8-static` leaves the working folder exactly as it was.

onnxruntime's quant_pre_process writes sym_shape_infer_temp.onnx and a <uuid>.data (the model's weights)
into the working folder, and leaves them when shape inference fails; every converter and quantizer that
drops files runs in a scratch folder that is removed (edgepack.paths.scratch_cwd). The temporary folder
is left as it was too."""

from __future__ import annotations

import tempfile
from pathlib import Path

from typer.testing import CliRunner

from edgepack.cli import app


def listing(folder: Path) -> list[tuple[str, int]]:
    return sorted(
        (p.relative_to(folder).as_posix(), p.stat().st_size if p.is_file() else -1) for p in folder.rglob("*")
    )


def test_int8_static_for_every_target_leaves_cwd_and_temp_as_they_were(tmp_path, monkeypatch):
    work, tmp, out = tmp_path / "work", tmp_path / "tmp", tmp_path / "out"
    work.mkdir(), tmp.mkdir()
    (work / "notes.txt").write_text("the user's own file")
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    before = listing(work)
    result = CliRunner().invoke(
        app, ["build", "--target", "all", "--precision", "int8-static", "--out", str(out), "--quiet", "--no-budgets"]
    )
    assert result.exit_code == 0, result.output
    assert listing(work) == before
    assert listing(tmp) == []
    assert sorted(p.name for p in (out / "demo-digits").iterdir()) == ["android", "ios", "iot"]
