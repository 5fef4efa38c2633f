"""The torch.export capture: an `ExportedProgram` of the flattened model, checked against eager.

A second, independent product of the capture stage, for the formats built on torch.export (ONNX's
torch.export-based exporter, Core ML). Two strategies, in order:
  export-strict     torch.export.export(strict=True): TorchDynamo reads the Python source
  export-nonstrict  torch.export.export(strict=False): runs the Python, traces the tensor ops
Declared dynamic dimensions become `torch.export.Dim`s (one per symbol: the same symbol is the same
Dim), so a model whose code pins one fails instead of silently exporting a fixed size. A program is
kept only when `ep.module()` matches eager on exactly the check inputs the TorchScript ladder uses
(the ladder passes its own comparison in). A failure is diagnosed like a trace hazard: what went
wrong, the user's file:line, and the idiomatic fix. It never fails a build: formats fall back to
the TorchScript capture and say why.
"""

from __future__ import annotations

import contextlib
import re
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..compare import Comparison
from ..noise import quiet_converter, short_reason, strip_ansi
from ..user_code import _in_library, _resolved, defining_files, definition_site
from . import devices as rewrite
from .hazards import FATAL_KINDS, Hazard

STRATEGIES = ("export-strict", "export-nonstrict")
DIM_MIN = 1  # half of a small example size can be 1: the check inputs go there, so the Dim must too

# kind -> (what it means, the idiomatic fix)
EXPLANATIONS: dict[str, tuple[str, str]] = {
    "data_dependent_branch": (
        "A Python if/while on a tensor's value: torch.export records one graph for every input, so it cannot "
        "choose a branch from the data.",
        "Express the branch with torch.cond(pred, true_fn, false_fn, (x,)) or torch.where(cond, a, b) "
        "(both sides computed, one selected).",
    ),
    "guard_on_data": (
        "A tensor's value became a Python number (int(), float(), .item()) that decides shapes or control flow: "
        "torch.export cannot know it ahead of the run.",
        "Keep the value a tensor and use tensor ops; if it must be a number, bound it with torch._check(...) "
        "(torch._check_is_size for sizes), or branch with torch.cond.",
    ),
    "dim_specialized": (
        "A dimension declared dynamic was fixed to its example size by the model's code (a reshape to a "
        "constant, a Python loop over it, a check against a number).",
        "Derive sizes from the input (x.shape[1], -1 in reshape) instead of constants, vectorize loops over it; "
        "or, if the model only takes some sizes, declare that range with torch.export.Dim(name, min=..., max=...) "
        "or declare the dimension fixed.",
    ),
    "dim_range": (
        "The model's code only works for a range of sizes of a dimension declared dynamic (learned positions for "
        "at most N steps, say): torch.export will not promise every size.",
        "Declare the range the model takes with torch.export.Dim(name, min=..., max=...) as torch suggests, or make "
        "the model take every size (derive tables from the input's size).",
    ),
    "module_state": (
        "forward changes the module's state: an exported program is a pure function of its inputs, so it "
        "cannot carry a Python attribute that changes from call to call.",
        "Return the state instead of mutating it: pass the state in as an input and return the new state as an output.",
    ),
    "nondeterministic": (
        "A random op runs at inference: no exported program can be checked against eager.",
        "Keep randomness out of inference; pass noise in as an input if the model needs it.",
    ),
    "scripted_submodule": (
        "A submodule is already TorchScript (torch.jit.script): torch.export cannot look inside it.",
        "Keep the eager nn.Module in the model and let edgepack choose the capture; write the branch it "
        "scripts for with torch.cond to make it exportable.",
    ),
    "unsupported_python": (
        "Python that torch.export cannot follow (a library call on tensors such as NumPy, an unsupported builtin).",
        "Compute it with torch ops on tensors; code that only shapes the graph (constants) can stay Python.",
    ),
    "diverges": (
        "The exported program computes something else than eager PyTorch on a check input.",
        "Look for values the export fixed: sizes or Python numbers taken from the example input; "
        "`edgepack doctor` lists the check input that diverged.",
    ),
    "export_error": (
        "torch.export failed.",
        "Read the reason; `torch.export.draft_export` lists every problem at once.",
    ),
}
_FRAME_TEXT = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')
_SUGGESTED = re.compile(r"Suggested fixes:\s*\n((?:[ \t]+\S.*\n?)+)")
_SPECIALIZED = re.compile(
    r"You marked (?P<symbol>\w+) as dynamic but your code specialized it to be a constant \((?P<size>\d+)\)"
)


