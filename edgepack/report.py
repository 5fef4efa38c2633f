"""Reports: report.json (a contract firmware scripts read: keep its keys stable) and report.md for people."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .bench import Latency
from .footprint import Footprint
from .hostarch import LatencyOrigin
from .smoke import FAILED, PASSED, SKIPPED, SmokeResult

REPORT_SCHEMA_VERSION = 1


@dataclass
class BudgetCheck:
    metric: str
    limit: float
    value: float
    # False: the value is a host measurement of a budget meant for the device (hostarch): shown, never failed.
    applied: bool = True

    @property
    def ok(self) -> bool:
        return not self.applied or self.value <= self.limit

    def to_json(self) -> dict:
        return {"metric": self.metric, "limit": self.limit, "value": self.value, "ok": self.ok, "applied": self.applied}


@dataclass
class ArtifactDevices:
    """The device check on a saved artifact: the placements its code records, read back from the file."""

    checked: bool  # False: the format records no placement (its runtime places every tensor)
    device_agnostic: bool
    pinned: list[str]
    kept: list[str]  # literals the policy keeps on purpose (a deliberate .cpu())
    note: str

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "device_agnostic": self.device_agnostic,
            "pinned": self.pinned,
            "kept": self.kept,
            "note": self.note,
        }


@dataclass
class ArtifactReport:
    format: str
    precision: str
    path: str | None = None  # relative to the bundle folder
    size_bytes: int | None = None
    sha256: str | None = None
    smoke: SmokeResult = field(default_factory=lambda: SmokeResult(FAILED, "not built"))
    latency: Latency | None = None
    latency_reason: str = ""
    latency_measured_on: str | None = None  # "x86_64 host" when not the target's architecture (hostarch)
    requirements: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    budgets: list[BudgetCheck] = field(default_factory=list)
    cold_load_ms: float | None = None  # load + first run, in a fresh process
    peak_memory_mb: float | None = None  # peak RSS growth while loading and running once
    footprint_reason: str = ""
    # The device check on the saved artifact: {"checked", "device_agnostic", "pinned", "kept", "note"}.
    devices: ArtifactDevices | None = None
    # Quantization: what was asked for, the fp32 version's size and latency, accuracy against eager
    # fp32 on the evaluation set, and the ladder's attempts (None when the format was built in fp32 as asked).
    precision_requested: str | None = None
    size_before_bytes: int | None = None
    # Weight data in the artifact and in its fp32 version (Format.weight_bytes): the part of the size
    # quantization shrinks, so that a ratio above ~0.25 can be told apart from the format's fixed overhead.
    weight_bytes: int | None = None
    weight_bytes_before: int | None = None
    latency_before: Latency | None = None
    accuracy: Any = None  # edgepack.quantize.accuracy.Accuracy
    quantization: dict[str, Any] | None = None
    # Which capture the artifact was converted from: "export" or "torchscript" (None: not emitted).
    capture_consumed: str | None = None

    @property
    def size_ratio(self) -> float | None:
        """The artifact's size over its fp32 version's (None when there is none)."""
        return _ratio(self.size_bytes, self.size_before_bytes)

    @property
    def weight_ratio(self) -> float | None:
        return _ratio(self.weight_bytes, self.weight_bytes_before)

    @property
    def latency_ratio(self) -> float | None:
        """p50 over the fp32 version's p50, timed in the same run."""
        return _ratio(
            self.latency.p50 if self.latency else None, self.latency_before.p50 if self.latency_before else None
        )

    def problems(self, strict: bool, allow_partial: bool = False) -> list[str]:
        found: list[str] = []
        if self.path is None and allow_partial:
            return found  # not emitted, and the user accepts a partial bundle
        if self.smoke.status == FAILED or (strict and self.smoke.status == SKIPPED):
            stage = "" if self.path is None else f"smoke test {self.smoke.status}: "  # not built: the reason says why
            found.append(f"{self.format}: {stage}{self.smoke.reason}")
        found += [
            f"{self.format}: {b.metric} {b.value:.3g} exceeds the budget {b.limit:.3g}"
            for b in self.budgets
            if not b.ok
        ]
        if self.devices and self.devices.pinned:
            found.append(f"{self.format}: not device-agnostic: the saved code pins {'; '.join(self.devices.pinned)}")
        return found

    def to_json(self) -> dict:
        return {
            "format": self.format,
            "path": self.path,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "precision": self.precision,
            "smoke": self.smoke.to_json(),
            "latency_ms": self.latency.to_json() if self.latency else None,
            "latency_reason": self.latency_reason,
            "latency_measured_on": self.latency_measured_on,
            "latency_details": self.latency.details() if self.latency else None,
            "cold_load_ms": self.cold_load_ms,
            "peak_memory_mb": self.peak_memory_mb,
            "footprint_method": Footprint.METHOD if self.cold_load_ms is not None else self.footprint_reason,
            "budgets": [b.to_json() for b in self.budgets],
            "requirements": self.requirements,
            "capture_consumed": self.capture_consumed,
            "devices": self.devices.to_json() if self.devices else None,
            "notes": self.notes,
            "precision_requested": self.precision_requested or self.precision,
            "size_before_bytes": self.size_before_bytes,
            "size_ratio": self.size_ratio,
            "weight_bytes": self.weight_bytes,
            "weight_bytes_before": self.weight_bytes_before,
            "weight_ratio": self.weight_ratio,
            "accuracy": self.accuracy.to_json() if self.accuracy is not None else None,
            "latency_before_ms": self.latency_before.to_json() if self.latency_before else None,
            "latency_before_details": self.latency_before.details() if self.latency_before else None,
            "latency_ratio": self.latency_ratio,
            "quantization": self.quantization,
        }


