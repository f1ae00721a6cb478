"""The runner, in process and on a real local Ray cluster: budgets, the trial log, improvement, resume (with
the latency table the run dir was priced with); Tune's own files in a temp dir, its failures one line."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path

import pytest
import yaml

from nas.config import Objective, RunConfig
from nas.errors import UserError
from nas.run_dir import DiskFullError, RunDir, is_running
from nas.runner import run_search
from tests.conftest import synthetic_table


def _lut_config(lut_path: Path | str, trials: int, **kw) -> RunConfig:
    return RunConfig(space="proxylessnas", strategy="evolution", evaluator="lut", trials=trials,
                     hardware=str(lut_path), objective=Objective(metric="macs", max_latency_ms=1.2), **kw)


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines()]


_PATHS = pytest.mark.parametrize("num_cpus", [None, pytest.param(2, marks=pytest.mark.exhaustive)],
                                 ids=["in_process", "ray_tune"])
"""`num_cpus` None scores a lut search in process; 2 runs its archs as Ray Tune trials on the test's cluster
(exhaustive: tests/test_in_process.py shows both paths write the same trial log, and tests/test_cluster.py and
tests/test_search_faults.py kill and resume searches on Ray)."""


@_PATHS
def test_lut_search_logs_every_arch_and_improves(ray_local, lut_path: Path, tmp_path: Path,
                                                 num_cpus: int | None) -> None:
    config = _lut_config(lut_path, trials=1500, archs_per_trial=250, strategy_config={"population_size": 100})
    best = run_search(config, tmp_path, num_cpus=num_cpus).best
    lines = _lines(tmp_path)
    assert [r["trial"] for r in lines] == list(range(1500))
    assert len({r["hash"] for r in lines}) == 1500  # the budget counts distinct archs
    assert {"latency_ms", "params", "macs"} <= set(lines[0]["metrics"])
    first_feasible = next(r for r in lines if r["metrics"]["latency_ms"] <= 1.2)
    assert best[0]["score"] > first_feasible["score"] * 1.2
    assert best[0]["metrics"]["latency_ms"] <= 1.2
    assert json.loads((tmp_path / "best.json").read_text())[0]["hash"] == best[0]["hash"]


def test_rerun_of_a_finished_search_runs_nothing(ray_local, lut_path: Path, tmp_path: Path) -> None:
    config = _lut_config(lut_path, trials=300, archs_per_trial=100)
    run_search(config, tmp_path)
    before = (tmp_path / "trials.jsonl").read_bytes()
    run_search(config, tmp_path)
    assert (tmp_path / "trials.jsonl").read_bytes() == before
    grown = config.model_copy(update={"trials": 500})
    run_search(grown, tmp_path)
    lines = _lines(tmp_path)
    assert len(lines) == 500 and (tmp_path / "trials.jsonl").read_bytes().startswith(before)
    stored = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert stored["trials"] == 500
    assert stored["latency_table"]["path"] == str(lut_path.resolve())
    assert stored["latency_table"]["sha256"] == hashlib.sha256(lut_path.read_bytes()).hexdigest()


@_PATHS
def test_resume_keeps_finished_and_reruns_in_flight(ray_local, lut_path: Path, tmp_path: Path,
                                                    num_cpus: int | None) -> None:
    """Simulate a kill after 200 of 400 archs with one batch in flight and one line torn."""
    config = _lut_config(lut_path, trials=400, archs_per_trial=100)
    run_search(config.model_copy(update={"trials": 200}), tmp_path, num_cpus=num_cpus)
    from nas.plan import plan_search
    from nas.trials import Search

    with RunDir(tmp_path) as rd:
        search = Search(plan_search(config), rd)
        in_flight = search.next_batch()  # asked and saved, never finished
    with open(tmp_path / "trials.jsonl", "a") as handle:
        handle.write('{"trial": 200, "arch": {"spa')  # torn by the kill
    run_search(config, tmp_path, num_cpus=num_cpus)
    lines = _lines(tmp_path)
    assert [r["trial"] for r in lines] == list(range(400))
    rerun = Counter(r["hash"] for r in lines[200:])
    assert all(rerun[h] >= n for h, n in Counter(a.hash for a in in_flight).items())


def test_run_dir_is_locked_and_config_checked(lut_path: Path, tmp_path: Path) -> None:
    config = _lut_config(lut_path, trials=10)
    with RunDir(tmp_path) as rd:
        rd.write_config(config.model_dump(mode="json"))
        with pytest.raises(UserError, match="in use by another search"):
            run_search(config, tmp_path)
    other = config.model_copy(update={"seed": 5})
    with pytest.raises(UserError, match="holds a different search .seed"):
        run_search(other, tmp_path)


# --- the latency table a run dir was priced with ------------------------------------------------------


@pytest.fixture
def committed_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Device `synthetic`'s table in a stand-in for the checkout's committed hardware_profiles/."""
    from nas.hardware import store
    from nas.space import load_space

    root = tmp_path / "committed"
    monkeypatch.setattr(store, "PROFILES_DIR", root)
    path = store.table_path("synthetic", load_space("proxylessnas"), root)
    path.parent.mkdir(parents=True)
    return synthetic_table("proxylessnas", path)