@dataclass(frozen=True)
class ExportDiagnosis:
    """Why an export attempt failed: kind, a short message, and the user's file:line when known."""

    kind: str
    message: str
    file: str = ""
    line: int = 0

    def location(self) -> str:
        return f"{self.file}:{self.line}" if self.file else "(unknown location)"

    @property
    def why(self) -> str:
        return EXPLANATIONS.get(self.kind, EXPLANATIONS["export_error"])[0]

    @property
    def fix(self) -> str:
        return EXPLANATIONS.get(self.kind, EXPLANATIONS["export_error"])[1]

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "message": self.message,
            "file": self.file,
            "line": self.line,
            "why": self.why,
            "fix": self.fix,
        }


@dataclass
class ExportAttempt:
    strategy: str
    ok: bool
    error: str = ""
    diagnosis: ExportDiagnosis | None = None
    divergence: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "strategy": self.strategy,
            "ok": self.ok,
            "error": self.error,
            "diagnosis": self.diagnosis.to_json() if self.diagnosis else None,
            "divergence": self.divergence,
        }


@dataclass
class ExportCapture:
    """The checked ExportedProgram (None when no strategy held), and every attempt."""

    program: torch.export.ExportedProgram | None = field(repr=False)
    strategy: str | None
    attempts: list[ExportAttempt]
    dynamic_dims: dict[str, dict[str, int | None]] = field(default_factory=dict)  # symbol -> {"min", "max"}
    checked_inputs: int = 0
    rewrites: list[rewrite.Rewrite] = field(default_factory=list)  # the FX device pass on the exported graph

    @property
    def ok(self) -> bool:
        return self.program is not None

    @property
    def reason(self) -> str:
        """Why there is no program, in one line: the first attempt's diagnosis, at the user's line."""
        if self.ok:
            return ""
        for attempt in self.attempts:
            if attempt.diagnosis is not None:
                d = attempt.diagnosis
                where = f" at {d.location()}" if d.file else ""
                return f"{attempt.strategy}: {d.kind}{where}: {d.message}"
        return self.attempts[0].error if self.attempts else "not attempted"

    def to_json(self) -> dict:
        return {
            "strategy": self.strategy,
            "ok": self.ok,
            "reason": self.reason,
            "attempts": [a.to_json() for a in self.attempts],
            "checked_inputs": self.checked_inputs,
            "dynamic_dims": self.dynamic_dims,
            "rewrites": [
                {"kind": r.kind, "op": r.op, "source": r.source, "detail": r.detail, "device": r.device}
                for r in self.rewrites
            ],
        }


def export_capture(
    flat: torch.nn.Module,
    loaded: Any,
    example: tuple[torch.Tensor, ...],
    compare: Callable[[Callable[..., Any]], list[Comparison]],
    checked_inputs: int,
    hazards: list[Hazard] = (),  # type: ignore[assignment]
) -> ExportCapture:
    """Try each strategy on `flat` (FlatModel: output names match the TorchScript capture's); keep the first
    whose program `compare` finds equal to eager on every check input."""
    dims = dynamic_dims(loaded.inputs)
    shapes = dynamic_shapes(loaded.inputs, dims)
    fatal = next((h for h in hazards if h.kind in FATAL_KINDS), None)
    attempts: list[ExportAttempt] = []
    with warnings.catch_warnings():  # torch's chatter while exporting and running programs; failures are diagnosed
        warnings.simplefilter("ignore")
        for strategy in STRATEGIES:
            program, attempt = _attempt(strategy, flat, loaded, example, shapes, compare, fatal, attempts)
            attempts.append(attempt)
            if attempt.ok and program is not None:
                found = rewrite.fx_device_kwargs(program.graph_module)  # reports literals: the export IR takes no edits
                return ExportCapture(program, strategy, attempts, _dims_json(dims), checked_inputs, found)
    return ExportCapture(None, None, attempts, _dims_json(dims), checked_inputs)


