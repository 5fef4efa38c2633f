"""TorchScript Lite (.ptl): the PyTorch lite interpreter's format, loaded by pytorch_android_lite and LibTorch-Lite.

optimize_for_mobile needs an XNNPACK-enabled build that the stock wheels lack, so the mobile
passes that matter run here directly, and the report says which ones changed the graph.

The target names the app runtime (`runtime`, default pytorch_android_lite 1.13.1): operators that
runtime lacks are rewritten to ones it has before saving (rewrites.py), and every saved program is
checked against its operator table (runtime_ops.py); a .ptl still calling one fails its smoke test.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.jit.mobile as mobile

from ...capture.devices import DeviceFindings, pinned_devices
from ...capture.ladder import CapturedModel
from ...errors import BuildError, UsageError
from ...noise import quiet_converter, tail
from ...targets import FormatSettings
from ..base import FLOAT_LAYERS, Calibration, Emitted, Format, Runner, register_format
from . import quantize as torch_ao
from . import rewrites as operator_rewrites
from .reproducible import stabilize_ptl
from .runtime_ops import ADVICE, DEFAULT_RUNTIME, RuntimeCheck, check_program, check_runtime_name, load_table

# Lite bytecode v8 is what torch 2.x writes; v4..v7 are reachable by backporting for older app runtimes.
NEWEST_BYTECODE = 8
OLDEST_BYTECODE = 4


@register_format
class TorchScriptLite(Format):
    name = "torchscript_lite"
    suffix = ".ptl"
    precisions = ("fp32", "int8-dynamic", "int8-static")
    option_defaults = {"bytecode_version": NEWEST_BYTECODE, "runtime": DEFAULT_RUNTIME}
    libraries = ("torch",)
    app_platforms = ("android",)

    def nearest_precision(self, requested: str) -> tuple[str, str]:
        if requested.startswith("palettize-"):
            return "int8-dynamic", f"{self.name} has no palettization; int8 weights (int8-dynamic) instead"
        return super().nearest_precision(requested)

    def quantizable_layers(self, captured: CapturedModel, settings: FormatSettings) -> list[str]:
        return torch_ao.quantizable_layers(captured, settings.precision)

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
                f"bytecode_version {version!r} cannot be written by torch {torch.__version__}.",
                f"Choose a version from {OLDEST_BYTECODE} to {NEWEST_BYTECODE} (the one your app's lite runtime reads).",
            )
        check_runtime_name(self.option(settings, "runtime"))

    def emit(
        self, captured: CapturedModel, settings: FormatSettings, path: Path, calibration: Calibration | None = None
    ) -> Emitted:
        version = self.option(settings, "bytecode_version")
        with quiet_converter() as log, torch_ao.qnnpack_engine():
            if settings.precision == "fp32":
                module, notes = _mobile_passes(captured.scripted)
            else:  # the quantizer's errors are already BuildErrors that say what to do
                module, notes = torch_ao.quantize_lite(
                    captured, settings.precision, calibration, list(settings.options.get(FLOAT_LAYERS, []))
                )
                if settings.precision == "int8-dynamic":
                    module, passes = _smaller_of_frozen_or_not(module)
                    notes += passes
                else:  # freezing a static int8 graph only adds size: its weights are already packed
                    torch._C._jit_pass_remove_dropout(module._c)
            table = load_table(self.option(settings, "runtime"))
            rewritten = operator_rewrites.make_runnable(module, table)
            notes += [_rewrite_note(r) for r in rewritten]
            try:
                _save(module, path, version)
            except Exception as exc:
                raise BuildError(
                    f"Writing the lite model failed: {type(exc).__name__}: {exc}", tail(log.getvalue())
                ) from exc
            operators = sorted(mobile._export_operator_list(mobile._load_for_lite_interpreter(str(path))))
            written = mobile._get_model_bytecode_version(str(path))
            check = check_program(
                path,
                table,
                operator_rewrites.operator_sources(module),
                {r.op: r.detail for r in rewritten if r.kind == "no_rewrite"},
            )
        notes.append(
            f"checked for {check.runtime}: {check.operators_checked} operators at bytecode "
            f"{check.bytecode_version}, "
            + (f"missing: {', '.join(m.operator for m in check.missing)}" if check.missing else "all present")
        )
        requirements = {
            "runtime": table.runtime,
            "bytecode_version": written,
            "operators": operators,
            # An app calls forward(...).toTuple(): the lite module returns a tuple even for one output.
            "returns": "a tuple of tensors in the manifest's output order (a 1-tuple for one output)",
            "runtime_check": check.to_json(),
            "rewrites": [r.to_json() for r in rewritten],
        }
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
        # Quantized weights are packed for the engine active at load time: qnnpack, as on a phone.
        with quiet_converter(), torch_ao.qnnpack_engine():
            module = mobile._load_for_lite_interpreter(str(path))

        def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
            with torch.inference_mode(), torch_ao.qnnpack_engine():
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
        return pinned_devices(path, keep=keep)

    def converter_versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}


def _rewrite_note(rewrite: operator_rewrites.OperatorRewrite) -> str:
    where = f" at {rewrite.source}" if rewrite.source else ""
    if rewrite.kind == "no_rewrite":
        return f"{rewrite.op}{where}: {rewrite.detail}"
    return f"{rewrite.op}{where} rewritten for the app runtime: {rewrite.detail}"


def _runtime_problems(check: RuntimeCheck) -> list[str]:
    if check.ok:
        return []
    return check.problems() + [ADVICE]


def _mobile_passes(scripted: torch.jit.ScriptModule) -> tuple[torch.jit.ScriptModule, list[str]]:
    """Freeze (constant folding, conv-bn folding) and remove dropout; note what each pass changed."""
    before = _op_counts(scripted.inlined_graph)
    frozen = torch.jit.freeze(scripted.eval())
    torch._C._jit_pass_remove_dropout(frozen._c)
    after = _op_counts(frozen.graph)
    notes = [f"freeze: {before.total()} -> {after.total()} graph nodes, parameters folded into constants"]
    for op in ("aten::batch_norm", "aten::dropout", "aten::feature_dropout"):
        if before[op] != after[op]:
            notes.append(f"{op}: {before[op]} -> {after[op]}")
    return frozen, notes


def _smaller_of_frozen_or_not(module: torch.jit.ScriptModule) -> tuple[torch.jit.ScriptModule, list[str]]:
    """Freezing folds the float layers dynamic int8 leaves (conv-bn), but a frozen packed int8 weight is
    saved twice (once per archive section): keep whichever version is smaller."""
    frozen, notes = _mobile_passes(module)
    torch._C._jit_pass_remove_dropout(module._c)
    with tempfile.TemporaryDirectory() as tmp:
        sizes = []
        for candidate, name in ((frozen, "frozen"), (module, "unfrozen")):
            candidate._save_for_lite_interpreter(str(Path(tmp) / f"{name}.ptl"))
            sizes.append((Path(tmp) / f"{name}.ptl").stat().st_size)
    if sizes[0] <= sizes[1]:
        return frozen, notes
    return module, [
        f"not frozen: the frozen version is larger ({sizes[0]} vs {sizes[1]} bytes; "
        "frozen int8 weights are stored twice)"
    ]


def _op_counts(graph: torch.Graph) -> Counter:
    counts: Counter = Counter()
    stack = list(graph.nodes())
    while stack:
        node = stack.pop()
        counts[node.kind()] += 1
        for block in node.blocks():
            stack.extend(block.nodes())
    return counts


def _save(module: torch.jit.ScriptModule, path: Path, version: int) -> None:
    if version == NEWEST_BYTECODE:
        module._save_for_lite_interpreter(str(path))
        return
    with tempfile.TemporaryDirectory() as tmp:
        newest = Path(tmp) / "newest.ptl"
        module._save_for_lite_interpreter(str(newest))
        if not mobile._backport_for_mobile(str(newest), str(path), version):
            raise BuildError(
                f"Backporting the lite model to bytecode version {version} failed.",
                "Choose a newer bytecode_version in the target, if the app's runtime allows it.",
            )
