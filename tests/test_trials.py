"""`Search` bookkeeping without Ray: failing archs are retried then recorded, a search whose every
trial fails stops with the first error, and a log that lost lines is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from nas.config import Objective, RunConfig
from nas.errors import UserError
from nas.plan import plan_search
from nas.run_dir import RunDir
from nas.trials import Search

_WHERE = {"node": "n", "host": "h", "pid": 1}


def _plan(lut_path: Path, trials: int = 20):
    return plan_search(RunConfig(space="proxylessnas", strategy="evolution", evaluator="lut", trials=trials,
                                 archs_per_trial=5, hardware=str(lut_path), objective=Objective(metric="macs")))


def _ok(search: Search, archs) -> dict:
    return {"results": [{"metrics": {**search.plan.space.cost(a), "latency_ms": 1.0}} for a in archs], **_WHERE}


def test_a_failing_arch_is_retried_then_recorded_as_failed(lut_path: Path, tmp_path: Path) -> None:
    with RunDir(tmp_path) as rd:
        search = Search(_plan(lut_path), rd)
        search.start()
        archs = search.next_batch()
        bad = archs[0]
        outcome = {"results": [{"error": "ValueError: boom"}] + _ok(search, archs[1:])["results"], **_WHERE}
        search.record(archs, outcome)
        for attempt in (2, 3):
            retry = search.next_batch()
            assert retry == [bad], f"attempt {attempt} retries the failed arch first"
            search.record(retry, {"results": [{"error": "ValueError: boom"}], **_WHERE})
        assert search.retry == []
        failed = [r for r in rd.read_trials() if r["status"] == "failed"]
        assert [(r["hash"], r["error"]) for r in failed] == [(bad.hash, "ValueError: boom")]
        assert search.stop_error is None  # four archs succeeded
        assert bad not in search.strategy.pending()


def test_a_search_whose_every_trial_fails_stops_with_the_first_error(lut_path: Path, tmp_path: Path) -> None:
    with RunDir(tmp_path) as rd:
        search = Search(_plan(lut_path), rd)
        search.start()
        for _ in range(30):
            if search.should_stop:
                break
            archs = search.next_batch()
            search.record(archs, {"results": [{"error": "UserError: data is corrupt"}] * len(archs), **_WHERE})
        assert search.stop_error is not None
        assert "every trial failed" in str(search.stop_error) and "data is corrupt" in str(search.stop_error)
        assert len(rd.read_trials()) >= 3


@pytest.mark.parametrize("cut", ["half", "one_line", "whole_file"])
def test_a_log_that_lost_lines_is_refused(lut_path: Path, tmp_path: Path, cut: str) -> None:
    plan = _plan(lut_path)
    with RunDir(tmp_path) as rd:
        search = Search(plan, rd)
        search.start()
        while not search.should_stop:
            archs = search.next_batch()
            search.record(archs, _ok(search, archs))
    log = tmp_path / "trials.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    kept = {"half": lines[:10], "one_line": lines[:-1], "whole_file": None}[cut]
    if kept is None:
        log.unlink()
    else:
        log.write_text("".join(kept))
    state_before = (tmp_path / "strategy.json").read_bytes()
    with RunDir(tmp_path) as rd, pytest.raises(UserError, match="trials .* are missing|state .* missing|was cut"):
        Search(plan, rd)
    assert (tmp_path / "strategy.json").read_bytes() == state_before


def test_resume_tells_lines_recorded_after_the_last_state_save(lut_path: Path, tmp_path: Path) -> None:
    plan = _plan(lut_path)
    with RunDir(tmp_path) as rd:
        search = Search(plan, rd)
        search.start()
        archs = search.next_batch()
        saved = (tmp_path / "strategy.json").read_bytes()
        search.record(archs, _ok(search, archs))
    (tmp_path / "strategy.json").write_bytes(saved)  # killed between the log append and the state save
    with RunDir(tmp_path) as rd:
        resumed = Search(plan, rd)
        assert resumed.retry == [] and resumed.strategy.pending() == []
        assert len(resumed.records) == 5


def test_the_searcher_waits_for_archs_in_flight_before_it_finishes(lut_path: Path, tmp_path: Path) -> None:
    """A failure in the last batch of the budget is retried: Tune is told "not now", not "finished"."""
    from ray.tune.search import Searcher

    from nas.interrupts import Signals as _Signals
    from nas.tune_trials import _StrategySearcher

    with RunDir(tmp_path) as rd:
        search = Search(_plan(lut_path, trials=5), rd)
        search.start()
        searcher = _StrategySearcher(search, _Signals())
        assert searcher.suggest("t1") is not None  # the whole budget, in flight
        assert searcher.suggest("t2") is None  # nothing to ask now, but the batch may come back failed
        archs = searcher.live["t1"]
        outcome = {"results": [{"error": "ValueError: boom"}] + _ok(search, archs[1:])["results"], **_WHERE}
        searcher.on_trial_complete("t1", outcome)
        retry = searcher.suggest("t3")
        assert retry is not None and len(retry["archs"]) == 1
        searcher.on_trial_complete("t3", _ok(search, searcher.live["t3"]))
        assert searcher.suggest("t4") == Searcher.FINISHED
        assert len(rd.read_trials()) == 5


def test_a_nan_metric_is_stored_as_null_and_the_log_resumes(lut_path: Path, tmp_path: Path) -> None:
    """A diverged training reports train_loss NaN: the line stores null (NaN is not JSON) and reads back."""
    plan = _plan(lut_path)
    with RunDir(tmp_path) as rd:
        search = Search(plan, rd)
        search.start()
        archs = search.next_batch()
        outcome = _ok(search, archs)
        for result in outcome["results"]:
            result["metrics"]["train_loss"] = float("nan")
        outcome["results"][0]["metrics"]["eval_seconds"] = float("inf")
        search.record(archs, outcome)
        assert search.stop_error is None
    with RunDir(tmp_path) as rd:
        records = Search(plan, rd).records
    assert [r["status"] for r in records] == ["ok"] * 5
    assert all(r["metrics"]["train_loss"] is None for r in records) and records[0]["metrics"]["eval_seconds"] is None


@pytest.mark.parametrize(("metrics", "needle"), [
    ({"macs": "abc"}, "metrics.macs is 'abc'"),
    ({"macs": True}, "metrics.macs is True"),
    ({"macs": None}, "metrics.macs is null"),
    ({"macs": float("nan")}, "metrics.macs is null"),
    ({"macs": -5}, "metrics.macs is -5"),
    ({"accuracy": 1.5}, "metrics.accuracy is 1.5"),
    ({"latency_ms": [1]}, "metrics.latency_ms is [1]"),
])
def test_metrics_a_search_cannot_record_fail_the_arch(lut_path: Path, tmp_path: Path, metrics: dict,
                                                      needle: str) -> None:
    """An evaluator's bad metrics count as a failed evaluation (retried, then recorded as failed with the reason),
    never a line the reader would refuse nor a crash of the search."""
    plan = _plan(lut_path)
    with RunDir(tmp_path) as rd:
        search = Search(plan, rd)
        search.start()
        archs = search.next_batch()
        outcome = _ok(search, archs)
        outcome["results"][0]["metrics"].update(metrics)
        search.record(archs, outcome)
        for _ in range(2):
            retry = search.next_batch()
            assert retry == archs[:1]
            bad = _ok(search, retry)
            bad["results"][0]["metrics"].update(metrics)
            search.record(retry, bad)
        assert search.stop_error is None
    with RunDir(tmp_path) as rd:
        records = Search(plan, rd).records
    failed = [r for r in records if r["status"] == "failed"]
    assert len(records) == 5 and len(failed) == 1 and needle in failed[0]["error"], failed


def test_a_long_error_is_cut_to_fit_its_line(lut_path: Path, tmp_path: Path) -> None:
    plan = _plan(lut_path)
    with RunDir(tmp_path) as rd:
        search = Search(plan, rd, failure_limit=1)
        search.start()
        archs = search.next_batch()
        search.record(archs, {"results": [{"error": "E" * 5000}] * len(archs), **_WHERE})
    with RunDir(tmp_path) as rd:
        assert [len(r["error"]) for r in Search(plan, rd).records] == [500] * 5
