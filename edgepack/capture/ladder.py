"""Capture stage: turn the flattened model into TorchScript that computes what eager PyTorch does.

A ladder of strategies, each a small class; every attempt is recorded with what went wrong:
  trace   torch.jit.trace; kept when it has no hazards and matches eager on every check input
  script  torch.jit.script of the whole model (keeps data-dependent control flow)
  hybrid  script only the submodules where the hazards are, trace the rest
If none is clean, a trace that matches eager everywhere is kept with its hazards reported;
otherwise the build fails naming the hazards and their lines. Check inputs are the golden
samples, the traced sample negated, scaled and zeroed (other branches), other sizes for every
dynamic dimension, and the user's own. The torch.export capture (export.py) is made after the ladder,
from the same flattened model, and checked with the same comparison on the same inputs.
"""

from __future__ import annotations

import copy
import io
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..compare import Comparison, compare_outputs
from ..errors import BuildError, UsageError, did_you_mean
from ..inputs import dynamic_symbols, resized, sample_inputs
from ..load import LoadedModel
from ..noise import filter_known_warnings
from . import devices as rewrite
from . import hazards as hz
from .export import ExportCapture, export_capture, without_fused_attention
from .flatten import FlatModel, flatten_model
from .hazards import Hazard

MODES = ("auto", "trace", "script")
_ERROR_LINE = re.compile(r"^\w*(Error|Exception): ")
_CHECK_ATOL, _CHECK_RTOL, _CHECK_COSINE = 1e-5, 1e-4, 0.9999


class CaptureError(BuildError):
    """No capture can be trusted; carries what was found, for reports and `edgepack doctor`."""

    def __init__(
        self,
        message: str,
        hint: str,
        hazards: list[Hazard],
        attempts: list[CaptureAttempt],
        export: ExportCapture | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.hazards = hazards
        self.attempts = attempts
        self.export = export  # the torch.export capture's attempts, for `edgepack doctor`


CheckKind = Literal["golden", "branch", "size", "user"]


@dataclass
class CheckInput:
    """An input the capture must handle like eager PyTorch, with eager's outputs for it: another golden
    sample, a branch-flipping variant, another size of a dynamic dimension, or one of the user's."""

    label: str
    sample: dict[str, torch.Tensor]
    expected: list[np.ndarray]
    kind: CheckKind = "golden"


@dataclass
class CaptureAttempt:
    strategy: str
    ok: bool
    error: str = ""
    divergence: list[dict] = field(default_factory=list)
    scripted_submodules: list[str] = field(default_factory=list)
    rewrites: list[rewrite.Rewrite] = field(default_factory=list, repr=False)  # the device pass on this attempt

    def to_json(self) -> dict:
        return {
            "strategy": self.strategy,
            "ok": self.ok,
            "error": self.error,
            "divergence": self.divergence,
            "scripted_submodules": self.scripted_submodules,
        }


@dataclass
class CapturedModel:
    """The flat eager model, its TorchScript capture, how it was obtained, and what it was checked on:
    `samples[i]` are golden input tensors by name, `expected[i]` eager's outputs for them."""

    loaded: LoadedModel
    eager: FlatModel
    scripted: torch.jit.ScriptModule
    output_names: list[str]
    strategy: str
    attempts: list[CaptureAttempt]
    hazards: list[Hazard]
    samples: list[dict[str, torch.Tensor]] = field(repr=False, default_factory=list)
    expected: list[list[np.ndarray]] = field(repr=False, default_factory=list)
    checks: list[CheckInput] = field(repr=False, default_factory=list)
    devices: DevicePass | None = None
    # Sizes of a dynamic dimension the capture could not be checked at, because eager itself fails there:
    # [{"size": "SEQ=128", "reason": ...}]. The bundle still accepts them; nobody checked what it returns.
    unchecked_sizes: list[dict[str, str]] = field(default_factory=list)
    # The torch.export capture, checked on the same inputs: what ONNX and Core ML consume when it holds.
    export: ExportCapture | None = None
    # Attributes forward fills once and reuses (an anchor grid): captured from their cold value, so recomputed.
    caches: list[hz.Cache] = field(default_factory=list)

    @property
    def exported(self) -> torch.export.ExportedProgram | None:
        """The checked ExportedProgram, or None when no export strategy held (see `export.reason`)."""
        return self.export.program if self.export is not None else None

    def exported_copy(self) -> torch.export.ExportedProgram:
        """An independent copy of the checked ExportedProgram, for a converter to consume.

        Converters lower, decompose and re-home what they are given: after one format had taken the shared
        program, a later one failed on its non-persistent buffers (KeyError 'model.roberta.embeddings.
        token_type_ids', 'rotary_emb.inv_freq'), so a build's result depended on its other formats."""
        if self.export is None or self.export.program is None:
            raise ValueError("no checked torch.export capture to copy")
        with warnings.catch_warnings():  # torch's pytree warns about its own LeafSpec while copying
            warnings.simplefilter("ignore", FutureWarning)
            return copy.deepcopy(self.export.program)

    @property
    def export_strategy(self) -> str | None:
        """The export strategy that held ("export-strict", "export-nonstrict"), or None."""
        return self.export.strategy if self.export is not None else None

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.loaded.inputs]

    def scripted_copy(self) -> torch.jit.ScriptModule:
        """An independent copy of the capture, for converters that edit TorchScript graphs in place.

        coremltools' torch frontend inlines and canonicalizes `forward.graph` of the module it is
        given; on the shared capture that changed what formats converted after it exported (ONNX node
        names lost their module scopes), so a build's bytes depended on its other targets. A saved and
        reloaded module owns its graphs (copy.deepcopy shares them through the class type)."""
        buffer = io.BytesIO()
        torch.jit.save(self.scripted, buffer)
        buffer.seek(0)
        return torch.jit.load(buffer)

    def to_json(self) -> dict:
        document = {
            "strategy": self.strategy,
            "attempts": [a.to_json() for a in self.attempts],
            "hazards": [h.to_json() for h in self.hazards],
            "checked_inputs": len(self.samples) + len(self.checks),
            "unchecked_sizes": self.unchecked_sizes,
            "caches": [c.to_json() for c in self.caches],
        }
        if self.devices is not None:
            document.update(self.devices.to_json())
        if self.export is not None:
            document["export"] = self.export.to_json()
        return document


