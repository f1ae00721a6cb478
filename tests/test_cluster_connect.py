"""`nas.cluster`: flag checks before anything starts, bounded joins with one-line errors, trials
at once from the nodes' CPUs; and, starting real Ray clusters (slow), a search's own loopback-only
cluster even when `ray start` left one for `ray.init()` to join."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from nas import cluster, local_cluster
from nas.cluster import check_resources, connect, quiet_ray_logs
from nas.errors import UserError
from tests.test_cluster import machine_env, ray_node


@pytest.fixture
def no_ray_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to start or join Ray fails the test: these checks must come first."""
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", forbidden)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("num_cpus", [0, -1])
def test_num_cpus_below_one_is_refused_before_ray_starts(num_cpus: int, no_ray_start: None) -> None:
    with pytest.raises(UserError, match=rf"^--num-cpus must be at least 1 .*got {num_cpus}$"):
        connect(None, num_cpus)


@pytest.mark.parametrize("address", ["garbage", "host:0", "host:65536", "host:", ":6379", "ray://head:10001",
                                     "two words:6379", "host:port", "http://head:6379/", "x" * 200 + ":6379"])
def test_malformed_address_is_refused_naming_flag_value_and_forms(address: str, no_ray_start: None) -> None:
    with pytest.raises(UserError) as err:
        connect(address, None)
    message = str(err.value)
    assert message.startswith("--address ") and "auto" in message and "host:port" in message and "\n" not in message
    assert address[:40] in message
    assert len(message) < 250, "a long value is cut short"


@pytest.mark.parametrize(("address", "expected"), [
    ("auto", None), ("10.0.0.5:6379", ("10.0.0.5", 6379)), ("head-1.example.org:1", ("head-1.example.org", 1)),
    ("[::1]:65535", ("::1", 65535)),
])
def test_address_forms_that_are_accepted(address: str, expected: tuple[str, int] | None) -> None:
    assert cluster._parse_address(address) == expected


def test_num_cpus_with_an_address_is_refused(no_ray_start: None) -> None:
    with pytest.raises(UserError, match=r"^--num-cpus 2 applies to a local cluster only"):
        connect("10.0.0.5:6379", 2)


def test_address_where_nothing_listens_fails_at_once_in_one_line(no_ray_start: None) -> None:
    port = _closed_port()
    start = time.monotonic()
    with pytest.raises(UserError, match=rf"^--address 127\.0\.0\.1:{port}: cannot connect \(Connection refused\)"):
        connect(f"127.0.0.1:{port}", None)
    assert time.monotonic() - start < 2


