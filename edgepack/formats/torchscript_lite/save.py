"""Writing a .ptl: freeze and mobile passes (or torch.ao int8), operator rewrites for the app runtime,
the lite save (backported to an older bytecode when asked), and the operator check of what was written."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.jit.mobile as mobile

from ...capture.ladder import CapturedModel
from ...errors import BuildError
from ...noise import quiet_converter, tail
from ...paths import scratch_folder
from ..base import Calibration
from . import guard
from . import quantize as torch_ao
from . import rewrites as operator_rewrites
from .runtime_ops import NEWEST_BYTECODE, OperatorTable, check_program


def write_lite(
    captured: CapturedModel,
    precision: str,
    path: Path,
    version: int,
    table: OperatorTable,
    calibration: Calibration | None,
    float_layers: list[str],
) -> tuple[dict[str, Any], list[str]]:
    """Write the .ptl at `path`; its requirements (runtime, bytecode, operators, the runtime check, rewrites)
    and notes."""
    with quiet_converter() as log, torch_ao.qnnpack_engine():
        # The shape guard wraps the capture before freezing (a frozen module cannot be a scripted submodule).
        if precision == "fp32":
            module, notes = _mobile_passes(guard.guarded(captured.scripted, captured.loaded.inputs))
        else:  # the quantizer's errors are already BuildErrors that say what to do
            module, notes = torch_ao.quantize_lite(captured, precision, calibration, float_layers)
            module = guard.guarded(module, captured.loaded.inputs)
            if precision == "int8-dynamic":
                module, passes = _smaller_of_frozen_or_not(module)
                notes += passes
            else:  # freezing a static int8 graph only adds size: its weights are already packed
                torch._C._jit_pass_remove_dropout(module._c)
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
    guarded_shapes = guard.declared_shapes(captured.loaded.inputs)
    requirements = {
        "runtime": table.runtime,
        "bytecode_version": written,
        "operators": operators,
        # An app calls forward(...).toTuple(): the lite module returns a tuple even for one output.
        "returns": "a tuple of tensors in the manifest's output order (a 1-tuple for one output)",
        "runtime_check": check.to_json(),
        "rewrites": [r.to_json() for r in rewritten],
        # Checked at these shapes only: the saved program raises for any other rank or fixed size.
        "shape_guard": guarded_shapes,
    }
    shapes = ", ".join(f"{name}=" + "x".join(map(str, dims)) for name, dims in guarded_shapes.items())
    notes.append(f"shape guard: the program raises for an input whose rank or fixed dimensions differ from {shapes}")
    return requirements, notes


def _rewrite_note(rewrite: operator_rewrites.OperatorRewrite) -> str:
    where = f" at {rewrite.source}" if rewrite.source else ""
    if rewrite.kind == "no_rewrite":
        return f"{rewrite.op}{where}: {rewrite.detail}"
    return f"{rewrite.op}{where} rewritten for the app runtime: {rewrite.detail}"


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
    with scratch_folder() as tmp:
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
    with scratch_folder() as tmp:
        newest = Path(tmp) / "newest.ptl"
        module._save_for_lite_interpreter(str(newest))
        if not mobile._backport_for_mobile(str(newest), str(path), version):
            raise BuildError(
                f"Backporting the lite model to bytecode version {version} failed.",
                "Choose a newer bytecode_version in the target, if the app's runtime allows it.",
            )
