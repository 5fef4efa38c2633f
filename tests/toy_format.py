"""A format that lives outside edgepack, as a plugin would: importing this module registers it.

The artifact is the model's state dict next to the reference it was loaded from; the runtime is eager
PyTorch rebuilding the model from that reference. Used by tests/test_architecture.py to prove that a
format is one folder (here: one module) and nothing else in edgepack has to know it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from edgepack.formats import Emitted, Format, Runner, register_format
from edgepack.load import resolve_reference


@register_format
class StateDictFormat(Format):
    name = "toy_state_dict"
    suffix = ".toy"
    precisions = ("fp32",)

    def emit(self, captured, settings, path: Path, calibration=None) -> Emitted:
        buffer = io.BytesIO()
        state = captured.loaded.module.state_dict()
        torch.save({"reference": captured.loaded.source["reference"], "state": state}, buffer)
        path.write_bytes(buffer.getvalue())
        return Emitted(path, {"runtime": "eager PyTorch (load_state_dict)", "tensors": len(state)})

    def open(self, path: Path, threads: int) -> Runner:
        saved = torch.load(path, weights_only=True)
        factory = resolve_reference(saved["reference"], Path.cwd())
        model = factory() if not isinstance(factory, torch.nn.Module) else factory
        model.load_state_dict(saved["state"])
        model.eval()

        def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
            with torch.inference_mode():
                out = model(*(torch.from_numpy(a) for a in inputs))
            return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else [out])]

        return run

    def requirements_schema(self) -> dict:
        return {
            "type": "object",
            "additionalProperties": False,
            "required": ["runtime", "tensors"],
            "properties": {"runtime": {"type": "string"}, "tensors": {"type": "integer", "minimum": 0}},
        }

    def converter_versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}
