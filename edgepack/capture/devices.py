"""Device-agnostic captures: undo the device pinning that tracing records.

`torch.jit.trace` writes every `device=` argument (and the default device) into the graph as a
`Device` literal, and bakes `torch.tensor(...)` results and plain tensor attributes in as tensor
constants that `module.to()` never moves. A model traced on a workstation's `cuda:0` then fails,
or silently copies across devices, on a phone or a CPU-only box; PyTorch gives no warning.

This module:

* `make_device_agnostic` rewrites the TorchScript graphs so every placement follows the device of
  a graph input (policy "agnostic") or the phone's CPU (policy "target"), and reports each change;
* `pinned_devices` is the proof check: it reads the *saved code* of a module or archive and lists
  the device literals left in it;
* `runs_on_meta` runs a module with its inputs on the `meta` device: anything still pinned to a
  real device collides with them;
* `eager_prepass` turns plain (non-boolean) tensor attributes into buffers before capture;
* `fx_device_kwargs` does the same job for FX / torch.export graphs.

Rules (see `make_device_agnostic` for the full list):

* A `Device` literal is rewritten only where it *places* a tensor: as an argument of an `aten::`
  op that returns a tensor (factories, `to`, `_to_copy`, ...) or of a method/function call.
  Literals compared with `==`, stored in lists or returned are program logic and are left alone.
* Each graph takes its device from its own first tensor input (`prim::device(input)`), never from
  a parameter: `torch.jit.freeze` folds `prim::device(parameter)` back into a CPU literal.
* A deliberate `.cpu()` is kept (kind "kept_cpu"): a scripted `aten::cpu`, or a "cpu" literal in a
  move (`aten::to` / `aten::_to_copy`) that was written in TorchScript source, or that appears in
  a trace whose home device (the device the rest of the trace ran on) is not the CPU. In a trace
  recorded on the CPU, `.cpu()`, `.to("cpu")` and `.to(x.device)` record the same literal, so there
  it is rewritten to follow the input: on a CPU-only device that is the same thing.
"""

from __future__ import annotations

import inspect
import io
import os
import pickle
import re
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..noise import filter_known_warnings

POLICIES = ("agnostic", "target")
TARGET_DEVICE = "cpu"  # the phone's device under policy "target"

# Ops that move an existing tensor; a "cpu" literal here may be a deliberate `.cpu()`.
_MOVE_OPS = frozenset({"aten::to", "aten::_to_copy"})
_INDEX_OPS = frozenset({"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"})
_CALL_OPS = frozenset({"prim::CallMethod", "prim::CallFunction"})
# Value-preserving hops between a constant and its use (trace writes torch.tensor as const -> to -> detach).
_PASS_THROUGH = frozenset({"aten::to", "aten::detach", "aten::clone", "aten::contiguous"})
# c10::ScalarType codes, the integer form TorchScript graphs use for dtypes.
_SCALAR_TYPE = {
    torch.uint8: 0,
    torch.int8: 1,
    torch.int16: 2,
    torch.int32: 3,
    torch.int64: 4,
    torch.float16: 5,
    torch.float32: 6,
    torch.float64: 7,
    torch.complex32: 8,
    torch.complex64: 9,
    torch.complex128: 10,
    torch.bool: 11,
    torch.bfloat16: 15,
}
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_MODULE_INTERNALS = frozenset(vars(nn.Module()))  # _parameters, _buffers, _modules, hooks, training
_TRACE_FRAME = re.compile(r"^(?P<file>.+?)\((?P<line>\d+)\): \S+$")
_SCRIPT_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')
# Storage locations in a TorchScript archive's pickles that are not the CPU.
_DEVICE_LOCATION = re.compile(r"^(cuda|mps|xpu|hip|hpu|xla|mtia|meta|lazy|vulkan|ipu|privateuseone)(:\d+)?$")
_CODE_DEVICE = re.compile(r'torch\.device\("(?P<device>[^"]*)"\)|device="(?P<kw>[^"]*)"')
_CODE_CUDA_CALL = re.compile(r"torch\.cuda\(|ops\.aten\.cuda\(")
_CODE_CPU_CALL = re.compile(r"torch\.cpu\(|ops\.aten\.cpu\(")
_CODE_COMPARISON = re.compile(r"torch\.(eq|ne)\(|==|!=")
# The words runs_on_meta's reason starts with when a placement is still pinned to a real device.
DEVICE_MISMATCH = "device mismatch"
# How runs_on_meta tells a device collision from a missing meta kernel.
_DEVICE_ERROR = re.compile(
    r"not on the expected device|Expected all tensors to be on the same device|not compiled with CUDA"
    r"|from the '(CUDA|MPS|XPU|HIP)' backend|No CUDA GPUs|NVIDIA driver|found at least two devices"
    r"|Expected .{0,80} on device|to be on the same device|Cannot copy out of meta tensor",
    re.IGNORECASE,
)
_META_ERROR = re.compile(
    r"'Meta' backend|meta tensor|register_meta|Meta kernel|data-dependent|fake impl", re.IGNORECASE
)


