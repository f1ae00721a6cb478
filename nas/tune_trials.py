"""Archs as Ray Tune trials: the one place that knows Tune.

The strategy sits behind Tune's `Searcher` interface (`_StrategySearcher`), the one place
that knows trial ids. Each Tune trial scores a batch of archs (one for `train`, thousands
for `lut`, since a Tune trial costs about a second to schedule) with `nas.runner.score_archs`,
the function an in-process search uses too; an arch whose evaluation raises comes back as an
error, not a failed trial, so it is retried and then recorded as failed (`nas.trials`). Every
ask and every result is saved to the run dir before Tune sees it, so a search killed at any
moment resumes. Tune's own files live in a temp dir removed at the end (nothing resumes from
them); a failure of Tune is one line, its traceback goes to the debug log (`--debug`).

With `--scheduler asha`, Tune's own ASHA scheduler (`ASHAScheduler`) stops poor archs early: a trial
(one arch, `train`) reports the objective's score and the arch's outcome so far after every epoch
(`tune.report`), then its final outcome as its last report (the function returns nothing, so nothing
is reported twice). A trial ASHA stops is recorded from its last report, once, with the epochs it
reached (`metrics.epochs`) and `stopped_early: true`. ASHA's rungs live in Tune, not in the run dir: a
resumed search starts them afresh.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
import socket
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.search import Searcher

from nas.arch import Arch
from nas.config import Objective
from nas.errors import NasError, UserError
from nas.evaluate.base import EvaluatorSpec, build_evaluator, evaluator_class
from nas.evaluate.evaluators import TrainEvaluator
from nas.interrupts import Signals
from nas.objective import score
from nas.run_dir import DiskFullError, is_running
from nas.runner import decode, describe, encode, score_archs
from nas.trials import Search

log = logging.getLogger(__name__)

__all__ = ["cluster", "evaluate_trial", "run_tune"]


_EVALUATORS: dict[str, Any] = {}

_SCORE = "nas_score"
"""What ASHA ranks trials by: the objective's score of the arch's metrics after an epoch."""
_FINAL = "nas_final"
"""In a report of a trial that reports epochs: whether it holds the arch's final outcome (not one after an epoch)."""
_UNSCORED = -1e300
"""The score reported for an outcome the objective cannot score (a failed arch): below every other, and finite,
as ASHA's cutoffs (percentiles of the scores at a rung) need."""


