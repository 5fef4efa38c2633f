"""Targets: a TOML file that chooses formats, precision, runtime limits, smoke tolerances and budgets."""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import precisions
from .errors import UsageError, did_you_mean

_TARGET_KEYS = {"name", "description", "smoke", "quantized_smoke", "accuracy", "budgets", "bench", "formats"}
_FORMAT_COMMON_KEYS = {"precision", "smoke", "quantized_smoke", "accuracy", "budgets"}


@dataclass(frozen=True)
class Tolerance:
    """An artifact passes when max|out - ref| <= atol + rtol * max|ref| and cosine >= min_cosine."""

    atol: float = 1e-4
    rtol: float = 1e-4
    min_cosine: float = 0.9999

    def limit(self, reference_peak: float) -> float:
        return self.atol + self.rtol * reference_peak


# A quantized artifact differs from eager by design: its smoke test checks it still computes the same
# function (golden samples within a loose tolerance); the accuracy budget is the real gate.
DEFAULT_QUANTIZED_TOLERANCE = Tolerance(atol=0.1, rtol=0.1, min_cosine=0.99)


@dataclass(frozen=True)
class AccuracyBudget:
    """What a non-fp32 artifact must keep of eager fp32's behaviour on the evaluation set; None: not gated."""

    min_top1_agreement: float | None = 0.99
    min_cosine: float | None = 0.99
    min_sqnr_db: float | None = None
    max_abs_err: float | None = None

    def to_json(self) -> dict:
        return dict(vars(self))


@dataclass(frozen=True)
class Budgets:
    """Limits that fail the build when exceeded; None means no limit. Latency is measured on the build host."""

    max_p50_ms: float | None = None
    max_size_mb: float | None = None


@dataclass(frozen=True)
class BenchSettings:
    threads: int = 2
    warmup: int = 5
    min_runs: int = 30
    max_runs: int = 500
    min_seconds: float = 1.0
    footprint: bool = True  # cold load + first run and peak memory, in a fresh process per artifact


@dataclass(frozen=True)
class FormatSettings:
    """What a target asks of one format; `options` are that format's own keys (opset, bytecode_version...)."""

    name: str
    precision: str
    tolerance: Tolerance
    budgets: Budgets
    options: dict[str, Any] = field(default_factory=dict)
    quantized_tolerance: Tolerance = DEFAULT_QUANTIZED_TOLERANCE
    accuracy: AccuracyBudget = AccuracyBudget()

    def tolerance_for(self, precision: str) -> Tolerance:
        """The smoke tolerance for an artifact built in `precision`."""
        return self.quantized_tolerance if precisions.is_quantized(precision) else self.tolerance


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    path: Path
    sha256: str
    formats: tuple[FormatSettings, ...]
    bench: BenchSettings

    def summary(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "path": str(self.path),
            "formats": [{"format": f.name, "precision": f.precision, **f.options} for f in self.formats],
        }


