"""Core ML (.mlpackage, ML program) for iOS and macOS apps.

Core ML prediction only runs on macOS. Elsewhere the saved package is read back, checked for
structure (spec version and op availability against the deployment target, inputs, outputs,
metadata, weights file digest and blob headers), and its ML program is evaluated by edgepack's NumPy
reference executor (edgepack.coreml_executor); a program with an op the executor lacks is reported
as not verified, never as passed. Latency is only measured on macOS.

Precisions: fp32 and fp16 are compute precisions. The compressed ones keep fp16 compute and
compress the weights after conversion (coremltools.optimize.coreml): int8-dynamic and int8-static
are int8 linear weight quantization (Core ML has no activation quantization on this path), and
palettize-N is an N-bit k-means lookup table per weight tensor.

Capture: the TorchScript capture by default. With `capture = "export"` in [formats.coreml], the
checked torch.export capture (an ExportedProgram that matched eager on every check input) is
converted instead; without one, or when coremltools cannot convert it, the TorchScript capture is,
and the notes say why. Not the default yet: the program's weight names change ("p_" prefix), and
they are the names `float_layers` and manifests use.
"""

from __future__ import annotations

import hashlib
import platform
import re
import struct
import sys
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ... import __version__, jsonio
from ...compare import compare_outputs, merge
from ...errors import BuildError, RuntimeUnavailable, UsageError, did_you_mean
from ...noise import log_lines, quiet_converter, short_reason, strip_ansi
from ...paths import scratch_tempdir
from ...targets import FormatSettings
from ..base import FLOAT_LAYERS, Calibration, Emitted, Format, Runner, register_format
from .executor import (
    LoadedPackage,
    UnsupportedOp,
    coremltools_module,
    program_op_types,
    unsupported_ops,
)
from .reproducible import stabilize_mlpackage

if TYPE_CHECKING:  # the format is read without torch; converting imports it (coremltools does anyway)
    from ...capture.ladder import CapturedModel

_ct = coremltools_module
_COMPUTE = ("fp32", "fp16")  # compute precisions; the compressed precisions compute in fp16, Core ML's usual
_PALETTE_BITS = {"palettize-4": 4, "palettize-6": 6, "palettize-8": 8}
_INT8 = ("int8-dynamic", "int8-static")
# Weight tensors smaller than this stay float under compression: biases and tiny kernels save
# nothing worth a dequantize op (coremltools' own default is 2048; 512 still compresses small nets).
WEIGHT_THRESHOLD = 512
# Core ML model inputs are fp16/fp32/fp64/int32 multi-arrays: int64 token ids travel as int32.
_INPUT_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int32, "int32": np.int32}
_FEATURE_DTYPES = {"float32": "FLOAT32", "float16": "FLOAT16", "int64": "INT32", "int32": "INT32"}
# Provenance every package carries in its user-defined metadata (checked by check_structure).
PROVENANCE_KEYS = (
    "edgepack.version",
    "edgepack.torch",
    "edgepack.coremltools",
    "edgepack.capture",
    "edgepack.precision",
    "edgepack.minimum_deployment_target",
    "edgepack.metadata_sources",
    "edgepack.weights_sha256",
)
_BLOB_SENTINEL = 0xDEADBEEF
CAPTURES = ("torchscript", "export")  # the `capture` option: which capture Core ML converts


