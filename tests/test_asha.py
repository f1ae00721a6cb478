"""Early stopping: the train evaluator's accuracy after every epoch, `--scheduler asha` (Ray Tune's ASHA) on a
real search, the trial line of an arch stopped early, and the searches ASHA cannot run, refused before Ray."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

from nas.config import RunConfig, Scheduler
from nas.errors import UserError
from nas.evaluate.base import EvaluatorSpec, build_evaluator
from nas.evaluate.data import load_dataset
from nas.evaluate.train import accuracy, recalibrate_bn, train_and_evaluate
from nas.trial_log import arch_hash, trial_problem
from tests.cli_harness import assert_user_error, run_cli

_TINY_NB201 = {"resolution": 8, "init_channels": 4, "cells_per_stage": 1}
"""NAS-Bench-201 cells on 8x8 digits with 4 channels: an epoch takes about a second on one core."""


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Dropout(0.2),  # draws from the RNG in training: a measurement between epochs must not shift it
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10),  # (B, 128) at 8x8 input
    )


class _Stop(Exception):
    pass


# --- the epoch callback -------------------------------------------------------------------------------


def test_on_epoch_gives_the_accuracy_after_each_epoch_and_changes_no_number() -> None:
    data = load_dataset("digits", resolution=8)
    plain = train_and_evaluate(_small_cnn(), data, epochs=3, batch_size=64, seed=0)
    seen: list[tuple[int, dict]] = []
    reported = train_and_evaluate(_small_cnn(), data, epochs=3, batch_size=64, seed=0,
                                  on_epoch=lambda epoch, metrics: seen.append((epoch, metrics)))
    assert [epoch for epoch, _ in seen] == [1, 2, 3]
    assert (reported["accuracy"], reported["train_loss"]) == (plain["accuracy"], plain["train_loss"])
    assert seen[-1][1] == reported  # the last epoch's metrics are the result
    assert set(seen[0][1]) == set(reported) and all(0 < m["accuracy"] <= 1 for _, m in seen)
    assert seen[0][1]["accuracy"] < reported["accuracy"]  # it learns between epochs

    def stop_after_two(epoch: int, metrics: dict) -> None:
        if epoch == 2:
            raise _Stop

    model = _small_cnn()
    with pytest.raises(_Stop):  # what an early stop does: the training ends inside the callback
        train_and_evaluate(model, data, epochs=3, batch_size=64, seed=0, on_epoch=stop_after_two)
    recalibrate_bn(model, data, 64)
    assert accuracy(model, data) == seen[1][1]["accuracy"]  # the model as it stood after epoch 2


def test_train_evaluator_reports_its_metrics_after_each_epoch_with_the_epochs_reached() -> None:
    spec = EvaluatorSpec(space="nasbench201", space_config=_TINY_NB201, evaluator="train",
                         config={"epochs": 2, "batch_size": 128})
    evaluator = build_evaluator(spec)
    arch = evaluator.space.make_arch({d.name: "nor_conv_3x3" for d in evaluator.space.decisions()})
    seen: list[tuple[int, dict]] = []
    final = evaluator.evaluate(arch, on_epoch=lambda epoch, metrics: seen.append((epoch, metrics)))
    plain = evaluator.evaluate(arch)
    assert [(epoch, metrics["epochs"]) for epoch, metrics in seen] == [(1, 1), (2, 2)]
    assert final["epochs"] == plain["epochs"] == 2
    assert set(seen[0][1]) == set(final) == set(plain)  # partial metrics have the final shape
    assert seen[-1][1]["accuracy"] == final["accuracy"] == plain["accuracy"]
    assert seen[0][1]["params"] == final["params"]  # cost metrics are known before training


# --- the trial line of an arch stopped early ----------------------------------------------------------


def _line(**extra) -> dict:
    arch = {"space": "nasbench201", "choices": {}, "config": {}}
    return {"trial": 0, "arch": arch, "hash": arch_hash(arch), "status": "ok", "metrics": {"accuracy": 0.5},
            "score": 0.5, "node": None, "host": None, "pid": None, "finished_at": "2026-01-01T00:00:00+00:00",
            "feasible": True, **extra}


def test_a_trial_line_may_say_the_arch_was_stopped_early_and_nothing_else() -> None:
    assert trial_problem(_line()) is None
    assert trial_problem(_line(stopped_early=True)) is None
    assert "stopped_early is False" in trial_problem(_line(stopped_early=False))
    assert "stopped_early is 'yes'" in trial_problem(_line(stopped_early="yes"))
    failed = {**_line(stopped_early=True), "status": "failed", "error": "E: x", "metrics": {}, "score": None}
    del failed["feasible"]
    assert "unknown field 'stopped_early'" in trial_problem(failed)


class _FakeSearch:
    def __init__(self) -> None:
        self.recorded: list[tuple[list, dict]] = []
        self.lost: list = []
        self.in_flight, self.stop_error = 1, None

    def record(self, archs: list, result: dict) -> None:
        self.recorded.append((archs, result))

    def record_lost(self, archs: list, reason: str) -> None:
        self.lost.append(archs)


_PARTIAL = {"results": [{"metrics": {"epochs": 1}}], "node": "n", "host": "h", "pid": 1, "nas_final": False}


@pytest.mark.parametrize(("result", "signum", "expected"), [
    ({**_PARTIAL, "nas_final": True}, None, "final"),  # the trial's last report
    ({k: v for k, v in _PARTIAL.items() if k != "nas_final"}, None, "final"),  # a fifo trial's return value
    (_PARTIAL, None, "stopped"),  # ASHA stopped it after an epoch
    (_PARTIAL, 2, "pending"),  # Ctrl+C stopped it: it runs again on resume, not recorded as stopped
    (None, None, "lost"),  # its worker died
])
def test_a_finished_trial_is_recorded_once_as_final_stopped_early_pending_or_lost(
        result: dict | None, signum: int | None, expected: str) -> None:
    from nas.tune_trials import _SEARCHES, _StrategySearcher

    search = _FakeSearch()
    searcher = _StrategySearcher(search, SimpleNamespace(signum=signum))
    try:
        searcher.live["t1"] = ["arch"]
        searcher.on_trial_complete("t1", result=result)
        searcher.on_trial_complete("t1", result=result)  # Tune may report a trial twice
    finally:
        _SEARCHES.pop(searcher.search_id, None)
    got = {"final": search.recorded and "stopped_early" not in search.recorded[0][1]["results"][0],
           "stopped": search.recorded and search.recorded[0][1]["results"][0].get("stopped_early") is True,
           "pending": not search.recorded and not search.lost and search.in_flight == 0,
           "lost": search.lost == [["arch"]]}
    assert [name for name, hit in got.items() if hit] == [expected]
    assert len(search.recorded) + len(search.lost) <= 1


# --- refusals, before anything is written or started --------------------------------------------------


_BAD = [
    (["--scheduler", "asha", "--evaluator", "lut"], ["--scheduler asha", "--evaluator lut", "allowed", "train"]),
    (["--scheduler", "asha", "--strategy", "random", "--objective", "pareto", "--metrics", "accuracy:max,params:min"],
     ["--scheduler asha", "pareto", "constrained or weighted"]),
    (["--scheduler", "asha", "--archs-per-trial", "2"], ["--archs-per-trial 2", "allowed: 1"]),
    (["--scheduler", "asha", "--epochs", "1"], ["--epochs 1", "2 or more"]),
    (["--scheduler", "asha", "--epochs", "3", "--asha-grace-period", "3"], ["--asha-grace-period 3", "1 to 2"]),
    (["--asha-grace-period", "2"], ["--asha-grace-period 2", "--scheduler asha"]),
    (["--asha-reduction-factor", "3"], ["--asha-reduction-factor 3", "--scheduler asha"]),
    (["--scheduler", "asha", "--asha-reduction-factor", "1"], ["--asha-reduction-factor", "(1, 100]", "got 1"]),
    (["--scheduler", "hyperband"], ["--scheduler", "fifo", "asha", "hyperband"]),
]


@pytest.mark.usefixtures("warm_cli", "in_tmp_dir")
@pytest.mark.parametrize(("args", "needles"), _BAD, ids=[" ".join(a) for a, _ in _BAD])
def test_searches_asha_cannot_run_are_refused_in_one_line(args: list[str], needles: list[str]) -> None:
    proc = run_cli("search", "--space", "nasbench201", "--resolution", "8", "--trials", "2", "--run-dir", "run",
                   "--num-cpus", "1", *args)
    assert_user_error(proc, *needles)
    assert not Path("run").exists()


def test_a_fifo_run_dir_stores_no_scheduler_and_refuses_asha(tmp_path: Path) -> None:
    from nas.plan import plan_search
    from nas.run_dir import RunDir
    from nas.runner import run_search

    fifo = RunConfig(space="nasbench201", space_config=_TINY_NB201, evaluator="train", trials=2,
                     evaluator_config={"epochs": 2})
    stored = plan_search(fifo).stored_config()
    assert "scheduler" not in stored  # as a run dir made before schedulers: it resumes as it did
    with RunDir(tmp_path) as rd:
        rd.write_config(stored)
    before = (tmp_path / "config.yaml").read_bytes()
    asha = fifo.model_copy(update={"scheduler": Scheduler(kind="asha", reduction_factor=2)})
    with pytest.raises(UserError, match=r"holds a different search \(scheduler: stored None, given .*'kind': 'asha'"):
        run_search(asha, tmp_path, num_cpus=1)
    assert (tmp_path / "config.yaml").read_bytes() == before
    dumped = asha.model_dump(mode="json")
    assert dumped["scheduler"] == {"kind": "asha", "grace_period": 1, "reduction_factor": 2.0}
    assert RunConfig.model_validate(dumped) == asha


# --- a real search ------------------------------------------------------------------------------------


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.usefixtures("warm_cli", "in_tmp_dir")
def test_asha_search_stops_poor_archs_records_each_once_and_reads_back() -> None:
    Path("search.yaml").write_text(yaml.safe_dump({"space_config": _TINY_NB201,
                                                   "evaluator_config": {"epochs": 3, "batch_size": 128}}))
    fifo = ["search", "--config", "search.yaml", "--space", "nasbench201", "--strategy", "random", "--evaluator",
            "train", "--seed", "1", "--num-cpus", "2", "--run-dir", "run", "--json"]
    command = [*fifo, "--scheduler", "asha", "--asha-reduction-factor", "2"]
    proc = run_cli(*command, "--trials", "6", timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = _lines(Path("run"))
    assert [r["trial"] for r in lines] == list(range(6)) and len({r["hash"] for r in lines}) == 6, proc.stderr
    assert all(r["status"] == "ok" for r in lines), proc.stderr
    stopped = [r for r in lines if r.get("stopped_early")]
    finished = [r for r in lines if "stopped_early" not in r]
    assert stopped and finished, [(r["metrics"]["epochs"], r["metrics"]["accuracy"]) for r in lines]
    assert all(1 <= r["metrics"]["epochs"] < 3 for r in stopped)
    assert all(r["metrics"]["epochs"] == 3 for r in finished)
    assert all(set(r["metrics"]) == set(finished[0]["metrics"]) for r in lines)
    assert max(r["score"] for r in finished) >= max(r["score"] for r in stopped)
    assert yaml.safe_load(Path("run/config.yaml").read_text())["scheduler"]["kind"] == "asha"

    before = Path("run/trials.jsonl").read_bytes()
    again = run_cli(*command, "--trials", "6", timeout=120)  # resumes a finished search: reads every line back
    assert again.returncode == 0, again.stderr
    assert Path("run/trials.jsonl").read_bytes() == before
    assert json.loads(again.stdout) == json.loads(proc.stdout)  # the same best archs
    refused = run_cli(*fifo, "--trials", "6", timeout=120)
    assert_user_error(refused, "holds a different search", "scheduler")  # fifo now: another search
    assert Path("run/trials.jsonl").read_bytes() == before
