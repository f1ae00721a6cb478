"""The `nas` command: spaces | profile | search | export | report.

Thin by design: each command parses flags, calls one library function and prints.
Results go to stdout (a table, or JSON with `--json`); logs and progress to stderr.
A `UserError` prints one line and exits 2 (a traceback only with `--debug`); any
other failure exits 1. Heavy libraries are imported inside commands, so
`nas --help` loads neither torch nor ray.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from nas.errors import NasError, UserError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Hardware-aware neural architecture search. Example: nas search --space proxylessnas --trials 20",
)
_state = {"debug": False}


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    _state["debug"] = debug
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=1, sort_keys=True, default=str))


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        if column in _FIXED_COLUMNS:
            table.add_column(column, no_wrap=True, min_width=_FIXED_COLUMNS[column])
        else:
            table.add_column(column, justify="left" if column in _TEXT_COLUMNS else "right")
    for row in rows:
        table.add_row(*[str(v) for v in row])
    Console(soft_wrap=True).print(table)


_FIXED_COLUMNS = {"arch": 12}  # hashes show 12 hex digits even on an 80-column terminal
_TEXT_COLUMNS = {"feasible", "space", "presets", "decision", "choice", "arch", "key", "node", "format", "path"}


def _fmt(value: Any, scale: float = 1.0, digits: int = 3) -> str:
    from nas.report import fmt

    return fmt(value, scale, digits)


@app.command()
def spaces(
    name: Annotated[str | None, typer.Argument(help="A space to describe.")] = None,
    preset: Annotated[str | None, typer.Option(help="A published arch to describe (names are unique).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List spaces, or describe one space or preset.

    Example: nas spaces proxylessnas --preset proxyless_mobile
    """
    from nas.registry import SPACES
    from nas.space import find_preset, load_space

    if preset is not None:
        arch = find_preset(preset)
        if name is not None and arch.space != name:
            raise UserError(f"preset {preset!r} belongs to space {arch.space!r}, not {name!r}")
        _describe_arch(arch, preset, as_json)
        return
    names = [name] if name else SPACES.names()
    rows = []
    for space_name in names:
        space = load_space(space_name)
        rows.append({"space": space_name, "decisions": len(space.decisions()), "size": space.size(),
                     "presets": space.preset_names()})
    if name is not None:  # one space: is its latency table (this machine's cpu one) of this host's speed?
        from nas.hardware.rescale import scale_warning
        from nas.hardware.store import default_device_id, find_table
        from nas.hardware.table import LatencyTable

        path = find_table(default_device_id("cpu"), space)
        warning = scale_warning(LatencyTable.load(path, space, batch=1)) if path is not None else None
        if warning:
            typer.echo(f"WARNING: {warning}", err=True)
    if as_json:
        _echo_json(rows)
        return
    _table("search spaces", ["space", "decisions", "size", "presets"],
           [[r["space"], r["decisions"], f"{r['size']:.3e}", ", ".join(r["presets"])] for r in rows])


def _describe_arch(arch: Any, label: str, as_json: bool) -> None:
    from nas.hardware.rescale import scale_warning
    from nas.hardware.store import default_device_id, table_for_arch
    from nas.space import space_of

    space = space_of(arch)
    cost = space.cost(arch)
    table, note = table_for_arch(arch, default_device_id("cpu"))
    latency = table.predict_keys(space.latency_keys(arch)) if table is not None else None
    warning = scale_warning(table) if table is not None else None
    if warning:
        typer.echo(f"WARNING: {warning}", err=True)
    info = {"name": label, "space": arch.space, "hash": arch.hash, "choices": dict(arch.choices),
            "config": dict(arch.config), "params": cost["params"], "macs": cost["macs"],
            "latency_ms": latency, "latency_table": str(table.path) if table is not None else None,
            "latency_note": note}
    if as_json:
        _echo_json(info)
        return
    _table(f"{label} ({arch.space}, {arch.short_hash})", ["decision", "choice"],
           [[k, v] for k, v in arch.choices.items()])
    typer.echo(f"config: {json.dumps(dict(arch.config), sort_keys=True)}")
    typer.echo(f"params: {cost['params']:,}  MACs: {cost['macs']:,}  LUT latency: {_fmt(latency)} ms ({note})")


Opt = typer.Option


def _default(field: str) -> str:
    """The default of a `RunConfig` key, for help texts (the one place defaults live)."""
    from nas.config import RunConfig

    return str(RunConfig.model_fields[field].default)


def SOpt(help: str, default: str | None = None) -> Any:  # noqa: N802 (reads like typer.Option)
    """A `search` option whose help shows `default` (typer's own default is None: unset, so the
    run config YAML or the defaults in one place decide)."""
    text = help if default is None else f"{help} \\[default: {default}]"  # \[ : a literal [ in rich markup
    return typer.Option(help=text, show_default=False)


