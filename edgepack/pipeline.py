"""The build: load -> capture -> (per target) emit -> verify; bench (one run for every target) -> (per target) bundle.

This is the Python API behind `edgepack build`; the CLI only parses arguments and shows progress.
"""

from __future__ import annotations

import gc
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from . import interrupts, precisions
from .bench import Latency, OtherProcessesLoad, time_interleaved, torch_threads
from .buildcache import BuildCache
from .bundle.files import sha256_of, size_of
from .bundle.manifest import build_outcome, write_bundle_manifest
from .bundle.staging import StagedBundle, archive_bundle, check_out_dir, remove_path, write_golden, write_json
from .capture.check_inputs import load_check_inputs
from .capture.ladder import CapturedModel, CaptureError, capture, empty_outputs
from .capture.ladder import check_options as check_capture_options
from .errors import EdgepackError, UsageError
from .failures import full_disk
from .footprint import Probes, measure_footprint
from .formats import FORMATS, Emitted, Format, RuntimeUnavailable, known_options
from .formats.base import NotConvertible
from .hostarch import LatencyOrigin, origin_for
from .inputs import InputSpec, sample_inputs
from .load import LoadedModel, load_model
from .noise import strip_ansi
from .paths import MAX_NAME, folder_name, missing_file_text, scratch_folder
from .progress import Observer, SilentObserver, Status
from .quantize.calibration import DataSource
from .quantize.ladder import Ladder, QuantData, rungs, ship
from .quantize.plan import QuantSamples, quantization_samples
from .report import ArtifactDevices, ArtifactReport, BudgetCheck, BuildReport
from .report_html import write_html_report
from .smoke import FAILED, PASSED, SKIPPED, SmokeResult, smoke_test
from .targets import BenchSettings, FormatSettings, Target, load_target

GOLDEN_SAMPLES = 4
EAGER = "eager PyTorch"  # the baseline's key among the timed calls (format names are the others)
_BEFORE = "fp32 before "  # key prefix of the float artifact a quantized one is compared with
UNSTEADY_SPREAD = 3.0  # p90 / p50 beyond which a run's timings are reported as unsteady
BUSY_HOST_CORES = 0.5  # cores other processes keep busy while timing, beyond which the report says so
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class BuildRequest:
    """Everything `edgepack build` needs. `model=None` packages the built-in demo model."""

    targets: Sequence[str | Target]  # names, .toml paths, or Target values (the Python API)
    model: str | None = None
    weights: Path | None = None
    inputs: list[InputSpec] = field(default_factory=list)
    name: str | None = None
    out_dir: Path = Path("dist")
    trust_weights: bool = False
    strict: bool = False
    allow_partial: bool = False  # failed formats are left out of the bundle instead of failing the build
    capture_mode: str = "auto"
    check_inputs: str | None = None  # a .npz file or a `module:attr` callable yielding input dicts
    check_budgets: bool = True
    device_policy: str = "agnostic"  # "agnostic": placements follow the input's device; "target": the phone's CPU
    trace_device: str = "cpu"  # where the trace is recorded (cuda on a workstation); bundles always run on CPU
    search_dir: Path | None = None  # where `pkg.module:attr` references are imported from (default: cwd)
    sign_key: Path | None = None  # Ed25519 private key (PEM) to sign manifest.json with
    archive: bool = False  # also write a deterministic <bundle>.zip beside each passing bundle
    precision: str | None = None  # overrides every format's precision (each uses its nearest scheme)
    calibration: DataSource | None = None  # calibration samples for static schemes: .npz, folder, module:attr
    eval_data: DataSource | None = None  # the evaluation set accuracy is measured on: same forms
    # A model already in memory (edgepack.api: a module object and its example inputs): used as it is,
    # instead of loading `model`, `weights` and `inputs`.
    loaded: LoadedModel | None = None
    optimize_for: str = "latency"  # --precision auto's criterion among the candidates within budget: latency | size
    # The process ends with this build (the `edgepack` command): what the imports made is frozen out of the
    # garbage collector's scans once the formats are validated (see _build). Never set from the Python API.
    freeze_imports: bool = False


