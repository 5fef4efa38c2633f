"""Converter chatter, in one place: deprecation warnings, progress bars and log lines from torch,
coremltools and onnx would otherwise bury edgepack's own output (and break `--json` on stdout)."""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator

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
# The capture's own (torch.export and FX); each format adds its converter's (Format.loggers) when registered.
_NOISY_LOGGERS = {"torch._dynamo", "torch.export", "torch.fx"}
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def quiet_loggers(names: tuple[str, ...]) -> None:
    """Loggers whose INFO/WARNING chatter `quiet_converter` holds back (errors still show)."""
    _NOISY_LOGGERS.update(names)


def filter_known_warnings() -> None:
    """Hide the expected deprecation warnings (call inside a warnings.catch_warnings block)."""
    for pattern in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


class ConverterLog(io.StringIO):
    """What a converter printed: its Python-level output, then what native code wrote to fds 1 and 2."""

    def __init__(self, native: Callable[[], str]) -> None:
        super().__init__()
        self._native = native

    def getvalue(self) -> str:
        return super().getvalue() + self._native()


@contextlib.contextmanager
def quiet_converter() -> Iterator[ConverterLog]:
    """Run a converter with its output captured and its logging lowered to errors.

    Captured at the file-descriptor level too: torch's TorchScript ONNX exporter prints whole IR
    graphs from C++ to stdout on failure, which Python's redirection never sees and which would
    corrupt `--json` (stdout is the build scripts' channel). The captured text is yielded so a
    failure can quote it.
    """
    saved = {name: logging.getLogger(name).level for name in sorted(_NOISY_LOGGERS)}
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with _native_output_captured() as native:
            buffer = ConverterLog(native)
            with warnings.catch_warnings(), contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                filter_known_warnings()
                yield buffer
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _native_output_captured(fds: tuple[int, ...] = (1, 2)) -> Iterator[Callable[[], str]]:
    """Point file descriptors `fds` at a scratch file for the block; yield a reader of what landed there."""
    _flush_all()
    with tempfile.TemporaryFile() as scratch:
        saved = {fd: os.dup(fd) for fd in fds}
        final: list[str] = []  # what was captured, once the block is over (the scratch file is gone then)

        def read() -> str:
            if final:
                return final[0]
            _flush_all()
            size = os.fstat(scratch.fileno()).st_size
            # pread: seeking would move the offset the redirected descriptors write at.
            return os.pread(scratch.fileno(), size, 0).decode("utf-8", errors="replace")

        try:
            for fd in saved:
                os.dup2(scratch.fileno(), fd)
            yield read
        finally:
            final.append(read())
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)


def _flush_all() -> None:
    """Flush Python's and C's stdio buffers, so that buffered text lands where it was written."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)  # C++ std::cout/cerr write through C stdio


@contextlib.contextmanager
def native_stderr_quiet() -> Iterator[None]:
    """Send what C++ code writes to stderr (file descriptor 2) to a scratch file for the block.

    torch's quantized kernels print deprecation and qnnpack notices straight from C++ on first use
    ("[W... qlinear_dynamic.cpp] Warning: ..."), past Python's warnings and sys.stderr. Only for
    blocks that report their own failures as exceptions: edgepack's progress output is not in them.
    """
    with _native_output_captured((2,)):
        yield


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
        _flush_all()  # what C/C++ code buffered goes to stderr too, not after the document
        os.dup2(saved, 1)
        os.close(saved)


def tail(text: str, lines: int = 12) -> str:
    """The last lines of captured converter output, for an error message."""
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join(kept)


# Converters' progress bars ("Converting PyTorch Frontend ==> MIL Ops: 0%|", "12 ops/s]"): never a reason.
_PROGRESS = re.compile(r"(\d+%\||it/s\]|ops/s\]|passes/s\]|^Converting PyTorch Frontend|^Running MIL)")


def log_lines(log: str) -> list[str]:
    """A converter's captured log without colours, blank lines and progress bars."""
    return [line for line in strip_ansi(log).splitlines() if line.strip() and not _PROGRESS.search(line.strip())]


def strip_ansi(text: str) -> str:
    """Text without terminal colour codes (torch.export colours its messages)."""
    return _ANSI_ESCAPE.sub("", text)


def short_reason(exc: BaseException, limit: int = 300) -> str:
    """'Type: first line of the message', colourless and at most `limit` characters, for notes and errors."""
    lines = [line.strip() for line in strip_ansi(str(exc)).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."
