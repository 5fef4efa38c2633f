"""report.html: the bundle's report for people, one self-contained page with inline SVG charts.

Rendered from the two documents every bundle already holds (report.json and manifest.json), so it shows
exactly what they record and can be rendered again from any bundle. No script, no network: a Content
Security Policy forbids both, and every string from the model or the user is escaped (a hostile model
name stays text). Like report.json it holds this run's timings, so it is left out of the manifest and the
archive (see UNLISTED_FILES)."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from .svg import Bar, Box, bar_chart, box_plot

REPORT_HTML = "report.html"
# No script, no fetch of any kind; inline styles and the inline SVG only.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:900px;color:#1d2330;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde1e8;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}table{border-collapse:collapse;margin:8px 0;width:100%}
th,td{border-bottom:1px solid #e6e8ee;padding:4px 6px;text-align:left;vertical-align:top;font-size:13px}
th{background:#f4f6f9}td.num{text-align:right;font-variant-numeric:tabular-nums}code{font-size:12.5px}
.ok{color:#17733a;font-weight:600}.fail{color:#b3261e;font-weight:600}.warn{color:#8a5a00;font-weight:600}
.muted{color:#5d6677}.badge{display:inline-block;padding:1px 8px;border-radius:9px;color:#fff}
.badge.ok{background:#17733a}.badge.fail{background:#b3261e}
svg.chart{display:block;margin:8px 0;max-width:100%;height:auto}
svg text{font:12px system-ui,sans-serif;fill:#1d2330}svg text.title{font-weight:600;font-size:13px}
svg text.label{text-anchor:end}svg text.tick{text-anchor:middle;fill:#5d6677;font-size:11px}
svg text.unit{text-anchor:end;fill:#5d6677;font-size:11px}svg text.note{fill:#3c4454;font-size:11.5px}
svg line.grid{stroke:#eceef3}svg line.whisker{stroke:#6b7385;stroke-width:1.5}
svg rect.iqr{fill:#9cc3f0;stroke:#2f6db5}svg .eager rect.iqr{fill:#d5d9e2;stroke:#6b7385}
svg .baseline rect.iqr{fill:#f3d9a4;stroke:#a8741a}svg line.median{stroke:#0d2c54;stroke-width:2.5}
svg line.p90,svg line.p99{stroke:#6b7385;stroke-width:1.5}
svg rect.bar{fill:#9cc3f0}svg rect.bar.shipped{fill:#2f6db5}svg rect.bar.failed{fill:#e8a09a}
svg rect.bar.baseline{fill:#c9ced8}svg rect.bar.passed{fill:#8fc9a3}
"""


def write_html_report(bundle_dir: Path) -> Path:
    """Render report.html from the bundle's report.json and manifest.json (when present)."""
    report = json.loads((bundle_dir / "report.json").read_text(encoding="utf-8"))
    manifest_path = bundle_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else None
    path = bundle_dir / REPORT_HTML
    path.write_text(render_html(report, manifest, (bundle_dir / "manifest.sig").is_file()), encoding="utf-8")
    return path


def render_html(report: dict[str, Any], manifest: dict[str, Any] | None = None, signed: bool = False) -> str:
    """The whole page from report.json's document (and manifest.json's for provenance)."""
    title = f"{report.get('model')} for {report.get('target')}"
    sections = [
        _summary(report),
        _latency(report),
        _precision(report),
        _sensitivity(report),
        _capture(report.get("capture") or {}, report.get("artifacts", [])),
        _provenance(report, manifest, signed),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)} · edgepack report</title><style>{_STYLE}</style></head><body>"
        + "".join(sections)
        + "</body></html>\n"
    )


def _summary(report: dict[str, Any]) -> str:
    ok = bool(report.get("ok"))
    badge = f'<span class="badge {"ok" if ok else "fail"}">{"OK" if ok else "NOT OK"}</span>'
    head = (
        f"<h1>{_e(report.get('model'))} for {_e(report.get('target'))} {badge}</h1>"
        f'<p class="muted">edgepack {_e(report.get("edgepack_version"))} · {_e(report.get("threads"))} threads'
        f" · built in {_e(report.get('duration_s'))} s · {'complete' if report.get('complete') else 'partial'}"
        f" bundle · {'device-agnostic' if report.get('device_agnostic') else 'not device-agnostic'}</p>"
    )
    rows = [
        [
            _e(a["format"]),
            _precision_text(a),
            _num_cell(_kib(a.get("size_bytes"))),
            _status(a["smoke"]["status"]) + f' <span class="muted">{_e(a["smoke"]["reason"])}</span>',
            _num_cell(_ms((a.get("latency_ms") or {}).get("p50"))),
            _num_cell(_ms((a.get("latency_ms") or {}).get("p90"))),
            _num_cell(_vs_eager(a, report)),
            _budgets(a.get("budgets") or []),
        ]
        for a in report.get("artifacts", [])
    ]
    table = _table(["format", "precision", "size", "smoke test", "p50 ms", "p90 ms", "p50 vs eager", "budgets"], rows)
    problems = report.get("problems") or []
    listed = "<h3>Problems</h3>" + _list(problems) if problems else ""
    return f'<section id="summary">{head}<h2>Summary</h2>{table}{listed}</section>'