def evaluate_trial(config: dict[str, Any]) -> dict[str, Any] | None:
    """Tune trial entry point: score a batch of archs in this worker (`nas.runner.score_archs`).

    Returns one outcome per arch, `{"metrics": ...}` or `{"error": "Type: message"}`: an arch that
    fails does not fail its batch, and the driver decides whether to retry it. A trial given the
    search's `objective` (`--scheduler asha`) reports instead: its arch's outcome after every epoch,
    then the final one, and returns None.
    """
    import ray

    where = {"node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "pid": os.getpid()}
    reports_epochs = "objective" in config
    try:
        spec = EvaluatorSpec.model_validate(config["spec"])
        key = spec.model_dump_json()
        if key not in _EVALUATORS:
            _EVALUATORS[key] = build_evaluator(spec)
        evaluator = _EVALUATORS[key]
        archs = [decode(evaluator.space, choices) for choices in config["archs"]]
        objective = Objective.model_validate(config["objective"]) if reports_epochs else None
    except Exception as err:  # the evaluator cannot be built here: every arch of the batch fails alike
        log.debug("batch failed:\n%s", traceback.format_exc())
        results = [{"error": describe(err)}] * len(config["archs"])
        objective = None
    else:
        results = score_archs(evaluator, archs) if objective is None else \
            [_train_reporting_epochs(evaluator, archs[0], objective, where)]
    if not reports_epochs:
        return {"results": results, **where}
    tune.report({"results": results, **where, _SCORE: _score_of(objective, results[0]), _FINAL: True})
    return None


def _train_reporting_epochs(evaluator: TrainEvaluator, arch: Arch, objective: Objective,
                            where: dict[str, Any]) -> dict[str, Any]:
    """The outcome of training `arch`, its outcome so far reported to Tune after every epoch but the last
    (the trial reports the final outcome itself). When ASHA stops the trial, Tune ends this thread inside a
    report (a `SystemExit`, which passes every handler here)."""
    epochs = evaluator.config.epochs

    def report(epoch: int, metrics: dict[str, float]) -> None:
        if epoch < epochs:
            outcome = {"metrics": metrics}
            tune.report({"results": [outcome], **where, _SCORE: _score_of(objective, outcome), _FINAL: False})

    try:
        return {"metrics": evaluator.evaluate(arch, on_epoch=report)}
    except Exception as err:  # any failure of the arch is recorded against it, as `score_archs` does
        log.debug("arch failed:\n%s", traceback.format_exc())
        return {"error": describe(err)}


def _score_of(objective: Objective | None, outcome: dict[str, Any]) -> float:
    """The objective's score of an outcome's metrics, or `_UNSCORED` (a failed arch, metrics it cannot score)."""
    if objective is None or "metrics" not in outcome:
        return _UNSCORED
    try:
        value = float(score(objective, outcome["metrics"]))
    except (ArithmeticError, KeyError, TypeError, ValueError):
        return _UNSCORED
    return value if math.isfinite(value) else _UNSCORED


_SEARCHES: dict[int, tuple[Search, Signals]] = {}
"""Live searches by id: Tune pickles its searcher and stopper, which must not carry the run dir's lock."""


class _StrategySearcher(Searcher):
    """Tune's view of the strategy: one suggestion is one batch of archs."""

    def __init__(self, search: Search, signals: Signals) -> None:
        super().__init__(metric=None, mode=None)
        self.search_id = id(search)
        _SEARCHES[self.search_id] = (search, signals)
        self.live: dict[str, list[Arch]] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        search, signals = _SEARCHES[self.search_id]
        if signals.signum is not None or search.stop_error is not None:
            return Searcher.FINISHED
        if search.should_stop:
            # Archs still in flight may fail and need a retry: ask again once they are back.
            return None if search.in_flight else Searcher.FINISHED
        try:
            archs = search.next_batch()
        except Exception as err:  # a failed state write: stop cleanly, raise it after Tune is done
            search.stop_error = err if isinstance(err, NasError) else NasError(f"asking for archs failed: {err}")
            return Searcher.FINISHED
        if not archs:  # the space ran out; archs still in flight may fail and need a retry
            return None if search.in_flight else Searcher.FINISHED
        self.live[trial_id] = archs
        space = search.plan.space
        trial = {"spec": search.plan.spec.model_dump(mode="json"), "archs": [encode(space, a) for a in archs]}
        if search.config.scheduler.kind == "asha":  # the trial reports its score after every epoch
            trial["objective"] = search.plan.objective.model_dump(mode="json")
        return trial

    def save(self, checkpoint_path: str) -> None:
        """No-op: the run dir, not Tune, holds the strategy state."""

    def restore(self, checkpoint_path: str) -> None:
        """No-op: a search resumes from its run dir (see `Search`)."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        search, signals = _SEARCHES[self.search_id]
        archs = self.live.pop(trial_id, None)
        if archs is None:  # Tune may report a trial twice; the first report counted
            return
        reported = result is not None and "results" in result
        try:
            if reported and result.get(_FINAL, True):
                search.record(archs, result)
            elif signals.signum is not None or search.stop_error is not None:
                search.in_flight -= len(archs)  # stopped on purpose: still pending, re-run on resume
            elif reported:  # ASHA stopped it after an epoch: recorded as it stood then
                search.record(archs, {**result, "results": [{**outcome, "stopped_early": True}
                                                            for outcome in result["results"]]})
            else:
                search.record_lost(archs, "the trial's Ray worker died (killed, or out of memory)")
        except Exception as err:  # a full disk, say: stop the search, raise it when Tune is done
            search.stop_error = err if isinstance(err, NasError) else NasError(f"recording results failed: {err}")


class _StopAll(tune.Stopper):
    """Stops every trial once the search was interrupted or must stop for an error."""

    def __init__(self, search: Search) -> None:
        self.search_id = id(search)

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        search, signals = _SEARCHES.get(self.search_id, (None, None))
        return search is None or signals.signum is not None or search.stop_error is not None


@contextmanager
def cluster(address: str | None, num_cpus: int | None, cpus_per_trial: float) -> Iterator[int]:
    """Join or start the cluster, shut down on the way out; yields the number of trials that can run at once."""
    from nas.cluster import check_resources, connected

    if address is None:  # a local cluster's CPUs are known before it starts
        cpus = num_cpus or os.cpu_count() or 1
        if cpus_per_trial > cpus:
            raise UserError(f"--cpus-per-trial {cpus_per_trial:g}: more than the local cluster has ({cpus} CPUs); "
                            f"give at most {cpus}")
    with connected(address, num_cpus):
        yield check_resources(cpus_per_trial)


def run_tune(search: Search, signals: Signals, concurrency: int) -> None:
    """Run the search's archs as Tune trials, `concurrency` at once, until it stops; a failure of Tune
    becomes `search.stop_error`."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours stops the search and says how to resume
    # Trial results travel back in memory; Tune's result files are off, so its end-of-run
    # metrics fetch has nothing to read and would warn about every trial. Trials that did not
    # complete (a killed worker) are retried and reported by `Search`, not by Tune's log line.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)
    start = time.perf_counter()
    with _tune_storage() as storage, _tune_errors_to_debug_log(search, storage.parent):
        try:
            tune.Tuner(
                tune.with_resources(evaluate_trial, {"cpu": search.config.cpus_per_trial}),
                tune_config=tune.TuneConfig(
                    search_alg=_StrategySearcher(search, signals), num_samples=-1,
                    max_concurrent_trials=concurrency, reuse_actors=True,
                    trial_dirname_creator=lambda trial: f"trial-{trial.trial_id}",
                    **_scheduler(search),
                ),
                run_config=tune.RunConfig(
                    name="search", storage_path=str(storage), verbose=0, stop=_StopAll(search),
                    # A trial fails only when its worker dies (an arch that raises comes back as an
                    # error): `Search` counts the attempt and retries its archs itself.
                    failure_config=tune.FailureConfig(max_failures=0),
                ),
            ).fit()
        except Exception as err:  # Tune's own failure: every result was saved before Tune saw it
            log.info("Ray Tune failed:\n%s", traceback.format_exc())
            if search.stop_error is None and signals.signum is None:
                search.stop_error = _tune_failure(err, storage.parent)
        finally:
            _SEARCHES.pop(id(search), None)
    log.info("Ray Tune ran %.1f s", time.perf_counter() - start)


def _scheduler(search: Search) -> dict[str, Any]:
    """Tune's scheduler with the metric it ranks by (`TuneConfig` keys): none for `fifo`, Ray Tune's own ASHA
    for `asha`, its rungs in epochs (one report each) up to the `train` evaluator's epochs."""
    config, scheduler = search.config, search.config.scheduler
    if scheduler.kind != "asha":
        return {}
    from ray.tune.schedulers import ASHAScheduler

    epochs = evaluator_class(config.evaluator).config_model.model_validate(search.plan.spec.config).epochs
    return {"scheduler": ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                                       grace_period=scheduler.grace_period,
                                       reduction_factor=scheduler.reduction_factor),
            "metric": _SCORE, "mode": "max"}


