"""ONNX (.onnx) for onnxruntime on Android, iOS and embedded Linux.

At opset 18 and up, the checked torch.export capture (`captured.exported`, an ExportedProgram that
matched eager on every check input) goes through the torch.export-based exporter: what ships is
what was checked. Without one (the export capture failed: the notes say why), at an opset below
18, or when that exporter fails, the TorchScript exporter converts the TorchScript capture, which
keeps its control flow as ONNX If/Loop. Dimensions declared dynamic stay dynamic in the graph.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
import torch

from ...capture.export import rnn_decompositions
from ...capture.ladder import CapturedModel
from ...errors import BuildError, UsageError
from ...noise import quiet_converter, short_reason, strip_ansi, tail
from .optimize import check_level, optimization_requirements, optimize_onnx
from . import ort_format
from .session import runner
from ...targets import FormatSettings
from . import quantize as ort_quant
from ..base import FLOAT_LAYERS, Calibration, Companion, Emitted, Format, Runner, register_format

_MIN_OPSET, _MAX_OPSET = 13, 21
# The torch.export-based exporter writes opset 18 or newer (it ignores lower requests), and onnx's
# version converter breaks some ops going down (ReduceMean 18 -> 17), so older opsets take the
# TorchScript exporter.
_DYNAMO_MIN_OPSET = 18


@register_format
class Onnx(Format):
    name = "onnx"
    suffix = ".onnx"
    precisions = ("fp32", "int8-dynamic", "int8-static")
    libraries = ("onnx", "onnxruntime")
    loggers = ("torch.onnx", "onnxscript")
    option_defaults = {"opset": 18, "optimization": "basic", ort_format.OPTION: False}
    # (captured, (id, opset), pre-processed float model bytes, notes): the last float export, reused by the ladder.
    _cache: tuple | None = None

    def nearest_precision(self, requested: str) -> tuple[str, str]:
        if requested.startswith("palettize-"):
            return "int8-dynamic", f"{self.name} has no palettization; int8 weights (int8-dynamic) instead"
        if requested == "fp16":  # onnxruntime's CPU provider computes fp16 graphs through casts: no gain
            return "fp32", f"{self.name} is built in fp32 for fp16: onnxruntime's CPU kernels are float32"
        return super().nearest_precision(requested)

    def quantizable_layers(self, captured: CapturedModel, settings: FormatSettings) -> list[str]:
        if settings.precision not in ("int8-dynamic", "int8-static"):
            return []
        with tempfile.TemporaryDirectory() as tmp:
            prepared, _, _ = self._prepared_float(captured, settings, Path(tmp))
            return ort_quant.quantizable_nodes(prepared, settings.precision)

    def validate(self, settings: FormatSettings) -> None:
        super().validate(settings)
        opset = self.option(settings, "opset")
        if isinstance(opset, bool) or not isinstance(opset, int):
            raise UsageError(f"ONNX opset must be a whole number, got {type(opset).__name__} {opset!r}.",
                             f"Write opset = {opset if isinstance(opset, str) and opset.isdigit() else 18} "
                             f"(a number, no quotes), from {_MIN_OPSET} to {_MAX_OPSET}.")
        if not _MIN_OPSET <= opset <= _MAX_OPSET:
            raise UsageError(f"ONNX opset {opset!r} is not supported.", f"Choose an opset from {_MIN_OPSET} to {_MAX_OPSET}.")
        check_level(self.option(settings, "optimization"))
        ort_format.validate_option(self.option(settings, ort_format.OPTION))

    def emit(self, captured: CapturedModel, settings: FormatSettings, path: Path,
             calibration: Calibration | None = None) -> Emitted:
        opset = self.option(settings, "opset")
        if settings.precision == "fp32":
            notes, consumed = self._export_float(captured, path, opset)
            notes += optimize_onnx(path, self.option(settings, "optimization"))
        else:
            with tempfile.TemporaryDirectory() as tmp:
                prepared, notes, consumed = self._prepared_float(captured, settings, Path(tmp))
                notes = notes + ort_quant.quantize(prepared, path, settings.precision, calibration, captured.input_names,
                                                   list(settings.options.get(FLOAT_LAYERS, [])))
            _strip_debug_metadata(path)
            notes += ort_quant.tidy(path)
        model = onnx.load(str(path))
        if _default_domain_opset(model) != opset:
            raise BuildError(f"The exporter wrote opset {_default_domain_opset(model)}, not the requested {opset}.",
                             "Choose the opset the exporter writes, or report this.")
        try:
            # No full_check: its shape inference rejects valid Loop bodies that onnxruntime runs;
            # the smoke test in onnxruntime is the judge of numerics.
            onnx.checker.check_model(model)
        except Exception as exc:
            raise BuildError(f"The exported ONNX model is invalid: {exc}", "Report this with the model that produced it.") from exc
        requirements = {
            "runtime": "onnxruntime",
            "opset": _default_domain_opset(model),
            "ir_version": model.ir_version,
            "operators": sorted({f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in model.graph.node}),
            # A quantized graph is prepared by onnxruntime's quant_pre_process instead (fusions would hide ops from it).
            **optimization_requirements(model, self.option(settings, "optimization") if settings.precision == "fp32" else "none"),
        }
        return Emitted(path, requirements, notes, capture=consumed)

    def add_companions(self, emitted: Emitted, captured: CapturedModel, settings: FormatSettings) -> None:
        if self.option(settings, ort_format.OPTION):  # also a .ort + required-operators config, checked
            emitted.requirements["ort_format"], notes = ort_format.write_ort(emitted.path, captured, settings)
            emitted.notes += notes

    def _export_float(self, captured: CapturedModel, path: Path, opset: int) -> tuple[list[str], str]:
        """Notes, and the capture the graph was exported from ("export" or "torchscript")."""
        args = tuple(torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in _example_args(captured))
        notes, consumed = _export(captured, args, path, opset)
        _strip_debug_metadata(path)
        return notes, consumed

    def _prepared_float(self, captured: CapturedModel, settings: FormatSettings,
                        folder: Path) -> tuple[Path, list[str], str]:
        """The float model after ORT's pre-processing, in `folder`, its notes and the capture it came from.
        The last one is kept in memory: the accuracy ladder quantizes the same capture many times, and
        exporting is the slow part."""
        key = (id(captured), self.option(settings, "opset"))
        if self._cache is None or self._cache[0] is not captured or self._cache[1] != key:
            exported = folder / "float.onnx"
            notes, consumed = self._export_float(captured, exported, key[1])
            notes += ort_quant.preprocess(exported, folder / "prepared.onnx")
            self._cache = (captured, key, (folder / "prepared.onnx").read_bytes(), notes, consumed)
        prepared = folder / "prepared.onnx"
        prepared.write_bytes(self._cache[2])
        return prepared, list(self._cache[3]), self._cache[4]

    def weight_bytes(self, path: Path) -> int | None:
        return _initializer_bytes(onnx.load(str(path)).graph)

    def companions(self, requirements: dict[str, Any]) -> list[Companion]:
        entry = requirements.get("ort_format")
        return [Companion("ort", entry["path"], ort_format.open_ort)] if entry else []

    def open(self, path: Path, threads: int) -> Runner:
        return runner(path, threads)

    def converter_versions(self) -> dict[str, str]:
        return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__}


def _example_args(captured: CapturedModel) -> tuple[torch.Tensor, ...]:
    sample = captured.samples[0]
    return tuple(sample[name] for name in captured.input_names)


def _export(captured: CapturedModel, args: tuple, path: Path, opset: int) -> tuple[list[str], str]:
    """Export with the best exporter for the captures and opset; return notes saying which one ran and why,
    and which capture it consumed ("export": the checked ExportedProgram; "torchscript")."""
    if opset < _DYNAMO_MIN_OPSET:
        _export_torchscript(captured, args, path, opset)
        return [f"exporter: TorchScript-based, on the {_torchscript_capture(captured)} (the torch.export-based one "
                f"writes opset >= {_DYNAMO_MIN_OPSET})"], "torchscript"
    if captured.exported is None:
        reason = captured.export.reason if captured.export is not None else "not attempted"
        _export_torchscript(captured, args, path, opset)
        return [f"exporter: TorchScript-based, on the {_torchscript_capture(captured)}: no checked torch.export "
                f"capture ({reason})"], "torchscript"
    try:
        _export_dynamo(captured, args, path, opset)
        return ["exporter: torch.export-based (dynamo)",
                f"converted the checked torch.export capture ({captured.export.strategy})"], "export"
    except Exception as first:  # the exporter raises many types; the reason goes into the notes
        dynamo_reason = _dynamo_reason(first)
    _export_torchscript(captured, args, path, opset, dynamo_reason)
    return [f"exporter: TorchScript-based, on the {_torchscript_capture(captured)}: the torch.export-based exporter "
            f"failed ({dynamo_reason})"], "torchscript"


def _torchscript_capture(captured: CapturedModel) -> str:
    if captured.strategy == "trace":
        return "captured module"
    return f"{captured.strategy} capture (keeps its control flow)"


def _export_dynamo(captured: CapturedModel, args: tuple, path: Path, opset: int) -> None:
    """The checked ExportedProgram through the torch.export-based exporter. The exporter decomposes the
    program again: recurrent layers must decompose as they did at capture (a loop, not unrolled)."""
    with quiet_converter(), torch.no_grad(), rnn_decompositions(bool(_dynamic_axes(captured))), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own decompositions call its deprecated helpers
        torch.onnx.export(
            captured.exported, args, str(path), input_names=captured.input_names, output_names=captured.output_names,
            opset_version=opset, dynamo=True, external_data=False, verbose=False,
            dynamic_shapes=_dynamic_shapes(captured),
        )
    _require_dynamic_dims(captured, path)


def _dynamo_reason(exc: Exception) -> str:
    """The torch.export-based exporter wraps the cause in generic 'step N/3 ... Next steps' text: name
    the step, then the innermost cause's first line."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    step = re.search(r"step \d+/\d+", strip_ansi(str(exc)))
    where = f"{type(exc).__name__} at {step.group(0)}" if step else type(exc).__name__
    return short_reason(exc, 200) if root is exc else f"{where}: {short_reason(root, 200)}"


