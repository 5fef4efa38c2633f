"""ONNX (.onnx) for onnxruntime on Android, iOS and embedded Linux.

At opset 18 and up, the checked torch.export capture (`captured.exported`, an ExportedProgram that
matched eager on every check input) goes through the torch.export-based exporter: what ships is
what was checked. Without one (the export capture failed: the notes say why), at an opset below
18, or when that exporter fails, the TorchScript exporter converts the TorchScript capture, which
keeps its control flow as ONNX If/Loop. Dimensions declared dynamic stay dynamic in the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
import onnxruntime as ort
from onnx import numpy_helper

from ...errors import BuildError, UsageError
from ...paths import scratch_folder
from ...targets import FormatSettings
from ..base import FLOAT_LAYERS, Calibration, Companion, Emitted, Format, Runner, register_format
from . import ort_format
from . import quantize as ort_quant
from .optimize import check_level, optimization_requirements, optimize_onnx
from .session import runner

if TYPE_CHECKING:  # the format is read without torch by `edgepack verify`; emitting imports export.py
    from ...capture.ladder import CapturedModel

_MIN_OPSET, _MAX_OPSET = 13, 21


@register_format
class Onnx(Format):
    name = "onnx"
    suffix = ".onnx"
    precisions = ("fp32", "int8-dynamic", "int8-static")
    libraries = ("onnx", "onnxruntime")
    runtime_modules = ("onnxruntime",)
    loggers = ("torch.onnx", "onnxscript")
    option_defaults = {"opset": 18, "optimization": "basic", ort_format.OPTION: False}
    _cache: _FloatExport | None = None

    def nearest_precision(self, requested: str) -> tuple[str, str]:
        if requested.startswith("palettize-"):
            return "int8-dynamic", f"{self.name} has no palettization; int8 weights (int8-dynamic) instead"
        if requested == "fp16":  # onnxruntime's CPU provider computes fp16 graphs through casts: no gain
            return "fp32", f"{self.name} is built in fp32 for fp16: onnxruntime's CPU kernels are float32"
        return super().nearest_precision(requested)

    def quantizable_layers(self, captured: CapturedModel, settings: FormatSettings) -> list[str]:
        if settings.precision not in ("int8-dynamic", "int8-static"):
            return []
        with scratch_folder() as tmp:
            quantizable, _, _, _ = self._quantizable_float(captured, settings, tmp)
            return ort_quant.quantizable_nodes(quantizable, settings.precision)

    def validate(self, settings: FormatSettings) -> None:
        super().validate(settings)
        opset = self.option(settings, "opset")
        if isinstance(opset, bool) or not isinstance(opset, int):
            raise UsageError(
                f"ONNX opset must be a whole number, got {type(opset).__name__} {opset!r}.",
                f"Write opset = {opset if isinstance(opset, str) and opset.isdigit() else 18} "
                f"(a number, no quotes), from {_MIN_OPSET} to {_MAX_OPSET}.",
            )
        if not _MIN_OPSET <= opset <= _MAX_OPSET:
            raise UsageError(
                f"ONNX opset {opset!r} is not supported.", f"Choose an opset from {_MIN_OPSET} to {_MAX_OPSET}."
            )
        check_level(self.option(settings, "optimization"))
        ort_format.validate_option(self.option(settings, ort_format.OPTION))

    def emit(
        self, captured: CapturedModel, settings: FormatSettings, path: Path, calibration: Calibration | None = None
    ) -> Emitted:
        opset = self.option(settings, "opset")
        level = self.option(settings, "optimization")
        if settings.precision == "fp32":
            notes, consumed = self._export_float(captured, path, opset)
            notes += optimize_onnx(path, level)
        else:
            with scratch_folder() as tmp:
                quantizable, notes, consumed, level = self._quantizable_float(captured, settings, tmp)
                notes = notes + ort_quant.quantize(
                    quantizable,
                    path,
                    settings.precision,
                    calibration,
                    captured.input_names,
                    list(settings.options.get(FLOAT_LAYERS, [])),
                )
            _strip_debug_metadata(path)
            notes += ort_quant.tidy(path)
        model = onnx.load(str(path))
        if _default_domain_opset(model) != opset:
            raise BuildError(
                f"The exporter wrote opset {_default_domain_opset(model)}, not the requested {opset}.",
                "Choose the opset the exporter writes, or report this.",
            )
        try:
            # No full_check: its shape inference rejects valid Loop bodies that onnxruntime runs;
            # the smoke test in onnxruntime is the judge of numerics.
            onnx.checker.check_model(model)
        except Exception as exc:
            raise BuildError(
                f"The exported ONNX model is invalid: {exc}", "Report this with the model that produced it."
            ) from exc
        requirements = {
            "runtime": "onnxruntime",
            "opset": _default_domain_opset(model),
            "ir_version": model.ir_version,
            "operators": sorted({f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in model.graph.node}),
            **optimization_requirements(model, level),
        }
        return Emitted(path, requirements, notes, capture=consumed)

    def add_companions(self, emitted: Emitted, captured: CapturedModel, settings: FormatSettings) -> None:
        if self.option(settings, ort_format.OPTION):  # also a .ort + required-operators config, checked
            emitted.requirements["ort_format"], notes = ort_format.write_ort(emitted.path, captured, settings)
            emitted.notes += notes

    def _export_float(self, captured: CapturedModel, path: Path, opset: int) -> tuple[list[str], str]:
        """Notes, and the capture the graph was exported from ("export" or "torchscript")."""
        from .export import export

        notes, consumed = export(captured, path, opset)
        _strip_debug_metadata(path)
        return notes, consumed

    def _quantizable_float(
        self, captured: CapturedModel, settings: FormatSettings, folder: Path
    ) -> tuple[Path, list[str], str, str]:
        """The float graph the int8 scheme quantizes, in `folder`, with its notes, the capture it came from and its
        optimization level. Usually ORT's pre-processed graph (level none: quantization needs plain ops). For
        int8-dynamic on a target optimized at the transformer level, the fused graph where attention fused:
        onnxruntime quantizes a fused Attention and embedding whole (QAttention, QEmbedLayerNormalization), the
        order its transformer docs give; a MiniLM-size encoder runs in about 0.8x the time of the unfused int8."""
        export = self._float_export(captured, settings)
        if settings.precision == "int8-dynamic" and self.option(settings, "optimization") == "transformer":
            fused, fusion_notes = export.fused(folder)
            if fused is not None:
                return fused, [*export.notes, *fusion_notes], export.consumed, "transformer"
        prepared = folder / "prepared.onnx"
        prepared.write_bytes(export.prepared)
        return prepared, [*export.notes, *export.prepare_notes], export.consumed, "none"

    def _float_export(self, captured: CapturedModel, settings: FormatSettings) -> _FloatExport:
        """The last float export, kept: the accuracy ladder quantizes the same capture many times, and exporting is
        the slow part."""
        opset = self.option(settings, "opset")
        if self._cache is None or self._cache.captured is not captured or self._cache.opset != opset:
            with scratch_folder() as tmp:
                exported = tmp / "float.onnx"
                notes, consumed = self._export_float(captured, exported, opset)
                prepare_notes = ort_quant.preprocess(exported, tmp / "prepared.onnx")
                self._cache = _FloatExport(
                    captured,
                    opset,
                    exported.read_bytes(),
                    notes,
                    consumed,
                    (tmp / "prepared.onnx").read_bytes(),
                    prepare_notes,
                )
        return self._cache

    def weight_bytes(self, path: Path) -> int | None:
        return _initializer_bytes(onnx.load(str(path)).graph)

    def companions(self, requirements: dict[str, Any]) -> list[Companion]:
        entry = requirements.get("ort_format")
        return [Companion("ort", entry["path"], ort_format.open_ort)] if entry else []

    def open(self, path: Path, threads: int) -> Runner:
        return runner(path, threads)

    def converter_versions(self) -> dict[str, str]:
        from importlib.metadata import version

        return {"torch": version("torch"), "onnx": onnx.__version__, "onnxruntime": ort.__version__}


_FUSED_ATTENTION = ("Attention", "MultiHeadAttention")


@dataclass
class _FloatExport:
    captured: CapturedModel
    opset: int
    exported: bytes
    notes: list[str]
    consumed: str  # the capture it was exported from
    prepared: bytes  # after ORT's quant_pre_process
    prepare_notes: list[str]
    _fused: tuple[bytes | None, list[str]] | None = None  # after transformer fusions; None where attention did not fuse

    def fused(self, folder: Path) -> tuple[Path | None, list[str]]:
        if self._fused is None:
            path = folder / "fused.onnx"
            path.write_bytes(self.exported)
            summary = optimize_onnx(path, "transformer")[0]
            attention = any(n.op_type in _FUSED_ATTENTION for n in onnx.load(str(path)).graph.node)
            self._fused = (
                path.read_bytes() if attention else None,
                [f"quantized after transformer fusions: {summary}"],
            )
        if self._fused[0] is None:
            return None, []
        path = folder / "fused.onnx"
        path.write_bytes(self._fused[0])
        return path, list(self._fused[1])


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
    tensors = list(graph.initializer) + [
        attr.t for node in graph.node for attr in node.attribute if attr.type == onnx.AttributeProto.TENSOR
    ]
    total = sum(numpy_helper.to_array(tensor).nbytes for tensor in tensors)
    return total + sum(
        _initializer_bytes(attr.g)
        for node in graph.node
        for attr in node.attribute
        if attr.type == onnx.AttributeProto.GRAPH
    )


def _default_domain_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
