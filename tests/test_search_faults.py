"""Whole searches under faults: signals, a full disk mid-search, evaluators that always fail,
bounds nothing meets. Each resumed run must have every trial exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
        run_search(_config(table, trials=200), tmp_path / "run", progress=corrupt_the_table_once_checked)
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


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
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
