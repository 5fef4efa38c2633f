"""Which app runtime a .ptl is for, and whether that runtime has every operator the saved program calls.

A lite runtime resolves each operator of a program by name and overload when the app loads it, and
fills in defaults for the arguments the program does not pass; an operator it lacks, or one whose
schema has fewer arguments than the program passes, fails the load ("Following ops cannot be found").
torch's own lite interpreter, which the smoke test runs, always has every operator it wrote, so only a
check against the app runtime's own operator table (runtimes/*.json, derived by runtimes/derive.py
from that release's wheel) sees it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ...errors import UsageError, did_you_mean
from ...noise import native_stderr_quiet

# Lite bytecode v8 is what torch 2.x writes; v4..v7 are reachable by backporting for older app runtimes.
NEWEST_BYTECODE = 8
OLDEST_BYTECODE = 4


# The runtime names a target may give (`runtime = "..."` in [formats.torchscript_lite]) -> table file.
RUNTIMES = {
    "pytorch_android_lite 1.13.1": "pytorch_lite_1.13.1.json",  # org.pytorch:pytorch_android_lite (Maven)
    "LibTorch-Lite 1.13.0.1": "pytorch_lite_1.13.1.json",  # the iOS pod, built from the same 1.13 sources
}
DEFAULT_RUNTIME = "pytorch_android_lite 1.13.1"
ADVICE = (
    "Choose another runtime version in the target's [formats.torchscript_lite] runtime (one that has the "
    "operator), ship the model in the ExecuTorch format, or replace the operator at the line named."
)
NO_RULE = "edgepack has no rewrite for it"


@dataclass(frozen=True)
class OperatorTable:
    """What one app runtime provides: operator key ("ns::name" or "ns::name.overload") -> its schema entry."""

    runtime: str
    operators: dict[str, dict[str, Any]] = field(repr=False)
    source: dict[str, Any] = field(default_factory=dict, repr=False)

    def arguments(self, operator: str) -> int | None:
        entry = self.operators.get(operator)
        return None if entry is None else int(entry["arguments"])

    def without(self, *operators: str) -> OperatorTable:
        """The same table with `operators` removed (what a check must fail on)."""
        return OperatorTable(self.runtime, {k: v for k, v in self.operators.items() if k not in operators}, self.source)


@dataclass
class Missing:
    """An operator the saved program calls that the runtime cannot run, and the user's line that produced it."""

    operator: str
    arguments: int  # how many arguments the program passes
    runtime_arguments: int | None  # how many the runtime's schema takes; None: the runtime has no such operator
    source: str = ""
    rewrite: str = NO_RULE  # why it was not rewritten

    @property
    def reason(self) -> str:
        if self.runtime_arguments is None:
            return "not in the runtime"
        return f"the program passes {self.arguments} arguments, the runtime's schema takes {self.runtime_arguments}"

    def to_json(self) -> dict[str, Any]:
        return {
            "operator": self.operator,
            "arguments": self.arguments,
            "runtime_arguments": self.runtime_arguments,
            "reason": self.reason,
            "source": self.source,
            "rewrite": self.rewrite,
        }

    def problem(self, runtime: str) -> str:
        where = f" (produced at {self.source})" if self.source else ""
        return f"{runtime} cannot run {self.operator}{where}: {self.reason}; {self.rewrite}"


@dataclass
class RuntimeCheck:
    runtime: str
    bytecode_version: int
    operators_checked: int
    missing: list[Missing] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing

    def to_json(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "bytecode_version": self.bytecode_version,
            "operators_checked": self.operators_checked,
            "missing": [m.to_json() for m in self.missing],
        }

    def problems(self) -> list[str]:
        return [m.problem(self.runtime) for m in self.missing]


def check_runtime_name(runtime: Any) -> str:
    if runtime not in RUNTIMES:
        raise UsageError(
            f"Unknown TorchScript Lite runtime {runtime!r}.{did_you_mean(str(runtime), list(RUNTIMES))}",
            f"Name the app's runtime in [formats.torchscript_lite] runtime: one of {', '.join(RUNTIMES)}.",
        )
    return runtime


@functools.cache
def load_table(runtime: str = DEFAULT_RUNTIME) -> OperatorTable:
    """The operator table shipped for `runtime` (package data, derived once from the release's wheel)."""
    name = RUNTIMES[check_runtime_name(runtime)]
    return table_from_json(runtime, resources.files(__package__).joinpath("runtimes", name).read_text(encoding="utf-8"))


def table_from_json(runtime: str, text: str) -> OperatorTable:
    """A table in runtimes/*.json form (as derive.py writes it, or edited by hand)."""
    data = json.loads(text)
    return OperatorTable(runtime, data["operators"], data.get("source", {}))


def program_operators(path: Path) -> dict[str, int]:
    """Operator key -> number of arguments the saved lite program passes to it (read from its bytecode).
    Bytecode 6 and newer record that number; older versions pass every argument of the writer's schema."""
    import torch

    with native_stderr_quiet():  # "Only models with bytecode version 6 and above contain operator schema information"
        found = torch._C._get_model_ops_and_info(str(path))
    return {
        name: int(info.num_schema_args) if info.num_schema_args is not None else _writer_arguments(name)
        for name, info in found.items()
    }


def _writer_arguments(operator: str) -> int:
    import torch

    name, _, overload = operator.partition(".")
    for schema in torch._C._jit_get_schemas_for_operator(name):
        if schema.overload_name == overload:
            return len(schema.arguments)
    return 0


def check_program(
    path: Path, table: OperatorTable, sources: dict[str, str] | None = None, refused: dict[str, str] | None = None
) -> RuntimeCheck:
    """Every operator the saved program at `path` calls, against `table`. `sources` maps an operator
    (bare "ns::name" is enough) to the user's "file:line" that produced it, `refused` to why a rewrite
    declined it, for the report."""
    used = program_operators(path)
    sources, refused = sources or {}, refused or {}
    missing = []
    for operator, passed in sorted(used.items()):
        available = table.arguments(operator)
        if available is None or passed > available:
            bare = operator.split(".")[0]
            missing.append(
                Missing(
                    operator,
                    passed,
                    available,
                    sources.get(operator) or sources.get(bare, ""),
                    refused.get(operator) or refused.get(bare) or NO_RULE,
                )
            )
    import torch.jit.mobile

    version = torch.jit.mobile._get_model_bytecode_version(str(path))
    return RuntimeCheck(table.runtime, version, len(used), missing)
