"""Progress events the build reports as it goes; the CLI shows them, the Python API may ignore them."""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol


class Status(StrEnum):
    """Where a stage is: begun, finished, finished with a warning, failed."""

    START = "start"
    DONE = "done"
    WARN = "warn"
    FAIL = "fail"


class Observer(Protocol):
    """Progress callbacks, one per stage event."""

    def event(self, stage: str, status: Status, detail: str) -> None: ...


class SilentObserver:
    def event(self, stage: str, status: Status, detail: str) -> None:
        pass
