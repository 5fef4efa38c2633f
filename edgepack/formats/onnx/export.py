"""ONNX export: the checked torch.export capture through the torch.export-based exporter (opset 18 and up),
else the TorchScript capture through the TorchScript-based exporter, with both reasons when both fail.
Imported only when a model is exported (it needs torch), so reading and running ONNX files does not."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from ...capture.export import rnn_decompositions
from ...capture.ladder import CapturedModel
from ...errors import BuildError
from ...noise import quiet_converter, short_reason, strip_ansi, tail

# The torch.export-based exporter writes opset 18 or newer (it ignores lower requests), and onnx's
# version converter breaks some ops going down (ReduceMean 18 -> 17), so older opsets take the
# TorchScript exporter.
_DYNAMO_MIN_OPSET = 18


def export(captured: CapturedModel, path: Path, opset: int) -> tuple[list[str], str]:
    """Write the float ONNX graph at `path`; notes, and the capture it consumed ("export" or "torchscript")."""
    args = tuple(torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in _example_args(captured))
    return _export(captured, args, path, opset)


def _example_args(captured: CapturedModel) -> tuple[torch.Tensor, ...]:
    sample = captured.samples[0]
    return tuple(sample[name] for name in captured.input_names)


def _export(captured: CapturedModel, args: tuple, path: Path, opset: int) -> tuple[list[str], str]:
    """Export with the best exporter for the captures and opset; return notes saying which one ran and why,
    and which capture it consumed ("export": the checked ExportedProgram; "torchscript")."""
    if opset < _DYNAMO_MIN_OPSET:
        try:
            _export_torchscript(captured, args, path, opset)
        except BuildError as failure:
            if captured.exported is None:
                raise
            return _export_downgraded(captured, args, path, opset, failure), "export"
        return [
            f"exporter: TorchScript-based, on the {_torchscript_capture(captured)} (the torch.export-based one "
            f"writes opset >= {_DYNAMO_MIN_OPSET})"
        ], "torchscript"
    if captured.exported is None:
        reason = captured.export.reason if captured.export is not None else "not attempted"
        _export_torchscript(captured, args, path, opset)
        return [
            f"exporter: TorchScript-based, on the {_torchscript_capture(captured)}: no checked torch.export "
            f"capture ({reason})"
        ], "torchscript"
    try:
        _export_dynamo(captured, args, path, opset)
        return [
            "exporter: torch.export-based (dynamo)",
            f"converted the checked torch.export capture ({captured.export_strategy})",
        ], "export"
    except Exception as first:  # the exporter raises many types; the reason goes into the notes
        dynamo_reason = _dynamo_reason(first)
    _export_torchscript(captured, args, path, opset, dynamo_reason)
    return [
        f"exporter: TorchScript-based, on the {_torchscript_capture(captured)}: the torch.export-based exporter "
        f"failed ({dynamo_reason})"
    ], "torchscript"


def _torchscript_capture(captured: CapturedModel) -> str:
    if captured.strategy == "trace":
        return "captured module"
    return f"{captured.strategy} capture (keeps its control flow)"


def _export_dynamo(captured: CapturedModel, args: tuple, path: Path, opset: int) -> None:
    """The checked ExportedProgram through the torch.export-based exporter. The exporter decomposes the
    program again: recurrent layers must decompose as they did at capture (a loop, not unrolled)."""
    program = captured.exported_copy()
    with (
        quiet_converter(),
        torch.no_grad(),
        rnn_decompositions(bool(_dynamic_axes(captured))),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", FutureWarning)  # torch's own decompositions call its deprecated helpers
        torch.onnx.export(
            program,
            args,
            str(path),
            input_names=captured.input_names,
            output_names=captured.output_names,
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
            dynamic_shapes=_dynamic_shapes(captured),
        )
    _require_dynamic_dims(captured, path)


def _export_downgraded(captured: CapturedModel, args: tuple, path: Path, opset: int, failure: BuildError) -> list[str]:
    """A target's opset below 18 and a model the TorchScript exporter cannot export (nn.TransformerEncoder at
    opset 17, say): the checked ExportedProgram through the torch.export-based exporter at opset 18, then
    onnx's version converter down to the target's opset. The result is checked like any ONNX graph (checker,
    the written opset, the smoke test in onnxruntime); when that path fails too, the error gives both reasons."""
    torchscript_reason = failure.message.split(": ", 1)[-1]
    try:
        _export_dynamo(captured, args, path, _DYNAMO_MIN_OPSET)
        _downgrade(path, opset)
    except Exception as exc:  # the exporter and the converter raise many types; both reasons go to the user
        raise BuildError(
            f"ONNX export at opset {opset} failed with both exporters: TorchScript-based: "
            f"{torchscript_reason}; torch.export-based at opset {_DYNAMO_MIN_OPSET} converted down to "
            f"{opset}: {_dynamo_reason(exc)}",
            f"If the runtime the target names reads opset {_DYNAMO_MIN_OPSET}, set opset = "
            f"{_DYNAMO_MIN_OPSET} in the target's [formats.onnx]; or build with --allow-partial to ship "
            "the other formats.",
        ) from exc
    return [
        f"exporter: torch.export-based at opset {_DYNAMO_MIN_OPSET}, converted to opset {opset} with "
        f"onnx.version_converter: the TorchScript-based exporter failed ({torchscript_reason[:200]})",
        f"converted the checked torch.export capture ({captured.export_strategy})",
    ]


# Ops whose opset-18 form moved `axes` to an input and added `noop_with_empty_axes`; onnx's version converter
# moves the axes back to an attribute going down but leaves that attribute, which opset 17 does not know.
_AXES_INPUT_SINCE_18 = {
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
}


def _downgrade(path: Path, opset: int) -> None:
    from onnx import version_converter

    model = version_converter.convert_version(onnx.load(str(path)), opset)
    for node in _all_nodes(model.graph):
        if node.op_type in _AXES_INPUT_SINCE_18 and node.domain in ("", "ai.onnx"):
            for attribute in list(node.attribute):
                if attribute.name == "noop_with_empty_axes":
                    if attribute.i and not any(a.name == "axes" for a in node.attribute):
                        raise BuildError(
                            f"{node.op_type} '{node.name}' reduces nothing when given no axes "
                            f"(noop_with_empty_axes), which opset {opset} cannot say"
                        )
                    node.attribute.remove(attribute)  # 0 is opset 17's behaviour; with axes given it is moot
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                nodes += _all_nodes(attribute.g)
    return nodes


def _dynamo_reason(exc: Exception) -> str:
    """The torch.export-based exporter wraps the cause in generic 'step N/3 ... Next steps' text: name
    the step, then the innermost cause's first line."""
    root: BaseException = exc
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
    graph_inputs = {
        i.name: i.type.tensor_type.shape.dim for i in onnx.load(str(path), load_external_data=False).graph.input
    }
    fixed = [
        f"{name}[{axis}] ({symbol})"
        for name, axes in _dynamic_axes(captured).items()
        for axis, symbol in axes.items()
        if not graph_inputs[name][axis].dim_param
    ]
    if fixed:
        raise BuildError(
            f"the exported graph fixed the dynamic dimension(s) {', '.join(fixed)} to their example size",
            "The model's code may pin that dimension (a reshape to a constant, say).",
        )