@dataclass
class Rewrite:
    """One change (or deliberate non-change) the pass made.

    kind: "device_constant" (a Device literal now follows the graph's input), "target_device" (a
    literal now says "cpu", policy "target"), "kept_cpu" (a CPU placement kept on purpose),
    "param_device" (`prim::device(parameter)` now follows the input), "tensor_constant" (a tensor
    constant is stored on the CPU and/or moved to the input's device at run time), "mask_to_index"
    (a constant boolean mask in indexing became integer indices), "cuda_call" (`.cuda()` now
    follows the input), "inlined_call" (a caller graph was inlined to reach its callees' code),
    "unresolved" (left pinned: the pass found no device to use), "attribute_to_buffer" /
    "mask_attribute" / "tensor_container" (eager_prepass), "fx_device" / "fx_device_found" (FX).
    op: the consuming op; source: the user's "file:line" when known; device: the literal involved.
    """

    kind: str
    op: str
    source: str = ""
    detail: str = ""
    device: str = ""


@dataclass
class DeviceFindings:
    """Device literals found in saved TorchScript code: `pinned` ones fail the check, `kept` ones are
    allowed (the policy's target device, a deliberate `.cpu()`, a device comparison)."""

    pinned: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.pinned


@dataclass
class _Pass:
    policy: str
    home: str  # the device the capture was recorded on, as far as the graphs tell
    rewrites: list[Rewrite] = field(default_factory=list)
    done: set[tuple[str, str]] = field(default_factory=set)

    def note(self, kind: str, node: torch.Node | None, detail: str, device: str = "", op: str = "") -> None:
        self.rewrites.append(
            Rewrite(kind, op or (node.kind() if node is not None else ""), _source_near(node), detail, device)
        )


# ----------------------------------------------------------------------------------------------
# The graph pass
# ----------------------------------------------------------------------------------------------


