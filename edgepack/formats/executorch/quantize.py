"""int8 through the pt2e flow with the XNNPACK quantizer (torchao.quantization.pt2e).

Starts from the checked ExportedProgram's module (what ships derives from what was checked):
`prepare_pt2e` inserts observers where the XNNPACK quantizer annotates (conv, linear, add, mul...),
static int8 runs the calibration samples through it, `convert_pt2e` folds the observed ranges into
quantize/dequantize pairs, and the result is exported again with the same dynamic dimensions, for
XNNPACK to fuse into int8 kernels. Dynamic int8 quantizes linear layers' weights per channel and their
activations per batch at run time (no calibration).
"""

from __future__ import annotations

from typing import Any

from ...errors import BuildError, UsageError, did_you_mean


def _quantizer(precision: str, float_layers: list[str]) -> Any:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    dynamic = precision == "int8-dynamic"
    quantizer = XNNPACKQuantizer()
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    if dynamic:  # dynamic int8 is for linear layers (XNNPACK's dynamically quantized fully-connected kernels)
        import torch

        quantizer.set_operator_type(torch.ops.aten.linear.default, config)
    else:
        quantizer.set_global(config)
    if float_layers:  # the quantizer takes no "None" config per module: a filter leaves their nodes unannotated
        quantizer.set_filter_function(lambda node: not _in_layers(node, float_layers))
    return quantizer


def _in_layers(node: Any, layers: list[str]) -> bool:
    """Whether the node was traced inside one of the named modules (or a submodule of one)."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = {_module_name(path) for path, _ in stack.values()}
    return any(path == layer or path.startswith(layer + ".") for path in paths for layer in layers)


def quantizable_layers(program: Any, precision: str) -> list[str]:
    """Module names (as in the model: `features.0`, `encoder.layers.0.linear1`) holding the conv and linear
    layers the quantizer annotates: the names FLOAT_LAYERS takes."""
    wanted = ("linear",) if precision == "int8-dynamic" else ("linear", "conv")
    found: list[str] = []
    for node in program.graph.nodes:
        if node.op != "call_function" or not any(w in str(node.target) for w in wanted):
            continue
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            path = list(stack.values())[-1][0]
            name = _module_name(path)
            if name and name not in found:
                found.append(name)
    return found


def _module_name(path: str) -> str:
    """nn_module_stack paths of the flattened model start at its wrapper (`model.`): strip it."""
    name = path.removeprefix("L['self'].").replace("L['self']", "")
    return name


def quantize(
    program: Any,
    precision: str,
    calibration: list[tuple] | None,
    example: tuple,
    dynamic_shapes: Any,
    float_layers: list[str],
) -> tuple[Any, list[str]]:
    """The int8 ExportedProgram (exported again from the converted module) and notes."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if precision == "int8-static" and not calibration:
        raise UsageError(
            "int8-static for ExecuTorch needs calibration samples.",
            "Pass --calibration (a .npz, a folder of .npy files or images, or a module:attr callable).",
        )
    known = quantizable_layers(program, precision)
    unknown = [name for name in float_layers if name not in known]
    if unknown:
        raise UsageError(
            f"ExecuTorch has no quantizable layer named {', '.join(unknown)}.{did_you_mean(unknown[0], known)}",
            f"Quantizable layers: {', '.join(known) or 'none'}.",
        )
    try:
        module = program.module()
        prepared = prepare_pt2e(module, _quantizer(precision, float_layers))
        with torch.no_grad():
            if precision == "int8-static":
                for args in calibration or []:
                    prepared(*args)
            else:  # dynamic: observers still need one pass to see the weights
                prepared(*example)
        converted = convert_pt2e(prepared)
        quantized = torch.export.export(converted, example, dynamic_shapes=dynamic_shapes, strict=False)
    except UsageError:
        raise
    except Exception as exc:  # the quantizer raises many types; say where it stopped
        raise BuildError(
            f"pt2e quantization ({precision}) failed: {type(exc).__name__}: {str(exc)[:400]}",
            "Keep the failing layer in float, or build this format in fp32.",
        ) from exc
    kind = (
        f"static int8 (per-channel weights, activations calibrated on {len(calibration or [])} sample(s))"
        if precision == "int8-static"
        else "dynamic int8 for linear layers (per-channel weights, activations per run)"
    )
    notes = [
        f"pt2e {kind} with the XNNPACK quantizer"
        + (f"; kept in float: {', '.join(float_layers)}" if float_layers else "")
    ]
    return quantized, notes
