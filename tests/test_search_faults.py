"""Whole searches under faults: signals (to the search, to its whole process group, while its
cluster starts), a full disk mid-search (the run dir's, Tune's temp files'), evaluators that
always fail, bounds nothing meets. Each resumed run must have every trial exactly once."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from nas.config import Objective, RunConfig
from nas.errors import NasError
from nas.run_dir import DiskFullError, RunDir
from nas.runner import run_search

pytestmark = pytest.mark.slow


def _config(lut_path: Path, trials: int, **objective) -> RunConfig:
    return RunConfig(space="proxylessnas", strategy="evolution", evaluator="lut", trials=trials, archs_per_trial=50,
                     hardware=str(lut_path), objective=Objective(metric="macs", **objective))


def _trial_numbers(run_dir: Path) -> list[int]:
    return [json.loads(line)["trial"] for line in (run_dir / "trials.jsonl").read_text().splitlines()]


def test_a_full_disk_stops_the_search_with_one_error_and_the_same_command_resumes(
        ray_local, lut_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_append = RunDir.append_trials
    calls = {"n": 0}

    def append_then_fill(self: RunDir, records) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise DiskFullError("disk full while writing trials.jsonl (No space left on device)")
        real_append(self, records)

    monkeypatch.setattr(RunDir, "append_trials", append_then_fill)
    config = _config(lut_path, trials=400)
    with pytest.raises(DiskFullError, match="disk full"):
        run_search(config, tmp_path)
    assert _trial_numbers(tmp_path) == list(range(100))
    monkeypatch.undo()
    run_search(config, tmp_path)
    assert _trial_numbers(tmp_path) == list(range(400))


def test_a_search_whose_every_trial_fails_stops_with_the_first_error(
        ray_local, lut_path: Path, tmp_path: Path) -> None:
    table = tmp_path / "table.yaml"
    table.write_bytes(lut_path.read_bytes())

    def corrupt_the_table_once_checked(done: int, total: int, best) -> None:
        table.write_text("entries: [")  # workers now fail to load what the driver checked

    with pytest.raises(NasError, match="every trial failed .*first error: UserError: .*table.yaml"):
        run_search(_config(table, trials=200), tmp_path / "run", num_cpus=2,  # Ray workers: the table is re-read there
                   progress=corrupt_the_table_once_checked)
    lines = [json.loads(line) for line in (tmp_path / "run" / "trials.jsonl").read_text().splitlines()]
    assert lines and all(r["status"] == "failed" and "table.yaml" in r["error"] for r in lines)


def test_no_feasible_arch_is_said_plainly(ray_local, lut_path: Path, tmp_path: Path) -> None:
    from nas.hardware.table import LatencyTable
    from nas.space import load_space

    space = load_space("proxylessnas")
    bound = LatencyTable.load(lut_path).lower_bound(space) * 1.0001  # allowed, but met by nearly no arch
    result = run_search(_config(lut_path, trials=100, max_latency_ms=bound), tmp_path)
    assert result.n_feasible == 0
    assert result.best and not any(r["feasible"] for r in result.best)
    assert all(r["violations"]["latency_ms"][1] == pytest.approx(bound) for r in result.best)
    stored = json.loads((tmp_path / "best.json").read_text())
    assert [r["hash"] for r in stored] == [r["hash"] for r in result.best]
    assert len({r["hash"] for r in stored}) == len(stored)


def _start(args: list[str], err: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nas.cli", "search", *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(err, "w"))


# Exhaustive: on Ray, make test stops searches with SIGTERM to the whole process group and with SIGINT or SIGTERM
# while the cluster starts (below); the in-process twin of this test (tests/test_in_process.py) sends SIGTERM.
@pytest.mark.parametrize(("signum", "code"), [pytest.param(signal.SIGINT, 130, marks=pytest.mark.exhaustive),
                                              pytest.param(signal.SIGTERM, 143, marks=pytest.mark.exhaustive)])
def test_a_signal_stops_the_search_cleanly_and_the_same_command_resumes(
        lut_path: Path, tmp_path: Path, signum: int, code: int) -> None:
    run_dir = tmp_path / "run"
    args = ["--evaluator", "lut", "--hardware", str(lut_path), "--trials", "3000", "--archs-per-trial", "10",
            "--run-dir", str(run_dir), "--num-cpus", "2"]
    err = tmp_path / "stderr.txt"
    proc = _start(args, err)
    deadline = time.monotonic() + 180
    log = run_dir / "trials.jsonl"
    while proc.poll() is None and time.monotonic() < deadline and \
            (not log.exists() or len(log.read_text().splitlines()) < 50):
        time.sleep(0.1)
    assert proc.poll() is None, f"the search ended before the signal: {err.read_text()[-3000:]}"
    sent = time.monotonic()
    os.kill(proc.pid, signum)
    try:
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stopped_in = time.monotonic() - sent
    stderr = err.read_text()
    assert rc == code, stderr[-3000:]
    assert "stopped; re-run the same command to resume" in stderr, stderr[-3000:]
    for bad in ("Tuner.restore", "Traceback", "Aborted", "Trials did not complete"):
        assert bad not in stderr, stderr[-3000:]
    assert stopped_in < 20, f"took {stopped_in:.1f} s to stop"
    assert 50 <= len(_trial_numbers(run_dir)) < 3000
    done = subprocess.run([sys.executable, "-m", "nas.cli", "search", *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _trial_numbers(run_dir) == list(range(3000))


def test_a_killed_worker_loses_nothing_and_leaves_no_stray_error(lut_path: Path, tmp_path: Path) -> None:
    import psutil

    run_dir = tmp_path / "run"
    args = ["--evaluator", "lut", "--hardware", str(lut_path), "--trials", "2000", "--archs-per-trial", "10",
            "--run-dir", str(run_dir), "--num-cpus", "2"]
    err = tmp_path / "stderr.txt"
    proc = _start(args, err)
    log = run_dir / "trials.jsonl"
    killed = None
    deadline = time.monotonic() + 180
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 50:
            workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                       if "evaluate_trial" in " ".join(p.cmdline()) or "ImplicitFunc" in " ".join(p.cmdline())]
            if workers:
                workers[0].kill()
                killed = workers[0].pid
        time.sleep(0.05)
    try:
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stderr = err.read_text()
    assert killed is not None, f"no trial worker found to kill: {stderr[-3000:]}"
    assert rc == 0, stderr[-3000:]
    assert "Trials did not complete" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert _trial_numbers(run_dir) == list(range(2000))


# --- stop requests and failures of Ray's and Tune's own machinery ---------------------------------

_STOPPED = "stopped; re-run the same command to resume"
_CLUSTER = ("gcs_server", "raylet")


def _wait_for_trials(proc: subprocess.Popen, run_dir: Path, n: int, err: Path) -> None:
    log = run_dir / "trials.jsonl"
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline and \
            (not log.exists() or len(log.read_text().splitlines()) < n):
        time.sleep(0.1)
    assert proc.poll() is None, f"the search ended before the test's fault: {err.read_text()[-3000:]}"


def _args(lut_path: Path, run_dir: Path, trials: int) -> list[str]:
    return ["--evaluator", "lut", "--hardware", str(lut_path), "--trials", str(trials), "--archs-per-trial", "10",
            "--run-dir", str(run_dir), "--num-cpus", "2"]


def _said(stderr: str) -> list[str]:
    """stderr lines besides the table announcement and progress: what the user reads as the outcome."""
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith(("latency table:", "warning:", "[search]"))]


def _cluster_of(pid: int) -> dict[int, psutil.Process]:
    found = {}
    try:
        for p in psutil.Process(pid).children(recursive=True):
            try:
                if p.name() in _CLUSTER:
                    found[p.pid] = p
            except psutil.NoSuchProcess:
                continue
    except psutil.NoSuchProcess:
        pass
    return found


def _still_alive(procs: dict[int, psutil.Process], timeout: float = 15) -> list[str]:
    """The processes of `procs` still running after `timeout` s (a zombie counts as gone)."""
    def alive(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout
    while any(alive(p) for p in procs.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [f"{p.pid} {p.name()}" for p in procs.values() if alive(p)]


def _wait_recording_cluster(proc: subprocess.Popen, timeout: float) -> tuple[int | None, dict[int, psutil.Process]]:
    """Wait for the search to exit, noting its cluster's processes as they come (for the check that they went)."""
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        seen.update(_cluster_of(proc.pid))
        time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None, seen
    return proc.returncode, seen


