"""onnxruntime sessions as every ONNX check, optimization and timing opens them: on the CPU provider,
the one a phone's or board's onnxruntime package runs the bundle with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

PROVIDERS = ["CPUExecutionProvider"]


def session(path: Path, options: ort.SessionOptions, **kwargs) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), options, providers=PROVIDERS, **kwargs)


def runner(path: Path, threads: int, ort_format: bool = False) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """Inputs in the model's order -> outputs, with `threads` intra-op threads (the protocol's count)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if ort_format:
        options.add_session_config_entry("session.load_model_format", "ORT")
    loaded = session(path, options)
    names = [i.name for i in loaded.get_inputs()]
    return lambda inputs: loaded.run(None, dict(zip(names, inputs)))