@register_format
class CoreML(Format):
    name = "coreml"
    suffix = ".mlpackage"
    precisions = ("fp32", "fp16", "int8-dynamic", "int8-static", "palettize-4", "palettize-6", "palettize-8")
    calibrated_precisions = ()  # int8 here is weights only: no activation ranges to calibrate
    libraries = ("coremltools",)
    loggers = ("coremltools",)
    app_platforms = ("ios",)
    option_defaults = {"minimum_deployment_target": "iOS16", "capture": "torchscript"}

    def validate(self, settings: FormatSettings) -> None:
        super().validate(settings)
        known = [t.name for t in _ct().target if t.name.startswith("iOS") and t.value >= 7]
        target = self.option(settings, "minimum_deployment_target")
        if target not in known:
            raise UsageError(
                f"Core ML minimum_deployment_target '{target}' is not supported.",
                f"Choose one of {', '.join(known)} (ML programs with fp16 I/O need iOS16 or newer).",
            )
        chosen = self.option(settings, "capture")
        if chosen not in CAPTURES:
            raise UsageError(
                f"Core ML capture '{chosen}' is not known.{did_you_mean(str(chosen), list(CAPTURES))}",
                "Use 'torchscript' (the default) or 'export' (the checked torch.export program).",
            )

    def auto_precisions(self, settings: FormatSettings) -> tuple[str, ...]:
        """int8-static and int8-dynamic are the same int8 weights here: auto builds it once."""
        return tuple(p for p in self.precisions if p != "int8-static")

    def nearest_precision(self, requested: str) -> tuple[str, str]:
        if requested in _INT8:
            return requested, (
                "Core ML has no activation quantization here: int8 weights "
                "(linear_quantize_weights), activations and compute in fp16"
            )
        return super().nearest_precision(requested)

    def emit(
        self, captured: CapturedModel, settings: FormatSettings, path: Path, calibration: Calibration | None = None
    ) -> Emitted:
        # calibration is not needed: every Core ML scheme here compresses weights only.
        deployment = _deployment(settings, self)
        float_layers = list(settings.options.get(FLOAT_LAYERS, []))
        # scratch_tempdir: coremltools keeps each converted/compressed model as a tmp*.mlpackage until exit
        with quiet_converter() as log, scratch_tempdir("edgepack-coreml-"):
            mlmodel, consumed, capture_notes = _convert(
                captured, settings.precision, deployment, log, self.option(settings, "capture")
            )
            notes = [f"ML program, compute precision {_compute_precision(settings.precision)}"] + capture_notes
            if settings.precision not in _COMPUTE:
                mlmodel, compressed = _compress(mlmodel, settings.precision, float_layers)
                notes.append(
                    f"{_scheme(settings.precision)} on {len(compressed)} weight tensor(s)"
                    + (f"; kept in float: {', '.join(float_layers)}" if float_layers else "")
                )
            sources = _set_metadata(mlmodel, captured, settings.precision, deployment.name)
            mlmodel.save(str(path))
        # Written beside a program converted from an ExportedProgram: ExecuTorch's op-to-debug-handle map,
        # outside the package's Manifest.json; Core ML never reads it, and it is not part of the model.
        (path / "executorch_debug_handle_mapping.json").unlink(missing_ok=True)
        _seal_weights(path)
        spec = _ct().utils.load_spec(str(path))
        requirements = {
            "runtime": "Core ML",
            "minimum_deployment_target": deployment.name,
            "specification_version": spec.specificationVersion,
            "compute_precision": _compute_precision(settings.precision),
            "operators": sorted(program_op_types(spec)),
            # What the app passes and gets back (MLMultiArray types), which can differ from the manifest's
            # model-level dtypes: Core ML has no int64, so int64 ids travel as INT32.
            "io_types": {
                feature.name: _feature_type(feature)[0]
                for feature in list(spec.description.input) + list(spec.description.output)
            },
        }
        notes.append("metadata: " + ", ".join(f"{k} from {v}" for k, v in sources.items()))
        return Emitted(path, requirements, notes, capture=consumed)

    def quantizable_layers(self, captured: CapturedModel, settings: FormatSettings) -> list[str]:
        """Names of the weight constants a compressed emit compresses (the names FLOAT_LAYERS takes)."""
        with quiet_converter() as log, scratch_tempdir("edgepack-coreml-"):
            mlmodel = _convert(captured, "fp16", _deployment(settings, self), log, self.option(settings, "capture"))[0]
            return list(_weights(mlmodel))

    def check_structure(self, emitted: Emitted, captured: CapturedModel, settings: FormatSettings) -> list[str]:
        path = emitted.path
        if not (path / "Manifest.json").is_file():
            return [f"{path.name} has no Manifest.json: not a Core ML package"]
        try:
            spec = _ct().utils.load_spec(str(path))
        except Exception as exc:
            return [f"cannot read the package's model spec: {exc}"]
        if spec.WhichOneof("Type") != "mlProgram":
            return [f"model type is {spec.WhichOneof('Type')}, expected mlProgram"]
        deployment = _deployment(settings, self)
        problems = []
        if spec.specificationVersion != deployment.value:
            problems.append(
                f"specification version {spec.specificationVersion}, expected {deployment.value} "
                f"(minimum deployment target {deployment.name})"
            )
        problems += _opset_problems(spec, deployment)
        problems += _op_availability_problems(spec, deployment)
        problems += _io_problems(spec, captured)
        problems += _metadata_problems(spec)
        problems += _weight_problems(spec, path)
        if platform.system() == "Darwin" and not problems:  # macOS only: Core ML itself, per compute unit
            problems += _compute_unit_problems(emitted, captured, settings)
        return problems

    def weight_bytes(self, path: Path) -> int | None:
        # The weight file, blob headers included; constants of a few values live in the program itself.
        return sum(file.stat().st_size for file in _weights_dir(path).rglob("*") if file.is_file())

    def open(self, path: Path, threads: int) -> Runner:
        if platform.system() != "Darwin":
            return _reference_runner(path)
        return _predictor(path, "CPU_ONLY")

    def timed_here(self, settings: FormatSettings) -> bool:
        return platform.system() == "Darwin"

    def open_for_timing(self, path: Path, threads: int) -> Runner:
        if platform.system() != "Darwin":
            raise RuntimeUnavailable(f"Core ML prediction needs macOS (this is {platform.system()})")
        return _predictor(path, "CPU_ONLY")

    def structure_check_description(self) -> str:
        return "spec version, opset, op availability, inputs, outputs, metadata, weights digest"

    def stabilize(self, path: Path) -> list[str]:
        return stabilize_mlpackage(path)

    def verification_note(self) -> str:
        if platform.system() == "Darwin":
            return "Core ML predictions with CPU_ONLY; ALL compute units compared in the notes"
        return (
            "numerics checked with edgepack's NumPy reference executor for ML programs, "
            "not Core ML itself (Core ML prediction needs macOS)"
        )

    def converter_versions(self) -> dict[str, str]:
        return {"torch": version("torch"), "coremltools": _ct().__version__}


