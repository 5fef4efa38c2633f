"""Where latency was measured, and whether that is evidence for the device a target runs on.

A target names the CPU architecture of its devices (`arch = "arm64"`); the build times every artifact on
the build host. When the two differ, the figures are host measurements: they still compare artifacts on
this machine, but they do not say how fast the device is (qnnpack int8 is the phones' fast path and slow
on x86, XNNPACK is tuned for ARM), so they never fail a latency budget meant for the device.

Nothing here imports torch: `verify` and `inspect` read these labels too.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

# The names a target file may use, and the spellings platform.machine() gives for each.
ARCHS = ("arm64", "armv7", "x86_64", "riscv64")
_ALIASES = {
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv8": "arm64",
    "armv7l": "armv7",
    "armv7": "armv7",
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "x64": "x86_64",
    "riscv64": "riscv64",
}


def normalize(name: str) -> str | None:
    """The canonical architecture name for a spelling (`aarch64` -> `arm64`), None when unknown."""
    return _ALIASES.get(name.strip().lower())


@cache
def host_arch() -> str:
    machine = platform.machine()
    return normalize(machine) or machine.lower() or "unknown"


@cache
def host_cpu() -> str:
    """The CPU model, so that figures can be read beside the machine that produced them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@dataclass(frozen=True)
class LatencyOrigin:
    """Where the latencies of one build were measured, against the architecture its target runs on."""

    measured_on: str  # the host's architecture
    cpu: str
    target_arch: str | None  # None: the target names no architecture (its budgets apply to the host, as before)

    @property
    def host_measurement(self) -> bool:
        """Measured on another architecture than the device's: not evidence for the device's speed."""
        return self.target_arch is not None and self.target_arch != self.measured_on

    @property
    def label(self) -> str:
        if self.host_measurement:
            return f"{self.measured_on} host"
        return self.measured_on

    @property
    def budget_note(self) -> str:
        where = f"latency measured on this {self.measured_on} build host ({self.cpu})"
        if self.host_measurement:
            return (
                f"{where}, not on the target's {self.target_arch} CPU: a host measurement, so the target's "
                f"latency budget (meant for the device) is not applied; build on a machine with a {self.target_arch} "
                "CPU to apply it"
            )
        if self.target_arch is None:
            return f"{where}; the target names no CPU architecture (`arch`), so its latency budget applies here"
        return f"{where}, the target's architecture: the latency budget applies"

    def to_json(self) -> dict[str, Any]:
        return {
            "measured_on": self.measured_on,
            "cpu": self.cpu,
            "target_arch": self.target_arch,
            "host_measurement": self.host_measurement,
            "latency_budget_applied": not self.host_measurement,
            "note": self.budget_note,
        }


def origin_for(target_arch: str | None) -> LatencyOrigin:
    return LatencyOrigin(host_arch(), host_cpu(), target_arch)
