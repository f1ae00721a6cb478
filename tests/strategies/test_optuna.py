"""The Optuna strategies `tpe` and `nsga2`: the study they keep, exact resume from the JSON state and the
journal (also when the journal ran ahead of the state, or was damaged), invalid archs, and that each
finds better archs than random search."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from nas import objective as objectives
from nas.config import Objective
from nas.errors import UserError
from nas.space import load_space
from nas.strategies import build_strategy
from nas.strategies._journal import JOURNAL_NAME

SCALAR = Objective(metric="macs", mode="max", max_params=2_600_000)
PARETO = Objective(kind="pareto", metrics={"macs": "max", "latency_ms": "min"}, max_params=2_600_000)
SMALL = {"tpe": {"n_startup_trials": 6}, "nsga2": {"population_size": 6}}
"""Configs whose models start within a few asks, so a short test reaches TPE's model and NSGA-II's generations."""


def _table(space_name: str) -> dict[str, dict]:
    """A LUT-like additive cost per (decision, choice), fixed by seed: cheap stand-ins for MACs, params and latency.

    As in a real network, params per MAC grow with depth (feature maps shrink while channels grow),
    so the most MACs under a params bound put large choices early and small ones late.
    """
    rng = np.random.default_rng(0)
    decisions = load_space(space_name).decisions()
    table = {}
    for depth, decision in enumerate(decisions):
        macs = rng.uniform(0, 1e6, len(decision.choices))
        params_per_mac = 0.02 * 25 ** (depth / max(1, len(decisions) - 1))
        table[decision.name] = {
            choice: (macs[i], macs[i] * params_per_mac * rng.uniform(0.8, 1.2), rng.uniform(0, 1))
            for i, choice in enumerate(decision.choices)
        }
    return table


_TABLES: dict[str, dict] = {}


def metrics(arch) -> dict[str, float]:
    """Synthetic metrics of an arch: macs, params and latency_ms summed over its decisions."""
    table = _TABLES.setdefault(arch.space, _table(arch.space))
    parts = np.array([table[name][choice] for name, choice in arch.choices.items()])
    macs, params, latency = parts.sum(axis=0)
    return {"macs": float(macs), "params": float(params + 1e6), "latency_ms": float(latency)}


def _make(name: str, seed: int = 7, workdir: Path | None = None, objective: Objective = SCALAR,
          space: str = "proxylessnas", **overrides):
    return build_strategy(name, {**SMALL[name], **overrides}, load_space(space), objective, seed, workdir)


def _drive(strategy, steps: int, measure: Callable = metrics) -> list[str]:
    """Ask three, tell them in reverse order; repeat. Returns the asked hashes."""
    asked = []
    for _ in range(steps):
        batch = strategy.ask(3)
        asked += [a.hash for a in batch]
        for arch in reversed(batch):
            strategy.tell(arch, measure(arch))
    return asked


CASES = [("tpe", SCALAR), ("nsga2", SCALAR), ("nsga2", PARETO)]
IDS = ["tpe", "nsga2-scalar", "nsga2-pareto"]


# -- the study -------------------------------------------------------------------------------
@pytest.mark.parametrize("space", ["proxylessnas", "nasbench201"])
def test_each_decision_is_one_categorical_parameter(space: str) -> None:
    strategy = _make("tpe", space=space)
    archs = strategy.ask(4)
    trials = strategy.study.get_trials(deepcopy=False)
    assert [t.params for t in trials] == [dict(a.choices) for a in archs]
    for decision in load_space(space).decisions():  # names with dots and arrows (`edge.1<-0`) are fine
        assert trials[0].distributions[decision.name] == CategoricalDistribution(decision.choices)
    assert [t.state for t in trials] == [TrialState.RUNNING] * 4


def test_tell_completes_forget_fails_and_scores_are_told() -> None:
    strategy = _make("tpe")
    first, second = strategy.ask(2)
    strategy.forget(first)
    score = strategy.tell(second, metrics(second))
    trials = strategy.study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].value == score == objectives.score(SCALAR, metrics(second))
    assert strategy.state_dict()["optuna"]["trials"] == {}


def test_nsga2_pareto_study_has_one_direction_per_metric_and_a_constraint() -> None:
    strategy = _make("nsga2", objective=PARETO)
    archs = strategy.ask(12)
    for arch in archs:
        strategy.tell(arch, metrics(arch))
    study = strategy.study
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    for arch, trial in zip(archs, study.get_trials(deepcopy=False), strict=True):
        measured = metrics(arch)
        assert trial.values == list(objectives.values(PARETO, measured))
        broken = objectives.violations(PARETO, measured)
        expected = broken["params"][0] / broken["params"][1] - 1 if broken else 0.0
        assert trial.constraints == {"bounds": pytest.approx(expected)}
    assert any(t.constraints["bounds"] > 0 for t in study.get_trials(deepcopy=False))


def test_nsga2_scalar_is_one_maximised_score() -> None:
    strategy = _make("nsga2")
    (arch,) = strategy.ask()
    strategy.tell(arch, metrics(arch))
    assert [d.name for d in strategy.study.directions] == ["MAXIMIZE"]
    assert strategy.study.get_trials()[0].value == objectives.score(SCALAR, metrics(arch))


@pytest.mark.parametrize("name", ["tpe", "nsga2"])
def test_bad_options_are_one_line_errors(name: str) -> None:
    bad = {"tpe": {"n_ei_candidates": 0}, "nsga2": {"mutation_prob": 1.5}}[name]
    with pytest.raises(UserError, match=rf"{next(iter(bad))}.*allowed") as err:
        _make(name, **bad)
    assert "\n" not in str(err.value)


# -- determinism and exact resume --------------------------------------------------------------
@pytest.mark.parametrize(("name", "objective"), CASES, ids=IDS)
def test_same_seed_same_asks_in_memory_and_on_file(name: str, objective: Objective, tmp_path: Path) -> None:
    in_memory = _drive(_make(name, objective=objective), 8)
    assert _drive(_make(name, objective=objective, workdir=tmp_path), 8) == in_memory
    assert _drive(_make(name, seed=8, objective=objective), 8) != in_memory


def _snapshot(name: str, objective: Objective, workdir: Path, steps: int = 6):
    """A strategy driven `steps` rounds plus one arch in flight, its JSON state and a copy of its workdir."""
    strategy = _make(name, objective=objective, workdir=workdir)
    _drive(strategy, steps)
    (in_flight,) = strategy.ask()
    state = json.loads(json.dumps(strategy.state_dict(), allow_nan=False))
    copy = workdir.parent / f"{workdir.name}-copy"
    shutil.copytree(workdir, copy)
    return strategy, in_flight, state, copy


def _resumed(name: str, objective: Objective, state: dict, workdir: Path):
    resumed = _make(name, seed=99, objective=objective, workdir=workdir)
    resumed.load_state_dict(state)
    return resumed


def _continue(strategy, in_flight, steps: int = 6) -> list[str]:
    strategy.tell(in_flight, metrics(in_flight))
    return _drive(strategy, steps)


@pytest.mark.parametrize(("name", "objective"), CASES, ids=IDS)
def test_resume_from_state_and_copied_journal_is_exact(name: str, objective: Objective, tmp_path: Path) -> None:
    original, in_flight, state, copy = _snapshot(name, objective, tmp_path / "run")
    expected = _continue(original, in_flight)
    resumed = _resumed(name, objective, state, copy)
    assert [a.hash for a in resumed.pending()] == [in_flight.hash]
    assert resumed.state_dict() == state
    assert _continue(resumed, in_flight) == expected


@pytest.mark.parametrize(("name", "objective"), CASES, ids=IDS)
def test_resume_drops_journal_written_after_the_state(name: str, objective: Objective, tmp_path: Path) -> None:
    """A kill -9 after tells the state never recorded, in the middle of a journal line."""
    workdir = tmp_path / "run"
    original, in_flight, state, _ = _snapshot(name, objective, workdir)
    expected = _continue(original, in_flight)
    journal = workdir / JOURNAL_NAME
    assert journal.stat().st_size > state["optuna"]["journal"]["bytes"]
    with journal.open("ab") as handle:
        handle.write(b'{"op_code":5,"worker_id":"x","trial_')
    assert _continue(_resumed(name, objective, state, workdir), in_flight) == expected


_CHILD = """
import json, os, sys
from pathlib import Path
from tests.strategies.test_optuna import PARETO, _drive, _make
workdir, state_path = Path(sys.argv[1]), Path(sys.argv[2])
strategy = _make("nsga2", objective=PARETO, workdir=workdir)
for step in range(1, 10_000):
    _drive(strategy, 1)
    tmp = state_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"steps": step, "state": strategy.state_dict()}))
    os.replace(tmp, state_path)
