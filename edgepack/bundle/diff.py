"""`edgepack compare OLD NEW`: what changed between two builds, for a person reading a CI log and for a gate.

OLD and NEW are bundle folders (dist/<model>/<target>), their .zip (`build --archive`), or model folders
(dist/<model>) holding one bundle per target; targets present in both are compared. Per artifact present in
both: size, latency (p50/p90, from report.json), accuracy against eager fp32, smoke result, precision, capture;
per bundle: the input/output signature, the model version, the converter and runtime versions.

Latency is noisy, so a latency change is flagged only when it exceeds both a relative threshold and the
run-to-run spread the two reports recorded (p90 - p50 for the median, p99 - p90 for p90); and never when the
artifact's bytes, every library version and the timing thread count are the same in both builds: the same file
on the same runtime differs only by the machine it was timed on. Reads JSON only: no torch, no runtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..datafiles import loads_json
from ..errors import UsageError
from .gates import Gate
from .manifest import MANIFEST, read_manifest
from .verify import opened_bundle

SIZE_RELATIVE = 0.01  # a size change beyond 1 % is flagged (rebuilds of the same model give the same bytes)
LATENCY_RELATIVE = 0.10  # and a latency change beyond 10 %, when it is also beyond the timings' spread
ACCURACY_PT = 0.5  # and a top-1 agreement drop beyond half a percentage point


@dataclass(frozen=True)
class BuiltBundle:
    """What compare reads of one bundle: its manifest, and report.json when present (archives leave it out)."""

    label: str
    manifest: dict[str, Any]
    report: dict[str, Any] | None

    @property
    def target(self) -> str:
        return str(self.manifest["target"]["name"])

    def artifacts(self) -> dict[str, dict[str, Any]]:
        return {a["format"]: a for a in self.manifest["artifacts"]}

    def reported(self, fmt: str) -> dict[str, Any]:
        """The artifact's entry in report.json ({} without a report)."""
        for entry in (self.report or {}).get("artifacts", []):
            if entry.get("format") == fmt:
                return dict(entry)
        return {}


@dataclass
class Change:
    scope: str  # an artifact's format, or "bundle"
    metric: str
    old: Any
    new: Any
    change: str  # for people: "+12.3%", "+1.20 ms", "fp32 -> int8-static"
    flagged: bool
    note: str = ""
    relative: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "metric": self.metric,
            "old": self.old,
            "new": self.new,
            "change": self.change,
            "relative": self.relative,
            "flagged": self.flagged,
            "note": self.note,
        }


@dataclass
class GateResult:
    gate: str
    target: str
    artifact: str
    failed: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__}


@dataclass
class TargetDiff:
    target: str
    old: str
    new: str
    changes: list[Change] = field(default_factory=list)
    latency: str = ""  # where the latency figures came from, or why they were not compared

    @property
    def flagged(self) -> list[Change]:
        return [c for c in self.changes if c.flagged]

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "old": self.old,
            "new": self.new,
            "latency": self.latency,
            "flagged": len(self.flagged),
            "changes": [c.to_json() for c in self.changes],
        }


