"""Operator rewrites: replace operators an app's lite runtime lacks with ones it has, in the graph that is saved.

Each rewrite is a TorchScript function computing what the operator computes with older operators; a
node the runtime cannot run is replaced by that function's graph, called with the node's own inputs,
and constant propagation then removes the branches the node's constant arguments (None mask, is_causal,
scale) rule out. The rewritten program is what the smoke test compares with eager and what ships.
Rewrites are registered by operator name (`@register("aten::...", ...)`) and refuse, with the reason, what
they cannot reproduce exactly (dropout at inference, say).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .runtime_ops import OperatorTable

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_EDGEPACK_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + os.sep
_TRACE_FRAME = re.compile(r"^(?P<file>.+?)\((?P<line>\d+)\): (?P<function>\S+)$")
_SCRIPT_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')


@dataclass
class OperatorRewrite:
    """One node replaced (or refused): the operator, the user's "file:line" that produced it, and how."""

    op: str
    source: str
    detail: str
    kind: str = "operator_rewrite"  # "operator_rewrite" or "no_rewrite" (refused; the operator stays)

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "op": self.op, "source": self.source, "detail": self.detail}


class Refused(Exception):
    """The rewrite cannot reproduce this node exactly; the message says why."""


@dataclass(frozen=True)
class _Rule:
    function: Callable[..., Any]
    prepare: Callable[[torch.Node], list[int]]  # checks the node; returns which of its inputs the function takes
    detail: str


RULES: dict[str, _Rule] = {}


def register(op: str, detail: str, prepare: Callable[[torch.Node], list[int]]) -> Callable:
    """Decorator: the TorchScript function that replaces `op`'s nodes; `prepare` refuses a node or picks
    which of its inputs the function takes, in the function's argument order."""

    def decorate(function: Callable) -> Callable:
        RULES[op] = _Rule(torch.jit.script(function), prepare, detail)
        return function

    return decorate


# Rewrites -------------------------------------------------------------------------------------------


def _sdpa_inputs(node: torch.Node) -> list[int]:
    """(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa): all but dropout_p, which must be 0."""
    inputs = list(node.inputs())
    if len(inputs) != 8:
        raise Refused(f"{len(inputs)} arguments, the rewrite knows the 8 of torch 2.5+")
    dropout = _constant(inputs[4])
    if dropout is _NOT_CONSTANT or dropout:
        raise Refused(
            f"dropout_p is {'computed at run time' if dropout is _NOT_CONSTANT else dropout}: attention "
            "dropout is random, the lite program would not compute what eager does (export in eval mode)"
        )
    for index, name in ((5, "is_causal"), (6, "scale"), (7, "enable_gqa")):
        if _constant(inputs[index]) is _NOT_CONSTANT:
            raise Refused(f"{name} is computed at run time; the rewrite needs it fixed when the model is captured")
    return [0, 1, 2, 3, 5, 6, 7]