"""


@pytest.mark.slow  # the child imports every strategy (torch, NNI): about 10 s
def test_resume_after_kill_9_is_exact(tmp_path: Path) -> None:
    """A process that saves its state after every round is killed mid-run; its journal has run past that state."""
    workdir, state_path = tmp_path / "run", tmp_path / "state.json"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(workdir), str(state_path)],
                             cwd=Path(__file__).parents[2], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (state_path.exists() and json.loads(state_path.read_text())["steps"] >= 8):
            assert child.poll() is None, f"the child died: {child.stderr.read()}"
            assert time.monotonic() < deadline, "the child saved no state with 8 rounds within 60 s"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    saved = json.loads(state_path.read_text())
    steps, state = saved["steps"], saved["state"]
    unbroken = _make("nsga2", objective=PARETO)
    _drive(unbroken, steps)
    resumed = _make("nsga2", seed=99, objective=PARETO, workdir=workdir)
    resumed.load_state_dict(state)
    assert _drive(resumed, 5) == _drive(unbroken, 5)


def test_resume_in_memory_is_exact() -> None:
    original = _make("nsga2", objective=PARETO)
    _drive(original, 5)
    (in_flight,) = original.ask()
    state = json.loads(json.dumps(original.state_dict()))
    expected = _continue(original, in_flight)
    assert _continue(_resumed("nsga2", PARETO, state, None), in_flight) == expected


def test_resume_restores_every_sampler_rng() -> None:
    """The random sampler inside TPE and NSGA-II's child generation draw from RNGs of their own; each is saved."""
    own = {"tpe": "sampler._rng._rng", "nsga2": "sampler._child_generation_strategy._rng._rng"}  # shared by sampler
    for name, path in own.items():
        strategy = _make(name)
        strategy.ask(2)
        rngs = strategy.state_dict()["optuna"]["rngs"]
        assert set(rngs) == {path, "sampler._random_sampler._rng._rng"}
        assert rngs[path] != rngs["sampler._random_sampler._rng._rng"]