def make_device_agnostic(
    module: torch.jit.ScriptModule, policy: str = "agnostic"
) -> tuple[torch.jit.ScriptModule, list[Rewrite]]:
    """Return a copy of `module` whose graphs place nothing on a literal device, and what changed.

    Every graph that runs is visited: `forward`, the methods it calls on submodules (each uses its
    own first tensor input), and the If/Loop blocks inside them. Under policy "agnostic":

    * Device literals that place tensors (factories, `to`, `_to_copy`, call arguments) become
      `prim::device(<first tensor input>)`; `prim::device(parameter or buffer)` does too.
    * Non-scalar tensor constants are stored on the CPU and followed by
      `aten::to(const, device, dtype)`; 0-dim constants are stored on the CPU and left alone
      (CPU scalars mix with any device).
    * Constant boolean masks in indexing become constant integer indices (`mask.nonzero()`): the
      same result, a static shape, no NonZero op for converters, and checkable on `meta`.
    * A deliberate `.cpu()` is kept and reported as "kept_cpu" (rule in the module docstring).

    Under policy "target" every placing literal says "cpu" (kept ones are reported as "kept_cpu")
    and tensor constants are stored on the CPU. The input module is not modified; the result has
    been saved and reloaded, so it carries no stale execution plan and works with torch.jit.freeze.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
    state = _Pass(policy, _home_device(module))
    map_location = TARGET_DEVICE if policy == "target" else None
    # Edit a fresh copy: the caller's module stays intact, and the copy has never run (a module
    # that has run keeps a cached plan that does not see later graph edits).
    work = _reload(module, map_location)
    _rewrite_reachable(work, state)
    result = _reload(work, map_location)
    state.rewrites += _leftovers(result, state)
    return result, state.rewrites


def kept_devices(rewrites: Iterable[Rewrite]) -> set[str]:
    """The devices the pass kept on purpose: pass them to `pinned_devices(..., keep=...)`."""
    return {r.device for r in rewrites if r.kind == "kept_cpu" and r.device}


def _reload(module: torch.jit.ScriptModule, map_location: str | None = None) -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        filter_known_warnings()  # TorchScript's deprecation notices say nothing about the model
        torch.jit.save(module, buffer)
        buffer.seek(0)
        return torch.jit.load(buffer, map_location=map_location)


def _rewrite_reachable(root: torch.jit.ScriptModule, state: _Pass) -> None:
    """Rewrite forward, then every method it reaches through prim::CallMethod (breadth first)."""
    queue: list[tuple[torch.jit.ScriptModule, str]] = [(root, "forward")]
    while queue:
        owner, name = queue.pop(0)
        key = (owner._c._type().qualified_name(), name)
        if key in state.done:  # type-shared scripted submodules share one graph
            continue
        state.done.add(key)
        graph = owner._c._get_method(name).graph
        blocking_call = _call_needing_inlining(graph, owner)
        if blocking_call is not None:  # note first: inlining destroys the call node
            state.note(
                "inlined_call",
                blocking_call,
                f"{key[0]}.{name}: calls a script function or a method "
                "without tensor inputs; inlined its calls so their device literals follow this method's input",
            )
            torch._C._jit_pass_inline(graph)
        # Only forward can lack a tensor input here (callees without one were inlined above); its
        # literals are then reported one by one as "unresolved".
        _rewrite_graph(graph, _first_tensor_input(graph), state)
        queue += _callees(graph, owner)


def _rewrite_graph(graph: torch.Graph, source: torch.Value | None, state: _Pass) -> None:
    device = _device_value(graph, source, state.policy)
    _masks_to_indices(graph, state)
    for node in list(_walk(graph)):
        _rewrite_node(graph, node, device, state)
    _place_tensor_constants(graph, device, state)
    torch._C._jit_pass_dce(graph)
    graph.lint()


def _device_value(graph: torch.Graph, source: torch.Value | None, policy: str) -> torch.Value | None:
    """The value every placement in this graph should use, inserted before the first node so it
    dominates every block. prim::device of an input survives freeze (an input is not a constant)."""
    first = next(iter(graph.nodes()), None)
    if first is None:
        return None
    with graph.insert_point_guard(first):
        if policy == "target":
            return graph.insertConstant(torch.device(TARGET_DEVICE))
        if source is None:
            return None
        return graph.insert("prim::device", [source])


def _rewrite_node(graph: torch.Graph, node: torch.Node, device: torch.Value | None, state: _Pass) -> None:
    kind = node.kind()
    if kind == "aten::cpu":
        state.note("kept_cpu", node, "explicit .cpu() in TorchScript code: kept", TARGET_DEVICE)
    elif kind == "aten::cuda":
        _replace_cuda_call(graph, node, device, state)
    elif (
        kind == "prim::device"
        and state.policy == "agnostic"
        and device is not None
        and node.input().node().kind() == "prim::GetAttr"
    ):
        state.note(
            "param_device",
            node,
            "device of a parameter/buffer -> device of the input (torch.jit.freeze would fold it into a CPU literal)",
        )  # noted first: its users give the source
        node.output().replaceAllUsesWith(device)
    _rewrite_device_literals(node, device, state)


def _rewrite_device_literals(node: torch.Node, device: torch.Value | None, state: _Pass) -> None:
    if not _places_tensors(node):
        return  # comparisons, lists, returns: program logic, not placement
    for index, value in enumerate(list(node.inputs())):
        literal = _device_literal(value)
        if literal is None or (device is not None and value.unique() == device.unique()):
            continue
        if _is_kept(node, literal, state):
            why = "target policy" if state.policy == "target" else "deliberate move to the CPU"
            state.note("kept_cpu", node, f'device "{literal}" kept ({why})', literal)
        elif device is None:
            state.note("unresolved", node, f'device "{literal}" left pinned: no tensor input', literal)
        else:
            node.replaceInput(index, device)
            if state.policy == "target":
                state.note("target_device", node, f'device "{literal}" -> "{TARGET_DEVICE}"', literal)
            else:
                state.note("device_constant", node, f'device "{literal}" -> device of the input', literal)


def _is_kept(node: torch.Node, literal: str, state: _Pass) -> bool:
    if torch.device(literal).type != "cpu":
        return False
    if state.policy == "target":
        return True
    # A "cpu" move is deliberate when the user wrote it in TorchScript, or when the rest of the
    # trace ran elsewhere (a cuda trace records "cpu" only where the user asked for the CPU).
    return node.kind() in _MOVE_OPS and (state.home != "cpu" or _written_in_torchscript(node))


def _replace_cuda_call(graph: torch.Graph, node: torch.Node, device: torch.Value | None, state: _Pass) -> None:
    if device is None:
        state.note("unresolved", node, ".cuda() left in place: no tensor input", "cuda")
        return
    with graph.insert_point_guard(node):
        # aten::to(Tensor, Device?, int?, bool, bool): the ONNX exporter treats it as a device-only move.
        moved = graph.insert(
            "aten::to",
            [
                node.input(),
                device,
                graph.insertConstant(None),
                graph.insertConstant(False),
                graph.insertConstant(False),
            ],
        )
    node.output().replaceAllUsesWith(moved)
    state.note("cuda_call", node, ".cuda() -> move to the input's device", "cuda")


def _place_tensor_constants(graph: torch.Graph, device: torch.Value | None, state: _Pass) -> None:
    """Store tensor constants on the CPU; make non-scalar ones follow the graph's device at run time."""
    for node in list(_walk(graph)):
        if node.kind() != "prim::Constant" or node.output().type().kind() != "TensorType":
            continue
        tensor = node.output().toIValue()
        if not isinstance(tensor, torch.Tensor) or tensor.is_quantized or tensor.layout != torch.strided:
            continue  # quantized kernels are CPU-only anyway; sparse/mkldnn constants are left as they are
        where = str(tensor.device)
        if tensor.device.type != "cpu" and not _store_on_cpu(node, tensor, state):
            continue
        if tensor.dim() == 0 or state.policy == "target" or device is None:
            if where != "cpu":
                state.note("tensor_constant", node, f"{_describe(tensor)} stored on cpu (was {where})", where)
            continue
        if _already_moved(node.output(), device):
            continue
        _insert_move(graph, node, device, tensor.dtype, state)
        state.note("tensor_constant", node, f"{_describe(tensor)} moved to the input's device at run time", where)


