"""`nas profile`: measure a latency table on this machine, validate it, or rescale one to this host.

Registered on the app by `nas.cli`; a module of its own because its options and outcomes
(a new table, a validation report, a rescaled copy) are many.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from nas.cli_output import echo_json, table
from nas.errors import UserError, shorten
from nas.limits import MAX_N_VALIDATE, MAX_PROFILE_BATCH, SEED_LIMIT, check_path, check_profile_options

Opt = typer.Option


def profile(
    space: Annotated[str, Opt(help="Space to profile (see `nas spaces`).")] = "proxylessnas",
    device: Annotated[str, Opt(help="cpu | onnxruntime | onnxruntime_cuda | cuda.")] = "cpu",
    batch: Annotated[int, Opt(help=f"Batch size; 1 to {MAX_PROFILE_BATCH}.")] = 1,
    dtype: Annotated[str, Opt(help="fp32 | fp16 | bf16 (fp16 and bf16 on cuda only).")] = "fp32",
    threads: Annotated[int, Opt(help=f"Intra-op threads (fixed and recorded); 1 to this machine's CPUs "
                                f"({os.cpu_count() or 1} here).")] = 1,
    preset: Annotated[str | None, Opt(help="Profile at this preset's config (widths, classes, resolution).")] = None,
    resolution: Annotated[int | None, Opt(help="Input resolution. [default: space YAML or preset]")] = None,
    classes: Annotated[int | None, Opt(help="Number of classes. [default: space YAML or preset]")] = None,
    width_mult: Annotated[float | None, Opt(help="Width multiplier. [default: space YAML or preset]")] = None,
    n_validate: Annotated[int, Opt(help=f"Held-out random archs timed end to end; 2 to {MAX_N_VALIDATE:,}.")] = 100,
    seed: Annotated[int, Opt(help=f"Seed of the fit and validation archs; 0 to {SEED_LIMIT - 1}.")] = 0,
    validate: Annotated[bool, Opt("--validate", help="Only re-run the validation of an existing table.")] = False,
    rescale: Annotated[bool, Opt("--rescale", help="Time the table's reference network here and write a copy "
                                 "rescaled to this host's speed.")] = False,
    table: Annotated[str | None, Opt(help="The table to --validate or --rescale. [default: --out if it exists, "
                                     "else the table of --space/--device/--resolution]", metavar="PATH")] = None,
    out: Annotated[str | None, Opt(help="Table file to write. [default: <device-id>/<space>-r<R>.yaml in the user "
                                   "profiles dir: $NAS_PROFILES_DIR, else ~/.local/share/nas/hardware_profiles]",
                                   metavar="PATH")] = None,
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
    from nas.space import find_preset, load_space, parse_space_config

    # Every option is checked before anything is timed or written.
    check_profile_options(threads=threads, batch=batch, n_validate=n_validate, seed=seed)
    table, out = check_path(table, "--table"), check_path(out, "--out")
    if dtype not in TIMERS.get(device).dtypes:
        raise UserError(f"--dtype {shorten(dtype)} is not supported by device {device!r}; allowed: "
                        f"{', '.join(TIMERS.get(device).dtypes)}")
    if validate and rescale:
        raise UserError("--validate and --rescale: give at most one")
    if table is not None and not (validate or rescale):
        raise UserError(f"--table {table}: names the table to --validate or --rescale; a new table goes to --out")
    overrides = {k: v for k, v in {"resolution": resolution, "num_classes": classes,
                                   "width_mult": width_mult}.items() if v is not None}
    if preset is not None:
        arch = find_preset(preset)
        if arch.space != space:
            raise UserError(f"--preset {preset} belongs to space {arch.space!r}, not {space!r}; "
                            f"add --space {arch.space}")
        overrides = {**arch.config, **overrides}
    parse_space_config(space, overrides, flags={"resolution": "--resolution", "num_classes": "--classes",
                                                 "width_mult": "--width-mult"})  # messages name the flag
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
            echo_json(result)
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
        echo_json(report)
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
    table(f"validation on {report['n_archs']} held-out archs, {device_id}",
           ["predictor", "MAPE %", "within 5%", "within 10%", "Spearman"], rows)
    typer.echo(f"re-measurement noise: {report['noise']:.2f}%   table: {path}")
    if not report.get("passes", False):
        from nas.hardware.profile import missed_criteria

        typer.echo(f"WARNING: the table misses the accuracy bar: {'; '.join(missed_criteria(report))}", err=True)


def _stage_reporter() -> Any:
    from nas.progress import stage_reporter

    return stage_reporter()
