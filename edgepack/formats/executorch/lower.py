"""From a checked ExportedProgram to .pte bytes: partition per backend, lower, serialize.

Backends, in the order their partitioners claim ops (what one leaves, the next may take; what all leave
runs in ExecuTorch's portable CPU kernels):
  xnnpack  XnnpackPartitioner: ARM/x86 CPU kernels, the Android and embedded default
  coreml   CoreMLPartitioner: the ops become a Core ML ML program embedded in the .pte (Apple only)
Dynamic dimensions get an upper bound (ExecuTorch plans memory for the largest size): the program's
own range for the symbol is narrowed to [min, bound] while lowering, the graph itself is unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..coreml.executor import coremltools_module

BACKENDS = ("xnnpack", "coreml")
BACKEND_IDS = {"xnnpack": "XnnpackBackend", "coreml": "CoreMLBackend"}
COREML_PRECISIONS = ("fp32", "fp16")  # the Core ML delegate's compute precisions
# int8 on the Core ML delegate: int8 weights (coremltools' linear quantization, per channel), fp16 compute, as
# the Core ML format's int8; pt2e's quantize/dequantize ops do not convert to Core ML (no int8 cast).
COREML_INT8_WEIGHTS = {
    "mode": "linear_symmetric",
    "dtype": "int8",
    "granularity": "per_channel",
    "weight_threshold": 512,
}


def coreml_compute(precision: str) -> str:
    return "fp32" if precision == "fp32" else "fp16"


# Namespace for the Core ML delegate's model identifiers (derived from the program's content).
_COREML_NAMESPACE = uuid.UUID("2b0f7c53-54d4-4c4e-8f3e-2f7a8d8f6c21")


def partitioners(backends: list[str], precision: str, deployment: str) -> list[Any]:
    found = []
    for backend in backends:
        if backend == "xnnpack":
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

            found.append(XnnpackPartitioner())
        elif backend == "coreml":
            ct = coremltools_module()  # first: executorch's Core ML backend imports coremltools too
            from executorch.backends.apple.coreml.compiler import CoreMLBackend
            from executorch.backends.apple.coreml.partition import CoreMLPartitioner

            compute = ct.precision.FLOAT16 if coreml_compute(precision) == "fp16" else ct.precision.FLOAT32
            int8 = precision in ("int8-static", "int8-dynamic")
            specs = CoreMLBackend.generate_compile_specs(
                minimum_deployment_target=getattr(ct.target, deployment),
                compute_precision=compute,
                op_linear_quantizer_config=COREML_INT8_WEIGHTS if int8 else None,
            )
            found.append(CoreMLPartitioner(compile_specs=specs))
    return found


def lower(
    program: Any, backends: list[str], precision: str, deployment: str, bounds: dict[str, int]
) -> tuple[Any, bytes]:
    """The delegation of the lowered edge program (read before `to_executorch` rewrites the graph into
    out-variants and allocations) and the .pte bytes."""
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    from ...paths import scratch_tempdir
    from .delegation import delegation_of

    explicit_pool_strides(program)
    # scratch_tempdir: coremltools keeps each converted model as a tmp*.mlpackage until the process exits.
    with (
        scratch_tempdir("edgepack-executorch-"),
        bounded_dims(program, bounds),
        stable_coreml_payload(),
        without_unmatchable_patterns(program),
    ):
        edge = to_edge_transform_and_lower(program, partitioner=partitioners(backends, precision, deployment))
        delegation = delegation_of(edge.exported_program().graph_module)
        manager = edge.to_executorch(ExecutorchBackendConfig(extract_delegate_segments=True))
    return delegation, manager.buffer


# XNNPACK's preprocessing folds two decomposed patterns back into fused ops (bilinear upsampling, scaled
# dot-product attention). It builds its pattern graphs by exporting small modules on first use, 4-6 s per
# process, although a pattern can only match a graph that holds the op every pattern of its family contains
# (upsample_bilinear2d; _softmax, which only softmax and attention ops decompose into). Where the program has
# no such op, the family's patterns are left out: the matcher would find nothing, so the bytes are the same.
# (module, function, empty value, words one of which names every op that can become the anchor)
PATTERN_FAMILIES = (
    ("executorch.backends.xnnpack.partition.graphs.bilinear_2d", "get_graphs_dict", dict, ("upsample",)),
    ("executorch.backends.xnnpack.partition.graphs.sdpa", "get_graphs", list, ("softmax", "attention")),
)


@contextlib.contextmanager
def without_unmatchable_patterns(program: Any) -> Iterator[None]:
    import importlib

    names = op_names(program)
    patched: list[tuple[Any, str, Any]] = []
    for module_name, function, empty, words in PATTERN_FAMILIES:
        if any(word in name for name in names for word in words):
            continue
        try:
            module = importlib.import_module(module_name)
            original = getattr(module, function)
        except (ImportError, AttributeError):  # another ExecuTorch layout: build the patterns, only slower
            continue
        setattr(module, function, empty)
        patched.append((module, function, original))
    try:
        yield
    finally:
        for module, function, original in patched:
            setattr(module, function, original)


def op_names(program: Any) -> set[str]:
    """Lower-cased names of every op the program calls, in control-flow submodules too."""
    import torch

    return {
        str(getattr(node.target, "__name__", node.target)).lower()
        for module in program.graph_module.modules()
        if isinstance(module, torch.fx.GraphModule)
        for node in module.graph.nodes
        if node.op == "call_function"
    }


def explicit_pool_strides(program: Any) -> None:
    """Write out the stride a pooling call left to its default (`F.max_pool2d(x, 2)`: stride = kernel size).
    The Core ML delegate's converter reads max_pool2d's stride positionally and refuses the two-argument form
    ("got 2 input(s), expected minimum 3"); the explicit stride computes the same thing everywhere."""
    import torch

    pools = (torch.ops.aten.max_pool2d.default, torch.ops.aten.avg_pool2d.default, torch.ops.aten.max_pool1d.default)
    for node in program.graph_module.graph.nodes:
        if node.op == "call_function" and node.target in pools and len(node.args) == 2 and "stride" not in node.kwargs:
            node.args = (*node.args, node.args[1])
    program.graph_module.recompile()


@contextlib.contextmanager
def bounded_dims(program: Any, bounds: dict[str, int]) -> Iterator[None]:
    """Narrow each dynamic symbol's range to [its min, bound] for the block, in the program's shape env and
    range constraints, and put the old ranges back afterwards (the program is shared with other formats)."""
    if not bounds:
        yield
        return
    from torch.utils._sympy.value_ranges import ValueRanges

    saved: list[tuple[Any, Any, Any]] = []
    for symbol, (env, expr) in _symbols(program).items():
        if symbol not in bounds:
            continue
        before = env.var_to_range.get(expr)
        lower_bound = before.lower if before is not None else 1
        env.var_to_range[expr] = ValueRanges(lower_bound, bounds[symbol])
        saved.append((env.var_to_range, expr, before))
        if expr in program.range_constraints:
            saved.append((program._range_constraints, expr, program.range_constraints[expr]))
            program._range_constraints[expr] = ValueRanges(lower_bound, bounds[symbol])
    try:
        yield
    finally:
        for table, expr, before in reversed(saved):
            if before is None:
                table.pop(expr, None)
            else:
                table[expr] = before


def _symbols(program: Any) -> dict[str, tuple[Any, Any]]:
    """Input dimension symbol name (as declared, from the Dim) -> (shape env, sympy symbol)."""
    import torch

    found: dict[str, tuple[Any, Any]] = {}
    for node in program.graph.nodes:
        if node.op != "placeholder" or not isinstance(node.meta.get("val"), torch.Tensor):
            continue
        for size in node.meta["val"].shape:
            if isinstance(size, torch.SymInt) and size.node.expr.is_Symbol:
                found[str(size.node.expr)] = (size.node.shape_env, size.node.expr)
    return found


def symbol_bounds(program: Any, declared: dict[tuple[int, int], tuple[str, int]]) -> dict[str, int]:
    """The sympy symbol names of the program's dynamic input dimensions -> upper bound, from
    `declared[(input index, axis)] = (symbol, bound)`."""
    import torch

    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    bounds: dict[str, int] = {}
    for index, name in enumerate(program.graph_signature.user_inputs):
        value = placeholders[name].meta.get("val") if name in placeholders else None
        if not isinstance(value, torch.Tensor):
            continue
        for axis, size in enumerate(value.shape):
            if (index, axis) in declared and isinstance(size, torch.SymInt) and size.node.expr.is_Symbol:
                bounds[str(size.node.expr)] = declared[(index, axis)][1]
    return bounds


@contextlib.contextmanager
def stable_coreml_payload() -> Iterator[None]:
    """The Core ML delegate names each embedded model `executorch_<uuid4>` (the runtime's cache key on the
    phone) and saves it as an .mlpackage with random item ids and today's date: derive the identifier from
    the model's content (spec and weights) and stabilize the package before it is flattened into the .pte."""
    try:
        from executorch.backends.apple.coreml.compiler import coreml_preprocess as cp
    except ImportError:
        yield
        return
    from ..coreml.reproducible import stabilize_mlpackage

    original_preprocess = cp.CoreMLBackend.__dict__["preprocess_model"]
    native = cp.executorchcoreml
    original_uuid = cp.uuid

    def preprocess_model(mlmodel: Any, model_type: Any) -> Any:
        digest = hashlib.sha256(mlmodel.get_spec().SerializeToString(deterministic=True))
        weights = getattr(mlmodel, "weights_dir", None)
        if weights:
            for file in sorted(p for p in Path(weights).rglob("*") if p.is_file()):
                digest.update(file.read_bytes())
        identifier = uuid.uuid5(_COREML_NAMESPACE, digest.hexdigest())
        cp.uuid = types.SimpleNamespace(uuid4=lambda: identifier)
        try:
            return original_preprocess.__func__(mlmodel, model_type)
        finally:
            cp.uuid = original_uuid

    def flatten(path: str) -> Any:
        for package in sorted(Path(path).glob("*.mlpackage")):
            stabilize_mlpackage(package)
        return native.flatten_directory_contents(path)

    cp.CoreMLBackend.preprocess_model = staticmethod(preprocess_model)
    cp.executorchcoreml = types.SimpleNamespace(
        flatten_directory_contents=flatten, unflatten_directory_contents=native.unflatten_directory_contents
    )
    try:
        yield
    finally:
        cp.CoreMLBackend.preprocess_model = original_preprocess
        cp.executorchcoreml = native
