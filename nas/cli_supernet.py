"""`nas supernet train`: train a one-shot method's supernet on Ray Train, resumably.

Registered on the app by `nas.cli` (`app.add_typer(supernet_app, name="supernet")`); the work is
`nas.oneshot.trainer.train_supernet`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from nas.limits import check_path

Opt = typer.Option

supernet_app = typer.Typer(no_args_is_help=True, help="One-shot search: train a weight-sharing supernet.")


@supernet_app.command("train")
def train(
    space: Annotated[str, Opt("--space", help="Search space (see `nas spaces`).")],
    method: Annotated[str, Opt("--method", help="One-shot method: spos, proxyless, single_path.")],
    run_dir: Annotated[str, Opt("--run-dir", help="Where checkpoints go; re-running resumes.", metavar="PATH")],
    sets: Annotated[list[str] | None, Opt("--set", help="Method option KEY=VALUE (methods/<method>.yaml keys); "
                                          "repeatable.", metavar="KEY=VALUE")] = None,
    space_sets: Annotated[list[str] | None, Opt("--space-set", help="Space config KEY=VALUE (resolution, "
                                                "num_classes, ...); repeatable.", metavar="KEY=VALUE")] = None,
    epochs: Annotated[int | None, Opt("--epochs", help="Passes over the training split (method default).")] = None,
    seed: Annotated[int | None, Opt("--seed", help="Seed of weights, data order and paths (method default).")] = None,
    data: Annotated[str, Opt("--data", help="digits, cifar10 or npz.")] = "digits",
    data_dir: Annotated[str | None, Opt("--data-dir", help="CIFAR-10 directory or .npz file.")] = None,
    hardware: Annotated[str | None, Opt("--hardware", help="Latency table YAML (methods with a latency loss).",
                                        metavar="TABLE")] = None,
    workers: Annotated[int, Opt("--workers", help="Ray Train workers (data-parallel); 0: in this process, "
                                "no Ray cluster.")] = 1,
    cpus_per_worker: Annotated[float, Opt("--cpus-per-worker", help="CPUs (and torch threads) per worker.")] = 1.0,
    address: Annotated[str | None, Opt("--address", help="Join a Ray cluster (auto or host:port); the run dir "
                                       "must be on a file system every node mounts.")] = None,
    progress_every: Annotated[int, Opt("--progress-every", help="Steps between progress lines.")] = 20,
    as_json: Annotated[bool, Opt("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train a supernet with a one-shot method; a checkpoint goes to RUN_DIR/checkpoints every checkpoint_every
    steps, and the same command resumes from the newest one.

    Example: nas supernet train --space proxylessnas --method spos --run-dir runs/spos --set batch_size=32
    """
    from nas.cli_output import echo_json
    from nas.config import parse_set_options
    from nas.oneshot.trainer import TrainRequest, train_supernet

    overrides: dict[str, Any] = parse_set_options(sets or [], "--set")
    flags = {}
    for key, value in (("epochs", epochs), ("seed", seed)):
        if value is not None:
            overrides[key], flags[key] = value, f"--{key}"
    request = TrainRequest(
        space=space, method=method, run_dir=check_path(run_dir, "--run-dir"),
        space_config=parse_set_options(space_sets or [], "--space-set"), method_config=overrides,
        data=data, data_dir=None if data_dir is None else str(check_path(data_dir, "--data-dir")),
        hardware=None if hardware is None else str(check_path(hardware, "--hardware")),
        workers=workers, cpus_per_worker=cpus_per_worker, address=address, progress_every=progress_every,
        flags=flags,
    )
    result = train_supernet(request, on_progress=_progress_line)
    found = result.found_arch
    if as_json:
        echo_json({"checkpoint": str(result.checkpoint), "total_steps": result.total_steps,
                   "resumed_from": result.resumed_from, "found_arch": None if found is None else found.to_dict(),
                   "found_metrics": dict(result.found_metrics), "seconds": round(result.seconds, 3)})
        return
    typer.echo(f"checkpoint: {result.checkpoint} ({result.total_steps} steps"
               + (f", resumed from step {result.resumed_from})" if result.resumed_from is not None else ")"))
    if found is None:
        typer.echo(f"no found arch: {method} leaves the search to `nas search --evaluator supernet "
                   f"--checkpoint {result.run_dir}`")
        return
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(result.found_metrics.items()))
    typer.echo(f"found arch {found.short_hash}" + (f" ({metrics})" if metrics else "") + f": {found.to_json()}")


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def progress_printer(prefix: str) -> Callable[[Any], None]:
    """`_progress_line` with another prefix (`nas train` says `[train]`)."""
    return lambda record: _progress_line(record, prefix)


def _progress_line(record: Any, prefix: str = "supernet") -> None:
    """One plain line per progress record on stderr: epoch, step, loss, expected latency, speed, ETA."""
    parts = [f"epoch {record['epoch']}/{record['epochs']}", f"step {record['step']}/{record['total']}",
             f"loss {record['loss']:.4f}"]
    if "expected_latency_ms" in record:
        parts.append(f"E[lat] {record['expected_latency_ms']:.3f} ms")
    parts += [f"{record['steps_per_s']:.2f} step/s", f"ETA {_format_seconds(record['eta_s'])}"]
    typer.echo(f"[{prefix}] " + ", ".join(parts), err=True)
