"""The bundle's manifest.json: what an app or firmware needs to load, feed and trust the artifacts,
and where they came from. Validated against the JSON Schema shipped in edgepack/schemas/ on every
write and every read, so a bundle that does not match the contract never leaves or enters edgepack.

Everything in it is a function of the inputs of the build (model, weights, target, library
versions, SOURCE_DATE_EPOCH), never of the clock or the machine's paths, so that two builds of
the same model give the same bytes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import re
import subprocess
import sys
from functools import cache
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import numpy as np

from .. import __version__, jsonio
from ..datafiles import loads_json
from ..errors import BuildError, UsageError
from .files import sha256_of, source_date_epoch

if TYPE_CHECKING:  # the verify/inspect commands read manifests without importing torch's stages
    from ..capture.ladder import CapturedModel
    from ..load import LoadedModel
    from ..report import ArtifactReport, BuildReport
    from ..targets import Target

MANIFEST_SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
SCHEMA_RESOURCE = "manifest.schema.json"
# Written after the manifest (report.*) or over it (manifest.sig), so the manifest cannot list them.
UNLISTED_FILES = ("manifest.json", "manifest.sig", "report.json", "report.md", "report.html")
# What every build runs on (the capture); each format adds the libraries that write and run it.
_CORE_LIBRARIES = ("torch", "numpy")


def build_manifest(
    captured: CapturedModel,
    target: Target,
    artifacts: list[ArtifactReport],
    golden: dict,
    bundle_dir: Path,
    outcome: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest for a staged bundle whose artifacts and golden files are already written."""
    from ..formats import FORMATS

    loaded = captured.loaded
    settings = {f.name: f for f in target.formats}
    converters: dict[str, str] = {}
    for report in artifacts:
        converters.update(FORMATS[report.format].converter_versions())
    capture = captured.to_json()
    document = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "edgepack_version": __version__,
        "model": {"name": loaded.name, "version": _model_version(loaded), "source": loaded.source},
        "target": _target_json(target),
        "inputs": [_input_json(spec.to_json(), loaded.preprocessing) for spec in loaded.inputs],
        "outputs": _outputs_json(captured),
        "labels": loaded.labels,
        "preprocessing": loaded.preprocessing,
        "capture": capture,
        "artifacts": [
            _artifact_json(a, settings[a.format], capture["strategy"]) for a in artifacts if a.path is not None
        ],
        "golden": golden,
        "converters": dict(sorted(converters.items())),
        "provenance": provenance(loaded.source, target, capture),
        "files": list_files(bundle_dir),
    }
    if outcome is not None:
        document["build"] = outcome
    return document


def build_outcome(report: BuildReport) -> dict[str, Any]:
    """The manifest's `build`: whether the build passed and why not, so that a failed bundle cannot pass for a
    good one once its folder is renamed; and the formats a partial bundle left out, with why."""
    return {
        "ok": report.ok,
        "problems": report.problems,
        "left_out": [{"format": a.format, "reason": a.smoke.reason} for a in report.artifacts if a.path is None],
        **_latency_origin(report),
    }


def _target_json(target: Target) -> dict[str, Any]:
    identity = {"name": target.name, "file": target.path.name, "sha256": target.sha256}
    return identity | ({"arch": target.arch} if target.arch else {})


def _latency_origin(report: BuildReport) -> dict[str, Any]:
    """Where report.json's latencies were measured: a host measurement is no evidence for the device."""
    origin = report.latency_origin
    if origin is None:
        return {}
    keys = ("measured_on", "target_arch", "host_measurement", "latency_budget_applied")
    return {"latency_measured_on": {key: origin.to_json()[key] for key in keys}}


