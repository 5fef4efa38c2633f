"""`edgepack inspect`: what a bundle holds, for people (rich tables) and scripts (--json).

Read-only and cheap: the manifest (schema-checked) and, when present, report.json for latency.
It does not check hashes or run anything; `edgepack verify` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..datafiles import loads_json
from .manifest import MANIFEST, read_manifest
from .verify import opened_bundle


def inspect_bundle(path: Path) -> dict[str, Any]:
    """The manifest's essentials, with each artifact's latency from report.json when the bundle has one."""
    with opened_bundle(path) as bundle_dir:
        manifest = read_manifest(bundle_dir / MANIFEST)
        latency = _latency_by_format(bundle_dir / "report.json")
        signed = (bundle_dir / "manifest.sig").is_file()
    artifacts = [
        {
            **{k: a[k] for k in ("format", "path", "precision", "size_bytes", "sha256", "smoke", "capture_strategy")},
            "requirements": _requirements_text(a["requirements"]),
            "latency_ms": latency.get(a["format"]),
        }
        for a in manifest["artifacts"]
    ]
    return {
        "path": str(path),
        "model": manifest["model"],
        "target": manifest["target"],
        "inputs": manifest["inputs"],
        "outputs": manifest["outputs"],
        "labels": manifest["labels"],
        "artifacts": artifacts,
        "provenance": manifest["provenance"],
        "golden": manifest["golden"],
        "signed": signed,
        "build": manifest.get("build"),
        "latency_source": "report.json" if latency else None,
    }


def print_summary(summary: dict[str, Any], console: Console) -> None:
    model, prov = summary["model"], summary["provenance"]
    console.print(
        f"[bold]{model['name']}[/] for [bold]{summary['target']['name']}[/]  "
        f"(model version {model['version'] or '-'}, {'signed' if summary['signed'] else 'not signed'})",
        highlight=False,
    )
    _print_build(summary["build"], console)
    console.print(_io_table("inputs", summary["inputs"], with_layout=True))
    console.print(_io_table("outputs", summary["outputs"], with_layout=False))
    if summary["labels"]:
        console.print(
            f"labels: {', '.join(summary['labels'][:20])}{' ...' if len(summary['labels']) > 20 else ''}",
            highlight=False,
        )
    console.print(_artifact_table(summary["artifacts"]))
    for a in summary["artifacts"]:
        console.print(escape(f"  {a['path']}: {a['requirements']}; sha256 {a['sha256']}"), highlight=False)
    console.print(_provenance_table(prov))


def _print_build(build: dict[str, Any] | None, console: Console) -> None:
    if build is None:
        console.print("build: outcome not recorded (manifest from an older edgepack)", highlight=False)
        return
    if not build["ok"]:
        console.print("[red]build: FAILED[/], do not ship this bundle:", highlight=False)
        for problem in build["problems"]:
            console.print(f"  [red]problem:[/] {escape(problem)}", highlight=False)
    else:
        console.print("build: [green]passed[/]" + (" (partial)" if build["left_out"] else ""), highlight=False)
    for entry in build["left_out"]:
        console.print(escape(f"  left out: {entry['format']}: {entry['reason']}"), highlight=False)


def _io_table(title: str, specs: list[dict[str, Any]], with_layout: bool) -> Table:
    table = Table(title=title, title_justify="left")
    columns = ["name", "shape", "dtype", "dynamic"] + (["layout", "preprocessing"] if with_layout else [])
    for column in columns:
        table.add_column(column)
    for spec in specs:
        dynamic = ", ".join(f"axis {axis}: {symbol}" for axis, symbol in spec["dynamic_axes"].items()) or "-"
        row = [spec["name"], "x".join(str(d) for d in spec["shape"]), spec["dtype"], dynamic]
        if with_layout:
            pre = spec.get("preprocessing") or {}
            row += [spec.get("layout") or "-", ", ".join(f"{k}={v}" for k, v in pre.items()) or "-"]
        table.add_row(*row)
    return table


def _artifact_table(artifacts: list[dict[str, Any]]) -> Table:
    table = Table(title="artifacts", title_justify="left")
    for column in ("format", "file", "precision", "size", "smoke", "p50 ms"):
        table.add_column(column, justify="right" if column in ("size", "p50 ms") else "left")
    for a in artifacts:
        colour = {"passed": "green", "skipped": "yellow"}.get(a["smoke"], "red")
        p50 = f"{a['latency_ms']['p50']:.3f}" if a["latency_ms"] else "-"
        table.add_row(
            a["format"],
            a["path"],
            a["precision"],
            f"{a['size_bytes'] / 1024:.1f} KiB",
            f"[{colour}]{a['smoke']}[/]",
            p50,
        )
    return table


def _provenance_table(prov: dict[str, Any]) -> Table:
    table = Table(title="provenance", title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    source = prov["source"]
    git = prov["git"]
    rows = [
        ("model source", f"{source['reference']} ({source['kind']})"),
        ("module file", source.get("module_file") or "-"),
        ("weights", f"{source['weights'] or '-'}  sha256 {source['weights_sha256'] or '-'}"),
        (
            "git",
            f"{git['commit']}{' (dirty)' if git['dirty'] else ''}"
            if git
            else "built into edgepack"
            if source["kind"] == "builtin-demo"
            else "not a git checkout",
        ),
        ("target file", f"{prov['target']['file']}  sha256 {prov['target']['sha256']}"),
        ("capture", f"{prov['capture']['strategy']}; rewrites: {len(prov['capture']['rewrites'])}"),
        ("built", f"{prov['build_time']} (from {prov['build_time_source']})"),
        ("edgepack", prov["edgepack_version"]),
        ("libraries", ", ".join(f"{k} {v}" for k, v in prov["versions"].items() if v)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def _requirements_text(requirements: dict[str, Any]) -> str:
    parts = [
        f"{key} {requirements[key]}"
        for key in ("minimum_deployment_target", "bytecode_version", "opset")
        if key in requirements
    ]
    if "operators" in requirements:
        parts.append(f"{len(requirements['operators'])} operators")
    if "ort_format" in requirements:
        parts.append(f"+ {requirements['ort_format']['path']}")
    return ", ".join(parts)


def _latency_by_format(report_path: Path) -> dict[str, dict]:
    if not report_path.is_file():
        return {}
    try:
        report = loads_json(report_path.read_text(encoding="utf-8"))
        return {a["format"]: a["latency_ms"] for a in report.get("artifacts", []) if a.get("latency_ms")}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError):
        return {}  # the report is informational; a damaged one only loses the latency column