def _store_on_cpu(node: torch.Node, tensor: torch.Tensor, state: _Pass) -> bool:
    try:
        cpu = tensor.cpu()
    except (NotImplementedError, RuntimeError):  # e.g. a meta tensor has no data to copy
        state.note(
            "unresolved",
            node,
            f"{_describe(tensor)} on {tensor.device} cannot be copied to the CPU",
            str(tensor.device),
        )
        return False
    node.t_("value", cpu)
    node.output().inferTypeFrom(cpu)
    return True


def _already_moved(value: torch.Value, device: torch.Value) -> bool:
    """True when every use already moves the constant to `device` (torch.tensor(..., device=x.device))."""
    uses = value.uses()
    return bool(uses) and all(
        use.user.kind() in _MOVE_OPS
        and use.offset == 0
        and any(arg.unique() == device.unique() for arg in use.user.inputs())
        for use in uses
    )


def _insert_move(graph: torch.Graph, node: torch.Node, device: torch.Value, dtype: torch.dtype, state: _Pass) -> None:
    if dtype not in _SCALAR_TYPE:
        state.note("unresolved", node, f"tensor constant of dtype {dtype} not moved")
        return
    constant = node.output()
    with graph.insert_point_guard(node):
        # aten::to(Tensor, Device, ScalarType, bool, bool, MemoryFormat?): the 6-input form that both
        # the ONNX exporter (a Cast of a constant, folded) and coremltools (dtype = input 2) read.
        args = [constant, device] + [graph.insertConstant(v) for v in (_SCALAR_TYPE[dtype], False, False, None)]
        moved = graph.insert("aten::to", args)
    moved.node().moveAfter(node)
    constant.replaceAllUsesWith(moved)
    moved.node().replaceInput(0, constant)


def _masks_to_indices(graph: torch.Graph, state: _Pass) -> None:
    """x[..., mask] with a constant boolean mask -> x[..., idx_0, ..., idx_k-1] with idx = mask.nonzero().

    PyTorch itself expands a boolean index into these integer indices, so the result is identical;
    the integer form has a static shape, needs no NonZero in ONNX / Core ML and runs on `meta`."""
    for node in list(_walk(graph)):
        if node.kind() not in _INDEX_OPS or node.inputsAt(1).node().kind() != "prim::ListConstruct":
            continue
        old_list = node.inputsAt(1).node()
        entries, changed = [], False
        for value in old_list.inputs():
            mask = _constant_mask(value)
            if mask is None:
                entries.append(value)
                continue
            with graph.insert_point_guard(old_list):
                entries += [graph.insertConstant(idx.contiguous()) for idx in mask.nonzero().unbind(1)]
            changed = True
            state.note(
                "mask_to_index",
                node,
                f"constant bool mask {tuple(mask.shape)} -> "
                f"{mask.dim()} integer index tensor(s) of {int(mask.sum())} entries",
            )
        if changed:
            new_list = graph.create("prim::ListConstruct", entries)
            new_list.output().setType(old_list.output().type())
            new_list.insertBefore(node)
            node.replaceInput(1, new_list.output())


def _constant_mask(value: torch.Value) -> torch.Tensor | None:
    """The boolean tensor constant behind `value`, seen through to/detach/clone hops, if any."""
    node = value.node()
    while node.kind() in _PASS_THROUGH:
        node = node.inputsAt(0).node()
    if node.kind() != "prim::Constant" or node.output().type().kind() != "TensorType":
        return None
    tensor = node.output().toIValue()
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.bool or tensor.dim() == 0:
        return None
    try:
        return tensor.cpu()
    except (NotImplementedError, RuntimeError):
        return None


# ----------------------------------------------------------------------------------------------
# Graph helpers
# ----------------------------------------------------------------------------------------------


def _walk(block: torch.Graph | torch.Block) -> Iterator[torch.Node]:
    """Every node, including those inside If/Loop blocks."""
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from _walk(inner)


