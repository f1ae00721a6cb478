"""Every registered strategy (each NNI tuner apart) searches every registered space through the `nas search`
CLI, and a search of each killed with SIGKILL resumes to every trial exactly once, asking what the unbroken
search of the same seed asks (issue 12, "Done when").

The searches score archs in the search process (no Ray): `lut` with the committed CPU latency table where
the space has one, `tabular` for NAS-Bench-201, else `lut` with a synthetic table. The default run covers
each strategy and each space once (a diagonal of the matrix), and a kill -9 of two strategies of different
kinds; the whole matrix and a kill of every strategy are `exhaustive` (`make test-all`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from nas.arch import Arch
from nas.config import PROFILES_DIR
from nas.hardware.store import default_device_id, find_table
from nas.registry import SPACES, STRATEGIES
from nas.space import load_space
from nas.strategies._nni_tuners import TUNERS
from tests.cli_harness import run_cli
from tests.conftest import synthetic_table
from tests.test_in_process import _start, _wait_for_trials

pytestmark = pytest.mark.usefixtures("warm_cli", "in_tmp_dir")

_OPTIONS = {
    "evolution": {"population_size": 6, "sample_size": 3},
    "early_exit_evolution": {"population_size": 6},
    "nsga2": {"population_size": 6},
    "rl": {"batch_size": 4},
    "tpe": {"n_startup_trials": 4},
    "nni:TPE": {"n_startup_jobs": 4},
    "nni:Evolution": {"population_size": 6},
    "nni:RegularizedEvolution": {"population_size": 6, "sample_size": 3},
    "nni:PPO": {"trials_per_update": 8, "minibatch_size": 4},
}
"""Small populations, batches and random starts, so a few dozen archs reach each strategy's learning phase."""
_PARETO = ("nsga2",)
"""Strategies searched with a `pareto` objective (the others with the evaluator's constrained default)."""
_TABULAR_SPACES = ("nasbench201",)
"""Spaces the `tabular` evaluator has measured results for."""
_BUDGET = 16
_BATCH = 4


def _variants() -> list[str]:
    """Every registered strategy; the nni strategy once per NNI tuner (`nni:TPE`)."""
    return [v for name in STRATEGIES.names() for v in ([f"nni:{t}" for t in TUNERS] if name == "nni" else [name])]


def _strategy_args(variant: str, space: str) -> list[str]:
    name, _, tuner = variant.partition(":")
    options = {**({"tuner": tuner} if tuner else {}), **_OPTIONS.get(variant, {})}
    if name == "early_exit_evolution":  # its default 5M-param threshold is EEEA-Net-C's, above some spaces' archs
        options["beta"] = _median_params(space)
    return ["--strategy", name, *(a for key, value in options.items() for a in ("--set", f"{key}={value}"))]


def _median_params(space_name: str) -> int:
    """The median parameter count of 21 random archs of the space: an early-exit threshold half the archs meet."""
    space, rng = load_space(space_name), np.random.default_rng(0)
    return int(np.median([space.cost(space.sample(rng))["params"] for _ in range(21)]))


def _missing_packages(variant: str) -> list[str]:
    """Packages outside this project's dependencies that the variant's NNI tuner needs and that are not installed."""
    tuner = variant.partition(":")[2]
    return [m for m in TUNERS[tuner].needs if importlib.util.find_spec(m) is None] if tuner else []


def _skip_without_tuner_packages(variant: str) -> None:
    missing = _missing_packages(variant)
    if missing:
        pytest.skip(f"NNI's {variant.partition(':')[2]} tuner needs {', '.join(missing)} (an optional extra), "
                    "not installed here")


def _pareto_metrics(evaluator: str) -> dict[str, str]:
    return {"accuracy" if evaluator == "tabular" else "macs": "max", "latency_ms": "min"}


def _objective_args(variant: str, evaluator: str) -> list[str]:
    name = variant.partition(":")[0]
    if name not in _PARETO:
        assert "constrained" in STRATEGIES.get(name).objectives, f"{name}: give it an objective it takes"
        return []
    return ["--objective", "pareto", "--metrics", ",".join(f"{m}:{d}" for m, d in _pareto_metrics(evaluator).items())]