@app.command()
def search(
    space: Annotated[str | None, SOpt("Search space (see `nas spaces`).", _default("space"))] = None,
    strategy: Annotated[str | None, SOpt("random | evolution.", _default("strategy"))] = None,
    evaluator: Annotated[str | None, SOpt("lut | train.", _default("evaluator"))] = None,
    trials: Annotated[int | None, SOpt("Budget: distinct archs to evaluate.", _default("trials"))] = None,
    seed: Annotated[int | None, SOpt("Seed of the strategy.", _default("seed"))] = None,
    metric: Annotated[str | None, SOpt("accuracy | latency_ms | params | macs.",
                                       "the evaluator's: accuracy (train), macs (lut)")] = None,
    mode: Annotated[str | None, SOpt("max | min.", "max")] = None,
    max_latency_ms: Annotated[float | None, SOpt("Latency bound (ms, from the LUT).", "none")] = None,
    max_params: Annotated[int | None, SOpt("Parameter bound.", "none")] = None,
    hardware: Annotated[str | None, SOpt("Latency table: a device id or a table file.",
                                         "this machine's CPU table")] = None,
    data: Annotated[str | None, SOpt("digits | cifar10 (train evaluator).", "digits")] = None,
    data_dir: Annotated[Path | None, SOpt("Directory of a CIFAR-10 python-pickle data set.")] = None,
    epochs: Annotated[int | None, SOpt("Training epochs per arch (train evaluator).", "2")] = None,
    resolution: Annotated[int | None, SOpt("Input resolution.", "the space YAML's")] = None,
    classes: Annotated[int | None, SOpt("Number of classes.", "the space YAML's")] = None,
    width_mult: Annotated[float | None, SOpt("Width multiplier.", "the space YAML's")] = None,
    population_size: Annotated[int | None, SOpt("Evolution population.", "strategies/evolution.yaml")] = None,
    sample_size: Annotated[int | None, SOpt("Evolution tournament size.", "strategies/evolution.yaml")] = None,
    archs_per_trial: Annotated[int | None, SOpt("Archs scored by one Ray Tune trial.",
                                                "1 (train), 2048 (lut)")] = None,
    cpus_per_trial: Annotated[float | None, SOpt("CPUs reserved per trial.", _default("cpus_per_trial"))] = None,
    config: Annotated[Path | None, SOpt("Run-config YAML; flags override its keys.")] = None,
    run_dir: Annotated[Path | None, SOpt("Run directory; re-running the same command resumes.",
                                         "runs/<space>-<strategy>-<evaluator>")] = None,
    address: Annotated[str | None, SOpt("Ray cluster to join (auto, host:port).",
                                        "a private local cluster")] = None,
    num_cpus: Annotated[int | None, SOpt("CPUs of the local Ray cluster.", "all of this machine's")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print the best archs as JSON.")] = False,
) -> None:
    """Search a space on a Ray cluster; re-running the same command resumes.

    Example: nas search --space proxylessnas --strategy evolution --evaluator train --trials 20 --max-latency-ms 9.5
    """
    from nas.config import merge_run_config
    from nas.runner import run_search

    flags = {
        "space": space, "strategy": strategy, "evaluator": evaluator, "trials": trials, "seed": seed,
        "hardware": hardware, "archs_per_trial": archs_per_trial, "cpus_per_trial": cpus_per_trial,
        "objective.metric": metric, "objective.mode": mode, "objective.max_latency_ms": max_latency_ms,
        "objective.max_params": max_params, "space_config.resolution": resolution,
        "space_config.num_classes": classes, "space_config.width_mult": width_mult,
        "strategy_config.population_size": population_size, "strategy_config.sample_size": sample_size,
        "evaluator_config.data": data, "evaluator_config.data_dir": data_dir, "evaluator_config.epochs": epochs,
    }
    if num_cpus is not None and num_cpus < 1:
        raise UserError(f"--num-cpus: must be at least 1; got {num_cpus}")
    run_config = merge_run_config(config, flags)
    run_dir = run_dir or Path("runs") / f"{run_config.space}-{run_config.strategy}-{run_config.evaluator}"
    with _progress_reporter(run_config.trials) as progress:
        result = run_search(run_config, run_dir, address=address, num_cpus=num_cpus, progress=progress,
                            notify=lambda line: typer.echo(line, err=True))
    if as_json:
        _echo_json(result.best)
        return
    _print_best(result)
    typer.echo(f"run dir: {run_dir.resolve()}")


def _print_best(result: Any) -> None:
    """The best archs with a feasibility column, then the summary lines (see `nas.report`)."""
    from nas.report import best_rows, search_summary

    title, columns, rows = best_rows(result)
    _table(title, columns, rows)
    for line in search_summary(result):
        typer.echo(line)


def _progress_reporter(total: int) -> Any:
    from nas.progress import progress_reporter

    return progress_reporter(total)


@app.command()
def profile(
    space: Annotated[str, Opt(help="Space to profile (see `nas spaces`).")] = "proxylessnas",
    device: Annotated[str, Opt(help="cpu | onnxruntime | onnxruntime_cuda | cuda.")] = "cpu",
    batch: Annotated[int, Opt(help="Batch size.")] = 1,
    dtype: Annotated[str, Opt(help="fp32 | fp16 | bf16 (fp16 and bf16 on cuda only).")] = "fp32",
    threads: Annotated[int, Opt(help="Intra-op threads (fixed and recorded).")] = 1,
    preset: Annotated[str | None, Opt(help="Profile at this preset's config (widths, classes, resolution).")] = None,
    resolution: Annotated[int | None, Opt(help="Input resolution. [default: space YAML or preset]")] = None,
    classes: Annotated[int | None, Opt(help="Number of classes. [default: space YAML or preset]")] = None,
    width_mult: Annotated[float | None, Opt(help="Width multiplier. [default: space YAML or preset]")] = None,
    n_validate: Annotated[int, Opt(help="Held-out random archs timed end to end.")] = 100,
    seed: Annotated[int, Opt(help="Seed of the fit and validation archs.")] = 0,
    validate: Annotated[bool, Opt("--validate", help="Only re-run the validation of an existing table.")] = False,
    rescale: Annotated[bool, Opt("--rescale", help="Time the table's reference network here and write a copy "
                                 "rescaled to this host's speed.")] = False,
    table: Annotated[Path | None, Opt(help="The table to --validate or --rescale. [default: --out if it exists, "
                                      "else the table of --space/--device/--resolution]")] = None,
    out: Annotated[Path | None, Opt(help="Table file to write. [default: <device-id>/<space>-r<R>.yaml in the user "
                                    "profiles dir: $NAS_PROFILES_DIR, else ~/.local/share/nas/hardware_profiles]")]
    = None,
    as_json: Annotated[bool, Opt("--json", help="Print the validation report (or the rescale) as JSON.")] = False,
) -> None:
    """Measure a latency table for a space on this machine, then validate it end to end.

    Tables go to the user profiles dir; a committed table under hardware_profiles/ is replaced
    only when --out names it.

    Example: nas profile --space proxylessnas --device cpu --resolution 224
    """
    from nas.hardware import store
    from nas.hardware.profile import profile as run_profile
    from nas.hardware.profile import validate as run_validate
    from nas.hardware.rescale import rescale as run_rescale
    from nas.hardware.table import LatencyTable
    from nas.registry import TIMERS
    from nas.space import find_preset, load_space

    if validate and rescale:
        raise UserError("--validate and --rescale: give at most one")
    if table is not None and not (validate or rescale):
        raise UserError(f"--table {table}: names the table to --validate or --rescale; a new table goes to --out")
    if n_validate < 2:
        raise UserError(f"--n-validate must be at least 2 (Spearman needs two archs); got {n_validate}")
    overrides = {k: v for k, v in {"resolution": resolution, "num_classes": classes,
                                   "width_mult": width_mult}.items() if v is not None}
    if preset is not None:
        arch = find_preset(preset)
        if arch.space != space:
            raise UserError(f"--preset {preset} belongs to space {arch.space!r}, not {space!r}; "
                            f"add --space {arch.space}")
        overrides = {**arch.config, **overrides}
    space_obj = load_space(space, overrides)
    given = table or (out if out is not None and out.is_file() else None)
    if rescale:
        source = store.load_bound(given) if given else store.resolve_table(
            store.default_device_id(device, threads, batch, dtype), space_obj, batch)
        meta = source.metadata
        path = out or store.table_path(store.default_device_id(meta.backend, meta.threads, meta.batch, meta.dtype),
                                       load_space(meta.space, meta.space_config))
        _check_writable(path)
        rescaled, factor = run_rescale(source)
        store.write_table(rescaled, path)
        record = rescaled.metadata.rescaled
        result = {"scale": factor, "table_scale": record.scale, "measured_ms": record.measured_ms,
                  "stored_ms": record.stored_ms, "source": str(source.path), "table": str(path)}
        if as_json:
            _echo_json(result)
            return
        typer.echo(f"scale {factor:.3f}: this host ran the reference network in {record.measured_ms:.4g} ms, "
                   f"the table {source.path} says {record.stored_ms:.4g} ms\nrescaled table (scale "
                   f"{record.scale:.3f} of the measured one): {path}")
        return
    timer = TIMERS.get(device)(threads=threads, batch=batch, dtype=dtype)
    path = out or store.table_path(timer.device_id, space_obj)
    _check_writable(path)
    with _stage_reporter() as progress:
        if validate:
            source = LatencyTable.load(given, space_obj, batch) if given else store.resolve_table(
                timer.device_id, space_obj, batch)
            report = run_validate(source, space_obj, timer, n=n_validate, progress=progress, out_path=path)
        else:
            report = run_profile(space_obj, timer, batch, path, n_validate=n_validate, seed=seed,
                                 progress=progress).validation.model_dump()
    if as_json:
        _echo_json(report)
        return
    _print_report(report, timer.device_id, path)


def _check_writable(path: Path) -> None:
    """Refuse an unwritable table path before minutes of timing; remove temp files of killed earlier writers."""
    import tempfile

    from nas.hardware.store import remove_stale

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".probe-"):
            pass
    except OSError as err:
        raise UserError(f"--out: cannot write {path} ({err.strerror}); choose a writable --out (or set "
                        f"NAS_PROFILES_DIR)") from None
    remove_stale(path)