def build(request: BuildRequest, observer: Observer | None = None) -> list[BuildReport]:
    """Build every requested target from one load and one capture of the model. SIGINT/SIGTERM stop it
    (edgepack.interrupts): every stage boundary checks, and nothing is moved into place after one."""
    with interrupts.guarded():
        return _build(request, _Checkpoints(observer or SilentObserver()))


class _Checkpoints:
    """Passes events on; each one is a stage boundary where an interruption swallowed by the code that
    ran (a converter's `except Exception`) stops the build after all."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer

    def event(self, stage: str, status: Status, detail: str) -> None:
        interrupts.checkpoint()
        self.observer.event(stage, status, detail)


def _build(request: BuildRequest, observer: Observer) -> list[BuildReport]:
    _check_options(request)  # every cheap check before the model is loaded
    check_out_dir(request.out_dir)
    targets = [
        _with_precision(load_target(t, known_options()) if isinstance(t, str) else t, request.precision)
        for t in request.targets
    ]
    with scratch_folder(prefix="edgepack-shared-") as shared, Probes(shared) as probes:  # shared across targets
        cache = BuildCache(shared, probes)
        cache.start_probes(targets)  # their runtimes import while the converters and the model load
        _validate_formats(targets, request)  # imports the converters it asks (coremltools: seconds)
        if request.freeze_imports:
            # Everything alive now is imported modules and their tables, alive until the process ends; unfrozen,
            # each of the build's full collections scans them all again (~0.25 s each, 2 s per 3-target build).
            # Nothing of the model exists yet, so no garbage of the user's is made permanent.
            gc.freeze()
        loaded, samples = _load_checked(request, targets, observer)
        captured, data = _capture_reported(request, loaded, samples, observer)
        return _build_targets(captured, targets, request, observer, data, cache)


def _validate_formats(targets: list[Target], request: BuildRequest) -> None:
    for target in targets:
        for settings in target.formats:
            try:
                FORMATS[settings.name].validate(settings)
            except UsageError as exc:  # the format says what is wrong; this says where (file and table, or --precision)
                where = (
                    "--precision"
                    if request.precision and "recision" in exc.message
                    else f"Target file {target.path} [formats.{settings.name}]"
                )
                raise UsageError(f"{where}: {exc.message}", exc.hint) from exc


def _load_checked(
    request: BuildRequest, targets: list[Target], observer: Observer
) -> tuple[LoadedModel, QuantSamples | None]:
    observer.event("load", Status.START, _model_text(request))
    loaded = _load(request)
    folder_name(
        loaded.name,
        "Model name",
        "Pass --name: the name derived from the model's class "
        f"cannot be a folder name (letters, digits, '.', '_' and '-', at most {MAX_NAME} characters).",
    )
    check_out_dir(request.out_dir / loaded.name)
    observer.event(
        "load",
        Status.DONE,
        f"{loaded.name} ({type(loaded.module).__name__}, {', '.join(str(s) for s in loaded.inputs)})",
    )
    samples = quantization_samples(loaded, targets, request.calibration, request.eval_data, request.search_dir)
    return loaded, samples


def _capture_reported(
    request: BuildRequest, loaded: LoadedModel, samples: QuantSamples | None, observer: Observer
) -> tuple[CapturedModel, QuantData | None]:
    observer.event("capture", Status.START, f"{request.capture_mode}: trace, checked on held-out inputs")
    captured = _capture(request, loaded)
    for hazard in [h for h in captured.hazards if not h.in_library]:
        observer.event("capture", Status.WARN, f"{hazard.location()}: {hazard.message}")
    for cache in captured.caches:
        observer.event(
            "capture",
            Status.WARN,
            f"{cache.file}:{cache.line}: self.{cache.attr} is a cache (filled on the "
            "first call, reused after): captured from its cold value, which recomputes it",
        )
    for unchecked in captured.unchecked_sizes:
        observer.event(
            "capture",
            Status.WARN,
            f"not checked at {unchecked['size']}: eager PyTorch fails there "
            f"({unchecked['reason']}); the bundle's dynamic dimension is wider than the model",
        )
    for name in empty_outputs(captured.output_names, captured.expected)[1]:
        observer.event(
            "capture",
            Status.WARN,
            f"output '{name}' is empty on every golden sample: it is shipped but nothing about its values is checked",
        )
    inside_torch = [h for h in captured.hazards if h.in_library]
    if inside_torch:
        observer.event(
            "capture",
            Status.WARN,
            f"{len(inside_torch)} tracer warning(s) inside PyTorch's own code "
            "(shape checks, usually); the trace was checked against eager regardless",
        )
    observer.event(
        "capture",
        Status.DONE,
        f"{captured.strategy} ({_attempts_text(captured)}); outputs: {', '.join(captured.output_names)}",
    )
    data = samples.measured_on(captured) if samples is not None else None
    if samples is not None:
        observer.event(
            "eval data",
            Status.DONE,
            f"formats built below fp32 are measured against eager fp32 on {samples.eval_source}",
        )
    return captured, data


def _with_precision(target: Target, precision: str | None) -> Target:
    if precision is None:
        return target
    return replace(target, formats=tuple(replace(f, precision=precision) for f in target.formats))


def diagnose(request: BuildRequest) -> dict:
    """`edgepack doctor`: load and capture with every check, build nothing; hazards with why and fix, and the
    torch.export capture's attempts (`export`), each failure with its line and fix."""
    with interrupts.guarded():
        return _diagnose(request)


