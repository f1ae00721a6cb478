"""`plan_search`: check a whole search before anything is written or started.

A typo must not leave a run dir behind that then refuses the corrected command, and a
search that cannot measure its objective must not start Ray first. So everything a search
needs is built and checked here, in the driver, with no side effects: the space and its
config, the evaluator and its data (loaded once), the objective against what the evaluator
measures, the latency table (found, validated, its bound reachable) and the strategy config.
The result, a `SearchPlan`, is what the runner writes to the run dir once the cluster is up.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas import objective as objectives
from nas.config import Objective, RunConfig
from nas.errors import UserError
from nas.evaluate.base import Evaluator, EvaluatorSpec, evaluator_class
from nas.objective import metrics_read
from nas.space import SearchSpace, load_space
from nas.strategies.base import build_strategy
from nas.strategies.dedup import Deduplicated

if TYPE_CHECKING:
    from nas.hardware.table import LatencyTable


@dataclass(frozen=True)
class SearchPlan:
    """A checked search: its config, space, objective, evaluator spec and latency table.

    Attributes:
        table_record: the latency table used (absolute path, device id, sha256 of the file,
            scale), stored in `config.yaml`; None without a table.
        batch: archs asked at once: one Ray Tune trial's, or one batch of an in-process search
            (`default_batch` unless `archs_per_trial` is given).
        evaluator_cls: scores the archs in place of the class registered as `config.evaluator`, in this
            process only (a Ray worker builds from `spec`): how `nas.search` binds a user's function
            (`nas.evaluate.function`); None for the registered class.
    """

    config: RunConfig
    space: SearchSpace
    objective: Objective
    spec: EvaluatorSpec
    table: LatencyTable | None
    table_record: dict[str, Any] | None
    batch: int
    evaluator_cls: type[Evaluator] | None = None

    def build_evaluator(self) -> Evaluator:
        """The plan's evaluator, in this process: of the class `spec` names (or `evaluator_cls`), its config parsed
        from `spec` as a Ray worker parses it, with the plan's space and table (a worker loads them again from
        `spec`, the table checked against its hash; here they are the very objects `spec` was made from)."""
        from nas.config import parse

        cls = self.evaluator_cls or evaluator_class(self.spec.evaluator)
        return cls(self.space, parse(cls.config_model, self.spec.config, f"evaluator {self.spec.evaluator} config"),
                   self.table)

    def stored_config(self) -> dict[str, Any]:
        """What `config.yaml` holds: the run config and the latency table it priced archs with."""
        return {**self.config.model_dump(mode="json"), "latency_table": self.table_record}

    def new_strategy(self, workdir: Path | None = None) -> Deduplicated:
        """A fresh strategy of the plan, deduplicated (the budget counts distinct archs).

        `workdir` is the run dir's folder for a library's own store (Optuna's journal); None keeps it in memory.
        """
        config = self.config
        return Deduplicated(build_strategy(config.strategy, config.strategy_config, self.space,
                                           self.objective, config.seed, workdir))


def plan_search(config: RunConfig, evaluator_cls: type[Evaluator] | None = None) -> SearchPlan:
    """Build and check everything `config` needs; writes nothing, starts nothing.

    `evaluator_cls`, given, scores the archs in place of the class registered as `config.evaluator`
    (`SearchPlan.evaluator_cls`); the objective is checked against the metrics it measures.
    """
    space = load_space(config.space, config.space_config)
    bound, evaluator_cls = evaluator_cls, evaluator_cls or evaluator_class(config.evaluator)
    objective = config.objective
    if objective.kind != "pareto" and objective.metric is None:  # the evaluator's default metric
        objective = Objective(**{**objective.model_dump(), "metric": evaluator_cls.default_metric})
    _check_scheduler(config, objective)
    read = metrics_read(objective)
    needs_table = evaluator_cls.needs_table or any(m in evaluator_cls.table_metrics for m in read)
    table = _find_table(config, space, needs_table)
    _check_objective(objective, config.evaluator, evaluator_cls, has_table=table is not None)
    if table is not None and objective.max_latency_ms is not None:
        _check_bound_reachable(objective.max_latency_ms, table, space)
    spec = EvaluatorSpec(
        space=config.space, space_config=dict(space.config.model_dump()), evaluator=config.evaluator,
        config=_absolute_paths(config.evaluator_config),
        # Absolute: Ray workers run in another directory; with its hash, so a file changed since is refused.
        table=str(table.path) if table is not None and table.path is not None else None,
        table_sha256=table.sha256 if table is not None else None,
    )
    plan = SearchPlan(config=config, space=space, objective=objective, spec=spec, table=table,
                      table_record=_table_record(table) if table is not None else None,
                      batch=min(config.archs_per_trial or evaluator_cls.archs_per_trial, config.trials),
                      evaluator_cls=bound)
    plan.build_evaluator()  # its config and data, checked here rather than in every Ray worker
    ask_batch = plan.new_strategy().ask_batch  # the strategy config, checked
    if config.archs_per_trial is None:
        plan = replace(plan, batch=default_batch(plan.batch, ask_batch, config.trials))
    return plan


MAX_ROUNDS = 50
"""Batches a search of many cheap archs is cut into, at most (`default_batch`)."""


def default_batch(evaluator_batch: int, ask_batch: int, trials: int) -> int:
    """Archs asked at once, and scored by one trial, when `--archs-per-trial` is not given.

    The evaluator's default (one arch for `train`; thousands for a table lookup, whose Ray trials cost about a
    second each), cut to what the strategy learns between (`Strategy.ask_batch`: TPE 1, a policy update of
    `rl`, a generation of `nsga2`; asked all at once, a search's archs all come from the strategy's initial
    state, as in random search). But never below `trials / MAX_ROUNDS`: each batch costs a state save and
    a synced append to the trial log (tens of ms), which at a hundred thousand archs would outweigh the
    search itself. On NAS-Bench-201, TPE found as good archs asking 2 at a time as 1 (20 seeds).
    """
    return min(evaluator_batch, max(ask_batch, -(-trials // MAX_ROUNDS)), trials)


def _check_objective(objective: Objective, evaluator: str, evaluator_cls: Any, has_table: bool) -> None:
    """Refuse an objective that reads a metric the evaluator does not measure (here, with this table or none)."""
    available = [m for m in evaluator_cls.metrics if has_table or m not in evaluator_cls.table_metrics]
    for metric in metrics_read(objective):
        if metric not in available:
            optimised = metric in objectives.optimised_metrics(objective)
            flag = ("--metrics" if objective.kind == "pareto" else "--metric") if optimised else (
                "--max-latency-ms" if metric == "latency_ms" else "--max-params")
            hint = "; it needs a latency table (--hardware)" if metric in evaluator_cls.table_metrics else ""
            raise UserError(f"{flag} {metric}: evaluator {evaluator} does not measure it{hint}; it measures "
                            f"{', '.join(sorted(available))}")


def _check_scheduler(config: RunConfig, objective: Objective) -> None:
    """Refuse ASHA options without ASHA, and ASHA where it cannot stop archs by their score after an epoch:
    another evaluator than `train` (none reports epochs), a pareto objective (no one score to rank by), a trial
    of several archs (ASHA stops whole trials) or fewer than two epochs (nothing to stop early)."""
    from nas.config import RUN_FLAGS, parse

    scheduler = config.scheduler
    if scheduler.kind != "asha":
        given = [key for key in ("grace_period", "reduction_factor") if key in scheduler.model_fields_set]
        if given:
            raise UserError(f"{RUN_FLAGS['scheduler.' + given[0]]} {getattr(scheduler, given[0]):g}: an option of "
                            f"--scheduler asha, not of {scheduler.kind}; add --scheduler asha or drop it")
        return
    if config.evaluator != "train":
        raise UserError(f"--scheduler asha: needs an evaluator that reports accuracy after every epoch, not "
                        f"--evaluator {config.evaluator}; allowed with asha: --evaluator train")
    if objective.kind == "pareto":
        raise UserError("--scheduler asha: stops archs by one score, which a pareto objective has not; allowed with "
                        "asha: --objective constrained or weighted")
    if config.archs_per_trial is not None and config.archs_per_trial > 1:
        raise UserError(f"--archs-per-trial {config.archs_per_trial}: ASHA stops whole trials, so each holds one arch "
                        "with --scheduler asha; allowed: 1")
    cls = evaluator_class(config.evaluator).config_model
    epochs = parse(cls, config.evaluator_config, "run config", prefix="evaluator_config.", flags=RUN_FLAGS).epochs
    if epochs < 2:
        raise UserError(f"--epochs {epochs}: --scheduler asha stops archs between epochs, so it needs 2 or more; "
                        "allowed with asha: 2 or more")
    if scheduler.grace_period >= epochs:
        raise UserError(f"--asha-grace-period {scheduler.grace_period}: ASHA stops no arch before it, so it must "
                        f"be below --epochs ({epochs}); allowed: 1 to {epochs - 1}")


def _check_bound_reachable(bound: float, table: LatencyTable, space: SearchSpace) -> None:
    cheapest = table.lower_bound(space)
    if bound < cheapest:
        raise UserError(f"--max-latency-ms {bound:g}: below the cheapest latency the table {table.source} "
                        f"predicts for any {space.name} arch ({cheapest:.4g} ms); no arch can meet it; "
                        f"allowed: at least {cheapest:.4g}")


def _absolute_paths(evaluator_config: dict[str, Any]) -> dict[str, Any]:
    """`data_dir` made absolute: Ray workers run in another working directory."""
    config = dict(evaluator_config)
    if config.get("data_dir") is not None:
        config["data_dir"] = str(Path(config["data_dir"]).expanduser().resolve())
    return config


def _find_table(config: RunConfig, space: SearchSpace, required: bool) -> LatencyTable | None:
    from nas.hardware.store import TableNotFound, resolve_table

    try:
        return resolve_table(config.hardware, space, batch=1)
    except TableNotFound:
        if required or config.hardware is not None:
            raise
        return None  # a table was only optional: the search runs without latency_ms


def _table_record(table: LatencyTable) -> dict[str, Any]:
    from nas.hardware.store import table_identity

    return table_identity(table)
