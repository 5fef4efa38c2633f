"""The Python API on model objects: what a notebook or a training script calls with the model it holds.

    import torch, edgepack
    result = edgepack.build(MyNet().eval(), torch.randn(1, 3, 64, 64), target="android")
    result.raise_for_status()
    print(result["android"].artifact("onnx").latency)

`build` and `doctor` also accept the older `BuildRequest` (a model named by a `module:attr` string plus
input specs) and then return what they always did (a list of BuildReport, a dict), so existing callers keep
working. Options have the CLI's names with '_' for '-', and errors name them so (`eval_data=`, not
`--eval-data`). Nothing carries over between calls: each build works on its own deep copy of the model
and reads no settings file (the CLI's edgepack.toml is for the CLI).

torch is imported when `build` or `doctor` runs, never for `verify` and `inspect`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from ..errors import UsageError
from ..tracking import check_tracking, log_build
from .naming import named_for_python
from .result import Artifact, BuildFailed, BuildResult, Bundle, Diagnosis

if TYPE_CHECKING:
    from ..bundle.verify import Verification
    from ..pipeline import BuildRequest
    from ..progress import Observer
    from ..quantize.calibration import DataSource
    from ..report import BuildReport
    from ..targets import Target


@overload
def build(model: BuildRequest, example_inputs: Observer | None = None) -> list[BuildReport]: ...


@overload
def build(
    model: Any,
    example_inputs: Any,
    target: str | Target | Sequence[str | Target] | None = None,
    *,
    dynamic: Mapping[str, Mapping[int, str]] | None = None,
    out: str | Path = "dist",
    precision: str | None = None,
    optimize_for: str = "latency",
    calibration: DataSource | None = None,
    eval_data: DataSource | None = None,
    name: str | None = None,
    weights: str | Path | None = None,
    trust_weights: bool = False,
    strict: bool = False,
    allow_partial: bool = False,
    capture: str = "auto",
    check_inputs: str | None = None,
    no_budgets: bool = False,
    device_policy: str = "agnostic",
    trace_device: str = "cpu",
    sign_key: str | Path | None = None,
    archive: bool = False,
    observer: Observer | None = None,
    track: str | None = None,
    tracking_uri: str | None = None,
    register: str | None = None,
) -> BuildResult: ...


def build(
    model: Any,
    example_inputs: Any = None,
    target: str | Target | Sequence[str | Target] | None = None,
    *,
    dynamic: Mapping[str, Mapping[int, str]] | None = None,
    out: str | Path = "dist",
    precision: str | None = None,
    optimize_for: str = "latency",
    calibration: DataSource | None = None,
    eval_data: DataSource | None = None,
    name: str | None = None,
    weights: str | Path | None = None,
    trust_weights: bool = False,
    strict: bool = False,
    allow_partial: bool = False,
    capture: str = "auto",
    check_inputs: str | None = None,
    no_budgets: bool = False,
    device_policy: str = "agnostic",
    trace_device: str = "cpu",
    sign_key: str | Path | None = None,
    archive: bool = False,
    observer: Observer | None = None,
    track: str | None = None,
    tracking_uri: str | None = None,
    register: str | None = None,
) -> BuildResult | list[BuildReport]:
    """Package `model` for one or more targets; one bundle per target under `out/<name>/<target>/`.

    model: an `nn.Module` (copied first: your object is left as it was), a factory (a class or function
        taking no arguments), or a `"pkg.module:attr"` / `"path/file.py:attr"` string as on the CLI.
    example_inputs: a tensor, a tuple of tensors (named after `forward`'s parameters), or a dict of named
        tensors. Shapes and dtypes come from them; the example is the first golden sample every artifact
        is checked on (three seeded random ones follow; integer inputs stay within the example's values).
    target: "ios", "android", "iot", "all", a path to a target .toml, a `Target`, or a list of those.
    dynamic: dimensions that may vary, per input: `{"input_ids": {1: "SEQ"}}` (axis -> upper-case symbol).
    calibration, eval_data: as on the CLI (a .npz, a folder, a "module:attr" callable), or the data itself:
        a DataLoader or any iterable of batches (dicts, tensors or arrays, or `(x, label)` tuples: the
        inputs first, in forward's order); a single tensor or dict is one batch.
    precision: a scheme (`"int8-static"`, ...) or `"auto"`: every candidate measured, the fastest within the
        accuracy budget ships (optimize_for="size": the smallest).
    track: "mlflow" logs the build as an MLflow run (tracking_uri: the store, default a SQLite file in `out`;
        register: a model name to register the bundles under); the run is `result.tracked`.
    The other options are the CLI's (`edgepack build --help`), '-' written '_'.

    Returns a BuildResult; `.raise_for_status()` raises BuildFailed when a check failed. Bad arguments raise
    UsageError naming the parameter. Called with a BuildRequest (the older form), returns its list of
    BuildReport as before.

    >>> result = edgepack.build(net.eval(), torch.randn(1, 3, 64, 64), target="android")
    >>> result = edgepack.build(encoder, {"input_ids": ids, "attention_mask": mask}, target="iot",
    ...                         dynamic={"input_ids": {1: "SEQ"}, "attention_mask": {1: "SEQ"}})
    >>> [(a.format, a.size_bytes, a.latency.p50 if a.latency else None) for a in result.artifacts]
    """
    from ..pipeline import BuildRequest
    from ..pipeline import build as run_build

    if isinstance(model, BuildRequest):  # the older form: build(request) or build(request, observer)
        return run_build(model, example_inputs if example_inputs is not None else observer)
    with named_for_python():
        check_tracking(track, tracking_uri, register)  # before the build: fails in a second
        request = _request(model, example_inputs, dynamic, name, weights, trust_weights, capture, check_inputs)
        request.targets = _targets(target)
        request.out_dir, request.precision, request.optimize_for = Path(out), precision, optimize_for
        request.calibration, request.eval_data = calibration, eval_data
        request.strict, request.allow_partial, request.check_budgets = strict, allow_partial, not no_budgets
        request.device_policy, request.trace_device = device_policy, trace_device
        request.archive, request.sign_key = archive, _sign_key(sign_key)
        reports = run_build(request, observer)
        tracked = log_build(reports, tracking_uri, register, request.sign_key) if track is not None else None
        return BuildResult.of(reports, tracked)


@overload
def doctor(model: BuildRequest) -> dict[str, Any]: ...


@overload
def doctor(
    model: Any,
    example_inputs: Any,
    *,
    dynamic: Mapping[str, Mapping[int, str]] | None = None,
    weights: str | Path | None = None,
    trust_weights: bool = False,
    capture: str = "auto",
    check_inputs: str | None = None,
    device_policy: str = "agnostic",
    trace_device: str = "cpu",
) -> Diagnosis: ...


def doctor(
    model: Any,
    example_inputs: Any = None,
    *,
    dynamic: Mapping[str, Mapping[int, str]] | None = None,
    weights: str | Path | None = None,
    trust_weights: bool = False,
    capture: str = "auto",
    check_inputs: str | None = None,
    device_policy: str = "agnostic",
    trace_device: str = "cpu",
) -> Diagnosis | dict[str, Any]:
    """Capture the model with every check and build nothing: where tracing goes wrong, why, and the fix.

    Arguments as for `build`. Returns a Diagnosis: `ok` (a trustworthy capture exists), `strategy`,
    `hazards` (kind, message, file, line, why, fix), `rewrites` (device placements changed), `attempts`
    (each capture strategy tried), `export_strategy`; `raw` is the `edgepack doctor --json` document.
    Called with a BuildRequest (the older form), returns that dict as before.

    >>> report = edgepack.doctor(net, torch.randn(1, 3, 64, 64))
    >>> [(h.kind, h.file, h.line, h.fix) for h in report.hazards]
    """
    from ..pipeline import BuildRequest, diagnose

    if isinstance(model, BuildRequest):
        return diagnose(model)
    with named_for_python():
        request = _request(model, example_inputs, dynamic, None, weights, trust_weights, capture, check_inputs)
        request.device_policy, request.trace_device = device_policy, trace_device
        return Diagnosis.of(diagnose(request))


def verify(path: str | Path, public_key: str | Path | None = None) -> Verification:
    """`edgepack verify`: check a bundle folder or its .zip (schema, hashes, signature with `public_key`,
    golden vectors, each artifact rerun in its runtime). Does not import torch for an ONNX-only bundle.

    >>> check = edgepack.verify("dist/my-net/android")
    >>> check.ok, [c.name for c in check.failures]
    """
    from ..bundle.verify import verify_bundle

    with named_for_python():
        return verify_bundle(Path(path), Path(public_key) if public_key is not None else None)


def inspect(path: str | Path) -> dict[str, Any]:
    """`edgepack inspect --json`: a bundle's inputs, outputs, artifacts, provenance and latency. Reads only.

    >>> edgepack.inspect("dist/my-net/android")["artifacts"][0]["precision"]
    """
    from ..bundle.inspect import inspect_bundle

    with named_for_python():
        return inspect_bundle(Path(path))


def _request(
    model: Any,
    example_inputs: Any,
    dynamic: Mapping[str, Mapping[int, str]] | None,
    name: str | None,
    weights: str | Path | None,
    trust_weights: bool,
    capture: str,
    check_inputs: str | None,
) -> BuildRequest:
    from ..pipeline import BuildRequest
    from .objects import loaded_from_objects

    if example_inputs is None:
        raise UsageError(
            "example_inputs is missing: edgepack reads the inputs' names, shapes and dtypes from them.",
            "Pass an example, e.g. edgepack.build(model, torch.randn(1, 3, 224, 224), target='android').",
        )
    loaded = loaded_from_objects(
        model, example_inputs, dynamic, name, Path(weights) if weights is not None else None, trust_weights
    )
    request = BuildRequest(targets=[], name=name, capture_mode=capture, check_inputs=check_inputs, loaded=loaded)
    request.search_dir = Path.cwd()  # where a "module:attr" check_inputs/calibration is imported from
    return request


def _targets(target: Any) -> list[str | Target]:
    from ..targets import Target, builtin_target_names

    if target is None:
        raise UsageError(
            "target is missing.", f"Pass target= one of {', '.join(builtin_target_names())}, 'all', or a list."
        )
    given = [target] if isinstance(target, (str, Path, Target)) else list(target)
    if not given or not all(isinstance(t, (str, Path, Target)) for t in given):
        raise UsageError(
            f"target is {target!r}; give a target name, a .toml path, a Target, or a list of those.",
            f"The built-in targets: {', '.join(builtin_target_names())} (or 'all').",
        )
    names: list[str | Target] = [str(t) if isinstance(t, Path) else t for t in given]
    if "all" in names:
        return list(builtin_target_names())
    return names


def _sign_key(sign_key: str | Path | None) -> Path | None:
    from ..bundle.files import source_date_epoch
    from ..bundle.signing import check_private_key

    source_date_epoch()  # a malformed SOURCE_DATE_EPOCH fails now, not after the whole build
    if sign_key is None:
        return None
    check_private_key(Path(sign_key))
    return Path(sign_key)


__all__ = ["Artifact", "Bundle", "BuildFailed", "BuildResult", "Diagnosis", "build", "doctor", "inspect", "verify"]
