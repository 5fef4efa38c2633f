"""TorchScript Lite (.ptl): the PyTorch lite interpreter's format, loaded by pytorch_android_lite and LibTorch-Lite.

optimize_for_mobile needs an XNNPACK-enabled build that the stock wheels lack, so the mobile
passes that matter run here directly, and the report says which ones changed the graph.

The target names the app runtime (`runtime`, default pytorch_android_lite 1.13.1): operators that
runtime lacks are rewritten to ones it has before saving (rewrites.py), and every saved program is
checked against its operator table (runtime_ops.py); a .ptl still calling one fails its smoke test.
"""

from __future__ import annotations

import zipfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import UsageError
from ...noise import quiet_converter
from ...targets import FormatSettings
from ..base import FLOAT_LAYERS, Calibration, Emitted, Format, Runner, register_format
from .reproducible import stabilize_ptl
from .runtime_ops import (
    ADVICE,
    DEFAULT_RUNTIME,
    NEWEST_BYTECODE,
    OLDEST_BYTECODE,
    RuntimeCheck,
    check_program,
    check_runtime_name,
    load_table,
)

if TYPE_CHECKING:  # the format is read without torch by `edgepack verify` and `inspect`; converting imports save.py
    from ...capture.devices import DeviceFindings
    from ...capture.ladder import CapturedModel


@register_format
class TorchScriptLite(Format):
    name = "torchscript_lite"
    suffix = ".ptl"
    precisions = ("fp32", "int8-dynamic", "int8-static")
    # Quantized .ptl runs qnnpack, the phones' int8 engine: slow on x86, the fast path on ARM.
    arm_tuned_precisions = ("int8-dynamic", "int8-static")
    option_defaults = {"bytecode_version": NEWEST_BYTECODE, "runtime": DEFAULT_RUNTIME}
    libraries = ("torch",)
    app_platforms = ("android",)

    def nearest_precision(self, requested: str) -> tuple[str, str]:
        if requested.startswith("palettize-"):
            return "int8-dynamic", f"{self.name} has no palettization; int8 weights (int8-dynamic) instead"
        return super().nearest_precision(requested)

    def quantizable_layers(self, captured: CapturedModel, settings: FormatSettings) -> list[str]:
        from .quantize import quantizable_layers

        return quantizable_layers(captured, settings.precision)

    def validate(self, settings: FormatSettings) -> None:
        super().validate(settings)
        version = self.option(settings, "bytecode_version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise UsageError(
                f"bytecode_version must be a whole number, got {type(version).__name__} {version!r}.",
                f"Write bytecode_version = {NEWEST_BYTECODE} (a number, no quotes), from "
                f"{OLDEST_BYTECODE} to {NEWEST_BYTECODE}.",
            )
        if not OLDEST_BYTECODE <= version <= NEWEST_BYTECODE:
            raise UsageError(
                f"bytecode_version {version!r} cannot be written by torch {metadata.version('torch')}.",
                f"Choose a version from {OLDEST_BYTECODE} to {NEWEST_BYTECODE} (the one your app's lite runtime reads).",
            )
        check_runtime_name(self.option(settings, "runtime"))

    def emit(
        self, captured: CapturedModel, settings: FormatSettings, path: Path, calibration: Calibration | None = None
    ) -> Emitted:
        from .save import write_lite  # torch: only when a model is converted

        floats = list(settings.options.get(FLOAT_LAYERS, []))
        table = load_table(self.option(settings, "runtime"))
        requirements, notes = write_lite(
            captured, settings.precision, path, self.option(settings, "bytecode_version"), table, calibration, floats
        )
        return Emitted(path, requirements, notes)

    def check_structure(self, emitted: Emitted, captured: CapturedModel, settings: FormatSettings) -> list[str]:
        """The saved program against the app runtime's operator table: an operator it lacks fails the
        artifact, with the user's line that produced it (recorded at emit) and what to do."""
        recorded = emitted.requirements.get("runtime_check") or {}
        known = {m["operator"]: m for m in recorded.get("missing", [])}
        check = check_program(
            emitted.path,
            load_table(self.option(settings, "runtime")),
            {op: m["source"] for op, m in known.items()},
            {op: m["rewrite"] for op, m in known.items()},
        )
        return _runtime_problems(check)

    def stabilize(self, path: Path) -> list[str]:
        return stabilize_ptl(path)

    def open(self, path: Path, threads: int) -> Runner:
        import torch
        import torch.jit.mobile as mobile

        from .quantize import qnnpack_engine

        # Quantized weights are packed for the engine active at load time: qnnpack, as on a phone.
        with quiet_converter(), qnnpack_engine():
            module = mobile._load_for_lite_interpreter(str(path))

        def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
            with torch.inference_mode(), qnnpack_engine():
                result = module(*(torch.from_numpy(np.ascontiguousarray(a)) for a in inputs))
            outputs = result if isinstance(result, (tuple, list)) else (result,)
            return [t.numpy() for t in outputs]

        return run

    def weight_bytes(self, path: Path) -> int | None:
        # Tensor storages are the archive's data/ and constants/ records; the rest is code and pickles.
        with zipfile.ZipFile(path) as archive:
            return sum(
                info.file_size
                for info in archive.infolist()
                if {"data", "constants"} & set(info.filename.split("/")[1:-1]) and not info.filename.endswith(".pkl")
            )

    def saved_devices(self, path: Path, keep: set[str]) -> DeviceFindings:
        from ...capture.devices import pinned_devices

        return pinned_devices(path, keep=keep)

    def converter_versions(self) -> dict[str, str]:
        return {"torch": metadata.version("torch")}


def _runtime_problems(check: RuntimeCheck) -> list[str]:
    if check.ok:
        return []
    return check.problems() + [ADVICE]