def _diagnose(request: BuildRequest) -> dict:
    _check_options(request)
    loaded = _load(request)
    try:
        captured = _capture(request, loaded)
        interrupts.checkpoint()
    except CaptureError as exc:
        return {
            "model": loaded.name,
            "ok": False,
            "strategy": None,
            "error": exc.message,
            "hint": exc.hint,
            "hazards": [h.to_json() for h in exc.hazards],
            "attempts": [a.to_json() for a in exc.attempts],
            "export": exc.export.to_json() if exc.export is not None else None,
        }
    return {"model": loaded.name, "ok": True, "error": "", "hint": "", **captured.to_json()}


def _check_options(request: BuildRequest) -> None:
    if request.name is not None:
        folder_name(
            request.name,
            "Model name",
            "Pass --name letters, digits, '.', '_' and '-' "
            f"(at most {MAX_NAME} characters); it names the folder under --out.",
        )
    check_capture_options(request.capture_mode, request.device_policy, request.trace_device)
    if request.optimize_for not in ("latency", "size"):
        raise UsageError(
            f"--optimize-for '{request.optimize_for}' is not a criterion.",
            "Use latency (the fastest candidate within the accuracy budget) or size (the smallest).",
        )
    for option, source in (
        ("--check-inputs", request.check_inputs),
        ("--calibration", request.calibration),
        ("--eval-data", request.eval_data),
    ):
        if isinstance(source, str) and source.endswith(".npz") and not Path(source).expanduser().is_file():
            raise UsageError(f"{option} file '{source}' {missing_file_text(source)}.", f"Check the {option} path.")


def _model_text(request: BuildRequest) -> str:
    if request.loaded is not None:
        return request.loaded.source["reference"]
    return request.model or "built-in demo model"


def _load(request: BuildRequest) -> LoadedModel:
    if request.loaded is not None:
        return request.loaded
    return load_model(
        request.model, request.inputs, request.weights, request.name, request.trust_weights, request.search_dir
    )


def _capture(request: BuildRequest, loaded: LoadedModel) -> CapturedModel:
    """The capture `build` and `diagnose` share: golden samples, the user's check inputs, the chosen mode."""
    user_checks = (
        load_check_inputs(request.check_inputs, loaded.inputs, request.search_dir) if request.check_inputs else []
    )
    return capture(
        loaded, golden_samples(loaded), request.capture_mode, user_checks, request.device_policy, request.trace_device
    )


def golden_samples(loaded: LoadedModel) -> list[dict[str, torch.Tensor]]:
    """Real held-out samples when the model ships them, else seeded random ones (one seed per sample)."""
    if loaded.sample_inputs:
        return loaded.sample_inputs[:GOLDEN_SAMPLES]
    return [sample_inputs(loaded.inputs, loaded.module, seed) for seed in range(GOLDEN_SAMPLES)]


