"""How close each artifact comes to this machine's limit: FLOPs per inference counted once from the eager
model, and the machine's fp32 and int8 GEMM peaks measured in the same run with the same thread count.

A peak here is the best of the GEMM kernels the artifacts' runtimes use (torch's CPU BLAS and int8 `_int_mm`,
onnxruntime's MLAS MatMul and MatMulInteger) on square-ish matrices large enough to be compute-bound; an
artifact's fraction of it says how far from the hardware it runs, not how good its kernels are in general
(small convolutions and attention at batch 1 are memory- and overhead-bound).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..bench import torch_threads
from ..paths import scratch_folder

GEMM = (256, 512, 512)  # M, K, N: 134 MFLOP per call, compute-bound, short enough to fit between other processes
ROUNDS = 40


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
    ta, tb, ia, ib = (torch.from_numpy(x) for x in (a32, b32, a8, b8))
    calls: dict[str, Callable[[], Any]] = {"torch.mm fp32": functools.partial(torch.mm, ta, tb)}
    if _has_int_mm(ia, ib):
        calls["torch._int_mm int8"] = functools.partial(torch._int_mm, ia, ib)
    with scratch_folder(prefix="edgepack-peak-") as tmp:
        runners = _onnxruntime_gemms(Path(tmp), b32, b8, threads)
        feeds: dict[str, np.ndarray] = {"onnxruntime MatMul fp32": a32, "onnxruntime MatMulInteger int8": u8}
        calls.update({label: functools.partial(run, [feeds[label]]) for label, run in runners.items()})
        with torch_threads(threads), torch.inference_mode():
            seconds = _best_seconds(calls)
    measured = {label: 2.0 * m * k * n / s / 1e9 for label, s in seconds.items()}
    fp32 = max((k for k in measured if k.endswith("fp32")), key=lambda key: measured[key])
    int8 = max((k for k in measured if k.endswith("int8")), key=lambda key: measured[key])
    return Peaks(threads, measured[fp32], measured[int8], fp32, int8, measured)


def _has_int_mm(a: torch.Tensor, b: torch.Tensor) -> bool:
    try:
        torch._int_mm(a, b)
    except RuntimeError:  # not every CPU build has it
        return False
    return True


def _onnxruntime_gemms(
    folder: Path, b32: np.ndarray, b8: np.ndarray, threads: int
) -> dict[str, Callable[[list[np.ndarray]], Any]]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ..formats.onnx.session import runner

    m = GEMM[0]
    found = {}
    for label, op, b, elem, out in (
        ("onnxruntime MatMul fp32", "MatMul", b32, TensorProto.FLOAT, TensorProto.FLOAT),
        ("onnxruntime MatMulInteger int8", "MatMulInteger", b8, TensorProto.UINT8, TensorProto.INT32),
    ):
        graph = helper.make_graph(
            [helper.make_node(op, ["a", "b"], ["y"])],
            "gemm",
            [helper.make_tensor_value_info("a", elem, [m, b.shape[0]])],
            [helper.make_tensor_value_info("y", out, [m, b.shape[1]])],
            [numpy_helper.from_array(b, "b")],
        )
        path = folder / f"{op}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        found[label] = runner(path, threads)
    return found


def _best_seconds(calls: dict[str, Callable[[], Any]]) -> dict[str, float]:
    """The fastest of ROUNDS runs of each call, interleaved: a peak is what the machine can do, and on a
    shared host the fastest run is the one other processes disturbed least."""
    for call in calls.values():
        for _ in range(3):
            call()
    best = {label: float("inf") for label in calls}
    for _ in range(ROUNDS):
        for label, call in calls.items():
            start = time.perf_counter()
            call()
            best[label] = min(best[label], time.perf_counter() - start)
    return best
