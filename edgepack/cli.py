"""`edgepack` command line: a thin layer over edgepack.pipeline.build.

Exit codes: 0 every artifact passed, 1 a check failed, 2 bad usage or input.
"""

from __future__ import annotations

import contextlib
import gc
import linecache
import sys
import traceback
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from . import __version__, interrupts, jsonio
from .bundle.files import source_date_epoch
from .bundle.inspect import inspect_bundle, print_summary
from .bundle.signing import check_private_key, generate_keypair
from .bundle.verify import Verification, verify_bundle
from .config import find_config
from .errors import EdgepackError, UsageError
from .failures import disk_error
from .inputs import SPEC_SYNTAX, parse_input_spec
from .noise import stdout_to_stderr
from .progress import Status
from .targets import builtin_target_names, load_target

if TYPE_CHECKING:  # build and doctor import the pipeline (torch, converters) when they run; verify and inspect never do
    from .pipeline import BuildRequest
    from .report import ArtifactReport, BuildReport

# typer carries its own copy of click (typer._click) in recent versions; its exceptions are the ones raised.
_click_exceptions = getattr(getattr(typer.core, "_click", None), "exceptions", None) or __import__("click").exceptions


class _ContractGroup(TyperGroup):
    """Command-line mistakes click finds itself (an unknown option, a missing value) keep the contract of
    every other usage error: one `error:` line, a `hint:`, exit 2, and with --json one JSON document on
    stdout, instead of a rich error box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            code = super().main(argv, prog_name, complete_var, False, **extra)
        except _click_exceptions.NoArgsIsHelpError as exc:  # `edgepack` alone: the help, as before
            exc.show()
            sys.exit(exc.exit_code)
        except _click_exceptions.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx is not None else "edgepack"
            json_output = "--json" in argv
            try:
                _fail(
                    UsageError(exc.format_message(), f"Run '{command} --help' for the options and their values."),
                    json_output,
                )
            except typer.Exit as done:
                sys.exit(done.exit_code)
        except typer.Abort:
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


def _fold_long_words_in_help() -> None:
    """Rich cuts a word wider than the help column with '…' (at 80 columns, the --input syntax): fold it
    onto the next line instead, so every character of the help shows at any terminal width."""
    from typer import rich_utils

    original = getattr(rich_utils, "_get_parameter_help", None)
    if original is None or getattr(original, "_edgepack_folds", False):
        return

    def folded(*args, **kwargs):
        help_text = original(*args, **kwargs)  # a rich Columns of Text items
        for item in getattr(help_text, "renderables", [help_text]):
            if hasattr(item, "overflow"):
                item.overflow = "fold"
        return help_text

    folded._edgepack_folds = True  # type: ignore[attr-defined]
    rich_utils._get_parameter_help = folded


_fold_long_words_in_help()

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=_ContractGroup,
    help="Package PyTorch models as tested TorchScript Lite, Core ML and ONNX bundles.",
)
err_console = Console(stderr=True, soft_wrap=True)  # error text stays greppable: no hard wraps


class RichObserver:
    """Progress for people, on stderr: a spinner while a stage runs, one line when it ends."""

    _MARKS = {Status.DONE: "[green]✓[/]", Status.WARN: "[yellow]![/]", Status.FAIL: "[red]✗[/]"}

    def __init__(self, console: Console) -> None:
        self.console = console
        self.status = console.status("")

    def event(self, stage: str, status: Status, detail: str) -> None:
        if status == Status.START:
            self.status.update(f"{stage}: {detail}")
            self.status.start()
            return
        self.status.stop()
        self.console.print(f"{self._MARKS.get(status, ' ')} [bold]{stage:<22}[/] {escape(detail)}", highlight=False)


class QuietObserver:
    def event(self, stage: str, status: Status, detail: str) -> None:
        pass


def _version(value: bool) -> None:
    if value:
        print(f"edgepack {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = None,
) -> None:
    """edgepack: trace, convert, smoke-test and benchmark a PyTorch model for ios, android and iot targets."""


@app.command("build")
def build_command(
    target: Annotated[
        list[str],
        typer.Option("--target", "-t", help="Target name (ios, android, iot, all) or a .toml path; repeatable."),
    ] = [],
    model: Annotated[
        str | None,
        typer.Option(
            help="pkg.module:attr or path/file.py:attr (an nn.Module, class or factory). Default: the built-in demo model."
        ),
    ] = None,
    weights: Annotated[Path | None, typer.Option(help="State dict to load (read with weights_only=True).")] = None,
    input: Annotated[list[str], typer.Option("--input", "-i", help=f"Model input, repeatable: {SPEC_SYNTAX}.")] = [],
    name: Annotated[str | None, typer.Option(help="Bundle name (default: from the model's class).")] = None,
    out: Annotated[Path | None, typer.Option(help="Where bundles go (default: dist/).")] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="Settings file (default: ./edgepack.toml or [tool.edgepack] in ./pyproject.toml)."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print only one JSON document on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    strict: Annotated[
        bool, typer.Option(help="Count artifacts whose numerics could not be verified on this OS as failures.")
    ] = False,
    allow_partial: Annotated[
        bool,
        typer.Option(
            help="Ship the formats that passed; leave out (and report) those that could not be built or failed their smoke test."
        ),
    ] = False,
    capture: Annotated[
        str, typer.Option(help="Capture strategy: auto (trace, falling back to script, then hybrid), trace or script.")
    ] = "auto",
    check_inputs: Annotated[
        str | None,
        typer.Option(
            help="Extra inputs the capture and every artifact must match eager on: a .npz (one array per input, samples on axis 0) or a module:attr callable yielding dicts."
        ),
    ] = None,
    no_budgets: Annotated[
        bool, typer.Option("--no-budgets", help="Do not fail on the target's size and latency budgets.")
    ] = False,
    trust_weights: Annotated[
        bool, typer.Option(help="Allow --weights files that need full unpickling (runs code from the file).")
    ] = False,
    device_policy: Annotated[str, typer.Option(help=DEVICE_POLICY_HELP)] = "agnostic",
    trace_device: Annotated[str, typer.Option(help=TRACE_DEVICE_HELP)] = "cpu",
    sign_key: Annotated[
        Path | None,
        typer.Option(
            help="Ed25519 private key (PEM) to sign manifest.json with; writes manifest.sig. Make one with `edgepack keygen`."
        ),
    ] = None,
    archive: Annotated[
        bool,
        typer.Option(help="Also write a deterministic <bundle>.zip beside each passing bundle (reports left out)."),
    ] = False,
    precision: Annotated[
        str | None,
        typer.Option(
            help="Precision for every format: fp32, fp16, int8-dynamic, int8-static, palettize-4/6/8 (a format without that scheme uses its nearest one), or auto (every scheme the format offers, gated by the accuracy budget; the fastest ships). Default: the target's."
        ),
    ] = None,
    calibration: Annotated[
        str | None,
        typer.Option(
            help="Calibration data for int8-static: a .npz (one array per input, samples on axis 0), a folder of .npy files or images (put through the model's preprocessing), or a module:attr callable yielding batches. The demo model has its own."
        ),
    ] = None,
    optimize_for: Annotated[
        str,
        typer.Option(
            help="--precision auto: ship the fastest (latency) or the smallest (size) candidate within the accuracy budget."
        ),
    ] = "latency",
    eval_data: Annotated[
        str | None,
        typer.Option(
            help="Evaluation set accuracy is measured on against eager fp32, in the same forms as --calibration. Default: the demo's held-out split, else seeded random inputs (said in the report)."
        ),
    ] = None,
    track: Annotated[
        str | None,
        typer.Option(
            help='Log the build as a run in an experiment tracker: mlflow (needs pip install "edgepack[mlflow]").'
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            help="Tracking store for --track: any MLflow URI. Default: $MLFLOW_TRACKING_URI, else sqlite:///<out>/mlflow.db."
        ),
    ] = None,
    register: Annotated[
        str | None,
        typer.Option(help="With --track mlflow: register the bundles as a new version of this model name."),
    ] = None,
) -> None:
    """Build bundles for one or more targets: trace, convert, smoke-test, time and write dist/<model>/<target>/."""
    observer = QuietObserver() if quiet or json_output else RichObserver(err_console)
    with user_errors(json_output):
        request = _request(target, model, weights, input, name, out, config, strict, no_budgets, trust_weights)
        request.allow_partial, request.capture_mode, request.check_inputs = allow_partial, capture, check_inputs
        request.device_policy, request.trace_device = device_policy, trace_device
        _add_bundle_options(request, sign_key, archive)
        request.precision, request.calibration, request.eval_data = precision, calibration, eval_data
        request.optimize_for, request.freeze_imports = optimize_for, _process.owned
        from .pipeline import build
        from .tracking import check_tracking

        check_tracking(track, tracking_uri, register)  # before the build: a missing mlflow fails in a second
        with stdout_to_stderr() if json_output else contextlib.nullcontext():
            reports = build(request, observer)
            if track is not None:
                _track(reports, tracking_uri, register, sign_key)
    if json_output:
        document = (
            reports[0].to_json()
            if len(reports) == 1
            else {"ok": all(r.ok for r in reports), "builds": [r.to_json() for r in reports]}
        )
        print(jsonio.dumps(document, indent=2))
    elif not quiet:
        _print_summary(reports)
    raise typer.Exit(0 if all(r.ok for r in reports) else 1)


def _track(reports: list, uri: str | None, register: str | None, sign_key: Path | None) -> None:
    """--track mlflow: the run's id and store on stderr (stdout stays the --json document)."""
    from .tracking import log_build

    run = log_build(reports, uri, register, sign_key)
    registered = f", registered as {run.registered_model} version {run.model_version}" if run.model_version else ""
    err_console.print(f"mlflow: run {run.run_id} in {run.tracking_uri}{registered}")