@dataclass
class DevicePass:
    """What the device pass did to the accepted capture, and the proof read back from its saved code."""

    policy: str
    trace_device: str
    rewrites: list[rewrite.Rewrite]
    findings: rewrite.DeviceFindings
    meta_check: str  # runs_on_meta's verdict: "ok: ...", "device mismatch: ...", "could not check: ..."
    meta_mismatch: bool = False  # the meta run found a placement still pinned to a real device

    @property
    def keep(self) -> set[str]:
        """Device literals the policy allows in saved code."""
        return _allowed_devices(self.rewrites, self.policy)

    @property
    def device_agnostic(self) -> bool:
        """Placements follow the input's device: policy "agnostic", nothing pinned in the saved code but
        a deliberate `.cpu()` (before a CPU-only op), and nothing collided on `meta`. Under policy
        "target" the bundle is pinned to the phone's CPU on purpose: not agnostic, and not a problem."""
        return self.policy == "agnostic" and self.findings.clean and not self.meta_mismatch

    def to_json(self) -> dict:
        return {
            "device_policy": self.policy,
            "trace_device": self.trace_device,
            "device_agnostic": self.device_agnostic,
            "rewrites": [
                {"kind": r.kind, "op": r.op, "source": r.source, "detail": r.detail, "device": r.device}
                for r in self.rewrites
            ],
            "pinned_devices": self.findings.pinned,
            "kept_devices": self.findings.kept,
            "meta_check": self.meta_check,
        }


# Strategies ---------------------------------------------------------------------------------------


class Strategy(ABC):
    name: str

    @abstractmethod
    def build(
        self, flat: FlatModel, example: tuple[torch.Tensor, ...], found: list[Hazard]
    ) -> tuple[torch.jit.ScriptModule, list[str]]:
        """Return the capture and the submodules it scripted; raise when the strategy does not apply."""


