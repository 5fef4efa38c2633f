"""Errors a user can act on: what failed and what to do about it."""

from __future__ import annotations


class EdgepackError(Exception):
    """An expected failure, shown to the user without a traceback.

    `hint` says what to do next; `exit_code` is 2 for bad usage or input, 1 for a failed check.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class UsageError(EdgepackError):
    """The command line, a config file or a model reference is wrong (exit code 2)."""

    exit_code = 2


class BuildError(EdgepackError):
    """A stage could not produce what it should (exit code 1)."""

    exit_code = 1


def did_you_mean(word: str, choices: list[str]) -> str:
    """A 'did you mean' suffix for an unknown name, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


class RuntimeUnavailable(Exception):
    """The artifact's runtime cannot run on this machine (Core ML prediction off macOS): not a failure of
    the artifact, and never a pass; the smoke test says 'skipped' and why."""