@dataclass
class BuildReport:
    target: str
    model: str
    bundle_dir: str
    artifacts: list[ArtifactReport]
    capture: dict[str, Any]
    eager_latency: Latency | None
    threads: int
    strict: bool = False
    allow_partial: bool = False
    duration_s: float = 0.0
    latency_origin: LatencyOrigin | None = None  # where latency was measured, against the target's CPU

    @property
    def problems(self) -> list[str]:
        found = [p for a in self.artifacts for p in a.problems(self.strict, self.allow_partial)]
        if self.complete or any(a.path is not None for a in self.artifacts):
            return found
        # --allow-partial hides each format's own failure; with nothing left, they are the reasons.
        causes = [] if found else [f"{a.format}: {a.smoke.reason}" for a in self.artifacts]
        return found + causes + ["no artifact could be built"]

    @property
    def complete(self) -> bool:
        return all(a.path is not None for a in self.artifacts)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def device_agnostic(self) -> bool:
        """The capture and every saved artifact that records placements follow the input's device
        (or only the devices the policy keeps)."""
        return bool(self.capture.get("device_agnostic", True)) and all(
            a.devices.device_agnostic for a in self.artifacts if a.devices and a.devices.checked
        )

    def to_json(self) -> dict:
        return {
            "schema_version": REPORT_SCHEMA_VERSION,
            "target": self.target,
            "model": self.model,
            "bundle_dir": self.bundle_dir,
            "ok": self.ok,
            "complete": self.complete,
            "problems": self.problems,
            "device_agnostic": self.device_agnostic,
            "artifacts": [a.to_json() for a in self.artifacts],
            "baseline": {
                "eager_latency_ms": self.eager_latency.to_json() if self.eager_latency else None,
                "eager_latency_details": self.eager_latency.details() if self.eager_latency else None,
            },
            "threads": self.threads,
            "latency_measured_on": self.latency_origin.to_json() if self.latency_origin else None,
            "capture": self.capture,
            "edgepack_version": __version__,
            "duration_s": round(self.duration_s, 2),
        }

    def to_markdown(self) -> str:
        lines = [
            f"# {self.model} for {self.target}",
            "",
            f"Result: **{'OK' if self.ok else 'NOT OK'}** · edgepack {__version__} · {self.threads} threads",
            "",
        ]
        eager = self.eager_latency
        origin = self.latency_origin
        if origin is not None:
            lines += [
                f"Latency: {'**host measurement**: ' if origin.host_measurement else ''}{origin.budget_note}.",
                "",
            ]
        where = f" ({origin.label})" if origin is not None and origin.host_measurement else ""
        lines += [
            f"| format | precision | size | smoke | max abs err | cosine | p50 ms{where} | p90 ms | p99 ms | p50 vs eager |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        if eager:
            lines.append(
                f"| eager PyTorch | fp32 | | | | | {eager.p50:.3f} | {eager.p90:.3f} | {eager.p99:.3f} | 1.00x |"
            )
        for a in self.artifacts:
            lines.append(_markdown_row(a, eager))
        lines += _precision_section(self.artifacts)
        lines += ["", "## Smoke tests", ""] + [
            f"- **{a.format}** {a.smoke.status}: {a.smoke.reason}" for a in self.artifacts
        ]
        skipped_latency = [a for a in self.artifacts if a.latency is None and a.latency_reason]
        if skipped_latency:
            lines += ["", "## Latency not measured", ""] + [
                f"- **{a.format}**: {a.latency_reason}" for a in skipped_latency
            ]
        measured = [a for a in self.artifacts if a.cold_load_ms is not None]
        if measured:
            lines += ["", "## Cold start and memory", "", f"Method: {Footprint.METHOD}.", ""]
            lines += [
                f"- **{a.format}**: cold load + first run {a.cold_load_ms:.1f} ms, peak memory +{a.peak_memory_mb:.1f} MiB"
                for a in measured
            ]
        hazards = self.capture.get("hazards", [])
        lines += ["", "## Capture", "", f"Strategy: {self.capture.get('strategy')}."]
        lines += [
            f"- attempt {a['strategy']}: {'ok' if a['ok'] else 'failed'} {a['error']}".rstrip()
            for a in self.capture.get("attempts", [])
        ]
        lines += [f"- hazard at {h['file']}:{h['line']}: {h['kind']}: {h['message']}. Fix: {h['fix']}" for h in hazards]
        lines += _export_markdown(self.capture.get("export"), self.artifacts)
        lines += [
            f"- not checked at {u['size']}: eager PyTorch fails there ({u['reason']}); the bundle accepts that size "
            "but nothing checked what it returns"
            for u in self.capture.get("unchecked_sizes", [])
        ]
        lines += _devices_markdown(self.capture, self.artifacts)
        notes = [(a.format, n) for a in self.artifacts for n in a.notes]
        if notes:
            lines += ["", "## Notes", ""] + [f"- {fmt}: {note}" for fmt, note in notes]
        if self.problems:
            lines += ["", "## Problems", ""] + [f"- {p}" for p in self.problems]
        return "\n".join(lines) + "\n"


def _export_markdown(export: dict[str, Any] | None, artifacts: list[ArtifactReport]) -> list[str]:
    """The torch.export capture: which strategy held (or why none did, with the line and fix), and which
    capture each artifact was converted from."""
    if not export:
        return []
    if export["ok"]:
        lines = [f"- torch.export capture: {export['strategy']}, checked on {export['checked_inputs']} inputs."]
    else:
        lines = [f"- torch.export capture: none ({export['reason']})."]
        for attempt in export["attempts"]:
            d = attempt.get("diagnosis")
            if d:
                where = f" at {d['file']}:{d['line']}" if d["file"] else ""
                lines.append(f"  - {attempt['strategy']}: {d['kind']}{where}: {d['message']}. Fix: {d['fix']}")
    lines += [
        f"- {a.format} was converted from the {a.capture_consumed} capture." for a in artifacts if a.capture_consumed
    ]
    return lines


def _devices_markdown(capture: dict[str, Any], artifacts: list[ArtifactReport]) -> list[str]:
    if "device_policy" not in capture:
        return []
    verdict = "device-agnostic" if capture["device_agnostic"] else "**not device-agnostic**"
    lines = [
        "",
        "## Devices",
        "",
        f"Policy {capture['device_policy']}, traced on {capture['trace_device']}: {verdict}. "
        f"Run on `meta`: {capture['meta_check']}.",
    ]
    lines += [
        f"- {r['kind']} `{r['op'] or '-'}` at {r['source'] or '(no source line)'}: {r['detail']}"
        for r in capture["rewrites"]
    ]
    for a in artifacts:
        if a.devices and a.devices.checked:
            found = "; ".join(a.devices.pinned) or "nothing pinned"
            kept = f" (kept on purpose: {'; '.join(a.devices.kept)})" if a.devices.kept else ""
            lines.append(f"- saved {a.format} code: {found}{kept}")
    return lines


def _ratio(after: float | None, before: float | None) -> float | None:
    return None if after is None or not before else after / before


def _precision_section(artifacts: list[ArtifactReport]) -> list[str]:
    """Before and after quantization side by side, then every ladder attempt with its figures."""
    quantized = [a for a in artifacts if a.quantization is not None]
    if not quantized:
        return []
    lines = [
        "",
        "## Precision",
        "",
        f"Accuracy against eager fp32 on {(quantized[0].quantization or {}).get('eval_set')}.",
        "",
        "| format | requested | shipped | size fp32 | size | ratio | weights ratio | top-1 agreement | cosine | max abs err | SQNR dB | p50 fp32 ms | p50 ms | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in quantized:
        acc = a.accuracy
        lines.append(
            "| "
            + " | ".join(
                [
                    a.format,
                    a.precision_requested or a.precision,
                    a.precision,
                    _kib(a.size_before_bytes),
                    _kib(a.size_bytes),
                    _fmt(a.size_ratio, "{:.2f}x"),
                    _fmt(a.weight_ratio, "{:.2f}x"),
                    _fmt(acc.top1_agreement if acc else None, "{:.4f}"),
                    _fmt(acc.cosine if acc else None, "{:.5f}"),
                    _fmt(acc.max_abs_err if acc else None, "{:.3g}"),
                    _fmt(acc.sqnr_db if acc else None, "{:.1f}"),
                    _fmt(a.latency_before.p50 if a.latency_before else None, "{:.3f}"),
                    _fmt(a.latency.p50 if a.latency else None, "{:.3f}"),
                    _fmt(a.latency_ratio, "{:.2f}x"),
                ]
            )
            + " |"
        )
    lines += _auto_section(quantized)
    lines += [
        "",
        "The weights ratio compares the weight data alone; the rest of a file (code, graph, names, "
        "quantization scales) is a fixed cost that weighs more the smaller the model.",
        "",
        "Ladder attempts:",
        "",
    ]
    for a in quantized:
        for attempt in (a.quantization or {}).get("attempts", []):
            kept = f" (float: {', '.join(attempt['float_layers'])})" if attempt["float_layers"] else ""
            lines.append(
                f"- **{a.format}** {attempt['precision']}{kept}: {attempt['verdict']}, "
                f"{_kib(attempt['size_bytes'])}: {attempt['reason']}"
            )
    return lines


def _auto_section(quantized: list[ArtifactReport]) -> list[str]:
    """--precision auto: every candidate with its figures and verdict, and why the winner won."""
    lines: list[str] = []
    for a in quantized:
        auto = (a.quantization or {}).get("auto")
        if not auto:
            continue
        lines += [
            "",
            f"### {a.format}: --precision auto (optimize for {auto['criterion']})",
            "",
            f"Chose **{auto['chosen']}**: {auto['why']}. Evidence: {auto['evidence']}.",
            "",
            "| precision | verdict | top-1 agreement | cosine | SQNR dB | p50 ms | size | timing |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in auto["candidates"]:
            acc = c["accuracy"] or {}
            name = f"**{c['precision']}** (shipped)" if c["chosen"] else c["precision"]
            lines.append(
                f"| {name} | {c['verdict']} | {_fmt(acc.get('top1_agreement'), '{:.4f}')} | "
                f"{_fmt(acc.get('cosine'), '{:.5f}')} | {_fmt(acc.get('sqnr_db'), '{:.1f}')} | "
                f"{_fmt(c['p50_ms'], '{:.3f}')} | {_kib(c['size_bytes'])} | {c['timing']} |"
            )
        if auto["eager_p50_ms"] is not None:
            lines += ["", f"Eager PyTorch p50 in the same run: {auto['eager_p50_ms']:.3f} ms."]
        lines += [f"- not tried: {why}" for why in auto["left_out"]]
    return lines


def _kib(size: int | None) -> str:
    return f"{size / 1024:.1f} KiB" if size is not None else "-"


def _fmt(value: float | None, pattern: str) -> str:
    return pattern.format(value) if value is not None else "-"


def _markdown_row(a: ArtifactReport, eager: Latency | None) -> str:
    size = f"{a.size_bytes / 1024:.1f} KiB" if a.size_bytes is not None else "-"
    err = f"{a.smoke.max_abs_err:.2e}" if a.smoke.max_abs_err is not None else "-"
    cos = f"{a.smoke.cosine:.6f}" if a.smoke.cosine is not None else "-"
    if a.latency:
        lat = a.latency
        ratio = f"{lat.p50 / eager.p50:.2f}x" if eager and eager.p50 > 0 else "-"
        timing = f"{lat.p50:.3f} | {lat.p90:.3f} | {lat.p99:.3f} | {ratio}"
    else:
        timing = "- | - | - | -"
    return f"| {a.format} | {a.precision} | {size} | {a.smoke.status} | {err} | {cos} | {timing} |"


__all__ = ["ArtifactReport", "BudgetCheck", "BuildReport", "PASSED", "FAILED", "SKIPPED", "REPORT_SCHEMA_VERSION"]
