"""`Search`: the bookkeeping of one search in its run dir, apart from Ray.

It restores the strategy from the run dir, hands out batches of archs (archs to retry
first, then new asks), records finished archs in the trial log and the strategy state, and
decides when to stop: the budget is spent, the space is exhausted, every trial fails, or a
write failed. An arch whose evaluation raised is retried up to `failure_limit` times in all,
then recorded in `trials.jsonl` as failed with its error, so a broken arch or data set
never loops. Metrics an arch cannot be recorded or scored with (not numbers, out of range,
missing what the objective reads) count as a failed evaluation too.

Resuming checks that the run dir could come from a search of this plan before anything is
written: no more lines than the budget, every arch of this space, usable metrics, a
`feasible` flag that agrees with the bounds, and a strategy state whose archs in flight are
exactly the lines recorded after it was saved (so a line added, repeated or an edited
`n_recorded` is one `UserError` line, not an error deep in the strategy).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np

from nas.arch import Arch, canonical_json
from nas.errors import NasError, UserError, shorten
from nas.objective import directions, judge, pareto_mask, values, violations
from nas.plan import SearchPlan
from nas.run_dir import RunDir
from nas.run_json import TrialLine, trial_line
from nas.strategies.dedup import SpaceExhausted
from nas.trial_log import ERROR_CHARS, clean_metrics, is_number

log = logging.getLogger(__name__)

Progress = Callable[[int, int, dict[str, Any] | None], None]
"""Called as (archs done, budget, best feasible record so far or None) after each finished trial."""

FAILURE_LIMIT = 3
_RANGES = {"accuracy": (0.0, 1.0), "latency_ms": (0.0, math.inf), "params": (0, math.inf), "macs": (0, math.inf)}
"""Metrics with a known range: accuracy is a fraction, latency a duration, params and MACs counts."""
_COUNTS = ("params", "macs")
_BOUND_METRICS = (("latency_ms", "max_latency_ms"), ("params", "max_params"))
_FIX_LOG = "the trial log is damaged or edited; restore it from a backup or choose another --run-dir"
_FIX_STATE = "the run dir is damaged; restore it or choose another --run-dir"


class Search:
    """One search in one run dir: strategy, budget, in-flight and failed archs, trial records.

    Building it reads and checks the run dir and writes nothing; `start` saves the restored state.
    `best` (the best feasible record so far) and `n_failed` follow the records as they come.
    """

    def __init__(self, plan: SearchPlan, run_dir: RunDir, progress: Progress | None = None,
                 failure_limit: int = FAILURE_LIMIT) -> None:
        self.plan = plan
        self.config = plan.config
        self.run_dir = run_dir
        self.progress = progress
        self.failure_limit = failure_limit
        self.strategy = plan.new_strategy(run_dir.path / "strategy")
        self._space_check: tuple[dict[str, Any], dict[str, set[tuple[type, Any]]]] | None = None
        self.records = run_dir.read_trials()
        self._needed = self._needed_metrics()
        self._restore(run_dir.read_state())
        self.n_failed = sum(r["status"] == "failed" for r in self.records)
        self.best = best_feasible(self.records)
        self.retry: list[Arch] = self.strategy.pending()
        self.in_flight = 0
        self.attempts: Counter[str] = Counter()
        self.first_error: str | None = None
        self.stop_error: NasError | None = None
        self.exhausted: str | None = None

    def _restore(self, saved: dict[str, Any] | None) -> None:
        self._check_records()
        n_lines = len(self.records)
        if saved is None:
            if self.records:
                raise UserError(f"{self.run_dir.state_path} is missing but {self.run_dir.trials_path} has "
                                f"{n_lines} trials; the run dir is damaged; choose another --run-dir")
            return
        n_recorded = saved["n_recorded"]  # an int >= 0 (`RunDir.read_state`)
        if n_lines < n_recorded:
            raise UserError(
                f"{self.run_dir.trials_path} has {n_lines} trials but {shorten(n_recorded)} were recorded: trials "
                f"{n_lines}..{shorten(n_recorded - 1)} are missing (the log was cut or deleted); restore it from a "
                "backup or choose another --run-dir"
            )
        self._load_strategy(saved["strategy"])
        self._check_in_flight(n_recorded)
        for record in self.records[n_recorded:]:  # recorded, but the state was saved before them
            arch = Arch.from_dict(record["arch"])
            if record["status"] == "failed":
                self.strategy.forget(arch)
            else:
                self.strategy.tell(arch, record["metrics"])
        for record in self.records:
            self.strategy.remember(record["hash"], None if record["status"] == "failed" else record["metrics"])
        for arch in self.strategy.pending():
            self.strategy.remember(arch.hash, None)

    def _check_records(self) -> None:
        """Refuse trial lines no search of this plan writes (each line's own fields are checked on reading)."""
        path = self.run_dir.trials_path
        if len(self.records) > self.config.trials:
            raise UserError(f"{path} has {len(self.records)} trial lines, more than the budget of {self.config.trials} "
                            f"(a budget may grow, never shrink); {_FIX_LOG}")
        for number, record in enumerate(self.records, 1):
            problem = self._arch_problem(record["arch"])
            if problem is None and record["status"] == "ok":
                problem = self.metrics_problem(record["metrics"])
                broken = problem is None and violations(self.plan.objective, record["metrics"])
                if problem is None and record["feasible"] != (not broken):
                    problem = (f"feasible is {shorten(record['feasible'])}, but the metrics "
                               f"{'break' if broken else 'keep'} the objective's bounds")
            if problem:
                raise UserError(f"{path}: line {number}: {problem}; {_FIX_LOG}")

    def _arch_problem(self, arch: dict[str, Any]) -> str | None:
        """Why the plain-dict `arch` is not an arch of this search's space, or None (fast: no `Arch` is built)."""
        space = self.plan.space
        if self._space_check is None:
            config = json.loads(canonical_json(space.config.model_dump()))
            self._space_check = (config, {d.name: {(type(c), c) for c in d.choices} for d in space.decisions()})
        config, allowed = self._space_check
        if arch["space"] != space.name or arch["config"] != config:
            return (f"arch is of space {shorten(arch['space'])} with config {shorten(arch['config'])}; allowed: "
                    f"archs of this search's space {space.name} with config {shorten(config)}")
        choices = arch["choices"]
        if set(choices) != set(allowed):
            odd = sorted(set(choices) ^ set(allowed))[0]
            return f"arch decision {shorten(odd)} is {'missing' if odd in allowed else 'unknown'} in space {space.name}"
        for name, value in choices.items():
            if not isinstance(value, str | int | float) or (type(value), value) not in allowed[name]:
                options = ", ".join(sorted(str(c) for _, c in allowed[name]))
                return f"arch choice {name} is {shorten(value)}; allowed: {options}"
        try:
            space.check(choices)
        except UserError as err:
            return f"arch breaks a rule of its space ({str(err)[:200]})"
        return None

    def _needed_metrics(self) -> tuple[str, ...]:
        """The metrics every arch must have a number for: params, MACs, the objective's and the bounded ones."""
        objective = self.plan.objective
        needed = ["params", "macs", getattr(objective, "metric", None),
                  *(m for m, field in _BOUND_METRICS if getattr(objective, field, None) is not None)]
        return tuple(dict.fromkeys(n for n in needed if n))

    def metrics_problem(self, metrics: dict[str, Any]) -> str | None:
        """Why the metrics of an evaluated arch (`clean_metrics` passed) cannot be used by this search, or None.

        Every evaluator reports params and MACs; the objective's metric and bounded metrics must be
        numbers; a metric of known range must lie in it; the objective must score them finitely.
        """
        return self._judge(metrics)[0]

    def _judge(self, metrics: dict[str, Any]) -> tuple[str | None, float, bool]:
        """(`metrics_problem`, the objective's score, whether the metrics keep every bound)."""
        for name in self._needed:
            if metrics.get(name) is None:
                return f"metrics.{name} is {'null' if name in metrics else 'missing'}; the search needs its value", \
                    math.nan, False
        for name, (low, high) in _RANGES.items():
            value = metrics.get(name)
            if value is not None and (not low <= value <= high or name in _COUNTS and type(value) is not int):
                kind = "an integer" if name in _COUNTS else "a number"
                return f"metrics.{name} is {shorten(value)}; allowed: {kind} from {low:g} to {high:g}", math.nan, False
        objective = self.plan.objective
        try:
            value, feasible = judge(objective, metrics)
        except (ArithmeticError, KeyError, TypeError, ValueError, UserError) as err:
            return f"the objective cannot score these metrics ({type(err).__name__}: {str(err)[:120]})", math.nan, \
                False
        if not is_number(value):
            return f"the objective scores these metrics {shorten(value)}, not a number", math.nan, False
        return None, value, feasible

    def _load_strategy(self, state: dict[str, Any]) -> None:
        """Load the saved strategy state, its counters checked first (the strategy checks its own keys)."""
        where = self.run_dir.state_path
        for key in ("n_asked", "n_told"):
            value = state.get(key)
            if not is_number(value) or not isinstance(value, int) or value < 0:
                raise UserError(f"{where}: strategy.{key} is {shorten(value)}; allowed: an integer >= 0; {_FIX_STATE}")
        pending = state.get("pending")
        if not isinstance(pending, list) or state["n_told"] + len(pending) > state["n_asked"]:
            raise UserError(f"{where}: strategy.pending is {shorten(pending)}; allowed: a list of at most n_asked - "
                            f"n_told ({state['n_asked'] - state['n_told']}) archs; {_FIX_STATE}")
        try:
            self.strategy.load_state_dict(state)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError, UserError) as err:
            detail = " ".join(str(err).split())[:120]
            raise UserError(f"{where} does not hold a state of strategy {self.config.strategy} "
                            f"({type(err).__name__}: {detail}); {_FIX_STATE}") from None
        for arch in self.strategy.pending():
            problem = self._arch_problem(arch.to_dict())
            if problem:
                raise UserError(f"{where}: an arch in flight is not of this search ({problem}); {_FIX_STATE}")

    def _check_in_flight(self, n_recorded: int) -> None:
        """The lines after the first `n_recorded` are exactly archs the saved state has in flight, and the
        lines before are not: what a search killed between its log append and its state save leaves."""
        in_flight = Counter(arch.hash for arch in self.strategy.pending())
        unclaimed = in_flight.copy()
        for number, record in enumerate(self.records[n_recorded:], n_recorded + 1):
            if unclaimed[record["hash"]] <= 0:
                raise UserError(
                    f"{self.run_dir.trials_path}: line {number} records arch {record['hash'][:12]}, which "
                    f"{self.run_dir.state_path} (saved after line {n_recorded}) never asked for: the line was added, "
                    f"or n_recorded is too small; {_FIX_LOG}")
            unclaimed[record["hash"]] -= 1
        for number, record in enumerate(self.records[:n_recorded], 1):
            if in_flight[record["hash"]]:
                raise UserError(
                    f"{self.run_dir.state_path} has arch {record['hash'][:12]} in flight, but line {number} of "
                    f"{self.run_dir.trials_path} recorded it before that state was saved: n_recorded "
                    f"({n_recorded}) is too large, or the state was edited; {_FIX_STATE}")

    def start(self) -> None:
        """Save the restored state (it now reflects every trial line)."""
        self.save_state()
        if self.progress:
            self.progress(len(self.records), self.config.trials, self.best)

    # -- budget -----------------------------------------------------------------------
    @property
    def remaining(self) -> int:
        """Archs still to be asked (not finished, not in flight, not queued for a retry)."""
        return self.config.trials - len(self.records) - self.in_flight - len(self.retry)

    @property
    def is_done(self) -> bool:
        """Whether every arch of the budget has a trial line (or the space ran out of new archs)."""
        return len(self.records) >= self.config.trials or (self.exhausted is not None and not self.in_flight
                                                            and not self.retry)

    @property
    def should_stop(self) -> bool:
        """Whether to ask for nothing more (budget spent, space exhausted, a failure that ends the search)."""
        if self.stop_error is not None:
            return True
        return not self.retry and (self.remaining <= 0 or self.exhausted is not None)

    def next_batch(self) -> list[Arch]:
        """Archs for the next trial: archs to retry first, then new asks (saved before they run)."""
        if self.retry:
            archs, self.retry = self.retry[: self.plan.batch], self.retry[self.plan.batch:]
        else:
            try:
                archs = self.strategy.ask(min(self.plan.batch, self.remaining))
            except SpaceExhausted as err:
                self.exhausted, archs = str(err), err.archs
            self.save_state()
        self.in_flight += len(archs)
        return archs

    # -- results ----------------------------------------------------------------------
    def save_state(self) -> None:
        """Save the strategy state and the number of trial lines it reflects."""
        self.run_dir.write_state(self.strategy.state_dict(), len(self.records), self.strategy.pending())

    def record(self, archs: list[Arch], result: dict[str, Any], save_state: bool = True) -> None:
        """Append the finished archs to the log, then tell the strategy and save its state.

        The log comes first: if the append fails, the strategy has learnt nothing and the archs stay
        in flight in every state saved later, so a resume runs them again; a tell before a failed
        append would let a later save drop them for good. A caller that asks for the next batch at
        once may leave the save to that ask (`save_state=False`, then `save_state()` when it stops):
        until then the last saved state has every appended arch in flight, and a resume tells them.
        """
        node, host, pid = result["node"], result["host"], result["pid"]
        now = datetime.now(UTC).isoformat(timespec="seconds")
        lines: list[TrialLine] = []
        told: list[tuple[Arch, dict[str, Any] | None]] = []
        self.in_flight -= len(archs)
        for arch, outcome in zip(archs, result["results"], strict=True):
            metrics, error, value, feasible = self._outcome(outcome)
            trial = len(self.records) + len(lines)
            if error is None:  # the fields in sorted order, as `trial_line` writes an ok line fastest
                fields = {"feasible": feasible, "finished_at": now, "hash": arch.hash, "host": host,
                          "metrics": metrics, "node": node, "pid": pid, "score": value, "status": "ok", "trial": trial}
                if outcome.get("stopped_early") is True:  # by `--scheduler asha`, after `metrics.epochs` epochs
                    fields["stopped_early"] = True
            elif self._failed_for_good(arch, error):
                fields = {"error": error, "finished_at": now, "hash": arch.hash, "host": host, "metrics": {},
                          "node": node, "pid": pid, "score": None, "status": "failed", "trial": trial}
            else:
                continue
            lines.append(trial_line(arch, fields))
            told.append((arch, metrics if error is None else None))
        if lines:
            self.run_dir.append_trials(lines)
            for line in lines:
                line.text = ""  # written: a search keeps its records, not their JSON (1 KB a line)
            self._add(lines)
            for arch, metrics in told:
                if metrics is None:
                    self.strategy.forget(arch)
                else:
                    self.strategy.tell(arch, metrics)
            if save_state:
                self.save_state()
        self._check_all_failing()
        if self.progress:
            self.progress(len(self.records), self.config.trials, self.best)

    def _add(self, lines: list[TrialLine]) -> None:
        """Keep appended lines, the count of failed ones and the best feasible one (the first of equal scores)."""
        self.records.extend(lines)
        best = self.best
        for line in lines:
            if line["status"] == "failed":
                self.n_failed += 1
            elif line["feasible"] and (best is None or line["score"] > best["score"]):
                best = line
        self.best = best

    def _outcome(self, outcome: dict[str, Any]) -> tuple[dict[str, Any], str | None, float, bool]:
        """(metrics as a trial line stores them, None, score, feasible), or ({}, the error the arch failed with,
        cut to fit its line, NaN, False)."""
        if "error" in outcome:
            return {}, str(outcome["error"])[:ERROR_CHARS], math.nan, False
        try:
            metrics = clean_metrics(outcome.get("metrics"))
        except ValueError as err:
            return {}, f"ValueError: the evaluator returned bad metrics: {err}"[:ERROR_CHARS], math.nan, False
        problem, value, feasible = self._judge(metrics)
        if problem:
            return {}, f"ValueError: the evaluator returned bad metrics: {problem}"[:ERROR_CHARS], math.nan, False
        return metrics, None, value, feasible

    def record_lost(self, archs: list[Arch], reason: str) -> None:
        """A trial died without results (its worker was killed): each of its archs used one attempt."""
        log.warning("a Ray worker died with %d archs in flight (%s); they run again, up to %d attempts each",
                    len(archs), reason, self.failure_limit)
        self.record(archs, {"results": [{"error": reason}] * len(archs), "node": None, "host": None, "pid": None})

    def _failed_for_good(self, arch: Arch, error: str) -> bool:
        """Count one failed attempt of `arch`; True once it reached the failure limit, else queue a retry."""
        self.first_error = self.first_error or error
        self.attempts[arch.hash] += 1
        if self.attempts[arch.hash] >= self.failure_limit:
            return True
        if arch not in self.retry:
            self.retry.append(arch)
        return False

    def _check_all_failing(self) -> None:
        failed = self.n_failed
        if failed >= self.failure_limit and failed == len(self.records):
            self.stop_error = NasError(
                f"every trial failed ({failed} archs, {self.failure_limit} attempts each); first error: "
                f"{self.first_error}"
            )