def _latency(report: dict[str, Any]) -> str:
    boxes: list[Box] = []
    eager = (report.get("baseline") or {}).get("eager_latency_ms")
    if eager:
        details = (report.get("baseline") or {}).get("eager_latency_details") or {}
        boxes.append(_box("eager PyTorch (fp32)", eager, details, "eager"))
    for a in report.get("artifacts", []):
        if a.get("latency_before_ms"):
            before = a.get("latency_before_details") or {}
            boxes.append(_box(f"{a['format']} fp32 (before)", a["latency_before_ms"], before, "baseline"))
        if a.get("latency_ms"):
            boxes.append(_box(f"{a['format']} {a['precision']}", a["latency_ms"], a.get("latency_details") or {}))
    missing = [f"{a['format']}: {a['latency_reason']}" for a in report.get("artifacts", []) if not a.get("latency_ms")]
    chart = (
        box_plot(
            boxes,
            "ms",
            "Latency per run (batch 1): box p25-p75, bar p50, ticks p90 and p99, whiskers min-max",
            "latency",
        )
        if boxes
        else '<p class="muted">No latency was measured.</p>'
    )
    note = "<h3>Not timed</h3>" + _list(missing) if missing else ""
    return f'<section id="latency"><h2>Latency against eager</h2>{chart}{note}</section>'


def _precision(report: dict[str, Any]) -> str:
    """Per quantized artifact: size and accuracy of each attempt of the ladder, beside the fp32 version."""
    parts = []
    for a in report.get("artifacts", []):
        quantization = a.get("quantization")
        if not quantization:
            continue
        attempts = quantization.get("attempts", [])
        sizes = (
            [Bar("fp32 (baseline)", _kib_value(a.get("size_before_bytes")), "baseline")]
            if a.get("size_before_bytes")
            else []
        )
        sizes += [
            Bar(_attempt_label(t), _kib_value(t.get("size_bytes")), _attempt_kind(t, quantization)) for t in attempts
        ]
        sqnr = [
            Bar(
                _attempt_label(t),
                (t.get("accuracy") or {}).get("sqnr_db"),
                _attempt_kind(t, quantization),
                "" if (t.get("accuracy") or {}).get("sqnr_db") is not None else "not measured",
            )
            for t in attempts
        ]
        rows = [
            [
                _e(_attempt_label(t)),
                _e(t.get("verdict")),
                _num_cell(_kib(t.get("size_bytes"))),
                *_accuracy_cells(t),
                _e(t.get("reason")),
            ]
            for t in attempts
        ]
        parts.append(_auto(a["format"], quantization["auto"]) if quantization.get("auto") else "")
        parts.append(
            f"<h3>{_e(a['format'])}: {_e(quantization.get('requested'))} requested, {_e(quantization.get('shipped'))} shipped</h3>"
            f'<p class="muted">Accuracy against eager fp32 on {_e(quantization.get("eval_set"))}.</p>'
            + bar_chart(sizes, "KiB", f"{a['format']}: size by precision", "size")
            + bar_chart(sqnr, "dB", f"{a['format']}: SQNR against eager fp32 (higher is closer)", "accuracy")
            + _table(["attempt", "verdict", "size", "top-1 agreement", "cosine", "SQNR dB", "reason"], rows)
        )
    if not parts:
        return ""
    return '<section id="precision"><h2>Size and accuracy by precision</h2>' + "".join(parts) + "</section>"