@dataclass
class _EmittedTarget:
    """One target between its emits and its bundle: staged, smoke-tested, waiting for the build's timing run."""

    target: Target
    staged: StagedBundle
    artifacts: list[ArtifactReport]
    emitted: dict[str, Emitted]
    baselines: dict[str, Emitted]  # the fp32 artifact a quantized one replaced, timed beside it
    seconds: float  # this target's own work so far
    eager: Latency | None = None


def _build_targets(
    captured: CapturedModel,
    targets: list[Target],
    request: BuildRequest,
    observer: Observer,
    data: QuantData | None,
    cache: BuildCache,
) -> list[BuildReport]:
    """Every target emitted and smoke-tested, then one interleaved timing run for all their artifacts (the same
    bytes timed once), then each bundle written and moved into place. Until then none is: an interruption or
    an error leaves every previous bundle as it was."""
    emitted: list[_EmittedTarget] = []
    try:
        with scratch_folder(prefix="edgepack-quantize-") as workdir:  # the baselines live until they are timed
            for target in targets:
                emitted.append(_emit_target(captured, target, request, observer, data, Path(workdir), cache))
            _bench_together(captured, emitted, observer, cache)
        return [_finish_target(captured, pending, request, observer) for pending in emitted]
    except BaseException:
        for pending in emitted:
            pending.staged.discard()  # a bundle already moved into place stays
        raise


def _emit_target(
    captured: CapturedModel,
    target: Target,
    request: BuildRequest,
    observer: Observer,
    data: QuantData | None,
    workdir: Path,
    cache: BuildCache,
) -> _EmittedTarget:
    started = time.perf_counter()
    staged = StagedBundle(request.out_dir, captured.loaded.name, target.name)
    try:
        artifacts, emitted, baselines = _emit_all(
            captured, target, staged.dir, observer, data, workdir, request.optimize_for, cache
        )
        if request.allow_partial:
            _exclude_failed(artifacts, emitted, staged.dir)
    except BaseException:
        staged.discard()
        raise
    return _EmittedTarget(target, staged, artifacts, emitted, baselines, time.perf_counter() - started)


def _finish_target(
    captured: CapturedModel, pending: _EmittedTarget, request: BuildRequest, observer: Observer
) -> BuildReport:
    """Budgets, report, manifest; then the bundle moved into place (or to <target>.failed/)."""
    started = time.perf_counter()
    target, artifacts, staged = pending.target, pending.artifacts, pending.staged
    origin = origin_for(target.arch)
    for artifact in artifacts:
        if artifact.latency is not None:
            artifact.latency_measured_on = origin.label
    if request.check_budgets:
        _check_budgets(target, artifacts, origin)
    assert pending.eager is not None
    report = BuildReport(
        target.name,
        captured.loaded.name,
        "",
        artifacts,
        captured.to_json(),
        pending.eager,
        target.bench.threads,
        request.strict,
        request.allow_partial,
        latency_origin=origin,
    )
    report.bundle_dir = str(staged.destination(report.ok).resolve())
    golden = write_golden(staged.dir, captured)
    write_bundle_manifest(staged.dir, captured, target, artifacts, golden, request.sign_key, build_outcome(report))
    # This target's own work, and the whole of the timing run it shared with the build's other targets.
    report.duration_s = pending.seconds + time.perf_counter() - started
    write_json(staged.dir / "report.json", report.to_json())
    (staged.dir / "report.md").write_text(report.to_markdown(), encoding="utf-8")
    write_html_report(staged.dir)
    with interrupts.deferred():  # after an interruption nothing moves; during the move none can land
        bundle_dir = staged.commit(report.ok)
    if report.ok:  # the archive must match the bundle now in place: rewrite it, or remove a stale one
        archive = archive_bundle(bundle_dir, request.archive)
        if archive is not None:
            observer.event("archive", Status.DONE, str(archive))
    observer.event("bundle", Status.DONE if report.ok else Status.FAIL, report.bundle_dir)
    return report


