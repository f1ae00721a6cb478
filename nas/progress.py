"""Search progress on stderr: a rich progress bar in a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from nas.trials import Progress


def _best_text(best: dict[str, Any] | None, done: int) -> str:
    """The best feasible arch so far, or that none of the `done` archs keeps the bounds."""
    if best is None:
        return "best: none feasible yet" if done else "best: -"
    m = best["metrics"]
    parts = [f"score {best['score']:.4g}"]
    if "accuracy" in m:
        parts.append(f"acc {m['accuracy']:.3f}")
    if "latency_ms" in m:
        parts.append(f"{m['latency_ms']:.2f} ms")
    return "best: " + ", ".join(parts)


@contextmanager
def progress_reporter(total: int) -> Iterator[Progress]:
    """Yield a progress callback for `run_search` that draws to stderr."""
    if sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        with Bar(TextColumn("search"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      TextColumn("{task.fields[best]}"), transient=False) as bar:
            task = bar.add_task("search", total=total, best="best: -")

            def update(done: int, budget: int, best: dict[str, Any] | None) -> None:
                bar.update(task, completed=done, total=budget, best=_best_text(best, done))

            yield update
        return
    start = time.monotonic()
    last = {"logged": -1.0}

    def log_line(done: int, budget: int, best: dict[str, Any] | None) -> None:
        now = time.monotonic()
        if done < budget and now - last["logged"] < 2.0:
            return
        last["logged"] = now
        elapsed = now - start
        print(f"[search] {done}/{budget} archs, {elapsed:.0f} s, {_best_text(best, done)}", file=sys.stderr, flush=True)

    yield log_line


@contextmanager
def stage_reporter() -> Iterator[Any]:
    """Yield a progress callback `(stage, done, total)` for profiling, drawing to stderr."""
    if sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        with Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
            tasks: dict[str, Any] = {}

            def update(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done, total=total)

            yield update
        return
    last: dict[str, float] = {}

    def log_line(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last.get(stage, -10.0) < 5.0:
            return
        last[stage] = now
        print(f"[profile] {stage}: {done}/{total}", file=sys.stderr, flush=True)

    yield log_line