def test_sigterm_to_the_whole_process_group_stops_the_search_and_then_its_cluster(
        lut_path: Path, tmp_path: Path) -> None:
    run_dir, err = tmp_path / "run", tmp_path / "stderr.txt"
    proc = _start(_args(lut_path, run_dir, 3000), err)
    _wait_for_trials(proc, run_dir, 50, err)
    cluster = _cluster_of(proc.pid)
    assert proc.poll() is None and sorted(p.name() for p in cluster.values()) == sorted(_CLUSTER), \
        f"no running search with its cluster to signal: {err.read_text()[-3000:]}"
    assert all(os.getsid(pid) == pid for pid in cluster), "the cluster's processes share the search's session"
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)  # what a shell or job system does to stop a job
    rc, _ = _wait_recording_cluster(proc, 60)
    stopped_in, stderr = time.monotonic() - sent, err.read_text()
    assert rc == 143, f"exit {rc} after {stopped_in:.1f} s: {stderr[-3000:]}"
    assert _said(stderr) == [_STOPPED], stderr[-3000:]
    assert stopped_in < 20, f"took {stopped_in:.1f} s to stop"
    assert not _still_alive(cluster), f"the cluster outlived its search: {_still_alive(cluster, 0)}"
    assert 50 <= len(_trial_numbers(run_dir)) < 3000
    done = subprocess.run([sys.executable, "-m", "nas.cli", "search", *_args(lut_path, run_dir, 3000)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _trial_numbers(run_dir) == list(range(3000))


def test_a_stop_that_hangs_in_ray_ends_after_the_grace_period_with_the_same_line(
        lut_path: Path, tmp_path: Path) -> None:
    from nas.interrupts import STOP_GRACE_S

    run_dir, err = tmp_path / "run", tmp_path / "stderr.txt"
    proc = _start(_args(lut_path, run_dir, 3000), err)
    _wait_for_trials(proc, run_dir, 50, err)
    cluster = _cluster_of(proc.pid)
    try:
        for p in cluster.values():
            p.suspend()  # a GCS and raylet that no longer answer: Ray's own shutdown would wait for them
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        rc, _ = _wait_recording_cluster(proc, 60)
    finally:
        for p in cluster.values():
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    stopped_in, stderr = time.monotonic() - sent, err.read_text()
    assert rc == 143, f"exit {rc} after {stopped_in:.1f} s: {stderr[-3000:]}"
    assert _said(stderr) == [_STOPPED], stderr[-3000:]
    assert STOP_GRACE_S - 1 < stopped_in < STOP_GRACE_S + 10, f"took {stopped_in:.1f} s to stop"
    done = _trial_numbers(run_dir)
    assert len(done) >= 50 and done == list(range(len(done)))


@pytest.mark.parametrize("victim", [pytest.param("gcs_server", marks=pytest.mark.exhaustive), "raylet"])
def test_a_cluster_process_killed_under_the_search_ends_it_at_once_with_one_line(
        lut_path: Path, tmp_path: Path, victim: str) -> None:
    run_dir, err = tmp_path / "run", tmp_path / "stderr.txt"
    proc = _start(_args(lut_path, run_dir, 3000), err)
    _wait_for_trials(proc, run_dir, 50, err)
    cluster = _cluster_of(proc.pid)
    killed = next(p for p in cluster.values() if p.name() == victim)
    sent = time.monotonic()
    killed.kill()  # out of memory, `ray stop` in another terminal, ...: Ray alone waits a minute, then dumps logs
    rc, _ = _wait_recording_cluster(proc, 60)
    stopped_in, stderr = time.monotonic() - sent, err.read_text()
    assert rc == 1, f"exit {rc} after {stopped_in:.1f} s: {stderr[-3000:]}"
    assert _said(stderr) == [f"failed: the local Ray cluster's {victim} died (killed by SIGKILL); re-run the same "
                             "command to resume"], stderr[-3000:]
    assert stopped_in < 5, f"took {stopped_in:.1f} s"
    assert not _still_alive(cluster), f"the cluster outlived its search: {_still_alive(cluster, 0)}"
    done = _trial_numbers(run_dir)
    assert len(done) >= 50 and done == list(range(len(done)))
    if victim == "gcs_server":  # the run dir is consistent: the same command resumes
        resumed = subprocess.run([sys.executable, "-m", "nas.cli", "search", *_args(lut_path, run_dir, 3000)],
                                 capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert _trial_numbers(run_dir) == list(range(3000))


# Exhaustive: the signal as soon as the GCS is up; make test sends SIGTERM (to the group) and SIGINT as soon as
# the raylet is.
@pytest.mark.parametrize(("signum", "after", "to_group"), [
    pytest.param(signal.SIGTERM, "gcs_server", False, marks=pytest.mark.exhaustive),
    (signal.SIGTERM, "raylet", True), (signal.SIGINT, "raylet", False),
])
def test_a_signal_while_the_cluster_starts_stops_the_search_with_one_line(
        lut_path: Path, tmp_path: Path, signum: int, after: str, to_group: bool) -> None:
    run_dir, err = tmp_path / "run", tmp_path / "stderr.txt"
    proc = _start(_args(lut_path, run_dir, 3000), err)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and \
            after not in {p.name() for p in _cluster_of(proc.pid).values()}:
        time.sleep(0.01)
    assert proc.poll() is None, f"the search ended before its cluster started: {err.read_text()[-3000:]}"
    assert time.monotonic() < deadline, f"no {after} process within 120 s: {err.read_text()[-3000:]}"
    (os.killpg if to_group else os.kill)(proc.pid, signum)
    rc, cluster = _wait_recording_cluster(proc, 60)
    stderr = err.read_text()
    assert rc == 128 + signum, f"exit {rc} (negative: killed by that signal): {stderr[-3000:]}"
    assert _said(stderr) == [_STOPPED], stderr[-3000:]
    assert not _still_alive(cluster), f"the cluster outlived its search: {_still_alive(cluster, 0)}"
    assert not (run_dir / "trials.jsonl").exists()


def test_tune_failing_to_save_its_files_stops_the_search_with_one_error_and_it_resumes(
        ray_local, lut_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    from ray.train._internal import storage

    def full(*args, **kwargs) -> None:  # how pyarrow reports it when Tune copies its state to its storage
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(storage, "_pyarrow_fs_copy_files", full)
    config = _config(lut_path, trials=400)
    with pytest.raises(DiskFullError, match=r"^disk full under .*\(Ray Tune's temp files: No space left on device\); "
                                            r"free space and re-run the same command to resume$"):
        run_search(config, tmp_path, num_cpus=2)
    shown = capfd.readouterr().err
    assert "Traceback" not in shown and "ERROR" not in shown and "failed with" not in shown, shown[-3000:]
    done = _trial_numbers(tmp_path) if (tmp_path / "trials.jsonl").exists() else []
    assert done == list(range(len(done)))
    monkeypatch.undo()
    run_search(config, tmp_path, num_cpus=2)
    assert _trial_numbers(tmp_path) == list(range(400))
    assert not (tmp_path / "tune").exists() and not list(Path(tempfile.gettempdir()).glob(f"nas-tune-{os.getpid()}-*"))


def test_any_other_failure_of_tune_is_one_error(ray_local, lut_path: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from ray import tune

    def broken(self) -> None:
        raise RuntimeError("Tune broke\nwith a second line")

    monkeypatch.setattr(tune.Tuner, "fit", broken)
    with pytest.raises(NasError, match=r"^Ray Tune failed \(RuntimeError: Tune broke\); re-run the same command "
                                       r"to resume$"):
        run_search(_config(lut_path, trials=100), tmp_path, num_cpus=2)  # --num-cpus: the Tune path


@pytest.fixture
def small_tmpdir(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs with 8 KiB left: a real full disk for the temp dir. Skipped where tmpfs cannot be
    mounted (not root). Not full to the byte: Python's tempfile would then pass over it for /tmp.
    Freed (filler removed), it holds Tune's files of a whole search (about 1 KiB a trial)."""
    mount = tmp_path / "tmp"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        (mount / "filler").write_bytes(b"\0" * ((16 << 20) - (8 << 10)))
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


# Exhaustive: two CLI searches on their own clusters; make test has Tune's storage fail with ENOSPC (above),
# the same one line and resume.
@pytest.mark.exhaustive
def test_a_full_disk_under_tunes_temp_files_is_one_line_and_the_same_command_resumes(
        lut_path: Path, tmp_path: Path, small_tmpdir: Path) -> None:
    run_dir = tmp_path / "run"
    # Short: Ray's unix socket paths under it must stay within 107 bytes; Ray itself stays off the small disk.
    with tempfile.TemporaryDirectory(prefix="nas-ray-", dir="/tmp") as ray_tmp:
        env = {**os.environ, "TMPDIR": str(small_tmpdir), "RAY_TMPDIR": ray_tmp}
        cmd = [sys.executable, "-m", "nas.cli", "search", *_args(lut_path, run_dir, 2000)]
        full = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert full.returncode == 1, full.stderr[-3000:]
        assert _said(full.stderr) == [
            f"failed: disk full under {small_tmpdir} (Ray Tune's temp files: No space left on device); free space "
            "and re-run the same command to resume"], full.stderr[-3000:]
        done = _trial_numbers(run_dir) if (run_dir / "trials.jsonl").exists() else []
        assert done == list(range(len(done)))
        (small_tmpdir / "filler").unlink()
        resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _trial_numbers(run_dir) == list(range(2000))
    assert list(small_tmpdir.iterdir()) == [], "Tune's temp files are removed at the end"
