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
import re
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from nas.cli_help import search_help
from nas.cli_output import echo_json, fmt, table
from nas.cli_profile import profile
from nas.cli_report import report
from nas.cli_supernet import supernet_app
from nas.cli_train import train
from nas.errors import NasError, UserError, shorten
from nas.limits import check_num_cpus, check_path

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
        echo_json(rows)
        return
    table("search spaces", ["space", "decisions", "size", "presets"],
           [[r["space"], r["decisions"], f"{r['size']:.3e}", ", ".join(r["presets"])] for r in rows])


def _describe_arch(arch: Any, label: str, as_json: bool) -> None:
    from nas.hardware.rescale import scale_warning
    from nas.hardware.store import default_device_id, table_for_arch
    from nas.space import space_of

    space = space_of(arch)
    cost = space.cost(arch)
    lut, note = table_for_arch(arch, default_device_id("cpu"))
    latency = lut.predict_keys(space.latency_keys(arch)) if lut is not None else None
    warning = scale_warning(lut) if lut is not None else None
    if warning:
        typer.echo(f"WARNING: {warning}", err=True)
    info = {"name": label, "space": arch.space, "hash": arch.hash, "choices": dict(arch.choices),
            "config": dict(arch.config), "params": cost["params"], "macs": cost["macs"],
            "latency_ms": latency, "latency_table": str(lut.path) if lut is not None else None,
            "latency_note": note}
    if as_json:
        echo_json(info)
        return
    table(f"{label} ({arch.space}, {arch.short_hash})", ["decision", "choice"],
           [[k, v] for k, v in arch.choices.items()])
    typer.echo(f"config: {json.dumps(dict(arch.config), sort_keys=True)}")
    typer.echo(f"params: {cost['params']:,}  MACs: {cost['macs']:,}  LUT latency: {fmt(latency)} ms ({note})")


Opt = typer.Option


