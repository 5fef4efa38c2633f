"""Typed results of the Python API: `BuildResult` (one `Bundle` per target, each with its `Artifact`s) and
`Diagnosis` (what `doctor` found). Plain frozen dataclasses read off the pipeline's reports, so that an IDE
and mypy see every field; `.report` / `.raw` keep the full report for anything not surfaced here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BuildError

if TYPE_CHECKING:
    from ..bench import Latency as _Latency
    from ..report import ArtifactReport, BuildReport
    from ..tracking import TrackedRun


@dataclass(frozen=True)
class Latency:
    """Milliseconds per call on the build machine (batch as in the example inputs), over `runs` timed calls."""

    p50: float
    p90: float
    p99: float
    mean: float
    runs: int

    @classmethod
    def of(cls, latency: _Latency | None) -> Latency | None:
        return None if latency is None else cls(latency.p50, latency.p90, latency.p99, latency.mean, latency.runs)


@dataclass(frozen=True)
class Smoke:
    """The artifact run in its own runtime on the golden inputs, compared with eager PyTorch."""

    status: str  # "passed", "failed" or "skipped" (its runtime cannot run on this machine)
    reason: str
    max_abs_err: float | None
    cosine: float | None

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Accuracy:
    """A quantized artifact against eager fp32 on the evaluation set (worst output)."""

    samples: int
    top1_agreement: float | None  # None when no output is a (batch, classes) score
    cosine: float | None
    max_abs_err: float | None
    sqnr_db: float | None  # None when the artifact reproduces eager exactly


@dataclass(frozen=True)
class Artifact:
    target: str
    format: str  # the format's name, as in target files: "onnx", "coreml", ...
    precision: str  # as shipped (the ladder may have fallen back from `precision_requested`)
    precision_requested: str
    path: Path | None  # absolute; None when it could not be built (or --allow-partial left it out)
    size_bytes: int | None
    sha256: str | None
    smoke: Smoke
    latency: Latency | None  # None with `latency_reason` when not timed (Core ML off macOS, say)
    latency_reason: str
    accuracy: Accuracy | None  # None when built in fp32 as asked
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Bundle:
    """One target's bundle folder: `path` is dist/<model>/<target> when `ok`, else the `.failed` folder."""

    target: str
    model: str
    ok: bool
    path: Path
    problems: tuple[str, ...]
    artifacts: tuple[Artifact, ...]
    eager_latency: Latency | None  # eager PyTorch, timed in the same run: the baseline for every artifact
    report: BuildReport  # everything report.json holds

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def report_path(self) -> Path:
        return self.path / "report.json"

    @property
    def report_html_path(self) -> Path:
        """The self-contained HTML report (charts inline; opens offline)."""
        return self.path / "report.html"

    def artifact(self, format: str) -> Artifact:
        """The artifact of one format; KeyError naming the formats this bundle has otherwise."""
        for artifact in self.artifacts:
            if artifact.format == format:
                return artifact
        raise KeyError(f"no {format!r} artifact in the {self.target} bundle (it has: {self._formats()})")

    def _formats(self) -> str:
        return ", ".join(a.format for a in self.artifacts)


@dataclass(frozen=True)
class BuildResult:
    """What `edgepack.build(model, example_inputs, target=...)` returns: one bundle per target, in order.

    >>> result = edgepack.build(net.eval(), torch.randn(1, 3, 64, 64), target="android")
    >>> result.raise_for_status()            # BuildFailed listing every problem unless all passed
    >>> result["android"].artifact("onnx").latency.p50
    """

    bundles: tuple[Bundle, ...]
    tracked: TrackedRun | None = None  # the MLflow run, when built with track="mlflow"

    @property
    def ok(self) -> bool:
        return all(b.ok for b in self.bundles)

    @property
    def problems(self) -> list[str]:
        return [f"{b.target}: {p}" for b in self.bundles for p in b.problems]

    @property
    def artifacts(self) -> list[Artifact]:
        return [a for b in self.bundles for a in b.artifacts]

    @property
    def paths(self) -> dict[str, Path]:
        """Each target's bundle folder."""
        return {b.target: b.path for b in self.bundles}

    def __getitem__(self, target: str) -> Bundle:
        for bundle in self.bundles:
            if bundle.target == target:
                return bundle
        raise KeyError(f"no {target!r} bundle in this result (it has: {', '.join(b.target for b in self.bundles)})")

    def raise_for_status(self) -> BuildResult:
        """Raise BuildFailed (an edgepack BuildError) listing every problem unless every bundle passed;
        return the result itself otherwise, so that it chains."""
        if not self.ok:
            raise BuildFailed(self)
        return self

    @classmethod
    def of(cls, reports: list[BuildReport], tracked: TrackedRun | None = None) -> BuildResult:
        return cls(tuple(_bundle(r) for r in reports), tracked)


