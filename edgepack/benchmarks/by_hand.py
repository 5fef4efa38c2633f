"""The by-hand paths a careful engineer takes without edgepack, as the issue defines them:
plain `torch.onnx.export` + a default onnxruntime session; plain trace + freeze + lite save;
onnxruntime's `quantize_dynamic` with its defaults. Only the thread count is set, as for everything."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.jit.mobile as mobile

from ..formats.onnx.session import session as onnx_session
from ..noise import quiet_converter

Runner = Callable[[list[np.ndarray]], list[np.ndarray]]


@dataclass
class ByHand:
    """One by-hand artifact: where it is, how to run it, and what had to be done to get it."""

    format: str  # the edgepack format whose runtime runs it ("onnx", "torchscript_lite")
    precision: str
    path: Path | None
    open: Callable[[], Runner] | None
    notes: list[str] = field(default_factory=list)


def onnx_fp32(module: torch.nn.Module, args: tuple[torch.Tensor, ...], folder: Path, threads: int) -> ByHand:
    path = folder / "by_hand.onnx"
    with quiet_converter(), torch.no_grad():
        torch.onnx.export(module, args, str(path), external_data=False)  # the defaults: dynamo exporter
    return ByHand("onnx", "fp32", path, lambda: _ort_runner(path, threads), ["torch.onnx.export defaults"])


def onnx_int8_dynamic(fp32: ByHand, folder: Path, threads: int) -> ByHand:
    """quantize_dynamic with its defaults; if it refuses the exported graph, the documented fix
    (clear the stale value_info, as in the platform facts) and say so."""
    from onnxruntime.quantization import quantize_dynamic

    path = folder / "by_hand.int8.onnx"
    notes = ["onnxruntime.quantization.quantize_dynamic defaults"]
    with quiet_converter():
        try:
            quantize_dynamic(str(fp32.path), str(path))
        except Exception as first:  # ShapeInferenceError on dynamo exports, among others
            cleared = folder / "by_hand.novalueinfo.onnx"
            model = onnx.load(str(fp32.path))
            del model.graph.value_info[:]
            onnx.save(model, str(cleared))
            quantize_dynamic(str(cleared), str(path))
            notes.append(f"defaults failed ({type(first).__name__}); value_info cleared first")
    return ByHand("onnx", "int8-dynamic", path, lambda: _ort_runner(path, threads), notes)


def lite_fp32(module: torch.nn.Module, args: tuple[torch.Tensor, ...], folder: Path) -> ByHand:
    path = folder / "by_hand.ptl"
    with quiet_converter(), torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.trace(module, args))
        frozen._save_for_lite_interpreter(str(path))
    return ByHand("torchscript_lite", "fp32", path, lambda: _lite_runner(path), ["trace + freeze + lite save"])


def failed(fmt: str, precision: str, exc: BaseException) -> ByHand:
    reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    return ByHand(fmt, precision, None, None, [f"by-hand path failed: {type(exc).__name__}: {reason}"])


def _ort_runner(path: Path, threads: int) -> Runner:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # the one setting changed: the protocol's thread count
    session = onnx_session(path, options)
    names = [i.name for i in session.get_inputs()]
    return lambda arrays: session.run(None, dict(zip(names, arrays)))


def _lite_runner(path: Path) -> Runner:
    with quiet_converter():
        module = mobile._load_for_lite_interpreter(str(path))

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            result = module(*(torch.from_numpy(a) for a in arrays))
        return [t.numpy() for t in (result if isinstance(result, (tuple, list)) else (result,))]

    return run


def executorch_xnnpack(
    module: torch.nn.Module, args: tuple[torch.Tensor, ...], folder: Path, threads: int, calibration: list[tuple]
) -> list[ByHand]:
    """ExecuTorch's documented path: torch.export -> XNNPACK partitioner -> .pte, in fp32 and in pt2e static
    int8 (XNNPACKQuantizer, symmetric per-channel, calibrated on `calibration`), run in ExecuTorch's runtime."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from ..formats.executorch.runtime import executorch_runner

    def save(program: torch.export.ExportedProgram, name: str) -> Path:
        path = folder / name
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
        path.write_bytes(lowered.buffer)
        return path

    made = []
    with quiet_converter(), torch.no_grad():
        fp32 = save(torch.export.export(module, args), "by_hand.pte")
        made.append(
            ByHand("executorch", "fp32", fp32, lambda: executorch_runner(fp32, threads), ["export + XNNPACK lower"])
        )
        try:
            captured = torch.export.export(module, args).module()
            quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            prepared = prepare_pt2e(captured, quantizer)
            for sample in calibration:
                prepared(*sample)
            int8 = save(torch.export.export(convert_pt2e(prepared), args), "by_hand.int8.pte")
            notes = ["pt2e XNNPACKQuantizer static per-channel + XNNPACK lower"]
            made.append(ByHand("executorch", "int8-static", int8, lambda: executorch_runner(int8, threads), notes))
        except Exception as exc:
            made.append(failed("executorch", "int8-static", exc))
    return made
