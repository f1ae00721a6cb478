"""How a search stops on SIGINT or SIGTERM: within seconds, always with the same one line.

The first signal sets a flag that the search loop checks (`Signals.check` raises `Interrupted`),
so the run dir is left consistent and Ray is shut down in order. The orderly stop is bounded:
a second signal, or a stop still running `STOP_GRACE_S` after the first, ends the process at
once with the line and exit status 128 + signal, from a watchdog thread, because the main
thread may be stuck inside Ray (a GCS that is gone is waited for a minute). The watchdog learns
of each signal from the interpreter's wakeup fd, not from the Python handler: a handler runs only
when the main thread returns to bytecode, which a C call that retries on EINTR never does. Ending
at once is safe: the run dir survives a kill at any moment. A failure that follows a stop request (a child
killed by the same signal, Ray torn down under Tune) is reported as the stop, not as an error.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from nas.errors import NasError

log = logging.getLogger(__name__)

__all__ = ["STOPPED", "STOP_GRACE_S", "Interrupted", "Signals", "catching_signals"]

STOP_GRACE_S = 15.0
"""How long an orderly stop after SIGINT/SIGTERM may take before the process exits at once."""
STOPPED = "stopped; re-run the same command to resume"
_POLL_S = 0.1


class Interrupted(NasError):
    """The search was stopped by a signal; the run dir is consistent and a re-run resumes it."""

    def __init__(self, signum: int) -> None:
        super().__init__(STOPPED)
        self.signum = signum


class Signals:
    """The stop request: SIGINT and SIGTERM set `signum`; see the module docstring for the bounds.

    The handler only assigns (it may run while the main thread holds any lock, so it takes none).
    With `hard_exit`, the watchdog thread started by `catching_signals` counts the signals on the
    wakeup socket, sets the same request if the handler has not run yet, and ends the process at a
    second signal or at the deadline.
    """

    def __init__(self, grace_s: float = STOP_GRACE_S, hard_exit: bool = True) -> None:
        self.signum: int | None = None
        self.grace_s = grace_s
        self.hard_exit = hard_exit
        self.deadline: float | None = None
        self.done = threading.Event()
        self.received = 0  # signals seen on the wakeup socket (watchdog thread only)

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and not self.hard_exit:  # the main thread runs handlers: this unwinds it
            raise KeyboardInterrupt
        self._request(signum)

    def _request(self, signum: int) -> None:
        if self.signum is None:
            self.deadline = time.monotonic() + self.grace_s
            self.signum = signum

    def watch(self, wakeup: _Wakeup) -> None:
        """Until `done` is set: count the signals on `wakeup`; end the process at the second one, or once
        the stop request is older than `grace_s`. The sockets are closed here, not by the main thread,
        which would close them under this thread's select(); `done` is set only after the interpreter
        stopped writing to them."""
        try:
            while not self.done.is_set():
                if select.select([wakeup.reader], [], [], _POLL_S)[0]:
                    for signum in _drain(wakeup.reader):
                        self.received += 1
                        self._request(signum)
                        if self.received > 1:
                            _exit_now(signum)
                if self.signum is not None and self.deadline is not None and time.monotonic() > self.deadline:
                    _exit_now(self.signum)
        finally:
            wakeup.close()

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self.handle)

    def check(self) -> None:
        """Raise `Interrupted` once a stop was requested."""
        if self.signum is not None:
            raise Interrupted(self.signum)


def _drain(wakeup: socket.socket) -> list[int]:
    """The signal numbers written to the wakeup socket since the last call (one byte per signal)."""
    try:
        return [b for b in wakeup.recv(64) if b in (signal.SIGINT, signal.SIGTERM)]
    except BlockingIOError:
        return []


class _Wakeup:
    """A socket pair whose write end is the interpreter's wakeup fd: its C signal handler writes each
    signal's number there at once, whatever the main thread is doing."""

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        for end in (self.reader, self.writer):
            end.setblocking(False)  # the C handler must never block on a full buffer
        self.saved = signal.set_wakeup_fd(self.writer.fileno(), warn_on_full_buffer=False)

    def restore(self) -> None:
        """Give the interpreter back its previous wakeup fd (before `done` is set: see `Signals.watch`)."""
        signal.set_wakeup_fd(self.saved)

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


def _exit_now(signum: int) -> None:
    os.write(2, f"{STOPPED}\n".encode())
    os._exit(128 + signum)


@contextmanager
def catching_signals(grace_s: float = STOP_GRACE_S, hard_exit: bool = True) -> Iterator[Signals]:
    """Our SIGINT/SIGTERM handlers while the block runs (the previous ones after); any failure after a
    stop request is raised as `Interrupted`. Leaving the block disarms the watchdog. Without `hard_exit`
    (a notebook), nothing ends the process: a second signal raises `KeyboardInterrupt` where the main
    thread is, and the first waits for the orderly stop however long it takes."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signals = Signals(grace_s, hard_exit)
    wakeup = _Wakeup() if hard_exit else None
    if wakeup is not None:
        threading.Thread(target=signals.watch, args=(wakeup,), name="nas-stop-watchdog", daemon=True).start()
    signals.install()
    try:
        yield signals
    except Exception as err:
        if signals.signum is None or isinstance(err, Interrupted):
            raise
        log.info("after the stop request: %s: %s", type(err).__name__, err)
        raise Interrupted(signals.signum) from None
    finally:
        if wakeup is not None:
            wakeup.restore()
        signals.done.set()
        for signum, handler in saved.items():
            signal.signal(signum, handler)