_TUNE_PREFIX = "nas-tune-"


@contextmanager
def _tune_storage() -> Iterator[Path]:
    """A temp dir for Ray Tune's own files (experiment state, trial dirs), removed at the end.

    Nothing resumes from them (the run dir holds every result and the strategy state), so they
    stay out of the run dir, next to the files Ray itself keeps in the temp dir. The name holds
    this process's pid: one a killed search left behind is removed by the next search here.
    """
    root = Path(tempfile.gettempdir())
    for stale in root.glob(f"{_TUNE_PREFIX}*-*"):
        pid = stale.name[len(_TUNE_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not is_running(int(pid)) and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    try:
        path = Path(tempfile.mkdtemp(prefix=f"{_TUNE_PREFIX}{os.getpid()}-", dir=root))
    except OSError as err:
        raise _tune_failure(err, root) from None
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _tune_failure(err: BaseException, where: Path, message: str = "") -> NasError:
    """One line for a failure of Ray Tune (`err`, or a log `message` that tells it); a full disk says
    where to free space."""
    full = _disk_full_text(err) or _disk_full_text(Exception(message))
    if full is not None:
        return DiskFullError(f"disk full under {where} (Ray Tune's temp files: {full}); free space and re-run "
                             "the same command to resume")
    return NasError(f"Ray Tune failed ({describe(err)}); re-run the same command to resume")


_DISK_FULL = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded"}


def _disk_full_text(err: BaseException | None) -> str | None:
    """The reason if `err` or an exception it came from says the disk (or a quota) is full."""
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        if isinstance(err, OSError) and err.errno in _DISK_FULL:
            return _DISK_FULL[err.errno]
        reasons = [reason for reason in _DISK_FULL.values() if reason in str(err)]
        if reasons:
            return reasons[0]
        err = err.__cause__ or err.__context__
    return None


class _TuneErrors(logging.Filter):
    """On Ray's terminal handlers while Tune runs: Tune's errors (and warnings that carry a
    traceback, like a failed sync of its files) go to the debug log instead, and one that says the
    disk is full stops the search (Tune would log it and go on writing)."""

    def __init__(self, search: Search, where: Path) -> None:
        super().__init__()
        self.search, self.where = search, where

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(("ray.tune", "ray.train", "ray.air")) or record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        if record.levelno < logging.ERROR and not record.exc_info and "Traceback (most recent call" not in message:
            return True
        log.info("Ray Tune: %s", message, exc_info=record.exc_info)
        error = record.exc_info[1] if record.exc_info and record.exc_info[1] else Exception(message)
        failure = _tune_failure(error, self.where, message)
        if self.search.stop_error is None and isinstance(failure, DiskFullError):
            self.search.stop_error = failure
        return False


@contextmanager
def _tune_errors_to_debug_log(search: Search, where: Path) -> Iterator[None]:
    handlers = logging.getLogger("ray").handlers
    errors = _TuneErrors(search, where)
    for handler in handlers:
        handler.addFilter(errors)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(errors)