def _dynamic_shapes(captured: CapturedModel) -> tuple | None:
    """dynamic_shapes in the structure torch.export binds them to: FlatModel.forward(*tensors) has one
    (variadic) parameter, so one entry holding a per-tensor tuple. Axis names are strings, which
    torch.onnx turns into Dim.DYNAMIC (ranges inferred) and then gives the ONNX dims those names."""
    axes = _dynamic_axes(captured)
    if not axes:
        return None
    return (tuple(axes.get(name) for name in captured.input_names),)


def _require_dynamic_dims(captured: CapturedModel, path: Path) -> None:
    """torch.export specializes a dimension the model's code pins to its example size, without failing:
    a graph that lost a declared dynamic dimension is an export failure (the other exporter may keep it)."""
    graph_inputs = {i.name: i.type.tensor_type.shape.dim for i in onnx.load(str(path), load_external_data=False).graph.input}
    fixed = [f"{name}[{axis}] ({symbol})" for name, axes in _dynamic_axes(captured).items()
             for axis, symbol in axes.items() if not graph_inputs[name][axis].dim_param]
    if fixed:
        raise BuildError(f"the exported graph fixed the dynamic dimension(s) {', '.join(fixed)} to their example size",
                         "The model's code may pin that dimension (a reshape to a constant, say).")


