"""Lineage in MLflow (`--track mlflow`, or `log_build` from Python): one MLflow run per build.

The run records, for every target bundle of the build: parameters (target, formats, precisions, capture
strategy, converter versions), metrics (size, p50/p90/p99, smoke errors, accuracy against eager fp32),
tags (model version hash, git commit, signing key id) and the bundle folders as run artifacts; on request
the run's bundles are registered as a version of a registered model.

Everything is read back from the bundles (report.json, manifest.json), so a run shows what shipped.
mlflow is an optional dependency: `pip install "edgepack[mlflow]"`.

Default store: $MLFLOW_TRACKING_URI when set, else a SQLite file in the output folder
(`<out>/mlflow.db`, artifacts beside it in `<out>/mlartifacts`): database-backed, so `--register` works
with no server, and nothing lands in the working directory. `mlflow ui --backend-store-uri
sqlite:///dist/mlflow.db` shows it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from .errors import UsageError

TRACKERS = ("mlflow",)
EXPERIMENT = "edgepack"
INSTALL_HINT = 'Install it with: pip install "edgepack[mlflow]" (or pip install mlflow).'
# Stores that hold runs but no model registry (MLflow's registry needs a database).
_NO_REGISTRY_SCHEMES = ("", "file")


class _Bundle(Protocol):  # BuildReport, without importing the pipeline (and torch) here
    target: str
    bundle_dir: str


@dataclass(frozen=True)
class TrackedRun:
    """Where the build was logged: open it with `MlflowClient(tracking_uri).get_run(run_id)`."""

    tracking_uri: str
    experiment_id: str
    run_id: str
    registered_model: str | None = None
    model_version: str | None = None


def check_tracking(tracker: str | None, uri: str | None, register: str | None, option: str = "--track") -> None:
    """Every check that can fail before the build: a known tracker, mlflow importable, a registry when asked."""
    if tracker is None:
        if register is not None or uri is not None:
            raise UsageError("--register and --tracking-uri need a tracker.", f"Add {option} mlflow, or drop them.")
        return
    if tracker not in TRACKERS:
        raise UsageError(f"{option} {tracker!r} is not a known tracker.", f"Use one of: {', '.join(TRACKERS)}.")
    mlflow = _mlflow()
    if uri is not None and urlparse(uri).scheme in _NO_REGISTRY_SCHEMES:
        _check_file_store(mlflow, uri)
    if register is not None and uri is not None and urlparse(uri).scheme in _NO_REGISTRY_SCHEMES:
        raise UsageError(
            f"--register needs a model registry, which the file store at {uri!r} does not have.",
            "Use a database-backed store, e.g. --tracking-uri sqlite:///path/to/mlflow.db (or leave it out: the "
            "default is a SQLite file in the output folder).",
        )


def _check_file_store(mlflow: Any, uri: str) -> None:
    """MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE=true: say so before the build, with
    MLflow's own advice. (Opening a file store's client writes nothing but the store folder the user named.)"""
    try:
        mlflow.tracking.MlflowClient(tracking_uri=uri)
    except mlflow.exceptions.MlflowException as exc:
        raise UsageError(
            f"--tracking-uri {uri}: MLflow cannot open this store: {exc.message}",
            "Use a SQLite store (--tracking-uri sqlite:///path/to/mlflow.db, or leave --tracking-uri out for "
            "<out>/mlflow.db), or set MLFLOW_ALLOW_FILE_STORE=true.",
        ) from exc


def default_uri(out_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out_dir / 'mlflow.db').resolve()}"


def log_build(
    reports: Sequence[_Bundle],
    uri: str | None = None,
    register: str | None = None,
    sign_key: Path | None = None,
    experiment: str = EXPERIMENT,
) -> TrackedRun:
    """Log one build (its reports, one per target) as an MLflow run; register its bundles as a new version
    of the model `register` when given. `uri` defaults to `default_uri(<out folder of the first bundle>)`.

        run = log_build(edgepack.build(request), uri="sqlite:///runs/mlflow.db", register="digits")
    """
    if not reports:
        raise UsageError("Nothing to track: the build returned no bundle.", "Build at least one target.")
    bundles = [Path(r.bundle_dir) for r in reports]
    uri = uri or default_uri(bundles[0].parent.parent)
    check_tracking("mlflow", uri, register)
    mlflow = _mlflow()
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment_id = _experiment(client, experiment, uri)
    documents = [_read(bundle) for bundle in bundles]
    params, metrics, tags = _figures(reports, documents, sign_key)
    run = client.create_run(experiment_id, tags=tags, run_name=_run_name(documents))
    run_id, now = run.info.run_id, int(time.time() * 1000)
    try:
        client.log_batch(
            run_id,
            metrics=[mlflow.entities.Metric(k, v, now, 0) for k, v in sorted(metrics.items())],
            params=[mlflow.entities.Param(k, v) for k, v in sorted(params.items())],
        )
        for report, bundle in zip(reports, bundles):
            client.log_artifacts(run_id, str(bundle), artifact_path=report.target)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED" if all(d[0].get("ok") for d in documents) else "FAILED")
    version = _register(client, register, run) if register else None
    return TrackedRun(uri, experiment_id, run_id, register, version)


def _mlflow() -> Any:
    try:
        import mlflow
        import mlflow.exceptions
        import mlflow.tracking
    except ImportError as exc:
        raise UsageError(
            f"--track mlflow needs the mlflow package, which is not installed ({exc}).", INSTALL_HINT
        ) from exc
    return mlflow


def _experiment(client: Any, name: str, uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    return str(client.create_experiment(name, artifact_location=_artifact_location(uri)))


def _artifact_location(uri: str) -> str | None:
    """Beside a local SQLite file: MLflow's own default for a database store is ./mlruns in the working
    directory. Other stores choose for themselves (a file store keeps artifacts inside it, a server its own)."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite" or parsed.path in ("", "/:memory:"):
        return None
    database = Path(unquote(parsed.path[1:] if parsed.path.startswith("//") else parsed.path))
    return (database.parent / "mlartifacts").resolve().as_uri()