class Trace(Strategy):
    name = "trace"

    def __init__(self, prior: torch.jit.ScriptModule | None = None, device: str = "cpu") -> None:
        self.prior = prior  # the trace the hazard pass already made: tracing twice costs time on big models
        self.device = device

    def build(self, flat, example, found):
        return (self.prior if self.prior is not None else _trace(flat, example, self.device)), []


class Script(Strategy):
    name = "script"

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def build(self, flat, example, found):
        scripted = torch.jit.script(copy.deepcopy(flat.model))
        return _trace(flat.around(scripted), example, self.device), ["(whole model)"]


class Hybrid(Strategy):
    name = "hybrid"

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def build(self, flat, example, found):
        model = copy.deepcopy(flat.model)
        targets = _submodules_holding(model, found)
        if not targets:
            raise BuildError("no hazard lies inside a submodule: nothing smaller than the whole model to script")
        for name in targets:
            parent, _, child = name.rpartition(".")
            setattr(
                model.get_submodule(parent) if parent else model, child, torch.jit.script(model.get_submodule(name))
            )
        return _trace(flat.around(model), example, self.device), targets


# The ladder ---------------------------------------------------------------------------------------


def capture(
    loaded: LoadedModel,
    samples: list[dict[str, torch.Tensor]],
    mode: str = "auto",
    user_checks: list[dict[str, torch.Tensor]] | None = None,
    device_policy: str = "agnostic",
    trace_device: str = "cpu",
) -> CapturedModel:
    """Capture the model with the first strategy that holds on every check input (see the module doc).

    Every attempt goes through the device pass (edgepack.rewrite) before it is checked, on the CPU:
    a capture recorded on `trace_device` must compute the same on the device that runs the bundle."""
    trace_device = check_options(mode, device_policy, trace_device)
    prepass = rewrite.eager_prepass(loaded.module)  # before anything traces it: tensor attributes become buffers
    cold = hz.snapshot(loaded.module)  # before the model's first call: what a cache holds before it is filled
    flat, output_names = flatten_model(loaded, samples[0])
    names = [spec.name for spec in loaded.inputs]
    example = tuple(samples[0][n] for n in names)
    state, caches = hz.state_changes(loaded.module, lambda: _eager_tensors(flat, example), cold)
    flat.caches = [((c.owner, c.attr), c.cold) for c in caches]  # every call from here on runs the cold path
    checks, unchecked = _checks(loaded, flat, samples, user_checks or [])
    expected = [_eager(flat, sample, names) for sample in samples]
    _check_checkable(loaded, output_names, expected)
    _check_output_sizes(loaded, output_names, samples, expected, checks)
    # Some models change their own attributes only while traced (HF Swin: `self.window_size = torch.min(...)`
    # under torch.jit.is_tracing()): put back what the TorchScript captures changed before torch.export runs, so
    # it sees the model eager ran (an int, not a tensor to branch on).
    settled = hz.snapshot(loaded.module)
    first_trace, trace_hazards = _trace_hazards(flat, loaded, example, trace_device)
    found = state + trace_hazards
    fatal = [h for h in found if h.kind in hz.FATAL_KINDS]

    def exported() -> ExportCapture:  # after the TorchScript ladder: its captures stay exactly as they were
        hz.restore_changed(loaded.module, settled)
        return export_capture(
            flat, loaded, example, lambda module: _compare(module, checks, names, output_names), len(checks), found
        )

    if fatal:
        raise CaptureError(diagnosis("No capture can be trusted", fatal, []), fatal[0].fix, found, [], exported())

    yours = [h for h in found if not h.in_library]  # hazards in torch's own code do not rule out the trace
    attempts: list[CaptureAttempt] = []
    accepted: tuple[torch.jit.ScriptModule, CaptureAttempt] | None = None
    fallback = None
    for strategy in _strategies_for(mode, first_trace, trace_device):
        module, attempt = _attempt(strategy, flat, example, found, checks, output_names, names, device_policy)
        attempts.append(attempt)
        clean = attempt.ok and (strategy.name != "trace" or not yours or mode == "trace")
        if clean:
            accepted = (module, attempt)
            break
        if strategy.name == "trace" and attempt.ok:
            fallback = (module, attempt)  # matches eager everywhere we looked: kept if nothing cleaner works
    else:
        if mode == "auto" and attempts[0].ok:
            accepted = fallback
    if accepted is None:
        raise CaptureError(
            diagnosis("No capture matches eager PyTorch", found, attempts),
            _hint(found, mode),
            found,
            attempts,
            exported(),
        )
    module, attempt = accepted
    devices = _device_proof(module, prepass + attempt.rewrites, device_policy, trace_device, example)
    return CapturedModel(
        loaded,
        flat,
        module,
        output_names,
        attempt.strategy,
        attempts,
        found,
        samples,
        expected,
        [c for c in checks if c.kind != "golden"],
        devices,
        unchecked,
        exported(),
        caches,
    )


