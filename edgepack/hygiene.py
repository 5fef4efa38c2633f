"""What edgepack's processes leave behind besides bundles, decided once, before any library loads.

- onnxruntime's official wheels send telemetry (1DS): on every import they create a device id and a
  growing SQLite log under ~/.cache/Microsoft/DeveloperTools/.onnxruntime and a `.ses` file in the
  temporary folder. edgepack turns it off (ORT_DISABLE_TELEMETRY=1, onnxruntime's documented switch,
  inherited by the child processes edgepack starts). Set ORT_DISABLE_TELEMETRY=0 to keep it on.
- The `edgepack` command takes seconds to import torch and the converters before it runs anything: a
  Ctrl-C or SIGTERM then exits at once with 130 or 143 (nothing is written yet), instead of a
  KeyboardInterrupt traceback from inside an import. Once a command runs, edgepack.interrupts decides.
- torch._dynamo (imported by torch.export and the ONNX exporter) creates `torchinductor_<user>` in the
  temporary folder at import. edgepack compiles nothing with inductor: unless TORCHINDUCTOR_CACHE_DIR is
  set, the cache goes to a per-process folder removed at exit.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile

TELEMETRY_SWITCH = "ORT_DISABLE_TELEMETRY"
_INDUCTOR_CACHE = "TORCHINDUCTOR_CACHE_DIR"


_owned: list[str] = []  # folders this process made for others' caches, removed at exit


def apply() -> None:
    if _is_command_line():
        _exit_at_once_on_signals()
    os.environ.setdefault(TELEMETRY_SWITCH, "1")
    if _INDUCTOR_CACHE not in os.environ:
        # A name, not a folder yet: torch creates it only if it is imported; removed at exit either way.
        folder = os.path.join(tempfile.gettempdir(), f"edgepack-torchinductor-{os.getpid()}")
        os.environ[_INDUCTOR_CACHE] = folder
        _owned.append(folder)
        atexit.register(_remove, folder, os.getpid())


def _remove(folder: str, pid: int) -> None:
    if os.getpid() == pid:  # not in a forked child, whose parent still uses it
        shutil.rmtree(folder, ignore_errors=True)


def _is_command_line() -> bool:
    """This process is the `edgepack` command (console script or python -m edgepack), not a library user."""
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    original = list(getattr(sys, "orig_argv", []))
    as_module = any(original[i : i + 2] == ["-m", "edgepack"] for i in range(len(original) - 1))
    return script in ("edgepack", "edgepack.exe") or as_module


def _exit_at_once_on_signals() -> None:
    def exit_now(signum: int, frame: object) -> None:
        for folder in _owned:  # os._exit skips atexit
            _remove(folder, os.getpid())
        os._exit(128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL):  # not one the host installed
            signal.signal(signum, exit_now)
