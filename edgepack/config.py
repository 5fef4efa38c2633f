"""Project settings from `edgepack.toml` or `[tool.edgepack]` in pyproject.toml, so that
`edgepack build --target ios` is the whole command. Command-line options win over the file."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError, did_you_mean
from .paths import missing_file_text

_KEYS = {"model", "weights", "inputs", "name", "target", "out"}


@dataclass
class ProjectConfig:
    """Values from the config file, with relative paths already resolved against its folder."""

    path: Path | None = None
    model: str | None = None
    weights: Path | None = None
    inputs: list[str] = field(default_factory=list)
    name: str | None = None
    targets: list[str] = field(default_factory=list)
    out: Path | None = None

    @property
    def root(self) -> Path:
        return self.path.parent if self.path else Path.cwd()


def find_config(explicit: Path | None, cwd: Path) -> ProjectConfig:
    """The explicit file, else ./edgepack.toml, else ./pyproject.toml's [tool.edgepack], else nothing."""
    if explicit is not None:
        if not explicit.is_file():
            raise UsageError(
                f"Config file '{explicit}' {missing_file_text(explicit)}.",
                "Check the --config path: an edgepack.toml or a pyproject.toml file.",
            )
        table = _read(explicit)
        return _parse(
            table.get("tool", {}).get("edgepack", {}) if explicit.name == "pyproject.toml" else table, explicit
        )
    if (cwd / "edgepack.toml").is_file():
        return _parse(_read(cwd / "edgepack.toml"), cwd / "edgepack.toml")
    if (cwd / "pyproject.toml").is_file():
        table = _read(cwd / "pyproject.toml").get("tool", {}).get("edgepack")
        if table is not None:
            return _parse(table, cwd / "pyproject.toml")
    return ProjectConfig()


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}", "Fix the syntax and retry.") from exc


def _parse(table: dict[str, Any], path: Path) -> ProjectConfig:
    for key in table:
        if key not in _KEYS:
            raise UsageError(
                f"{path} has an unknown edgepack setting '{key}'.{did_you_mean(key, sorted(_KEYS))}",
                f"Allowed settings: {', '.join(sorted(_KEYS))}.",
            )
    root = path.parent
    model = _string(table, "model", path)
    if model and ".py:" in model and not Path(model.rpartition(":")[0]).is_absolute():
        file_part, _, attr = model.rpartition(":")
        model = f"{root / file_part}:{attr}"
    inputs = table.get("inputs", [])
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        raise UsageError(f"{path}: 'inputs' must be a list of strings.", 'Write inputs = ["x=1x3x224x224"].')
    targets = table.get("target", [])
    targets = [targets] if isinstance(targets, str) else targets
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise UsageError(
            f"{path}: 'target' must be a target name or a list of them, got {table['target']!r}.",
            'Write target = "ios" or target = ["android", "iot"].',
        )
    weights, out = _string(table, "weights", path), _string(table, "out", path)
    return ProjectConfig(
        path=path,
        model=model,
        weights=root / weights if weights else None,
        inputs=inputs,
        name=_string(table, "name", path),
        targets=list(targets),
        out=root / out if out else None,
    )


def _string(table: dict[str, Any], key: str, path: Path) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise UsageError(f"{path}: '{key}' must be a string, got {value!r}.", "Quote the value.")
    return value
