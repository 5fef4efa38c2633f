"""ORT format (.ort) beside an .onnx artifact, for onnxruntime's mobile and reduced (minimal) builds.

A target turns it on with `ort_format = true` in [formats.onnx]. The conversion is what
onnxruntime.tools.convert_onnx_models_to_ort does by default (fixed optimization style, level
"all" without the x86-only NCHWc layout transformer, so the file runs on ARM too), through its
Python API. Beside the model goes `<model>.required_operators.config`, the file a firmware build
passes to onnxruntime's `build.sh --minimal_build --include_ops_by_config` to compile only the
kernels the model uses. The .ort is loaded back in onnxruntime and checked against eager PyTorch
on the same inputs and tolerance as the .onnx; a mismatch fails the ONNX artifact.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from ...errors import BuildError, UsageError
from ...paths import scratch_folder
from .session import PROVIDERS, runner

if TYPE_CHECKING:
    from ...capture.ladder import CapturedModel
    from ...targets import FormatSettings

OPTION = "ort_format"
SUFFIX = ".ort"
CONFIG_SUFFIX = ".required_operators.config"
_OPTIMIZATION = "all (NchwcTransformer disabled, as convert_onnx_models_to_ort does for ARM)"


def validate_option(value: Any) -> None:
    if not isinstance(value, bool):
        raise UsageError(
            f"[formats.onnx] ort_format = {value!r} is not true or false.",
            "Write ort_format = true to also emit a .ort file.",
        )


def write_ort(
    onnx_path: Path, captured: CapturedModel, settings: FormatSettings, threads: int = 1
) -> tuple[dict[str, Any], list[str]]:
    """Convert, write the operators config, smoke-test the .ort; return its requirements entry and notes."""
    ort_path, config_path = onnx_path.with_suffix(SUFFIX), onnx_path.with_suffix(CONFIG_SUFFIX)
    try:
        stability = _convert(onnx_path, ort_path)
        _write_operators_config(ort_path, config_path)
        verdict = _smoke(ort_path, captured, settings, threads)
        if not verdict.ok:
            raise BuildError(
                f"The ORT format model {ort_path.name} does not match eager PyTorch: {verdict.reason}",
                "Turn ort_format off for this target, or report the model.",
            )
    except BaseException:
        ort_path.unlink(missing_ok=True)  # the caller removes the .onnx; leave no orphan beside it
        config_path.unlink(missing_ok=True)
        raise
    entry = {
        "path": ort_path.name,
        "required_operators": config_path.name,
        "optimization_level": _OPTIMIZATION,
        "onnxruntime": ort.__version__,
    }
    return entry, [f"ort format: {ort_path.name} + {config_path.name}; {verdict.reason}; {stability}"]


def open_ort(path: Path, threads: int) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """A runner for a .ort file in onnxruntime (inputs in the model's order -> outputs)."""
    return runner(path, threads, ort_format=True)


def _convert(onnx_path: Path, ort_path: Path) -> str:
    """Convert in a child process with address-space randomization off, where Linux allows it: onnxruntime
    writes the .ort's kernel-type-string table in hash-map order, and that order follows the process's
    memory addresses. Returns a note on whether the bytes are reproducible."""
    with scratch_folder() as tmp:
        # Same file names, folder and environment every time: the child's memory layout must not vary.
        shutil.copyfile(onnx_path, Path(tmp) / "model.onnx")
        env = {key: os.environ[key] for key in _PASSED_ENV if key in os.environ}  # where onnxruntime is found
        env.update(PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, "model.onnx", "model.ort"],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            preexec_fn=_no_aslr,
        )
        if done.returncode != 0:
            raise BuildError(
                f"Converting {onnx_path.name} to the ORT format failed: {done.stderr.strip()[-800:]}",
                "Turn ort_format off for this target, or report the model.",
            )
        shutil.copyfile(Path(tmp) / "model.ort", ort_path)
    if _aslr_was_off(done.stdout):
        return "byte-reproducible (converted with address-space randomization off)"
    return (
        "NOT byte-reproducible on this OS: onnxruntime lays out its kernel-type table in a per-process hash "
        "order (the content is the same; only the layout differs)"
    )


_CHILD = f"""
import sys, onnxruntime as ort
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
options.optimized_model_filepath = sys.argv[2]
options.add_session_config_entry("session.save_model_format", "ORT")
ort.InferenceSession(sys.argv[1], options, providers={PROVIDERS!r}, disabled_optimizers=["NchwcTransformer"])
try:
    print(open("/proc/self/personality").read().strip())
except OSError:
    print("unknown")
"""
_ADDR_NO_RANDOMIZE = 0x0040000
_PASSED_ENV = ("PATH", "PYTHONPATH", "LD_LIBRARY_PATH", "VIRTUAL_ENV")
_ASLR_OFF_WORKS = sys.platform.startswith("linux")


def _aslr_was_off(child_stdout: str) -> bool:
    text = child_stdout.strip().splitlines()[-1] if child_stdout.strip() else ""
    try:
        return bool(int(text, 16) & _ADDR_NO_RANDOMIZE)
    except ValueError:
        return False


def _no_aslr() -> None:
    """Runs in the child between fork and exec: the personality flag applies to the exec'd program."""
    if _ASLR_OFF_WORKS:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.personality(_ADDR_NO_RANDOMIZE)


def _write_operators_config(ort_path: Path, config_path: Path) -> None:
    from onnxruntime.tools.ort_format_model import create_config_from_models

    tool_log = logging.getLogger("ort_format_model.utils")
    level = tool_log.level
    tool_log.setLevel(logging.WARNING)  # it logs every config it writes at INFO
    try:
        create_config_from_models([ort_path], config_path, enable_type_reduction=False)
    finally:
        tool_log.setLevel(level)
    # The tool lists the model by its absolute (staging) path: keep only the name, so builds are reproducible.
    lines = config_path.read_text(encoding="utf-8").splitlines()
    lines = [f"# - {ort_path.name}" if line.startswith("# - ") else line for line in lines]
    config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _smoke(ort_path: Path, captured: CapturedModel, settings: FormatSettings, threads: int):
    from ...compare import compare_runner

    return compare_runner(open_ort(ort_path, threads), captured, settings)[0]
