"""Training a one-shot method's supernet on Ray Train, data-parallel, checkpointed and resumable.

`train_supernet` checks everything first (space, method and its config, data, latency table, worker
count, the run dir's newest checkpoint) and writes nothing until all of it passes. It then starts or
joins a Ray cluster (`nas.cluster`, as `nas search` does) and runs `nas.oneshot.worker.run_worker` on
`workers` Ray Train workers (`TorchTrainer`, DDP over gloo on CPUs). Rank 0 writes a checkpoint into the
run dir every `checkpoint_every` steps, on a stop request and at the end (`nas.oneshot.checkpoint`);
re-running the same command resumes from the newest one, and a finished run just reports its result.
With a cluster joined by `--address`, the rank-0 worker writes into the run dir itself, so the run dir
must be on a file system every node mounts at the same path (the worker checks this before training).
The driver follows the progress records rank 0 appends to the run dir's `progress.jsonl`, and turns
SIGINT/SIGTERM (`nas.interrupts`) into a stop-request file there, which every worker obeys at the same
step after rank 0 saved a checkpoint; the process then ends with the usual "stopped" line.
`trainer.fit()` runs in a thread, so Ray Train installs no SIGINT handler of its own. `workers` 0 is
Ray Train's local mode: one worker in this process, no cluster (quick for small runs and debugging).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.arch import Arch
from nas.errors import NasError, UserError, shorten
from nas.oneshot import checkpoint

log = logging.getLogger(__name__)

CONFIG_NAME = "supernet.yaml"
FOUND_NAME = "found.json"
LOCK_NAME = ".supernet.lock"
MAX_WORKERS = 1024
_POLL_S = 0.2

Progress = Callable[[Mapping[str, Any]], None]
"""`on_progress(record)`: step, total, epoch, epochs, loss, steps_per_s, eta_s (and expected_latency_ms)."""


@dataclass(frozen=True)
class TrainRequest:
    """What `nas supernet train` was asked: names, config overrides (`--set`, flags) and resources.

    `flags` maps a method config key to the flag that sets it (`seed` -> `--seed`), for messages.
    """

    space: str
    method: str
    run_dir: Path
    space_config: Mapping[str, Any] = field(default_factory=dict)
    method_config: Mapping[str, Any] = field(default_factory=dict)
    data: str = "digits"
    data_dir: str | None = None
    hardware: str | None = None
    workers: int = 1
    cpus_per_worker: float = 1.0
    address: str | None = None
    progress_every: int = 20
    flags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainResult:
    """The outcome: the final checkpoint and the found arch (None for a method that leaves it to a search)."""

    run_dir: Path
    checkpoint: Path
    total_steps: int
    resumed_from: int | None
    found_arch: Arch | None
    found_metrics: Mapping[str, float]
    seconds: float


def prepare(request: TrainRequest) -> dict[str, Any]:
    """Check the whole request and the run dir's newest checkpoint; the job every worker runs (plain values).
    Writes nothing; every problem is a one-line `UserError`."""
    from nas import __version__
    from nas.evaluate.data import load_dataset
    from nas.oneshot.base import parse_method_config
    from nas.oneshot.worker import Shards
    from nas.registry import METHODS
    from nas.space import load_space

    _check_resources(request)
    space = load_space(request.space, dict(request.space_config))
    cls = METHODS.get(request.method)
    cls.check_applies(space)
    config = parse_method_config(request.method, dict(request.method_config), flags=request.flags)
    if config.batch_size % max(1, request.workers):
        raise UserError(f"--workers {request.workers}: batch_size {config.batch_size} must be a multiple of the "
                        f"worker count (each worker takes an equal slice); change --workers or --set batch_size")
    table = None
    if cls.needs_table and request.hardware is None:
        raise UserError(f"--method {request.method}: needs a latency table; pass --hardware TABLE.yaml")
    if request.hardware is not None:
        from nas.hardware.table import LatencyTable

        table = LatencyTable.load(request.hardware, space)
    cls.check_setup(space, config, table)
    table_sha = None if table is None else table.sha256
    data_dir = None if request.data_dir is None else str(Path(request.data_dir).resolve())
    data = load_dataset(request.data, data_dir, resolution=space.config.resolution, seed=config.seed,
                        num_classes=getattr(space.config, "num_classes", None))
    shards = Shards.plan(len(data.y_train), config)
    method_dump = config.model_dump(mode="json")
    identity = {"space": space.name, "space_config": json.loads(json.dumps(space.config.model_dump(mode="json"))),
                "method": request.method, "method_config": method_dump, "seed": config.seed,
                "data": {"name": request.data, "data_dir": data_dir, "resolution": space.config.resolution},
                "hardware": table_sha}
    run_dir = Path(request.run_dir).resolve()
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {shorten(str(run_dir))}: exists and is not a directory; give a directory")
    resume = checkpoint.latest(run_dir, identity)
    config_text = _config_text(request, identity)
    return {
        "space": space.name, "space_config": identity["space_config"], "method": request.method,
        "method_config": method_dump, "data": request.data, "data_dir": data_dir,
        "hardware": None if request.hardware is None else str(Path(request.hardware).resolve()),
        "run_dir": str(run_dir), "threads": max(1, int(request.cpus_per_worker)), "identity": identity,
        "resume": None if resume is None else {"path": str(resume.path), "meta": dict(resume.meta)},
        "config_name": CONFIG_NAME, "config_text": config_text, "progress_every": request.progress_every,
        "nas_version": __version__, "total_steps": shards.steps_per_epoch * config.epochs,
    }


def _check_resources(request: TrainRequest) -> None:
    workers, cpus = request.workers, request.cpus_per_worker
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= MAX_WORKERS:
        raise UserError(f"--workers: must be an integer in [0, {MAX_WORKERS}] (0: in this process, no Ray "
                        f"cluster); got {shorten(workers)}")
    if workers == 0 and request.address is not None:
        raise UserError(f"--workers 0 trains in this process; drop --address {shorten(request.address)} or give "
                        f"--workers 1 or more")
    if not isinstance(cpus, (int, float)) or not 0 < cpus <= 1024:
        raise UserError(f"--cpus-per-worker: must be a number in (0, 1024]; got {shorten(cpus)}")
    if not isinstance(request.progress_every, int) or request.progress_every < 1:
        raise UserError(f"--progress-every: must be a positive integer; got {shorten(request.progress_every)}")
    available = os.cpu_count() or 1
    if request.address is None and workers * cpus > available:
        raise UserError(f"--workers {workers} x --cpus-per-worker {cpus:g}: more than the local cluster's "
                        f"{available} CPUs; give at most {int(available // cpus)} workers of {cpus:g} CPUs")


def _config_text(request: TrainRequest, identity: Mapping[str, Any]) -> str:
    """The merged config of the run, as written to `supernet.yaml` (sorted keys)."""
    import yaml

    data = {**identity, "workers": request.workers, "cpus_per_worker": request.cpus_per_worker,
            "address": request.address}
    return yaml.safe_dump(json.loads(json.dumps(data)), sort_keys=True)


def train_supernet(request: TrainRequest, on_progress: Progress | None = None) -> TrainResult:
    """Train (or resume, or just report) the supernet of `request`; see the module docstring."""
    from filelock import FileLock, Timeout

    from nas.interrupts import catching_signals

    start = time.monotonic()
    job = prepare(request)
    run_dir = Path(job["run_dir"])
    resume = job["resume"]
    if resume is not None and resume["meta"].get("complete"):
        log.info("%s: finished already (step %d); nothing to train", resume["path"], resume["meta"]["step"])
        return _result(run_dir, job, None, start)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / LOCK_NAME)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(f"--run-dir {run_dir}: another `nas supernet train` is using it; wait for it to end or "
                        f"use another --run-dir") from None
    try:
        # Checked again under the lock: a run that held it until now may have written newer checkpoints.
        newest = checkpoint.latest(run_dir, job["identity"])
        job["resume"] = resume = None if newest is None else {"path": str(newest.path), "meta": dict(newest.meta)}
        if resume is None or not resume["meta"].get("complete"):
            with catching_signals() as signals:
                _on_ray(request, job, signals, on_progress)
                signals.check()
    finally:
        lock.release()
    return _result(run_dir, job, None if resume is None else int(resume["meta"]["step"]), start)


def _on_ray(request: TrainRequest, job: dict[str, Any], signals: Any, on_progress: Progress | None) -> None:
    from nas.run_dir import write_atomic

    run_dir = Path(job["run_dir"])
    if request.workers == 0:  # Ray Train's local mode: this process, no cluster
        write_atomic(run_dir / CONFIG_NAME, job["config_text"])
        _fit(request, job, signals, on_progress)
        return
    from nas.cluster import check_resources, connected

    with connected(request.address, None):
        slots = check_resources(request.cpus_per_worker)
        if request.workers > slots:
            raise UserError(f"--workers {request.workers}: the Ray cluster has room for {slots} workers of "
                            f"{request.cpus_per_worker:g} CPUs; give at most {slots}, or fewer --cpus-per-worker")
        signals.check()
        write_atomic(run_dir / CONFIG_NAME, job["config_text"])
        _fit(request, job, signals, on_progress)


def _fit(request: TrainRequest, job: dict[str, Any], signals: Any, on_progress: Progress | None) -> None:
    """Run the Ray Train job in a thread; meanwhile follow its progress records and pass a stop request on."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from nas.oneshot.worker import PROGRESS_NAME, STOP_NAME, run_worker

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # local mode's notes on every run, no action needed
    run_dir = Path(job["run_dir"])
    (run_dir / STOP_NAME).unlink(missing_ok=True)  # a request a killed run left behind
    follower = _Follower(run_dir / PROGRESS_NAME, on_progress)
    outcome: dict[str, BaseException] = {}
    with tempfile.TemporaryDirectory(prefix="nas-train-") as storage:
        trainer = TorchTrainer(
            run_worker, train_loop_config={"job": job},
            scaling_config=ScalingConfig(num_workers=request.workers, use_gpu=False,
                                         resources_per_worker={"CPU": request.cpus_per_worker}),
            run_config=RunConfig(name="supernet", storage_path=storage, failure_config=FailureConfig(max_failures=0)),
        )

        def fit() -> None:
            try:
                trainer.fit()
            except BaseException as err:  # handed to the main thread, which raises it
                outcome["error"] = err

        thread = threading.Thread(target=fit, name="nas-supernet-fit", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(_POLL_S)
            if signals.signum is not None and not (run_dir / STOP_NAME).exists():
                (run_dir / STOP_NAME).touch()
            follower.poll()
        follower.poll()
    (run_dir / STOP_NAME).unlink(missing_ok=True)
    if "error" in outcome:
        err = outcome["error"]
        user = _user_error(err)
        if user is not None:
            raise UserError(str(user)) from None
        signals.check()
        log.info("Ray Train failed: %r", err)
        last = str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)
        raise NasError(f"supernet training failed: {shorten(last, 200)}; re-run the same command to resume from "
                       f"the last checkpoint (--debug for details)")