def _first_tensor_input(graph: torch.Graph) -> torch.Value | None:
    return next((v for v in list(graph.inputs())[1:] if v.type().kind() == "TensorType"), None)


def _device_literal(value: torch.Value) -> str | None:
    if value.type().kind() != "DeviceObjType" or value.node().kind() != "prim::Constant":
        return None
    device = value.toIValue()
    return str(device) if device is not None else None


def _places_tensors(node: torch.Node) -> bool:
    kind = node.kind()
    if kind in _CALL_OPS:  # a device handed to a callee is almost always used to place tensors
        return True
    return kind.startswith("aten::") and any(o.type().kind() == "TensorType" for o in node.outputs())


def _module_values(graph: torch.Graph, owner: torch.jit.ScriptModule) -> dict[int, Any]:
    """Map graph values that hold submodules (self, self.a, self.a.b, ...) to the module objects."""
    values: dict[int, Any] = {list(graph.inputs())[0].unique(): owner}
    for node in _walk(graph):
        if node.kind() == "prim::GetAttr" and node.input().unique() in values:
            attribute = getattr(values[node.input().unique()], node.s("name"), None)
            if isinstance(attribute, torch.jit.ScriptModule):
                values[node.output().unique()] = attribute
    return values


def _callees(graph: torch.Graph, owner: torch.jit.ScriptModule) -> list[tuple[torch.jit.ScriptModule, str]]:
    values = _module_values(graph, owner)
    found = []
    for node in _walk(graph):
        if node.kind() == "prim::CallMethod" and node.inputsAt(0).unique() in values:
            found.append((values[node.inputsAt(0).unique()], node.s("name")))
    return found


def _call_needing_inlining(graph: torch.Graph, owner: torch.jit.ScriptModule) -> torch.Node | None:
    """A call whose callee cannot take its device from its own input: a script function (its graph is
    not reachable from here), a method without tensor inputs, or a call on an unresolved module value."""
    values = _module_values(graph, owner)
    for node in _walk(graph):
        if node.kind() == "prim::CallFunction":
            return node
        if node.kind() != "prim::CallMethod":
            continue
        callee = values.get(node.inputsAt(0).unique())
        if callee is None or _first_tensor_input(callee._c._get_method(node.s("name")).graph) is None:
            return node
    return None


def _home_device(module: torch.jit.ScriptModule) -> str:
    """The device the capture was recorded on: a non-CPU device in forward's input types, else the
    most common non-CPU device literal in any method, else "cpu"."""
    for value in list(module.graph.inputs())[1:]:
        if value.type().kind() == "TensorType" and value.type().device() is not None:
            if value.type().device().type != "cpu":
                return str(value.type().device())
    literals: Counter = Counter()
    for _, sub in module.named_modules():
        for name in sub._c._method_names():
            for node in _walk(sub._c._get_method(name).graph):
                literals.update(d for d in map(_device_literal, node.outputs()) if d and d != "cpu")
    return literals.most_common(1)[0][0] if literals else "cpu"


def _source(node: torch.Node | None) -> str:
    """The user's "file:line" for a node: the innermost non-torch frame of a traced node's stack, or
    the file and line of TorchScript source."""
    if node is None:
        return ""
    text = node.sourceRange()
    for line in text.splitlines():
        frame = _TRACE_FRAME.match(line.strip())
        if frame and not os.path.abspath(frame["file"]).startswith(_TORCH_DIR):
            return f"{frame['file']}:{frame['line']}"
    frame = _SCRIPT_FRAME.search(text)
    if frame and not frame["file"].startswith("code/"):
        return f"{frame['file']}:{frame['line']}"
    return ""


def _source_near(node: torch.Node | None) -> str:
    """A node's source, else that of its first user (constants and prim::device often have none)."""
    if node is None:
        return ""
    users = [use.user for output in node.outputs() for use in output.uses()]
    return next((s for s in map(_source, [node, *users]) if s), "")


def _written_in_torchscript(node: torch.Node) -> bool:
    """Scripted nodes carry `File "x.py", line N` source ranges; traced ones carry a Python stack."""
    text = node.sourceRange()
    frame = _SCRIPT_FRAME.search(text)
    return bool(frame) and not text.lstrip().startswith("Serialized") and not frame["file"].startswith("code/")


def _describe(tensor: torch.Tensor) -> str:
    return f"tensor {tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"


def _leftovers(result: torch.jit.ScriptModule, state: _Pass) -> list[Rewrite]:
    """Check again on the saved code of the result; report anything still pinned."""
    keep = kept_devices(state.rewrites) | ({TARGET_DEVICE} if state.policy == "target" else set())
    findings = pinned_devices(result, keep=keep)
    return [Rewrite("unresolved", "", "", f"left in saved code: {finding}") for finding in findings.pinned]


# ----------------------------------------------------------------------------------------------
# The proof check: device literals in saved code
# ----------------------------------------------------------------------------------------------