def _committed_device(space_name: str) -> str | None:
    """A device id whose committed table prices the space: this machine's CPU kind first, else any."""
    space = load_space(space_name)
    devices = [default_device_id("cpu"), *sorted(p.name for p in PROFILES_DIR.iterdir() if p.is_dir())]
    return next((d for d in devices if find_table(d, space) is not None), None)


def _evaluator_args(space_name: str, tmp_path: Path) -> list[str]:
    device = _committed_device(space_name)
    if device is not None:
        return ["--evaluator", "lut", "--hardware", device]
    if space_name in _TABULAR_SPACES:
        return ["--evaluator", "tabular"]
    return ["--evaluator", "lut", "--hardware", str(synthetic_table(space_name, tmp_path / "table.yaml"))]


def _matrix() -> list:
    """(variant, space) pairs. By default each variant that can run and each space run at least once (a diagonal
    of the matrix), and a variant whose packages are missing is skipped once, saying so; the rest is exhaustive."""
    variants, spaces = _variants(), SPACES.names()
    runnable = [v for v in variants if not _missing_packages(v)]
    default = {(v, spaces[i % len(spaces)]) for i, v in enumerate(runnable)}
    default |= {(runnable[i % len(runnable)], s) for i, s in enumerate(spaces)}
    default |= {(v, spaces[0]) for v in variants if v not in runnable}
    return [pytest.param(v, s, id=f"{v}-{s}", marks=() if (v, s) in default else pytest.mark.exhaustive)
            for v in variants for s in spaces]


def _records(run_dir: Path, shown: str) -> list[dict]:
    text = (run_dir / "trials.jsonl").read_text()
    assert text.endswith("\n"), f"the trial log ends in a torn line: {text[-300:]!r}\n{shown}"
    return [json.loads(line) for line in text.splitlines()]


def _check_log(run_dir: Path, space_name: str, budget: int, shown: str) -> list[dict]:
    """Trials 0..budget-1 each once, distinct valid archs of the space, all scored; the state agrees."""
    records = _records(run_dir, shown)
    assert [r["trial"] for r in records] == list(range(budget)), shown
    assert len({r["hash"] for r in records}) == budget, f"an arch was recorded twice\n{shown}"
    config = load_space(space_name).config.model_dump(mode="json")
    for record in records:
        arch = Arch.from_dict(record["arch"])  # validated: every choice allowed, the space's rules kept
        assert (arch.space, arch.hash, dict(arch.config)) == (space_name, record["hash"], config), record
        assert record["status"] == "ok", record
    saved = json.loads((run_dir / "strategy.json").read_text())
    assert saved["n_recorded"] == budget and saved["strategy"]["pending"] == [], shown
    # A repeat of an arch already scored is told its metrics again (`Deduplicated`): tells may exceed trials.
    assert budget <= saved["strategy"]["n_told"] <= saved["strategy"]["n_asked"], shown
    return records


@pytest.mark.parametrize(("variant", "space"), _matrix())
def test_every_strategy_searches_every_space_from_the_cli(variant: str, space: str, tmp_path: Path) -> None:
    _skip_without_tuner_packages(variant)
    evaluator = _evaluator_args(space, tmp_path)
    run_dir = tmp_path / "run"
    done = run_cli("search", "--space", space, *_strategy_args(variant, space), *evaluator,
                   *_objective_args(variant, evaluator[1]), "--trials", _BUDGET, "--archs-per-trial", _BATCH,
                   "--seed", 5, "--run-dir", run_dir, timeout=300)
    shown = f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0 and "Traceback" not in done.stderr, shown
    if "--hardware" in evaluator and not evaluator[-1].endswith(".yaml"):
        assert f"latency table: {PROFILES_DIR}" in done.stderr, f"not the committed table\n{shown}"
    n_logged = len((run_dir / "trials.jsonl").read_text().splitlines())
    if n_logged < _BUDGET:  # a space with fewer archs than the budget: allowed when said
        assert "the search ended early" in done.stdout, f"{n_logged} of {_BUDGET} archs and no word why\n{shown}"
    records = _check_log(run_dir, space, min(n_logged, _BUDGET), shown)
    best = json.loads((run_dir / "best.json").read_text())
    assert best and {b["hash"] for b in best} <= {r["hash"] for r in records}, shown
    if variant.partition(":")[0] in _PARETO:  # the non-dominated set: no logged arch beats one of them
        sign = {m: 1 if d == "max" else -1 for m, d in _pareto_metrics(evaluator[1]).items()}

        def beats(a: dict, b: dict) -> bool:
            pairs = [(sign[m] * a["metrics"][m], sign[m] * b["metrics"][m]) for m in sign]
            return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)

        assert not [(r["hash"], b["hash"]) for b in best for r in records if beats(r, b)], shown


