"""The Ray Tune bridge: runs a strategy's archs as Tune trials and keeps the run dir.

The strategy sits behind Tune's `Searcher` interface (`_StrategySearcher`), which is
the one place that knows trial ids. Each Tune trial scores a batch of archs (one for
`train`, thousands for `lut`, since a Tune trial costs about a second to schedule)
and `trials.jsonl` gets one line per arch. Every ask and every result is saved to the
run dir before Tune sees it, so a search killed at any moment resumes: finished
archs are kept, in-flight archs are evaluated again, the strategy state is restored.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from nas.arch import Arch
from nas.config import Objective, RunConfig
from nas.errors import NasError, UserError
from nas.evaluate.base import EvaluatorSpec, build_evaluator, evaluator_class
from nas.run_dir import RunDir
from nas.space import SearchSpace, load_space
from nas.strategies.base import Strategy, build_strategy

log = logging.getLogger(__name__)

Progress = Callable[[int, int, dict[str, Any] | None], None]
"""Called as (archs done, budget, best record so far) after each finished trial."""


def encode(space: SearchSpace, arch: Arch) -> list[int]:
    """An arch as the index of its choice in each decision: compact for Tune configs."""
    return [d.choices.index(arch.choices[d.name]) for d in space.decisions()]


def decode(space: SearchSpace, indices: list[int]) -> Arch:
    """Inverse of `encode`."""
    return space.make_arch({d.name: d.choices[i] for d, i in zip(space.decisions(), indices, strict=True)})


_EVALUATORS: dict[str, Any] = {}


def evaluate_trial(config: dict[str, Any]) -> dict[str, Any]:
    """Tune trial entry point: score a batch of archs in this worker; returns their metrics."""
    import ray

    spec = EvaluatorSpec.model_validate(config["spec"])
    key = spec.model_dump_json()
    if key not in _EVALUATORS:
        _EVALUATORS[key] = build_evaluator(spec)
    evaluator = _EVALUATORS[key]
    results = [evaluator.evaluate(decode(evaluator.space, c)) for c in config["archs"]]
    node = ray.get_runtime_context().get_node_id()
    return {"results": results, "node": node, "host": socket.gethostname(), "pid": os.getpid()}


class Search:
    """One search in one run dir: strategy, evaluator spec, records and budget."""

    def __init__(self, config: RunConfig, run_dir: RunDir, progress: Progress | None = None) -> None:
        self.config = config
        self.run_dir = run_dir
        self.progress = progress
        self.space = load_space(config.space, config.space_config)
        evaluator_cls = evaluator_class(config.evaluator)
        metric = config.objective.metric or evaluator_cls.default_metric
        self.objective = Objective(**{**config.objective.model_dump(), "metric": metric})
        table = _find_table(config, self.space, evaluator_cls.needs_table or self.objective.max_latency_ms is not None)
        self.spec = EvaluatorSpec(
            space=config.space, space_config=dict(self.space.config.model_dump()),
            evaluator=config.evaluator, config=config.evaluator_config, table=table,
        )
        build_evaluator(self.spec)  # fail here, with a clear message, not in a worker
        self.batch = min(config.archs_per_trial or evaluator_cls.archs_per_trial, config.trials)
        self.strategy: Strategy = build_strategy(
            config.strategy, config.strategy_config, self.space, self.objective, config.seed
        )
        self.records = run_dir.read_trials()
        self._restore()
        self.rerun = self.strategy.pending()
        self.in_flight = 0
        self.failed = 0

    def _restore(self) -> None:
        saved = self.run_dir.read_state()
        if saved is None:
            if self.records:
                raise UserError(f"{self.run_dir.state_path} is missing but trials exist; the run dir is damaged")
            return
        self.strategy.load_state_dict(saved["strategy"])
        for record in self.records[saved["n_recorded"]:]:
            self.strategy.tell(Arch.from_dict(record["arch"]), record["metrics"])
        self.run_dir.write_state(self.strategy.state_dict(), len(self.records))

    @property
    def remaining(self) -> int:
        """Archs still to be asked (not finished, not in flight, not queued for a re-run)."""
        return self.config.trials - len(self.records) - self.in_flight - len(self.rerun)

    def next_batch(self) -> list[Arch]:
        """Archs for the next trial: in-flight archs of a killed run first, then new asks."""
        if self.rerun:
            archs, self.rerun = self.rerun[: self.batch], self.rerun[self.batch:]
        else:
            archs = [self.strategy.ask() for _ in range(min(self.batch, self.remaining))]
            self.run_dir.write_state(self.strategy.state_dict(), len(self.records))
        self.in_flight += len(archs)
        return archs

    def record(self, archs: list[Arch], result: dict[str, Any]) -> None:
        """Tell the strategy, append the finished archs to the log, save the strategy state.

        Telling first is safe: the state file is replaced only after the log has the lines,
        so a crash in between restores the archs as in flight and runs them again.
        """
        now = datetime.now(UTC).isoformat(timespec="seconds")
        new = []
        for arch, metrics in zip(archs, result["results"], strict=True):
            new.append({
                "trial": len(self.records) + len(new), "arch": arch.to_dict(), "hash": arch.hash,
                "metrics": metrics, "score": self.strategy.tell(arch, metrics), "node": result["node"],
                "host": result["host"], "pid": result["pid"], "finished_at": now,
            })
        self.run_dir.append_trials(new)
        self.records.extend(new)
        self.in_flight -= len(archs)
        self.run_dir.write_state(self.strategy.state_dict(), len(self.records))
        if self.progress:
            self.progress(len(self.records), self.config.trials, max(self.records, key=lambda r: r["score"]))

    @property
    def is_done(self) -> bool:
        """Whether every arch of the budget has a trial line."""
        return len(self.records) >= self.config.trials


def _find_table(config: RunConfig, space: SearchSpace, required: bool) -> str | None:
    from nas.hardware.table import resolve_table

    try:
        return str(resolve_table(config.hardware, space, batch=1).source)
    except UserError:
        if required or config.hardware is not None:
            raise
        log.info("no latency table for %s; latency is not reported", space.name)
        return None


_SEARCHES: dict[int, Search] = {}
"""Live searches by id: Tune pickles its searcher, which must not carry the run dir's lock."""


