"""What a finished search reports: its best archs as table rows and its summary lines.

Plain data and a rich table for the CLI to print (only `cli.py` prints): each row names whether
the arch keeps the objective's bounds, and a metric that breaks its bound shows the bound beside
it (`12.250 > 9.5`), so a user sees why an arch with a higher accuracy ranks below another.
`best_table` fits the table to a terminal width without ever cutting a number or a hash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nas.config import Objective
from nas.objective import describe

if TYPE_CHECKING:
    from rich.table import Table

_METRIC_COLUMNS = {"accuracy": "accuracy", "latency_ms": "latency ms", "params": "params M", "macs": "MACs M"}
_LEFT = {"arch", "feasible"}


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
    title = f"best architectures ({describe(objective)}{bounds_text(objective)})"
    return title, ["rank", "arch", "feasible", "accuracy", "latency ms", "params M", "MACs M"], rows


def best_table(result: Any, width: int) -> Table:
    """The best-archs table of `best_rows`, fitted to a terminal `width` columns wide.

    Every column is at least as wide as its longest word (a number, a 12-digit hash, a header
    word), so cells and headers wrap between words only and no number is cut or ellipsised.
    Columns that do not fit are left out, least important first (see `_drop_order`), and the
    caption names them; rank and arch always stay (below about 25 columns they too are cut).
    """
    title, columns, rows = best_rows(result)
    cells = [[str(v) for v in row] for row in rows]
    longest = {name: max(len(word) for text in [name, *(row[i] for row in cells)] for word in text.split() or [""])
               for i, name in enumerate(columns)}
    shown = list(columns)
    for name in _drop_order(columns, result.objective):
        # rich's default box: one space of padding each side of a cell, a border between and around columns
        if sum(longest[c] + 2 for c in shown) + len(shown) + 1 <= width:
            break
        shown.remove(name)
    table = _rich_table(title, columns, cells, {c: longest[c] for c in shown})
    hidden = [c for c in columns if c not in shown]
    if hidden:
        table.caption = _wrapping(f"not shown at {width} columns: {', '.join(hidden)} (a wider terminal or --json "
                                  "shows them)")
    return table


def search_summary(result: Any) -> list[str]:
    """Lines after the table: counts, the latency table and its scale, an early end, no feasible arch."""
    summary = f"{result.n_archs} archs evaluated, {result.n_feasible} feasible"
    if result.n_failed:
        summary += f", {result.n_failed} failed (see trials.jsonl)"
    lines = [summary]
    if getattr(result, "report", None) is not None:
        lines.append(f"plots: {result.report} (nas report --run-dir {result.report.parent})")
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


def _drop_order(columns: list[str], objective: Objective) -> list[str]:
    """Columns in the order a narrow terminal leaves them out: other metrics, `feasible` (a rank `-` says it
    too), the bounded metrics, the objective's metric. Rank and arch are never left out."""
    bounded = [name for metric, name in _METRIC_COLUMNS.items()
               if getattr(objective, f"max_{metric}", None) is not None]
    goal = _METRIC_COLUMNS.get(objective.metric or "")
    others = [c for c in reversed(_METRIC_COLUMNS.values()) if c not in bounded and c != goal]
    order = [*others, "feasible", *reversed(bounded), *([goal] if goal and goal not in bounded else [])]
    return [c for c in order if c in columns]


def _rich_table(title: str, columns: list[str], cells: list[list[str]], shown: dict[str, int]) -> Table:
    """A rich table of the `shown` columns, each no narrower than its given width (its longest word)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=_wrapping(title))
    index = [columns.index(c) for c in shown]
    for name, min_width in shown.items():
        table.add_column(name, justify="left" if name in _LEFT else "right", min_width=min_width,
                         no_wrap=name == "arch")
    for row in cells:
        table.add_row(*(Text(row[i]) for i in index))
    return table


def _wrapping(text: str) -> Any:
    """`text` that wraps between words at the table's width even on a console printing with `soft_wrap=True`
    (whose default overflow, `ignore`, would leave a long title or caption for the terminal to cut)."""
    from rich.text import Text

    return Text(text, no_wrap=False, overflow="fold")