def test_unknown_host_is_named(no_ray_start: None) -> None:
    with pytest.raises(UserError, match=r"unknown host 'no-such-host\.invalid'"):
        connect("no-such-host.invalid:6379", None)


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port that accepts TCP connections and never answers, like a service that is not Ray."""
    server = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for c in conns:
            c.close()
        server.close()


def test_port_that_is_not_a_ray_head_fails_within_the_time_limit(silent_listener: int, no_ray_start: None) -> None:
    # The real probe child runs here: Ray alone would wait 40 s per attempt, twenty attempts.
    start = time.monotonic()
    with pytest.raises(UserError, match=r"no Ray cluster answered within 3 s") as err:
        connect(f"127.0.0.1:{silent_listener}", None, timeout_s=3)
    assert time.monotonic() - start < 8
    assert "\n" not in str(err.value)


def _fake_probe(monkeypatch: pytest.MonkeyPatch, stdout: str, stderr: str = "", returncode: int = 0) -> None:
    def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        assert kwargs["timeout"] > 0 and kwargs["env"]["RAY_gcs_server_port_wait_time_s"] == "1"
        return subprocess.CompletedProcess(cmd, returncode, stdout, stderr)

    monkeypatch.setattr(cluster.subprocess, "run", run)


_REFUSED = "the cluster refused the token in RAY_AUTH_TOKEN; copy it again from `ray get-auth-token` on the head"


@pytest.mark.parametrize(("env", "address", "hint"), [
    ({}, "10.0.0.5:6379", "set RAY_AUTH_TOKEN to the head's token (run `ray get-auth-token` on the head) "
                          "and RAY_AUTH_MODE=token"),
    ({}, "auto", "set RAY_AUTH_TOKEN to the head's token (run `ray get-auth-token` on the head)"),
    ({"RAY_AUTH_TOKEN": "t"}, "10.0.0.5:6379", "RAY_AUTH_TOKEN is set but unused: set RAY_AUTH_MODE=token as well"),
    ({"RAY_AUTH_TOKEN": "t", "RAY_AUTH_MODE": "token"}, "10.0.0.5:6379", _REFUSED),
    ({"RAY_AUTH_TOKEN": "t"}, "auto", _REFUSED),
])
def test_token_refused_becomes_one_line_saying_what_to_set(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], address: str, hint: str
) -> None:
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    _fake_probe(monkeypatch, 'nas-cluster-probe: {"kind": "auth", "detail": "x"}\n')
    with pytest.raises(UserError) as err:
        cluster._probe_join(address, timeout_s=5)
    assert str(err.value) == f"--address {address}: the Ray cluster requires token authentication; {hint}"


@pytest.mark.parametrize(("stdout", "stderr", "expected"), [
    ('nas-cluster-probe: {"kind": "none", "detail": "x"}', "", "--address auto: no running Ray cluster"),
    ('nas-cluster-probe: {"kind": "unreachable", "detail": "10.0.0.5:6379 (Connection refused)"}', "",
     "--address auto: the cluster last started on this machine, 10.0.0.5:6379 (Connection refused), is gone"),
    ('nas-cluster-probe: {"kind": "other", "detail": "RuntimeError: boom"}', "",
     "--address auto: cannot join the Ray cluster: RuntimeError: boom"),
    ("", "Traceback (most recent call last):\nImportError: no ray\n", "(exit 1): Traceback (most recent call last):"),
])
def test_each_probe_outcome_is_one_line(monkeypatch: pytest.MonkeyPatch, stdout: str, stderr: str,
                                        expected: str) -> None:
    _fake_probe(monkeypatch, "ray chatter\n" + stdout, stderr, returncode=1 if stderr else 0)
    with pytest.raises(UserError) as err:
        cluster._probe_join("auto", timeout_s=5)
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("stale", [False, True])
def test_probe_of_auto_without_a_live_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stale: bool,
                                              capsys: pytest.CaptureFixture[str], no_ray_start: None) -> None:
    from ray._private import services

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setattr(services, "find_gcs_addresses", set)  # no GCS process (other tests may run one)
    port = _closed_port()
    if stale:  # what a head that died without `ray stop` leaves behind
        (tmp_path / "ray").mkdir()
        (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
    cluster._probe_main("auto", 1.0)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(line.removeprefix("nas-cluster-probe: "))
    if stale:
        assert result["kind"] == "unreachable" and f":{port} (Connection refused)" in result["detail"], result
    else:
        assert result["kind"] == "none", result


def test_failure_kinds_of_real_ray_errors() -> None:
    from ray.exceptions import AuthenticationError

    assert cluster._failure_kind(AuthenticationError("RPC error: InvalidAuthToken")) == "auth"
    try:  # the way ray.init reports it: a ConnectionError caused by a RuntimeError holding the traceback text
        try:
            raise RuntimeError("Failed to connect to GCS. Last connection error: ... Unauthenticated: RPC error")
        except RuntimeError as inner:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.5:6379") from inner
    except ConnectionError as err:
        assert cluster._failure_kind(err) == "auth"
    assert cluster._failure_kind(ConnectionError("Could not find any running Ray instance. Please ...")) == "none"
    assert cluster._failure_kind(RuntimeError("Failed to connect to GCS")) == "other"


def _nodes(monkeypatch: pytest.MonkeyPatch, *nodes: tuple[bool, float]) -> None:
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": a, "Resources": {"CPU": c, "memory": 1e9}} for a, c in nodes])


@pytest.mark.parametrize(("cpus_per_trial", "expected"), [(1, 3), (0.5, 6), (2, 1), (0.1, 30)])
def test_trials_at_once_count_whole_trials_per_alive_node(monkeypatch: pytest.MonkeyPatch, cpus_per_trial: float,
                                                         expected: int) -> None:
    _nodes(monkeypatch, (True, 2.0), (True, 1.0), (False, 64.0))
    assert check_resources(cpus_per_trial) == expected


@pytest.mark.parametrize("cpus_per_trial", [1000, 4])
def test_trial_bigger_than_every_alive_node_is_refused(monkeypatch: pytest.MonkeyPatch, cpus_per_trial: float) -> None:
    _nodes(monkeypatch, (True, 2.0), (True, 1.0), (False, 64.0))  # the dead node's 64 CPUs do not count
    with pytest.raises(UserError, match=rf"^--cpus-per-trial {cpus_per_trial} is more than any node .*"
                                        r"the biggest has 2 CPUs, 2 nodes alive\); give at most 2$"):
        check_resources(cpus_per_trial)


def test_zero_cpus_per_trial_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _nodes(monkeypatch, (True, 2.0))
    with pytest.raises(UserError, match=r"^--cpus-per-trial must be more than 0; got 0$"):
        check_resources(0)


def test_token_enabled_warning_is_dropped_and_others_kept(caplog: pytest.LogCaptureFixture) -> None:
    quiet_ray_logs()
    quiet_ray_logs()
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    assert sum(isinstance(f, cluster._DropMessages) for f in logger.filters) == 1
    with caplog.at_level(logging.WARNING):
        logger.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
        logger.warning("Token authentication is disabled for this Ray cluster. Anyone with network access ...")
    assert [r.getMessage()[:40] for r in caplog.records] == ["Token authentication is disabled for thi"]


# --- real clusters ---------------------------------------------------------------------------------

_LOCAL_REPORT = r"""
import json, sys, psutil, ray
from nas.cluster import connect
connect(None, 1)
ray.get(ray.remote(lambda: 1).remote())  # a worker process exists and listens
me = psutil.Process()
listening = []
for p in [me, *me.children(recursive=True)]:
    try:
        conns = p.net_connections(kind="inet")
        name = p.name()
    except psutil.NoSuchProcess:
        continue
    listening += [[name, c.laddr.ip, c.laddr.port] for c in conns if c.status == psutil.CONN_LISTEN]
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address, "cpus": ray.cluster_resources().get("CPU"),
                  "nodes": len(ray.nodes()), "listening": listening}))
