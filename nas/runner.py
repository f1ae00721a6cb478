"""`run_search`: one search in its run dir, its archs scored in this process or as Ray Tune trials.

`run_search` checks the whole search (`nas.plan`), takes the run dir, checks it holds the
same search, and only then writes the config. An evaluator that is a table lookup (`lut`,
`tabular`: `Evaluator.in_process`) scores its archs here, in the search process, when no
cluster is asked for (no `--address`, no `--num-cpus`): Ray is neither started nor imported,
and a batch is priced with arrays (`Evaluator.evaluate_many`). Every other search runs its
archs as Ray Tune trials (`nas.tune_trials`) on a cluster whose resources are checked first.
Both paths score a batch with the same `score_archs` and keep the run dir with the same
`Search`: archs asked are saved before they are scored, results appended to the log before
the strategy learns them, so a search killed at any moment resumes; with one trial at a
time on Ray, the same seed gives the same trial log either way. An arch whose evaluation
raises comes back as an error, is retried and then recorded as failed (`nas.trials`). SIGINT
and SIGTERM stop the search within seconds, with the run dir consistent, even when Ray hangs
(`nas.interrupts`); the CLI exits 130 or 143. A resumed search keeps the latency table its
run dir was priced with (`nas.resume`).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.arch import Arch
from nas.config import Objective, RunConfig
from nas.errors import NasError, UserError
from nas.evaluate.base import Evaluator, evaluator_class
from nas.interrupts import Interrupted, Signals, catching_signals
from nas.plan import SearchPlan, plan_search
from nas.resume import plan_for_run_dir
from nas.run_dir import RunDir
from nas.space import SearchSpace
from nas.trials import Progress, Search, rank

log = logging.getLogger(__name__)

__all__ = ["Interrupted", "Progress", "SearchResult", "decode", "describe", "encode", "run_search", "runs_in_process",
           "score_archs"]


@dataclass(frozen=True)
class SearchResult:
    """What a finished search found: its best archs (each once, feasible first) and counts."""

    best: list[dict[str, Any]]
    objective: Objective
    n_archs: int
    n_failed: int
    n_feasible: int
    exhausted: str | None
    table: dict[str, Any] | None
    report: Path | None = None
    """The folder of the run's report plots (`nas report`), or None if they could not be written."""


def encode(space: SearchSpace, arch: Arch) -> list[int]:
    """An arch as the index of its choice in each decision: compact for Tune configs."""
    return [d.choices.index(arch.choices[d.name]) for d in space.decisions()]


def decode(space: SearchSpace, indices: list[int]) -> Arch:
    """Inverse of `encode`."""
    return space.make_arch({d.name: d.choices[i] for d, i in zip(space.decisions(), indices, strict=True)})


def score_archs(evaluator: Evaluator, archs: Sequence[Arch]) -> list[dict[str, Any]]:
    """One outcome per arch, `{"metrics": ...}` or `{"error": "Type: message"}`: what a Tune trial returns
    and an in-process search records. An arch that fails does not fail its batch.

    An in-process evaluator prices the batch at once (`evaluate_many`); should that raise, its archs
    are scored one by one, so the error lands on the arch that caused it.
    """
    if evaluator.in_process and len(archs) > 1:
        try:
            metrics = evaluator.evaluate_many(archs)
            if len(metrics) == len(archs):
                return [{"metrics": m} for m in metrics]
            log.debug("evaluate_many gave %d metrics for %d archs; scoring them one by one", len(metrics), len(archs))
        except Exception:  # any failure: find the arch it belongs to below
            log.debug("a batch failed; scoring its archs one by one:\n%s", traceback.format_exc())
    outcomes = []
    for arch in archs:
        try:
            outcomes.append({"metrics": evaluator.evaluate(arch)})
        except Exception as err:  # any failure of one arch is recorded against that arch
            log.debug("arch failed:\n%s", traceback.format_exc())
            outcomes.append({"error": describe(err)})
    return outcomes


def describe(err: BaseException) -> str:
    """An error as a trial line stores it: its type and the first line of its message, cut."""
    first = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {first}"[:500]


def runs_in_process(evaluator: str, address: str | None, num_cpus: int | None) -> bool:
    """Whether a search scores its archs in this process: a table-lookup evaluator and no cluster asked for."""
    return evaluator_class(evaluator).in_process and address is None and num_cpus is None