def pinned_devices(module_or_archive: torch.jit.ScriptModule | Path, keep: Iterable[str] = ()) -> DeviceFindings:
    """Device literals left in the saved code of a module, or of a `.pt` / `.ptl` TorchScript file.

    Reads the archive's `code/**.py` entries (what the runtime executes) and its `constants.pkl` /
    `data.pkl` storage locations. Each finding reads `code/__torch__.py:12: torch.device("cuda:0")`.
    A literal is *kept* rather than pinned when its device is in `keep` (the policy's target, or
    `kept_devices(rewrites)`), when it is an explicit `.cpu()`, or when it is only compared against.
    """
    allowed = {str(torch.device(d)) for d in keep}
    findings = DeviceFindings()
    code_files = 0
    with zipfile.ZipFile(io.BytesIO(_archive_bytes(module_or_archive))) as archive:
        for name in sorted(archive.namelist()):
            short = name.split("/", 1)[1] if "/" in name else name
            if short.startswith("code/") and short.endswith(".py"):
                code_files += 1
                _scan_code(short, archive.read(name).decode("utf-8", "replace"), allowed, findings)
            elif short in ("constants.pkl", "data.pkl"):
                _scan_storages(short, archive.read(name), allowed, findings)
    if not code_files:  # nothing read is not the same as nothing pinned
        raise ValueError(f"{module_or_archive} holds no TorchScript code (code/*.py): cannot check it")
    return findings


def _archive_bytes(module_or_archive: torch.jit.ScriptModule | Path | str) -> bytes:
    if isinstance(module_or_archive, (str, Path)):
        data = Path(module_or_archive).read_bytes()
        if not zipfile.is_zipfile(io.BytesIO(data)):
            raise ValueError(f"{module_or_archive} is not a TorchScript archive (.pt/.ptl zip file)")
        return data
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        filter_known_warnings()
        torch.jit.save(module_or_archive, buffer)
    return buffer.getvalue()


def _scan_code(name: str, text: str, allowed: set[str], findings: DeviceFindings) -> None:
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{name}:{number}"
        for match in _CODE_DEVICE.finditer(line):
            device = match["device"] if match["device"] is not None else match["kw"]
            label = f'{where}: torch.device("{device}")'
            if _canonical(device) in allowed:
                findings.kept.append(f"{label} (allowed device)")
            elif _CODE_COMPARISON.search(line):
                findings.kept.append(f"{label} (comparison, not a placement)")
            else:
                findings.pinned.append(label)
        if _CODE_CUDA_CALL.search(line):
            findings.pinned.append(f"{where}: .cuda()")
        if _CODE_CPU_CALL.search(line):
            findings.kept.append(f"{where}: .cpu() (explicit move to the CPU)")


def _scan_storages(name: str, data: bytes, allowed: set[str], findings: DeviceFindings) -> None:
    """Tensors pickled with a non-CPU storage location (persistent id ('storage', type, key, location, n))."""
    reader = _StorageLocations(data)
    try:
        reader.load()
    except Exception:  # an unreadable pickle is not evidence either way
        return
    for location in sorted(set(reader.locations)):
        if _DEVICE_LOCATION.match(location):
            label = f"{name}: tensors stored on {location}"
            (findings.kept if location in allowed else findings.pinned).append(label)


class _Inert:
    """Stands in for every class a TorchScript pickle names: nothing of the archive gets executed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


class _StorageLocations(pickle.Unpickler):
    """Reads only the storage locations out of a data.pkl / constants.pkl."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.locations: list[str] = []

    def find_class(self, module: str, name: str) -> type:
        return _Inert

    def persistent_load(self, pid: Any) -> None:
        if isinstance(pid, tuple) and len(pid) >= 4 and pid[0] == "storage":
            self.locations.append(str(pid[3]))


def _canonical(device: str) -> str:
    try:
        return str(torch.device(device))
    except RuntimeError:
        return device


# ----------------------------------------------------------------------------------------------
# Meta-device check
# ----------------------------------------------------------------------------------------------


