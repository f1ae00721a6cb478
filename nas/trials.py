"""`Search`: the bookkeeping of one search in its run dir, apart from Ray.

It restores the strategy from the run dir, hands out batches of archs (archs to retry
first, then new asks), records finished archs in the trial log and the strategy state, and
decides when to stop: the budget is spent, the space is exhausted, every trial fails, or a
write failed. An arch whose evaluation raised is retried up to `failure_limit` times in all,
then recorded in `trials.jsonl` as failed with its error, so a broken arch or data set
never loops.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from nas.arch import Arch
from nas.errors import NasError, UserError
from nas.plan import SearchPlan
from nas.run_dir import RunDir
from nas.strategies.base import violations
from nas.strategies.dedup import SpaceExhausted

log = logging.getLogger(__name__)

Progress = Callable[[int, int, dict[str, Any] | None], None]
"""Called as (archs done, budget, best feasible record so far or None) after each finished trial."""

FAILURE_LIMIT = 3
_ERROR_CHARS = 500


class Search:
    """One search in one run dir: strategy, budget, in-flight and failed archs, trial records.

    Building it reads and checks the run dir and writes nothing; `start` saves the restored state.
    """

    def __init__(self, plan: SearchPlan, run_dir: RunDir, progress: Progress | None = None,
                 failure_limit: int = FAILURE_LIMIT) -> None:
        self.plan = plan
        self.config = plan.config
        self.run_dir = run_dir
        self.progress = progress
        self.failure_limit = failure_limit
        self.strategy = plan.new_strategy()
        self.records = run_dir.read_trials()
        self._restore(run_dir.read_state())
        self.retry: list[Arch] = self.strategy.pending()
        self.in_flight = 0
        self.attempts: Counter[str] = Counter()
        self.first_error: str | None = None
        self.stop_error: NasError | None = None
        self.exhausted: str | None = None

    def _restore(self, saved: dict[str, Any] | None) -> None:
        n_lines = len(self.records)
        if saved is None:
            if self.records:
                raise UserError(f"{self.run_dir.state_path} is missing but {self.run_dir.trials_path} has "
                                f"{n_lines} trials; the run dir is damaged; choose another --run-dir")
            return
        n_recorded = saved["n_recorded"]
        if n_lines < n_recorded:
            raise UserError(
                f"{self.run_dir.trials_path} has {n_lines} trials but {n_recorded} were recorded: trials "
                f"{n_lines}..{n_recorded - 1} are missing (the log was cut or deleted); restore it from a "
                "backup or choose another --run-dir"
            )
        try:
            self.strategy.load_state_dict(saved["strategy"])
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{self.run_dir.state_path} does not hold a {self.config.strategy} state "
                            f"({type(err).__name__}: {str(err)[:80]}); the run dir is damaged") from None
        for record in self.records[n_recorded:]:  # recorded, but the state was saved before them
            arch = Arch.from_dict(record["arch"])
            if record.get("status") == "failed":
                self.strategy.forget(arch)
            else:
                self.strategy.tell(arch, record["metrics"])
        for record in self.records:
            self.strategy.remember(record["hash"], None if record.get("status") == "failed" else record["metrics"])
        for arch in self.strategy.pending():
            self.strategy.remember(arch.hash, None)

    def start(self) -> None:
        """Save the restored state (it now reflects every trial line)."""
        self.run_dir.write_state(self.strategy.state_dict(), len(self.records))
        if self.progress:
            self.progress(len(self.records), self.config.trials, best_feasible(self.records))

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
            archs = []
            try:
                for _ in range(min(self.plan.batch, self.remaining)):
                    archs.append(self.strategy.ask())
            except SpaceExhausted as err:
                self.exhausted = str(err)
            self.run_dir.write_state(self.strategy.state_dict(), len(self.records))
        self.in_flight += len(archs)
        return archs

    # -- results ----------------------------------------------------------------------
    def record(self, archs: list[Arch], result: dict[str, Any]) -> None:
        """Tell the strategy, append the finished archs to the log, save the strategy state.

        Telling first is safe: the state file is replaced only after the log has the lines,
        so a crash in between restores the archs as in flight and runs them again.
        """
        now = datetime.now(UTC).isoformat(timespec="seconds")
        lines = []
        self.in_flight -= len(archs)
        for arch, outcome in zip(archs, result["results"], strict=True):
            line = {"trial": len(self.records) + len(lines), "arch": arch.to_dict(), "hash": arch.hash,
                    "node": result["node"], "host": result["host"], "pid": result["pid"], "finished_at": now}
            if "error" in outcome:
                if not self._failed_for_good(arch, outcome["error"]):
                    continue
                self.strategy.forget(arch)
                lines.append({**line, "status": "failed", "error": outcome["error"], "metrics": {}, "score": None})
            else:
                score = self.strategy.tell(arch, outcome["metrics"])
                feasible = not violations(self.plan.objective, outcome["metrics"])
                lines.append({**line, "status": "ok", "metrics": outcome["metrics"], "score": score,
                              "feasible": feasible})
        if lines:
            self.run_dir.append_trials(lines)
            self.records.extend(lines)
            self.run_dir.write_state(self.strategy.state_dict(), len(self.records))
        self._check_all_failing()
        if self.progress:
            self.progress(len(self.records), self.config.trials, best_feasible(self.records))

    def record_lost(self, archs: list[Arch], reason: str) -> None:
        """A trial died without results (its worker was killed): each of its archs used one attempt."""
        log.warning("a Ray worker died with %d archs in flight (%s); they run again, up to %d attempts each",
                    len(archs), reason, self.failure_limit)
        self.record(archs, {"results": [{"error": reason}] * len(archs), "node": None, "host": None, "pid": None})

    def _failed_for_good(self, arch: Arch, error: str) -> bool:
        """Count one failed attempt of `arch`; True once it reached the failure limit, else queue a retry."""
        error = error[:_ERROR_CHARS]
        self.first_error = self.first_error or error
        self.attempts[arch.hash] += 1
        if self.attempts[arch.hash] >= self.failure_limit:
            return True
        if arch not in self.retry:
            self.retry.append(arch)
        return False

    def _check_all_failing(self) -> None:
        failed = sum(r.get("status") == "failed" for r in self.records)
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
    """The `top` evaluated archs, each once: feasible ones by score, then the rest by score.

    Each returned record carries `feasible` and `violations` (metric -> [value, bound]).
    """
    seen, ranked = set(), []
    for record in sorted((r for r in records if r.get("status", "ok") == "ok"),
                         key=lambda r: r["score"], reverse=True):
        if record["hash"] in seen:
            continue
        seen.add(record["hash"])
        broken = violations(objective, record["metrics"])
        ranked.append({**record, "feasible": not broken, "violations": broken})
    ranked.sort(key=lambda r: not r["feasible"])  # stable: score order within each group
    return ranked[:top]