DEVICE_POLICY_HELP = (
    "agnostic: every placement the trace recorded follows the input's device; target: pin "
    "everything to the phone's CPU. A deliberate .cpu() is kept and reported either way."
)
TRACE_DEVICE_HELP = (
    "Device to trace on: cpu, cuda, cuda:N, or auto (cuda when available). The bundle is made "
    "device-agnostic and checked on the CPU either way."
)


def _add_bundle_options(request: BuildRequest, sign_key: Path | None, archive: bool) -> None:
    source_date_epoch()  # a malformed SOURCE_DATE_EPOCH fails now, not after the whole build
    if sign_key is not None:
        check_private_key(sign_key)  # likewise a bad key
    request.sign_key, request.archive = sign_key, archive


def _request(
    target, model, weights, inputs, name, out, config, strict, no_budgets, trust_weights, need_target: bool = True
) -> BuildRequest:
    project = find_config(config, Path.cwd())
    targets = list(target) or project.targets
    if not targets and need_target:
        raise UsageError("No target given.", f"Add --target with one of: {', '.join(builtin_target_names())}, all.")
    if "all" in targets:
        targets = builtin_target_names()
    from_cli = model is not None
    from .pipeline import BuildRequest

    return BuildRequest(
        targets=targets,
        model=model if from_cli else project.model,
        weights=weights if from_cli else (weights or project.weights),
        inputs=[parse_input_spec(text) for text in (inputs or ([] if from_cli else project.inputs))],
        name=name if name is not None else project.name,  # --name "" is an (empty) name, refused, not the default
        out_dir=out or project.out or Path("dist"),
        trust_weights=trust_weights,
        strict=strict,
        check_budgets=not no_budgets,
        search_dir=project.root,
    )