def _emit_all(
    captured: CapturedModel,
    target: Target,
    bundle_dir: Path,
    observer: Observer,
    data: QuantData | None,
    workdir: Path,
    optimize_for: str,
    cache: BuildCache,
) -> tuple[list[ArtifactReport], dict[str, Emitted], dict[str, Emitted]]:
    """Emit and smoke-test each format; one format's failure does not stop the others. A format not built
    in fp32 goes through the precision ladder, gated by the target's accuracy budget; its fp32 version
    (the baseline for size and latency) stays in `workdir`."""
    reports, emitted, baselines = [], {}, {}
    for settings in target.formats:
        fmt = FORMATS[settings.name]
        report = ArtifactReport(settings.name, settings.precision)
        reports.append(report)
        path = fmt.artifact_path(bundle_dir, captured.loaded.name)
        observer.event(f"emit {fmt.name}", Status.START, f"{target.name}: {path.name} ({settings.precision})")
        try:
            if data is not None and settings.precision == precisions.AUTO:
                _settle_probes(cache)  # auto times its candidates
                result, baseline = _emit_auto(
                    fmt, captured, settings, path, data, workdir, target, report, observer, optimize_for
                )
                if baseline is not None:
                    baselines[settings.name] = baseline
            elif data is None or rungs(fmt, settings.precision)[0][0] == "fp32":
                result = _emit_fp32(fmt, captured, replace(settings, precision="fp32"), path, cache)
                if settings.precision != "fp32":  # a precision this format builds in fp32 (ONNX fp16, say)
                    result.notes += rungs(fmt, settings.precision)[1]
                    report.precision_requested, report.precision = settings.precision, "fp32"
            else:  # the ladder stabilizes every attempt, so that the sizes it compares are the shipped ones
                result, baseline = _emit_with_ladder(
                    fmt, captured, settings, path, data, workdir, target, report, observer
                )
                if baseline is not None:
                    baselines[settings.name] = baseline
            fmt.add_companions(result, captured, replace(settings, precision=report.precision))
        except NotConvertible as exc:  # this capture cannot become this format: left out, said, not a failure
            remove_path(path, bundle_dir)
            report.smoke = SmokeResult(SKIPPED, f"not built: {strip_ansi(str(exc))}")
            observer.event(f"emit {fmt.name}", Status.WARN, f"not built: {strip_ansi(str(exc))}")
            continue
        except UsageError:
            raise
        except Exception as exc:  # a converter can fail in any way; the other formats still build
            if full_disk(exc):  # but not on a full disk: every later write would fail the same way
                raise
            remove_path(path, bundle_dir)
            report.smoke = SmokeResult(FAILED, f"emitting failed: {strip_ansi(str(exc))}")
            observer.event(
                f"emit {fmt.name}", Status.FAIL, (strip_ansi(str(exc)).strip().splitlines() or [type(exc).__name__])[0]
            )
            continue
        report.path, report.size_bytes, report.sha256 = path.name, size_of(path), sha256_of(path)
        report.weight_bytes = fmt.weight_bytes(path)
        report.requirements, report.notes = result.requirements, result.notes + report.notes
        report.capture_consumed = result.capture
        report.devices = _device_check(fmt, result, captured)
        emitted[settings.name] = result
        report.smoke = smoke_test(
            fmt, result, captured, replace(settings, precision=report.precision), target.bench.threads
        )
        status = {PASSED: Status.DONE, SKIPPED: Status.WARN}.get(report.smoke.status, Status.FAIL)
        observer.event(f"smoke {fmt.name}", status, f"{report.smoke.status}: {report.smoke.reason}")
    return reports, emitted, baselines


def _emit_fp32(
    fmt: Format, captured: CapturedModel, settings: FormatSettings, path: Path, cache: BuildCache
) -> Emitted:
    """Converted once per distinct setting in a build: a later target with the same format table gets a copy."""
    copied = cache.converted(settings, path)
    if copied is not None:
        return copied
    result = fmt.emit(captured, settings, path)
    result.notes += fmt.stabilize(path)  # before hashing: byte-stable output where the format allows
    cache.remember(settings, result)
    return result


