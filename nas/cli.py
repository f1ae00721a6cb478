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
        table.add_column(column, justify="left" if column in _TEXT_COLUMNS else "right")
    for row in rows:
        table.add_row(*[str(v) for v in row])
    Console(soft_wrap=True).print(table)


_TEXT_COLUMNS = {"space", "presets", "decision", "choice", "arch", "key", "node", "format", "path"}


def _fmt(value: Any, scale: float = 1.0, digits: int = 3) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


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
    if as_json:
        _echo_json(rows)
        return
    _table("search spaces", ["space", "decisions", "size", "presets"],
           [[r["space"], r["decisions"], f"{r['size']:.3e}", ", ".join(r["presets"])] for r in rows])


def _describe_arch(arch: Any, label: str, as_json: bool) -> None:
    from nas.hardware.table import resolve_table
    from nas.space import space_of

    space = space_of(arch)
    cost = space.cost(arch)
    try:
        table = resolve_table(None, space, batch=1)
        latency, device = table.predict(arch), table.metadata.device_id
    except UserError as err:
        latency, device = None, f"no table ({err})"
    info = {"name": label, "space": arch.space, "hash": arch.hash, "choices": dict(arch.choices),
            "config": dict(arch.config), "params": cost["params"], "macs": cost["macs"],
            "latency_ms": latency, "latency_table": device}
    if as_json:
        _echo_json(info)
        return
    _table(f"{label} ({arch.space}, {arch.short_hash})", ["decision", "choice"],
           [[k, v] for k, v in arch.choices.items()])
    typer.echo(f"config: {json.dumps(dict(arch.config), sort_keys=True)}")
    typer.echo(f"params: {cost['params']:,}  MACs: {cost['macs']:,}  "
               f"LUT latency: {_fmt(latency)} ms ({device})")


Opt = typer.Option