class BuildFailed(BuildError):
    """A build finished, and at least one of its checks failed (a smoke test, a budget, the device check)."""

    def __init__(self, result: BuildResult) -> None:
        failed = [b for b in result.bundles if not b.ok]
        super().__init__(
            f"{len(failed)} of {len(result.bundles)} bundle(s) failed their checks: " + "; ".join(result.problems),
            "Read each bundle's report.md (in its .failed folder) for the figures; "
            "allow_partial=True ships the formats that passed.",
        )
        self.result = result


def _bundle(report: BuildReport) -> Bundle:
    folder = Path(report.bundle_dir)
    return Bundle(
        target=report.target,
        model=report.model,
        ok=report.ok,
        path=folder,
        problems=tuple(report.problems),
        artifacts=tuple(_artifact(report.target, folder, a) for a in report.artifacts),
        eager_latency=Latency.of(report.eager_latency),
        report=report,
    )


def _artifact(target: str, folder: Path, a: ArtifactReport) -> Artifact:
    acc = a.accuracy.to_json() if a.accuracy is not None else None
    return Artifact(
        target=target,
        format=a.format,
        precision=a.precision,
        precision_requested=a.precision_requested or a.precision,
        path=folder / a.path if a.path else None,
        size_bytes=a.size_bytes,
        sha256=a.sha256,
        smoke=Smoke(a.smoke.status.value, a.smoke.reason, a.smoke.max_abs_err, a.smoke.cosine),
        latency=Latency.of(a.latency),
        latency_reason=a.latency_reason,
        accuracy=None
        if acc is None
        else Accuracy(acc["samples"], acc["top1_agreement"], acc["cosine"], acc["max_abs_err"], acc["sqnr_db"]),
        notes=tuple(a.notes),
    )


@dataclass(frozen=True)
class Hazard:
    """Something in the model's code that tracing records wrongly, with where it is and the fix."""

    kind: str
    message: str
    file: str | None
    line: int | None
    why: str
    fix: str
    in_library: bool  # raised inside PyTorch's own code (usually harmless shape checks)


@dataclass(frozen=True)
class Rewrite:
    """A device placement the device pass changed (or kept) in the capture."""

    kind: str
    op: str | None
    source: str | None  # file:line of the model code
    detail: str
    device: str | None


@dataclass(frozen=True)
class Attempt:
    """One capture strategy tried (trace, script, hybrid), and why it failed when it did."""

    strategy: str
    ok: bool
    error: str


@dataclass(frozen=True)
class Diagnosis:
    """What `edgepack.doctor(model, example_inputs)` found; `raw` is the `edgepack doctor --json` document."""

    model: str
    ok: bool  # a trustworthy capture exists
    strategy: str | None  # the capture edgepack would use
    error: str
    hint: str
    hazards: tuple[Hazard, ...]
    rewrites: tuple[Rewrite, ...]
    attempts: tuple[Attempt, ...]
    export_strategy: str | None  # the torch.export capture ONNX, Core ML and ExecuTorch convert, if any held
    raw: dict[str, Any]

    @classmethod
    def of(cls, document: dict[str, Any]) -> Diagnosis:
        export = document.get("export") or {}
        return cls(
            model=document["model"],
            ok=document["ok"],
            strategy=document.get("strategy"),
            error=document.get("error", ""),
            hint=document.get("hint", ""),
            hazards=tuple(
                Hazard(h["kind"], h["message"], h["file"], h["line"], h["why"], h["fix"], h.get("in_library", False))
                for h in document.get("hazards", [])
            ),
            rewrites=tuple(
                Rewrite(r["kind"], r["op"], r["source"], r["detail"], r.get("device"))
                for r in document.get("rewrites", [])
            ),
            attempts=tuple(Attempt(a["strategy"], a["ok"], a.get("error") or "") for a in document.get("attempts", [])),
            export_strategy=export.get("strategy") if export.get("ok") else None,
            raw=document,
        )
