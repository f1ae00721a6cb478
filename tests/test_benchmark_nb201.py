"""`benchmarks/strategies_nb201.py` on 2 seeds x a few archs: its core, its statistics and its CLI keep working."""

from __future__ import annotations

import errno
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nas.config import ROOT

SCRIPT = ROOT / "benchmarks" / "strategies_nb201.py"
TRACKED = ROOT / "benchmarks" / "strategies_nb201.json"
ARCHS = 20


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("strategies_nb201", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def runs(bench):
    names = ("random", "evolution", "tpe", "rl", "nsga2")
    single = [bench.run_one(name, i, archs=ARCHS) for name in names for i in range(2)]
    pareto = [bench.run_one(name, i, pareto=True, archs=ARCHS) for name in ("random", "nsga2") for i in range(2)]
    return single, pareto


def test_a_run_is_a_deduplicated_search_told_the_tabular_metrics(bench, runs):
    from nas.evaluate.tabular import best_accuracy

    single, _ = runs
    for run in single:
        assert len(run["accuracy"]) == ARCHS and run["exhausted"] is None
        assert np.all((run["accuracy"] > 0) & (run["accuracy"] <= 1)) and np.all(run["train_time_s"] > 0)
        assert np.all(run["mean_accuracy"] <= best_accuracy() + 1e-12) and np.all(run["s"] >= 0)
        # each observed accuracy is one of the arch's recorded seeds: the mean over seeds is near it
        assert np.all(np.abs(run["accuracy"] - run["mean_accuracy"]) < 0.1)
    first = {run["name"]: run["accuracy"][:5].tolist() for run in single if run["seed"] == 0}
    assert first["random"] != first["evolution"], "strategies must draw from independent seed streams"
    again = bench.run_one("evolution", 0, archs=ARCHS)
    assert again["accuracy"].tolist() == next(r for r in single if r["name"] == "evolution" and r["seed"] == 0)[
        "accuracy"].tolist()


def test_summaries_budgets_pvalues_and_curves(bench, runs):
    from nas.evaluate.tabular import best_accuracy

    single, pareto = runs
    summary = bench.summarize(single, best_accuracy(), archs=ARCHS)
    assert set(summary) == {"random", "evolution", "tpe", "rl", "nsga2"}
    for name, row in summary.items():
        budgets = row["budgets"]
        assert list(budgets) == [str(ARCHS), "12000s", "12000s_12epoch_estimate"]  # 50+ do not fit 20 archs
        assert 3 <= budgets["12000s"]["archs"][0] <= 12  # 200-epoch costs: 12,000 s buys a handful of archs
        assert budgets["12000s_12epoch_estimate"]["archs"][0] == ARCHS
        assert all(r["regret"][0] >= 0 for r in budgets.values())
        assert ("p_vs_random" in budgets["12000s"]) == (name != "random")
        mean = row["curve"]["mean"]
        assert mean == sorted(mean) and row["curve"]["archs"][-1] == ARCHS and row["ask_tell_ms_per_arch"] >= 0
    verdict = bench.bar(summary)
    assert verdict["passed"] is False and verdict["p_vs_random"] == {}  # 100 and 300 archs were not run
    mo = bench.summarize_pareto(pareto, archs=ARCHS)
    assert set(mo) == {"random", "nsga2"} and 0 < mo["nsga2"]["budgets"][str(ARCHS)]["hypervolume"][0]
    assert 0 <= mo["nsga2"]["budgets"][str(ARCHS)]["p_vs_random"] <= 1
    assert mo["nsga2"]["curve"]["mean"] == sorted(mo["nsga2"]["curve"]["mean"])
    assert bench.space_front_hypervolume() > mo["nsga2"]["budgets"][str(ARCHS)]["hypervolume"][0]
    assert "| random |" in bench.table({"single_objective": summary})


def test_time_budget_anytime_padding_and_the_test(bench):
    run = {"accuracy": np.array([0.5, 0.9, 0.7]), "mean_accuracy": np.array([0.55, 0.85, 0.75]),
           "train_time_s": np.array([5000.0, 7000.0, 1.0])}
    assert bench.within_time(run, 12_000) == 2 and bench.within_time(run, 11_999) == 1
    assert bench.within_time(run, 12_000, scale=0.5) == 3
    best, picked = bench.anytime(run, 5)  # a search that ran out of archs keeps its best to the budget
    assert best.tolist() == [0.5, 0.9, 0.9, 0.9, 0.9] and picked.tolist() == [0.55, 0.85, 0.85, 0.85, 0.85]
    high, low = np.linspace(0.91, 0.92, 30), np.linspace(0.90, 0.91, 30) - 1e-4
    assert bench.one_sided_p(high, low) < 1e-6 and bench.one_sided_p(low, high) > 0.99
    assert bench.one_sided_p(np.full(5, 0.9), np.full(5, 0.9)) == 1.0


def test_a_space_that_runs_out_ends_the_run_like_a_search(bench, monkeypatch):
    from nas.strategies.dedup import Deduplicated

    monkeypatch.setattr(bench, "Deduplicated", lambda strategy: Deduplicated(strategy, max_draws=3))
    monkeypatch.setitem(bench.ENTRIES, "stuck", bench.Entry("random"))
    # A space where every draw and every mutation is the same arch: it runs out after one.
    def only(space, *args):
        return space.make_arch({d.name: d.choices[1] for d in space.decisions()})

    monkeypatch.setattr("nas.space.SearchSpace.sample", only)
    monkeypatch.setattr("nas.space.SearchSpace.mutate", only)
    run = bench.run_one("stuck", 0, archs=ARCHS)
    assert run["exhausted"] == 1 and len(run["accuracy"]) == 1


def test_a_failed_write_keeps_the_previous_json_whole(bench, tmp_path, monkeypatch):
    path = tmp_path / "strategies_nb201.json"
    path.write_text('{"old": true}\n')

    def full_disk(self, data, *args, **kwargs):
        Path.write_bytes(self, data[: len(data) // 2].encode())
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space"):
        bench._write_json(path, {"new": list(range(100))})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_writes_json_and_plot_where_out_says(tmp_path):
    before = TRACKED.read_bytes() if TRACKED.exists() else None
    proc = _cli("--seeds", "2", "--mo-seeds", "2", "--archs", "12", "--jobs", "1", "--strategies", "evolution",
                "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "strategies_nb201.json").read_text())
    assert set(result["single_objective"]) == {"random", "evolution"} and result["seeds"] == 2
    assert set(result["multi_objective"]["strategies"]) == {"random", "nsga2"}
    assert result["published"]["cifar10"]["REA"]["valid"][0] > 90 and "machine" in result
    assert (tmp_path / "strategies_nb201.png").read_bytes()[:4] == b"\x89PNG"
    assert "| evolution |" in proc.stdout
    assert (TRACKED.read_bytes() if TRACKED.exists() else None) == before


@pytest.mark.parametrize(("args", "flag"), [(["--seeds", "1"], "--seeds"), (["--archs", "5"], "--archs"),
                                            (["--strategies", "bogus"], "--strategies"),
                                            (["--mo-seeds", "1"], "--mo-seeds"), (["--timeout-s", "0"], "--timeout-s")])
def test_bad_options_are_refused_in_one_line_before_writing(bench, tmp_path, capsys, args, flag):
    with pytest.raises(SystemExit) as exit_:
        bench.main([*args, "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert flag in line and "allowed" in line
    assert not (tmp_path / "out").exists()


def test_the_script_refuses_without_a_traceback(tmp_path):
    proc = _cli("--archs", "99999", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "--archs: 99999" in proc.stderr.strip().splitlines()[-1] and not (tmp_path / "out").exists()


def test_configs_are_read_once_checked_and_used(bench, monkeypatch):
    from nas.errors import UserError
    from nas.strategies.base import strategy_defaults

    assert bench.configs(["evolution", "nni_tpe"]) == {"evolution": strategy_defaults("evolution"),
                                                       "nni_tpe": {**strategy_defaults("nni"), "tuner": "TPE"}}
    small = {"population_size": 2, "sample_size": 2}
    assert bench.run_one("evolution", 0, archs=12, config=small)["accuracy"].tolist() != bench.run_one(
        "evolution", 0, archs=12)["accuracy"].tolist()[:12]
    monkeypatch.setitem(bench.ENTRIES, "evolution", bench.Entry("evolution", {"sample_size": 99}))
    with pytest.raises(UserError, match="sample_size"):
        bench.configs(["evolution"])
