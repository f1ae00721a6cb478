"""`nas.interrupts`: a stop request is a flag, then `Interrupted`; the orderly stop is bounded by a
watchdog and a second signal, each ending the process with the one line (real signals, in a child)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from nas.errors import NasError
from nas.interrupts import STOPPED, Interrupted, catching_signals

_CHILD = r"""
import os, signal, sys, time
from nas.interrupts import catching_signals
with catching_signals(grace_s=float(sys.argv[1])):
    for _ in range(int(sys.argv[2])):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
    time.sleep(30)  # an orderly stop that hangs (a GCS that is gone)
"""


@pytest.mark.parametrize(("grace_s", "signals", "within"), [(1.0, 1, (0.8, 6)), (60.0, 2, (0, 6))])
def test_a_stop_that_hangs_ends_after_the_grace_period_or_a_second_signal(grace_s: float, signals: int,
                                                                          within: tuple[float, float]) -> None:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _CHILD, str(grace_s), str(signals)], capture_output=True,
                          text=True, timeout=60)
    took = time.monotonic() - start
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-3000:]
    assert done.stderr.splitlines() == [STOPPED], done.stderr[-3000:]
    assert within[0] < took < within[1] + 5, f"took {took:.1f} s"  # + the child's start-up


_STUCK_IN_C = r"""
import os, signal, sys, time
from nas.interrupts import catching_signals
with catching_signals(grace_s=1.0):
    # Like a Ray call waiting on a GCS that is gone: C code that retries on EINTR never returns to the
    # interpreter, so the Python handler never runs. Here the main thread blocks the signals instead.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    for _ in range(int(sys.argv[1])):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
    time.sleep(30)
"""


@pytest.mark.parametrize(("signals", "within"), [(1, (0.8, 6)), (2, (0, 6))])
def test_a_stop_ends_in_time_while_the_main_thread_never_runs_the_python_handler(
        signals: int, within: tuple[float, float]) -> None:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _STUCK_IN_C, str(signals)], capture_output=True, text=True,
                          timeout=60)
    took = time.monotonic() - start
    assert done.returncode == 128 + signal.SIGTERM, f"exit {done.returncode} after {took:.1f} s: {done.stderr[-3000:]}"
    assert done.stderr.splitlines() == [STOPPED], done.stderr[-3000:]
    assert within[0] < took < within[1] + 5, f"took {took:.1f} s"


def test_the_interpreter_gets_its_wakeup_fd_back() -> None:
    before = signal.set_wakeup_fd(-1)
    try:
        with catching_signals():
            pass
        assert signal.set_wakeup_fd(-1) == -1
    finally:
        signal.set_wakeup_fd(before)


def test_a_failure_after_a_stop_request_is_the_stop_and_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as err:
        with catching_signals() as signals:
            signals.check()
            signal.raise_signal(signal.SIGINT)
            assert signals.signum == signal.SIGINT
            raise NasError("joining the Ray cluster failed (exit -2)")  # its child got the same Ctrl+C
    assert err.value.signum == signal.SIGINT and str(err.value) == STOPPED
    assert signal.getsignal(signal.SIGTERM) is before
    assert signals.done.is_set(), "the watchdog is disarmed once the search is over"
    with pytest.raises(NasError, match="^boom$"), catching_signals():
        raise NasError("boom")  # no stop request: the failure itself


def test_the_watchdog_stays_quiet_when_the_stop_finishes_in_time() -> None:
    done = subprocess.run([sys.executable, "-c", (
        "import os, signal, time\nfrom nas.interrupts import Interrupted, catching_signals\n"
        "try:\n    with catching_signals(grace_s=1.0) as s:\n        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(0.1)\n        s.check()\nexcept Interrupted:\n    pass\ntime.sleep(2)\nprint('lived on')")],
        capture_output=True, text=True, timeout=60, env={**os.environ})
    assert done.returncode == 0 and done.stdout.strip() == "lived on" and done.stderr == "", done.stderr[-3000:]


def test_without_hard_exit_a_slow_stop_is_waited_for_and_a_second_signal_is_a_keyboard_interrupt() -> None:
    """`nas.search` in a notebook: the kernel is never ended; Ctrl+C twice unwinds the call instead."""
    done = subprocess.run([sys.executable, "-c", (
        "import os, signal, time\nfrom nas.interrupts import catching_signals\n"
        "with catching_signals(grace_s=0.5, hard_exit=False) as s:\n    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(1.5)\n    print('outlived the grace period', s.signum == signal.SIGINT)\n"
        "try:\n    with catching_signals(hard_exit=False):\n        os.kill(os.getpid(), signal.SIGINT)\n"
        "        time.sleep(0.1)\n        os.kill(os.getpid(), signal.SIGINT)\n        time.sleep(5)\n"
        "except KeyboardInterrupt:\n    print('second signal unwound')\n")],
        capture_output=True, text=True, timeout=60, env={**os.environ})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["outlived the grace period True", "second signal unwound"], done.stderr[-3000:]