def _eager_tensors(flat: FlatModel, example: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t.detach().clone() for t in flat(*example)]


def capture_again(captured: CapturedModel, model: nn.Module) -> torch.jit.ScriptModule:
    """A variant of the captured model (quantized, say) captured the way the original was: the same
    strategy, then the same device pass, so what ships from it is as device-agnostic as the capture."""
    strategy = {s.name: s for s in (Trace(), Script(), Hybrid())}[captured.strategy]
    example = tuple(captured.samples[0][name] for name in captured.input_names)
    policy = captured.devices.policy if captured.devices else "agnostic"
    return _build_device_agnostic(strategy, captured.eager.around(model), example, captured.hazards, policy)[0]


def _device_proof(
    module: torch.jit.ScriptModule,
    rewrites: list[rewrite.Rewrite],
    policy: str,
    trace_device: str,
    example: tuple[torch.Tensor, ...],
) -> DevicePass:
    """Read the device literals back from the module's saved code, and run it on `meta`."""
    findings = rewrite.pinned_devices(module, keep=_allowed_devices(rewrites, policy))
    if policy != "agnostic":
        return DevicePass(policy, trace_device, rewrites, findings, "not run: policy target pins to the CPU")
    _, meta = rewrite.runs_on_meta(module, example)
    return DevicePass(policy, trace_device, rewrites, findings, meta, meta.startswith(rewrite.DEVICE_MISMATCH))


def _allowed_devices(rewrites: list[rewrite.Rewrite], policy: str) -> set[str]:
    return rewrite.kept_devices(rewrites) | ({rewrite.TARGET_DEVICE} if policy == "target" else set())


def check_options(mode: str, policy: str, trace_device: str) -> str:
    """UsageError for a bad capture mode, device policy or trace device; cheap, so callers run it before
    loading the model. Returns the trace device to use ("auto" resolved)."""
    if mode not in MODES:
        raise UsageError(
            f"Unknown capture mode '{mode}'.{did_you_mean(mode, list(MODES))}", f"Use one of: {', '.join(MODES)}."
        )
    return _resolve_trace_device(policy, trace_device)


def _resolve_trace_device(policy: str, trace_device: str) -> str:
    """Validate the options; "auto" is the workstation's GPU when there is one, else the CPU."""
    if trace_device == "auto":
        trace_device = "cuda" if torch.cuda.is_available() else "cpu"
    _check_device_options(policy, trace_device)
    return trace_device


def _check_device_options(policy: str, trace_device: str) -> None:
    if policy not in rewrite.POLICIES:
        raise UsageError(
            f"Unknown device policy '{policy}'.{did_you_mean(policy, list(rewrite.POLICIES))}",
            "Use 'agnostic' (placements follow the input's device) or 'target' (everything on the phone's CPU).",
        )
    try:
        device = torch.device(trace_device)
    except RuntimeError as exc:
        raise UsageError(f"'{trace_device}' is not a device name.", "Use cpu, cuda, cuda:N or auto.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"--trace-device {trace_device}: this machine has no usable CUDA device "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False).",
            "Trace on the CPU (the default): the bundle is the same, the device pass makes it device-agnostic.",
        )
    if device.type not in ("cpu", "cuda"):
        raise UsageError(
            f"--trace-device {trace_device}: only cpu and cuda are supported.", "Use cpu, cuda, cuda:N or auto."
        )


