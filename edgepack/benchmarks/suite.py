"""One benchmark case: build the model with edgepack (its Python API, the formats and precisions it
ships), make the by-hand baselines, then time everything with one protocol in one interleaved run."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bench import Latency, interleaved_samples, summarize, torch_threads
from ..capture.flatten import flatten_model
from ..compare import compare_outputs, merge
from ..errors import EdgepackError
from ..footprint import Footprint, measure_footprint
from ..formats import FORMATS, RuntimeUnavailable, known_options
from ..inputs import parse_input_spec, sample_inputs
from ..jsonio import finite_or_none
from ..load import LoadedModel, load_model
from ..pipeline import BuildRequest, build, golden_samples
from ..smoke import PASSED, SKIPPED
from ..targets import BenchSettings, load_target
from . import by_hand
from .models import INPUTS
from .roofline import count_flops

# Which built-in target each edgepack ONNX flavour comes from: android (full onnxruntime,
# transformer fusions) ships the .ptl too; iot is the portable, standard-ops-only level.
SHIPPED_TARGETS = ("android", "iot")
# Core ML predicts only on macOS: never timed here. ExecuTorch: the XNNPACK .pte (android's and iot's settings).
TIMED_FORMATS = ("onnx", "torchscript_lite", "executorch")
# Precisions a format lists that the shipped targets' settings do not build (the XNNPACK .pte has no fp16:
# fp16 is the Core ML delegate's compute precision).
NOT_BUILT = {("executorch", "fp16")}
# Fresh processes per artifact for cold load (median) and peak memory (largest): one sample is noisy.
FOOTPRINT_REPEATS = 3
# Quantized and fp16 artifacts are judged by the parity columns, not by the fp32 smoke tolerance.
LOW_PRECISION_SMOKE = {"atol": 1.0, "rtol": 0.2, "min_cosine": 0.95}


@dataclass(frozen=True)
class Case:
    key: str
    model: str | None  # a --model reference; None is the built-in demo
    inputs: tuple[str, ...] = ()


CASES = (
    Case("demo", None),
    Case("resnet_style", "edgepack.benchmarks.models:resnet_style", (INPUTS["resnet_style"],)),
    Case("minilm_encoder", "edgepack.benchmarks.models:minilm_encoder", (INPUTS["minilm_encoder"],)),
)


@dataclass
class Row:
    """One timed candidate: eager, an edgepack artifact, or a by-hand artifact."""

    model: str
    path: str  # "eager", "edgepack", "by hand"
    format: str  # "pytorch", "onnx", "torchscript_lite"
    precision: str
    flavour: str = ""  # edgepack: which target's settings built it (onnx optimization level)
    p50_ms: float | None = None
    p90_ms: float | None = None
    runs: int = 0
    size_bytes: int | None = None
    max_abs_err: float | None = None
    cosine: float | None = None
    cold_load_ms: float | None = None
    peak_memory_mb: float | None = None
    notes: list[str] = field(default_factory=list)
    flops: int | None = None  # per inference, counted once from the eager model (roofline.count_flops)
    # The timings in the order taken (bench.interleaved_samples), for ratios with an interval; not in the JSON.
    samples_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def label(self) -> str:
        return f"{self.path} {self.format} {self.precision}" + (f" ({self.flavour})" if self.flavour else "")


@dataclass
class _Candidate:
    row: Row
    open: Callable[[], Callable[[list[np.ndarray]], list[np.ndarray]]] | None
    path: Path | None = None
    runtime_format: str | None = None  # the edgepack format whose runtime the footprint probe uses


def other_precisions(fmt: str) -> list[str]:
    """The precisions besides fp32 this edgepack version ships for a format (int8 schemes, fp16...)."""
    return [p for p in FORMATS[fmt].precisions if p != "fp32"]


def run_case(
    case: Case, settings: BenchSettings, workdir: Path, footprint: bool = True, log: Callable[[str], None] = print
) -> list[Row]:
    workdir.mkdir(parents=True, exist_ok=True)
    loaded = load_model(case.model, [parse_input_spec(s) for s in case.inputs])
    samples = golden_samples(loaded)
    args = tuple(samples[0][spec.name] for spec in loaded.inputs)
    log(f"[{case.key}] building with edgepack ({', '.join(SHIPPED_TARGETS)} settings, every shipped precision)")
    candidates = [_eager(case.key, loaded, samples[0])]
    candidates += _edgepack(case, workdir, settings.threads)
    log(f"[{case.key}] by-hand baselines")
    candidates += _by_hand(case.key, loaded.module, args, workdir, settings.threads)
    candidates += _by_hand_executorch(case.key, loaded, args, workdir, settings.threads)
    rows = _measure(case.key, loaded, samples, candidates, settings, footprint, log)
    flops = count_flops(loaded.module, args)
    for row in rows:
        row.flops = flops
    return rows


def _by_hand_executorch(key: str, loaded: LoadedModel, args: tuple, workdir: Path, threads: int) -> list[_Candidate]:
    """ExecuTorch's documented XNNPACK path as a peer, fp32 and pt2e int8 calibrated on seeded samples."""
    folder = workdir / "by_hand"
    folder.mkdir(parents=True, exist_ok=True)
    calibration = [
        tuple(s[spec.name] for spec in loaded.inputs)
        for s in (sample_inputs(loaded.inputs, loaded.module, 100 + seed) for seed in range(16))
    ]
    try:
        made = by_hand.executorch_xnnpack(loaded.module, args, folder, threads, calibration)
    except Exception as exc:  # a row saying why; the other paths still run
        made = [by_hand.failed("executorch", "fp32", exc)]
    return _by_hand_candidates(key, made)