@contextlib.contextmanager
def user_errors(json_output: bool) -> Iterator[None]:
    """Every command's error handling: an expected failure is an `error:` line, a hint and its exit code;
    anything else is an edgepack bug, shown with its traceback and exit 1. Python warnings raised meanwhile
    (torch's, the model's) are held back: shown after the error and hint, or at the end on success, so
    that a failure's first line is always its `error:` line. SIGINT/SIGTERM exit 130/143; the user's code
    calling sys.exit() is a usage error; a full disk is an error, not a traceback."""
    caught: list[warnings.WarningMessage] = []
    try:
        with interrupts.guarded(), warnings.catch_warnings(record=True) as caught:
            yield
    except EdgepackError as exc:
        _fail(exc, json_output, warned=caught)
    except SystemExit as exc:  # typer.Exit is not one: inside this block, only the user's code exits
        _fail(interrupts.exit_error(exc), json_output, warned=caught)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM: 128 + the signal, the previous bundle in place
        code = exc.exit_code if isinstance(exc, interrupts.Interrupted) else 130
        name = exc.args[0] if isinstance(exc, interrupts.Interrupted) else "SIGINT"
        _fail(
            EdgepackError(
                f"interrupted ({name}): stopped before finishing; bundles already in place were left as they were",
                "Run the command again.",
            ),
            json_output,
            code,
            caught,
        )
    except OSError as exc:
        disk = disk_error(exc)
        if disk is None:
            traceback.print_exc()
            _fail(
                EdgepackError(
                    f"internal error: {type(exc).__name__}: {exc}", "Please report this with the command you ran."
                ),
                json_output,
                warned=caught,
            )
        _fail(disk, json_output, warned=caught)
    except Exception as exc:
        traceback.print_exc()
        _fail(
            EdgepackError(
                f"internal error: {type(exc).__name__}: {exc}", "Please report this with the command you ran."
            ),
            json_output,
            warned=caught,
        )
    else:
        for w in caught:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _fail(
    exc: EdgepackError,
    json_output: bool,
    exit_code: int | None = None,
    warned: list[warnings.WarningMessage] | None = None,
) -> NoReturn:
    err_console.print(f"[red]error:[/] {escape(exc.message)}", highlight=False)
    if exc.hint:
        err_console.print(f"[dim]hint:[/] {escape(exc.hint)}", highlight=False)
    for w in warned or []:  # after the error: context for it, never in front of it
        err_console.print(
            f"[dim]warning:[/] {escape(f'{w.category.__name__}: {w.message}')} ({escape(str(w.filename))}:{w.lineno})",
            highlight=False,
        )
    if json_output:
        print(jsonio.dumps({"ok": False, "error": exc.message, "hint": exc.hint}, indent=2))
    raise typer.Exit(exc.exit_code if exit_code is None else exit_code)


