"""ONNX (.onnx) for onnxruntime on Android, iOS and embedded Linux.

A clean trace goes through the torch.export-based exporter (the maintained path; it reads the
eager model). A scripted or hybrid capture, an opset below 18, or a model torch.export cannot
handle goes through the TorchScript exporter on the captured module, which keeps its control
flow as ONNX If/Loop. Dimensions declared dynamic stay dynamic in the graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ..capture import CapturedModel
from ..errors import BuildError, UsageError
from ..noise import quiet_converter, tail
from ..onnx_optimize import check_level, optimization_requirements, optimize_onnx
from .. import ort_format
from ..targets import FormatSettings
from .base import Calibration, Emitted, Format, Runner, register_format

_MIN_OPSET, _MAX_OPSET = 13, 21
# The torch.export-based exporter writes opset 18 or newer (it ignores lower requests), and onnx's
# version converter breaks some ops going down (ReduceMean 18 -> 17), so older opsets take the
# TorchScript exporter.
_DYNAMO_MIN_OPSET = 18


@register_format
class Onnx(Format):
    name = "onnx"
    suffix = ".onnx"
    precisions = ("fp32",)
    option_defaults = {"opset": 18, "optimization": "basic", ort_format.OPTION: False}

    def validate(self, settings: FormatSettings) -> None:
        super().validate(settings)
        opset = self.option(settings, "opset")
        if not isinstance(opset, int) or not _MIN_OPSET <= opset <= _MAX_OPSET:
            raise UsageError(f"ONNX opset {opset!r} is not supported.", f"Choose an opset from {_MIN_OPSET} to {_MAX_OPSET}.")
        check_level(self.option(settings, "optimization"))
        ort_format.validate_option(self.option(settings, ort_format.OPTION))

    def emit(self, captured: CapturedModel, settings: FormatSettings, path: Path,
             calibration: Calibration | None = None) -> Emitted:
        opset = self.option(settings, "opset")
        args = tuple(torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in _example_args(captured))
        notes = _export(captured, args, path, opset)
        notes += optimize_onnx(path, self.option(settings, "optimization"))
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
            **optimization_requirements(model, self.option(settings, "optimization")),
        }
        if self.option(settings, ort_format.OPTION):  # also a .ort + required-operators config, checked
            requirements["ort_format"], ort_notes = ort_format.write_ort(path, captured, settings)
            notes += ort_notes
        return Emitted(path, requirements, notes)

    def open(self, path: Path, threads: int) -> Runner:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
            return session.run(None, dict(zip(names, inputs)))

        return run

    def converter_versions(self) -> dict[str, str]:
        return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__}


def _example_args(captured: CapturedModel) -> tuple[torch.Tensor, ...]:
    sample = captured.samples[0]
    return tuple(sample[name] for name in captured.input_names)


def _export(captured: CapturedModel, args: tuple, path: Path, opset: int) -> list[str]:
    """Export with the best exporter for the capture and opset; return notes saying which one ran and why."""
    if captured.strategy != "trace":
        _export_torchscript(captured, args, path, opset)
        return [f"exporter: TorchScript-based, on the {captured.strategy} capture (keeps its control flow)"]
    if opset < _DYNAMO_MIN_OPSET:
        _export_torchscript(captured, args, path, opset)
        return [f"exporter: TorchScript-based, on the captured module (the torch.export-based one writes opset >= {_DYNAMO_MIN_OPSET})"]
    try:
        _export_dynamo(captured, args, path, opset)
        return ["exporter: torch.export-based (dynamo)"]
    except Exception as first:  # the exporter raises many types; the reason goes into the notes
        _export_torchscript(captured, args, path, opset)
        reason = str(first).strip().splitlines()[0][:200] if str(first).strip() else ""
        return [f"exporter: TorchScript-based, on the captured module: the torch.export-based exporter failed "
                f"({type(first).__name__}: {reason})"]


def _export_dynamo(captured: CapturedModel, args: tuple, path: Path, opset: int) -> None:
    with quiet_converter(), torch.no_grad():
        torch.onnx.export(
            captured.eager, args, str(path), input_names=captured.input_names, output_names=captured.output_names,
            opset_version=opset, dynamo=True, external_data=False, verbose=False,
            dynamic_axes=_dynamic_axes(captured) or None,
        )


def _export_torchscript(captured: CapturedModel, args: tuple, path: Path, opset: int) -> None:
    with quiet_converter() as log, torch.no_grad():
        try:
            torch.onnx.export(
                captured.scripted, args, str(path), input_names=captured.input_names,
                output_names=captured.output_names, opset_version=opset, dynamo=False,
                dynamic_axes=_dynamic_axes(captured) or None,
            )
        except Exception as exc:
            raise BuildError(f"ONNX export failed: {type(exc).__name__}: {exc}", tail(log.getvalue())) from exc


def _dynamic_axes(captured: CapturedModel) -> dict[str, dict[int, str]]:
    return {spec.name: spec.dynamic_axes() for spec in captured.loaded.inputs if spec.dynamic_axes()}


def _default_domain_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