def _shadow(committed: Path) -> Path:
    """What `nas profile --rescale` leaves: the device's table at twice the latency, in the user profiles dir."""
    from nas.hardware import store
    from nas.hardware.rescale import scaled
    from nas.hardware.schema import Rescale
    from nas.hardware.table import LatencyTable
    from nas.space import load_space

    newer = store.table_path("synthetic", load_space("proxylessnas"))
    newer.parent.mkdir(parents=True, exist_ok=True)
    table = LatencyTable.load(committed)
    record = Rescale(scale=2.0, measured_ms=2.0, stored_ms=1.0, source=str(committed), source_sha256=table.sha256,
                     source_device_id="synthetic", rescaled_at="2026-01-02")
    scaled(table, 2.0, record).save(newer)
    return newer


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_resume_keeps_the_run_dirs_table_when_a_newer_one_shadows_it(
        ray_local, committed_table: Path, tmp_path: Path) -> None:
    from nas.arch import Arch
    from nas.hardware.table import LatencyTable
    from nas.plan import plan_search

    config = _lut_config("synthetic", trials=200, archs_per_trial=100)
    run_dir = tmp_path / "run"
    run_search(config, run_dir)
    newer = _shadow(committed_table)
    said: list[str] = []
    result = run_search(config.model_copy(update={"trials": 300}), run_dir, notify=said.append)
    lines = _lines(run_dir)
    assert [r["trial"] for r in lines] == list(range(300))
    priced = LatencyTable.load(committed_table, plan_search(config).space, 1)
    for record in lines[200:]:  # priced with the run dir's table, not the newer one (twice as slow)
        assert record["metrics"]["latency_ms"] == pytest.approx(priced.predict(Arch.from_dict(record["arch"])))
    assert result.table["path"] == str(committed_table.resolve()) and result.table["sha256"] == _sha(committed_table)
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert stored["hardware"] == "synthetic" and stored["latency_table"]["sha256"] == _sha(committed_table)
    resuming = [line for line in said if line.startswith("resuming with")]
    assert resuming == [f"resuming with the run dir's latency table {committed_table.resolve()}; a newer one is "
                        f"at {newer.resolve()} (a new --run-dir uses it)"], said
    assert any(line.startswith(f"latency table: {committed_table.resolve()}") for line in said), said
    assert plan_search(config).table_record["sha256"] == _sha(newer)  # what a new run dir gets


def _priced_run_dir(run_dir: Path, config: RunConfig) -> None:
    """A run dir as a search priced with the table found now leaves it (no Ray needed)."""
    from nas.plan import plan_search

    with RunDir(run_dir) as rd:
        rd.write_config(plan_search(config).stored_config())


@pytest.mark.parametrize("damage", ["changed", "gone"])
def test_resume_is_refused_in_one_short_line_when_the_run_dirs_table_changed_or_is_gone(
        committed_table: Path, tmp_path: Path, damage: str) -> None:
    config = _lut_config("synthetic", trials=10)
    run_dir = tmp_path / "run"
    _priced_run_dir(run_dir, config)
    _shadow(committed_table)
    if damage == "changed":
        committed_table.write_bytes(committed_table.read_bytes() + b"# edited\n")
    else:
        committed_table.unlink()
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != ".lock"}
    with pytest.raises(UserError) as err:
        run_search(config, run_dir)
    message = str(err.value)
    assert message.startswith("latency table ") and message.endswith(  # a long path keeps its end
        f"/committed/synthetic/proxylessnas-r32.yaml that this run dir was priced with "
        f"{'has changed' if damage == 'changed' else 'is gone'}; restore it or choose another --run-dir"), message
    assert len(message) < 200
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != ".lock"} == before