def _read(bundle: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    manifest = bundle / "manifest.json"
    return (
        json.loads((bundle / "report.json").read_text(encoding="utf-8")),
        json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {},
    )


def _run_name(documents: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    report = documents[0][0]
    return f"{report.get('model')}-{'+'.join(d[0].get('target', '?') for d in documents)}"


def _figures(
    reports: Sequence[_Bundle], documents: list[tuple[dict[str, Any], dict[str, Any]]], sign_key: Path | None
) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    params: dict[str, str] = {
        "model": str(documents[0][0].get("model")),
        "targets": ",".join(r.target for r in reports),
    }
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {"edgepack.ok": str(all(d[0].get("ok") for d in documents)).lower()}
    for report, manifest in documents:
        target = str(report.get("target"))
        params.update(_target_params(target, report, manifest))
        metrics.update(_target_metrics(target, report))
        tags.update(_provenance_tags(manifest))
    if sign_key is not None and any((Path(r.bundle_dir) / "manifest.sig").is_file() for r in reports):
        from .bundle.signing import key_id

        tags["edgepack.signing_key_id"] = key_id(sign_key)
    return params, metrics, tags


def _target_params(target: str, report: dict[str, Any], manifest: dict[str, Any]) -> dict[str, str]:
    capture = report.get("capture") or {}
    params = {
        f"{target}.formats": ",".join(a["format"] for a in report.get("artifacts", [])),
        f"{target}.capture_strategy": str(capture.get("strategy")),
        f"{target}.threads": str(report.get("threads")),
        "edgepack_version": str(report.get("edgepack_version")),
    }
    export = capture.get("export") or {}
    if export:
        params[f"{target}.export_strategy"] = str(export.get("strategy") if export.get("ok") else "none")
    for a in report.get("artifacts", []):
        params[f"{target}.{a['format']}.precision"] = str(a.get("precision"))
        params[f"{target}.{a['format']}.precision_requested"] = str(a.get("precision_requested"))
    versions = {**((manifest.get("provenance") or {}).get("versions") or {}), **(manifest.get("converters") or {})}
    params.update({f"version.{name}": str(v) for name, v in versions.items() if v})
    return params


def _target_metrics(target: str, report: dict[str, Any]) -> dict[str, float]:
    metrics = {f"{target}.ok": float(bool(report.get("ok")))}
    eager = (report.get("baseline") or {}).get("eager_latency_ms") or {}
    metrics.update({f"{target}.eager.{k}_ms": v for k, v in eager.items() if k in ("p50", "p90")})
    for a in report.get("artifacts", []):
        prefix = f"{target}.{a['format']}"
        smoke = a.get("smoke") or {}
        figures = {
            "size_bytes": a.get("size_bytes"),
            "smoke_passed": float(smoke.get("status") == "passed"),
            "smoke_max_abs_err": smoke.get("max_abs_err"),
            "smoke_cosine": smoke.get("cosine"),
            **{f"{k}_ms": v for k, v in (a.get("latency_ms") or {}).items() if k in ("p50", "p90", "p99")},
            **{f"accuracy_{k}": v for k, v in (a.get("accuracy") or {}).items() if k in _ACCURACY},
        }
        metrics.update({f"{prefix}.{k}": float(v) for k, v in figures.items() if isinstance(v, int | float)})
    return metrics


_ACCURACY = ("top1_agreement", "cosine", "worst_cosine", "max_abs_err", "sqnr_db")


def _provenance_tags(manifest: dict[str, Any]) -> dict[str, str]:
    tags = {}
    version = (manifest.get("model") or {}).get("version")
    if version:
        tags["edgepack.model_version"] = str(version)
    git = (manifest.get("provenance") or {}).get("git")
    if git:  # mlflow.source.git.commit: where MLflow's own UI looks for it
        tags["mlflow.source.git.commit"] = tags["edgepack.git_commit"] = str(git["commit"])
        tags["edgepack.git_dirty"] = str(bool(git.get("dirty"))).lower()
    return tags


def _register(client: Any, name: str, run: Any) -> str:
    """A new version of registered model `name` whose source is this run's bundles."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Mobile bundles built by edgepack.")
    version = client.create_model_version(name, source=run.info.artifact_uri, run_id=run.info.run_id)
    return str(version.version)