def _strategies_for(mode: str, first_trace: torch.jit.ScriptModule | None, trace_device: str) -> tuple[Strategy, ...]:
    ladder = (Trace(first_trace, trace_device), Script(trace_device), Hybrid(trace_device))
    return {"auto": ladder, "trace": ladder[:1], "script": ladder[1:2]}[mode]


def _attempt(strategy, flat, example, found, checks, output_names, names, policy) -> tuple[Any, CaptureAttempt]:
    """Build, make device-agnostic, check on the CPU."""
    try:
        module, scripted, rewrites = _build_device_agnostic(strategy, flat, example, found, policy)
    except Exception as exc:  # scripting fails in many exception types; the message is the diagnosis
        return None, CaptureAttempt(strategy.name, False, error=_first_lines(exc))
    divergence = [c.to_json() for c in _compare(module, checks, names, output_names) if not c.ok]
    error = "outputs differ from eager PyTorch on inputs it was not traced with" if divergence else ""
    return module, CaptureAttempt(strategy.name, not divergence, error, divergence, scripted, rewrites)


def _build_device_agnostic(
    strategy: Strategy, flat: FlatModel, example: tuple[torch.Tensor, ...], found: list[Hazard], policy: str
) -> tuple[torch.jit.ScriptModule, list[str], list[rewrite.Rewrite]]:
    """The strategy's capture after the device pass, on the CPU: (module, scripted submodules, rewrites)."""
    with torch.no_grad():
        module, scripted = strategy.build(flat, example, found)
        module, rewrites = rewrite.make_device_agnostic(module, policy)
    return module.cpu(), scripted, rewrites


def trace_module(model: nn.Module, example: tuple[torch.Tensor, ...], device: str = "cpu") -> torch.jit.ScriptModule:
    """torch.jit.trace on `device` (the workstation's GPU with --trace-device cuda): the one place captures trace.
    The trace is never run here, so the device pass can still edit its graphs."""
    if torch.device(device).type != "cpu":
        model = copy.deepcopy(model).to(device)
        example = tuple(t.to(device) for t in example)
    with without_fused_attention():
        return torch.jit.trace(model, example, check_trace=False)


def _trace(flat: FlatModel, example: tuple[torch.Tensor, ...], device: str = "cpu") -> torch.jit.ScriptModule:
    with warnings.catch_warnings(), torch.no_grad():
        filter_known_warnings()
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the hazard pass records these
        return trace_module(flat, example, device)


def _trace_hazards(
    flat: FlatModel, loaded: LoadedModel, example: tuple[torch.Tensor, ...], device: str = "cpu"
) -> tuple[torch.jit.ScriptModule | None, list[Hazard]]:
    """Trace once with warnings recorded; also look for random ops and loops unrolled over dynamic sizes."""
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        filter_known_warnings()
        try:
            traced = trace_module(flat, example, device)
        except Exception:
            return None, hz.from_tracer_warnings(caught)  # the trace attempt reports the failure itself
    found = hz.from_tracer_warnings(caught) + hz.random_ops(traced.inlined_graph)
    for symbol, size in dynamic_symbols(loaded.inputs).items():
        other = sample_inputs(resized(loaded.inputs, {symbol: size * 2}), loaded.module, seed=7)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                retraced = trace_module(flat, tuple(other[s.name] for s in loaded.inputs), device)
        except Exception:
            continue  # the other size fails in eager too; the checks will say so
        found += hz.unrolled_loops(traced.inlined_graph, retraced.inlined_graph, symbol)
    return traced, hz.dedupe(found)