# Piped to a file or a CI log, rich would wrap at 80 columns and cut "int8-static" to "int8-s…".
_PIPED_WIDTH = 140


def _print_summary(reports: list[BuildReport]) -> None:
    console = Console() if sys.stdout.isatty() else Console(width=_PIPED_WIDTH, soft_wrap=True)
    for report in reports:
        table = Table(title=f"{report.model} → {report.target}", title_justify="left")
        origin = report.latency_origin
        host = f" ({origin.label})" if origin is not None and origin.host_measurement else ""
        for column in ("format", "precision", "size", "smoke", "max abs err", f"p50 ms{host}", "p99 ms", "vs eager"):
            table.add_column(column, justify="left" if column in ("format", "precision", "smoke") else "right")
        eager = report.eager_latency
        if eager:
            table.add_row("eager PyTorch", "fp32", "", "", "", f"{eager.p50:.3f}", f"{eager.p99:.3f}", "1.00x")
        for a in report.artifacts:
            colour = {"passed": "green", "skipped": "yellow"}.get(a.smoke.status, "red")
            asked = a.precision_requested
            table.add_row(
                a.format,
                a.precision if asked in (None, a.precision) else f"{a.precision} (asked {asked})",
                f"{a.size_bytes / 1024:.1f} KiB" if a.size_bytes is not None else "-",
                f"[{colour}]{a.smoke.status}[/]",
                f"{a.smoke.max_abs_err:.2e}" if a.smoke.max_abs_err is not None else "-",
                f"{a.latency.p50:.3f}" if a.latency else "-",
                f"{a.latency.p99:.3f}" if a.latency else "-",
                f"{a.latency.p50 / eager.p50:.2f}x" if a.latency and eager else "-",
            )
        console.print(table)
        for a in report.artifacts:
            if a.path is None and report.allow_partial:
                console.print(
                    f"  [yellow]{a.format}[/] left out of the bundle: {escape(a.smoke.reason)}", highlight=False
                )
            elif a.smoke.status != "passed":
                console.print(f"  [yellow]{a.format}[/]: {escape(a.smoke.reason)}", highlight=False)
            if a.accuracy is not None:
                console.print(
                    f"  {a.format} {a.precision} vs eager fp32: {a.accuracy.summary()}{_size_text(a)}", highlight=False
                )
            auto = (a.quantization or {}).get("auto")
            if auto:
                console.print(
                    f"  {a.format} auto: {escape(auto['why'])} (evidence: {escape(auto['evidence'])})", highlight=False
                )
        console.print(f"  devices: {_devices_text(report.capture)}", highlight=False)
        if origin is not None and origin.host_measurement:
            console.print(f"  [yellow]latency:[/] {escape(origin.budget_note)}", highlight=False)
        for problem in report.problems:
            console.print(f"  [red]problem:[/] {escape(problem)}", highlight=False)
        console.print(f"  bundle: {report.bundle_dir}\n", highlight=False)


