"""What the `nas` commands print: tables (rich) and JSON on stdout, in one look."""

from __future__ import annotations

import json
from typing import Any

import typer


def echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=1, sort_keys=True, default=str))


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        if column in FIXED_COLUMNS:
            table.add_column(column, no_wrap=True, min_width=FIXED_COLUMNS[column])
        else:
            table.add_column(column, justify="left" if column in TEXT_COLUMNS else "right")
    for row in rows:
        table.add_row(*[str(v) for v in row])
    Console(soft_wrap=True).print(table)


FIXED_COLUMNS = {"arch": 12}  # hashes show 12 hex digits even on an 80-column terminal
TEXT_COLUMNS = {"strategy", "objectives", "option", "default", "allowed", "feasible", "space", "presets", "decision",
                "choice", "arch", "key", "node", "format", "path"}


def fmt(value: Any, scale: float = 1.0, digits: int = 3) -> str:
    from nas.report import fmt

    return fmt(value, scale, digits)