# --- kill -9 -------------------------------------------------------------------------------------------

_KILL_BUDGET = 150
_KILL_AFTER = 30


def _kill_args(variant: str, run_dir: Path) -> list[str]:
    return ["--space", "nasbench201", *_strategy_args(variant, "nasbench201"), "--evaluator", "tabular",
            *_objective_args(variant, "tabular"), "--trials", str(_KILL_BUDGET), "--archs-per-trial", "3",
            "--seed", "11", "--run-dir", str(run_dir)]


def _wait_for_unsaved_trials(proc: subprocess.Popen, run_dir: Path, timeout: float = 10) -> None:
    """Wait, a little, for the moment the log holds trials the saved strategy state has only in flight (between
    an append and the next save): a kill then leaves the resume trials to tell. Best effort: it may pass."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):  # the state is replaced under us now and then
            n_recorded = json.loads((run_dir / "strategy.json").read_bytes())["n_recorded"]
            if (run_dir / "trials.jsonl").read_bytes().count(b"\n") > n_recorded:
                return
        time.sleep(0.001)


_KILLED_BY_DEFAULT = ("tpe", "rl")
"""A library's own store (Optuna's journal) and a learned controller (evolution's kill -9 is in
tests/test_in_process.py): the other strategies' kills are exhaustive."""


@pytest.mark.slow
@pytest.mark.parametrize("variant", [pytest.param(v, marks=() if v in _KILLED_BY_DEFAULT else pytest.mark.exhaustive)
                                     for v in _variants()])
def test_a_search_killed_with_sigkill_resumes_exactly(variant: str, tmp_path: Path) -> None:
    """Kill -9 a search (3 archs a batch) once it has logged some trials, between an append to its log and the
    next save of its state where it can, with a torn line left behind; the same command resumes it to every
    trial once, and the trial log equals that of an unbroken search of the same seed, arch for arch."""
    _skip_without_tuner_packages(variant)
    run_dir, err = tmp_path / "run", tmp_path / "stderr.txt"
    proc = _start(_kill_args(variant, run_dir), err)
    try:
        _wait_for_trials(proc, run_dir, _KILL_AFTER, err)
        _wait_for_unsaved_trials(proc, run_dir)
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone already: the wait above says why
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    killed = (run_dir / "trials.jsonl").read_text().splitlines(keepends=True)
    complete = [json.loads(line) for line in killed if line.endswith("\n")]
    assert _KILL_AFTER <= len(complete) < _KILL_BUDGET
    assert [r["trial"] for r in complete] == list(range(len(complete)))
    saved = json.loads((run_dir / "strategy.json").read_text())  # written atomically: never torn
    in_flight = {Arch.from_dict(a).hash for a in saved["strategy"]["pending"]}
    assert saved["n_recorded"] <= len(complete), saved["n_recorded"]
    assert {r["hash"] for r in complete[saved["n_recorded"]:]} <= in_flight, "logged after the save, never asked"
    with open(run_dir / "trials.jsonl", "a") as log:  # and a torn line, as a kill during an append leaves it
        log.write('{"arch": {"choices": {"edge.1<-0": "no')

    resumed = run_cli("search", *_kill_args(variant, run_dir), timeout=300)
    shown = f"exit {resumed.returncode}\nstderr:\n{resumed.stderr[-3000:]}"
    assert resumed.returncode == 0, shown
    records = _check_log(run_dir, "nasbench201", _KILL_BUDGET, shown)
    assert records[: len(complete)] == complete, "the resume changed trials logged before the kill"

    unbroken = run_cli("search", *_kill_args(variant, tmp_path / "unbroken"), timeout=300)
    assert unbroken.returncode == 0, unbroken.stderr[-3000:]
    expected = _check_log(tmp_path / "unbroken", "nasbench201", _KILL_BUDGET, unbroken.stderr[-3000:])
    first = next((i for i, (a, b) in enumerate(zip(records, expected, strict=True)) if a["hash"] != b["hash"]), None)
    assert first is None, f"killed after {len(complete)} trials, the resumed search asks another arch at trial {first}"
