"""Imitate a trace recorded on a GPU, on a CPU-only machine.

A CPU trace that has never run has its placing Device literals edited to "cuda:0" with the graph
API (a module that has run keeps a cached plan that does not see later graph edits). On a
CPU-only build such a module fails as soon as it places a tensor on cuda:0, as it would on a phone.
"""

from __future__ import annotations

import torch

CUDA = "cuda:0"


def pin(module: torch.jit.ScriptModule, device: str = CUDA, keep_marker: str | None = None) -> torch.jit.ScriptModule:
    """Every "cpu" Device literal that places a tensor becomes `device` (except in nodes whose source
    range contains `keep_marker`, e.g. "test_rewrite.py(123)"), and forward's input types say
    `device`, in every method graph of every submodule (scripted ones included)."""
    for _, sub in module.named_modules():
        for name in sub._c._method_names():
            _pin_graph(sub._c._get_method(name).graph, device, keep_marker)
    for value in list(module.graph.inputs())[1:]:
        if value.type().kind() == "TensorType" and value.type().device() is not None:
            value.setType(value.type().with_device(torch.device(device)))
    return module


def _pin_graph(graph: torch.Graph, device: str, keep_marker: str | None) -> None:
    first = next(iter(graph.nodes()))
    for node in list(walk(graph)):
        for index, value in enumerate(list(node.inputs())):
            literal = value.node().kind() == "prim::Constant" and value.type().kind() == "DeviceObjType"
            if not literal or str(value.toIValue()) != "cpu" or node.kind() == "prim::ListConstruct":
                continue
            if keep_marker is not None and keep_marker in node.sourceRange():
                continue
            with graph.insert_point_guard(first):
                node.replaceInput(index, graph.insertConstant(torch.device(device)))


def walk(block):
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from walk(inner)