@register(
    "aten::scaled_dot_product_attention",
    "scaled dot-product attention as matmul, scale, mask, softmax and matmul (operators of torch 1.x)",
    _sdpa_inputs,
)
def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """torch's math reference of F.scaled_dot_product_attention (dropout_p = 0): a boolean mask keeps the
    True positions, a float mask is added to the scores; is_causal keeps the lower triangle."""
    if enable_gqa:
        key = key.repeat_interleave(query.size(-3) // key.size(-3), -3)
        value = value.repeat_interleave(query.size(-3) // value.size(-3), -3)
    if scale is None:
        factor = 1.0 / math.sqrt(float(query.size(-1)))
    else:
        factor = scale
    scores = torch.matmul(query, key.transpose(-2, -1)) * factor
    masked_out: Tensor | None = None  # positions left out, where a row may lose every key
    if is_causal:
        masked_out = (
            torch.ones([query.size(-2), key.size(-2)], dtype=torch.bool, device=query.device).tril().logical_not()
        )
        scores = scores.masked_fill(masked_out, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            from_mask = attn_mask.logical_not()
            scores = scores.masked_fill(from_mask, float("-inf"))
        else:
            from_mask = attn_mask == float("-inf")
            scores = scores + attn_mask
        masked_out = from_mask if masked_out is None else torch.logical_or(masked_out, from_mask)
    weights = torch.softmax(scores, -1)
    if attn_mask is not None and masked_out is not None:
        # A row left with no key: eager returns zeros there (a safe softmax), softmax alone NaN. Found on the
        # mask (1 x keys for padding), not on the scores (heads x queries x keys); causality alone never empties a row.
        weights = weights.masked_fill(masked_out.all(-1, keepdim=True), 0.0)
    return torch.matmul(weights, value)


def _all_inputs(node: torch.Node) -> list[int]:
    return list(range(len(list(node.inputs()))))


@register("aten::rms_norm", "RMS normalization as pow, mean, add, rsqrt and mul (operators of torch 1.x)", _all_inputs)
def rms_norm(
    input: Tensor, normalized_shape: list[int], weight: Tensor | None = None, eps: float | None = None
) -> Tensor:
    """F.rms_norm (torch 2.4+): eps None is the machine epsilon of the input's dtype, as eager takes it."""
    if eps is None:
        if input.dtype == torch.float16:
            epsilon = 0.0009765625
        elif input.dtype == torch.bfloat16:
            epsilon = 0.0078125
        elif input.dtype == torch.float64:
            epsilon = 2.220446049250313e-16
        else:
            epsilon = 1.1920928955078125e-07
    else:
        epsilon = eps
    dims: list[int] = []
    for i in range(len(normalized_shape)):
        dims.append(-1 - i)
    result = input * torch.rsqrt(input.pow(2).mean(dims, keepdim=True) + epsilon)
    if weight is not None:
        result = result * weight
    return result


@register("aten::squeeze.dims", "squeeze of several dimensions as one squeeze per dimension", _all_inputs)
def squeeze_dims(self: Tensor, dim: list[int]) -> Tensor:
    """Tensor.squeeze((d1, d2)) (torch 2.0+): dimensions not of size 1 stay, as eager leaves them."""
    rank = self.dim()
    normalized: list[int] = []
    for d in dim:
        normalized.append(d + rank if d < 0 else d)
    normalized.sort(reverse=True)
    for d in normalized:
        self = self.squeeze(d)
    return self


# The pass -------------------------------------------------------------------------------------------


def make_runnable(module: torch.jit.ScriptModule, table: OperatorTable) -> list[OperatorRewrite]:
    """Rewrite, in place, every node of `module` (all its methods' graphs) that `table`'s runtime cannot run
    and that has a rule; the records say what changed and what was refused."""
    records: list[OperatorRewrite] = []
    for graph in _graphs(module):
        changed = False
        for node in list(_walk(graph)):
            schema = _schema(node)
            if schema is None or _key(schema) not in RULES or runnable(node, table):
                continue
            rule, op, source = RULES[_key(schema)], _key(schema), user_line(node)
            try:
                chosen = rule.prepare(node)
            except Refused as exc:
                records.append(OperatorRewrite(op, source, f"no rewrite: {exc}", "no_rewrite"))
                continue
            _replace(graph, node, rule.function.graph, [list(node.inputs())[i] for i in chosen])
            records.append(OperatorRewrite(op, source, rule.detail))
            changed = True
        if changed:
            torch._C._jit_pass_constant_propagation(graph)
            torch._C._jit_pass_peephole(graph)
            torch._C._jit_pass_dce(graph)
            graph.lint()
    return records


def runnable(node: torch.Node, table: OperatorTable) -> bool:
    """The runtime has the node's operator and takes as many arguments as the node passes (trailing
    arguments left at their defaults are not passed: the saved program drops them). Nodes without a
    schema (prim::If, prim::Constant...) are instructions of the interpreter, not operators."""
    schema = _schema(node)
    if schema is None:
        return True
    available = table.arguments(_key(schema))
    return available is not None and _passed(node, schema) <= available


def _schema(node: torch.Node) -> Any:
    try:
        text = node.schema()
    except RuntimeError:
        return None
    return None if text == "(no schema)" else torch._C.parse_schema(text)


def _key(schema: Any) -> str:
    """What a saved lite program calls the operator: "ns::name" or "ns::name.overload"."""
    return schema.name + (f".{schema.overload_name}" if schema.overload_name else "")


def _passed(node: torch.Node, schema: Any) -> int:
    inputs = list(node.inputs())
    count = len(inputs)
    for value, argument in reversed(list(zip(inputs, schema.arguments))):
        if not argument.has_default_value() or _constant(value) != argument.default_value:
            break
        count -= 1
    return count


def _replace(graph: torch.Graph, node: torch.Node, function_graph: torch.Graph, inputs: list[torch.Value]) -> None:
    with graph.insert_point_guard(node):
        outputs = graph.insertGraph(function_graph, inputs)
    node.output().replaceAllUsesWith(outputs[0])
    node.destroy()


_NOT_CONSTANT = object()


def _constant(value: torch.Value) -> Any:
    node = value.node()
    if node.kind() != "prim::Constant":
        return _NOT_CONSTANT
    return value.toIValue()


def _graphs(module: torch.jit.ScriptModule) -> Iterator[torch.Graph]:
    seen: set[int] = set()
    for _, sub in module.named_modules():
        for name in sub._c._method_names():
            graph = sub._c._get_method(name).graph
            if id(graph) not in seen:
                seen.add(id(graph))
                yield graph


def _walk(block: torch.Graph | torch.Block) -> Iterator[torch.Node]:
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from _walk(inner)


def operator_sources(module: torch.jit.ScriptModule) -> dict[str, str]:
    """Operator kind ("aten::name") -> the user's "file:line" of its first node that has one."""
    sources: dict[str, str] = {}
    for graph in _graphs(module):
        for node in _walk(graph):
            if node.kind() not in sources or not sources[node.kind()]:
                sources[node.kind()] = user_line(node)
    return sources


def user_line(node: torch.Node) -> str:
    """The innermost frame of the user's code in the node's recorded stack (trace) or source (script);
    else the innermost frame of torch's own code, which still names the function that wrote the node."""
    text = node.sourceRange()
    frames = []
    for line in text.splitlines():
        match = _TRACE_FRAME.match(line.strip())
        if match:
            frames.append((os.path.abspath(match["file"]), match["line"]))
    frames += [(m["file"], m["line"]) for m in _SCRIPT_FRAME.finditer(text) if not m["file"].startswith("code/")]
    for file, line in frames:
        if not file.startswith(_TORCH_DIR) and not file.startswith(_EDGEPACK_DIR):
            return f"{file}:{line}"
    return f"{frames[0][0]}:{frames[0][1]}" if frames else ""
