"""How close each artifact comes to this machine's limit: FLOPs per inference counted once from the eager
model, and the machine's fp32 and int8 GEMM peaks measured in the same run with the same thread count.

A peak here is the best of the GEMM kernels the artifacts' runtimes use (torch's CPU BLAS and int8 `_int_mm`,
onnxruntime's MLAS MatMul and MatMulInteger) on square-ish matrices large enough to be compute-bound; an
artifact's fraction of it says how far from the hardware it runs, not how good its kernels are in general
(small convolutions and attention at batch 1 are memory- and overhead-bound).
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..bench import torch_threads

GEMM = (512, 1024, 1024)  # M, K, N: ~1 GFLOP per call, compute-bound on a phone-class or server core
REPEATS = 15


@dataclass
class Peaks:
    threads: int
    fp32_gflops: float
    int8_gops: float
    fp32_kernel: str
    int8_kernel: str
    measured: dict[str, float]  # every kernel tried, GFLOP/s (GOP/s for int8)

    def to_json(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "fp32_gflops": self.fp32_gflops,
            "int8_gops": self.int8_gops,
            "fp32_kernel": self.fp32_kernel,
            "int8_kernel": self.int8_kernel,
            "gemm_mkn": list(GEMM),
            "measured": self.measured,
        }


def count_flops(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> int:
    """FLOPs of one eager inference (a multiply-add counts 2), by torch's own counter."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        module(*args)
    return int(counter.get_total_flops())


def gemm_peaks(threads: int) -> Peaks:
    """The best fp32 and int8 GEMM throughput of this machine's runtimes, `threads` threads each."""
    m, k, n = GEMM
    rng = np.random.default_rng(0)
    a32, b32 = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
    a8, b8 = rng.integers(-128, 127, (m, k), dtype=np.int8), rng.integers(-128, 127, (k, n), dtype=np.int8)
    u8 = rng.integers(0, 255, (m, k), dtype=np.uint8)  # onnxruntime's fast int8 path: uint8 activations
    ops = 2.0 * m * k * n
    measured: dict[str, float] = {}
    with torch_threads(threads), torch.inference_mode():
        ta, tb = torch.from_numpy(a32), torch.from_numpy(b32)
        measured["torch.mm fp32"] = ops / _best_seconds(lambda: torch.mm(ta, tb)) / 1e9
        ia, ib = torch.from_numpy(a8), torch.from_numpy(b8)
        try:
            measured["torch._int_mm int8"] = ops / _best_seconds(lambda: torch._int_mm(ia, ib)) / 1e9
        except RuntimeError:  # not every CPU build has it
            pass
    measured.update(_onnxruntime_gemms(a32, b32, u8, b8, threads, ops))
    fp32 = max((k for k in measured if k.endswith("fp32")), key=lambda key: measured[key])
    int8 = max((k for k in measured if k.endswith("int8")), key=lambda key: measured[key])
    return Peaks(threads, measured[fp32], measured[int8], fp32, int8, measured)


def _onnxruntime_gemms(
    a32: np.ndarray, b32: np.ndarray, a8: np.ndarray, b8: np.ndarray, threads: int, ops: float
) -> dict[str, float]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ..formats.onnx.session import runner

    found = {}
    with tempfile.TemporaryDirectory(prefix="edgepack-peak-") as tmp:
        for label, op, a, b, elem, out in (
            ("onnxruntime MatMul fp32", "MatMul", a32, b32, TensorProto.FLOAT, TensorProto.FLOAT),
            ("onnxruntime MatMulInteger int8", "MatMulInteger", a8, b8, TensorProto.UINT8, TensorProto.INT32),
        ):
            graph = helper.make_graph(
                [helper.make_node(op, ["a", "b"], ["y"])],
                "gemm",
                [helper.make_tensor_value_info("a", elem, list(a.shape))],
                [helper.make_tensor_value_info("y", out, [a.shape[0], b.shape[1]])],
                [numpy_helper.from_array(b, "b")],
            )
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            path = Path(tmp) / f"{op}.onnx"
            onnx.save(model, str(path))
            found[label] = ops / _best_seconds(functools.partial(runner(path, threads), [a])) / 1e9
    return found


def _best_seconds(call: Callable[[], Any]) -> float:
    """The median of the fastest half of REPEATS runs after warm-up: a peak, robust to other processes."""
    for _ in range(3):
        call()
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(sorted(samples)[: REPEATS // 2 + 1])