def _auto(format_name: str, auto: dict[str, Any]) -> str:
    """--precision auto: every candidate's p50 and size, the winner marked, and why it won."""
    candidates = auto.get("candidates", [])

    def kind(c: dict[str, Any]) -> str:
        return "shipped" if c.get("chosen") else "passed" if c.get("ok") else "failed"

    def untimed(c: dict[str, Any]) -> str:
        return "" if c.get("p50_ms") is not None else "not timed here"

    latency = [Bar(_attempt_label(c), c.get("p50_ms"), kind(c), untimed(c)) for c in candidates]
    sizes = [Bar(_attempt_label(c), _kib_value(c.get("size_bytes")), kind(c)) for c in candidates]
    rows = [
        [
            _e(_attempt_label(c)) + (" <b>(shipped)</b>" if c.get("chosen") else ""),
            _e(c.get("verdict")),
            _num_cell(_ms(c.get("p50_ms")) + (" (host only)" if c.get("host_timing_only") else "")),
            _num_cell(_kib(c.get("size_bytes"))),
            *_accuracy_cells(c),
            _e(c.get("reason")),
        ]
        for c in candidates
    ]
    left_out = auto.get("left_out") or []
    return (
        f"<h3>{_e(format_name)}: --precision auto ({_e(auto.get('criterion'))}) chose {_e(auto.get('chosen'))}</h3>"
        f"<p>{_e(str(auto.get('why') or '').rstrip('.'))}.<br>"
        f"Evidence: {_e(str(auto.get('evidence') or '').rstrip('.'))}.</p>"
        + bar_chart(latency, "ms", f"{format_name}: p50 latency of each candidate", "auto-latency")
        + bar_chart(sizes, "KiB", f"{format_name}: size of each candidate", "auto-size")
        + _table(["candidate", "verdict", "p50", "size", "top-1 agreement", "cosine", "SQNR dB", "reason"], rows)
        + (_list(left_out) if left_out else "")
    )


def _sensitivity(report: dict[str, Any]) -> str:
    parts = []
    for a in report.get("artifacts", []):
        entries = (a.get("quantization") or {}).get("sensitivity") or []
        if not entries:
            continue
        bars = [
            Bar(e["layer"], e.get("sqnr_db"), "failed" if e.get("error") else "plain", e.get("error", "")[:40])
            for e in entries
        ]
        title = f"{a['format']}: SQNR with only this layer quantized (lowest first: the costliest layers)"
        parts.append(bar_chart(bars, "dB", title, "sensitivity"))
    if not parts:
        return ""
    return '<section id="sensitivity"><h2>Per-layer quantization sensitivity</h2>' + "".join(parts) + "</section>"


def _capture(capture: dict[str, Any], artifacts: list[dict[str, Any]]) -> str:
    attempts = [
        [_e(t.get("strategy")), _status("passed" if t.get("ok") else "failed"), _e(t.get("error"))]
        for t in capture.get("attempts", [])
    ]
    hazards = [
        [
            f"<code>{_e(h.get('file'))}:{_e(h.get('line'))}</code>",
            _e(h.get("kind")),
            _e(h.get("message")),
            _e(h.get("fix")),
        ]
        for h in capture.get("hazards", [])
    ]
    rewrites = [
        [
            _e(r.get("kind")),
            f"<code>{_e(r.get('op') or '-')}</code>",
            _e(r.get("source") or "(no source line)"),
            _e(r.get("detail")),
        ]
        for r in capture.get("rewrites", [])
    ]
    caches = [
        [f"<code>{_e(c.get('file'))}:{_e(c.get('line'))}</code>", f"<code>self.{_e(c.get('attr'))}</code>"]
        for c in capture.get("caches", [])
    ]
    body = (
        f"<p>Strategy: <b>{_e(capture.get('strategy'))}</b>, checked on {_e(capture.get('checked_inputs'))} inputs.</p>"
    )
    body += _table(["strategy", "result", "error"], attempts) if attempts else ""
    body += _export(capture.get("export"))
    consumed = [
        f"{a['format']} was converted from the {a['capture_consumed']} capture."
        for a in artifacts
        if a.get("capture_consumed")
    ]
    body += _list(consumed) if consumed else ""
    body += "<h3>Hazards</h3>" + (
        _table(["where", "kind", "what", "fix"], hazards) if hazards else "<p>None found.</p>"
    )
    if "device_policy" in capture:
        body += (
            f"<h3>Devices</h3><p>Policy {_e(capture.get('device_policy'))}, traced on {_e(capture.get('trace_device'))}; "
            f"run on meta: {_e(capture.get('meta_check'))}.</p>"
        )
        body += _table(["rewrite", "op", "source", "detail"], rewrites) if rewrites else "<p>No device rewrites.</p>"
    if caches:
        body += "<h3>Caches</h3><p>Filled on the first call and reused after: captured from their cold value.</p>"
        body += _table(["where", "attribute"], caches)
    unchecked = [f"{u.get('size')}: {u.get('reason')}" for u in capture.get("unchecked_sizes", [])]
    if unchecked:
        body += "<h3>Sizes not checked (eager fails there)</h3>" + _list(unchecked)
    return f'<section id="capture"><h2>Capture</h2>{body}</section>'


