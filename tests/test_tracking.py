"""--track mlflow: each build is an MLflow run in a real local store, read back through MLflow's own client."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgepack.bundle.signing import key_id
from edgepack.cli import app

from .conftest import write_fast_target


def _client(uri: str):
    mlflow = pytest.importorskip("mlflow", reason='mlflow is not installed: pip install ".[mlflow]" or ".[test]"')
    return mlflow.tracking.MlflowClient(tracking_uri=uri)


def _only_run(client):
    (experiment,) = [e for e in client.search_experiments() if e.name == "edgepack"]
    (run,) = client.search_runs([experiment.experiment_id])
    return run


def _artifact_paths(client, run_id: str, path: str = "") -> set[str]:
    found: set[str] = set()
    for entry in client.list_artifacts(run_id, path or None):
        found |= _artifact_paths(client, run_id, entry.path) if entry.is_dir else {entry.path}
    return found


def test_a_build_logged_to_sqlite_has_its_figures_tags_and_bundle_and_is_registered(ladder_bundle, tmp_path):
    from edgepack.tracking import log_build

    report, key = ladder_bundle
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    client = _client(uri)
    tracked = log_build([report], uri=uri, register="digits", sign_key=key)

    run = client.get_run(tracked.run_id)
    bundle = Path(report.bundle_dir)
    document = json.loads((bundle / "report.json").read_text())
    manifest = json.loads((bundle / "manifest.json").read_text())
    (artifact,) = document["artifacts"]
    assert run.info.status == "FINISHED" and run.info.run_name == "demo-digits-ladder"
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["targets"] == "ladder" and params["ladder.formats"] == "onnx"
    assert params["ladder.onnx.precision_requested"] == "int8-static"
    assert params["ladder.onnx.precision"] == artifact["precision"]
    assert params["ladder.capture_strategy"] == document["capture"]["strategy"]
    assert params["version.torch"] == manifest["provenance"]["versions"]["torch"]
    assert metrics["ladder.onnx.size_bytes"] == artifact["size_bytes"]
    assert metrics["ladder.onnx.p50_ms"] == pytest.approx(artifact["latency_ms"]["p50"])
    assert metrics["ladder.onnx.smoke_max_abs_err"] == pytest.approx(artifact["smoke"]["max_abs_err"])
    assert metrics["ladder.onnx.accuracy_top1_agreement"] == artifact["accuracy"]["top1_agreement"]
    assert metrics["ladder.ok"] == 1.0
    assert tags["edgepack.model_version"] == manifest["model"]["version"]
    assert tags["edgepack.signing_key_id"] == key_id(key)
    git = manifest["provenance"]["git"]
    assert tags.get("edgepack.git_commit") == (git["commit"] if git else None)
    shipped = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert _artifact_paths(client, tracked.run_id) == {f"ladder/{name}" for name in shipped}
    assert {"report.html", "manifest.sig", "demo-digits.onnx"} <= shipped

    (version,) = client.search_model_versions("name='digits'")
    assert version.run_id == tracked.run_id and str(version.version) == tracked.model_version == "1"
    # The store's artifacts sit beside its database, not in the working directory.
    assert (tmp_path / "store" / "mlartifacts").is_dir()


def test_a_file_store_holds_the_run_and_refuses_register(ladder_bundle, tmp_path, monkeypatch):
    """MLflow 3 keeps its file store behind MLFLOW_ALLOW_FILE_STORE; without it the refusal is a usage error."""
    from edgepack.errors import UsageError
    from edgepack.tracking import log_build

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    _client("sqlite://")  # skip without mlflow
    with pytest.raises(UsageError, match="MLflow cannot open this store|MLFLOW_ALLOW_FILE_STORE") as refused:
        log_build([ladder_bundle[0]], uri=uri)
    assert "sqlite:///" in (refused.value.hint or "")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = _client(uri)
    tracked = log_build([ladder_bundle[0]], uri=uri)
    assert client.get_run(tracked.run_id).data.metrics["ladder.ok"] == 1.0
    with pytest.raises(UsageError, match="--register needs a model registry"):
        log_build([ladder_bundle[0]], uri=uri, register="digits")


def test_build_track_mlflow_defaults_to_a_store_in_the_output_folder(tmp_path, monkeypatch):
    _client("sqlite://")  # skip without mlflow
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    target = write_fast_target(tmp_path, "onnx-only", '[formats.onnx]\nprecision = "fp32"\nopset = 18\n')
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    monkeypatch.chdir(work)
    result = CliRunner().invoke(
        app, ["build", "--target", str(target), "--out", str(out), "--track", "mlflow", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"]
    uri = f"sqlite:///{out / 'mlflow.db'}"
    assert f"mlflow: run {_only_run(_client(uri)).info.run_id} in {uri}" in result.stderr
    assert list(work.iterdir()) == []  # nothing in the working directory


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--track", "wandb"], "--track 'wandb' is not a known tracker"),
        (["--register", "digits"], "--register and --tracking-uri need a tracker"),
    ],
)
def test_tracking_options_are_checked_before_the_build(tmp_path, arguments, message):
    result = CliRunner().invoke(app, ["build", "--target", "iot", "--out", str(tmp_path / "out"), *arguments])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "out").exists()


def test_track_mlflow_without_mlflow_says_how_to_install_it(tmp_path):
    """mlflow made unimportable in a child process (sys.modules entry None): the build stops before it starts."""
    code = (
        "import sys; sys.modules['mlflow'] = None; sys.argv = ['edgepack'] + sys.argv[1:]\n"
        "from edgepack.cli import run; run()"
    )
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", code, "build", "--target", "iot", "--out", str(out), "--track", "mlflow"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert done.returncode == 2, done.stderr
    assert "needs the mlflow package" in done.stderr and 'pip install "edgepack[mlflow]"' in done.stderr
    assert not out.exists()


def test_the_git_commit_of_the_models_checkout_is_tagged(tmp_path):
    """A model file committed in a git checkout: the run carries that commit, where MLflow's UI looks for it."""
    from edgepack.inputs import parse_input_spec
    from edgepack.pipeline import BuildRequest, build
    from edgepack.tracking import log_build

    client = _client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    if shutil.which("git") is None:
        pytest.skip("no git on this machine")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "net.py").write_text(
        "import torch\n\ndef make():\n    torch.manual_seed(0)\n    return torch.nn.Sequential(torch.nn.Linear(8, 4)).eval()\n"
    )
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    for args in (["init", "-q"], ["add", "net.py"], ["commit", "-qm", "net"]):
        subprocess.run(git + args, check=True)
    commit = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    target = write_fast_target(tmp_path, "onnx-only", '[formats.onnx]\nprecision = "fp32"\nopset = 18\n')
    request = BuildRequest(
        targets=[str(target)],
        model=f"{repo / 'net.py'}:make",
        inputs=[parse_input_spec("x=1x8")],
        out_dir=tmp_path / "out",
        check_budgets=False,
    )
    tracked = log_build(build(request), uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    tags = client.get_run(tracked.run_id).data.tags
    assert tags["edgepack.git_commit"] == tags["mlflow.source.git.commit"] == commit
    assert tags["edgepack.git_dirty"] == "false" and "edgepack.signing_key_id" not in tags


def test_the_python_api_tracks_a_model_object_build(tmp_path):
    """edgepack.build(model, example, track="mlflow"): the run is on the result and in the store."""
    import torch
    from torch import nn

    import edgepack

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = _client(uri)
    target = write_fast_target(tmp_path, "onnx-only", '[formats.onnx]\nprecision = "fp32"\nopset = 18\n')
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval()
    result = edgepack.build(
        model, torch.randn(1, 4), target=str(target), out=tmp_path / "dist", track="mlflow", tracking_uri=uri
    )
    assert result.ok and result.tracked is not None
    run = client.get_run(result.tracked.run_id)
    assert run.info.status == "FINISHED" and run.data.params["onnx-only.formats"] == "onnx"
    assert result["onnx-only"].report_html_path.is_file()
    assert "onnx-only/report.html" in _artifact_paths(client, result.tracked.run_id)


def test_the_python_api_refuses_a_tracking_uri_without_a_tracker_before_building(tmp_path):
    import torch
    from torch import nn

    import edgepack
    from edgepack.errors import UsageError

    with pytest.raises(UsageError, match="tracking_uri"):
        edgepack.build(nn.Linear(4, 3), torch.randn(1, 4), target="iot", out=tmp_path / "d", tracking_uri="x")
    assert not (tmp_path / "d").exists()