def best_feasible(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best record that keeps every bound, or None."""
    ok = [r for r in records if r.get("status", "ok") == "ok" and r.get("feasible", True)]
    return max(ok, key=lambda r: r["score"]) if ok else None


def rank(records: list[dict[str, Any]], objective: Any, top: int = 10) -> list[dict[str, Any]]:
    """The best evaluated archs, each once, feasible ones first.

    A scalar objective gives the `top` by score; a `pareto` objective gives its whole non-dominated
    set of feasible archs (by the first metric), or the `top` nearest the bounds when none is feasible.
    Each returned record carries `feasible` and `violations` (metric -> [value, bound]).
    """
    seen, ranked, n_feasible = set(), [], 0
    for record in sorted((r for r in records if r.get("status", "ok") == "ok"),
                         key=lambda r: r["score"], reverse=True):
        if record["hash"] in seen:
            continue
        seen.add(record["hash"])
        broken = violations(objective, record["metrics"])
        ranked.append({**record, "feasible": not broken, "violations": broken})
        n_feasible += not broken
        if n_feasible >= top and objective.kind != "pareto":  # the rest ranks below these
            break
    ranked.sort(key=lambda r: not r["feasible"])  # stable: score order within each group
    feasible = [r for r in ranked if r["feasible"]]
    if objective.kind == "pareto" and feasible:
        points = np.array([values(objective, r["metrics"]) for r in feasible])
        return [r for r, front in zip(feasible, pareto_mask(points, directions(objective)), strict=True) if front]
    return ranked[:top]