# --- conversion and compression --------------------------------------------------------------


def _deployment(settings: FormatSettings, fmt: Format) -> Any:
    return getattr(_ct().target, fmt.option(settings, "minimum_deployment_target"))


def _compute_precision(precision: str) -> str:
    return precision if precision in _COMPUTE else "fp16"


def _scheme(precision: str) -> str:
    if precision in _INT8:
        return "int8 linear weight quantization (symmetric, per channel)"
    return f"{_PALETTE_BITS[precision]}-bit k-means palettization"


def _convert(
    captured: CapturedModel, precision: str, deployment: Any, log: Any, capture: str = "torchscript"
) -> tuple[Any, str, list[str]]:
    """The ML program, the capture it was converted from ("export" or "torchscript"), and notes: with
    capture "export", the checked ExportedProgram, else (or when that fails) the TorchScript capture."""
    ct = _ct()
    options = dict(
        inputs=[_input_type(ct, spec) for spec in captured.loaded.inputs],
        outputs=[_output_type(ct, name, tensor) for name, tensor in zip(captured.output_names, captured.expected[0])],
        convert_to="mlprogram",
        minimum_deployment_target=deployment,
        compute_precision=ct.precision.FLOAT32 if _compute_precision(precision) == "fp32" else ct.precision.FLOAT16,
    )
    notes: list[str] = []
    if capture == "export":
        if captured.exported is None:
            reason = captured.export.reason if captured.export is not None else "not attempted"
            notes.append(
                f"converted the TorchScript capture ({captured.strategy}): no checked torch.export capture ({reason})"
            )
        else:
            try:
                return (
                    _convert_exported(ct, captured, options),
                    "export",
                    [f"converted the checked torch.export capture ({captured.export_strategy})"],
                )
            except Exception as exc:  # the converter raises many types; the TorchScript capture is checked too
                notes.append(
                    f"converted the TorchScript capture ({captured.strategy}): coremltools could not convert "
                    f"the torch.export capture ({short_reason(exc, 200)})"
                )
    try:
        return (
            ct.convert(captured.scripted_copy(), **options),
            "torchscript",
            notes,
        )  # a copy: the frontend edits graphs
    except Exception as exc:
        failure = exc
    # The TorchScript frontend fails on code the export frontend never sees (Python-side shape reads such as
    # Hugging Face's `pixel_values.shape[1]` check): the checked ExportedProgram is the fallback.
    if capture != "export" and captured.exported is not None:
        try:
            return (
                _convert_exported(ct, captured, options),
                "export",
                notes
                + [
                    f"converted the checked torch.export capture ({captured.export_strategy}): coremltools could not "
                    f"convert the TorchScript capture ({short_reason(failure, 200)})"
                ],
            )
        except Exception as exc:
            export_reason = short_reason(exc, 200)
    else:
        export_reason = ""
    raise _conversion_error(failure, log.getvalue(), captured, export_reason) from failure