def _emit_with_ladder(
    fmt: Format,
    captured: CapturedModel,
    settings: FormatSettings,
    path: Path,
    data: QuantData,
    workdir: Path,
    target: Target,
    report: ArtifactReport,
    observer: Observer,
) -> tuple[Emitted, Emitted | None]:
    """The ladder's choice moved into the bundle, and the fp32 baseline (None when fp32 shipped)."""
    folder = workdir / target.name
    folder.mkdir(exist_ok=True)
    ladder = Ladder(
        fmt,
        captured,
        settings,
        folder,
        data,
        path.name,
        lambda text: observer.event(f"quantize {fmt.name}", Status.START, text),
    )
    result = ladder.run()
    shipped = ship(result, path)
    report.precision_requested, report.precision = result.requested, result.precision
    report.accuracy, report.quantization = result.accuracy, result.to_json()
    report.notes = list(result.notes)
    if result.baseline is not None:
        report.size_before_bytes = size_of(result.baseline.path)
        report.weight_bytes_before = fmt.weight_bytes(result.baseline.path)
    status = Status.WARN if result.fell_back else Status.DONE
    figures = result.accuracy.summary() if result.accuracy else "accuracy not measured"
    observer.event(f"quantize {fmt.name}", status, f"{result.requested} -> {result.precision}: {figures}")
    return shipped, result.baseline


def _emit_auto(
    fmt: Format,
    captured: CapturedModel,
    settings: FormatSettings,
    path: Path,
    data: QuantData,
    workdir: Path,
    target: Target,
    report: ArtifactReport,
    observer: Observer,
    optimize_for: str,
) -> tuple[Emitted, Emitted | None]:
    """--precision auto: every candidate scheme built, gated, timed; the winner moved into the bundle."""
    from .quantize.auto import choose

    folder = workdir / target.name
    folder.mkdir(exist_ok=True)
    progress = lambda text: observer.event(f"auto {fmt.name}", Status.START, text)  # noqa: E731
    result, choice = choose(
        fmt, captured, settings, folder, data, path.name, target.bench, origin_for(target.arch), optimize_for, progress
    )
    shipped = ship(result, path)
    report.precision_requested, report.precision = precisions.AUTO, result.precision
    report.accuracy, report.quantization = result.accuracy, {**result.to_json(), "auto": choice.to_json()}
    report.notes = list(result.notes)
    if result.baseline is not None:
        report.size_before_bytes = size_of(result.baseline.path)
        report.weight_bytes_before = fmt.weight_bytes(result.baseline.path)
    observer.event(f"auto {fmt.name}", Status.DONE, f"{result.precision}: {choice.why}")
    return shipped, result.baseline


def _device_check(fmt: Format, emitted: Emitted, captured: CapturedModel) -> ArtifactDevices:
    """The proof on what ships: device literals read back from the saved artifact's own code."""
    devices = captured.devices
    keep = devices.keep if devices else set()
    findings = fmt.saved_devices(emitted.path, keep)
    if findings is None:
        # Nothing to pin, whatever the policy: the artifact runs wherever its runtime puts it.
        return ArtifactDevices(
            False, True, [], [], f"{fmt.name} records no device placement: its runtime places every tensor"
        )
    agnostic = findings.clean and (devices is None or devices.policy == "agnostic")
    return ArtifactDevices(
        True, agnostic, findings.pinned, findings.kept, "device literals read back from the saved code"
    )


def _exclude_failed(artifacts: list[ArtifactReport], emitted: dict[str, Emitted], bundle_dir: Path) -> None:
    """--allow-partial: a format that failed leaves the bundle; the report keeps why."""
    for report in artifacts:
        if report.smoke.status == FAILED and report.path is not None:
            remove_path(bundle_dir / report.path, bundle_dir)
            emitted.pop(report.format, None)
            report.notes.append(f"excluded from the bundle (--allow-partial): {report.smoke.reason}")
            report.path = report.sha256 = report.size_bytes = None


def _bench_together(
    captured: CapturedModel, targets: list[_EmittedTarget], observer: Observer, cache: BuildCache
) -> None:
    """One interleaved timing run per distinct [bench] table (the built-in targets share one)."""
    groups: dict[BenchSettings, list[_EmittedTarget]] = {}
    for pending in targets:
        groups.setdefault(pending.target.bench, []).append(pending)
    for settings, group in groups.items():
        started = time.perf_counter()
        _bench_group(captured, settings, group, observer, cache)
        for pending in group:
            pending.seconds += time.perf_counter() - started


