"""Targets: a TOML file that chooses formats, precision, runtime limits, smoke tolerances and budgets."""

from __future__ import annotations

import hashlib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import hostarch, precisions
from .errors import UsageError, did_you_mean
from .paths import MAX_NAME, folder_name

_TARGET_KEYS = {"name", "description", "arch", "smoke", "quantized_smoke", "accuracy", "budgets", "bench", "formats"}
_FORMAT_COMMON_KEYS = {"precision", "smoke", "quantized_smoke", "accuracy", "budgets"}
_MAX_THREADS, _MAX_RUNS, _MAX_SECONDS = 1024, 1_000_000, 3600.0
# (low, high) of each [accuracy] key: agreement and cosine are fractions, errors are not negative.
_ACCURACY_RANGES: dict[str, tuple[float | None, float | None]] = {
    "min_top1_agreement": (0.0, 1.0),
    "min_cosine": (-1.0, 1.0),
    "min_sqnr_db": (None, None),
    "max_abs_err": (0.0, None),
}


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
    # The CPU architecture the target's devices run (hostarch.ARCHS); None: not named, budgets apply to the host.
    arch: str | None = None

    def summary(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "arch": self.arch,
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
        if path.is_dir():
            raise UsageError(
                f"Target file '{name_or_path}' is a folder, not a target .toml file.",
                "Pass the path of a target .toml file, or a built-in target name.",
            )
        if not path.is_file():
            raise UsageError(
                f"Target file '{name_or_path}' does not exist.", "Check the path, or use a built-in target name."
            )
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
    try:
        raw_bytes = path.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"Target file {path} cannot be read: {exc.strerror or exc}.", "Check the file's permissions."
        ) from exc
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
        raise UsageError(
            f"Target file {path} names no formats.", "Add a [formats.onnx] (or coreml, torchscript_lite) table."
        )
    formats = tuple(
        _format_settings(name, table, known_formats, defaults, where) for name, table in formats_table.items()
    )
    name = folder_name(
        data.get("name", path.stem),
        f"Target file {path}: 'name'",
        f"Write name = \"my-target\" in {path}: letters, digits, '.', '_' and '-' (at most "
        f"{MAX_NAME} characters, not ending in .failed or .zip); it names the bundle's folder.",
        target=True,
    )
    description = data.get("description", "")
    if not isinstance(description, str):
        raise UsageError(
            f"Target file {path}: 'description' must be a string, got {description!r}.", 'Write description = "...".'
        )
    return Target(
        name=name,
        description=description,
        path=path.resolve(),
        sha256=hashlib.sha256(raw_bytes).hexdigest(),
        formats=formats,
        bench=_bench(data.get("bench", {}), f"{where} [bench]"),
        arch=_arch(data.get("arch"), where),
    )


def _arch(value: Any, where: str) -> str | None:
    if value is None:
        return None
    arch = hostarch.normalize(value) if isinstance(value, str) else None
    if arch is None:
        raise UsageError(
            f"{where}: 'arch' = {value!r} is not a CPU architecture edgepack knows.",
            f"Write arch = one of {', '.join(repr(a) for a in hostarch.ARCHS)} (the CPU the target's devices run).",
        )
    return arch


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
    precision = table.get("precision", "fp32")
    if not isinstance(precision, str):
        raise UsageError(f"{section}: 'precision' must be a string, got {precision!r}.", 'Write precision = "fp32".')
    return FormatSettings(
        name=name,
        precision=precision,
        tolerance=_tolerance(table.get("smoke", {}), tolerance, f"{section} smoke"),
        budgets=_budgets(table.get("budgets", {}), budgets, f"{section} budgets"),
        options=options,
        quantized_tolerance=_tolerance(
            table.get("quantized_smoke", {}), quantized_tolerance, f"{section} quantized_smoke"
        ),
        accuracy=_accuracy(table.get("accuracy", {}), accuracy, f"{section} accuracy"),
    )


def _tolerance(table: dict, base: Tolerance, where: str) -> Tolerance:
    _reject_unknown(table, {"atol", "rtol", "min_cosine"}, where)
    return Tolerance(
        atol=_number(table, "atol", base.atol, where, low=0.0),
        rtol=_number(table, "rtol", base.rtol, where, low=0.0),
        min_cosine=_number(table, "min_cosine", base.min_cosine, where, low=-1.0, high=1.0),
    )


def _accuracy(table: dict, base: AccuracyBudget, where: str) -> AccuracyBudget:
    keys = list(base.__dataclass_fields__)
    _reject_unknown(table, set(keys), where)
    return AccuracyBudget(
        **{key: _number(table, key, getattr(base, key), where, *_ACCURACY_RANGES[key]) for key in keys}
    )


def _budgets(table: dict, base: Budgets, where: str) -> Budgets:
    _reject_unknown(table, {"max_p50_ms", "max_size_mb"}, where)
    return Budgets(
        max_p50_ms=_number(table, "max_p50_ms", base.max_p50_ms, where, low=0.0, open_low=True),
        max_size_mb=_number(table, "max_size_mb", base.max_size_mb, where, low=0.0, open_low=True),
    )


def _bench(table: dict, where: str) -> BenchSettings:
    base = BenchSettings()
    _reject_unknown(table, set(base.__dataclass_fields__), where)
    settings = BenchSettings(
        threads=_integer(table, "threads", base.threads, where, None, _MAX_THREADS),  # low ends: checked below
        warmup=_integer(table, "warmup", base.warmup, where, 0, _MAX_RUNS),
        min_runs=_integer(table, "min_runs", base.min_runs, where, None, _MAX_RUNS),
        max_runs=_integer(table, "max_runs", base.max_runs, where, None, _MAX_RUNS),
        min_seconds=_number(table, "min_seconds", base.min_seconds, where, low=0.0, high=_MAX_SECONDS),
        footprint=_flag(table, "footprint", base.footprint, where),
    )
    if settings.threads < 1 or settings.min_runs < 1 or settings.max_runs < settings.min_runs:
        raise UsageError(f"{where}: need threads >= 1 and 1 <= min_runs <= max_runs.", "Fix the [bench] table.")
    return settings


def _number(
    table: dict,
    key: str,
    default: Any,
    where: str,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
) -> Any:
    """A finite number within [low, high] (low excluded when `open_low`); the message names the file and key."""
    value = table.get(key, default)
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{where}: '{key}' must be a number, got {value!r}.", "Write a plain number.")
    if not math.isfinite(value):
        raise UsageError(
            f"{where}: '{key}' must be a finite number, got {value!r}.", _range_hint(key, low, high, open_low)
        )
    if (low is not None and (value < low or (open_low and value == low))) or (high is not None and value > high):
        raise UsageError(
            f"{where}: '{key}' = {value!r} is out of range: {_range_text(low, high, open_low)}.",
            _range_hint(key, low, high, open_low),
        )
    return value


def _integer(table: dict, key: str, default: int, where: str, low: int | None, high: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{where}: '{key}' must be a whole number, got {value!r}.", _range_hint(key, low, high, False))
    return int(_number(table, key, default, where, low, high))


def _range_text(low: float | None, high: float | None, open_low: bool) -> str:
    if low is not None and high is not None:
        return f"it must be from {low:g} to {high:g}"
    if low is not None:
        return f"it must be {'above' if open_low else 'at least'} {low:g}"
    return f"it must be at most {high:g}"


def _range_hint(key: str, low: float | None, high: float | None, open_low: bool) -> str:
    return f"Set '{key}' to a number {_range_text(low, high, open_low).removeprefix('it must be ')} (see the targets section of the README)."


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