def builtin_targets_dir() -> Path:
    """targets/ ships inside the wheel as edgepack/targets; a source checkout keeps it at the top level."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "targets", here.parent / "targets"):
        if candidate.is_dir():
            return candidate
    raise UsageError("edgepack's built-in targets are missing from this installation.", "Reinstall edgepack.")


def builtin_target_names() -> list[str]:
    return sorted(p.stem for p in builtin_targets_dir().glob("*.toml"))


def resolve_target_path(name_or_path: str) -> Path:
    """A built-in name (`ios`) or a path to a TOML file (`./my-target.toml`)."""
    looks_like_path = name_or_path.endswith(".toml") or "/" in name_or_path or "\\" in name_or_path
    if looks_like_path:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise UsageError(f"Target file '{name_or_path}' does not exist.", "Check the path, or use a built-in target name.")
        return path
    names = builtin_target_names()
    if name_or_path not in names:
        raise UsageError(
            f"Unknown target '{name_or_path}'.{did_you_mean(name_or_path, names)}",
            f"Known targets: {', '.join(names)}; or pass a path to a target .toml file.",
        )
    return builtin_targets_dir() / f"{name_or_path}.toml"


def load_target(name_or_path: str, known_formats: dict[str, set[str]]) -> Target:
    """Read and validate a target. `known_formats` maps each format name to the option keys it accepts."""
    path = resolve_target_path(name_or_path)
    raw_bytes = path.read_bytes()
    try:
        data = tomllib.loads(raw_bytes.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"Target file {path} is not valid TOML: {exc}", "Fix the syntax and retry.") from exc
    where = str(path)
    _reject_unknown(data, _TARGET_KEYS, where)
    default_tolerance = _tolerance(data.get("smoke", {}), Tolerance(), f"{where} [smoke]")
    default_budgets = _budgets(data.get("budgets", {}), Budgets(), f"{where} [budgets]")
    defaults = (
        default_tolerance,
        _tolerance(data.get("quantized_smoke", {}), DEFAULT_QUANTIZED_TOLERANCE, f"{where} [quantized_smoke]"),
        _accuracy(data.get("accuracy", {}), AccuracyBudget(), f"{where} [accuracy]"),
        default_budgets,
    )
    formats_table = data.get("formats", {})
    if not formats_table:
        raise UsageError(f"Target file {path} names no formats.", "Add a [formats.onnx] (or coreml, torchscript_lite) table.")
    formats = tuple(
        _format_settings(name, table, known_formats, defaults, where)
        for name, table in formats_table.items()
    )
    return Target(
        name=str(data.get("name", path.stem)),
        description=str(data.get("description", "")),
        path=path.resolve(),
        sha256=hashlib.sha256(raw_bytes).hexdigest(),
        formats=formats,
        bench=_bench(data.get("bench", {}), f"{where} [bench]"),
    )


def _format_settings(
    name: str,
    table: dict,
    known_formats: dict[str, set[str]],
    defaults: tuple[Tolerance, Tolerance, AccuracyBudget, Budgets],
    where: str,
) -> FormatSettings:
    if name not in known_formats:
        raise UsageError(
            f"{where} names an unknown format '{name}'.{did_you_mean(name, list(known_formats))}",
            f"Known formats: {', '.join(known_formats)}.",
        )
    section = f"{where} [formats.{name}]"
    _reject_unknown(table, _FORMAT_COMMON_KEYS | known_formats[name], section)
    options = {k: v for k, v in table.items() if k not in _FORMAT_COMMON_KEYS}
    tolerance, quantized_tolerance, accuracy, budgets = defaults
    return FormatSettings(
        name=name,
        precision=str(table.get("precision", "fp32")),
        tolerance=_tolerance(table.get("smoke", {}), tolerance, f"{section} smoke"),
        budgets=_budgets(table.get("budgets", {}), budgets, f"{section} budgets"),
        options=options,
        quantized_tolerance=_tolerance(table.get("quantized_smoke", {}), quantized_tolerance, f"{section} quantized_smoke"),
        accuracy=_accuracy(table.get("accuracy", {}), accuracy, f"{section} accuracy"),
    )


def _tolerance(table: dict, base: Tolerance, where: str) -> Tolerance:
    _reject_unknown(table, {"atol", "rtol", "min_cosine"}, where)
    return Tolerance(
        atol=_number(table, "atol", base.atol, where),
        rtol=_number(table, "rtol", base.rtol, where),
        min_cosine=_number(table, "min_cosine", base.min_cosine, where),
    )


def _accuracy(table: dict, base: AccuracyBudget, where: str) -> AccuracyBudget:
    keys = list(base.__dataclass_fields__)
    _reject_unknown(table, set(keys), where)
    return AccuracyBudget(**{key: _number(table, key, getattr(base, key), where) for key in keys})


def _budgets(table: dict, base: Budgets, where: str) -> Budgets:
    _reject_unknown(table, {"max_p50_ms", "max_size_mb"}, where)
    return Budgets(
        max_p50_ms=_number(table, "max_p50_ms", base.max_p50_ms, where),
        max_size_mb=_number(table, "max_size_mb", base.max_size_mb, where),
    )


def _bench(table: dict, where: str) -> BenchSettings:
    base = BenchSettings()
    _reject_unknown(table, set(base.__dataclass_fields__), where)
    settings = BenchSettings(
        threads=int(_number(table, "threads", base.threads, where)),
        warmup=int(_number(table, "warmup", base.warmup, where)),
        min_runs=int(_number(table, "min_runs", base.min_runs, where)),
        max_runs=int(_number(table, "max_runs", base.max_runs, where)),
        min_seconds=_number(table, "min_seconds", base.min_seconds, where),
        footprint=_flag(table, "footprint", base.footprint, where),
    )
    if settings.threads < 1 or settings.min_runs < 1 or settings.max_runs < settings.min_runs:
        raise UsageError(f"{where}: need threads >= 1 and 1 <= min_runs <= max_runs.", "Fix the [bench] table.")
    return settings


def _number(table: dict, key: str, default: Any, where: str) -> Any:
    value = table.get(key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise UsageError(f"{where}: '{key}' must be a number, got {value!r}.", "Write a plain number.")
    return value


def _flag(table: dict, key: str, default: bool, where: str) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise UsageError(f"{where}: '{key}' must be true or false, got {value!r}.", "Write true or false.")
    return value


def _reject_unknown(table: Any, allowed: set[str], where: str) -> None:
    if not isinstance(table, dict):
        raise UsageError(f"{where} must be a table.", "See the targets section of the README.")
    for key in table:
        if key not in allowed:
            raise UsageError(
                f"{where} has an unknown key '{key}'.{did_you_mean(key, sorted(allowed))}",
                f"Allowed keys: {', '.join(sorted(allowed))}.",
            )