def run_search(
    config: RunConfig,
    run_dir: Path,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: Progress | None = None,
    notify: Callable[[str], None] | None = None,
    evaluator_cls: type[Evaluator] | None = None,
    hard_exit: bool = True,
) -> SearchResult:
    """Run (or resume) a search in `run_dir`; returns its best archs.

    Args:
        config: the search.
        run_dir: its directory; re-running the same config there resumes it.
        address: a Ray cluster to join (`auto`, `host:port`); None starts a private local one, or none
            at all for an in-process evaluator (`runs_in_process`).
        num_cpus: CPUs of the local cluster (None: all of this machine's); given, the archs run as
            Ray Tune trials on it even for an in-process evaluator.
        progress: called after each finished batch.
        notify: called with a line for the user before the search runs (the latency table and its
            scale, a warning when this host runs at another speed than the table's).
        evaluator_cls: scores the archs in place of the class registered as `config.evaluator`, in this
            process (`SearchPlan.evaluator_cls`): `nas.search` binds a user's function so. An in-process
            search only: Ray workers build their evaluator from JSON.
        hard_exit: whether a second signal, or a stop still running `STOP_GRACE_S` after the first, ends the
            process at once (the CLI); False raises `KeyboardInterrupt` on the second signal instead and waits
            for the stop (a notebook's kernel must not die: `nas.search`).

    Raises:
        UserError: bad input, checked before anything is written.
        Interrupted: SIGINT or SIGTERM; a re-run resumes.
        NasError: a search that cannot go on (every trial failed, the disk is full, ...).
    """
    with catching_signals(hard_exit=hard_exit) as signals:
        if evaluator_cls is not None and not runs_in_process(config.evaluator, address, num_cpus):
            raise UserError(f"evaluator {config.evaluator} scores archs in this process only, so it takes no Ray "
                            "cluster; drop address and num_cpus")
        plan = plan_search(config, evaluator_cls)
        signals.check()
        with RunDir(run_dir) as rd:
            plan = plan_for_run_dir(rd, plan, notify)
            search = Search(plan, rd, progress)
            if runs_in_process(config.evaluator, address, num_cpus):
                _search_in_process(search, signals, notify)
            else:
                _search_on_ray(search, signals, address, num_cpus, notify)
            signals.check()
            return _finish(search, rd)


def _search_on_ray(search: Search, signals: Signals, address: str | None, num_cpus: int | None,
                   notify: Callable[[str], None] | None) -> None:
    from nas import tune_trials  # only here: Ray Tune takes seconds to import

    with ExitStack() as cluster:  # torn down before the result is written, on every way out
        concurrency = 0
        if not search.is_done:
            concurrency = cluster.enter_context(tune_trials.cluster(address, num_cpus, search.config.cpus_per_trial))
            if notify is not None:
                _announce_table(search.plan, notify)
            signals.check()
        search.run_dir.write_config(search.plan.stored_config())
        search.start()
        if not search.is_done:
            tune_trials.run_tune(search, signals, concurrency)


def _search_in_process(search: Search, signals: Signals, notify: Callable[[str], None] | None) -> None:
    """Ask, score and record batch after batch in this process until the search stops; a signal stops it
    between batches, a failed write with `search.stop_error` as on Ray. The state is saved once a batch,
    by the ask that follows each record (`Search.record`), and once at the end."""
    if search.is_done:
        search.run_dir.write_config(search.plan.stored_config())
        search.start()
        return
    evaluator = search.plan.build_evaluator()  # before anything is written: a bad config changes nothing
    if notify is not None:
        _announce_table(search.plan, notify)
    signals.check()
    search.run_dir.write_config(search.plan.stored_config())
    search.start()
    where = {"node": None, "host": socket.gethostname(), "pid": os.getpid()}
    with _no_cyclic_gc():
        while not search.should_stop and signals.signum is None:
            try:
                archs = search.next_batch()
                if not archs:
                    break
                search.record(archs, {"results": score_archs(evaluator, archs), **where}, save_state=False)
            except Exception as err:  # a full disk, say: stop, and raise it as the Tune path does
                search.stop_error = err if isinstance(err, NasError) else NasError(f"the search failed: {err}")
                return
    search.save_state()


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Python's cycle collector off while the block runs: it would scan the search's trial records (a few
    dicts per arch, hundreds of thousands) again and again, a third of the loop's time, and the loop makes
    no reference cycles worth collecting before it ends (refcounting frees everything else)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _finish(search: Search, rd: RunDir) -> SearchResult:
    """Raise what stopped the search, or rank its archs and write `best.json`."""
    config, plan = search.config, search.plan
    if search.stop_error is not None:
        raise search.stop_error
    if not search.is_done:
        raise NasError(f"search stopped with {len(search.records)}/{config.trials} archs done; "
                       "re-run the same command to resume")
    best = rank(search.records, plan.objective)
    rd.write_best(best)
    return SearchResult(
        best=best, objective=plan.objective, n_archs=len(search.records), n_failed=search.n_failed,
        n_feasible=sum(bool(r.get("feasible")) for r in search.records),
        exhausted=search.exhausted, table=plan.table_record, report=_write_report(rd, search.records),
    )


def _write_report(rd: RunDir, records: list[dict[str, Any]]) -> Path | None:
    """The plots of `nas report`, written at the end of every search; a failure to draw them is a warning,
    since the search itself is complete (`nas report` draws them again).

    Drawn with the cycle collector off: importing and drawing with matplotlib makes enough objects to set off
    collections that would scan the search's records (a few dicts per arch) again and again, half the
    report's time after a hundred thousand archs; matplotlib's objects are freed by refcounting anyway."""
    from nas.run_report import write_search_report

    try:
        with _no_cyclic_gc():
            write_search_report(rd.path, records)
    except (NasError, OSError) as err:
        log.warning("the search is complete, but its report was not written (%s); run `nas report --run-dir %s`",
                    str(err).splitlines()[0] if str(err) else type(err).__name__, rd.path)
        return None
    return rd.path / "report"


def _announce_table(plan: SearchPlan, notify: Callable[[str], None]) -> None:
    """Say which table and scale the search assumes, and warn when this host runs the table's reference
    network at another speed (a quick timing, about two seconds)."""
    if plan.table is None:
        return
    from nas.hardware.rescale import scale_warning

    record = plan.table_record or {}
    notify(f"latency table: {record.get('path')} ({record.get('device_id')}), scale {record.get('scale', 1.0):.3g}")
    warning = scale_warning(plan.table)
    if warning:
        notify(f"warning: {warning}")

