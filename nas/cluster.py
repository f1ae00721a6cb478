"""Connecting a search to Ray: a private loopback-only local cluster, or a cluster to join.

Without an address a search always starts its own one-machine cluster (never the one
`ray start` left in /tmp/ray), bound to 127.0.0.1 so nothing on the network can reach
it. Joining an address is checked first, each step with a time limit: the address form,
a TCP connect to the head, then a trial join in a child process, which keeps Ray's
retry warnings off the user's terminal and can be killed when it hangs (a port that is
not a Ray head makes Ray wait 40 s per attempt, twenty times over). A failure becomes
one `UserError` line that says what to fix: a missing or wrong token, a head that is
down, a flag value. `check_resources` then turns the cluster's CPUs into the number of
trials that can run at once. `connected` tears down what it started on every way out;
how a local cluster is started, shielded from the search's signals and watched is
`nas.local_cluster`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from nas.errors import UserError
from nas.local_cluster import shielded_start, start, watched

log = logging.getLogger(__name__)

_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):(?P<port>[0-9]{1,5})")
_ADDRESS_FORMS = ("`auto` (the cluster this machine is a node of) or host:port of the head "
                  "(port 1-65535, e.g. 10.0.0.5:6379)")
_PROBE_TAG = "nas-cluster-probe: "
_TCP_TIMEOUT_S = 5.0
# Texts Ray uses for a refused or missing token (the C++ client's status, its Python
# messages); a join that fails with one of them is an authentication problem.
_AUTH_MARKERS = ("InvalidAuthToken", "Unauthenticated", "Token authentication is enabled but")


def connect(address: str | None, num_cpus: int | None, timeout_s: float = 30.0) -> None:
    """Start a private local cluster (address None) or join `address` ('auto' or 'host:port').

    Idempotent if ray is already initialized. Every input is checked before anything starts.

    Args:
        address: None for a new local cluster; `auto` or host:port to join a running one.
        num_cpus: CPUs of the local cluster (None: all of this machine's); only without address.
        timeout_s: how long joining may take before it is given up.

    Raises:
        UserError: a bad flag value, or a cluster that cannot be joined (one line, with the fix).
    """
    quiet_ray_logs()
    host_port = None
    if address is None:
        if num_cpus is not None and num_cpus < 1:
            raise UserError(f"--num-cpus must be at least 1 (CPUs of the local Ray cluster); got {num_cpus}")
    else:
        host_port = _parse_address(address)
        if num_cpus is not None:
            raise UserError(
                f"--num-cpus {num_cpus} applies to a local cluster only; drop it with --address {_cut(address)} "
                "(each node's CPUs are set by `ray start --num-cpus` on that node)"
            )
    import ray

    if ray.is_initialized():
        return
    if address is None:
        start(num_cpus)
        return
    deadline = time.monotonic() + timeout_s
    if host_port is not None:
        _check_reachable(address, *host_port, timeout_s=min(_TCP_TIMEOUT_S, timeout_s))
    _probe_join(address, timeout_s=max(1.0, deadline - time.monotonic()))
    with shielded_start():
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    log.info("joined the Ray cluster at %s", ray.get_runtime_context().gcs_address)


@contextmanager
def connected(address: str | None, num_cpus: int | None, timeout_s: float = 30.0) -> Iterator[None]:
    """`connect`, and on the way out (a return, an error, an interrupt) `ray.shutdown()` if this call
    started or joined the cluster: a private local cluster's processes never outlive its search.
    A Ray session the caller had already started is left as it was."""
    import ray

    owned = not ray.is_initialized()
    try:
        connect(address, num_cpus, timeout_s)
        with watched() if owned and address is None else nullcontext():
            yield
    finally:
        if owned and ray.is_initialized():
            start = time.monotonic()
            ray.shutdown()
            log.info("Ray shut down in %.1f s", time.monotonic() - start)


def check_resources(cpus_per_trial: float) -> int:
    """After `connect`: how many trials can run at once, one node's CPUs holding whole trials.

    Raises:
        UserError: no alive node has `cpus_per_trial` CPUs, so no trial could ever start.
    """
    import ray

    if not cpus_per_trial > 0:
        raise UserError(f"--cpus-per-trial must be more than 0; got {cpus_per_trial}")
    cpus = [float(node["Resources"].get("CPU", 0.0)) for node in ray.nodes() if node.get("Alive")]
    biggest = max(cpus, default=0.0)
    if biggest < cpus_per_trial:
        raise UserError(
            f"--cpus-per-trial {cpus_per_trial:g} is more than any node of the Ray cluster has "
            f"(the biggest has {biggest:g} CPUs, {len(cpus)} nodes alive); give at most {biggest:g}"
        )
    # A trial cannot span nodes; the epsilon keeps 1.0 / 0.1 from flooring to 9.
    return sum(math.floor(c / cpus_per_trial + 1e-9) for c in cpus)


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of `prefixes`."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def quiet_ray_logs() -> None:
    """Silence Ray warnings that would show on every search and ask nothing of the user.

    `Token authentication is enabled for this Ray cluster` comes from
    `ray._private.authentication.authentication_token_setup` whenever Ray turns token
    authentication on by itself (every new local cluster, and `--address auto` with a
    token in ~/.ray): it is the safe default, so there is nothing to act on. Ray's own
    switch for it, setting RAY_AUTH_MODE, would also change whether the cluster
    authenticates, so the message is filtered instead. Idempotent.
    """
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _DropMessages) for f in logger.filters):
        logger.addFilter(_DropMessages("Token authentication is enabled for this Ray cluster"))


def _cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_address(address: str) -> tuple[str, int] | None:
    """(host, port) of a host:port address, None for `auto`; UserError for anything else."""
    if address == "auto":
        return None
    match = _HOST_PORT.fullmatch(address)
    # DNS limits: 63 characters a label, 253 a name.
    if (match is None or not 1 <= int(match["port"]) <= 65535 or len(match["host"]) > 253
            or max(len(label) for label in match["host"].split(".")) > 63):
        raise UserError(f"--address {_cut(address)!r} is not a Ray cluster address; give {_ADDRESS_FORMS}")
    return match["host"].strip("[]"), int(match["port"])


def _check_reachable(address: str, host: str, port: int, timeout_s: float) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except (socket.gaierror, UnicodeError) as err:
        reason = err.strerror if isinstance(err, socket.gaierror) else err
        raise UserError(f"--address {_cut(address)}: unknown host {_cut(host)!r} ({reason}); check the name") from None
    except TimeoutError:
        raise UserError(
            f"--address {_cut(address)}: no answer within {timeout_s:g} s; is the head up and port {port} open?"
        ) from None
    except OSError as err:
        raise UserError(
            f"--address {_cut(address)}: cannot connect ({err.strerror or err}); is the Ray head running there "
            f"(`ray start --head --port={port}`)?"
        ) from None


def _auth_hint(address: str) -> str:
    token = os.environ.get("RAY_AUTH_TOKEN")
    # With host:port Ray sends a token only in RAY_AUTH_MODE=token; `auto` turns the mode on itself.
    if token and address != "auto" and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return "RAY_AUTH_TOKEN is set but unused: set RAY_AUTH_MODE=token as well"
    if token:
        return "the cluster refused the token in RAY_AUTH_TOKEN; copy it again from `ray get-auth-token` on the head"
    mode = "" if address == "auto" else " and RAY_AUTH_MODE=token"
    return f"set RAY_AUTH_TOKEN to the head's token (run `ray get-auth-token` on the head){mode}"


def _probe_join(address: str, timeout_s: float) -> None:
    """Join and leave the cluster in a child process; UserError on any failure or after `timeout_s`."""
    # One GCS connect attempt instead of twenty (Ray reads this when it connects).
    env = {**os.environ, "RAY_gcs_server_port_wait_time_s": "1"}
    code = f"from nas.cluster import _probe_main; _probe_main({address!r}, {_TCP_TIMEOUT_S!r})"
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise UserError(
            f"--address {_cut(address)}: no Ray cluster answered within {timeout_s:.0f} s; is it the head's "
            "GCS port (`ray start --head --port`), and is this machine a node of that cluster?"
        ) from None
    lines = [line for line in done.stdout.splitlines() if line.startswith(_PROBE_TAG)]
    if not lines:
        tail = " | ".join(done.stderr.strip().splitlines()[-2:])
        raise UserError(f"--address {_cut(address)}: joining the Ray cluster failed (exit {done.returncode}): "
                        f"{_cut(tail, 200)}")
    result = json.loads(lines[-1][len(_PROBE_TAG):])
    if result["kind"] == "ok":
        return
    if result["kind"] == "auth":
        hint = _auth_hint(address)
        raise UserError(f"--address {_cut(address)}: the Ray cluster requires token authentication; {hint}")
    if result["kind"] == "none":
        raise UserError(
            "--address auto: no running Ray cluster on this machine; start one with `ray start --head` "
            "(or join one with `ray start --address`), or give --address host:port"
        )
    if result["kind"] == "unreachable":
        raise UserError(
            f"--address auto: the cluster last started on this machine, {result['detail']}, is gone; "
            "restart it (`ray start --head`) or give --address host:port"
        )
    raise UserError(f"--address {_cut(address)}: cannot join the Ray cluster: {_cut(result['detail'], 200)}")


def _probe_main(address: str, tcp_timeout_s: float) -> None:
    """Child side of `_probe_join`: try the join, print one tagged JSON line with the outcome."""
    try:
        result = _try_join(address, tcp_timeout_s)
    except Exception as err:  # the parent turns every failure into one line
        result = {"kind": _failure_kind(err), "detail": _last_line(err)}
    print(_PROBE_TAG + json.dumps(result), flush=True)


def _try_join(address: str, tcp_timeout_s: float) -> dict[str, Any]:
    import ray
    from ray._private.services import canonicalize_bootstrap_address

    if address == "auto":
        # A stale /tmp/ray/ray_current_cluster names a dead head: fail at TCP, not after 40 s.
        resolved = canonicalize_bootstrap_address("auto")
        host, _, port = resolved.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=tcp_timeout_s).close()
        except OSError as err:
            return {"kind": "unreachable", "detail": f"{resolved} ({err.strerror or err})"}
    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    ray.shutdown()
    return {"kind": "ok"}


def _failure_kind(err: BaseException) -> str:
    from ray.exceptions import AuthenticationError

    chain: list[BaseException] = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    text = " ".join(str(e) for e in chain)
    if any(isinstance(e, AuthenticationError) for e in chain) or any(m in text for m in _AUTH_MARKERS):
        return "auth"
    if any(isinstance(e, ConnectionError) and "Could not find any running Ray instance" in str(e) for e in chain):
        return "none"
    return "other"


def _last_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"