"""


def _run_local_search_cluster(env: dict[str, str]) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, "-c", _LOCAL_REPORT], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    # Short: Ray's unix socket paths under it must stay within 107 bytes.
    with tempfile.TemporaryDirectory(prefix="nas-ray-", dir="/tmp") as path:
        yield Path(path)


@pytest.mark.slow
def test_local_cluster_listens_on_loopback_only(tmp_path: Path, ray_tmp: Path) -> None:
    report, stderr = _run_local_search_cluster(machine_env(tmp_path, ray_tmp))
    names = {name for name, _, _ in report["listening"]}
    assert {"gcs_server", "raylet"} <= names and len(report["listening"]) >= 4, report  # driver and a worker too
    exposed = [s for s in report["listening"] if s[1] not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert not exposed, exposed
    assert report["gcs"].startswith("127.0.0.1:")
    assert "Token authentication is enabled" not in stderr, stderr


@pytest.mark.slow
def test_local_cluster_is_new_even_when_ray_start_left_one_to_join(tmp_path: Path, ray_tmp: Path) -> None:
    env = machine_env(tmp_path, ray_tmp)
    port = _closed_port()
    with ray_node(["--head", f"--port={port}", "--num-cpus", "1"], env, tmp_path / "head.log"):
        named = (ray_tmp / "ray" / "ray_current_cluster").read_text().strip()
        assert named.endswith(f":{port}")  # what a plain ray.init() would join, where num_cpus is an error
        report, stderr = _run_local_search_cluster(env)
    assert report["gcs"] != named and report["gcs"].startswith("127.0.0.1:"), report
    assert report["cpus"] == 1 and report["nodes"] == 1, report
    assert "Traceback" not in stderr, stderr


# --- start-up shielded from signals ----------------------------------------------------------------

_CHILD_REPORT = ("import os; status = open('/proc/self/status').read();"
                 "blocked = int(status.split('SigBlk:')[1].split()[0], 16);"
                 "print(os.getsid(0) == os.getpid(), bool(blocked >> 1 & 1), bool(blocked >> 14 & 1))")
"""A child's view: in a session of its own?  SIGINT (2) blocked?  SIGTERM (15) blocked?  (bit n-1 of SigBlk)"""