@pytest.mark.parametrize(("damage", "message"), [
    ("cut", "cut short"), ("edit", "replaced or edited"), ("missing", "missing"), ("directory", "is a directory"),
])
def test_damaged_journal_is_refused_with_one_line(damage: str, message: str, tmp_path: Path) -> None:
    _, _, state, _ = _snapshot("tpe", SCALAR, tmp_path / "run", steps=2)
    journal = tmp_path / "run" / JOURNAL_NAME
    size = state["optuna"]["journal"]["bytes"]
    if damage == "cut":
        os.truncate(journal, size - 1)
    elif damage == "edit":
        data = bytearray(journal.read_bytes())
        data[size // 2] ^= 1
        journal.write_bytes(bytes(data))
    else:
        journal.unlink()
        if damage == "directory":
            journal.mkdir()
    with pytest.raises(UserError, match=message) as err:
        _resumed("tpe", SCALAR, state, tmp_path / "run")
    assert "\n" not in str(err.value) and JOURNAL_NAME in str(err.value)


@pytest.mark.parametrize("damage", ["rng", "trials"])
def test_damaged_state_is_refused(damage: str, tmp_path: Path) -> None:
    """The runner turns these errors into one line naming strategy.json."""
    _, _, state, copy = _snapshot("nsga2", PARETO, tmp_path / "run", steps=2)
    saved = state["optuna"]
    if damage == "rng":
        next(iter(saved["rngs"].values()))["key"][0] = 2**40
    else:
        saved["trials"] = {}
    with pytest.raises(ValueError, match="key must be|do not match"):
        _resumed("nsga2", PARETO, state, copy)


def test_resume_with_another_objective_is_refused(tmp_path: Path) -> None:
    _, _, state, _ = _snapshot("nsga2", PARETO, tmp_path / "run", steps=2)
    with pytest.raises(UserError, match="maximize, minimize.*maximize"):
        _resumed("nsga2", SCALAR, state, tmp_path / "run")


def test_full_disk_during_an_ask_then_resume_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A journal append that fails halfway (ENOSPC) leaves no half line; the search resumes from its last state."""
    reference = _make("tpe", workdir=tmp_path / "reference")
    _drive(reference, 4)
    expected = _drive(reference, 4)

    broken = _make("tpe", workdir=tmp_path / "run")
    _drive(broken, 4)
    state = json.loads(json.dumps(broken.state_dict()))
    real_write, calls = os.write, []

    def full_disk(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 5:
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="No space"):
        broken.ask(3)
    monkeypatch.undo()
    assert (tmp_path / "run" / JOURNAL_NAME).read_bytes().endswith(b"}\n")
    assert _drive(_resumed("tpe", SCALAR, state, tmp_path / "run"), 4) == expected


# -- invalid archs -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tpe", "nsga2"])
def test_sets_that_break_the_space_rules_are_pruned_and_drawn_again(name: str) -> None:
    strategy = _make(name, space="nasnet")
    archs = _drive(strategy, 12)
    trials = strategy.study.get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(archs) == 36 and len(trials) == 36 + len(pruned) and pruned  # every asked arch passed make_arch
    space = load_space("nasnet")
    for trial in pruned:
        with pytest.raises(UserError):
            space.make_arch(trial.params)


def test_out_of_draws_falls_back_to_a_uniform_valid_arch(caplog: pytest.LogCaptureFixture) -> None:
    strategy = _make("nsga2", space="nasnet", max_invalid_draws=1)
    with caplog.at_level(logging.WARNING, logger="nas.strategies._optuna"):
        archs = strategy.ask(30)
    fallbacks = [r for r in caplog.records if "broke the rules" in r.getMessage()]
    trials = {t.number: t for t in strategy.study.get_trials(deepcopy=False)}
    running = [t for t in trials.values() if t.state == TrialState.RUNNING]
    assert fallbacks and len(running) == 30
    assert [t.params for t in running] == [dict(a.choices) for a in archs]


# -- learning ------------------------------------------------------------------------------------
def _best_scores(name: str, objective: Objective, seeds: range, asks: int, measure: Callable, **overrides) -> list:
    bests = []
    for seed in seeds:
        strategy = build_strategy(name, overrides, load_space("proxylessnas"), objective, seed)
        best = -np.inf
        for _ in range(asks // 4):
            for arch in strategy.ask(4):
                best = max(best, strategy.tell(arch, measure(arch)))
        bests.append(best)
    return bests


@pytest.mark.slow
def test_tpe_beats_random_search() -> None:
    """Max (synthetic) MACs under a params bound that about a third of random archs keep."""
    tpe = _best_scores("tpe", SCALAR, range(5), 100, metrics)
    rand = _best_scores("random", SCALAR, range(5), 100, metrics)
    assert np.mean(tpe) > np.mean(rand) + 2 * np.std(rand), (tpe, rand)


@pytest.mark.slow
def test_tpe_beats_random_search_on_real_costs() -> None:
    """Max MACs under a params bound, both from the built networks (`space.cost`), as the LUT evaluator gives."""
    space = load_space("proxylessnas")
    objective = Objective(metric="macs", mode="max", max_params=2_450_000)  # ~30% of random archs keep it
    tpe = _best_scores("tpe", objective, range(5), 120, space.cost)
    rand = _best_scores("random", objective, range(5), 120, space.cost)
    assert np.mean(tpe) > np.mean(rand) + 2 * np.std(rand), (tpe, rand)


def _pareto_run(name: str, seed: int, asks: int, **overrides) -> tuple[float, float]:
    """Hypervolume of the feasible archs found, and the feasible share of the last quarter of asks."""
    strategy = build_strategy(name, overrides, load_space("proxylessnas"), PARETO, seed)
    points, feasible = [], []
    for _ in range(asks // 4):
        for arch in strategy.ask(4):
            measured = metrics(arch)
            strategy.tell(arch, measured)
            feasible.append(not objectives.violations(PARETO, measured))
            if feasible[-1]:
                points.append(objectives.values(PARETO, measured))
    reference = (0.0, 21.0)  # no MACs, the largest latency the table allows
    hv = objectives.hypervolume(np.array(points), objectives.directions(PARETO), reference)
    return hv, float(np.mean(feasible[-asks // 4:]))


def test_nsga2_pareto_beats_random_search_in_hypervolume() -> None:
    """Max MACs, min latency under a params bound: more hypervolume, and NSGA-II's constraint keeps it feasible."""
    nsga2 = [_pareto_run("nsga2", seed, 160, population_size=20) for seed in range(5)]
    rand = [_pareto_run("random", seed, 160) for seed in range(5)]
    hv_nsga2, hv_rand = (np.array([hv for hv, _ in runs]) for runs in (nsga2, rand))
    assert hv_nsga2.mean() > hv_rand.mean() + 2 * hv_rand.std(), (hv_nsga2, hv_rand)
    assert min(share for _, share in nsga2) > max(share for _, share in rand), (nsga2, rand)