def runs_on_meta(module: torch.jit.ScriptModule, example: tuple[torch.Tensor, ...]) -> tuple[bool, str]:
    """Run a copy of `module` with its parameters, buffers and inputs on `meta`; compare output shapes
    with a CPU run. Anything still pinned to a real device collides with the meta tensors.

    Returns (True, "ok: ...") or (False, reason) where reason starts with "device mismatch:" (pinned),
    "could not check:" (an op without a meta kernel or with a data-dependent shape, or a module that
    fails on the CPU too), "shape mismatch:" or "failed on meta:". A frozen module has its weights as
    tensor constants: those not already moved at run time are put on meta as well, so for a frozen
    module the check covers device literals, not tensor constants (check those before freezing).
    """
    try:
        with torch.no_grad():
            expected = _shapes(module(*example))
    except Exception as exc:  # no CPU reference: pinned to another device, or broken on the CPU
        reason = _classify(exc)
        if reason.startswith(DEVICE_MISMATCH):
            return False, f"{DEVICE_MISMATCH}: fails on the CPU already: {reason.split(': ', 1)[1]}"
        return False, f"could not check: the module fails on the CPU too ({_reason_line(exc, None)})"
    copy = _reload(module, "cpu")
    _parameters_to_meta(copy)
    note = _rehome_frozen_weights(copy)
    try:
        # No graph optimisation on this run: its passes compare tensor constants by value, which
        # meta tensors cannot do.
        with torch.no_grad(), torch.jit.optimized_execution(False):
            got = _shapes(copy(*(t.to("meta") for t in example)))
    except Exception as exc:  # TorchScript wraps op errors; the message tells which kind it is
        return False, _classify(exc)
    if got != expected:
        return False, f"shape mismatch: meta gave {got}, cpu gave {expected}"
    return True, f"ok: ran on meta, {len(got)} output shape(s) match the CPU run{note}"


def _parameters_to_meta(copy: torch.jit.ScriptModule) -> None:
    """Move parameters and buffers, not tensor constants: constants are what the check is about.
    (ScriptModule.to() rejects the tensors a loaded module holds as parameters, so set them one by one.)"""
    for _, sub in copy.named_modules():
        for name, tensor in [*sub.named_parameters(recurse=False), *sub.named_buffers(recurse=False)]:
            sub._c.setattr(name, tensor.detach().to("meta"))


def _rehome_frozen_weights(copy: torch.jit.ScriptModule) -> str:
    if any(True for _ in copy.parameters()) or any(True for _ in copy.buffers()):
        return ""
    moved = 0
    for node in _walk(copy.graph):
        if node.kind() == "prim::Constant" and node.output().type().kind() == "TensorType":
            tensor = node.output().toIValue()
            if isinstance(tensor, torch.Tensor) and tensor.dim() > 0 and not _feeds_move(node.output()):
                node.t_("value", tensor.to("meta"))
                moved += 1
    return f" ({moved} frozen weight constant(s) placed on meta)" if moved else ""


def _feeds_move(value: torch.Value) -> bool:
    return any(use.user.kind() in _MOVE_OPS and use.offset == 0 for use in value.uses())


def _shapes(result: Any) -> list[tuple[int, ...]]:
    if isinstance(result, torch.Tensor):
        return [tuple(result.shape)]
    if isinstance(result, (tuple, list)):
        return [shape for item in result for shape in _shapes(item)]
    if isinstance(result, dict):
        return [shape for item in result.values() for shape in _shapes(item)]
    return []