@dataclass
class BundleDiff:
    old: str
    new: str
    targets: list[TargetDiff]
    only_old: list[str]  # targets OLD has and NEW lacks
    only_new: list[str]
    gates: list[GateResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No --fail-on rule failed (without rules, always: the comparison is a report)."""
        return not any(g.failed for g in self.gates)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "old": self.old,
            "new": self.new,
            "flagged": sum(len(t.flagged) for t in self.targets),
            "targets": [t.to_json() for t in self.targets],
            "targets_only_old": self.only_old,
            "targets_only_new": self.only_new,
            "gates": [g.to_json() for g in self.gates],
            "failed_gates": [g.to_json() for g in self.gates if g.failed],
            "thresholds": {
                "size_relative": SIZE_RELATIVE,
                "latency_relative": LATENCY_RELATIVE,
                "accuracy_pt": ACCURACY_PT,
            },
        }


def compare_bundles(old: Path, new: Path, gates: list[Gate] | None = None) -> BundleDiff:
    """Every difference between the bundles at `old` and `new` (UsageError when either is not a bundle)."""
    olds, news = read_bundles(old), read_bundles(new)
    common = [t for t in olds if t in news]
    if not common:
        raise UsageError(
            f"{old} and {new} have no target in common (OLD: {', '.join(olds)}; NEW: {', '.join(news)}).",
            "Compare bundles of the same target: dist/<model>/<target> (or its .zip), or dist/<model> for all.",
        )
    result = BundleDiff(
        str(old),
        str(new),
        [diff_bundle(olds[t], news[t]) for t in common],
        [t for t in olds if t not in news],
        [t for t in news if t not in olds],
    )
    for target in common:
        result.gates += evaluate_gates(gates or [], olds[target], news[target])
    return result


def read_bundles(path: Path) -> dict[str, BuiltBundle]:
    """Target name -> bundle: one for a bundle folder or .zip, each passing target's for a model folder."""
    if path.is_dir() and not (path / MANIFEST).exists():
        folders = sorted(p for p in path.iterdir() if p.is_dir() and (p / MANIFEST).is_file())
        if not folders:
            raise UsageError(
                f"{path} is neither a bundle (no {MANIFEST}) nor a model folder holding bundles.",
                "Pass a bundle folder (dist/<model>/<target>), its .zip, or dist/<model>.",
            )
        bundles = [_read_one(p) for p in folders if not p.name.endswith(".failed")]
    else:
        bundles = [_read_one(path)]
    return {b.target: b for b in bundles}


def _read_one(path: Path) -> BuiltBundle:
    with opened_bundle(path) as folder:
        if not (folder / MANIFEST).is_file():
            raise UsageError(
                f"{path} is not a bundle: it has no {MANIFEST}.",
                "Pass a bundle folder (dist/<model>/<target>), its .zip, or dist/<model>.",
            )
        manifest = read_manifest(folder / MANIFEST)
        report = _read_report(folder / "report.json")
    return BuiltBundle(str(path), manifest, report)


def _read_report(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        document = loads_json(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"{path} is not readable JSON: {exc}.", "Rebuild the bundle, or delete the damaged report."
        ) from exc
    return document if isinstance(document, dict) else None


def diff_bundle(old: BuiltBundle, new: BuiltBundle) -> TargetDiff:
    result = TargetDiff(old.target, old.label, new.label)
    result.changes += _bundle_changes(old.manifest, new.manifest)
    olds, news = old.artifacts(), new.artifacts()
    for fmt in olds.keys() - news.keys():
        result.changes.append(Change(fmt, "artifact", "present", "missing", "removed", True))
    for fmt in news.keys() - olds.keys():
        result.changes.append(Change(fmt, "artifact", "missing", "present", "added", True))
    threads = [(b.report or {}).get("threads") for b in (old, new)]
    if threads[0] != threads[1] and None not in threads:
        result.changes.append(Change("bundle", "timing threads", threads[0], threads[1], "other thread count", True))
    for fmt in [f for f in olds if f in news]:
        result.changes += _artifact_changes(fmt, olds[fmt], news[fmt])
        result.changes += _latency_changes(fmt, old, new, same_conditions(fmt, old, new))
    result.latency = _latency_source(old, new)
    return result


def _latency_source(old: BuiltBundle, new: BuiltBundle) -> str:
    missing = [b.label for b in (old, new) if b.report is None]
    if missing:
        return f"not compared: no report.json in {', '.join(missing)} (a .zip leaves it out; compare the folders)"
    return "report.json of each build"


def _bundle_changes(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    changes = []
    for key in ("inputs", "outputs"):  # an app written for OLD may not run NEW
        if _signature(old[key]) != _signature(new[key]):
            changes.append(Change("bundle", key, _signature(old[key]), _signature(new[key]), "signature changed", True))
    if old["model"]["version"] != new["model"]["version"]:
        changes.append(
            Change("bundle", "model version", old["model"]["version"], new["model"]["version"], "other weights", False)
        )
    old_versions, new_versions = old["provenance"]["versions"], new["provenance"]["versions"]
    for library in sorted(old_versions.keys() | new_versions.keys()):
        before, after = old_versions.get(library), new_versions.get(library)
        if before != after:
            changes.append(Change("bundle", f"version {library}", before, after, f"{before} -> {after}", True))
    if (old.get("build") or {}).get("ok") != (new.get("build") or {}).get("ok"):
        changes.append(Change("bundle", "build ok", old.get("build"), new.get("build"), "build outcome", True))
    return changes


def _signature(specs: list[dict[str, Any]]) -> list[str]:
    return [
        f"{s['name']}: {s['dtype']}[{'x'.join(str(d) for d in s['shape'])}]"
        + (f" dynamic {s['dynamic_axes']}" if s.get("dynamic_axes") else "")
        for s in specs
    ]


def same_conditions(fmt: str, old: BuiltBundle, new: BuiltBundle) -> bool:
    """The same artifact bytes, timed on the same library versions with the same thread count: a latency
    difference can then only be the machine's."""
    return (
        old.artifacts()[fmt]["sha256"] == new.artifacts()[fmt]["sha256"]
        and old.manifest["provenance"]["versions"] == new.manifest["provenance"]["versions"]
        and (old.report or {}).get("threads") == (new.report or {}).get("threads")
    )


def _artifact_changes(fmt: str, old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    changes = []
    before, after = old["size_bytes"], new["size_bytes"]
    if before != after:
        relative = after / before - 1 if before else None
        flagged = relative is None or abs(relative) > SIZE_RELATIVE
        changes.append(Change(fmt, "size_bytes", before, after, _percent(relative), flagged, relative=relative))
    for key in ("precision", "capture_strategy", "capture_consumed", "smoke"):
        if old.get(key) != new.get(key):
            changes.append(Change(fmt, key, old.get(key), new.get(key), f"{old.get(key)} -> {new.get(key)}", True))
    changes += _accuracy_changes(fmt, old.get("accuracy") or {}, new.get("accuracy") or {})
    return changes


def _accuracy_changes(fmt: str, old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    changes = []
    for key in ("top1_agreement", "cosine", "sqnr_db", "max_abs_err"):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        flagged = False
        text = f"{before} -> {after}"
        if key == "top1_agreement" and before is not None and after is not None:
            points = (after - before) * 100
            flagged, text = points < -ACCURACY_PT, f"{points:+.2f} pt"
        changes.append(Change(fmt, f"accuracy {key}", before, after, text, flagged))
    return changes


def _latency_changes(fmt: str, old: BuiltBundle, new: BuiltBundle, same_bytes: bool) -> list[Change]:
    before, after = old.reported(fmt).get("latency_ms"), new.reported(fmt).get("latency_ms")
    if not before or not after:
        return []
    return [c for c in (latency_change(fmt, key, before, after, same_bytes) for key in ("p50", "p90")) if c]


def latency_change(
    fmt: str, key: str, before: dict[str, float], after: dict[str, float], same_bytes: bool
) -> Change | None:
    """A p50 or p90 change, flagged only when beyond LATENCY_RELATIVE and beyond the run-to-run spread."""
    old, new = before[key], after[key]
    if old == new or not old:
        return None
    relative = new / old - 1
    spread = noise_ms(key, before, after)
    text = f"{new - old:+.3f} ms ({_percent(relative)})"
    if same_bytes:
        note = "same artifact bytes, library versions and threads: the difference is the machine's"
        return Change(fmt, f"{key}_ms", old, new, text, False, note, relative)
    beyond = abs(new - old) > spread
    note = f"{'beyond' if beyond else 'within'} the timings' run-to-run spread ({spread:.3f} ms)"
    return Change(fmt, f"{key}_ms", old, new, text, beyond and abs(relative) > LATENCY_RELATIVE, note, relative)


def noise_ms(key: str, before: dict[str, float], after: dict[str, float]) -> float:
    """The larger of the two runs' spread above the percentile: p90 - p50 for p50, p99 - p90 for p90."""
    upper = {"p50": "p90", "p90": "p99"}[key]
    return max(before[upper] - before[key], after[upper] - after[key], 0.0)


def evaluate_gates(gates: list[Gate], old: BuiltBundle, new: BuiltBundle) -> list[GateResult]:
    if not gates:
        return []
    if any(g.metric in ("p50", "p90") for g in gates) and (old.report is None or new.report is None):
        raise UsageError(
            f"--fail-on latency needs each build's report.json, and {_latency_source(old, new)[len('not compared: ') :]}.",
            "Compare the bundle folders (report.json is kept there), or gate on size and accuracy only.",
        )
    olds, news = old.artifacts(), new.artifacts()
    results = []
    for fmt in [f for f in olds if f in news]:
        same_bytes = same_conditions(fmt, old, new)
        for gate in gates:
            results.append(
                _gate(gate, old.target, fmt, olds[fmt], news[fmt], old.reported(fmt), new.reported(fmt), same_bytes)
            )
    return results


def _gate(
    gate: Gate,
    target: str,
    fmt: str,
    old: dict[str, Any],
    new: dict[str, Any],
    old_report: dict[str, Any],
    new_report: dict[str, Any],
    same_bytes: bool,
) -> GateResult:
    def result(failed: bool, detail: str) -> GateResult:
        return GateResult(str(gate), target, fmt, failed, detail)

    if gate.metric == "size":
        relative = new["size_bytes"] / old["size_bytes"] - 1
        return result(
            relative * 100 > gate.limit, f"size {old['size_bytes']} -> {new['size_bytes']} bytes ({_percent(relative)})"
        )
    if gate.metric == "accuracy":
        before, after = (
            (old.get("accuracy") or {}).get("top1_agreement"),
            (new.get("accuracy") or {}).get("top1_agreement"),
        )
        if before is None or after is None:
            return result(
                False, "not evaluated: top-1 agreement not measured in both builds (fp32 artifacts have none)"
            )
        points = (after - before) * 100
        return result(points < -gate.limit, f"top-1 agreement {before:.4f} -> {after:.4f} ({points:+.2f} pt)")
    before, after = old_report.get("latency_ms"), new_report.get("latency_ms")
    if not before or not after:
        reason = new_report.get("latency_reason") or old_report.get("latency_reason") or "not timed"
        return result(False, f"not evaluated: {reason}")
    change = after[gate.metric] - before[gate.metric]
    amount = change / before[gate.metric] * 100 if gate.unit == "%" else change
    spread = noise_ms(gate.metric, before, after)
    detail = f"{gate.metric} {before[gate.metric]:.3f} -> {after[gate.metric]:.3f} ms (spread {spread:.3f} ms)"
    if same_bytes:
        return result(
            False, f"{detail}: same artifact bytes, library versions and threads, the difference is the machine's"
        )
    return result(amount > gate.limit and change > spread, detail)


def _percent(relative: float | None) -> str:
    return "n/a" if relative is None else f"{relative * 100:+.1f}%"


def print_diff(diff: BundleDiff, console: Console) -> None:
    """The flagged changes first, then the rest, then the gates."""
    for target in diff.targets:
        console.print(
            f"[bold]{escape(target.target)}[/]: {escape(target.old)} -> {escape(target.new)}", highlight=False
        )
        table = Table(title_justify="left", show_lines=False)
        for column in ("", "artifact", "metric", "old", "new", "change", "note"):
            table.add_column(column)
        for change in sorted(target.changes, key=lambda c: not c.flagged):
            table.add_row(
                "[yellow]![/]" if change.flagged else "",
                escape(change.scope),
                escape(change.metric),
                escape(_short(change.old)),
                escape(_short(change.new)),
                escape(change.change),
                escape(change.note),
            )
        if target.changes:
            console.print(table)
        flagged = len(target.flagged)
        console.print(
            f"  {flagged} flagged change(s), {len(target.changes) - flagged} within thresholds or noise; "
            f"latency: {escape(target.latency)}",
            highlight=False,
        )
    for name in diff.only_old:
        console.print(f"[yellow]![/] target {escape(name)} only in {escape(diff.old)}", highlight=False)
    for name in diff.only_new:
        console.print(f"[yellow]![/] target {escape(name)} only in {escape(diff.new)}", highlight=False)
    for gate in diff.gates:
        mark = "[red]✗[/]" if gate.failed else "[green]✓[/]"
        console.print(
            f"{mark} {escape(gate.gate)} {escape(gate.target)}/{escape(gate.artifact)}: {escape(gate.detail)}",
            highlight=False,
        )
    if diff.gates:
        failed = [g for g in diff.gates if g.failed]
        console.print(
            f"\n{'[red]FAILED[/]' if failed else '[green]OK[/]'}: {len(failed)} of {len(diff.gates)} check(s) failed",
            highlight=False,
        )


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