def _convert_exported(ct: Any, captured: CapturedModel, options: dict) -> Any:
    from ...capture.export import rnn_decompositions

    exported = captured.exported_copy()
    with rnn_decompositions(any(spec.dynamic_axes() for spec in captured.loaded.inputs)):
        program = exported.run_decompositions({})  # coremltools' documented input
    return ct.convert(program, **options)


_OP_NAMED = re.compile(r"op '?\"?([A-Za-z_][\w:.]*)'?\"?|([A-Za-z_]\w*) not implemented")


def _conversion_error(exc: Exception, log: str, captured: CapturedModel, export_reason: str) -> BuildError:
    """The converter's reason, the op and the line it comes from when they can be found, and what to do; never
    the converter's progress bars ('Converting PyTorch Frontend ==> MIL Ops: 0%|')."""
    reason = strip_ansi(str(exc)).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
    op, where = _failing_op(exc, log, captured)
    message = f"Core ML conversion failed: {type(exc).__name__}: {reason}"
    if op:
        message += f" (op {op}{', at ' + where if where else ''})"
    if export_reason:
        message += f"; from the torch.export capture: {export_reason}"
    lines = log_lines(log)
    export_option = (
        ""
        if export_reason
        else (
            'set capture = "export" in the target\'s [formats.coreml] to convert '
            "the torch.export program (`edgepack doctor` says why there is none); "
        )
    )
    hint = (
        "Workarounds: rewrite that line with ops coremltools converts (or register a conversion with "
        f"coremltools' @register_torch_op); {export_option}or build with --allow-partial to ship the other formats."
    )
    if "Item selection is supported only on python list/tuple" in reason:
        hint = (
            "The model reads its input's shape in Python (x.shape[i], e.g. a channel-count check): the TorchScript "
            "frontend cannot index that. Remove or guard the check (`if not torch.jit.is_tracing()`), or fix the "
            "torch.export capture so Core ML converts it (`edgepack doctor` says why it failed); or build with "
            "--allow-partial to ship the other formats."
        )
    if lines:
        hint += "\nThe converter's last output:\n" + "\n".join(line[:200] for line in lines[-4:])
    return BuildError(message, hint)


def _failing_op(exc: Exception, log: str, captured: CapturedModel) -> tuple[str, str]:
    """The op coremltools names in its error (or the last node it was converting), and that op's source line."""
    text = strip_ansi(f"{exc}\n{log}")
    match = _OP_NAMED.search(text)
    name = (match.group(1) or match.group(2)) if match else ""
    if not name and "Item selection" in text:
        name = "__getitem__"
    if not name:
        return "", ""
    kind = name if "::" in name else f"aten::{name}"
    try:
        from ...capture.hazards import all_nodes, user_location

        for node in all_nodes(captured.scripted.inlined_graph):
            if node.kind() == kind:
                file, line = user_location(node)
                if not file:
                    frames = [f.strip() for f in str(node.sourceRange()).splitlines() if f.strip()]
                    return kind, frames[0][:200] if frames else ""
                return kind, f"{file}:{line}"
    except Exception:  # the location is a courtesy; the reason stands without it
        pass
    return kind, ""