def test_another_table_given_with_hardware_is_refused_in_one_short_line(
        committed_table: Path, lut_path: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _priced_run_dir(run_dir, _lut_config("synthetic", trials=10))
    other = tmp_path / "other.yaml"
    other.write_bytes(lut_path.read_bytes() + b"# another\n")
    with pytest.raises(UserError) as err:
        run_search(_lut_config(other, trials=10), run_dir)
    message = str(err.value)
    assert message.startswith("--hardware ") and message.endswith(
        "/other.yaml: not the latency table this run dir was priced with; re-run with --hardware synthetic, "
        "or choose another --run-dir"), message
    assert len(message) < 200, message


# --- Ray Tune's own files and failures ------------------------------------------------------------------


def test_tunes_files_go_to_a_temp_dir_removed_at_the_end_and_stale_ones_are_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from nas import tune_trials

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = next(pid for pid in range(4_000_000, 4_100_000) if not is_running(pid))
    stale, live = tmp_path / f"nas-tune-{dead}-abc", tmp_path / f"nas-tune-{os.getppid()}-abc"
    for d in (stale, live):
        (d / "search").mkdir(parents=True)
    with tune_trials._tune_storage() as storage:
        assert storage.parent == tmp_path and storage.name.startswith(f"nas-tune-{os.getpid()}-")
        (storage / "search" / "experiment_state.json").parent.mkdir()
        (storage / "search" / "experiment_state.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]  # a live search's files are left alone


@pytest.mark.parametrize(("err", "expected"), [
    (OSError(errno.ENOSPC, "Error writing bytes to file"), "disk full under /t (Ray Tune's temp files: "
                                                          "No space left on device)"),
    (RuntimeError("sync failed: OSError: [Errno 28] No space left on device"),
     "disk full under /t (Ray Tune's temp files: No space left on device)"),
    (ValueError("Expecting value: line 1 column 1 (char 0)\nmore"), "Ray Tune failed (ValueError: Expecting value: "
                                                                   "line 1 column 1 (char 0))"),
])
def test_a_failure_of_tune_is_one_line_that_says_how_to_resume(err: Exception, expected: str) -> None:
    from nas import tune_trials

    try:
        try:
            raise err
        except Exception as inner:
            raise RuntimeError("TuneError: experiment failed") from inner
    except RuntimeError as outer:
        failure = tune_trials._tune_failure(outer if "disk" in expected else err, Path("/t"))
    assert str(failure) == f"{expected}; free space and re-run the same command to resume" if "disk" in expected \
        else str(failure) == f"{expected}; re-run the same command to resume"
    assert isinstance(failure, DiskFullError) == ("disk" in expected)


def test_tunes_errors_go_to_the_debug_log_and_a_full_disk_stops_the_search(caplog: pytest.LogCaptureFixture) -> None:
    import types

    from nas import tune_trials

    search = types.SimpleNamespace(stop_error=None)
    errors = tune_trials._TuneErrors(search, Path("/t"))

    def record(name: str, level: int, message: str, exc: BaseException | None = None) -> logging.LogRecord:
        return logging.LogRecord(name, level, "f.py", 1, message, None, (type(exc), exc, None) if exc else None)

    with caplog.at_level(logging.INFO, logger="nas.tune_trials"):
        assert errors.filter(record("ray.tune.tune_controller", logging.INFO, "Trial started"))
        assert errors.filter(record("ray.tune.tune_controller", logging.WARNING, "slow sync"))
        assert errors.filter(record("ray.serve", logging.ERROR, "not Tune's"))
        assert not errors.filter(record("ray.tune.x", logging.ERROR, "Could not re-use actor"))
        assert search.stop_error is None
        assert not errors.filter(record("ray.train._internal.syncer", logging.WARNING,
                                        "Last sync command failed:\nTraceback (most recent call last):\n..."))
        assert search.stop_error is None
        assert not errors.filter(record("ray.tune.execution.experiment_state", logging.ERROR, "Saving failed",
                                        OSError(errno.ENOSPC, "Error writing bytes")))
    assert isinstance(search.stop_error, DiskFullError)
    assert [r.getMessage() for r in caplog.records if r.name == "nas.tune_trials"] == [
        "Ray Tune: Could not re-use actor", "Ray Tune: Last sync command failed:\nTraceback (most recent call "
        "last):\n...", "Ray Tune: Saving failed"]
