"""What a finished search reports: its best archs as table rows and its summary lines.

Plain data for the CLI to print (only `cli.py` prints): each row names whether the arch keeps
the objective's bounds, and a metric that breaks its bound shows the bound beside it
(`12.250 > 9.5`), so a user sees why an arch with a higher accuracy ranks below another.
"""

from __future__ import annotations

from typing import Any

from nas.config import Objective


def fmt(value: float | None, scale: float = 1.0, digits: int = 3) -> str:
    """`value / scale` with `digits` decimals, `-` for a missing value."""
    return "-" if value is None else f"{value / scale:.{digits}f}"


def bounds_text(objective: Objective, lead: str = ", ") -> str:
    """The objective's bounds as text (`, latency <= 9.5 ms`), empty without bounds."""
    parts = []
    if objective.max_latency_ms is not None:
        parts.append(f"latency <= {objective.max_latency_ms:g} ms")
    if objective.max_params is not None:
        parts.append(f"params <= {objective.max_params:,}")
    return lead + " and ".join(parts) if parts else ""


def best_rows(result: Any) -> tuple[str, list[str], list[list[Any]]]:
    """Title, columns and rows of the best-archs table of a `nas.runner.SearchResult`.

    Feasible archs are ranked 1, 2, ...; infeasible ones (listed after them) get `-`.
    """
    objective = result.objective
    rows = []
    for position, r in enumerate(result.best, 1):
        m = r["metrics"]
        rows.append([position if r["feasible"] else "-", r["hash"][:12], "yes" if r["feasible"] else "no",
                     fmt(m.get("accuracy")), _bounded_cell(r, "latency_ms"), _bounded_cell(r, "params", 1e6),
                     fmt(m["macs"], 1e6)])
    title = f"best architectures ({objective.mode} {objective.metric}{bounds_text(objective)})"
    return title, ["rank", "arch", "feasible", "accuracy", "latency ms", "params M", "MACs M"], rows


def search_summary(result: Any) -> list[str]:
    """Lines after the table: counts, the latency table and its scale, an early end, no feasible arch."""
    summary = f"{result.n_archs} archs evaluated, {result.n_feasible} feasible"
    if result.n_failed:
        summary += f", {result.n_failed} failed (see trials.jsonl)"
    lines = [summary]
    if result.table is not None:
        lines.append(f"latency (LUT): {result.table['path']} ({result.table['device_id']}, "
                     f"scale {result.table['scale']:.3g})")
    if result.exhausted:
        lines.append(f"note: the search ended early: {result.exhausted}")
    if result.n_archs and not result.n_feasible:
        lines.append(f"no feasible arch found: every evaluated arch breaks{bounds_text(result.objective, lead=' ')}; "
                     "the table lists the closest ones")
    return lines


def _bounded_cell(record: dict[str, Any], metric: str, scale: float = 1.0) -> str:
    text = fmt(record["metrics"].get(metric), scale)
    broken = record["violations"].get(metric)
    return f"{text} > {broken[1] / scale:g}" if broken else text