def _bench_group(
    captured: CapturedModel,
    settings: BenchSettings,
    group: list[_EmittedTarget],
    observer: Observer,
    cache: BuildCache,
) -> None:
    """Eager PyTorch and every artifact of these targets timed in one interleaved run, so that each target's
    ratios to eager and the targets' figures beside each other come from the same minutes on the same cores.
    An artifact with the same bytes as an earlier target's (a shared format table) is timed once."""
    sample = captured.samples[0]
    args = tuple(sample[name] for name in captured.input_names)
    arrays = [t.numpy() for t in args]
    names = ", ".join(pending.target.name for pending in group)
    observer.event(
        "bench", Status.START, f"{names}: {settings.threads} threads, >= {settings.min_runs} runs per artifact"
    )
    _settle_probes(cache)
    with torch_threads(settings.threads), torch.inference_mode():
        timer = _Timer(settings.threads, arrays, {EAGER: lambda: captured.eager(*args)})
        for pending in group:
            timer.add_target(pending)
        # Interleaved, so that load from other processes falls on eager and every artifact alike.
        with OtherProcessesLoad() as load:
            timed = time_interleaved(timer.calls, settings)
    eager = timed[EAGER]
    for pending in group:
        pending.eager = eager
        timer.fill_in(pending, timed)
        for report in pending.artifacts:
            if report.latency is not None and settings.footprint:
                _measure_footprint(report, pending.emitted[report.format].path, arrays, settings.threads, cache)
        cache.probes.stop_unused(pending.target.name)  # for an artifact that failed, or bytes already measured
        for report in pending.artifacts:
            if report.latency is not None:
                _note_if_unsteady(report, eager, load.cores)
    observer.event("bench", Status.DONE, f"eager p50 {eager.p50:.3f} ms")


class _Timer:
    """The calls of one timing run: eager, then each distinct artifact (format and sha256) of the targets
    added, opened once, with where each target's artifact and fp32 baseline find their figures."""

    def __init__(self, threads: int, arrays: list, calls: dict) -> None:
        self.threads, self.arrays, self.calls = threads, arrays, calls
        self.load_ms: dict[str, float] = {}
        self.first: dict[str, str] = {}  # call key -> the target whose artifact it was opened for
        self.unavailable: dict[str, str] = {}  # call key -> why its runtime cannot run here
        self.keys: dict[tuple[str, str], str] = {}  # (target, format) -> call key

    def add_target(self, pending: _EmittedTarget) -> None:
        for report in pending.artifacts:
            if report.format not in pending.emitted or report.smoke.status not in (PASSED, SKIPPED):
                report.latency_reason = "not measured: the artifact did not pass its smoke test"
                continue
            key = f"{report.format} {report.sha256}"
            if key not in self.calls and key not in self.unavailable:
                self._open(key, report.format, pending.emitted[report.format].path, pending.target.name)
            if key in self.unavailable:
                report.latency_reason = self.unavailable[key]
                continue
            self.keys[(pending.target.name, report.format)] = key
            if report.format in pending.baselines:  # the fp32 artifact a quantized one replaced
                baseline = pending.baselines[report.format].path
                self.calls[f"{_BEFORE}{pending.target.name} {report.format}"] = _bound(
                    FORMATS[report.format].open_for_timing(baseline, self.threads), self.arrays
                )

    def _open(self, key: str, format_name: str, path: Path, target_name: str) -> None:
        started = time.perf_counter_ns()
        try:
            run = FORMATS[format_name].open_for_timing(path, self.threads)
        except RuntimeUnavailable as exc:
            self.unavailable[key] = f"not measured: {exc}"
            return
        self.load_ms[key] = (time.perf_counter_ns() - started) / 1e6
        self.calls[key], self.first[key] = _bound(run, self.arrays), target_name

    def fill_in(self, pending: _EmittedTarget, timed: dict[str, Latency]) -> None:
        name = pending.target.name
        for report in pending.artifacts:
            key = self.keys.get((name, report.format))
            if key is None:
                continue
            report.latency = replace(timed[key], load_ms=self.load_ms[key])
            if self.first[key] != name:
                report.notes.append(
                    f"latency: the same bytes as {self.first[key]}'s {report.format} artifact, timed once in "
                    "the build's one timing run"
                )
            before = f"{_BEFORE}{name} {report.format}"
            if before in timed:
                report.latency_before = timed[before]
                _note_if_slower(report)


