"""int8 for ONNX with onnxruntime.quantization, on a float model already exported.

  quant_pre_process  ORT's documented first step (symbolic shape inference, graph optimization).
                     The exporter's value_info is dropped first: the shapes it recorded can disagree
                     with what shape inference derives and make quantization fail.
  int8-dynamic       quantize_dynamic of MatMul/Gemm (and LSTM/GRU/Attention, embedding Gathers): int8 weights,
                     activations quantized on the fly. Conv stays float: dynamic int8 Conv
                     (ConvInteger) runs several times slower than float in onnxruntime.
  int8-static        quantize_static in QDQ format, per-channel weights (one scale per output channel
                     helps convolutions most), ranges calibrated on the calibration samples through
                     a CalibrationDataReader; uint8 activations with int8 weights (ORT's default on CPU).
Layers named in `float_layers` are node names of the pre-processed graph, left out of quantization.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from ...errors import BuildError
from ...noise import quiet_converter, tail
from ...paths import scratch_cwd
from ..base import Calibration as Samples

# Gather is an embedding lookup when its data is a weight: int8 rows, often most of a language model's size;
# after transformer fusions the embeddings sit in EmbedLayerNormalization (QEmbedLayerNormalization in int8).
DYNAMIC_OPS = ("MatMul", "Gemm", "LSTM", "GRU", "Attention", "Gather", "EmbedLayerNormalization")
# The weight-bearing ops static QDQ quantizes (the layers a sensitivity pass can keep float). Static QDQ
# itself covers every op ORT supports, so pooling and reshapes stay int8 between them.
STATIC_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Gather")
CONV_OPS = ("Conv", "ConvTranspose")
RECURRENT_OPS = ("LSTM", "GRU")


class SamplesReader(CalibrationDataReader):
    """Feeds the calibration samples to onnxruntime's calibrator, one sample per call."""

    def __init__(self, samples: Samples, input_names: list[str]) -> None:
        self._feeds = iter([{name: sample[name].numpy() for name in input_names} for sample in samples])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def preprocess(float_model: Path, out: Path) -> list[str]:
    """The pre-processed float model ORT quantizes, written to `out`; notes on what ran."""
    float_model, out = Path(float_model).resolve(), Path(out).resolve()  # absolute: ORT runs in a scratch folder
    model = onnx.load(str(float_model))
    del model.graph.value_info[:]
    cleared = out.with_name(out.stem + ".cleared.onnx")
    onnx.save(model, str(cleared))
    # quant_pre_process writes sym_shape_infer_temp.onnx and a <uuid>.data (the weights) into the working
    # folder, and leaves them when it fails: it runs in a scratch folder that is always removed.
    with quiet_converter() as log, _quiet_ort_logging(), scratch_cwd("edgepack-ort-"):
        try:
            quant_pre_process(str(cleared), str(out))
            return ["quant_pre_process: symbolic shape inference and graph optimization"]
        except Exception as first:  # symbolic shape inference rejects some graphs; the optimizer alone still helps
            try:
                quant_pre_process(str(cleared), str(out), skip_symbolic_shape=True)
            except Exception as exc:
                raise BuildError(
                    f"onnxruntime's quant_pre_process failed: {type(exc).__name__}: {exc}", tail(log.getvalue())
                ) from exc
            return [
                f"quant_pre_process without symbolic shape inference (it failed: {str(first).splitlines()[0][:160]})"
            ]


def quantizable_nodes(model_path: Path, scheme: str) -> list[str]:
    """Node names `scheme` quantizes in the pre-processed graph."""
    ops = {"int8-dynamic": DYNAMIC_OPS, "int8-static": STATIC_OPS}.get(scheme, ())
    graph = onnx.load(str(model_path)).graph
    weights = {init.name for init in graph.initializer}
    return [
        node.name
        for node in graph.node
        if node.op_type in ops and (node.op_type != "Gather" or node.input[0] in weights)
    ]


def quantize(
    prepared: Path, out: Path, scheme: str, calibration: Samples | None, input_names: list[str], float_layers: list[str]
) -> list[str]:
    """Write the int8 model to `out`; notes on the scheme and what stayed float."""
    prepared, out = Path(prepared).resolve(), Path(out).resolve()  # absolute: ORT runs in a scratch folder
    graph = onnx.load(str(prepared)).graph
    candidates = quantizable_nodes(prepared, scheme)
    kept = [name for name in float_layers if name in candidates]
    notes = [
        f"{scheme} (onnxruntime.quantization): {len(candidates) - len(kept)} of {len(candidates)} nodes in int8"
        + (f", kept in float: {', '.join(kept)}" if kept else "")
    ]
    has_conv = any(node.op_type in CONV_OPS for node in graph.node)
    if not candidates:
        notes.append(
            f"no {'/'.join(DYNAMIC_OPS if scheme == 'int8-dynamic' else STATIC_OPS)} node with weights at the top "
            "level of the graph: weights stay float (layers inside If/Loop bodies are not quantized)"
        )
    with quiet_converter() as log, _quiet_ort_logging(), scratch_cwd("edgepack-ort-"):  # its temp files too
        try:
            if scheme == "int8-dynamic":
                quantize_dynamic(
                    str(prepared),
                    str(out),
                    op_types_to_quantize=list(DYNAMIC_OPS),
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=kept,
                )
                if has_conv:
                    notes.append(
                        "convolutions stay float: dynamic int8 Conv (ConvInteger) runs several times slower "
                        "than float in onnxruntime; int8-static quantizes them (QDQ)"
                    )
            elif scheme == "int8-static":
                if not calibration:
                    raise BuildError("int8-static needs calibration samples.", "Pass --calibration.")
                quantize_static(
                    str(prepared),
                    str(out),
                    SamplesReader(calibration, input_names),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=kept,
                )
                notes.append(f"QDQ, per-channel weights, min-max ranges from {len(calibration)} calibration samples")
                recurrent = sorted({node.op_type for node in graph.node if node.op_type in RECURRENT_OPS})
                if recurrent:
                    notes.append(
                        f"{', '.join(recurrent)} nodes stay float in int8-static (onnxruntime quantizes them "
                        "dynamically only); int8-dynamic quantizes them"
                    )
            else:
                raise BuildError(f"ONNX has no {scheme} scheme here.", "Report this: the ladder asked for it.")
        except BuildError:
            raise
        except Exception as exc:
            raise BuildError(
                f"onnxruntime quantization ({scheme}) failed: {type(exc).__name__}: {exc}",
                tail(log.getvalue()) or "Keep the failing layers float, or choose a milder precision.",
            ) from exc
    return notes


def tidy(path: Path) -> list[str]:
    """Drop what the quantizer leaves that no runtime reads: opset imports of domains no node uses (it
    declares the training and experimental ones too) and the pre-processor's intermediate shapes
    (onnxruntime infers them again when it loads the model)."""
    model = onnx.load(str(path))
    used = {node.domain for node in model.graph.node} | {""}
    unused = [o.domain for o in model.opset_import if o.domain not in used and o.domain != "ai.onnx"]
    if not unused and not model.graph.value_info:
        return []
    kept = [o for o in model.opset_import if o.domain not in unused]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    del model.graph.value_info[:]
    onnx.save(model, str(path))
    return [f"tidied: removed {len(unused)} unused opset import(s) ({', '.join(unused)}) and the intermediate shapes"]


@contextlib.contextmanager
def _quiet_ort_logging() -> Iterator[None]:
    """ORT's quantization tools log every node at INFO through the root logger."""
    root = logging.getLogger()
    saved = root.level
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(saved)