@app.command()
def strategies(
    name: Annotated[str | None, typer.Argument(help="One strategy to describe.")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print as JSON.")] = False,
) -> None:
    """List the search strategies with the objective kinds they take and their options (set with --set)."""
    from nas.cli_help import strategy_rows

    rows = strategy_rows(name)
    columns = ["strategy", "objectives", "option", "default", "allowed"]
    if as_json:
        echo_json([dict(zip(columns, row, strict=True)) for row in rows])
        return
    table("search strategies (nas search --strategy NAME --set OPTION=VALUE)", columns, rows)


def SOpt(help: str, default: str | None = None, metavar: str | None = None) -> Any:  # noqa: N802 (like typer.Option)
    """A `search` option whose help shows `default` (typer's own default is None: unset, so the
    run config YAML or the defaults in one place decide)."""
    text = help if default is None else f"{help} \\[default: {default}]"  # \[ : a literal [ in rich markup
    return typer.Option(help=text, show_default=False, metavar=metavar)


_HELP, _DEFAULT = search_help()


def _asha_option(field: str, text: str) -> Any:
    """A `search` option of ASHA whose help shows its range and default, read from `RunConfig`."""
    from nas.config import Scheduler, describe_bounds

    return SOpt(f"{text} (with --scheduler asha); {describe_bounds(Scheduler, field)}.",
                str(Scheduler.model_fields[field].default))


@app.command()
def search(
    space: Annotated[str | None, SOpt("Search space (see `nas spaces`).", _DEFAULT["space"])] = None,
    strategy: Annotated[str | None, SOpt("Search strategy (see `nas strategies`).", _DEFAULT["strategy"])] = None,
    evaluator: Annotated[str | None, SOpt(_HELP["evaluator"], _DEFAULT["evaluator"])] = None,
    trials: Annotated[int | None, SOpt(_HELP["trials"], _DEFAULT["trials"])] = None,
    seed: Annotated[int | None, SOpt(_HELP["seed"], _DEFAULT["seed"])] = None,
    objective: Annotated[str | None, SOpt("constrained (one metric, hard bounds) | weighted (accuracy x "
                                          "(latency/T)^w) | pareto (two or more metrics).", "constrained")] = None,
    metric: Annotated[str | None, SOpt("Metric to optimise (constrained, weighted): one the evaluator measures, "
                                       "e.g. accuracy, latency_ms, params, macs.",
                                       "the evaluator's: accuracy (train, tabular), macs (lut)")] = None,
    mode: Annotated[str | None, SOpt("max | min.", _DEFAULT["mode"])] = None,
    metrics: Annotated[str | None, SOpt("Pareto metrics with directions, e.g. accuracy:max,latency_ms:min.",
                                        metavar="M:DIR,...")] = None,
    target_ms: Annotated[float | None, SOpt(_HELP["target_ms"], "none")] = None,
    alpha: Annotated[float | None, SOpt(_HELP["alpha"], _DEFAULT["alpha"])] = None,
    beta: Annotated[float | None, SOpt(_HELP["beta"], _DEFAULT["beta"])] = None,
    max_latency_ms: Annotated[float | None, SOpt(_HELP["max_latency_ms"], "none")] = None,
    max_params: Annotated[int | None, SOpt(_HELP["max_params"], "none")] = None,
    hardware: Annotated[str | None, SOpt("Latency table: a device id or a table file.",
                                         "this machine's CPU table")] = None,
    data: Annotated[str | None, SOpt("digits | cifar10 (train evaluator).", _DEFAULT["data"])] = None,
    data_dir: Annotated[str | None, SOpt("Directory of a CIFAR-10 python-pickle data set (cifar10 only; digits "
                                         "ships with scikit-learn).", metavar="PATH")] = None,
    epochs: Annotated[int | None, SOpt(_HELP["epochs"], _DEFAULT["epochs"])] = None,
    checkpoint: Annotated[str | None, SOpt("Run dir of `nas supernet train` (supernet evaluator): archs inherit "
                                           "its newest checkpoint's weights.", metavar="PATH")] = None,
    resolution: Annotated[int | None, SOpt(_HELP["resolution"], "the space YAML's")] = None,
    classes: Annotated[int | None, SOpt(_HELP["classes"], "the space YAML's")] = None,
    width_mult: Annotated[float | None, SOpt(_HELP["width_mult"], "the space YAML's")] = None,
    population_size: Annotated[int | None, SOpt(_HELP["population_size"], _DEFAULT["population_size"])] = None,
    sample_size: Annotated[int | None, SOpt(_HELP["sample_size"], _DEFAULT["sample_size"])] = None,
    set_: Annotated[list[str] | None, Opt("--set", metavar="KEY=VALUE", help="A strategy option (see `nas "
                                          "strategies NAME`), e.g. --set population_size=64; repeatable.")] = None,
    archs_per_trial: Annotated[int | None, SOpt(_HELP["archs_per_trial"],
                                                "what the strategy learns between, at most 2048 (lut)")] = None,
    cpus_per_trial: Annotated[float | None, SOpt(_HELP["cpus_per_trial"], _DEFAULT["cpus_per_trial"])] = None,
    scheduler: Annotated[str | None, SOpt("fifo (every arch trains all its epochs) | asha (Ray Tune's ASHA stops "
                                          "archs whose accuracy after an epoch ranks low; train evaluator).",
                                          "fifo")] = None,
    asha_grace_period: Annotated[int | None, _asha_option("grace_period", "Epochs every arch trains before "
                                                          "ASHA may stop it")] = None,
    asha_reduction_factor: Annotated[float | None, _asha_option("reduction_factor", "ASHA keeps 1 in this "
                                                                "many archs at each rung")] = None,
    config: Annotated[str | None, SOpt("Run-config YAML; flags override its keys.", metavar="PATH")] = None,
    run_dir: Annotated[str | None, SOpt("Run directory; re-running the same command resumes.",
                                        "runs/<space>-<strategy>-<evaluator>", metavar="PATH")] = None,
    address: Annotated[str | None, SOpt("Ray cluster to join (auto, host:port).",
                                        "a private local cluster")] = None,
    num_cpus: Annotated[int | None, SOpt(_HELP["num_cpus"], "all of this machine's")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print the best archs as JSON.")] = False,
) -> None:
    """Search a space on a Ray cluster; re-running the same command resumes.

    Example: nas search --space proxylessnas --strategy evolution --evaluator train --trials 20 --max-latency-ms 9.5
    """
    from nas.config import merge_run_config, parse_metric_directions, parse_set_options

    # Every flag is checked before anything is read or written (data_dir and hardware: by the run config).
    config_path, chosen_dir = check_path(config, "--config"), check_path(run_dir, "--run-dir")
    check_num_cpus(num_cpus)
    options = parse_set_options(set_ or [], "--set")
    flags = {
        "space": space, "strategy": strategy, "evaluator": evaluator, "trials": trials, "seed": seed,
        "hardware": hardware, "archs_per_trial": archs_per_trial, "cpus_per_trial": cpus_per_trial,
        "objective.kind": objective, "objective.metric": metric, "objective.mode": mode,
        "objective.metrics": parse_metric_directions(metrics, "--metrics"), "objective.target_ms": target_ms,
        "objective.alpha": alpha, "objective.beta": beta, "objective.max_latency_ms": max_latency_ms,
        "objective.max_params": max_params, "space_config.resolution": resolution,
        "space_config.num_classes": classes, "space_config.width_mult": width_mult,
        "strategy_config.population_size": population_size, "strategy_config.sample_size": sample_size,
        "evaluator_config.data": data, "evaluator_config.data_dir": data_dir, "evaluator_config.epochs": epochs,
        "evaluator_config.checkpoint": None if checkpoint is None else str(check_path(checkpoint, "--checkpoint")),
        "scheduler.kind": scheduler, "scheduler.grace_period": asha_grace_period,
        "scheduler.reduction_factor": asha_reduction_factor,
        **{f"strategy_config.{key}": value for key, value in options.items()},
    }
    run_config = merge_run_config(config_path, flags, {f"strategy_config.{key}": f"--set {key}" for key in options})
    from nas.runner import run_search  # only now: Ray takes seconds to import, a typo should not wait for it

    chosen_dir = chosen_dir or Path("runs") / f"{run_config.space}-{run_config.strategy}-{run_config.evaluator}"
    with _progress_reporter(run_config.trials) as progress:
        result = run_search(run_config, chosen_dir, address=address, num_cpus=num_cpus, progress=progress,
                            notify=lambda line: typer.echo(line, err=True))
    if as_json:
        echo_json(result.best)
        return
    _print_best(result)
    typer.echo(f"run dir: {chosen_dir.resolve()}")


def _print_best(result: Any) -> None:
    """The best archs with a feasibility column, then the summary lines (see `nas.report`)."""
    from rich.console import Console

    from nas.report import best_table, search_summary

    console = Console()
    console.print(best_table(result, console.width))
    for line in search_summary(result):
        typer.echo(line)


def _progress_reporter(total: int) -> Any:
    from nas.progress import progress_reporter

    return progress_reporter(total)


app.command()(profile)
app.command()(report)
app.add_typer(supernet_app, name="supernet")
app.command("train")(train)


@app.command("export")
def export_cmd(
    run_dir: Annotated[str | None, Opt(help="Run dir of a search; exports the arch at --rank.", metavar="PATH")] = None,
    rank: Annotated[int, Opt(help="Rank in the run's best.json (1 = best).")] = 1,
    arch: Annotated[str | None, Opt(help="An arch JSON file.", metavar="PATH")] = None,
    preset: Annotated[str | None, Opt(help="A published arch by name.")] = None,
    format: Annotated[str, Opt(help="Comma-separated: json,pt,torchscript,onnx.")] = "json,pt,torchscript,onnx",
    out: Annotated[str, Opt(help="Output directory.", metavar="PATH")] = "exported",
    weights: Annotated[str | None, Opt(help="`nas train` output dir whose weights to export (default: "
                                       "RUN_DIR/train-rank<N> when it exists; else untrained).",
                                       metavar="PATH")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print the written files as JSON.")] = False,
) -> None:
    """Export an arch to JSON, a PyTorch state dict, TorchScript and ONNX, verifying each file.

    Example: nas export --run-dir runs/demo --rank 1 --format json,pt,torchscript,onnx --out exported
    """
    from nas.export import UNTRAINED, export
    from nas.export_source import find_weights, load_trained, pick_arch

    run_path, arch_path, out_path, weights_path = (check_path(v, f) for v, f in (
        (run_dir, "--run-dir"), (arch, "--arch"), (out, "--out"), (weights, "--weights")))
    chosen = pick_arch(run_path, rank, arch_path, preset)
    found = find_weights(run_path, rank, weights_path)
    model, source = load_trained(chosen, found) if found is not None else (None, None)
    written = export(chosen, [f.strip() for f in format.split(",") if f.strip()], out_path, model=model,
                     weights=source)
    if source is None:  # after the export: a refused one has nothing to say about weights
        typer.echo(f"note: exported an {UNTRAINED} network: no trained weights for it; train it with `nas train` "
                   "and export again (or --weights DIR)", err=True)
    rows = [{"format": name, "path": str(e.path), "max_abs_diff": e.max_abs_diff} for name, e in written.items()]
    if as_json:
        echo_json({"arch": chosen.hash, "files": rows, "trained": source is not None,
                   "weights": source or UNTRAINED})
        return
    table(f"exported {chosen.space} {chosen.short_hash}", ["format", "path", "max |diff| vs PyTorch"],
           [[r["format"], r["path"], "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}"]
            for r in rows])


class _Terminated(KeyboardInterrupt):
    """SIGTERM before a command installed its own handler (`nas.interrupts`): stopped as a Ctrl+C is."""

    signum = signal.SIGTERM


def _terminated(signum: int, frame: Any) -> None:
    raise _Terminated


def main() -> None:
    """Console entry point: run the app, turning errors into exit statuses 2 and 1."""
    from typer.exceptions import TyperException

    # Until a search installs its handlers (after seconds of imports), SIGTERM would end the process
    # without a word; raised here, it unwinds like a Ctrl+C: every write is atomic, so nothing half-done stays.
    signal.signal(signal.SIGTERM, _terminated)
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
            typer.echo(f"error: {_cut_long_words(err.format_message())}{where}", err=True)
        sys.exit(getattr(err, "exit_code", 2))
    except KeyboardInterrupt as err:  # a Ctrl+C or SIGTERM before the search installed its own handler
        typer.echo("stopped; re-run the same command to resume", err=True)
        sys.exit(128 + getattr(err, "signum", signal.SIGINT))
    except UserError as err:
        if _state["debug"]:
            raise
        typer.echo(f"error: {_cut_long_words(str(err))}", err=True)
        sys.exit(2)
    except NasError as err:
        signum = getattr(err, "signum", None)  # nas.runner.Interrupted, without importing ray here
        if signum is not None:
            typer.echo(str(err), err=True)
            sys.exit(128 + signum)
        if _state["debug"]:
            raise
        typer.echo(f"failed: {_cut_long_words(str(err))}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _cut_long_words(message: str) -> str:
    """`message` on one line with every run of over 200 non-blank characters cut short (`shorten`):
    a value echoed whole (a 130 KB path in an OS error, say) must not make a 130 KB line."""
    return re.sub(r"\S{201,}", lambda m: shorten(m.group(), 120), " ".join(message.splitlines()))


if __name__ == "__main__":
    main()