def _settle_probes(cache: BuildCache) -> None:
    """Before anything is timed: no footprint probe started ahead is still importing its runtime."""
    cache.probes.settle()


def _measure_footprint(report: ArtifactReport, path: Path, arrays: list, threads: int, cache: BuildCache) -> None:
    """One fresh process per distinct artifact in a build: the same bytes on the same threads are not probed twice."""
    footprint = cache.footprint(report.format, report.sha256, threads)
    if footprint is not None:
        report.notes.append("cold start and memory: the same bytes as an earlier target's artifact, probed once")
    else:
        try:
            footprint = measure_footprint(report.format, path, arrays, threads, probes=cache.probes)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            report.footprint_reason = f"not measured: {exc}"
            return
        cache.remember_footprint(report.format, report.sha256, threads, footprint)
    report.cold_load_ms, report.peak_memory_mb = footprint.cold_load_ms, footprint.peak_memory_mb


def _note_if_slower(report: ArtifactReport) -> None:
    """Slower only when the quantized median is beyond the fp32 run's own spread (its p90); a few percent
    either way on a shared host is noise, and is said as such."""
    after, before = report.latency, report.latency_before
    if after is None or before is None or after.p50 <= before.p50:
        return
    figures = f"p50 {after.p50:.3f} ms vs {before.p50:.3f} ms ({after.p50 / before.p50:.2f}x)"
    if after.p50 > before.p90:
        report.notes.append(f"{report.precision} is slower than fp32 on this host: {figures}")
    else:
        report.notes.append(
            f"{report.precision} is no faster than fp32 on this host: {figures}, within the fp32 "
            f"timings' spread (p90 {before.p90:.3f} ms)"
        )


def _note_if_unsteady(report: ArtifactReport, eager: Latency, other_cores: float | None = None) -> None:
    """Other processes busy on the host, or a p90 far above the p50 (the same, seen from the timings):
    the latencies and ratios of this run are not to be trusted."""
    if other_cores is not None and other_cores >= BUSY_HOST_CORES:
        report.notes.append(
            f"timings taken on a busy host: other processes kept {other_cores:.1f} of {os.cpu_count()} "
            "cores busy while timing; eager PyTorch and the lite interpreter (OpenMP thread pools) slow "
            "down far more than onnxruntime then: compare latencies from a quiet machine"
        )
        return
    for label, latency in (("eager PyTorch", eager), (report.format, report.latency)):
        if latency is not None and latency.p90 > UNSTEADY_SPREAD * latency.p50:
            report.notes.append(
                f"timings unsteady: {label}'s p90 is {latency.p90 / latency.p50:.0f}x its p50 "
                "(the host was busy); compare latencies from a quiet machine"
            )
            return


def _bound(run, arrays):
    return lambda: run(arrays)


def _check_budgets(target: Target, artifacts: list[ArtifactReport], origin: LatencyOrigin) -> None:
    """Size budgets always; latency budgets only on figures measured on the target's own architecture."""
    settings = {f.name: f for f in target.formats}
    for report in artifacts:
        budgets = settings[report.format].budgets
        if budgets.max_size_mb is not None and report.size_bytes is not None:
            report.budgets.append(BudgetCheck("size_mb", budgets.max_size_mb, report.size_bytes / 1e6))
        if budgets.max_p50_ms is not None and report.latency is not None:
            check = BudgetCheck("p50_ms", budgets.max_p50_ms, report.latency.p50, applied=not origin.host_measurement)
            report.budgets.append(check)
            if not check.applied and check.value > check.limit:
                report.notes.append(
                    f"p50 {check.value:.3f} ms on this {origin.measured_on} host is over the {target.arch} "
                    f"device budget of {check.limit:g} ms; not failed: {origin.budget_note}"
                )


def _attempts_text(captured: CapturedModel) -> str:
    return ", ".join(f"{a.strategy} {'ok' if a.ok else 'failed'}" for a in captured.attempts)


# `edgepack doctor`'s name in the Python API.
doctor = diagnose

__all__ = ["BuildRequest", "Observer", "SilentObserver", "build", "diagnose", "doctor", "EdgepackError"]