class _StrategySearcher(Searcher):
    """Tune's view of the strategy: one suggestion is one batch of archs."""

    def __init__(self, search: Search) -> None:
        super().__init__(metric=None, mode=None)
        self.search_id = id(search)
        _SEARCHES[self.search_id] = search
        self.live: dict[str, list[Arch]] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        search = _SEARCHES[self.search_id]
        if not search.rerun and search.remaining <= 0:
            return Searcher.FINISHED
        archs = search.next_batch()
        self.live[trial_id] = archs
        return {"spec": search.spec.model_dump(mode="json"), "archs": [encode(search.space, a) for a in archs]}

    def save(self, checkpoint_path: str) -> None:
        """No-op: the run dir, not Tune, holds the strategy state."""

    def restore(self, checkpoint_path: str) -> None:
        """No-op: a search resumes from its run dir (see `Search`)."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        search = _SEARCHES[self.search_id]
        archs = self.live.pop(trial_id)
        if error or result is None or "results" not in result:
            search.in_flight -= len(archs)
            search.rerun.extend(archs)
            search.failed += 1
            return
        search.record(archs, result)


def _connect(address: str | None, num_cpus: int | None) -> None:
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)


def run_search(
    config: RunConfig,
    run_dir: Path,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) a search in `run_dir` on a Ray cluster; returns the best records.

    Args:
        config: the search.
        run_dir: its directory; re-running the same config there resumes it.
        address: a Ray cluster to join (`auto`, `host:port`); None starts a local one.
        num_cpus: CPUs of the local cluster (None: all of this machine's).
        progress: called after each finished trial.
    """
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    with RunDir(run_dir) as rd:
        rd.check_or_write_config(config.model_dump(mode="json"))
        search = Search(config, rd, progress)
        if progress:
            best = max(search.records, key=lambda r: r["score"]) if search.records else None
            progress(len(search.records), config.trials, best)
        if not search.is_done:
            _run_tune(search, rd, address, num_cpus)
        if not search.is_done:
            raise NasError(
                f"search stopped with {len(search.records)}/{config.trials} archs done "
                f"({search.failed} trials failed); re-run the same command to resume"
            )
        return rd.write_best(search.records)


def _run_tune(search: Search, rd: RunDir, address: str | None, num_cpus: int | None) -> None:
    import ray
    from ray import tune

    _connect(address, num_cpus)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    concurrency = max(1, int(cpus // search.config.cpus_per_trial))
    session = len(list((rd.path / "tune").glob("session-*"))) if (rd.path / "tune").exists() else 0
    tuner = tune.Tuner(
        tune.with_resources(evaluate_trial, {"cpu": search.config.cpus_per_trial}),
        tune_config=tune.TuneConfig(
            search_alg=_StrategySearcher(search), num_samples=-1,
            max_concurrent_trials=concurrency, reuse_actors=True,
            trial_dirname_creator=lambda trial: f"trial-{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=f"session-{session}", storage_path=str(rd.path / "tune"), verbose=0,
            failure_config=tune.FailureConfig(max_failures=2),
        ),
    )
    # Trial results travel back in memory; Tune's result files are off, so its end-of-run
    # metrics fetch has nothing to read and would warn about every trial.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    start = time.perf_counter()
    try:
        tuner.fit()
    finally:
        _SEARCHES.pop(id(search), None)
    log.info("tune session %d finished in %.1f s", session, time.perf_counter() - start)