def _print_report(report: dict[str, Any], device_id: str, path: Path) -> None:
    rows = []
    for label, figures in (("table (corrected)", report), ("naive sum", report.get("naive") or {})):
        if figures:
            rows.append([label, f"{figures['mape']:.2f}", f"{figures['within_5']:.0%}",
                         f"{figures['within_10']:.0%}", f"{figures['spearman']:.3f}"])
    _table(f"validation on {report['n_archs']} held-out archs, {device_id}",
           ["predictor", "MAPE %", "within 5%", "within 10%", "Spearman"], rows)
    typer.echo(f"re-measurement noise: {report['noise']:.2f}%   table: {path}")
    if not report.get("passes", False):
        from nas.hardware.profile import missed_criteria

        typer.echo(f"WARNING: the table misses the accuracy bar: {'; '.join(missed_criteria(report))}", err=True)


def _stage_reporter() -> Any:
    from nas.progress import stage_reporter

    return stage_reporter()


@app.command("export")
def export_cmd(
    run_dir: Annotated[Path | None, Opt(help="Run dir of a search; exports the arch at --rank.")] = None,
    rank: Annotated[int, Opt(help="Rank in the run's best.json (1 = best).")] = 1,
    arch: Annotated[Path | None, Opt(help="An arch JSON file.")] = None,
    preset: Annotated[str | None, Opt(help="A published arch by name.")] = None,
    format: Annotated[str, Opt(help="Comma-separated: json,pt,torchscript,onnx.")] = "json,pt,torchscript,onnx",
    out: Annotated[Path, Opt(help="Output directory.")] = Path("exported"),
    as_json: Annotated[bool, Opt("--json", help="Print the written files as JSON.")] = False,
) -> None:
    """Export an arch to JSON, a PyTorch state dict, TorchScript and ONNX, verifying each file.

    Example: nas export --run-dir runs/demo --rank 1 --format json,pt,torchscript,onnx --out exported
    """
    from nas.export import export, pick_arch

    chosen = pick_arch(run_dir, rank, arch, preset)
    written = export(chosen, [f.strip() for f in format.split(",") if f.strip()], out)
    rows = [{"format": name, "path": str(e.path), "max_abs_diff": e.max_abs_diff} for name, e in written.items()]
    if as_json:
        _echo_json({"arch": chosen.hash, "files": rows})
        return
    _table(f"exported {chosen.space} {chosen.short_hash}", ["format", "path", "max |diff| vs PyTorch"],
           [[r["format"], r["path"], "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}"]
            for r in rows])


def main() -> None:
    """Console entry point: run the app, turning errors into exit statuses 2 and 1."""
    from typer.exceptions import TyperException

    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        sys.exit(1)
    except TyperException as err:  # typer's click: usage errors (bad flag or value), exit 2
        ctx = getattr(err, "ctx", None)
        if type(err).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help(), err=True)
        else:
            where = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
            typer.echo(f"error: {err.format_message()}{where}", err=True)
        sys.exit(getattr(err, "exit_code", 2))
    except KeyboardInterrupt:  # a Ctrl+C before the search installed its own handler
        typer.echo("stopped; re-run the same command to resume", err=True)
        sys.exit(130)
    except UserError as err:
        if _state["debug"]:
            raise
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except NasError as err:
        signum = getattr(err, "signum", None)  # nas.runner.Interrupted, without importing ray here
        if signum is not None:
            typer.echo(str(err), err=True)
            sys.exit(128 + signum)
        if _state["debug"]:
            raise
        typer.echo(f"failed: {err}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