def _classify(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if _DEVICE_ERROR.search(text):
        return f"{DEVICE_MISMATCH}: {_reason_line(exc, _DEVICE_ERROR)}"
    if _META_ERROR.search(text) or isinstance(exc, NotImplementedError):
        return f"could not check: {_reason_line(exc, _META_ERROR)}"
    return f"failed on meta: {_reason_line(exc, None)}"


def _reason_line(exc: Exception, pattern: re.Pattern | None) -> str:
    """The line of a (TorchScript-wrapped, multi-line) error message that says what went wrong."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    matching = [line for line in lines if pattern is not None and pattern.search(line)]
    errors = [line for line in lines if re.match(r"^\w+(Error|Exception):", line)]
    chosen = (matching or errors or lines or [type(exc).__name__])[0]
    return chosen[:300]


# ----------------------------------------------------------------------------------------------
# Before capture
# ----------------------------------------------------------------------------------------------


def eager_prepass(model: nn.Module) -> list[Rewrite]:
    """In place: plain tensor attributes of every submodule become non-persistent buffers.

    A tensor kept as `self.x = torch.tensor(...)` is neither a parameter nor a buffer: `model.to()`
    does not move it and the trace bakes it in as a constant. As a buffer it moves with the model,
    the trace reads it with GetAttr, and the state_dict is unchanged (non-persistent).

    Boolean attributes (masks) are left as they are and reported ("mask_attribute"): traced as
    constants, they reach the graph pass, which turns their indexing uses into constant integer
    indices (kind "mask_to_index": static shape, no NonZero for ONNX / Core ML) and moves their
    other uses (masked_fill, where) to the input's device at run time. As buffers they would be
    device-safe too, but would stay data-dependent boolean indexing in every format. The rewrite
    is done on the graph rather than here because only there is it certain the tensor is used as
    an index, and there it also covers masks made with `torch.tensor(...)` inside forward.
    Tensors inside lists, tuples or dicts are reported ("tensor_container"), not changed: the code
    indexes the container, which a buffer cannot replace (the graph pass moves them at run time).
    """
    rewrites: list[Rewrite] = []
    for path, module in model.named_modules():
        if isinstance(module, torch.jit.ScriptModule):
            continue  # scripted submodules keep their own attributes in C++
        for name, value in list(vars(module).items()):
            where = f"{path + '.' if path else ''}{name}"
            if name in _MODULE_INTERNALS:
                continue
            if isinstance(value, torch.Tensor) and value.dtype == torch.bool:
                detail = f"{where}: {_describe(value)} left for the graph pass (mask_to_index)"
                rewrites.append(Rewrite("mask_attribute", "", _class_source(module), detail, str(value.device)))
            elif isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
                rewrites.append(_attribute_to_buffer(module, name, value, where))
            elif _holds_tensors(value):
                rewrites.append(
                    Rewrite(
                        "tensor_container",
                        "",
                        _class_source(module),
                        f"{where}: tensors inside a {type(value).__name__} are not moved by "
                        "module.to() and are traced as constants",
                        "",
                    )
                )
    return rewrites


def _attribute_to_buffer(module: nn.Module, name: str, value: torch.Tensor, where: str) -> Rewrite:
    del module.__dict__[name]
    try:
        module.register_buffer(name, value, persistent=False)
    except (KeyError, TypeError) as exc:  # e.g. a class attribute of the same name
        module.__dict__[name] = value
        return Rewrite(
            "unresolved", "", _class_source(module), f"{where}: not made a buffer ({exc})", str(value.device)
        )
    return Rewrite(
        "attribute_to_buffer",
        "",
        _class_source(module),
        f"{where}: {_describe(value)} -> non-persistent buffer",
        str(value.device),
    )


def _holds_tensors(value: Any) -> bool:
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return any(isinstance(item, torch.Tensor) and not isinstance(item, nn.Parameter) for item in items)


def _class_source(module: nn.Module) -> str:
    try:
        return f"{inspect.getsourcefile(type(module))}:{inspect.getsourcelines(type(module))[1]}"
    except (OSError, TypeError):
        return ""


# ----------------------------------------------------------------------------------------------
# FX / torch.export
# ----------------------------------------------------------------------------------------------


def fx_device_kwargs(graph_module: torch.fx.GraphModule) -> list[Rewrite]:
    """The same guarantee for an FX graph, in place.

    In a symbolically traced GraphModule, `device=` literals (and literal devices given to `.to()`)
    are replaced by `getattr(<first input>, "device")`. (Tensors that FX evaluated while tracing,
    `_tensor_constant*`, are already registered as buffers by GraphModule: they move with
    `.to()`.) In an aten-level
    graph from torch.export the literals are only reported ("fx_device_found"): the export IR
    verifier allows no `getattr` nodes, so re-export after fixing the model instead.
    """
    graph = graph_module.graph
    exported = any("val" in node.meta for node in graph.nodes)
    rewrites: list[Rewrite] = []
    source = next((n for n in graph.nodes if n.op == "placeholder"), None)
    device_node = None
    for node in list(graph.nodes):
        for key, literal in _fx_device_args(node):
            detail = f"{node.format_node()}"
            if exported or source is None:
                rewrites.append(Rewrite("fx_device_found", _fx_op(node), _fx_source(node), detail, literal))
                continue
            if device_node is None:
                with graph.inserting_after(source):
                    device_node = graph.call_function(getattr, (source, "device"))
            _fx_replace(node, key, device_node)
            rewrites.append(
                Rewrite(
                    "fx_device", _fx_op(node), _fx_source(node), f'device "{literal}" -> {source.name}.device', literal
                )
            )
    if device_node is not None:
        graph.lint()
        graph_module.recompile()
    return rewrites


def _fx_device_args(node: torch.fx.Node) -> list[tuple[str | int, str]]:
    if node.op not in ("call_function", "call_method"):
        return []
    found: list[tuple[str | int, str | None]] = (
        [("device", _fx_literal(node.kwargs["device"]))] if "device" in node.kwargs else []
    )
    if node.op == "call_method" and node.target == "to":
        found += [(i, _fx_literal(a)) for i, a in enumerate(node.args[1:], start=1)]
    return [(key, literal) for key, literal in found if literal is not None]


def _fx_literal(value: Any) -> str | None:
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, str):
        try:
            return str(torch.device(value))
        except RuntimeError:  # a string argument that is not a device (e.g. a memory format name)
            return None
    return None


def _fx_replace(node: torch.fx.Node, key: str | int, device_node: torch.fx.Node) -> None:
    if isinstance(key, str):
        node.kwargs = {**node.kwargs, key: device_node}
    else:
        args = list(node.args)
        args[key] = device_node
        node.args = tuple(args)


def _fx_op(node: torch.fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))


def _fx_source(node: torch.fx.Node) -> str:
    trace = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    user = [f"{f}:{n}" for f, n in frames if not os.path.abspath(f).startswith(_TORCH_DIR)]
    return user[-1] if user else ""
