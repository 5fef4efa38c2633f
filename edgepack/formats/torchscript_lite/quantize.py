"""int8 for TorchScript Lite with PyTorch's own quantizers and the qnnpack engine (the one phones run).

  int8-dynamic  torch.ao.quantization.quantize_dynamic on the eager model (Linear, LSTM, GRU: int8
                weights, activations quantized on the fly; Embedding: int8 rows), then captured again
                with the model's capture strategy and frozen.
  int8-static   graph-mode quantization of the captured TorchScript (quantize_jit): conv-bn
                folding, observers run on the calibration samples, int8 conv/linear kernels.
Layers named in `float_layers` (module names of the user's model) keep their float weights.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator

import torch
from torch import nn
from torch.ao.quantization import (
    default_dynamic_qconfig,
    float_qparams_weight_only_qconfig,
    get_default_qconfig,
    quantize_dynamic,
)
from torch.ao.quantization.quantize_jit import quantize_jit
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from ...capture.ladder import CapturedModel, capture_again
from ...errors import BuildError
from ..base import Calibration as Samples

ENGINE = "qnnpack"
DYNAMIC_TYPES = (nn.Linear, nn.LSTM, nn.GRU, nn.Embedding)
STATIC_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
DYNAMIC_ONLY_TYPES = (nn.LSTM, nn.GRU, nn.Embedding)
# The capture wraps the user's model as the `model` attribute of a FlatModel.
_WRAPPER_PREFIX = "model."


@contextlib.contextmanager
def qnnpack_engine() -> Iterator[None]:
    """Quantized kernels (and the packing of their weights at load time) run on qnnpack inside this block."""
    if ENGINE not in torch.backends.quantized.supported_engines:
        raise BuildError(f"This torch build has no {ENGINE} quantized engine.", "Install a stock torch wheel.")
    saved = torch.backends.quantized.engine
    torch.backends.quantized.engine = ENGINE
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*quantiz.*deprecated.*")
            # quantize_jit moves the module with .cpu(), which reads .grad of its non-leaf parameters.
            warnings.filterwarnings("ignore", message=r"The \.grad attribute of a Tensor that is not a leaf")
            yield
    finally:
        torch.backends.quantized.engine = saved


def quantizable_layers(captured: CapturedModel, scheme: str) -> list[str]:
    """Module names of the user's model that `scheme` quantizes (what a sensitivity pass can keep float)."""
    types = {"int8-dynamic": DYNAMIC_TYPES, "int8-static": STATIC_TYPES}.get(scheme, ())
    # nn.MultiheadAttention reads its out_proj's weight tensor directly, which a dynamic int8 Linear does
    # not have: torch's own default mapping leaves that Linear subclass out, and so does this one.
    skipped = NonDynamicallyQuantizableLinear if scheme == "int8-dynamic" else ()
    return [
        name
        for name, module in captured.loaded.module.named_modules()
        if name and isinstance(module, types) and not isinstance(module, skipped)
    ]


def quantize_lite(
    captured: CapturedModel, scheme: str, calibration: Samples | None, float_layers: list[str]
) -> tuple[torch.jit.ScriptModule, list[str]]:
    """The captured model in int8 as TorchScript, and notes on what was quantized."""
    quantized = quantizable_layers(captured, scheme)
    kept = [name for name in float_layers if name in quantized]
    notes = [
        f"{scheme} ({ENGINE} engine): {len(quantized) - len(kept)} of {len(quantized)} layers in int8"
        + (f", kept in float: {', '.join(kept)}" if kept else "")
    ]
    if not quantized:
        notes.append(f"the model has no layer {scheme} quantizes ({_type_names(scheme)}); weights stay float")
    with qnnpack_engine():
        if scheme == "int8-dynamic":
            module = _dynamic(captured, [n for n in quantized if n not in kept])
            if any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in captured.loaded.module.modules()):
                notes.append("convolutions stay float in dynamic int8; int8-static quantizes them")
            if any(isinstance(m, nn.MultiheadAttention) for m in captured.loaded.module.modules()):
                notes.append(
                    "nn.MultiheadAttention's input and output projections stay float in dynamic int8 "
                    "(it reads their weight tensors directly); its feed-forward Linear layers are int8"
                )
        elif scheme == "int8-static":
            module = _static(captured, calibration, kept)
            unquantized = sorted(
                {type(m).__name__ for m in captured.loaded.module.modules() if isinstance(m, DYNAMIC_ONLY_TYPES)}
            )
            if unquantized:
                notes.append(
                    f"{', '.join(unquantized)} layers stay float in int8-static (graph-mode static quantization has "
                    "no kernels for them); int8-dynamic quantizes them"
                )
        else:
            raise BuildError(f"TorchScript Lite has no {scheme} scheme.", "Report this: the ladder asked for it.")
    return module, notes


def _dynamic(captured: CapturedModel, layers: list[str]) -> torch.jit.ScriptModule:
    model = copy.deepcopy(captured.loaded.module).eval()
    # Embeddings take weight-only int8 rows (per-row scales); the rest dynamic int8.
    spec = {
        name: float_qparams_weight_only_qconfig
        if isinstance(model.get_submodule(name), nn.Embedding)
        else default_dynamic_qconfig
        for name in layers
    }
    model = quantize_dynamic(model, qconfig_spec=spec, dtype=torch.qint8)
    try:
        return capture_again(captured, model)
    except Exception as exc:
        raise BuildError(
            f"Capturing the dynamically quantized model ({captured.strategy}) failed: {exc}",
            "Try int8-static, or keep the failing layers float.",
        ) from exc


def _static(captured: CapturedModel, calibration: Samples | None, kept: list[str]) -> torch.jit.ScriptModule:
    if not calibration:
        raise BuildError("int8-static needs calibration samples.", "Pass --calibration.")
    qconfig_dict = {"": get_default_qconfig(ENGINE), **{_WRAPPER_PREFIX + name: None for name in kept}}
    names = captured.input_names

    def calibrate(model: torch.jit.ScriptModule, samples: Samples) -> None:
        with torch.no_grad():
            for sample in samples:
                model(*(sample[name] for name in names))

    try:
        return quantize_jit(captured.scripted.eval(), qconfig_dict, calibrate, [calibration], inplace=False)
    except Exception as exc:
        raise BuildError(
            f"Static int8 quantization of the captured TorchScript failed: {type(exc).__name__}: {exc}",
            "Try int8-dynamic, or keep the failing layers float.",
        ) from exc


def _type_names(scheme: str) -> str:
    types = DYNAMIC_TYPES if scheme == "int8-dynamic" else STATIC_TYPES
    return ", ".join(t.__name__ for t in types)