def _export(export: dict[str, Any] | None) -> str:
    if not export:
        return ""
    if export.get("ok"):
        return f"<p>torch.export capture: <b>{_e(export.get('strategy'))}</b>, checked on {_e(export.get('checked_inputs'))} inputs.</p>"
    lines = [f"torch.export capture: none ({export.get('reason')})."]
    for attempt in export.get("attempts", []):
        d = attempt.get("diagnosis")
        if d:
            where = f" at {d['file']}:{d['line']}" if d.get("file") else ""
            lines.append(f"{attempt.get('strategy')}: {d.get('kind')}{where}: {d.get('message')}. Fix: {d.get('fix')}")
    return _list(lines)


def _provenance(report: dict[str, Any], manifest: dict[str, Any] | None, signed: bool) -> str:
    rows = [
        ["bundle", f"<code>{_e(report.get('bundle_dir'))}</code>"],
        ["signature", "manifest.sig (Ed25519 over manifest.json)" if signed else "not signed"],
    ]
    if manifest:
        model = manifest.get("model") or {}
        provenance = manifest.get("provenance") or {}
        git = provenance.get("git")
        rows += [
            ["model version", f"<code>{_e(model.get('version'))}</code>"],
            ["model source", f"<code>{_e(json.dumps(model.get('source'), sort_keys=True))}</code>"],
            [
                "git",
                f"<code>{_e(git['commit'])}</code>{' (dirty)' if git.get('dirty') else ''}"
                if git
                else "not in a repository",
            ],
        ]
        versions = {**(provenance.get("versions") or {}), **(manifest.get("converters") or {})}
        rows += [[_e(name), _e(version)] for name, version in sorted(versions.items()) if version]
        files = manifest.get("files") or {}
        rows.append(["files listed in the manifest", _e(len(files))])
    return f'<section id="provenance"><h2>Provenance</h2>{_table(["", ""], rows)}</section>'


# Small helpers: everything that reaches the page goes through _e.


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers) if any(headers) else ""
    body = "".join(
        "<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table>{f'<thead><tr>{head}</tr></thead>' if head else ''}<tbody>{body}</tbody></table>"


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{_e(item)}</li>" for item in items) + "</ul>"


def _num_cell(text: str) -> str:
    return f'<td class="num">{_e(text)}</td>'


def _status(status: str) -> str:
    css = {"passed": "ok", "failed": "fail"}.get(status, "warn")
    return f'<span class="{css}">{_e(status)}</span>'


def _box(label: str, latency: dict[str, Any], details: dict[str, Any], kind: str = "artifact") -> Box:
    return Box(
        label,
        latency["p50"],
        latency.get("p90"),
        latency.get("p99"),
        details.get("min"),
        details.get("p25"),
        details.get("p75"),
        details.get("max"),
        kind,
    )


def _precision_text(a: dict[str, Any]) -> str:
    requested = a.get("precision_requested") or a.get("precision")
    if requested == a.get("precision"):
        return _e(a.get("precision"))
    return f'{_e(a.get("precision"))} <span class="muted">({_e(requested)} requested)</span>'


def _vs_eager(a: dict[str, Any], report: dict[str, Any]) -> str:
    eager = (report.get("baseline") or {}).get("eager_latency_ms")
    mine = a.get("latency_ms")
    if not eager or not mine or not eager.get("p50"):
        return "-"
    return f"{mine['p50'] / eager['p50']:.2f}x"


def _budgets(budgets: list[dict[str, Any]]) -> str:
    if not budgets:
        return '<span class="muted">none checked</span>'
    return "<br>".join(
        f'<span class="{"ok" if b["ok"] else "fail"}">{_e(b["metric"])} {b["value"]:.3g} / {b["limit"]:.3g}</span>'
        for b in budgets
    )


def _attempt_label(attempt: dict[str, Any]) -> str:
    floats = attempt.get("float_layers") or []
    return attempt.get("precision", "?") + (f" + {len(floats)} float" if floats else "")


def _attempt_kind(attempt: dict[str, Any], quantization: dict[str, Any]) -> str:
    shipped = attempt.get("ok") and (attempt.get("precision"), attempt.get("float_layers") or []) == (
        quantization.get("shipped"),
        quantization.get("float_layers") or [],
    )
    return "shipped" if shipped else "passed" if attempt.get("ok") else "failed"


def _accuracy_cells(attempt: dict[str, Any]) -> list[str]:
    acc = attempt.get("accuracy") or {}
    return [
        _num_cell(_fmt(acc.get("top1_agreement"), "{:.4f}")),
        _num_cell(_fmt(acc.get("cosine"), "{:.5f}")),
        _num_cell(_fmt(acc.get("sqnr_db"), "{:.1f}")),
    ]


def _kib(size: int | None) -> str:
    return f"{size / 1024:.1f} KiB" if size is not None else "-"


def _kib_value(size: int | None) -> float | None:
    return size / 1024 if size is not None else None


def _ms(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


def _fmt(value: float | None, pattern: str) -> str:
    return pattern.format(value) if value is not None else "-"