def write_bundle_manifest(
    bundle_dir: Path,
    captured: CapturedModel,
    target: Target,
    artifacts: list[ArtifactReport],
    golden: dict,
    sign_key: Path | None = None,
    outcome: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write manifest.json (and manifest.sig when a signing key is given) into a staged bundle."""
    document = build_manifest(captured, target, artifacts, golden, bundle_dir, outcome)
    write_manifest(bundle_dir / MANIFEST, document)
    if sign_key is not None:
        from .signing import sign_manifest

        sign_manifest(bundle_dir, sign_key)
    return document


def provenance(source: dict[str, Any], target: Target, capture: dict[str, Any]) -> dict[str, Any]:
    """Where the model came from and what built it; the build time honours SOURCE_DATE_EPOCH."""
    # The demo ships inside edgepack: its version identifies it, and its path is only this machine's.
    module_file = _module_file(source) if source.get("kind") != "builtin-demo" else None
    built_at, clock = build_time()
    return {
        "source": {**source, "module_file": _display_path(module_file)},
        "git": git_state(module_file),
        "edgepack_version": __version__,
        "versions": {"python": platform.python_version(), **{lib: _version_of(lib) for lib in _libraries()}},
        "target": _target_json(target),
        "capture": {
            "strategy": capture["strategy"],
            "device_agnostic": capture.get("device_agnostic"),
            "rewrites": capture.get("rewrites", []),
        },
        "build_time": built_at,
        "build_time_source": clock,
    }


def build_time() -> tuple[str, str]:
    """(ISO 8601 UTC time, where it came from): SOURCE_DATE_EPOCH when set, else the clock."""
    epoch = source_date_epoch()
    if epoch is not None:
        return _iso(epoch), "SOURCE_DATE_EPOCH"
    return _iso(int(_dt.datetime.now(_dt.UTC).timestamp())), "clock"


def git_state(path: Path | None) -> dict[str, Any] | None:
    """The commit of the git checkout holding `path`, and whether the checkout differs from it
    (tracked files changed, or the model file itself not committed). None outside a checkout."""
    if path is None:
        return None
    folder = path if path.is_dir() else path.parent
    commit = _git(folder, "rev-parse", "HEAD")
    if commit is None:
        return None
    changed = _git(folder, "status", "--porcelain", "--untracked-files=no")
    tracked = path.is_file() and _git(folder, "ls-files", "--error-unmatch", path.name) is not None
    return {"commit": commit, "dirty": bool(changed) or (path.is_file() and not tracked)}


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None  # no git on this machine: no commit to record
    return done.stdout.strip() if done.returncode == 0 else None


def list_files(bundle_dir: Path) -> list[dict[str, Any]]:
    """Every file in the bundle the manifest can vouch for, with its sha256 and size, sorted by path."""

    files = []
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(bundle_dir).as_posix()
        if relative not in UNLISTED_FILES:
            files.append({"path": relative, "sha256": sha256_of(path), "size_bytes": path.stat().st_size})
    return files


def write_manifest(path: Path, document: dict[str, Any]) -> None:
    validate_manifest(document)
    path.write_text(dumps(document), encoding="utf-8")


def dumps(document: dict[str, Any]) -> str:
    """The manifest's one byte form (what gets hashed and signed)."""
    return jsonio.dumps(document, indent=2, ensure_ascii=False) + "\n"


def read_manifest(path: Path) -> dict[str, Any]:
    """Read and validate a manifest; UsageError saying what is wrong when it is not one."""
    try:
        document = loads_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(
            f"{path} does not exist.", "Point at a bundle folder holding manifest.json, or its .zip."
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}", "The manifest was damaged; rebuild the bundle.") from exc
    problems = schema_problems(document)
    if problems:
        raise UsageError(
            f"{path} does not match the manifest schema: {problems[0]}",
            "Rebuild the bundle with this edgepack version.",
        )
    return document


def validate_manifest(document: dict[str, Any]) -> None:
    problems = schema_problems(document)
    if problems:
        raise BuildError(
            f"edgepack wrote a manifest that breaks its own schema: {'; '.join(problems[:3])}",
            "This is an edgepack bug; please report it.",
        )


def schema_problems(document: Any) -> list[str]:
    """Each schema violation as `path: message`, most specific first; empty when valid."""
    errors = sorted(_validator().iter_errors(document), key=lambda e: (-len(e.absolute_path), str(e.absolute_path)))
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(top level)'}: {e.message}" for e in errors]


def manifest_schema() -> dict[str, Any]:
    """The manifest schema: edgepack/schemas/manifest.schema.json with each registered format's
    `requirements` schema (formats/<name>/requirements.schema.json) applied to its artifacts."""
    from ..formats import FORMATS

    return _schema_for(tuple(FORMATS))


@cache
def _schema_for(formats: tuple[str, ...]) -> dict[str, Any]:
    from ..formats import FORMATS

    schema = json.loads(resources.files("edgepack.schemas").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8"))
    artifact = schema["$defs"]["artifact"]
    artifact["properties"]["format"]["enum"] = list(formats)
    artifact["allOf"] = [
        {
            "if": {"properties": {"format": {"const": name}}, "required": ["format"]},
            "then": {"properties": {"requirements": FORMATS[name].requirements_schema()}},
        }
        for name in formats
    ]
    return schema


def _validator() -> jsonschema.protocols.Validator:
    from ..formats import FORMATS

    return _validator_for(tuple(FORMATS))


@cache
def _validator_for(formats: tuple[str, ...]) -> jsonschema.protocols.Validator:
    schema = _schema_for(formats)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _outputs_json(captured: CapturedModel) -> list[dict[str, Any]]:
    """Output shapes from the golden sample; an axis is dynamic when its size changed on the check
    inputs of other sizes, named after the input dimension it follows (else `<output>_dim<axis>`)."""
    cases = [(captured.samples[0], captured.expected[0])] + [(c.sample, c.expected) for c in captured.checks]
    input_dims = [
        (spec.name, axis, symbol) for spec in captured.loaded.inputs for axis, symbol in spec.dynamic_axes().items()
    ]
    outputs = []
    for index, (name, golden) in enumerate(zip(captured.output_names, captured.expected[0])):
        shapes = [(sample, np.shape(expected[index])) for sample, expected in cases if len(expected) > index]
        dynamic = {}
        for axis in range(np.ndim(golden)):
            if len({shape[axis] if len(shape) > axis else None for _, shape in shapes}) > 1:
                dynamic[str(axis)] = next(
                    (
                        symbol
                        for input_name, in_axis, symbol in input_dims
                        if all(
                            len(shape) > axis and tuple(sample[input_name].shape)[in_axis] == shape[axis]
                            for sample, shape in shapes
                        )
                    ),
                    f"{name}_dim{axis}",
                )
        outputs.append(
            {"name": name, "shape": list(np.shape(golden)), "dtype": str(golden.dtype), "dynamic_axes": dynamic}
        )
    return outputs


def _artifact_json(a: ArtifactReport, settings: Any, strategy: str) -> dict[str, Any]:
    return {
        "format": a.format,
        "path": a.path,
        "sha256": a.sha256,
        "size_bytes": a.size_bytes,
        "precision": a.precision,
        "precision_requested": a.precision_requested or a.precision,
        "float_layers": (a.quantization or {}).get("float_layers", []),
        "accuracy": a.accuracy.to_json() if a.accuracy else None,
        "capture_strategy": strategy,
        "capture_consumed": a.capture_consumed,
        "requirements": a.requirements,
        "smoke": a.smoke.status,
        "devices": a.devices.to_json() if a.devices else None,
        "smoke_detail": {key: a.smoke.to_json()[key] for key in ("reason", "max_abs_err", "cosine")},
        "tolerance": vars(settings.tolerance_for(a.precision)),
    }


def _is_past_cache(name: str) -> bool:
    return re.fullmatch(r"past_key_values_\d+_(key|value)", name) is not None


def _input_json(spec: dict[str, Any], preprocessing: dict[str, Any] | None) -> dict[str, Any]:
    # A 4-D float input is taken for an image unless it is a key/value cache fed back in (batch x heads x past x dim).
    is_image = len(spec["shape"]) == 4 and spec["dtype"].startswith("float") and not _is_past_cache(spec["name"])
    layout = (preprocessing or {}).get("layout") or ("NCHW" if is_image else None)
    return {
        **spec,
        "dynamic_axes": spec.get("dynamic_axes", {}),
        "layout": layout,
        "preprocessing": _normalization(preprocessing),
    }


def _normalization(preprocessing: dict[str, Any] | None) -> dict[str, Any] | None:
    """What an app applies to raw values before the model: x * scale, then (x - mean) / std."""
    if not preprocessing:
        return None
    picked: dict[str, Any] = {k: preprocessing[k] for k in ("scale", "mean", "std") if k in preprocessing}
    return picked or None


def _model_version(loaded: LoadedModel) -> str:
    """The weights' identity: the first 12 hex digits of the weights file's sha256, or, for a model built
    with its own weights (no --weights), of its parameters and buffers (names, dtypes, shapes, bytes)."""
    import torch

    digest = loaded.source.get("weights_sha256")
    if digest:
        return digest[:12]
    state = hashlib.sha256()
    for name, value in sorted(loaded.module.state_dict().items()):
        if not isinstance(value, torch.Tensor):  # extra state a module may keep in its state dict
            state.update(f"{name}:{value!r}\0".encode())
            continue
        tensor = value.int_repr() if value.is_quantized else value.to_dense() if value.is_sparse else value
        tensor = tensor.detach().cpu().contiguous().view(-1)
        state.update(f"{name}:{value.dtype}:{tuple(value.shape)}\0".encode())
        state.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return state.hexdigest()[:12]


def _module_file(source: dict[str, Any]) -> Path | None:
    reference = source.get("reference") or ""
    module_ref = reference.rpartition(":")[0]
    if module_ref.endswith(".py"):
        return Path(module_ref).expanduser().resolve()
    module = sys.modules.get(module_ref)
    file = getattr(module, "__file__", None)
    return Path(file) if file else None


def _display_path(path: Path | None) -> str | None:
    """Relative to the working folder when inside it (the same on every checkout), else absolute."""
    if path is None:
        return None
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def _libraries() -> list[str]:
    """torch first and numpy last, each registered format's libraries between, in registration order."""
    from ..formats import FORMATS

    named = (
        [_CORE_LIBRARIES[0]] + [lib for fmt in FORMATS.values() for lib in fmt.libraries] + list(_CORE_LIBRARIES[1:])
    )
    return list(dict.fromkeys(named))


def _version_of(library: str) -> str | None:
    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        return None


def _iso(epoch: int) -> str:
    return _dt.datetime.fromtimestamp(epoch, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