@app.command()
def search(
    space: Annotated[str | None, Opt(help="Search space (see `nas spaces`). [default: proxylessnas]")] = None,
    strategy: Annotated[str | None, Opt(help="random | evolution. [default: evolution]")] = None,
    evaluator: Annotated[str | None, Opt(help="lut | train. [default: train]")] = None,
    trials: Annotated[int | None, Opt(help="Budget: archs to evaluate. [default: 20]")] = None,
    seed: Annotated[int | None, Opt(help="Seed of the strategy. [default: 0]")] = None,
    metric: Annotated[str | None, Opt(help="accuracy | latency_ms | params | macs. [default: evaluator's]")] = None,
    mode: Annotated[str | None, Opt(help="max | min. [default: max]")] = None,
    max_latency_ms: Annotated[float | None, Opt(help="Latency bound (ms, from the LUT).")] = None,
    max_params: Annotated[int | None, Opt(help="Parameter bound.")] = None,
    hardware: Annotated[str | None, Opt(help="Latency table: a device id under hardware_profiles/ or a file.")] = None,
    data: Annotated[str | None, Opt(help="digits | cifar10 (train evaluator). [default: digits]")] = None,
    data_dir: Annotated[Path | None, Opt(help="Directory of a CIFAR-10 python-pickle data set.")] = None,
    epochs: Annotated[int | None, Opt(help="Training epochs per arch (train evaluator). [default: 2]")] = None,
    resolution: Annotated[int | None, Opt(help="Input resolution. [default: space YAML]")] = None,
    classes: Annotated[int | None, Opt(help="Number of classes. [default: space YAML]")] = None,
    width_mult: Annotated[float | None, Opt(help="Width multiplier. [default: space YAML]")] = None,
    population_size: Annotated[int | None, Opt(help="Evolution population. [default: evolution.yaml]")] = None,
    sample_size: Annotated[int | None, Opt(help="Evolution tournament size.")] = None,
    archs_per_trial: Annotated[int | None, Opt(help="Archs scored by one Ray Tune trial.")] = None,
    cpus_per_trial: Annotated[float | None, Opt(help="CPUs reserved per trial. [default: 1]")] = None,
    config: Annotated[Path | None, Opt(help="Run-config YAML; flags override its keys.")] = None,
    run_dir: Annotated[Path | None, Opt(help="Run directory; re-running the same command resumes.")] = None,
    address: Annotated[str | None, Opt(help="Ray cluster to join (auto, host:port). [default: a local one]")] = None,
    num_cpus: Annotated[int | None, Opt(help="CPUs of the local Ray cluster. [default: all]")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print the best archs as JSON.")] = False,
) -> None:
    """Search a space on a Ray cluster; re-running the same command resumes.

    Example: nas search --space proxylessnas --strategy evolution --evaluator train --trials 20 --max-latency-ms 6
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
    run_config = merge_run_config(config, flags)
    run_dir = run_dir or Path("runs") / f"{run_config.space}-{run_config.strategy}-{run_config.evaluator}"
    with _progress_reporter(run_config.trials) as progress:
        best = run_search(run_config, run_dir, address=address, num_cpus=num_cpus, progress=progress)
    if as_json:
        _echo_json(best)
    else:
        _print_best(best)
        typer.echo(f"run dir: {run_dir.resolve()}")


def _print_best(records: list[dict[str, Any]]) -> None:
    rows = []
    for rank, r in enumerate(records, 1):
        m = r["metrics"]
        rows.append([rank, r["hash"][:12], _fmt(m.get("accuracy")), _fmt(m.get("latency_ms")),
                     _fmt(m["params"], 1e6), _fmt(m["macs"], 1e6), f"{r['score']:.4g}"])
    _table("best architectures", ["rank", "arch", "accuracy", "latency ms (LUT)", "params M", "MACs M", "score"],
           rows)


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
    resolution: Annotated[int | None, Opt(help="Input resolution. [default: space YAML]")] = None,
    classes: Annotated[int | None, Opt(help="Number of classes. [default: space YAML]")] = None,
    width_mult: Annotated[float | None, Opt(help="Width multiplier. [default: space YAML]")] = None,
    n_validate: Annotated[int, Opt(help="Held-out random archs timed end to end.")] = 100,
    seed: Annotated[int, Opt(help="Seed of the fit and validation archs.")] = 0,
    validate: Annotated[bool, Opt("--validate", help="Only re-run the validation of the existing table.")] = False,
    out: Annotated[Path | None, Opt(help="Table file. [default: hardware_profiles/<device-id>/<space>-r<R>.yaml]")]
    = None,
    as_json: Annotated[bool, Opt("--json", help="Print the validation report as JSON.")] = False,
) -> None:
    """Measure a latency table for a space on this machine, then validate it end to end.

    Example: nas profile --space proxylessnas --device cpu --batch 1
    """
    from nas.hardware.profile import profile as run_profile
    from nas.hardware.profile import validate as run_validate
    from nas.hardware.table import LatencyTable, table_path
    from nas.registry import TIMERS
    from nas.space import load_space

    if n_validate < 2:
        raise UserError(f"--n-validate must be at least 2 (Spearman needs two archs); got {n_validate}")
    overrides = {k: v for k, v in {"resolution": resolution, "num_classes": classes,
                                   "width_mult": width_mult}.items() if v is not None}
    space_obj = load_space(space, overrides)
    timer = TIMERS.get(device)(threads=threads, batch=batch, dtype=dtype)
    path = out or table_path(timer.device_id, space_obj)
    with _stage_reporter() as progress:
        if validate:
            report = run_validate(LatencyTable.load(path, space_obj, batch), space_obj, timer, n=n_validate,
                                  progress=progress, out_path=path)
        else:
            _check_writable(path)
            report = run_profile(space_obj, timer, batch, path, n_validate=n_validate, seed=seed,
                                 progress=progress).validation.model_dump()
    if as_json:
        _echo_json(report)
        return
    _print_report(report, timer.device_id, path)


def _check_writable(path: Path) -> None:
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".probe-"):
            pass
    except OSError as err:
        raise UserError(f"--out: cannot write {path} ({err.strerror}); choose a writable path") from None


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
        typer.echo("WARNING: the table misses the accuracy bar (95% within 10%, Spearman 0.95)", err=True)


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
    from nas.export import export

    chosen = _pick_arch(run_dir, rank, arch, preset)
    written = export(chosen, [f.strip() for f in format.split(",") if f.strip()], out)
    rows = [{"format": name, "path": str(e.path), "max_abs_diff": e.max_abs_diff} for name, e in written.items()]
    if as_json:
        _echo_json({"arch": chosen.hash, "files": rows})
        return
    _table(f"exported {chosen.space} {chosen.short_hash}", ["format", "path", "max |diff| vs PyTorch"],
           [[r["format"], r["path"], "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}"]
            for r in rows])


def _pick_arch(run_dir: Path | None, rank: int, arch: Path | None, preset: str | None) -> Any:
    from nas.arch import Arch
    from nas.space import find_preset

    given = [n for n, v in (("--run-dir", run_dir), ("--arch", arch), ("--preset", preset)) if v is not None]
    if len(given) != 1:
        raise UserError(f"give exactly one of --run-dir, --arch, --preset (got {', '.join(given) or 'none'})")
    if preset is not None:
        return find_preset(preset)
    if arch is not None:
        try:
            return Arch.from_json(arch.read_text())
        except OSError as err:
            raise UserError(f"--arch: cannot read {arch} ({err.strerror})") from None
        except (UnicodeDecodeError, UserError) as err:
            raise UserError(f"--arch {arch}: {err}") from None
    best_path = run_dir / "best.json"
    if not best_path.is_file():
        raise UserError(f"--run-dir: {best_path} not found; is {run_dir} the run dir of a finished search?")
    try:
        best = json.loads(best_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"--run-dir: {best_path} is not JSON ({err}); re-run the search to rewrite it") from None
    if not 1 <= rank <= len(best):
        raise UserError(f"--rank must be between 1 and {len(best)} (archs in {best_path}); got {rank}")
    return Arch.from_dict(best[rank - 1]["arch"])


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
    except UserError as err:
        if _state["debug"]:
            raise
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except NasError as err:
        if _state["debug"]:
            raise
        typer.echo(f"failed: {err}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
