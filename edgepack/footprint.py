"""Cold start and memory of an artifact, measured in a fresh Python process per artifact (a probe): the time
to load it and run it once, and how far the process's peak resident set size rises above its size after
importing the runtime.

A probe first imports its format's runtime (seconds: torch, ExecuTorch's bindings), which is not measured.
`Probes` starts a build's probes ahead, so that those imports run on the second core while the build is
still converting; each probe then waits, ready, and measures only when asked, after the build's timing
runs, with the build itself idle. Nothing is measured while anything else of the build runs, and no timing
run starts while a probe is still importing (`Probes.settle`).
"""

from __future__ import annotations

import json
import os
import resource
import select
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import jsonio
from .paths import scratch_folder

# The child process imports this same edgepack, whatever the working directory.
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
# ru_maxrss is in KiB on Linux, in bytes on macOS.
_MAXRSS_PER_MIB = 1024 * 1024 if sys.platform == "darwin" else 1024
_MARK = "edgepack-probe:"  # what the probe says is marked: a library may print to stdout too


@dataclass
class Footprint:
    """Cold start and memory of one artifact, measured in a fresh process."""

    cold_load_ms: float  # load the artifact + run it once
    peak_memory_mb: float  # growth of peak RSS over the process after importing the runtime

    METHOD = "a fresh process per artifact, runtime imported first: load + first run timed; peak memory = peak RSS (VmHWM, reset after the imports) minus RSS before loading"


class Probe:
    """One fresh process for one artifact of `format_name`: started, it imports the runtime and says so;
    `measure` then hands it the artifact, and it exits after answering."""

    def __init__(self, format_name: str, threads: int, folder: Path) -> None:
        self.key = (format_name, threads)
        self.owner = ""  # the target it was started for
        self._stderr_path = folder / f"probe-{os.getpid()}-{id(self)}.stderr"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "edgepack.footprint", format_name, str(threads), _defining_module(format_name)]
        with self._stderr_path.open("wb") as stderr:  # a file, not a pipe: a chatty import cannot block it
            self._process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env
            )
        assert self._process.stdout is not None
        self._said = _MarkedLines(self._process.stdout.fileno())
        self._ready = False

    def settle(self, timeout_s: float) -> None:
        """Wait until the imports are done (or the process has failed: `measure` says why)."""
        if not self._ready:
            self._ready = self._said.next(timeout_s) == "ready"

    def measure(self, path: Path, inputs: Path, timeout_s: float) -> dict[str, float]:
        self.settle(timeout_s)
        try:
            if not self._ready:
                raise RuntimeError(self._failure())
            assert self._process.stdin is not None
            self._process.stdin.write((json.dumps({"path": str(path), "inputs": str(inputs)}) + "\n").encode())
            self._process.stdin.flush()
            answer = self._said.next(timeout_s)
            if not answer:
                raise RuntimeError(self._failure())
            return json.loads(answer)
        except (BrokenPipeError, json.JSONDecodeError):
            raise RuntimeError(self._failure()) from None
        finally:
            self.close()

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()

    def _failure(self) -> str:
        self.close()
        text = self._stderr_path.read_text(encoding="utf-8", errors="replace").strip()
        last = text.splitlines()[-1] if text else f"exit code {self._process.returncode}"
        return f"footprint probe failed: {last}"


class Probes:
    """A build's probes, started ahead (`start`), taken by `measure_footprint`, the unused ones stopped at the
    end. A context manager: no probe outlives it."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._waiting: list[Probe] = []

    def __enter__(self) -> Probes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_unused()

    def start(self, format_name: str, threads: int, owner: str = "") -> None:
        """Start a probe for an artifact of `owner` (a target) to come. One that cannot start (no process
        left, say) is not the build's failure: the measurement starts its own later and reports why."""
        try:
            probe = Probe(format_name, threads, self._folder)
        except OSError:
            return
        probe.owner = owner
        self._waiting.append(probe)

    def take(self, format_name: str, threads: int) -> Probe:
        """The first waiting probe for this key (they were started in target order); a new one when none waits."""
        for probe in self._waiting:
            if probe.key == (format_name, threads):
                self._waiting.remove(probe)
                return probe
        return Probe(format_name, threads, self._folder)

    def settle(self, timeout_s: float = 300.0) -> None:
        """Before timing anything: every started probe done importing, so none competes for the cores."""
        for probe in self._waiting:
            probe.settle(timeout_s)

    def stop_unused(self, owner: str | None = None) -> None:
        """Stop the waiting probes started for `owner` (None: all of them)."""
        for probe in [p for p in self._waiting if owner is None or p.owner == owner]:
            probe.close()
            self._waiting.remove(probe)