def _weights(mlmodel: Any) -> dict[str, tuple[int, ...]]:
    """Weight constants at or above the compression threshold, by name, with their shapes."""
    from coremltools.optimize.coreml import get_weights_metadata

    found = get_weights_metadata(mlmodel, weight_threshold=WEIGHT_THRESHOLD)
    return {name: tuple(meta.val.shape) for name, meta in found.items()}


def _compress(mlmodel: Any, precision: str, float_layers: list[str]) -> tuple[Any, list[str]]:
    """Compress every weight above the threshold except `float_layers`; the names compressed."""
    import coremltools.optimize.coreml as cto

    weights = _weights(mlmodel)
    unknown = [name for name in float_layers if name not in weights]
    if unknown:
        raise UsageError(
            f"Core ML has no compressible weight named {', '.join(unknown)}.{did_you_mean(unknown[0], list(weights))}",
            f"Compressible weights: {', '.join(weights) or 'none'}.",
        )
    if precision in _INT8:
        op_config = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=WEIGHT_THRESHOLD
        )
        compress = cto.linear_quantize_weights
    else:
        op_config = cto.OpPalettizerConfig(
            mode="custom", lut_function=_kmeans_lut(_PALETTE_BITS[precision]), weight_threshold=WEIGHT_THRESHOLD
        )
        compress = cto.palettize_weights
    config = cto.OptimizationConfig(global_config=op_config, op_name_configs={name: None for name in float_layers})
    try:
        return compress(mlmodel, config), [name for name in weights if name not in float_layers]
    except Exception as exc:
        raise BuildError(
            f"Core ML weight compression ({precision}) failed: {type(exc).__name__}: {str(exc)[:300]}",
            "Try another precision, or keep the failing layer in float.",
        ) from exc


