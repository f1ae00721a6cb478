"""The report of a run dir: its Pareto front or its best archs, a progress curve, and PNG plots.

`write_search_report` reads a run dir (finished, stopped or still running) through `RunDir`,
so every line is checked as a resumed search checks it, and writes its plots and numbers to
`<run dir>/report/` (each file replaced atomically). What it shows depends on the objective:
- `pareto`: the non-dominated set of the feasible archs (each arch once), the objective's first
  metric (accuracy when it is one of them) against `latency_ms` and against `params` with the
  front highlighted, and the hypervolume after each trial. The hypervolume's reference point is
  the nadir of all feasible points of the run (the worst value of each metric), moved 10% of
  that metric's range further out (10% of its value, or 1, when all archs agree), so every
  feasible arch adds volume. It is fixed for the whole curve, which is therefore
  non-decreasing; a later report of a longer run can move it, so compare curves of one report.
- `constrained` and `weighted`: the best score so far against trials (with the objective's
  metric of that arch), the best archs, and accuracy against latency when both were measured.
Cost is bounded for runs of a million archs: columns are numpy arrays, the hypervolume is
computed at `CHECKPOINTS` points from a front kept incrementally, and a scatter plots at most
`nas.report_plots.MAX_PLOTTED` points besides the highlighted ones (a random sample, which its caption states).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from nas.config import Objective, RunConfig, parse
from nas.errors import UserError, shorten
from nas.objective import describe, directions, hypervolume, nondominated_ranks
from nas.report_plots import curve_png, scatter_png, write_png
from nas.run_dir import RunDir, disk_full, write_atomic

__all__ = ["CHECKPOINTS", "Curve", "Report", "format_rows", "hypervolume_curve", "reference_point",
           "write_search_report"]

log = logging.getLogger(__name__)

CHECKPOINTS = 200
"""Points of the hypervolume curve: evenly spaced over the trials, the last one after the last trial."""
PAD = 0.1
"""How far beyond the nadir the hypervolume's reference point lies, as a fraction of each metric's range."""
REPORT_DIR = "report"
_SHOWN = ("accuracy", "latency_ms", "params", "macs")
"""Metrics a row shows besides the objective's own, when the run measured them."""
_HEADERS = {"latency_ms": ("latency ms", 1.0), "params": ("params M", 1e6), "macs": ("MACs M", 1e6)}
_TOP = 10


@dataclass(frozen=True)
class Curve:
    """A progress curve: `series` values after `trials[i]` trials (None before the first feasible arch)."""

    trials: tuple[int, ...]
    series: tuple[tuple[str, tuple[float | None, ...]], ...]


@dataclass(frozen=True)
class Report:
    """What `write_search_report` found and wrote; `rows` hold raw values (full hashes), see `format_rows`."""

    run_dir: str
    objective: str
    kind: str  # "pareto" or "scalar"
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    curve: Curve
    reference: tuple[tuple[str, float], ...] | None  # the hypervolume's reference point (pareto): metric, value
    plots: tuple[str, ...]
    notes: tuple[str, ...]
    n_trials: int
    n_ok: int
    n_feasible: int
    budget: int

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (what `report.json` holds)."""
        return asdict(self)


@dataclass(frozen=True)
class _Run:
    """A run's trial lines as columns (one entry per line, in log order)."""

    objective: Objective
    budget: int
    records: list[dict[str, Any]]
    ok: np.ndarray
    feasible: np.ndarray
    score: np.ndarray
    metrics: dict[str, np.ndarray]  # NaN where a line lacks the metric


def write_search_report(run_dir: str | Path, records: list[dict[str, Any]] | None = None) -> Report:
    """Read a run dir, work out its report, draw the plots and write them and `report.json` to `run_dir/report/`.

    Args:
        run_dir: the run dir of a search, finished or still running (its lock is not taken).
        records: its trial records when the caller holds them already (the runner at the end of a
            search), so the log is not read again; None reads `trials.jsonl`.

    Raises:
        UserError: not a run dir, no `config.yaml`, a damaged one, no trial line yet, or
            `report/` cannot be written. Nothing is written before everything is worked out.
    """
    rd = RunDir(run_dir)
    run = _read_run(rd, records)
    if run.objective.kind == "pareto":
        report, images = _pareto_report(run)  # every plot drawn before the first write
    else:
        report, images = _scalar_report(run)
    out = rd.path / REPORT_DIR
    report = replace(report, run_dir=str(rd.path), plots=tuple(str(out / name) for name in images))
    try:
        out.mkdir(exist_ok=True)
        for name, data in images.items():
            write_png(out / name, data)
        write_atomic(out / "report.json", json.dumps(report.to_dict(), indent=1, sort_keys=True))
    except OSError as err:
        full = disk_full(err, out, "the report is incomplete; free space and run `nas report` again")
        if full is not None:
            raise full from None
        raise UserError(f"--run-dir {shorten(str(rd.path))}: cannot write {out.name}/ ({err.strerror or err}); "
                        "make the run dir writable and run `nas report` again") from None
    log.info("report of %s written to %s", rd.path, out)
    return report


