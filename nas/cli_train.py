"""`nas train`: train one arch (a search's ranked arch, an arch file or a preset) on Ray Train, resumably.

Registered on the app by `nas.cli` (`app.command("train")(train)`); the work is
`nas.oneshot.trainer.train_supernet` with the `standalone` method (`nas.oneshot.standalone`), so
checkpoints, resume, stop requests and progress are those of `nas supernet train`. The output
goes to `--out`, by default `<run-dir>/train-rank<N>` for a search's arch (where `nas export
--run-dir D --rank N` finds its weights) or `runs/train-<space>-<short hash>` otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nas.limits import check_path

Opt = typer.Option


def default_out(run_dir: Path | None, rank: int, space: str, short_hash: str) -> Path:
    """Where `nas train` writes when no --out is given (and where `nas export` looks for weights)."""
    return run_dir / f"train-rank{rank}" if run_dir is not None else Path("runs") / f"train-{space}-{short_hash}"


def train(
    run_dir: Annotated[str | None, Opt("--run-dir", help="Run dir of a search; trains the arch at --rank.",
                                       metavar="PATH")] = None,
    rank: Annotated[int, Opt("--rank", help="Rank in the run's best.json (1 = best).")] = 1,
    arch: Annotated[str | None, Opt("--arch", help="An arch JSON file.", metavar="PATH")] = None,
    preset: Annotated[str | None, Opt("--preset", help="A published arch by name.")] = None,
    out: Annotated[str | None, Opt("--out", help="Where checkpoints go; re-running resumes. Default: "
                                   "RUN_DIR/train-rank<N>, or runs/train-<space>-<hash>.", metavar="PATH")] = None,
    init_from: Annotated[str | None, Opt("--init-from", help="Start from the weights of a `nas supernet train` run "
                                         "dir (its newest checkpoint); default: a seeded initialisation.",
                                         metavar="PATH")] = None,
    sets: Annotated[list[str] | None, Opt("--set", help="Training option KEY=VALUE (methods/standalone.yaml and "
                                          "common keys: batch_size, lr, checkpoint_every, ...); repeatable.",
                                          metavar="KEY=VALUE")] = None,
    epochs: Annotated[int | None, Opt("--epochs", help="Passes over the training split (default 10).")] = None,
    seed: Annotated[int | None, Opt("--seed", help="Seed of weights, data order and split (default 0).")] = None,
    data: Annotated[str, Opt("--data", help="digits, cifar10 or npz.")] = "digits",
    data_dir: Annotated[str | None, Opt("--data-dir", help="CIFAR-10 directory or .npz file.")] = None,
    workers: Annotated[int, Opt("--workers", help="Ray Train workers (data-parallel); 0: in this process, "
                                "no Ray cluster.")] = 1,
    cpus_per_worker: Annotated[float, Opt("--cpus-per-worker", help="CPUs (and torch threads) per worker.")] = 1.0,
    address: Annotated[str | None, Opt("--address", help="Join a Ray cluster (auto or host:port).")] = None,
    progress_every: Annotated[int, Opt("--progress-every", help="Steps between progress lines.")] = 20,
    as_json: Annotated[bool, Opt("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train one arch with its own weights; re-running the same command resumes from the newest checkpoint.

    Example: nas train --run-dir runs/demo --rank 1 --epochs 20 (then: nas export --run-dir runs/demo --rank 1)
    """
    from nas.cli_output import echo_json
    from nas.cli_supernet import progress_printer
    from nas.config import parse_set_options
    from nas.export_source import pick_arch
    from nas.oneshot.trainer import TrainRequest, train_supernet

    run_path, arch_path = check_path(run_dir, "--run-dir"), check_path(arch, "--arch")
    chosen = pick_arch(run_path, rank, arch_path, preset)
    overrides: dict[str, Any] = parse_set_options(sets or [], "--set")
    flags = {"arch": "--run-dir/--arch/--preset", "init_from": "--init-from"}
    for key, value in (("epochs", epochs), ("seed", seed)):
        if value is not None:
            overrides[key], flags[key] = value, f"--{key}"
    overrides["arch"] = chosen.to_json()
    if init_from is not None:
        overrides["init_from"] = str(Path(check_path(init_from, "--init-from")).resolve())
    out_path = check_path(out, "--out") or default_out(run_path, rank, chosen.space, chosen.short_hash)
    request = TrainRequest(
        space=chosen.space, method="standalone", run_dir=out_path, space_config=dict(chosen.config),
        method_config=overrides, data=data, data_dir=None if data_dir is None else str(check_path(data_dir,
                                                                                                  "--data-dir")),
        workers=workers, cpus_per_worker=cpus_per_worker, address=address, progress_every=progress_every,
        flags=flags,
    )
    result = train_supernet(request, on_progress=progress_printer("train"))
    accuracy = result.found_metrics.get("accuracy")
    if as_json:
        echo_json({"arch": chosen.hash, "out": str(result.run_dir), "checkpoint": str(result.checkpoint),
                   "total_steps": result.total_steps, "resumed_from": result.resumed_from,
                   "accuracy": accuracy, "seconds": round(result.seconds, 3)})
        return
    typer.echo(f"trained {chosen.space} {chosen.short_hash}: checkpoint {result.checkpoint} "
               f"({result.total_steps} steps" + (f", resumed from step {result.resumed_from})"
                                                 if result.resumed_from is not None else ")")
               + ("" if accuracy is None else f", validation accuracy {accuracy:.4f}"))