@pytest.fixture
def recorded_signals() -> Iterator[list[int]]:
    """SIGINT/SIGTERM handlers that record the signal; the previous ones come back afterwards."""
    got: list[int] = []
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in saved:
        signal.signal(s, lambda signum, frame: got.append(signum))
    try:
        yield got
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def test_a_signal_during_start_up_waits_and_then_reaches_our_handler(recorded_signals: list[int]) -> None:
    from ray._private import utils as ray_utils

    with local_cluster.shielded_start():
        ray_utils.set_sigterm_handler(lambda signum, frame: sys.exit(signum))  # what ray.init does
        for signum in (signal.SIGTERM, signal.SIGINT):  # to this thread: it waits until Ray is up
            signal.pthread_kill(threading.main_thread().ident, signum)
        time.sleep(0.05)
        assert recorded_signals == [], "delivered while Ray was starting"
        os.kill(os.getpid(), signal.SIGTERM)  # to the process: another thread may take it, our handler runs
        time.sleep(0.05)
    deadline = time.monotonic() + 2
    while len(recorded_signals) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(recorded_signals) == [signal.SIGINT, signal.SIGTERM, signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    assert ray_utils.set_sigterm_handler.__module__ == "ray._private.utils"  # Ray's own again


def test_processes_ray_starts_get_their_own_session_and_the_usual_signal_mask() -> None:
    from ray._private import services

    popen = services.ConsolePopen

    def ray_preexec() -> None:  # what Ray's start_ray_process passes
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    with local_cluster.shielded_start():
        child = services.ConsolePopen([sys.executable, "-c", _CHILD_REPORT], stdout=subprocess.PIPE, text=True,
                                      preexec_fn=ray_preexec)
        out, _ = child.communicate(timeout=30)
    assert out.split() == ["True", "True", "False"], out  # own session; SIGINT blocked by Ray; SIGTERM not
    assert services.ConsolePopen is popen
    outside = subprocess.run([sys.executable, "-c", _CHILD_REPORT], capture_output=True, text=True, timeout=30)
    assert outside.stdout.split()[0] == "False", "a plain child shares our session"


_TEARDOWN = r"""
import json, sys, psutil, ray
from nas.cluster import connected
pids = []
try:
    with connected(None, 1):
        me = psutil.Process()
        pids = [p.pid for p in me.children(recursive=True) if p.name() in ("gcs_server", "raylet")]
        sessions = sorted({psutil.Process(pid).pid == __import__("os").getsid(pid) for pid in pids})
        print(json.dumps({"pids": pids, "own_sessions": sessions}), flush=True)
        raise RuntimeError("boom")
except RuntimeError:
    pass
print(json.dumps({"initialized": ray.is_initialized(),
                  "alive": [p for p in pids if psutil.pid_exists(p)
                            and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]}))
"""


@pytest.mark.slow
def test_a_local_cluster_in_its_own_sessions_is_torn_down_on_an_error(tmp_path: Path, ray_tmp: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _TEARDOWN], env=machine_env(tmp_path, ray_tmp),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    started, after = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert len(started["pids"]) == 2 and started["own_sessions"] == [True], started
    assert after == {"initialized": False, "alive": []}, (after, done.stderr[-3000:])


_WATCHED = r"""
import subprocess, sys, time
from unittest import mock
from nas import local_cluster
quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # our pipes close when we exit
gcs = subprocess.Popen(["sleep", sys.argv[1]], **quiet)
raylet = subprocess.Popen(["sleep", "5"], **quiet)
with mock.patch.object(local_cluster, "_vital_processes", lambda: {"gcs_server": gcs, "raylet": raylet}):
    with local_cluster.watched():
        time.sleep(float(sys.argv[2]))
print("left the block", flush=True)
raylet.kill()
"""


@pytest.mark.parametrize(("dies_after", "block_s", "expected"), [
    (0.3, 30, (1, "", "failed: the local Ray cluster's gcs_server died (exit 0); re-run the same command to resume")),
    (30, 0.3, (0, "left the block", "")),
])
def test_a_local_cluster_process_that_dies_under_the_search_ends_it_with_one_line(
        dies_after: float, block_s: float, expected: tuple[int, str, str]) -> None:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _WATCHED, str(dies_after), str(block_s)], capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode, done.stdout.strip(), done.stderr.strip()) == expected, done.stderr[-3000:]
    assert time.monotonic() - start < 10, "ended within a few watch periods, not after the block"
