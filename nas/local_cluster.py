"""The private local cluster of a search: started on loopback, shielded from the search's signals, watched.

`start` runs a new one-machine cluster bound to 127.0.0.1. While Ray starts (or joins a
cluster), `shielded_start` keeps the caller's SIGINT/SIGTERM handlers in place and gives the
processes Ray starts sessions of their own, so a signal to the search's process group (what a
shell or job system sends) stops the search, not the cluster under it. While the search runs,
`watched` ends the process with one line if the cluster's GCS or raylet dies, instead of Ray's
minute-long wait for them. Ending at once is safe: the run dir survives a kill at any moment.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["shielded_start", "start", "watched"]

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
WATCH_PERIOD_S = 0.5


def start(num_cpus: int | None) -> None:
    """Start a new one-machine cluster of `num_cpus` CPUs (None: all) on 127.0.0.1, shielded (`shielded_start`)."""
    import ray
    from ray._private import ray_constants

    # address="local" starts a new cluster: None or "auto" would join the one named in
    # /tmp/ray/ray_current_cluster (or RAY_ADDRESS), where num_cpus is an error.
    # Ray rewrites 127.0.0.1 given as the node IP to the machine's LAN address, except in
    # its single-machine mode (the default on macOS and Windows), where the node IP is
    # 127.0.0.1 and the GCS, raylet, agents, workers and this driver all bind to it. Ray
    # reads that mode from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at import, and it is
    # imported by now, so the constant is switched for the start only; later callers get
    # the node IP from the started node.
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with shielded_start():
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=False)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
    log.info("started a local Ray cluster at %s", ray.get_runtime_context().gcs_address)


@contextmanager
def shielded_start() -> Iterator[None]:
    """While ray.init runs: the caller's SIGINT/SIGTERM handlers stay, and the processes Ray starts
    (GCS, raylet, monitors) each get a session of their own.

    A shell or job system stops a job by signalling its process group; the GCS and raylet would
    get that signal too, and the driver then waits a minute for a GCS that is gone and exits with
    Ray's noise. In their own sessions they get only what `ray.shutdown` sends them, and still die
    with this process (Ray's kernel fate sharing, PR_SET_PDEATHSIG; without it Ray's reaper needs
    them in this process group, so they stay there). ray.init replaces SIGTERM's handler twice
    (with ones that exit mid-start-up, 15 or an abort); here it cannot. SIGINT/SIGTERM are also
    blocked in this thread while it runs, so no call inside Ray is cut short, and the threads Ray
    starts inherit the block and never take them; a pending one reaches the caller's handler on
    the way out, once that handler is installed again below Ray's. The children get the signal
    mask they would have had.
    """
    from ray._private import services
    from ray._private import utils as ray_utils

    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    popen, set_sigterm_handler = services.ConsolePopen, ray_utils.set_sigterm_handler
    own_session = sys.platform.startswith("linux") and ray_utils.detect_fate_sharing_support()

    class _Shielded(popen):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            ray_preexec = kwargs.get("preexec_fn")

            def preexec() -> None:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
                if ray_preexec is not None:
                    ray_preexec()

            kwargs["preexec_fn"] = preexec
            kwargs["start_new_session"] = own_session or kwargs.get("start_new_session", False)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = _Shielded
    ray_utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        services.ConsolePopen, ray_utils.set_sigterm_handler = popen, set_sigterm_handler
        _reinstall_handlers()
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _reinstall_handlers() -> None:
    """Give SIGINT/SIGTERM back to the Python handlers: Ray's core worker hooks SIGTERM below Python
    (a C++ failure handler that prints a stack dump before passing the signal on)."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers; Ray sets none from another thread either
    for signum in _STOP_SIGNALS:
        handler = signal.getsignal(signum)
        if handler is not None:  # None: set outside Python, nothing to give back
            signal.signal(signum, handler)


def _vital_processes() -> dict[str, subprocess.Popen]:
    """The GCS and raylet of the local cluster this process started, by name (none for a joined cluster)."""
    from ray._private import worker

    started = getattr(worker._global_node, "all_processes", None) or {}
    vital = {}
    for name in ("gcs_server", "raylet"):
        infos = started.get(name) or []
        if infos and infos[0].process is not None:
            vital[name] = infos[0].process
    return vital


def _how(code: int) -> str:
    """A Popen return code in words."""
    if code >= 0:
        return f"exit {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


@contextmanager
def watched() -> Iterator[None]:
    """While the block runs: if the GCS or raylet of the local cluster this process started exits,
    end this process at once with one line, exit status 1.

    A private cluster's GCS or raylet that dies (killed, out of memory, `ray stop` in another
    terminal) never comes back, yet Ray's driver waits a minute for it and then exits with a
    screen of C++ log lines. Ending at once is safe: the run dir survives a kill at any moment.
    """
    processes = _vital_processes()
    if not processes:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.wait(WATCH_PERIOD_S):
            for name, process in processes.items():
                code = process.poll()
                if code is not None and not done.is_set():
                    os.write(2, f"failed: the local Ray cluster's {name} died ({_how(code)}); re-run the same "
                                "command to resume\n".encode())
                    os._exit(1)

    thread = threading.Thread(target=watch, name="nas-cluster-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5 * WATCH_PERIOD_S)