def _kmeans_lut(nbits: int, iterations: int = 30) -> Any:
    """k-means palettization in NumPy (Lloyd's algorithm on the distinct values, weighted by their
    counts, started from an even grid). coremltools' own kmeans mode needs scikit-learn for this."""

    def lut_function(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values, inverse, counts = np.unique(weight.ravel().astype(np.float64), return_inverse=True, return_counts=True)
        size = 1 << nbits
        if values.size <= size:
            lut = np.zeros(size)
            lut[: values.size] = values
            return lut.astype(weight.dtype), inverse.astype(np.uint8)
        centers = np.linspace(values[0], values[-1], size)  # evenly spread: the tails keep their own centres
        for _ in range(iterations):
            assign = np.abs(values[:, None] - centers[None, :]).argmin(axis=1)
            sums = np.bincount(assign, weights=values * counts, minlength=size)
            totals = np.bincount(assign, weights=counts, minlength=size)
            updated = np.where(totals > 0, sums / np.maximum(totals, 1e-300), centers)
            if np.allclose(updated, centers):
                break
            centers = updated
        assign = np.abs(values[:, None] - centers[None, :]).argmin(axis=1)
        return centers.astype(weight.dtype), assign[inverse].astype(np.uint8)

    return lut_function


def _input_type(ct: Any, spec: Any) -> Any:
    if spec.dtype not in _INPUT_DTYPES:
        raise BuildError(
            f"Core ML models cannot take {spec.dtype} input '{spec.name}'.", "Pass it as float32 or int32."
        )
    shape = spec.shape
    if spec.dynamic_axes():  # ML programs need a bounded range: 1 .. 8x the example size (at least 2048)
        shape = ct.Shape(
            [
                ct.RangeDim(lower_bound=1, upper_bound=max(8 * size, 2048), default=size) if symbol else size
                for symbol, size in zip(spec.dynamic, spec.shape)
            ]
        )
    return ct.TensorType(name=spec.name, shape=shape, dtype=_INPUT_DTYPES[spec.dtype])


def _output_type(ct: Any, name: str, example: np.ndarray) -> Any:
    # fp16 programs would otherwise return fp16 arrays; apps expect the model's own float32.
    return ct.TensorType(name=name, dtype=np.float32) if example.dtype == np.float32 else ct.TensorType(name=name)


# --- metadata --------------------------------------------------------------------------------


def _declared(captured: CapturedModel, attribute: str) -> str | None:
    """`__author__` / `__license__` / `__version__` of the Python module that defines the model class."""
    module = sys.modules.get(type(captured.loaded.module).__module__)
    value = getattr(module, attribute, None) if module is not None else None
    return str(value) if isinstance(value, (str, int, float)) and str(value).strip() else None


def _set_metadata(mlmodel: Any, captured: CapturedModel, precision: str, deployment: str) -> dict[str, str]:
    """Author, license, version and description, plus edgepack's provenance; returns where each came from."""
    loaded = captured.loaded
    module_name = type(loaded.module).__module__
    weights_sha = loaded.source.get("weights_sha256")
    defaults = {
        "author": f"{loaded.name} authors (not declared by the model; packaged by edgepack)",
        "license": f"not declared by {loaded.name}'s code: ask its authors before shipping",
        "version": f"{loaded.name}-weights-{weights_sha[:12]}"
        if weights_sha
        else f"{loaded.name} (edgepack {__version__})",
    }
    sources = {}
    for key in ("author", "license", "version"):
        declared = _declared(captured, f"__{key}__")
        setattr(mlmodel, key, declared or defaults[key])
        sources[key] = f"{module_name}.__{key}__" if declared else "edgepack default"
    mlmodel.short_description = (
        f"{loaded.name} ({type(loaded.module).__name__}), packaged by edgepack {__version__} in {precision}"
    )
    meta = mlmodel.user_defined_metadata
    meta["edgepack.version"] = __version__
    meta["edgepack.torch"] = version("torch")
    meta["edgepack.coremltools"] = _ct().__version__
    meta["edgepack.model"] = loaded.name
    meta["edgepack.source"] = str(loaded.source.get("reference", ""))
    meta["edgepack.capture"] = captured.strategy
    meta["edgepack.precision"] = precision
    meta["edgepack.minimum_deployment_target"] = deployment
    meta["edgepack.metadata_sources"] = jsonio.dumps(sources, sort_keys=True)
    if loaded.labels:
        meta["edgepack.labels"] = jsonio.dumps(loaded.labels)
    return sources


def _weights_dir(package: Path) -> Path:
    return package / "Data" / "com.apple.CoreML" / "weights"


def _weights_digest(package: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in _weights_dir(package).rglob("*") if p.is_file()):
        digest.update(file.relative_to(package).as_posix().encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _model_file(package: Path) -> Path:
    return package / "Data" / "com.apple.CoreML" / "model.mlmodel"


def _seal_weights(package: Path) -> None:
    """Record the weight files' sha256 in the model's metadata, so any changed byte is detected.
    The weights are written by save(); only the model spec file is rewritten here."""
    spec = _ct().proto.Model_pb2.Model()
    spec.ParseFromString(_model_file(package).read_bytes())
    spec.description.metadata.userDefined["edgepack.weights_sha256"] = _weights_digest(package)
    _model_file(package).write_bytes(spec.SerializeToString())


# --- structure checks ------------------------------------------------------------------------


def _opset_problems(spec: Any, deployment: Any) -> list[str]:
    """The program's functions must be written in the deployment target's opset (iOS16 = CoreML6)."""
    expected = _ct()._OPSET.get(deployment.value)
    found = sorted({f.opset for f in spec.mlProgram.functions.values()})
    if expected is None or found == [expected]:
        return []
    return [f"program opset {', '.join(found)}, expected {expected} for {deployment.name}"]


def _op_availability_problems(spec: Any, deployment: Any) -> list[str]:
    """Every op must exist in coremltools' op registry at the deployment target's opset."""
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    problems = []
    for op_type in sorted(program_op_types(spec)):
        versions = SSAOpRegistry.core_ops.get(op_type)
        if not versions:
            problems.append(f"op '{op_type}' is not a Core ML op coremltools knows")
            continue
        available = [t for t, cls in versions.items() if cls is not None and t.value <= deployment.value]
        if not available:
            first = min(versions, key=lambda t: t.value)
            problems.append(f"op '{op_type}' needs {first.name} or newer; the package targets {deployment.name}")
    return problems


def _feature_type(feature: Any) -> tuple[str, tuple[int, ...]]:
    array = feature.type.multiArrayType
    names = _ct().proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType
    return names.Name(array.dataType), tuple(array.shape)


def _io_problems(spec: Any, captured: CapturedModel) -> list[str]:
    """Names, dtypes and (fixed) shapes against what edgepack recorded for the model."""
    problems = []
    inputs = {i.name: i for i in spec.description.input}
    if [i.name for i in spec.description.input] != captured.input_names:
        problems.append(f"inputs are {sorted(inputs)}, expected {captured.input_names}")
    for declared in captured.loaded.inputs:
        found = inputs.get(declared.name)
        if found is None:
            continue
        dtype, shape = _feature_type(found)
        if dtype != _FEATURE_DTYPES.get(declared.dtype):
            problems.append(
                f"input '{declared.name}' is {dtype}, expected {_FEATURE_DTYPES.get(declared.dtype)} "
                f"(for {declared.dtype})"
            )
        if not declared.dynamic_axes() and shape != tuple(declared.shape):
            problems.append(f"input '{declared.name}' has shape {list(shape)}, expected {list(declared.shape)}")
    outputs = [o.name for o in spec.description.output]
    if outputs != captured.output_names:
        problems.append(f"outputs are {outputs}, expected {captured.output_names}")
        return problems
    fixed = not any(spec.dynamic_axes() for spec in captured.loaded.inputs)
    for feature, example in zip(spec.description.output, captured.expected[0]):
        dtype, shape = _feature_type(feature)
        if example.dtype == np.float32 and dtype != "FLOAT32":
            problems.append(f"output '{feature.name}' is {dtype}, expected FLOAT32")
        if fixed and shape and shape != tuple(example.shape):
            problems.append(f"output '{feature.name}' has shape {list(shape)}, expected {list(example.shape)}")
    return problems


def _metadata_problems(spec: Any) -> list[str]:
    meta = spec.description.metadata
    problems = [
        f"metadata has no {label}"
        for label, value in (
            ("author", meta.author),
            ("license", meta.license),
            ("version", meta.versionString),
            ("short description", meta.shortDescription),
        )
        if not value.strip()
    ]
    missing = [key for key in PROVENANCE_KEYS if not meta.userDefined.get(key)]
    if missing:
        problems.append(f"metadata lacks edgepack provenance: {', '.join(missing)}")
    return problems


def _weight_problems(spec: Any, package: Path) -> list[str]:
    """The weight files match the digest recorded at build, and every blob the program references
    has an intact header and lies inside its file."""
    problems = []
    for file_name, offset in sorted(_blob_references(spec)):
        weight_file = package / "Data" / "com.apple.CoreML" / file_name.replace("@model_path/", "")
        problems += _blob_problems(weight_file, file_name, offset)
    recorded = spec.description.metadata.userDefined.get("edgepack.weights_sha256")
    if recorded and not problems and _weights_digest(package) != recorded:
        problems.append(
            "the weights file differs from the one written at build (sha256 mismatch): it was altered after the build"
        )
    return sorted(set(problems))


def _blob_references(spec: Any) -> set[tuple[str, int]]:
    found: set[tuple[str, int]] = set()

    def walk(block: Any) -> None:
        for op in block.operations:
            for value in op.attributes.values():
                if value.WhichOneof("value") == "blobFileValue":
                    found.add((value.blobFileValue.fileName, value.blobFileValue.offset))
            for inner in op.blocks:
                walk(inner)

    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            walk(block)
    return found


def _blob_problems(weight_file: Path, file_name: str, offset: int) -> list[str]:
    # Blob header (coremltools' blob storage): sentinel, data type, size in bytes, data offset (+ reserved).
    if not weight_file.is_file():
        return [f"weight file {file_name} is missing"]
    size = weight_file.stat().st_size
    if offset + 24 > size:
        return [f"weight blob at offset {offset} lies beyond the end of {file_name}"]
    with weight_file.open("rb") as handle:
        handle.seek(offset)
        sentinel, _, length, data_offset = struct.unpack("<IIQQ", handle.read(24))
    if sentinel != _BLOB_SENTINEL:
        return [f"weight blob header at offset {offset} of {file_name} is damaged"]
    if data_offset + length > size:
        return [f"weight blob at offset {offset} lies beyond the end of {file_name}"]
    return []


# --- running ---------------------------------------------------------------------------------


def _reference_runner(path: Path) -> Runner:
    missing = unsupported_ops(path)
    if missing:
        raise RuntimeUnavailable(
            "Core ML prediction needs macOS, and edgepack's reference executor "
            f"cannot evaluate op(s) {', '.join(missing)}"
        )
    spec = _ct().utils.load_spec(str(path))
    in_names = [i.name for i in spec.description.input]
    out_names = [o.name for o in spec.description.output]

    loaded: list[LoadedPackage] = []  # loaded on the first run, where a failure is reported as the run's

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        try:
            if not loaded:
                loaded.append(LoadedPackage(path))
            result = loaded[0].run(dict(zip(in_names, inputs)))
        except UnsupportedOp as exc:
            raise RuntimeUnavailable(
                f"Core ML prediction needs macOS, and the reference executor cannot run: {exc}"
            ) from exc
        return [result[n] for n in out_names]

    return run


def _predictor(path: Path, compute_units: str) -> Runner:
    """Core ML itself (macOS only: the Linux coremltools wheel has no prediction library)."""
    ct = _ct()
    model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units))
    spec = model.get_spec()
    in_names = [i.name for i in spec.description.input]
    out_names = [o.name for o in spec.description.output]

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        feed = {n: a.astype(np.int32) if a.dtype == np.int64 else a for n, a in zip(in_names, inputs)}
        result = model.predict(feed)
        return [np.asarray(result[n]) for n in out_names]

    return run