def _checks(
    loaded: LoadedModel, flat: FlatModel, samples, user_checks
) -> tuple[list[CheckInput], list[dict[str, str]]]:
    """The inputs every capture attempt is checked on, and the dynamic sizes eager itself fails at."""
    names = [spec.name for spec in loaded.inputs]
    candidates: list[tuple[str, dict[str, torch.Tensor], CheckKind]]
    candidates = [(f"golden sample {i}", s, "golden") for i, s in enumerate(samples) if i > 0]
    candidates += [(label, s, "branch") for label, s in _branch_variants(samples[0])]
    for symbol, size in dynamic_symbols(loaded.inputs).items():
        for other in sorted({max(1, size // 2), size * 2} - {size}):
            specs = resized(loaded.inputs, {symbol: other})
            candidates.append((f"{symbol}={other}", sample_inputs(specs, loaded.module, seed=100 + other), "size"))
    candidates += [(f"user check input {i}", s, "user") for i, s in enumerate(user_checks)]
    checks, unchecked = [], []
    for label, sample, kind in candidates:
        try:
            checks.append(CheckInput(label, sample, _eager(flat, sample, names), kind))
        except Exception as exc:
            if kind == "user":
                raise UsageError(
                    f"Eager PyTorch fails on {label}: {_first_lines(exc)}", "Fix the check input."
                ) from exc
            if kind == "size":  # the model cannot take a size its input is declared to accept: say so
                unchecked.append({"size": label, "reason": _first_lines(exc)})
            # else eager rejects a generated value (all zeros, say): nothing to compare against
    return checks, unchecked


def _branch_variants(sample: dict[str, torch.Tensor]) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """The traced sample negated, scaled up and zeroed: values that take other data-dependent branches."""
    if not any(t.is_floating_point() for t in sample.values()):
        return []

    def vary(transform):
        return {name: transform(t) if t.is_floating_point() else t for name, t in sample.items()}

    return [
        ("the traced sample negated", vary(torch.neg)),
        ("the traced sample times 4", vary(lambda t: t * 4)),
        ("all-zero floats", vary(torch.zeros_like)),
    ]


def _compare(module: Callable[..., Any], checks: list[CheckInput], names, output_names) -> list[Comparison]:
    results = []
    with torch.no_grad():
        for check in checks:
            try:
                got = [t.numpy() for t in module(*(check.sample[n] for n in names))]
            except Exception as exc:
                results.append(Comparison.error(check.label, _first_lines(exc)))
                continue
            results.append(
                compare_outputs(got, check.expected, _CHECK_ATOL, _CHECK_RTOL, _CHECK_COSINE, check.label, output_names)
            )
    return results


def _check_checkable(loaded: LoadedModel, output_names: list[str], expected: list[list[np.ndarray]]) -> None:
    """UsageError when eager's outputs on the golden samples hold nothing a check could compare: an output
    all inf/NaN (any artifact giving inf/NaN would 'match' it), or every output empty. An output empty
    on every sample while others hold values is allowed (an intended empty output), and warned about."""
    unchecked, empty = empty_outputs(output_names, expected)
    unchecked = [n for n in unchecked if n not in empty]
    inputs = ", ".join(str(s) for s in loaded.inputs)
    if unchecked:
        raise UsageError(
            f"The model's output(s) {', '.join(repr(n) for n in unchecked)} hold no finite value on any golden sample "
            f"({inputs}): all inf/NaN, so no smoke test or verify could tell a broken artifact from a good one.",
            "Check the weights (--weights), the forward for 0/0 or log(0), and the --input values and ranges.",
        )
    if output_names and len(empty) == len(output_names):
        raise UsageError(
            f"Every output of the model is empty on the golden samples ({inputs}): nothing to check.",
            "Check the --input shapes: an output with a zero-size dimension holds no values.",
        )


def _check_output_sizes(loaded: LoadedModel, output_names: list[str], samples, expected, checks) -> None:
    """UsageError, before anything is traced or written, for an output whose size changes with the input's values
    (x[mask], nonzero, NMS keep indices): inputs of one shape give it different shapes. Golden vectors, smoke tests
    and every format here fix an output's shape per input shape, so such a model is refused with what to change."""
    shape_of = {name: tuple(t.shape) for name, t in samples[0].items()}
    runs = [(f"golden sample {i}", outputs) for i, outputs in enumerate(expected)]
    runs += [
        (c.label, c.expected)
        for c in checks
        if c.kind != "size" and {n: tuple(t.shape) for n, t in c.sample.items()} == shape_of
    ]
    for index, name in enumerate(output_names):
        shapes: dict[tuple, str] = {}
        for label, outputs in runs:
            shapes.setdefault(tuple(np.shape(outputs[index])), label)
        if len(shapes) > 1:
            (first, where), (second, other) = list(shapes.items())[:2]
            inputs = ", ".join(str(spec) for spec in loaded.inputs)
            raise UsageError(
                f"Output '{name}' changes size with the input's values, not its shape: {list(first)} on {where}, "
                f"{list(second)} on {other} (inputs {inputs}). A data-dependent size (x[mask], nonzero, NMS-style "
                "keep indices) cannot be given golden vectors or checked per shape, and edgepack does not package it.",
                "Return fixed-size outputs and filter in the app: every candidate with its score or mask (e.g. "
                "torch.where(keep, x, 0) or scores alongside the boxes), or the top-k by score (torch.topk) with a fixed k; "
                "or keep the post-processing out of the packaged model.",
            )


def empty_outputs(output_names: list[str], expected: list[list[np.ndarray]]) -> tuple[list[str], list[str]]:
    """(outputs with no finite value on any sample, outputs with no value at all on any sample)."""
    no_finite, empty = [], []
    for index, name in enumerate(output_names):
        arrays = [np.asarray(e[index]) for e in expected if len(e) > index]
        if arrays and all(a.size == 0 for a in arrays):
            empty.append(name)
        if arrays and all(not np.isfinite(a.astype(np.float64)).any() for a in arrays):
            no_finite.append(name)
    return no_finite, empty


def _eager(flat: FlatModel, sample: dict[str, torch.Tensor], names: list[str]) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.detach().numpy() for t in flat(*(sample[n] for n in names))]


def _submodules_holding(model: nn.Module, found: list[Hazard]) -> list[str]:
    """The outermost non-root submodules whose forward source contains a hazard's line."""
    import inspect

    holders: list[str] = []
    for name, module in model.named_modules():
        if not name or isinstance(module, torch.jit.ScriptModule) or any(name.startswith(h + ".") for h in holders):
            continue  # a scripted submodule keeps its control flow already
        try:
            lines, start = inspect.getsourcelines(type(module).forward)
            file = inspect.getsourcefile(type(module).forward)
        except (OSError, TypeError):
            continue
        if any(h.file == file and start <= h.line < start + len(lines) for h in found):
            holders.append(name)
    return holders


def diagnosis(headline: str, found: list[Hazard], attempts: list[CaptureAttempt]) -> str:
    lines = [f"{headline}."]
    lines += [f"  {h.location()}: {h.kind}: {h.message}" for h in found]
    for attempt in attempts:
        detail = attempt.error
        if attempt.divergence:
            first = attempt.divergence[0]
            detail = f"diverges on {first['label']}: {first['reason']}"
        lines.append(f"  {attempt.strategy}: {'ok' if attempt.ok else 'failed'}{': ' + detail if detail else ''}")
    return "\n".join(lines)


def _hint(found: list[Hazard], mode: str) -> str:
    if found:
        return found[0].fix + " (`edgepack doctor` explains every hazard.)"
    if mode != "auto":
        return "Try --capture auto, which falls back to scripting."
    return "Look for Python-side values computed from tensors in forward; the trace baked them in."


def _first_lines(exc: BaseException, limit: int = 6) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    lines = text.splitlines()
    if "Traceback of TorchScript" in text:  # the interpreter's own error comes after its traceback
        causes = [i for i, line in enumerate(lines) if _ERROR_LINE.match(line)]
        if causes:
            return "\n".join([lines[0]] + lines[causes[-1] :][: limit - 1])
    return "\n".join(lines[:limit])
