"""Searches whose evaluator is a table lookup run in the search process, without Ray: the same trial log
as Ray Tune trials give, a stop by signal or kill -9 that resumes to every trial, a full disk, failing
archs; and the fast paths they take (archs made by a space, trial lines encoded once) equal the slow ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from nas.arch import Arch, canonical_json
from nas.config import Objective, RunConfig
from nas.errors import NasError, UserError
from nas.interrupts import STOPPED
from nas.run_dir import DiskFullError, RunDir
from nas.run_json import trial_line
from nas.runner import run_search, runs_in_process, score_archs
from nas.space import SearchSpace, load_space


def _config(lut_path: Path, trials: int, **kw) -> RunConfig:
    return RunConfig(space="proxylessnas", strategy="evolution", evaluator="lut", trials=trials,
                     hardware=str(lut_path), objective=Objective(metric="macs", max_latency_ms=1.2), **kw)


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines()]


def _trial_numbers(run_dir: Path) -> list[int]:
    return [r["trial"] for r in _lines(run_dir)]


_WHERE = ("node", "host", "pid", "finished_at")


def test_which_searches_run_in_process() -> None:
    assert runs_in_process("lut", None, None) and runs_in_process("tabular", None, None)
    assert not runs_in_process("lut", "auto", None)  # a cluster to join: Ray Tune trials
    assert not runs_in_process("lut", None, 2)  # a local cluster asked for
    assert not runs_in_process("train", None, None)  # expensive: always Ray Tune trials


def test_the_in_process_path_writes_the_trial_log_ray_tune_trials_write(ray_local, lut_path: Path,
                                                                         tmp_path: Path) -> None:
    """Same seed and config: the same archs in the same order with the same metrics, the same strategy state
    and best archs; only where and when each ran differ. One trial at a time on Ray (2 CPUs a trial), so
    both paths tell the strategy in the same order."""
    config = _config(lut_path, trials=700, archs_per_trial=100, cpus_per_trial=2,
                     strategy_config={"population_size": 60, "sample_size": 5})
    here, ray = run_search(config, tmp_path / "here"), run_search(config, tmp_path / "ray", num_cpus=2)
    mine, theirs = _lines(tmp_path / "here"), _lines(tmp_path / "ray")
    assert len(mine) == 700 and {r["node"] for r in mine} == {None} and None not in {r["node"] for r in theirs}
    assert {r["pid"] for r in mine} == {os.getpid()} and os.getpid() not in {r["pid"] for r in theirs}
    strip = [[{k: v for k, v in r.items() if k not in _WHERE} for r in lines] for lines in (mine, theirs)]
    assert strip[0] == strip[1]
    assert (tmp_path / "here" / "strategy.json").read_bytes() == (tmp_path / "ray" / "strategy.json").read_bytes()
    assert [r["hash"] for r in here.best] == [r["hash"] for r in ray.best]


def test_an_in_process_search_imports_no_ray(lut_path: Path, tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; from nas.config import Objective, RunConfig; "
            "from nas.runner import run_search; "
            f"c = RunConfig(space='proxylessnas', strategy='evolution', evaluator='lut', trials=300, "
            f"hardware={str(lut_path)!r}, objective=Objective(metric='macs')); "
            f"r = run_search(c, Path({str(tmp_path / 'run')!r})); "
            "assert r.n_archs == 300, r; assert 'ray' not in sys.modules, 'ray was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _trial_numbers(tmp_path / "run") == list(range(300))


def test_a_full_disk_stops_an_in_process_search_with_one_error_and_it_resumes(
        lut_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_append = RunDir.append_trials
    calls = {"n": 0}

    def append_then_fill(self: RunDir, records) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise DiskFullError("disk full while writing trials.jsonl (No space left on device)")
        real_append(self, records)

    monkeypatch.setattr(RunDir, "append_trials", append_then_fill)
    config = _config(lut_path, trials=400, archs_per_trial=50)
    with pytest.raises(DiskFullError, match="disk full"):
        run_search(config, tmp_path)
    assert _trial_numbers(tmp_path) == list(range(100))
    monkeypatch.undo()
    run_search(config, tmp_path)
    assert _trial_numbers(tmp_path) == list(range(400))


def test_an_arch_that_fails_fails_alone_and_a_search_whose_every_arch_fails_stops(
        lut_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nas.evaluate.evaluators import LutEvaluator

    real = LutEvaluator.evaluate_many

    def refuse_mb6_k7_first(self, archs):
        if any(a.choices["s1.b1.op"] == "mb6_k7" for a in archs):
            raise ValueError("cannot price this one")
        return real(self, archs)

    monkeypatch.setattr(LutEvaluator, "evaluate_many", refuse_mb6_k7_first)
    monkeypatch.setattr(LutEvaluator, "evaluate", lambda self, arch: refuse_mb6_k7_first(self, [arch])[0])
    result = run_search(_config(lut_path, trials=300, archs_per_trial=50), tmp_path / "run")
    lines = _lines(tmp_path / "run")
    failed = [r for r in lines if r["status"] == "failed"]
    assert len(lines) == 300 and result.n_failed == len(failed) > 0
    assert all(r["arch"]["choices"]["s1.b1.op"] == "mb6_k7" and r["error"] == "ValueError: cannot price this one"
               for r in failed)
    assert all(r["arch"]["choices"]["s1.b1.op"] != "mb6_k7" for r in lines if r["status"] == "ok")

    def gone(self, archs):
        raise OSError("gone")

    monkeypatch.setattr(LutEvaluator, "evaluate_many", gone)
    monkeypatch.setattr(LutEvaluator, "evaluate", lambda self, arch: gone(self, [arch]))
    with pytest.raises(NasError, match=r"every trial failed .*first error: OSError: gone"):
        run_search(_config(lut_path, trials=300, archs_per_trial=50), tmp_path / "broken")


def test_score_archs_prices_a_batch_at_once_and_blames_one_arch_alone(lut_path: Path) -> None:
    from nas.evaluate.base import EvaluatorSpec, build_evaluator

    evaluator = build_evaluator(EvaluatorSpec(space="proxylessnas", evaluator="lut", table=str(lut_path)))
    space, rng = evaluator.space, np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(5)]
    assert score_archs(evaluator, archs) == [{"metrics": evaluator.evaluate(a)} for a in archs]
    other = load_space("proxylessnas", {"resolution": 64}).sample(rng)  # of another config: cannot be priced
    outcomes = score_archs(evaluator, [archs[0], other, archs[1]])
    assert outcomes[0] == {"metrics": evaluator.evaluate(archs[0])} and outcomes[2]["metrics"]
    assert outcomes[1]["error"].startswith("UserError: proxylessnas: arch ") and "\n" not in outcomes[1]["error"]


# --- stops: signals and kill -9 -----------------------------------------------------------------------


def _start(args: list[str], err: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nas.cli", "search", *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(err, "w"))


def _args(lut_path: Path, run_dir: Path, trials: int) -> list[str]:
    return ["--evaluator", "lut", "--hardware", str(lut_path), "--trials", str(trials), "--archs-per-trial", "10",
            "--run-dir", str(run_dir)]


def _wait_for_trials(proc: subprocess.Popen, run_dir: Path, n: int, err: Path) -> None:
    log = run_dir / "trials.jsonl"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and \
            (not log.exists() or len(log.read_text().splitlines()) < n):
        time.sleep(0.02)
    assert proc.poll() is None, f"the search ended before the test's fault: {err.read_text()[-3000:]}"
    children = [p.name() for p in psutil.Process(proc.pid).children(recursive=True)]
    assert children == [], f"an in-process search started processes: {children}"


def _said(stderr: str) -> list[str]:
    """stderr lines besides the table announcement and progress: what the user reads as the outcome."""
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith(("latency table:", "warning:", "[search]"))]


def _resume(lut_path: Path, run_dir: Path, trials: int) -> None:
    done = subprocess.run([sys.executable, "-m", "nas.cli", "search", *_args(lut_path, run_dir, trials)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _trial_numbers(run_dir) == list(range(trials))


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [pytest.param(signal.SIGINT, 130, marks=pytest.mark.exhaustive),
                                              (signal.SIGTERM, 143)])  # SIGINT: on Ray, tests/test_search_faults.py
def test_a_signal_stops_an_in_process_search_with_one_line_and_it_resumes(
        lut_path: Path, tmp_path: Path, signum: int, code: int) -> None:
    run_dir, err = tmp_path / "run", tmp_path / "stderr.txt"
    proc = _start(_args(lut_path, run_dir, 4000), err)
    _wait_for_trials(proc, run_dir, 50, err)
    sent = time.monotonic()
    os.kill(proc.pid, signum)
    try:
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stopped_in, stderr = time.monotonic() - sent, err.read_text()
    assert rc == code, stderr[-3000:]
    assert _said(stderr) == [STOPPED], stderr[-3000:]
    assert stopped_in < 5, f"took {stopped_in:.1f} s to stop"
    assert 50 <= len(_trial_numbers(run_dir)) < 4000
    _resume(lut_path, run_dir, 4000)


@pytest.mark.slow
def test_kill_9_of_an_in_process_search_loses_and_repeats_no_trial(lut_path: Path, tmp_path: Path) -> None:
    run_dir, err = tmp_path / "run", tmp_path / "stderr.txt"
    proc = _start(_args(lut_path, run_dir, 4000), err)
    _wait_for_trials(proc, run_dir, 200, err)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    done = _trial_numbers(run_dir)
    assert 200 <= len(done) < 4000 and done == list(range(len(done)))
    _resume(lut_path, run_dir, 4000)


# --- the fast paths equal the slow ones ---------------------------------------------------------------


def test_archs_a_space_makes_are_the_archs_the_slow_path_makes(space_name: str) -> None:
    space, rng = load_space(space_name), np.random.default_rng(0)
    for _ in range(50):
        arch = space.mutate(space.sample(rng), rng)
        slow = Arch(arch.space, dict(arch.choices), dict(arch.config))
        assert arch.to_json() == canonical_json(slow.to_dict()) == slow.to_json()
        assert arch.hash == slow.hash and arch.to_dict() == slow.to_dict()
        assert list(arch.choices) == sorted(arch.choices)


@pytest.mark.parametrize("choices", [{"s1.b1.op": True}, {"s1.b1.op": 3}, {"s1.b1.op": ["mb3_k3"]},
                                     {"nope": "mb3_k3"}, {}])
def test_make_arch_still_refuses_what_is_not_a_choice(choices: dict) -> None:
    space = load_space("proxylessnas")
    good = dict(space.sample(np.random.default_rng(0)).choices)
    given = {k: v for k, v in {**good, **choices}.items() if choices or k != "s1.b1.op"}
    with pytest.raises(UserError, match="proxylessnas: (decision|unknown decision)"):
        space.make_arch(given)


@pytest.mark.parametrize("record", [
    {"trial": 0, "status": "ok", "metrics": {"latency_ms": 1.25, "params": 10, "macs": 3, "train_loss": None},
     "score": -1e9, "feasible": False, "node": None, "host": "h\u00e9\"st", "pid": 7,
     "finished_at": "2026-01-01T00:00:00+00:00"},
    {"trial": 12, "status": "failed", "error": 'UserError: "quoted" \\ and \u2603', "metrics": {}, "score": None,
     "node": "abc", "host": None, "pid": None, "finished_at": "2026-01-01T00:00:00+00:00"},
])
def test_a_trial_line_is_encoded_as_canonical_json(record: dict) -> None:
    arch = load_space("proxylessnas").sample(np.random.default_rng(0))
    full = {**record, "arch": arch.to_dict(), "hash": arch.hash}
    for fields in ({**record, "hash": arch.hash}, dict(sorted({**record, "hash": arch.hash}.items()))):
        line = trial_line(arch, fields)  # sorted: the field-by-field path of the usual ok line
        assert line.text == canonical_json(full) and line == full


def test_ok_lines_of_any_numbers_are_encoded_as_canonical_json() -> None:
    space, rng = load_space("proxylessnas"), np.random.default_rng(0)
    numbers = [0.0, -0.0, 1e-7, 1.5e16, -3.25, 1e300, 2**62, -7, 0, 123456789012]
    for i in range(200):
        arch = space.sample(rng)
        pick = [numbers[j] for j in rng.integers(len(numbers), size=3)]
        fields = {"feasible": bool(i % 2), "finished_at": "2026-01-01T00:00:00+00:00", "hash": arch.hash,
                  "host": ["h", "h\u00e9\"s\\t", "\u2603"][i % 3], "metrics": {"z": pick[0], "a": pick[1], "m": None},
                  "node": [None, "0f" * 28][i % 2], "pid": [None, 1, 2**31][i % 3], "score": float(pick[2]),
                  "status": "ok", "trial": i}
        assert trial_line(arch, fields).text == canonical_json({**fields, "arch": arch.to_dict()})


def test_a_state_with_archs_in_flight_is_encoded_as_canonical_json(lut_path: Path) -> None:
    from nas.plan import plan_search
    from nas.run_json import state_json

    strategy = plan_search(_config(lut_path, trials=100)).new_strategy()
    strategy.ask(30)
    pending = strategy.pending()
    saved = {"n_recorded": 0, "strategy": strategy.state_dict()}
    assert len(pending) == 30 and state_json(saved, pending) == canonical_json(saved)
    other = [*pending[1:], pending[0]]  # not the archs the state lists, in its order: encoded plainly
    assert state_json(saved, other) == canonical_json(saved)
    odd = {**saved, "strategy": {**saved["strategy"], "note": "\x00pending\x00"}}
    assert state_json(odd, pending) == canonical_json(odd)


def test_mutate_many_changes_one_decision_of_each_arch_and_is_deterministic(space_name: str) -> None:
    space, rng = load_space(space_name), np.random.default_rng(1)
    parents = [space.sample(rng) for _ in range(40)]
    children = space.mutate_many(parents, np.random.default_rng(7))
    assert [c.hash for c in children] == [c.hash for c in space.mutate_many(parents, np.random.default_rng(7))]
    for parent, child in zip(parents, children, strict=True):
        assert child == space.make_arch(dict(child.choices)) and child.to_json() == canonical_json(child.to_dict())
        if type(space).mutate is SearchSpace.mutate:  # the base's mutate: one decision changed
            assert sum(parent.choices[n] != child.choices[n] for n in parent.choices) == 1