def format_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Column headers and cells of `report.rows` for a table: 12-digit hashes, counts in millions."""
    headers = [_HEADERS.get(c, (c, 1.0))[0] for c in report.columns]
    cells = []
    for row in report.rows:
        line = []
        for column, value in zip(report.columns, row, strict=True):
            if column == "arch":
                line.append(str(value)[:12])
            elif isinstance(value, float) or column in _HEADERS and value is not None:
                line.append(_number(value, _HEADERS.get(column, (column, 1.0))[1]))
            else:
                line.append("-" if value is None else str(value))
        cells.append(line)
    return headers, cells


def reference_point(points: np.ndarray, dirs: Sequence[str], pad: float = PAD) -> np.ndarray:
    """The nadir of `points` (the worst value of each metric) moved `pad` of that metric's range further out.

    A metric on which every point agrees is moved `pad` of its value (or `pad`, for 0) instead,
    so the reference is strictly worse than every point and each of them adds volume.
    """
    points = np.asarray(points, dtype=float)
    low, high = points.min(axis=0), points.max(axis=0)
    span = high - low
    margin = pad * np.where(span > 0, span, np.where(high != 0, np.abs(high), 1.0))
    is_max = np.array([d == "max" for d in dirs])
    return np.where(is_max, low - margin, high + margin)


def hypervolume_curve(points: np.ndarray, lines: np.ndarray, n_lines: int, dirs: Sequence[str],
                      reference: Sequence[float], checkpoints: int = CHECKPOINTS,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The hypervolume after trials `t_1 < ... < t_k` (about `checkpoints` of them, the last `n_lines`).

    Args:
        points: the feasible points, one row each, in log order.
        lines: the log line (0-based) of each point, non-decreasing.
        n_lines: the number of trial lines (feasible or not).

    Returns:
        (trials, hypervolumes, indices of `points` on the final front). The front is kept
        incrementally, each new chunk merged into it, so a million points cost a few seconds.
    """
    trials = np.unique(np.ceil(np.linspace(0, n_lines, checkpoints + 1)[1:]).astype(int))
    ends = np.searchsorted(lines, trials, side="left")  # points within the first t trials
    front, volume, start = np.zeros(0, dtype=int), 0.0, 0
    volumes = np.zeros(len(trials))
    for i, end in enumerate(ends):
        if end > start:
            candidates = np.concatenate([front, np.arange(start, end)])
            on_front = nondominated_ranks(points[candidates], dirs, top=1) == 0  # top=1: only the first front
            if on_front[len(front):].any():
                # max: a point on the front that adds no volume must not lower it by a rounding error
                volume = max(volume, hypervolume(points[candidates[on_front]], dirs, reference))
            front, start = candidates[on_front], end
        volumes[i] = volume
    return trials, volumes, front


# -- reading -------------------------------------------------------------------------------------
def _read_run(rd: RunDir, records: list[dict[str, Any]] | None) -> _Run:
    where = f"--run-dir {shorten(str(rd.path))}"
    if not rd.path.is_dir():
        state = "does not exist" if not os.path.lexists(rd.path) else "is not a directory"
        raise UserError(f"{where}: {state}; give the run dir of a search (the --run-dir of `nas search`)")
    stored = rd.read_config()
    if stored is None:
        raise UserError(f"{where}: no config.yaml, so not the run dir of a search; give the --run-dir of "
                        "`nas search`")
    config = parse(RunConfig, {k: v for k, v in stored.items() if k != "latency_table"}, str(rd.config_path))
    records = rd.read_trials() if records is None else records
    if not records:
        raise UserError(f"{where}: no trial recorded yet in {rd.trials_path.name}; run `nas report` once the "
                        "search has finished an arch")
    return _columns(_resolved(config), config.trials, records)


