"""What stops a build from outside (Ctrl-C, SIGTERM) or from the user's own code (sys.exit), turned into
exit codes a build script can trust, in one place.

- SIGINT and SIGTERM raise `Interrupted` (a KeyboardInterrupt) in the main thread, and are remembered:
  code that swallows the exception (a converter's `except Exception` around a call that TorchScript
  wrapped, say) cannot make the build carry on, because every stage boundary calls `checkpoint()`,
  which raises it again. The CLI exits 130 (SIGINT) or 143 (SIGTERM).
- `deferred()` holds both signals back while a bundle is moved into place, so an interruption leaves
  either the previous bundle or the new one, never neither.
- `SystemExit` raised inside a build is the user's code exiting (edgepack itself never calls
  sys.exit there): a usage error naming the line, never a silent exit 0.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from .errors import UsageError

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: int | None = None  # the signal that interrupted the current guarded run


class Interrupted(KeyboardInterrupt):
    """The build was stopped by a signal; `exit_code` is 128 + its number."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _handler(signum: int, frame: object) -> None:
    global _received
    _received = signum
    raise Interrupted(signum)


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted while the block runs (main thread only; elsewhere a no-op)."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    outermost = all(handler is not _handler for handler in previous.values())
    if outermost:
        _received = None
    for signum in _SIGNALS:
        signal.signal(signum, _handler)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if outermost:
            _received = None


def checkpoint() -> None:
    """Raise Interrupted again when a signal arrived and something swallowed the exception it raised."""
    if _received is not None:
        raise Interrupted(_received)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the block runs (a bundle being moved into place); they are
    delivered when it ends."""
    checkpoint()
    with held():
        yield


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the block runs, even while an interruption is being handled
    (creating or removing a scratch folder: a signal in between would leave it behind). A held signal is
    raised again when the block ends, to whatever handler is in place then.

    Not a signal mask: the kernel gives a process-wide signal to any thread that does not block it, and
    torch's worker threads were started with nothing blocked, so only a Python-level handler (which always
    runs in the main thread) can hold it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    for signum in _SIGNALS:
        signal.signal(signum, lambda signum, frame: arrived.append(signum))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if arrived:
            signal.raise_signal(arrived[0])


def exit_error(exc: SystemExit) -> UsageError:
    """The usage error for the user's code calling sys.exit() (or exit(), quit()) during a build."""
    from .user_code import at_line

    code = exc.code
    where = at_line(exc)
    called = f"sys.exit({code!r})" if code is not None else "sys.exit()"
    return UsageError(
        f"The model's code (or a callable it named) called {called} while edgepack ran it; nothing was built{where}",
        "A model, its factory and data callables must return (or raise), not exit: remove the exit call, or put "
        'script code under `if __name__ == "__main__":`.',
    )