def _eager(key: str, loaded: LoadedModel, example: dict[str, torch.Tensor]) -> _Candidate:
    flat, _ = flatten_model(loaded, example)

    def open_eager():
        def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
            return [t.numpy() for t in flat(*(torch.from_numpy(a) for a in arrays))]

        return run

    return _Candidate(Row(key, "eager", "pytorch", "fp32"), open_eager)


def _edgepack(case: Case, workdir: Path, threads: int) -> list[_Candidate]:
    """Every (format, precision) edgepack ships, built through its Python API from the built-in
    targets' format settings: fp32 in one build, each other precision in its own (one that edgepack
    refuses becomes a row saying why, and the rest still run)."""
    candidates = []
    for precision, target_files in _target_files(workdir / "targets", threads).items():
        request = BuildRequest(
            targets=[str(p) for p in target_files],
            model=case.model,
            inputs=[parse_input_spec(s) for s in case.inputs],
            name=case.key,
            out_dir=workdir / "dist",
            allow_partial=True,
            check_budgets=False,
        )
        if precision != "fp32" and case.model is not None and "calibration" in {f.name for f in fields(BuildRequest)}:
            request.calibration = str(_calibration_file(case, workdir))  # static schemes need data
        try:
            reports = build(request)
        except EdgepackError as exc:
            row = Row(case.key, "edgepack", "onnx", precision, notes=[f"not built: {exc}"])
            candidates.append(_Candidate(row, None))
            continue
        candidates += [
            _candidate(case.key, report, artifact, threads) for report in reports for artifact in report.artifacts
        ]
    return candidates


def _candidate(key: str, report, artifact, threads: int) -> _Candidate:
    row = Row(
        key,
        "edgepack",
        artifact.format,
        artifact.precision,
        flavour=report.target,
        size_bytes=artifact.size_bytes,
        notes=[n for n in artifact.notes if "graph optimization:" in n],
    )
    row.notes += [f"bundle not ok: {p}" for p in artifact.problems(report.strict, report.allow_partial)]
    if artifact.path is None or artifact.smoke.status not in (PASSED, SKIPPED):
        row.notes.append(f"not shipped: {artifact.smoke.reason}")
        return _Candidate(row, None)
    path = Path(report.bundle_dir) / artifact.path
    fmt = FORMATS[artifact.format]
    return _Candidate(row, lambda: fmt.open_for_timing(path, threads), path, artifact.format)


def _calibration_file(case: Case, workdir: Path, count: int = 16) -> Path:
    """Seeded samples like the golden ones, one array per input with the samples along axis 0: the
    reference models have random weights, so there is no real data to calibrate on."""
    loaded = load_model(case.model, [parse_input_spec(s) for s in case.inputs])
    samples = [sample_inputs(loaded.inputs, loaded.module, 100 + seed) for seed in range(count)]
    path = workdir / "calibration.npz"
    np.savez(path, **{spec.name: np.concatenate([s[spec.name].numpy() for s in samples]) for spec in loaded.inputs})
    return path


