"""Which ops each delegate runs and which fall back to ExecuTorch's portable CPU kernels.

Read from the lowered edge program (the graph `to_executorch` serializes): every `call_function` node
inside a lowered module's original graph ran in that delegate; every one left in the top-level graph
(other than the delegate calls themselves and tuple unpacking) runs in the portable runtime. An op that
silently falls back is typically many times slower on a phone, so the report names each one.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Ops that move no data or only relabel it (views, dim-order clones, tuple unpacking, symbolic sizes): not
# compute, so a fallback of one of them costs little. Everything else counts as a compute op.
_NOT_COMPUTE = {
    "getitem",
    "aten.view_copy",
    "aten.squeeze_copy",
    "aten.unsqueeze_copy",
    "aten.alias_copy",
    "aten.clone",
    "dim_order_ops._clone_dim_order",
    "aten.sym_size",
    "aten._assert_scalar",
    "aten.sym_constrain_range_for_size",
    "aten._assert_async",
    "aten.scalar_tensor",
}


@dataclass
class Delegation:
    """Op counts per delegate and the ops left to the portable CPU kernels."""

    by_delegate: Counter = field(default_factory=Counter)  # backend id -> ops delegated
    delegated_types: dict[str, Counter] = field(default_factory=dict)  # backend id -> op type -> count
    fallback: Counter = field(default_factory=Counter)  # op type -> count, in the portable runtime
    subgraphs: int = 0

    @property
    def delegated_ops(self) -> int:
        return sum(self.by_delegate.values())

    @property
    def total_ops(self) -> int:
        return self.delegated_ops + sum(self.fallback.values())

    @property
    def compute_fallback(self) -> list[str]:
        return sorted(op for op in self.fallback if op not in _NOT_COMPUTE)

    @property
    def compute_delegated_percent(self) -> float:
        compute_delegated = sum(
            n for types in self.delegated_types.values() for op, n in types.items() if op not in _NOT_COMPUTE
        )
        compute_total = compute_delegated + sum(self.fallback[op] for op in self.compute_fallback)
        return 100.0 if compute_total == 0 else round(100.0 * compute_delegated / compute_total, 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "delegated_ops": self.delegated_ops,
            "total_ops": self.total_ops,
            "delegated_subgraphs": self.subgraphs,
            "by_delegate": dict(sorted(self.by_delegate.items())),
            "delegated_op_types": {
                backend: dict(sorted(types.items())) for backend, types in sorted(self.delegated_types.items())
            },
            "fallback_ops": [f"{op} x{n}" for op, n in sorted(self.fallback.items())],
            "compute_ops_delegated_percent": self.compute_delegated_percent,
            "compute_fallback_ops": self.compute_fallback,
        }

    def table(self) -> list[str]:
        """The delegation table for the report's notes, one line per delegate and one for the fallback."""
        lines = [
            f"delegation: {self.delegated_ops} of {self.total_ops} ops in {self.subgraphs} delegated subgraph(s); "
            f"compute ops delegated: {self.compute_delegated_percent:g}%"
        ]
        for backend, types in sorted(self.delegated_types.items()):
            kinds = ", ".join(f"{op} x{n}" for op, n in sorted(types.items()))
            lines.append(f"delegation: {backend}: {self.by_delegate[backend]} ops ({kinds})")
        if self.fallback:
            kinds = ", ".join(f"{op} x{n}" for op, n in sorted(self.fallback.items()))
            lines.append(
                f"delegation: portable CPU fallback: {sum(self.fallback.values())} ops ({kinds})"
                + (f"; compute ops not delegated: {', '.join(self.compute_fallback)}" if self.compute_fallback else "")
            )
        else:
            lines.append("delegation: portable CPU fallback: none")
        return lines


def op_type(target: Any) -> str:
    """'aten.convolution' for an edge op overload (its overload name dropped), 'getitem' for operator.getitem."""
    kind = type(target).__name__
    if kind == "EdgeOpOverload":  # the ATen (or dim_order_ops) op it wraps
        name = str(target._op)
    elif kind == "OpOverload":  # aten.sym_size.int and other ops the edge dialect keeps as they are
        name = str(target)
    else:
        name = getattr(target, "__name__", None) or str(target)
    return re.sub(r"\.[A-Za-z_]+$", "", name) if name.count(".") >= 2 else name


def delegation_of(graph_module: Any) -> Delegation:
    """Count the lowered graph's ops per delegate and in the portable fallback."""
    found = Delegation()
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = op_type(node.target)
        if "executorch_call_delegate" in name:
            lowered = getattr(graph_module, node.args[0].target)
            found.subgraphs += 1
            backend = lowered.backend_id
            types = found.delegated_types.setdefault(backend, Counter())
            for inner in lowered.original_module.graph.nodes:
                if inner.op == "call_function" and op_type(inner.target) != "getitem":
                    types[op_type(inner.target)] += 1
                    found.by_delegate[backend] += 1
        elif name != "getitem":
            found.fallback[name] += 1
    return found
