"""The runner on a real local Ray cluster: budgets, the trial log, improvement, resume."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from nas.config import Objective, RunConfig
from nas.errors import UserError
from nas.run_dir import RunDir
from nas.runner import run_search


def _lut_config(lut_path: Path, trials: int, **kw) -> RunConfig:
    return RunConfig(space="proxylessnas", strategy="evolution", evaluator="lut", trials=trials,
                     hardware=str(lut_path), objective=Objective(metric="macs", max_latency_ms=1.2), **kw)


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines()]


def test_lut_search_logs_every_arch_and_improves(ray_local, lut_path: Path, tmp_path: Path) -> None:
    config = _lut_config(lut_path, trials=1500, archs_per_trial=250, strategy_config={"population_size": 100})
    best = run_search(config, tmp_path).best
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


def test_resume_keeps_finished_and_reruns_in_flight(ray_local, lut_path: Path, tmp_path: Path) -> None:
    """Simulate a kill after 200 of 400 archs with one batch in flight and one line torn."""
    config = _lut_config(lut_path, trials=400, archs_per_trial=100)
    run_search(config.model_copy(update={"trials": 200}), tmp_path)
    from nas.plan import plan_search
    from nas.trials import Search

    with RunDir(tmp_path) as rd:
        search = Search(plan_search(config), rd)
        in_flight = search.next_batch()  # asked and saved, never finished
    with open(tmp_path / "trials.jsonl", "a") as handle:
        handle.write('{"trial": 200, "arch": {"spa')  # torn by the kill
    run_search(config, tmp_path)
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