def _size_text(artifact: ArtifactReport) -> str:
    if not artifact.size_ratio:
        return ""
    text = f"; size {artifact.size_ratio:.2f}x of fp32"
    return text + (f" (weights {artifact.weight_ratio:.2f}x)" if artifact.weight_ratio else "")


def _devices_text(capture: dict) -> str:
    rewrites = capture.get("rewrites", [])
    changed = [r for r in rewrites if r["kind"] not in ("kept_cpu", "unresolved")]
    kept = [r for r in rewrites if r["kind"] == "kept_cpu"]
    verdict = "device-agnostic" if capture.get("device_agnostic") else "[red]NOT device-agnostic[/]"
    text = f"{verdict} (policy {capture.get('device_policy')}, {len(changed)} rewrite(s)"
    return text + (f", {len(kept)} deliberate CPU placement(s) kept)" if kept else ")")


@app.command("doctor")
def doctor_command(
    model: Annotated[
        str | None, typer.Option(help="pkg.module:attr or path/file.py:attr. Default: the built-in demo model.")
    ] = None,
    weights: Annotated[Path | None, typer.Option(help="State dict to load (read with weights_only=True).")] = None,
    input: Annotated[list[str], typer.Option("--input", "-i", help=f"Model input, repeatable: {SPEC_SYNTAX}.")] = [],
    config: Annotated[
        Path | None, typer.Option(help="Settings file (default: ./edgepack.toml or [tool.edgepack]).")
    ] = None,
    capture: Annotated[str, typer.Option(help="auto, trace or script.")] = "auto",
    check_inputs: Annotated[
        str | None, typer.Option(help="Extra check inputs: a .npz or a module:attr callable.")
    ] = None,
    trust_weights: Annotated[bool, typer.Option(help="Allow weights files that need full unpickling.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False,
    device_policy: Annotated[str, typer.Option(help=DEVICE_POLICY_HELP)] = "agnostic",
    trace_device: Annotated[str, typer.Option(help=TRACE_DEVICE_HELP)] = "cpu",
) -> None:
    """Find where tracing the model goes wrong, without building: each hazard with its line, why it matters and the fix."""
    with user_errors(json_output):
        request = _request(
            [], model, weights, input, None, None, config, False, False, trust_weights, need_target=False
        )
        request.capture_mode, request.check_inputs = capture, check_inputs
        request.device_policy, request.trace_device = device_policy, trace_device
        from .pipeline import diagnose

        with stdout_to_stderr() if json_output else contextlib.nullcontext():
            result = diagnose(request)
    if json_output:
        print(jsonio.dumps(result, indent=2))
    else:
        _print_diagnosis(result)
    raise typer.Exit(0 if result["ok"] else 1)


def _print_diagnosis(result: dict) -> None:
    console = Console(soft_wrap=True)
    hazards = result["hazards"]
    console.print(f"[bold]{result['model']}[/]: {len(hazards)} hazard(s)", highlight=False)
    for h in hazards:
        where = f"{h['file']}:{h['line']}" if h["file"] else "(unknown location)"
        console.print(f"\n[yellow]{h['kind']}[/] at {escape(where)}", highlight=False)
        code = linecache.getline(h["file"], h["line"]).strip() if h["file"] else ""
        if code:
            console.print(f"    {escape(code)}", highlight=False)
        console.print(escape(f"  what: {h['message']}\n  why:  {h['why']}\n  fix:  {h['fix']}"), highlight=False)
    console.print("\n[bold]capture attempts[/]", highlight=False)
    for a in result["attempts"]:
        detail = a["error"] or ""
        if a["divergence"]:
            detail = f"diverges on {a['divergence'][0]['label']}: {a['divergence'][0]['reason']}"
        console.print(f"  {a['strategy']:<7} {'ok' if a['ok'] else 'failed'}  {escape(detail)}", highlight=False)
    for unchecked in result.get("unchecked_sizes", []):
        console.print(
            f"  [yellow]not checked at {unchecked['size']}[/]: eager PyTorch fails there ({escape(unchecked['reason'])}); "
            "the bundle's dynamic dimension would be wider than the model",
            highlight=False,
        )
    if result.get("rewrites"):
        console.print("\n[bold]device pass[/]", highlight=False)
        lines = [
            f"{r['kind']:<17} {r['op']:<18} {r['source'] or '(no source line)'}  {r['detail']}"
            for r in result["rewrites"]
        ]
        for line, count in Counter(lines).items():  # one line per kind of rewrite: a transformer repeats them per layer
            console.print(f"  {escape(line)}" + (f"  (x{count})" if count > 1 else ""), highlight=False)
    _print_export(console, result.get("export"))
    if result["ok"]:
        console.print(f"  devices: {_devices_text(result)}", highlight=False)
        console.print(f"\n[green]result:[/] edgepack will use [bold]{result['strategy']}[/]", highlight=False)
    else:
        console.print(f"\n[red]result:[/] no trustworthy capture. {escape(result['hint'])}", highlight=False)


def _print_export(console: Console, export: dict | None) -> None:
    """The torch.export capture (what ONNX and Core ML can consume): each attempt, and a failure's line and fix."""
    if not export:
        return
    console.print("\n[bold]torch.export capture[/]", highlight=False)
    for a in export["attempts"]:
        d = a.get("diagnosis")
        if a["ok"] or not d:
            console.print(
                f"  {a['strategy']:<16} {'ok' if a['ok'] else 'failed'}  {escape(a['error'])}", highlight=False
            )
            continue
        where = f"{d['file']}:{d['line']}" if d["file"] else "(unknown location)"
        console.print(f"  {a['strategy']:<16} failed  [yellow]{d['kind']}[/] at {escape(where)}", highlight=False)
        code = linecache.getline(d["file"], d["line"]).strip() if d["file"] else ""
        if code:
            console.print(f"      {escape(code)}", highlight=False)
        console.print(escape(f"    what: {d['message']}\n    fix:  {d['fix']}"), highlight=False)
    found = export.get("rewrites", [])
    if found:
        sources = ", ".join(sorted({r["source"] or "(no source line)" for r in found}))
        console.print(
            f"  {len(found)} device literal(s) in the exported graph (at {escape(sources)}); ONNX and Core ML "
            "programs carry no placement",
            highlight=False,
        )
    verdict = (
        f'ONNX at opset >= 18 (and Core ML with capture = "export") converts the checked {export["strategy"]} program'
        if export["ok"]
        else "the formats built on torch.export fall back to the TorchScript capture"
    )
    console.print(f"  result: {verdict}", highlight=False)


@app.command("targets")
def targets_command(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the built-in targets and what each emits."""
    with user_errors(json_output):
        from .formats import known_options

        targets = [load_target(name, known_options()) for name in builtin_target_names()]
    if json_output:
        print(jsonio.dumps([t.summary() for t in targets], indent=2))
        return
    table = Table(title="edgepack targets", title_justify="left")
    for column in ("target", "arch", "formats", "description"):
        table.add_column(column)
    for t in targets:
        formats = ", ".join(f"{f.name} ({f.precision}{_option_text(f.options)})" for f in t.formats)
        table.add_row(t.name, t.arch or "-", formats, t.description)
    (Console() if sys.stdout.isatty() else Console(width=_PIPED_WIDTH)).print(table)


def _option_text(options: dict) -> str:
    return "".join(f", {k}={v}" for k, v in options.items())


@app.command("install-into")
def install_into_command(
    app_dir: Annotated[
        Path, typer.Argument(metavar="APP_DIR", help="The demo app's folder: android-demo/ or ios-demo/.")
    ],
    bundle: Annotated[
        Path, typer.Option(help="The bundle to install: a folder (dist/demo-digits/android) or its .zip.")
    ],
) -> None:
    """Copy a bundle (artifacts, manifest.json, manifest.sig, golden/) into a demo app, where the app reads it."""
    from .bundle.install import install_bundle
    from .bundle.verify import opened_bundle

    with user_errors(False), opened_bundle(bundle) as bundle_dir:
        installed = install_bundle(app_dir, bundle_dir)
    print(
        f"installed {installed.model} ({installed.target} bundle: {', '.join(installed.files)}) "
        f"into the {installed.platform} app at {installed.destination}\nnext, in {app_dir}: {installed.next_step}"
    )


@app.command("verify")
def verify_command(
    path: Annotated[
        Path, typer.Argument(help="A bundle folder (dist/<model>/<target>) or the .zip written by --archive.")
    ],
    public_key: Annotated[Path | None, typer.Option(help="Ed25519 public key (PEM): also check manifest.sig.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False,
) -> None:
    """Check a bundle: manifest schema, every sha256, the signature, and each artifact's smoke test on the golden vectors."""
    with user_errors(json_output):
        result = verify_bundle(path, public_key)
    if json_output:
        print(jsonio.dumps(result.to_json(), indent=2))
    else:
        _print_verification(result)
    raise typer.Exit(0 if result.ok else 1)


def _print_verification(result: Verification) -> None:
    console = Console(soft_wrap=True)
    marks = {"ok": "[green]✓[/]", "skipped": "[yellow]-[/]", "failed": "[red]✗[/]"}
    for check in result.checks:
        console.print(f"{marks[check.status]} {escape(check.name)}: {escape(check.detail)}", highlight=False)
    verdict = "[green]OK[/]" if result.ok else f"[red]FAILED[/] ({len(result.failures)} check(s))"
    console.print(f"\n{result.path}: {verdict}", highlight=False)


@app.command("inspect")
def inspect_command(
    path: Annotated[Path, typer.Argument(help="A bundle folder or its .zip.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False,
) -> None:
    """Summarize a bundle: inputs, outputs, artifacts, precision, sizes, provenance and latency."""
    with user_errors(json_output):
        summary = inspect_bundle(path)
    if json_output:
        print(jsonio.dumps(summary, indent=2))
    else:
        print_summary(summary, Console(soft_wrap=True))


@app.command("compare")
def compare_command(
    old: Annotated[
        Path, typer.Argument(metavar="OLD", help="The earlier build: a bundle folder, its .zip, or dist/<model>.")
    ],
    new: Annotated[Path, typer.Argument(metavar="NEW", help="The build to compare with it, in the same form.")],
    fail_on: Annotated[
        str | None,
        typer.Option(
            help="Exit 1 when a change passes a limit: size=+5%,p50=+10%,p90=+2ms,accuracy=-0.5pt (latency only "
            "beyond the timings' run-to-run spread)."
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print only one JSON document on stdout.")] = False,
) -> None:
    """Show what changed between two builds (size, latency, accuracy, smoke, precision, capture, versions, signature)."""
    from .bundle.diff import compare_bundles, print_diff
    from .bundle.gates import parse_gates

    with user_errors(json_output):
        diff = compare_bundles(old, new, parse_gates(fail_on) if fail_on is not None else None)
    if json_output:
        print(jsonio.dumps(diff.to_json(), indent=2))
    else:
        print_diff(diff, Console(width=_PIPED_WIDTH, soft_wrap=True) if not sys.stdout.isatty() else Console())
    raise typer.Exit(0 if diff.ok else 1)


@app.command("keygen")
def keygen_command(
    private_key: Annotated[
        Path,
        typer.Argument(
            help="Where to write the private key (PEM); keep it secret. Its folder must exist (as with ssh-keygen)."
        ),
    ] = Path("edgepack.key"),
    public_key: Annotated[
        Path | None, typer.Option(help="Where to write the public key (default: PRIVATE_KEY with .pub).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace existing key files.")] = False,
) -> None:
    """Make an Ed25519 key pair for `build --sign-key` and `verify --public-key`."""
    public_key = public_key or private_key.with_suffix(".pub")
    with user_errors(False):
        generate_keypair(private_key, public_key, force)
    err_console.print(
        f"private key: {private_key} (mode 600, keep it secret)\npublic key:  {public_key}", highlight=False
    )


class _process:
    """Whether this command owns its process (started from `run`, not called in a test or a host program)."""

    owned = False


def run() -> None:
    """Console-script entry point: the process ends with the command."""
    _process.owned = True
    try:
        sys.exit(app())
    finally:
        # The interpreter's teardown collects every object again (1.6 s after a build); nothing is left to
        # clean up there: bundles, scratch folders and probes were each closed by their own `with` block.
        gc.freeze()
