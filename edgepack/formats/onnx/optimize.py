"""ONNX graph optimization with the runtimes' own tools, saved offline at a level the target's runtime loads.

Levels (a target's `[formats.onnx] optimization`):
- `none`: the exporter's graph as written.
- `basic`: onnxscript's optimizer (constant folding, dead code and redundant node removal), then
  onnxruntime's basic level saved offline (Conv+BN/Add/Mul fusion, more folding). Standard ONNX ops
  only: portable to every onnxruntime build, reduced ones included.
- `extended`: onnxscript's optimizer, then onnxruntime's extended level (basic included) saved offline (FusedConv, FusedMatMul,
  SkipLayerNormalization, Gelu...). These are `com.microsoft` contrib ops: the runtime must be a full
  onnxruntime build (onnxruntime-android, onnxruntime-c / onnxruntime-objc, desktop packages).
- `transformer`: onnxscript's optimizer, onnxruntime.transformers' BERT fusions (Attention,
  EmbedLayerNormalization, SkipLayerNormalization, BiasGelu), then the extended level; contrib ops, as for
  `extended`. Where no transformer pattern fuses (a conv net), onnxscript's optimizer only: onnxruntime
  applies its own levels when it loads the model, and the conv net then runs as fast as the plain export
  (ResNet-style, quiet host: 1.00x, where the offline extended graph ran 1.01x), with standard ops only.

Never saved offline: the `all` level (its NCHWc layout transforms are specific to the build machine's
CPU). The runtime applies it itself when it loads the model. Each step that fails keeps the graph it
was given and says why in a note; the smoke test checks whatever is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import onnx.helper
import onnxruntime as ort

from ...errors import UsageError, did_you_mean
from ...noise import quiet_converter, short_reason
from ...paths import scratch_folder
from .session import session

LEVELS = ("none", "basic", "extended", "transformer")
CONTRIB_DOMAIN = "com.microsoft"
_MAX_INLINE_BYTES = 2_000_000_000  # protobuf's limit for a model saved without external data
_ORT_LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}
# What onnxruntime.transformers reports fusing; any of these > 0 means the transformer pass applied.
_TRANSFORMER_FUSIONS = (
    "Attention",
    "MultiHeadAttention",
    "EmbedLayerNormalization",
    "SkipLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "LayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "SimplifiedLayerNormalization",
    "GemmFastGelu",
    "RotaryEmbedding",
)


def check_level(level: object) -> str:
    """The level name, or a UsageError naming the levels."""
    if level not in LEVELS:
        raise UsageError(
            f"ONNX optimization {level!r} is not a level.{did_you_mean(str(level), list(LEVELS))}",
            f"Set [formats.onnx] optimization to one of: {', '.join(LEVELS)}.",
        )
    return str(level)


def optimize_onnx(path: Path, level: str) -> list[str]:
    """Optimize the model at `path` in place at `level`; return notes saying what each step changed."""
    if check_level(level) == "none":
        return ["graph optimization: none (the exporter's graph)"]
    notes: list[str] = []
    model = onnx.load(str(path))
    if model.ByteSize() > _MAX_INLINE_BYTES:
        return [
            f"graph optimization: {level} not applied: the model is over 2 GB, which the offline "
            "optimizers cannot write as one file"
        ]
    before = _node_count(model)
    model = _step(notes, "onnxscript optimizer (constant folding, simplification)", model, _onnxscript_optimize)
    if level == "transformer":  # before onnxruntime's passes, which rewrite the patterns it matches
        model = _step(notes, "onnxruntime.transformers fusions", model, lambda m: _transformer_fusions(m, notes))
    fused = level == "transformer" and any(note.startswith("fused:") for note in notes)
    if level != "transformer" or fused:
        ort_level = "basic" if level == "basic" else "extended"
        model = _step(notes, f"onnxruntime {ort_level} level", model, lambda m: _ort_offline(m, ort_level))
    else:
        notes.append("no transformer pattern fused: onnxruntime's own levels apply when it loads the model")
    _prune_unused_domains(model)
    onnx.save(model, str(path))
    contrib = sorted({n.op_type for n in _all_nodes(model.graph) if n.domain == CONTRIB_DOMAIN})
    notes.insert(
        0,
        f"graph optimization: {level}, {before} -> {_node_count(model)} nodes"
        + (f"; contrib ops (full onnxruntime build needed): {', '.join(contrib)}" if contrib else ""),
    )
    return notes


def optimization_requirements(model: onnx.ModelProto, level: str) -> dict:
    """What the manifest says a runtime needs for this optimization level."""
    uses_contrib = any(n.domain == CONTRIB_DOMAIN for n in _all_nodes(model.graph))
    return {"graph_optimization": level, "contrib_ops": uses_contrib}


def _step(
    notes: list[str], what: str, model: onnx.ModelProto, run: Callable[[onnx.ModelProto], onnx.ModelProto]
) -> onnx.ModelProto:
    """Run one optimizer; on failure keep the model it was given and note why (the others still run)."""
    working = onnx.ModelProto()
    working.CopyFrom(model)  # some optimizers edit their input in place, even when they then fail
    try:
        with quiet_converter():
            result = run(working)
    except _NothingToFuse as nothing:
        notes.append(f"{what}: {nothing}")
        return model
    except Exception as exc:  # optimizers fail in many ways; an unoptimized graph is still correct
        notes.append(f"{what} skipped: {short_reason(exc, 240)}")
        return model
    imported = {o.domain for o in result.opset_import}
    for domain in sorted({n.domain for n in _all_nodes(result.graph)} - imported - {"ai.onnx"}):
        result.opset_import.append(onnx.helper.make_opsetid(domain, 1))  # ORT's fusions use contrib ops unimported
    try:  # an optimization that breaks the model is dropped, never the format (T5's RMSNorm fused into an op
        onnx.checker.check_model(result)  # in the standard domain that the standard does not define, say)
    except Exception as exc:
        notes.append(
            f"{what} dropped: its graph fails the ONNX checker ({short_reason(exc, 240)}); the graph before it ships"
        )
        return model
    notes.append(f"{what}: {_node_count(model)} -> {_node_count(result)} nodes")
    return result


def _onnxscript_optimize(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxscript.optimizer

    return onnxscript.optimizer.optimize(model)


def _ort_offline(model: onnx.ModelProto, level: str) -> onnx.ModelProto:
    """Let an onnxruntime session optimize the graph and write it back (the documented offline mode)."""
    with scratch_folder() as tmp:
        source, optimized = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, str(source))
        options = ort.SessionOptions()
        options.graph_optimization_level = _ORT_LEVELS[level]
        options.optimized_model_filepath = str(optimized)
        options.log_severity_level = 3
        session(source, options)
        _check_reloads(optimized)
        return onnx.load(str(optimized))


def _check_reloads(path: Path) -> None:
    """A device loads the saved graph with the runtime's default (all) optimizations on top; onnxruntime
    1.31 cannot always re-optimize its own offline output ("Attempt to replace the existing tensor"
    on some TorchScript-exported encoders), and such a graph must not ship."""
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the failure is expected and reported in the notes: keep it off stderr
    try:
        session(path, options)
    except Exception as exc:
        raise RuntimeError(
            f"the saved graph does not reload with onnxruntime's default optimizations "
            f"({str(exc).strip().splitlines()[-1][-160:]})"
        ) from exc


def _transformer_fusions(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """BERT-style fusions (head count and width found from the graph); the input back when none applies."""
    from onnxruntime.transformers.optimizer import optimize_model

    fused = optimize_model(model, model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
    stats = {k: v for k, v in fused.get_fused_operator_statistics().items() if k in _TRANSFORMER_FUSIONS and v}
    if not stats:
        raise _NothingToFuse("no transformer pattern found")
    notes.append("fused: " + ", ".join(f"{k} x{v}" for k, v in sorted(stats.items())))
    return fused.model


class _NothingToFuse(Exception):
    pass


def _prune_unused_domains(model: onnx.ModelProto) -> None:
    """onnxruntime writes every domain it knows into opset_import; keep the ones the graph uses."""
    used = {n.domain for n in _all_nodes(model.graph)} | {"", "ai.onnx"}
    for function in model.functions:
        used |= {n.domain for n in function.node} | {function.domain}
    kept = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Nodes of the graph and of every subgraph (If/Loop bodies)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)
            for sub in attribute.graphs:
                yield from _all_nodes(sub)


def _node_count(model: onnx.ModelProto) -> int:
    return sum(1 for _ in _all_nodes(model.graph))