def _export_torchscript(captured: CapturedModel, args: tuple, path: Path, opset: int, dynamo_reason: str = "") -> None:
    with quiet_converter() as log, torch.no_grad():
        try:
            torch.onnx.export(  # on a copy: the exporter inlines the module's graph in place
                captured.scripted_copy(),
                args,
                str(path),
                input_names=captured.input_names,
                output_names=captured.output_names,
                opset_version=opset,
                dynamo=False,
                dynamic_axes=_dynamic_axes(captured) or None,
            )
        except Exception as exc:
            raise _torchscript_failure(exc, log.getvalue(), captured, opset, dynamo_reason) from exc


def _torchscript_failure(
    exc: Exception, log: str, captured: CapturedModel, opset: int, dynamo_reason: str
) -> BuildError:
    """A short error: both exporters' reasons when both ran (the torch.export-based one first), and
    what to do. The exporter's own output is long (whole IR graphs); only a few lines of it are kept."""
    reason = short_reason(exc, 400)
    if dynamo_reason:
        message = (
            f"ONNX export failed with both exporters: torch.export-based: {dynamo_reason}; TorchScript-based: {reason}"
        )
    else:
        message = f"ONNX export failed (TorchScript-based exporter): {reason}"
    if captured.strategy == "trace" and opset < _DYNAMO_MIN_OPSET:
        hint = (
            f"The TorchScript exporter cannot export this model at opset {opset}; set opset = {_DYNAMO_MIN_OPSET} "
            "in the target's [formats.onnx] to use the torch.export-based exporter"
        )
    elif captured.exported is None and opset >= _DYNAMO_MIN_OPSET:
        reason = captured.export.reason if captured.export is not None else "not attempted"
        hint = (
            f"The torch.export-based exporter takes only a checked torch.export capture, and there is none: {reason}. "
            "Fix that (`edgepack doctor` names the line and the fix), or build with --allow-partial to ship the "
            "other formats."
        )
    else:
        hint = (
            "No ONNX exporter here can export this model as it is: change the part named above (an op without an "
            "ONNX conversion, say), or build with --allow-partial to ship the other formats."
        )
        if _converter_tail(log):
            hint += "\nThe exporter's last output:\n" + _converter_tail(log)
    return BuildError(message, hint)


def _converter_tail(log: str) -> str:
    """The exporter's last messages, without the IR graph it dumps on failure (hundreds of lines)."""
    messages = strip_ansi(log).split("Torch IR graph at exception")[0]
    return "\n".join(line[:200] for line in tail(messages, 5).splitlines())


def _dynamic_axes(captured: CapturedModel) -> dict[str, dict[int, str]]:
    return {spec.name: spec.dynamic_axes() for spec in captured.loaded.inputs if spec.dynamic_axes()}