def _export_torchscript(captured: CapturedModel, args: tuple, path: Path, opset: int, dynamo_reason: str = "") -> None:
    with quiet_converter() as log, torch.no_grad():
        try:
            torch.onnx.export(  # on a copy: the exporter inlines the module's graph in place
                captured.scripted_copy(), args, str(path), input_names=captured.input_names,
                output_names=captured.output_names, opset_version=opset, dynamo=False,
                dynamic_axes=_dynamic_axes(captured) or None,
            )
        except Exception as exc:
            raise _torchscript_failure(exc, log.getvalue(), captured, opset, dynamo_reason) from exc


def _torchscript_failure(exc: Exception, log: str, captured: CapturedModel, opset: int, dynamo_reason: str) -> BuildError:
    """A short error: both exporters' reasons when both ran (the torch.export-based one first), and
    what to do. The exporter's own output is long (whole IR graphs); only a few lines of it are kept."""
    reason = short_reason(exc, 400)
    if dynamo_reason:
        message = f"ONNX export failed with both exporters: torch.export-based: {dynamo_reason}; TorchScript-based: {reason}"
    else:
        message = f"ONNX export failed (TorchScript-based exporter): {reason}"
    if captured.strategy == "trace" and opset < _DYNAMO_MIN_OPSET:
        hint = (f"The TorchScript exporter cannot export this model at opset {opset}; set opset = {_DYNAMO_MIN_OPSET} "
                "in the target's [formats.onnx] to use the torch.export-based exporter")
    elif captured.exported is None and opset >= _DYNAMO_MIN_OPSET:
        reason = captured.export.reason if captured.export is not None else "not attempted"
        hint = (f"The torch.export-based exporter takes only a checked torch.export capture, and there is none: {reason}. "
                "Fix that (`edgepack doctor` names the line and the fix), or build with --allow-partial to ship the "
                "other formats.")
    else:
        hint = ("No ONNX exporter here can export this model as it is: change the part named above (an op without an "
                "ONNX conversion, say), or build with --allow-partial to ship the other formats.")
        if _converter_tail(log):
            hint += "\nThe exporter's last output:\n" + _converter_tail(log)
    return BuildError(message, hint)


def _converter_tail(log: str) -> str:
    """The exporter's last messages, without the IR graph it dumps on failure (hundreds of lines)."""
    messages = strip_ansi(log).split("Torch IR graph at exception")[0]
    return "\n".join(line[:200] for line in tail(messages, 5).splitlines())


def _dynamic_axes(captured: CapturedModel) -> dict[str, dict[int, str]]:
    return {spec.name: spec.dynamic_axes() for spec in captured.loaded.inputs if spec.dynamic_axes()}


def _strip_debug_metadata(path: Path) -> None:
    """Drop the exporter's per-node provenance (source stack traces, FX node text): it is for debugging
    the exporter, can be larger than a small model's weights, and holds the build machine's paths."""
    model = onnx.load(str(path))
    if not any(node.metadata_props or node.doc_string for node in model.graph.node):
        return
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(model, str(path))


def _initializer_bytes(graph: onnx.GraphProto) -> int:
    """Bytes of the graph's initializers and Constant tensors, If/Loop bodies included."""
    tensors = list(graph.initializer) + [attr.t for node in graph.node for attr in node.attribute
                                         if attr.type == onnx.AttributeProto.TENSOR]
    total = sum(numpy_helper.to_array(tensor).nbytes for tensor in tensors)
    return total + sum(_initializer_bytes(attr.g) for node in graph.node for attr in node.attribute
                       if attr.type == onnx.AttributeProto.GRAPH)


def _default_domain_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
