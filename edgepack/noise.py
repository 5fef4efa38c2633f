"""Converter chatter, in one place: deprecation warnings, progress bars and log lines from torch,
coremltools and onnx would otherwise bury edgepack's own output (and break `--json` on stdout)."""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import sys
import tempfile
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


@contextlib.contextmanager
def native_stderr_quiet() -> Iterator[None]:
    """Send what C++ code writes to stderr (file descriptor 2) to a scratch file for the block.

    torch's quantized kernels print deprecation and qnnpack notices straight from C++ on first use
    ("[W... qlinear_dynamic.cpp] Warning: ..."), past Python's warnings and sys.stderr. Only for
    blocks that report their own failures as exceptions: edgepack's progress output is not in them.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as scratch:
        os.dup2(scratch.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout for the block, C++ included, to stderr: with `--json`, stdout
    holds the one JSON document and nothing else. torch's legacy ONNX exporter, for one, logs the whole
    TorchScript graph to std::cout when an export fails, past any Python-level redirection."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        _flush_c_stdio()  # what C/C++ code buffered goes to stderr too, not after the document
        os.dup2(saved, 1)
        os.close(saved)


def _flush_c_stdio() -> None:
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to ask (not on the supported platforms)
        pass


def tail(text: str, lines: int = 12) -> str:
    """The last lines of captured converter output, for an error message."""
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join(kept)