def _compute_unit_problems(emitted: Emitted, captured: CapturedModel, settings: FormatSettings) -> list[str]:
    """macOS only: predict the golden samples with CPU_ONLY and with ALL compute units, each against
    eager, each reported in the artifact's notes; a unit out of tolerance is a problem.

    It lives in the structure check because that is the one hook that sees the eager outputs before
    the smoke test proper (which then runs CPU_ONLY). Written without a Mac at hand: it has never
    run on the Linux machines edgepack was developed on, where Core ML cannot predict at all."""
    tol, problems = settings.tolerance, []
    for units in ("CPU_ONLY", "ALL"):
        try:
            run = _predictor(emitted.path, units)
        except Exception as exc:
            problems.append(f"Core ML cannot load the package for {units} compute units: {type(exc).__name__}: {exc}")
            continue
        verdict = merge(
            [
                compare_outputs(
                    run([s[n].numpy() for n in captured.input_names]),
                    expected,
                    tol.atol,
                    tol.rtol,
                    tol.min_cosine,
                    f"golden sample {i}",
                    captured.output_names,
                )
                for i, (s, expected) in enumerate(zip(captured.samples, captured.expected))
            ]
        )
        emitted.notes.append(f"Core ML {units}: {verdict.reason}")
        if not verdict.ok:
            problems.append(f"Core ML prediction with {units} compute units: {verdict.reason}")
    return problems