def _resolved(config: RunConfig) -> Objective:
    """The run's objective with its evaluator's default metric filled in, as the search used it."""
    objective = config.objective
    if objective.kind == "pareto" or objective.metric is not None:
        return objective
    from nas.evaluate import evaluator_class

    return objective.model_copy(update={"metric": evaluator_class(config.evaluator).default_metric})


def _columns(objective: Objective, budget: int, records: list[dict[str, Any]]) -> _Run:
    names = [*(objective.metrics or {}), *([objective.metric] if objective.metric else []), *_SHOWN]
    dicts = [r["metrics"] for r in records]
    metrics = {}
    for name in dict.fromkeys(names):  # numpy reads a missing or null metric (None) as NaN
        column = np.array([m.get(name) for m in dicts], dtype=float)
        if np.isfinite(column).any():
            metrics[name] = column
    return _Run(objective=objective, budget=budget, records=records,
                ok=np.array([r["status"] for r in records]) == "ok",
                feasible=np.array([r.get("feasible") is True for r in records], dtype=bool),
                score=np.array([r["score"] for r in records], dtype=float), metrics=metrics)


def _counts(run: _Run) -> dict[str, int]:
    return {"n_trials": len(run.records), "n_ok": int(run.ok.sum()), "n_feasible": int(run.feasible.sum()),
            "budget": run.budget}


def _common_notes(run: _Run) -> list[str]:
    notes = []
    if len(run.records) < run.budget:
        notes.append(f"{len(run.records):,} of {run.budget:,} trials recorded (the search is running or stopped)")
    if not run.feasible.any():
        notes.append("no feasible arch: every evaluated arch breaks a bound of the objective")
    return notes


def _row(run: _Run, i: int, lead: list[Any], extra: list[Any], columns: Sequence[str]) -> tuple[Any, ...]:
    """`lead`, the line's trial number and full hash, `extra`, then its value of each metric in `columns`."""
    record = run.records[i]
    return (*lead, record["trial"], record["hash"], *extra,
            *(None if not np.isfinite(run.metrics[c][i]) else _plain(run.metrics[c][i], c) for c in columns))


def _plain(value: float, metric: str) -> int | float:
    return int(value) if metric in ("params", "macs") else float(value)


# -- pareto --------------------------------------------------------------------------------------
def _pareto_report(run: _Run) -> tuple[Report, dict[str, bytes]]:
    objective = run.objective
    names, dirs = list(objective.metrics), directions(objective)
    points = np.column_stack([run.metrics.get(m, np.full(len(run.records), np.nan)) for m in names])
    usable = run.feasible & np.isfinite(points).all(axis=1)
    lines = np.flatnonzero(usable)
    notes = _common_notes(run)
    if (run.feasible & ~usable).any():
        notes.append(f"{int((run.feasible & ~usable).sum()):,} feasible archs lack a metric value (null) and are "
                     "left out of the front")
    shown = [m for m in dict.fromkeys([*names, *_SHOWN]) if m in run.metrics]
    images: dict[str, bytes] = {}
    front_lines = np.zeros(0, dtype=int)
    reference = None
    curve = Curve(trials=(len(run.records),), series=(("hypervolume", (None,)),))
    if len(lines):
        ref = reference_point(points[lines], dirs)
        trials, volumes, front = hypervolume_curve(points[lines], lines, len(run.records), dirs, ref)
        front_lines = lines[front]
        first = points[front_lines, 0] * (-1 if dirs[0] == "max" else 1)
        front_lines = front_lines[np.lexsort((front_lines, first))]  # best first metric first, then log order
        reference = tuple((m, float(v)) for m, v in zip(names, ref, strict=True))
        curve = Curve(trials=tuple(int(t) for t in trials), series=(("hypervolume", tuple(map(float, volumes))),))
        images["hypervolume.png"] = curve_png(
            curve.trials, curve.series, f"hypervolume after each trial ({describe(objective)})",
            "reference: " + ", ".join(f"{m} {v:.4g}" for m, v in reference)
            + f" (the nadir of the feasible archs, {PAD:.0%} of each range beyond)")
    y = "accuracy" if "accuracy" in names else names[0]
    highlight = np.zeros(len(run.records), dtype=bool)
    highlight[front_lines] = True
    for x in ("latency_ms", "params"):
        if x in run.metrics and x != y and y in run.metrics:
            images[f"pareto_{y}_{x}.png"] = _scatter(
                run, x, y, highlight, f"{y} against {x} ({describe(objective)})", "front",
                f" (non-dominated in {', '.join(names)})")
    rows = tuple(_row(run, i, [k], [], shown) for k, i in enumerate(front_lines, 1))
    report = Report(run_dir="", objective=describe(objective), kind="pareto",
                    title=f"non-dominated archs ({len(rows)} of {len(lines):,} feasible; {describe(objective)})",
                    columns=("#", "trial", "arch", *shown), rows=rows, curve=curve, reference=reference, plots=(),
                    notes=tuple(notes), **_counts(run))
    return report, images


