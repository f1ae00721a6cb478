"""`nas.search`: the search of `nas search`, run from a script or a notebook, its trials returned as a pandas table.

Its keywords are the CLI's flags (`max_latency_ms` is `--max-latency-ms`) and build the run config the
same way (`nas.config.merge_run_config`), so a run dir started by either resumes with the other. Beyond
the CLI it takes a Python function as the evaluator (`nas.evaluate.function`: scored in this process,
through the same trial log, so failures, resume and the strategy contract hold) and a data set given as
arrays (`nas.api_data`): checked, then written into the run dir as a `.npz` file named by its content,
which the `train` evaluator reads as its `npz` data kind (Ray workers build it from JSON, so the data must
be a file). Everything is checked before anything is written; a search refused later (by the run dir,
say) removes the data file it wrote.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas import api_data
from nas.config import Objective
from nas.errors import UserError, shorten

if TYPE_CHECKING:
    import pandas as pd

    from nas.evaluate.function import Function
    from nas.runner import SearchResult
    from nas.space import SearchSpace
    from nas.trials import Progress

log = logging.getLogger(__name__)

__all__ = ["search"]

_OBJECTIVE_KEYS = ("metric", "mode", "metrics", "target_ms", "alpha", "beta", "max_latency_ms", "max_params")
_RECORD_FIELDS = ("trial", "hash", "status", "score", "feasible")
_NOT_COLUMNS = {*_RECORD_FIELDS, "arch", "metrics", "error", "finished_at", "node", "host", "pid"}
_MAX_NEW_DIRS = 100


def search(
    space: str | SearchSpace,
    *,
    strategy: str | None = None,
    evaluator: str | Function | None = None,
    measures: Sequence[str] | None = None,
    trials: int | None = None,
    objective: str | Objective | None = None,
    metric: str | None = None,
    mode: str | None = None,
    metrics: Mapping[str, str] | str | None = None,
    target_ms: float | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    max_latency_ms: float | None = None,
    max_params: int | None = None,
    data: str | os.PathLike | Sequence[Any] | Mapping[str, Any] | None = None,
    data_dir: str | os.PathLike | None = None,
    hardware: str | os.PathLike | None = None,
    seed: int | None = None,
    run_dir: str | os.PathLike | None = None,
    space_config: Mapping[str, Any] | None = None,
    strategy_config: Mapping[str, Any] | None = None,
    evaluator_config: Mapping[str, Any] | None = None,
    archs_per_trial: int | None = None,
    cpus_per_trial: float | None = None,
    scheduler: str | Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: Progress | bool | None = None,
) -> pd.DataFrame:
    """Run (or resume) a search, as `nas search` does, and return its trials, one row per arch.

    Every keyword left None takes the run config's default, as an unset CLI flag does; a value is
    checked as the flag of the same name is, and a message names that flag. Re-running with the same
    `run_dir` resumes: finished archs are not scored again, the budget (`trials`) may grow.

    Args:
        space: a registered space name (`nas spaces`), or a space (its name and whole config are used).
        strategy: `nas strategies` lists them; `strategy_config` takes their options (`--set`).
        evaluator: `train`, `lut`, `tabular`, or a Python function `f(arch) -> {metric: number}`, scored in
            this process, one arch at a time (`archs_per_trial` for more); params, MACs and (with a latency
            table) `latency_ms` are added unless it returns its own. What it raises fails that arch's trial
            (after retries), as any evaluation error; a run dir stores its name, not its code, so resume
            with the same function.
        measures: the metrics a function evaluator returns, e.g. `("accuracy",)`, so an objective that reads
            another is refused before anything runs; the first is the default `metric`.
        trials: the budget, in distinct archs.
        objective: `constrained`, `weighted` or `pareto`, with the keywords `metric` ... `max_params` (the
            CLI's flags); or a whole `nas.config.Objective`, then without them.
        metrics: a pareto objective's metrics, `{"accuracy": "max", "latency_ms": "min"}` or
            `"accuracy:max,latency_ms:min"`.
        data: for the `train` evaluator: a data set name (`digits`, `cifar10` with `data_dir`), a `.npz` file
            path (`pathlib.Path`), or your own arrays `(x_train, y_train, x_val, y_val)` (or a dict of those
            keys), numpy arrays or torch tensors: float images (N, 3, R, R), already normalised, at the space's
            resolution R, and integer labels in 0..classes-1. The arrays are written into the run dir as
            `data-<sha256 prefix>.npz`; other arrays in the same run dir are another search, refused.
        data_dir: the directory of `cifar10`, or the file of `npz`.
        hardware: a latency table: a device id or a table file.
        run_dir: the run directory; None makes a new one, `runs/<space>-<YYYYmmdd-HHMMSS>` under the
            current directory (`df.attrs["run_dir"]` names it, to resume).
        space_config, evaluator_config: overrides of the space's YAML defaults (`resolution`, `num_classes`,
            `width_mult`) and of the evaluator's config (`epochs`, `batch_size`, `lr`, ...).
        scheduler: `asha` stops poor archs early (`train` evaluator), or a dict of `nas.config.Scheduler`
            (`{"kind": "asha", "grace_period": 2}`); `options` sets any other run-config key by its dotted
            path, as a `--config` YAML would.
        address, num_cpus: a Ray cluster to join, or the CPUs of the local one (not with a function evaluator).
        progress: a callback `(archs done, budget, best record or None)`, or True for the CLI's progress bar.

    Returns:
        The trials as a `pandas.DataFrame`, in trial order: `trial`, `hash`, `status` (`ok` or `failed`),
        `score` (the objective's; NaN when failed), `feasible` (keeps every bound), one column per metric
        (`metrics.<name>` where a name is taken), `error`, `finished_at`, then one column per decision of the
        space. `df.attrs` holds `run_dir`, `best` (the best archs as `nas report` ranks them, each with its
        plain `arch` dict: `nas.arch.Arch.from_dict(df.attrs["best"][0]["arch"])`), `objective`, `n_failed`,
        `n_feasible`, `exhausted` and `latency_table`.

    Raises:
        UserError: bad input, refused before anything is written.
        Interrupted: SIGINT or SIGTERM stopped the search between archs; the same call resumes it.
        NasError: a search that cannot go on (every trial failed, the disk is full, ...).
    """
    if threading.current_thread() is not threading.main_thread():
        raise UserError("nas.search: runs in the main thread only (it stops cleanly on SIGINT and SIGTERM, which "
                        "Python delivers there); call it from the main thread")
    from nas.config import merge_run_config
    from nas.limits import check_num_cpus, check_path

    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise UserError(f"progress {shorten(progress)}: allowed: a callback (done, budget, best), True or None")
    space_name, space_overrides = _space_of(space, space_config)
    function, evaluator, measures = _function_of(evaluator, measures, address is not None or num_cpus is not None)
    check_num_cpus(num_cpus)
    chosen_dir = check_path(run_dir, "run_dir") or _new_run_dir(space_name)
    objective_flags = _objective_flags(objective, metric=metric, mode=mode, metrics=metrics, target_ms=target_ms,
                                       alpha=alpha, beta=beta, max_latency_ms=max_latency_ms, max_params=max_params,
                                       default_metric=measures[0] if function is not None else None)
    arrays, data_flags = api_data.data_flags(data, data_dir, evaluator, evaluator_config, space_name,
                                             space_overrides)
    data_path = api_data.data_file(chosen_dir, arrays) if arrays is not None else None
    if data_path is not None:
        data_flags["evaluator_config.data_dir"] = str(data_path.resolve())
    flags = {
        "space": space_name, "strategy": strategy, "evaluator": evaluator, "trials": trials, "seed": seed,
        "hardware": os.fspath(hardware) if hardware is not None else None, "archs_per_trial": archs_per_trial,
        "cpus_per_trial": cpus_per_trial, **objective_flags, **data_flags,
        **_dotted("scheduler", {"kind": scheduler} if isinstance(scheduler, str) else scheduler),
        **_dotted("space_config", space_overrides), **_dotted("strategy_config", strategy_config),
        **_dotted("evaluator_config", evaluator_config), **_dotted("options", options, prefix=""),
    }
    if function is not None:
        flags.update({"evaluator_config.function": _name_of(function), "evaluator_config.measures": list(measures)})
    config = merge_run_config(None, flags, {f"strategy_config.{key}": f"strategy_config[{key!r}]"
                                            for key in strategy_config or {}})
    from nas.evaluate.function import bind
    from nas.runner import run_search  # only now: a typo should not wait for Ray's import

    bound = bind(function, measures) if function is not None else None
    with api_data.written_data(chosen_dir, data_path, arrays), _progress(progress, config.trials) as reporter:
        result = run_search(config, chosen_dir, address=address, num_cpus=num_cpus, progress=reporter,
                            notify=_notify, evaluator_cls=bound, hard_exit=False)
    return _table(result, chosen_dir)


def _space_of(space: Any, overrides: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The space's name and config overrides: a name as given, or a space's name and whole config."""
    if isinstance(space, str):
        return space, dict(overrides or {})
    from nas.space import SearchSpace

    if not isinstance(space, SearchSpace):
        raise UserError(f"space {shorten(space)}: allowed: a space name (see `nas spaces`) or a SearchSpace")
    return space.name, {**space.config.model_dump(mode="json"), **(overrides or {})}


def _function_of(evaluator: Any, measures: Sequence[str] | None, cluster: bool
                 ) -> tuple[Function | None, Any, tuple[str, ...] | None]:
    """(the user's function or None, the evaluator's registered name, its checked measures)."""
    if not callable(evaluator):
        if measures is not None:
            raise UserError(f"measures {shorten(measures)}: only with a function evaluator (evaluator=my_function); "
                            "a named evaluator measures its own metrics")
        return None, evaluator, None
    if cluster:
        raise UserError("address/num_cpus: a function evaluator scores archs in this process (Ray workers cannot "
                        "run it); drop address and num_cpus")
    return evaluator, "function", _measures(measures)


def _measures(measures: Sequence[str] | None) -> tuple[str, ...]:
    """The metric names a function evaluator declares, checked as `nas.config.MetricName` checks them."""
    from pydantic import TypeAdapter, ValidationError

    from nas.config import MetricName

    if measures is None or isinstance(measures, str) or not isinstance(measures, Sequence) or not measures:
        raise UserError(f"measures {shorten(measures)}: a function evaluator needs the metrics it returns, e.g. "
                        "measures=('accuracy',), so the objective is checked before the search runs")
    for name in measures:
        try:
            TypeAdapter(MetricName).validate_python(name)
        except ValidationError:
            raise UserError(f"measures: {shorten(name)} is no metric name; allowed: lower-case letters, digits and "
                            "_, starting with a letter, e.g. accuracy or top5_err") from None
    return tuple(measures)


def _name_of(function: Callable[..., Any]) -> str:
    """`module.qualname` of a function, as a run dir records it (a callable object: its class)."""
    owner = function if hasattr(function, "__qualname__") else type(function)
    return f"{getattr(owner, '__module__', '?')}.{owner.__qualname__}"[:300]


def _new_run_dir(space: str) -> Path:
    """A directory that does not exist yet: `runs/<space>-<YYYYmmdd-HHMMSS>`, with `-2`, `-3`, ... when taken."""
    base = Path("runs") / f"{space}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, _MAX_NEW_DIRS + 1):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        if not os.path.lexists(path):
            return path
    raise UserError(f"run_dir: {base} and {_MAX_NEW_DIRS - 1} numbered variants exist; give a run_dir")


def _objective_flags(objective: str | Objective | None, *, default_metric: str | None,
                     **keywords: Any) -> dict[str, Any]:
    """Run-config flags (`objective.metric`, ...) of an `Objective` or of its keywords, not both.

    With a function evaluator, a scalar objective's metric defaults to the function's first measure and
    is stored, so the run dir names it (`nas report` reads it there).
    """
    given = {key: value for key, value in keywords.items() if value is not None}
    if isinstance(objective, Objective):
        if given:
            raise UserError(f"{sorted(given)[0]}: give the objective as an Objective or as keywords "
                            f"({', '.join(_OBJECTIVE_KEYS)}), not both")
        if objective.kind != "pareto" and objective.metric is None and default_metric is not None:
            objective = objective.model_copy(update={"metric": default_metric})
        return {"objective": objective.model_dump(mode="json")}
    if isinstance(given.get("metrics"), str):
        from nas.config import parse_metric_directions

        given["metrics"] = parse_metric_directions(given["metrics"], "metrics")
    if objective != "pareto" and "metric" not in given and default_metric is not None:
        given["metric"] = default_metric
    return {"objective.kind": objective, **{f"objective.{key}": value for key, value in given.items()}}


def _dotted(section: str, values: Mapping[str, Any] | None, prefix: str | None = None) -> dict[str, Any]:
    """`values` as run-config flags under `section` (`strategy_config.population_size`)."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise UserError(f"{section}: {shorten(values)}; allowed: a dict of keys to values")
    head = f"{section}." if prefix is None else prefix
    return {f"{head}{key}": value for key, value in values.items()}


@contextmanager
def _progress(progress: Progress | bool | None, total: int) -> Iterator[Progress | None]:
    if progress is True:
        from nas.progress import progress_reporter

        with progress_reporter(total) as reporter:
            yield reporter
        return
    yield progress or None


def _notify(line: str) -> None:
    """The runner's lines for the user (the latency table, a host-speed warning), as log records."""
    log.log(logging.WARNING if line.startswith("warning") else logging.INFO, "%s", line)


def _table(result: SearchResult, run_dir: Path) -> pd.DataFrame:
    """The run dir's trials as a DataFrame, the result in its `attrs` (`search`, Returns)."""
    import pandas as pd

    from nas.run_dir import RunDir
    from nas.space import load_space

    rd = RunDir(run_dir)
    records = rd.read_trials()
    config = rd.read_config() or {}
    decisions = [d.name for d in load_space(config["space"], config.get("space_config")).decisions()]
    taken = {*_RECORD_FIELDS, "error", "finished_at", *decisions}
    metric_names = list(dict.fromkeys(name for r in records for name in r["metrics"]))
    extras = list(dict.fromkeys(k for r in records for k in r if k not in _NOT_COLUMNS))
    columns: dict[str, Any] = {field: [r.get(field) for r in records] for field in _RECORD_FIELDS}
    columns["feasible"] = [r.get("feasible") is True for r in records]
    for name in metric_names:
        columns[f"metrics.{name}" if name in taken or name in extras else name] = \
            [r["metrics"].get(name) for r in records]
    for name in extras:  # e.g. `stopped_early`, written only when true
        values = [r.get(name) for r in records]
        flags = all(v is None or isinstance(v, bool) for v in values)
        columns[name] = [v is True for v in values] if flags else values
    columns["error"] = [r.get("error") for r in records]
    columns["finished_at"] = pd.to_datetime([r["finished_at"] for r in records], format="ISO8601", utc=True)
    for name in decisions:
        columns[name] = [r["arch"]["choices"].get(name) for r in records]
    frame = pd.DataFrame(columns)
    frame.attrs.update({
        "run_dir": str(rd.path), "best": [_best(rank, r) for rank, r in enumerate(result.best, 1)],
        "objective": result.objective.model_dump(mode="json"), "n_failed": result.n_failed,
        "n_feasible": result.n_feasible, "exhausted": result.exhausted, "latency_table": result.table,
    })
    return frame


def _best(rank: int, record: dict[str, Any]) -> dict[str, Any]:
    """A best arch as plain data (pandas copies `attrs` deeply; an `Arch` is rebuilt with `Arch.from_dict`)."""
    return {"rank": rank, "hash": record["hash"], "score": record["score"], "feasible": record["feasible"],
            "violations": record.get("violations", {}), "metrics": dict(record["metrics"]), "arch": record["arch"]}