def measure_footprint(
    format_name: str,
    path: Path,
    arrays: list[np.ndarray],
    threads: int,
    repeats: int = 1,
    timeout_s: float = 300.0,
    probes: Probes | None = None,
) -> Footprint:
    """Load and run the artifact in `repeats` fresh processes (one sample each: the median cold load and the
    largest peak are kept), the first one taken from `probes` when it holds one started ahead; RuntimeError
    with the probe's last stderr line when it fails."""
    with scratch_folder(prefix="edgepack-footprint-") as tmp:
        inputs = tmp / "inputs.npz"
        np.savez(inputs, *arrays)
        results = []
        for index in range(max(1, repeats)):
            probe = probes.take(format_name, threads) if probes is not None and index == 0 else None
            results.append((probe or Probe(format_name, threads, tmp)).measure(path, inputs, timeout_s))
    return Footprint(float(np.median([r["cold_load_ms"] for r in results])), max(r["peak_memory_mb"] for r in results))


class _MarkedLines:
    """The probe's marked stdout lines, read from the file descriptor itself: a buffered reader could hold a
    line that select() then waits for in vain."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = b""

    def next(self, timeout_s: float) -> str:
        """The next marked line, without its mark ('' at the process's end, or after `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                text = line.decode("utf-8", errors="replace").strip()
                if text.startswith(_MARK):
                    return text[len(_MARK) :]
            left = deadline - time.monotonic()
            # select() takes pipes only on POSIX; on Windows the read below waits without a deadline.
            if left <= 0 or (os.name != "nt" and not select.select([self._fd], [], [], left)[0]):
                return ""
            chunk = os.read(self._fd, 65536)
            if not chunk:
                return ""
            self._buffer += chunk


def _defining_module(format_name: str) -> str:
    """The module that registers the format, for the fresh process to import (a format may live outside edgepack)."""
    from .formats import FORMATS

    return type(FORMATS[format_name]).__module__


def _prepare(format_name: str, threads: int, module: str) -> Any:
    """In the fresh process: everything the runtime needs imported first, so only the artifact's own cost is
    counted (and nothing else: a probe of an ONNX artifact loads onnxruntime, not torch)."""
    import importlib

    from .formats import FORMATS

    importlib.import_module(module)  # registers the format
    fmt = FORMATS[format_name]
    with warnings.catch_warnings():  # ExecuTorch's bindings warn that their API is experimental
        warnings.simplefilter("ignore")
        for runtime in fmt.runtime_modules:
            importlib.import_module(runtime)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return fmt


def _measure(fmt: Any, path: str, inputs_path: str, threads: int) -> dict[str, float]:
    with np.load(inputs_path) as data:
        arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
    rss_before = _reset_peak_rss()
    t0 = time.perf_counter_ns()
    fmt.open_for_timing(Path(path), threads)(arrays)
    cold_ms = (time.perf_counter_ns() - t0) / 1e6
    return {"cold_load_ms": cold_ms, "peak_memory_mb": max(0.0, _peak_rss() - rss_before) / 1024}


def _reset_peak_rss() -> float:
    """Current RSS in KiB, after resetting the kernel's peak mark to it (Linux >= 4.0), so imports'
    transient peaks do not hide the artifact's; elsewhere the ru_maxrss high-water mark so far."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_status_kib("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _MAXRSS_PER_MIB


def _peak_rss() -> float:
    try:
        return _proc_status_kib("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _MAXRSS_PER_MIB


def _proc_status_kib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    raise OSError(f"{key} missing from /proc/self/status")


def _serve(format_name: str, threads: int, module: str) -> None:
    """The probe process: import, say so, wait for one artifact (none: the build did not need it), answer.
    At low priority: its imports must not take a core from the build's own torch threads, whose OpenMP pool
    waits at every op for a thread the scheduler put aside. It measures when the build is idle, so the
    priority does not change its figures."""
    if hasattr(os, "nice"):
        os.nice(10)
    fmt = _prepare(format_name, threads, module)
    print(_MARK + "ready", flush=True)
    request = sys.stdin.readline()
    if request.strip():
        asked = json.loads(request)
        print(_MARK + jsonio.dumps(_measure(fmt, asked["path"], asked["inputs"], threads)), flush=True)


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]), sys.argv[3])