def _attempt(
    strategy: str,
    flat: torch.nn.Module,
    loaded: Any,
    example: tuple[torch.Tensor, ...],
    shapes: tuple | None,
    compare: Callable[[Callable[..., Any]], list[Comparison]],
    fatal: Hazard | None,
    earlier: list[ExportAttempt],
) -> tuple[torch.export.ExportedProgram | None, ExportAttempt]:
    """Export, then check: the program only when it held."""
    try:
        program = _export(flat, example, shapes, strict=strategy == "export-strict")
    except Exception as exc:  # torch.export raises many types; the diagnosis is the value
        found = _located(diagnose(exc, defining_files(loaded.module), definition_site(loaded.module.forward)), earlier)
        scripted = [name for name, m in loaded.module.named_modules() if isinstance(m, torch.jit.ScriptModule)]
        if scripted and found.kind in ("export_error", "unsupported_python"):  # non-strict fails calling it
            found = ExportDiagnosis(
                "scripted_submodule",
                f"TorchScript submodule(s) {', '.join(scripted)} inside the model ({found.message})",
                found.file,
                found.line,
            )
        return None, ExportAttempt(strategy, False, short_reason(exc, 300), found)
    specialized = _specialized_dims(program, loaded.inputs)
    if specialized:
        return None, ExportAttempt(
            strategy, False, "a declared dynamic dimension was fixed", ExportDiagnosis("dim_specialized", specialized)
        )
    divergence = [c.to_json() for c in compare(program.module()) if not c.ok]
    if fatal is not None:  # eager itself cannot be trusted: no check can pass
        kind = "module_state" if fatal.kind == "python_state" else "nondeterministic"
        return None, ExportAttempt(
            strategy, False, fatal.message, ExportDiagnosis(kind, fatal.message, fatal.file, fatal.line), divergence
        )
    if divergence:
        first = divergence[0]
        return None, ExportAttempt(
            strategy,
            False,
            "outputs differ from eager PyTorch on a check input",
            ExportDiagnosis("diverges", f"diverges on {first['label']}: {first['reason']}"),
            divergence,
        )
    return program, ExportAttempt(strategy, True)


def _located(found: ExportDiagnosis, earlier: list[ExportAttempt]) -> ExportDiagnosis:
    """Non-strict export names no line for a constraint violation (strict does): the earlier attempt's line,
    for the same failure, is the better one than forward's definition."""
    if found.kind not in ("dim_specialized", "dim_range"):
        return found
    for attempt in earlier:
        d = attempt.diagnosis
        if d is not None and d.kind == found.kind and d.message == found.message and d.file:
            return ExportDiagnosis(found.kind, found.message, d.file, d.line)
    return found


def dynamic_dims(inputs: list[Any]) -> dict[str, torch.export.Dim]:
    """One Dim per declared symbol, shared by every input that names it."""
    symbols = sorted({symbol for spec in inputs for symbol in spec.dynamic_axes().values()})
    return {symbol: torch.export.Dim(symbol, min=DIM_MIN) for symbol in symbols}


def dynamic_shapes(inputs: list[Any], dims: dict[str, torch.export.Dim]) -> tuple | None:
    """In the structure torch.export binds them to FlatModel.forward(*tensors): one entry (the variadic
    parameter) holding one {axis: Dim} (or None) per input tensor."""
    if not dims:
        return None
    return (tuple({axis: dims[symbol] for axis, symbol in spec.dynamic_axes().items()} or None for spec in inputs),)


def _dims_json(dims: dict[str, torch.export.Dim]) -> dict[str, dict[str, int | None]]:
    return {symbol: {"min": DIM_MIN, "max": None} for symbol in dims}


@contextlib.contextmanager
def without_fused_attention() -> Iterator[None]:
    """nn.MultiheadAttention / TransformerEncoderLayer take a fused "fast path" at inference without
    grad; traced, it becomes one fused op (`_transformer_encoder_layer_fwd`) that Core ML, the
    quantizers and older lite runtimes do not know. Trace the plain ops instead."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def _export(
    flat: torch.nn.Module, example: tuple[torch.Tensor, ...], shapes: tuple | None, strict: bool
) -> torch.export.ExportedProgram:
    with quiet_converter(), without_fused_attention(), rnn_decompositions(shapes is not None):
        return torch.export.export(flat, example, dynamic_shapes=shapes, strict=strict)


@contextlib.contextmanager
def rnn_decompositions(dynamic: bool) -> Iterator[None]:
    """With dynamic sizes, LSTM/GRU decompose into a while loop over the sequence instead of being unrolled
    to the example's length (what torch.onnx does too). Needed while exporting and while decomposing
    the program again (the ONNX exporter does): outside it, the sequence dimension is specialized."""
    if not dynamic:
        yield
        return
    try:
        from torch.export._patches import register_gru_while_loop_decomposition, register_lstm_while_loop_decomposition
    except ImportError:  # an older torch: recurrent layers then specialize, and the attempt says so
        yield
        return
    with register_lstm_while_loop_decomposition(), register_gru_while_loop_decomposition():
        yield


def _specialized_dims(program: torch.export.ExportedProgram, inputs: list[Any]) -> str:
    """Declared dynamic axes that are plain integers in the program's input placeholders ("" when none)."""
    user_inputs = program.graph_signature.user_inputs
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    fixed = []
    for spec, name in zip(inputs, user_inputs):
        value = placeholders[name].meta.get("val") if name in placeholders else None
        if value is None:
            continue
        for axis, symbol in spec.dynamic_axes().items():
            if isinstance(value.shape[axis], int):
                fixed.append(f"{spec.name}[{axis}] ({symbol}) fixed to {value.shape[axis]}")
    return "; ".join(fixed)