# -- scalar --------------------------------------------------------------------------------------
def _scalar_report(run: _Run) -> tuple[Report, dict[str, bytes]]:
    objective = run.objective
    metric = objective.metric
    usable = run.ok & run.feasible & np.isfinite(run.score)
    best = np.maximum.accumulate(np.where(usable, run.score, -np.inf))
    at = np.maximum.accumulate(np.where(usable & (run.score >= best), np.arange(len(best)), -1))
    steps = np.flatnonzero(best > np.concatenate([[-np.inf], best[:-1]]))  # lines where the best score rose
    picks = np.unique(np.append(steps, len(best) - 1))  # and the last line, so the curve reaches the end
    found = np.isfinite(best[picks])
    metric_of_best = run.metrics.get(metric, np.full(len(best), np.nan))[at[picks]]
    series = [("best score", tuple(float(v) if ok else None for v, ok in zip(best[picks], found, strict=True)))]
    if objective.kind == "weighted" or objective.mode == "min":  # else the score is the metric itself
        series.append((f"{metric} of the best arch", tuple(float(v) if ok else None
                                                           for v, ok in zip(metric_of_best, found, strict=True))))
    curve = Curve(trials=tuple(int(p) + 1 for p in picks), series=tuple(series))
    order = np.lexsort((-np.where(run.ok, run.score, -np.inf), ~run.feasible))[:_TOP]
    order = order[run.ok[order]]
    shown = [m for m in dict.fromkeys([metric, *_SHOWN]) if m in run.metrics]
    rows = tuple(_row(run, i, [k if run.feasible[i] else "-"], ["yes" if run.feasible[i] else "no",
                                                             float(run.score[i])], shown)
                 for k, i in enumerate(order, 1))
    notes = _common_notes(run)
    images: dict[str, bytes] = {}
    if found.any():
        images["best_so_far.png"] = curve_png(curve.trials, curve.series, f"best so far ({describe(objective)})",
                                              "score: what the strategy maximises (a min metric negated)")
    if "accuracy" in run.metrics and "latency_ms" in run.metrics:
        highlight = np.zeros(len(best), dtype=bool)
        if len(order) and run.feasible[order[0]]:
            highlight[order[0]] = True
        images["accuracy_latency_ms.png"] = _scatter(
            run, "latency_ms", "accuracy", highlight, f"accuracy against latency ({describe(objective)})", "best")
    report = Report(run_dir="", objective=describe(objective), kind="scalar",
                    title=f"best archs ({describe(objective)})",
                    columns=("rank", "trial", "arch", "feasible", "score", *shown), rows=rows, curve=curve,
                    reference=None, plots=(), notes=tuple(notes), **_counts(run))
    return report, images


def _scatter(run: _Run, x: str, y: str, highlight: np.ndarray, title: str, label: str, why: str = "") -> bytes:
    """The scatter of `y` against `x` over evaluated archs (counts in millions, as the table shows them)."""
    ok = np.where(run.ok, 1.0, np.nan)
    scales = [_HEADERS.get(m, (m, 1.0)) for m in (x, y)]
    return scatter_png(run.metrics[x] * ok / scales[0][1], run.metrics[y] * ok / scales[1][1], run.feasible, highlight,
                       labels=(scales[0][0], scales[1][0]), title=title, label=label, why=why)


def _number(value: float, scale: float) -> str:
    return f"{value / scale:.3f}" if scale != 1.0 or abs(value) < 1e4 else f"{value:,.0f}"