def _target_files(folder: Path, threads: int) -> dict[str, list[Path]]:
    """fp32 from each shipped target, plus every other precision edgepack has for android's formats.
    Timing inside the builds is kept short: the benchmark times everything itself, together."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[Path]] = {"fp32": []}
    seen: list[tuple[str, dict]] = []  # a format with the same settings in two targets is built (and timed) once
    for name in SHIPPED_TARGETS:
        target = load_target(name, known_options())
        formats = [f for f in target.formats if f.name in TIMED_FORMATS and (f.name, f.options) not in seen]
        seen += [(f.name, f.options) for f in formats]
        files["fp32"].append(_write_target(folder / f"{name}.toml", name, threads, [(f, "fp32") for f in formats]))
        if name != SHIPPED_TARGETS[0]:
            continue
        for scheme in sorted({p for f in formats for p in other_precisions(f.name)}):
            chosen = [
                (f, scheme)
                for f in formats
                if scheme in FORMATS[f.name].precisions and (f.name, scheme) not in NOT_BUILT
            ]
            if not chosen:
                continue
            files[scheme] = [_write_target(folder / f"{name}-{scheme}.toml", f"{name}-{scheme}", threads, chosen)]
    return files


def _write_target(path: Path, name: str, threads: int, formats: list) -> Path:
    lines = [
        f'name = "{name}"',
        "[bench]",
        f"threads = {threads}",
        "warmup = 1",
        "min_runs = 3",
        "max_runs = 3",
        "min_seconds = 0.0",
        "footprint = false",
    ]
    for settings, precision in formats:
        lines += [f"[formats.{settings.name}]", f'precision = "{precision}"']
        lines += [f"{key} = {_toml_value(value)}" for key, value in settings.options.items()]
        tolerance = vars(settings.tolerance) if precision == "fp32" else LOW_PRECISION_SMOKE
        lines += [f"[formats.{settings.name}.smoke]"] + [f"{k} = {v}" for k, v in tolerance.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def _by_hand(key: str, module: torch.nn.Module, args: tuple, workdir: Path, threads: int) -> list[_Candidate]:
    folder = workdir / "by_hand"
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    try:
        fp32 = by_hand.onnx_fp32(module, args, folder, threads)
    except Exception as exc:  # report the failure as a row; the other paths still run
        fp32 = by_hand.failed("onnx", "fp32", exc)
    made.append(fp32)
    try:
        made.append(
            by_hand.onnx_int8_dynamic(fp32, folder, threads)
            if fp32.path
            else by_hand.failed("onnx", "int8-dynamic", RuntimeError("no fp32 ONNX to quantize"))
        )
    except Exception as exc:
        made.append(by_hand.failed("onnx", "int8-dynamic", exc))
    try:
        made.append(by_hand.lite_fp32(module, args, folder))
    except Exception as exc:
        made.append(by_hand.failed("torchscript_lite", "fp32", exc))
    return _by_hand_candidates(key, made)


def _measure(
    key: str,
    loaded: LoadedModel,
    samples: list[dict[str, torch.Tensor]],
    candidates: list[_Candidate],
    settings: BenchSettings,
    footprint: bool,
    log: Callable[[str], None],
) -> list[Row]:
    names = [spec.name for spec in loaded.inputs]
    inputs = [[s[n].numpy() for n in names] for s in samples]
    calls: dict[str, Callable[[], Any]] = {}
    with torch_threads(settings.threads), torch.inference_mode():
        runners = {}
        for c in candidates:
            if c.open is None:
                continue
            try:
                runners[c.row.label] = c.open()
            except RuntimeUnavailable as exc:
                c.row.notes.append(f"not timed: {exc}")
        reference = [runners[candidates[0].row.label](x) for x in inputs]
        for c in candidates:
            run = runners.get(c.row.label)
            if run is None:
                continue
            _parity(c.row, [run(x) for x in inputs], reference)
            calls[c.row.label] = functools.partial(run, inputs[0])
        log(f"[{key}] timing {len(calls)} candidates interleaved, {settings.threads} threads")
        timings = interleaved_samples(calls, settings)
    for c in candidates:
        c.row.samples_ms = timings.get(c.row.label, [])
        _set_latency(c.row, summarize(c.row.samples_ms) if c.row.samples_ms else None)
        if footprint and c.path is not None and c.row.label in timings:
            _set_footprint(c, inputs[0], settings.threads)
    return [c.row for c in candidates]


def _parity(row: Row, got: list[list[np.ndarray]], reference: list[list[np.ndarray]]) -> None:
    verdict = merge([compare_outputs(g, r, math.inf, 0.0, -1.0) for g, r in zip(got, reference)])
    row.max_abs_err, row.cosine = finite_or_none(verdict.max_abs_err), finite_or_none(verdict.cosine)
    if verdict.non_finite:  # inf/nan figures are no numbers JSON can hold: the note says why there are none
        row.notes.append(f"inf/NaN in {verdict.non_finite} output values where eager's differ: {verdict.reason}")


def _set_latency(row: Row, latency: Latency | None) -> None:
    if latency is not None:
        row.p50_ms, row.p90_ms, row.runs = latency.p50, latency.p90, latency.runs


def _set_footprint(c: _Candidate, arrays: list[np.ndarray], threads: int) -> None:
    try:
        if c.runtime_format is None or c.path is None:
            raise RuntimeError("no artifact to probe")
        measured: Footprint = measure_footprint(c.runtime_format, c.path, arrays, threads, repeats=FOOTPRINT_REPEATS)
    except Exception as exc:  # a probe failure is reported, not fatal
        c.row.notes.append(f"footprint not measured: {exc}")
        return
    c.row.cold_load_ms, c.row.peak_memory_mb = measured.cold_load_ms, measured.peak_memory_mb


def _by_hand_candidates(key: str, made: list) -> list[_Candidate]:
    """Rows for the by-hand peers (each made artifact, or the row saying why it failed), timed like edgepack's."""
    return [
        _Candidate(
            Row(
                key,
                "by hand",
                b.format,
                b.precision,
                notes=b.notes,
                size_bytes=b.path.stat().st_size if b.path else None,
            ),
            b.open,
            b.path,
            b.format,
        )
        for b in made
    ]