def _user_error(err: BaseException | None, depth: int = 0) -> UserError | None:
    """The `UserError` a worker raised, found inside Ray Train's error (its worker failures, causes)."""
    if err is None or depth > 8:
        return None
    cause = getattr(err, "cause", None)  # a RayTaskError carries the worker's exception
    if isinstance(err, UserError):
        return cause if isinstance(cause, UserError) else err
    inner = [*getattr(err, "worker_failures", {}).values(), cause, err.__cause__, err.__context__]
    for sub in inner:
        found = _user_error(sub, depth + 1)
        if found is not None:
            return found
    return None


class _Follower:
    """Follows a growing `progress.jsonl` from its size at the start, passing each new record on."""

    def __init__(self, path: Path, on_progress: Progress | None) -> None:
        self.path, self.on_progress = path, on_progress
        self.offset = path.stat().st_size if path.exists() else 0

    def poll(self) -> None:
        if self.on_progress is None or not self.path.exists():
            return
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        lines = chunk.split(b"\n")
        self.offset += len(chunk) - len(lines[-1])  # a half-written last line waits for the next poll
        for line in lines[:-1]:
            self.on_progress(json.loads(line))


def _result(run_dir: Path, job: Mapping[str, Any], resumed_from: int | None, start: float) -> TrainResult:
    """The result from the run dir's newest checkpoint (checked again), with `found.json` written beside it."""
    from nas.run_dir import write_atomic

    final = checkpoint.latest(run_dir, job["identity"])
    if final is None or not final.meta.get("complete"):
        raise NasError(f"{run_dir}: training ended without a final checkpoint; re-run the same command to resume")
    found = None if final.meta["found_arch"] is None else Arch.from_dict(final.meta["found_arch"])
    metrics = dict(final.meta.get("found_metrics") or {})
    write_atomic(run_dir / FOUND_NAME, json.dumps(
        {"arch": None if found is None else found.to_dict(), "metrics": metrics, "method": job["method"],
         "checkpoint": str(final.path.relative_to(run_dir))}, sort_keys=True, indent=1) + "\n")
    return TrainResult(run_dir, final.path, int(final.meta["total_steps"]), resumed_from, found, metrics,
                       time.monotonic() - start)


__all__ = ["CONFIG_NAME", "FOUND_NAME", "TrainRequest", "TrainResult", "prepare", "train_supernet"]
