"""`nas report`: the Pareto front or best archs of a run dir, its progress curve, and the plots it wrote.

Registered on the app by `nas.cli` (`app.command()(report)`); the work is `nas.run_report.write_search_report`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from nas.cli_output import echo_json, table
from nas.limits import check_path

Opt = typer.Option

MAX_ROWS = 50
"""Most table rows printed; the rest are in `--json` and `report/report.json`."""


def report(
    run_dir: Annotated[str, Opt("--run-dir", help="Run dir of a search, finished or still running.", metavar="PATH")],
    as_json: Annotated[bool, Opt("--json", help="Print the whole report as JSON.")] = False,
) -> None:
    """Report a search: its non-dominated archs and hypervolume after each trial (a pareto objective) or its best
    archs and best score so far, with PNG plots written to RUN_DIR/report/.

    Example: nas report --run-dir runs/demo
    """
    from nas.run_report import format_rows, write_search_report

    result = write_search_report(check_path(run_dir, "--run-dir"))
    if as_json:
        echo_json(result.to_dict())
        return
    columns, cells = format_rows(result)
    table(result.title, columns, cells[:MAX_ROWS])
    if len(cells) > MAX_ROWS:
        typer.echo(f"{len(cells) - MAX_ROWS:,} more rows in --json and {result.run_dir}/report/report.json")
    typer.echo(f"{result.n_trials:,} trials, {result.n_ok:,} evaluated, {result.n_feasible:,} feasible")
    finals = [f"{name} {values[-1]:.6g}" for name, values in result.curve.series if values[-1] is not None]
    if finals:
        typer.echo(f"after {result.curve.trials[-1]:,} trials: {'; '.join(finals)}")
    if result.reference is not None:
        typer.echo("hypervolume reference point: " + ", ".join(f"{m} {v:.6g}" for m, v in result.reference))
    for note in result.notes:
        typer.echo(f"note: {note}")
    for path in result.plots:
        typer.echo(f"plot: {path}")
