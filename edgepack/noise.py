"""Converter chatter, in one place: deprecation warnings, progress bars and log lines from torch,
coremltools and onnx would otherwise bury edgepack's own output (and break `--json` on stdout)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

# Messages that are expected on the supported stack and say nothing about the user's model.
KNOWN_WARNINGS = (
    r".*is deprecated.*",  # TorchScript / lite interpreter / legacy ONNX exporter deprecations
    r".*has not been tested with coremltools.*",
    r".*Tuple detected at graph output.*",
    r".*Converting a tensor with requires_grad=True to a scalar.*",
    r".*legacy TorchScript-based ONNX export.*",
    r".*The feature will be removed.*",
    r".*no signature found for <torch.ScriptMethod.*",
)
_NOISY_LOGGERS = ("coremltools", "torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "torch.fx")


def filter_known_warnings() -> None:
    """Hide the expected deprecation warnings (call inside a warnings.catch_warnings block)."""
    for pattern in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


@contextlib.contextmanager
def quiet_converter() -> Iterator[io.StringIO]:
    """Run a converter with its stdout/stderr captured and its logging lowered to errors.

    The captured text is yielded so a failure can quote it.
    """
    buffer = io.StringIO()
    saved = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            filter_known_warnings()
            yield buffer
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def tail(text: str, lines: int = 12) -> str:
    """The last lines of captured converter output, for an error message."""
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join(kept)