def diagnose(exc: BaseException, files: list[str], fallback: str | None = None) -> ExportDiagnosis:
    """Kind, a short message and the user's file:line for a torch.export failure; `fallback` ("file:line (code)",
    forward's definition) when no frame of the user's code is known (torch's constraint errors name none)."""
    text = strip_ansi(str(exc))
    name = type(exc).__name__
    file, line = _user_frame(exc, text, files)
    if not file and fallback:
        where = re.match(r"(?P<file>.+?):(?P<line>\d+)(?: \(|$)", fallback)
        if where:
            file, line = where["file"], int(where["line"])
    specialized = _SPECIALIZED.findall(text)
    if specialized:
        dims = ", ".join(f"{symbol} to its example size {size}" for symbol, size in specialized)
        return ExportDiagnosis(
            "dim_specialized", f"torch.export specialized the declared dynamic dimension {dims}", file, line
        )
    if "Constraints violated" in text:
        suggested = _SUGGESTED.search(text)
        fixes = "; ".join(row.strip() for row in suggested.group(1).splitlines() if row.strip()) if suggested else ""
        return ExportDiagnosis(
            "dim_range",
            "the model takes only some sizes of a declared dynamic dimension"
            + (f" (torch suggests {fixes})" if fixes else ""),
            file,
            line,
        )
    if "Data-dependent branching" in text or "attempted to jump with TensorVariable" in text:
        return ExportDiagnosis("data_dependent_branch", "a Python branch on a tensor's value", file, line)
    if name == "GuardOnDataDependentSymNode" or "data-dependent expression" in text:
        code = _code_at(file, line)
        branch = (
            bool(re.match(r"(if|elif|while)\b", code))
            and ".item()" not in code
            and "int(" not in code
            and "float(" not in code
        )
        kind = "data_dependent_branch" if branch else "guard_on_data"
        what = "a Python branch on a tensor's value" if branch else "a tensor's value used as a Python number"
        return ExportDiagnosis(kind, what, file, line)
    if "torch.jit.script" in text or "ScriptModule" in text or "RecursiveScriptModule" in text:
        return ExportDiagnosis("scripted_submodule", "a TorchScript submodule inside the model", file, line)
    if re.search(r"mutat|side.effect", text, re.IGNORECASE):
        return ExportDiagnosis("module_state", _first_line(text), file, line)
    if name in ("Unsupported", "UncapturedHigherOrderOpError") or "Unsupported" in text[:200]:
        return ExportDiagnosis("unsupported_python", _first_line(text), file, line)
    return ExportDiagnosis("export_error", short_reason(exc, 200), file, line)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return first if len(first) <= 200 else first[:197] + "..."


def _user_frame(exc: BaseException, text: str, files: list[str]) -> tuple[str, int]:
    """The innermost frame in the model's own files, from the message (strict export reports the frames of
    the code TorchDynamo read) and from the traceback (non-strict export runs the user's code); else the
    innermost frame outside torch, edgepack and the standard library."""
    frames = [(m["file"], int(m["line"])) for m in _FRAME_TEXT.finditer(text)]
    frames += [(f.filename, f.lineno or 0) for f in traceback.extract_tb(exc.__traceback__)]
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc:
        frames += [(f.filename, f.lineno or 0) for f in traceback.extract_tb(cause.__traceback__)]
    wanted = {_resolved(f) for f in files if f}
    for file, line in reversed(frames):
        if _resolved(file) in wanted:
            return file, line
    for file, line in reversed(frames):
        if not _in_library(file) and Path(file).is_file():
            return file, line
    return "", 0


def _code_at(file: str, line: int) -> str:
    import linecache

    return linecache.getline(file, line).strip() if file else ""
