"""The training loop each Ray Train worker runs (`run_worker`), and the data each step sees (`Shards`).

Every worker builds the same method from the same seed, wraps it for data-parallel training
(`ray.train.torch.prepare_model`: DDP when there is more than one worker) and runs the same steps:
a step's global batch and its path are functions of (seed, step), and each worker trains on its
own contiguous slice of that batch, so a run is reproducible and a resumed run continues exactly
where the checkpoint left off. Rank 0 writes the checkpoints and progress records into the run dir and
reads the driver's stop request there (the run dir must be visible to it anyway); it takes the request
to the other workers with one all-reduce per step, so all stop at the same step.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas.errors import UserError
from nas.oneshot import checkpoint
from nas.oneshot.base import Batch, MethodConfig

log = logging.getLogger(__name__)

_ARCH_SPLIT_STREAM = 99  # seeds the carve of the arch split out of the training split
_ORDER_STREAM = 1  # seeds each epoch's order of the weight split
_ARCH_ORDER_STREAM = 2  # ... and each pass's order of the arch split
_STOP_POLL_S = 0.2
_AGREE_EVERY = 10  # steps between the workers' all-reduces of the stop request (each costs a round trip)
STOP_NAME = ".stop-request"
"""A file the driver creates in the run dir on SIGINT/SIGTERM: rank 0 sees it and every worker stops."""
PROGRESS_NAME = "progress.jsonl"
"""Rank 0's progress records, appended (one JSON object a line), followed by the driver."""


@dataclass(frozen=True)
class Shards:
    """Which training images each step uses: the weight split in a fresh order every epoch, the arch split
    (`arch_fraction` of the training split, carved once by the seed) in a fresh order every pass."""

    weight_idx: np.ndarray
    arch_idx: np.ndarray
    batch_size: int
    steps_per_epoch: int
    seed: int

    @classmethod
    def plan(cls, n_train: int, config: MethodConfig) -> Shards:
        order = np.random.default_rng([config.seed, _ARCH_SPLIT_STREAM]).permutation(n_train)
        n_arch = int(round(config.arch_fraction * n_train))
        arch_idx, weight_idx = np.sort(order[:n_arch]), np.sort(order[n_arch:])
        steps = len(weight_idx) // config.batch_size  # the last, smaller batch is dropped: equal shards
        if config.max_steps_per_epoch is not None:
            steps = min(steps, config.max_steps_per_epoch)
        if steps < 1:
            raise UserError(f"batch_size: {config.batch_size} is more than the {len(weight_idx)} training images "
                            f"left for weights; lower it (--set batch_size=...) or use a bigger data set")
        if n_arch and n_arch < config.batch_size:
            raise UserError(f"arch_fraction: {config.arch_fraction:g} holds out {n_arch} images, fewer than "
                            f"batch_size {config.batch_size}; raise arch_fraction or lower batch_size")
        return cls(weight_idx, arch_idx, config.batch_size, steps, config.seed)

    def weight_batch(self, step: int) -> np.ndarray:
        """Indices (into the training split) of the global batch of `step`."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch, _ORDER_STREAM]).permutation(self.weight_idx)
        return order[pos * self.batch_size:(pos + 1) * self.batch_size]

    def arch_batch(self, step: int) -> np.ndarray:
        """Indices of the arch-split batch of `step`."""
        if not len(self.arch_idx):
            raise UserError("this method asked for arch data, but arch_fraction is 0; set arch_fraction > 0")
        per_pass = len(self.arch_idx) // self.batch_size
        rounds, pos = divmod(step, per_pass)
        order = np.random.default_rng([self.seed, rounds, _ARCH_ORDER_STREAM]).permutation(self.arch_idx)
        return order[pos * self.batch_size:(pos + 1) * self.batch_size]


def _slice(idx: np.ndarray, rank: int, world: int) -> np.ndarray:
    per = len(idx) // world
    return idx[rank * per:(rank + 1) * per]


def run_worker(config: Mapping[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker`: `config["job"]` holds plain values (`nas.oneshot.trainer.prepare`)."""
    import ray.train
    import ray.train.torch

    from nas.evaluate.data import load_dataset
    from nas.oneshot.base import build_method, parse_method_config
    from nas.space import load_space

    job = config["job"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(job["threads"])
    run_dir = Path(job["run_dir"])
    if rank == 0 and _read(run_dir / job["config_name"]) != job["config_text"]:
        raise UserError(f"--run-dir {run_dir}: not visible from the rank-0 worker's node; with --address, put the "
                        f"run dir on a file system every node mounts at the same path")
    space = load_space(job["space"], job["space_config"])
    config = parse_method_config(job["method"], job["method_config"])
    table = None
    if job["hardware"] is not None:
        from nas.hardware.table import LatencyTable

        table = LatencyTable.load(job["hardware"], space)
    data = load_dataset(job["data"], job["data_dir"], resolution=space.config.resolution, seed=config.seed)
    shards = Shards.plan(len(data.y_train), config)
    total = shards.steps_per_epoch * config.epochs
    torch.manual_seed(config.seed)  # the same initial weights on every worker
    method = build_method(job["method"], config, space, table)
    device = ray.train.torch.get_device()
    wrapped = ray.train.torch.prepare_model(
        method.model, parallel_strategy_kwargs={"find_unused_parameters": method.find_unused_parameters})
    method.start(wrapped, shards.steps_per_epoch, total)
    step = 0
    if job["resume"] is not None:
        state = checkpoint.Checkpoint(Path(job["resume"]["path"]), job["resume"]["meta"]).load_state()
        method.load_state_dict(state["method"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
    _Loop(job, method, shards, data, device, rank, world, total).run(step)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


class _Loop:
    """The step loop of one worker (see the module docstring)."""

    def __init__(self, job: Mapping[str, Any], method: Any, shards: Shards, data: Any,
                 device: torch.device, rank: int, world: int, total: int) -> None:
        self.job, self.method, self.shards, self.data = job, method, shards, data
        self.run_dir = Path(job["run_dir"])
        self.device, self.rank, self.world, self.total = device, rank, world, total
        self.config: MethodConfig = method.config
        self._last_poll = 0.0
        self._stop_requested = False

    def batch(self, step: int) -> Batch:
        idx = _slice(self.shards.weight_batch(step), self.rank, self.world)

        def arch_data() -> tuple[torch.Tensor, torch.Tensor]:
            arch_idx = _slice(self.shards.arch_batch(step), self.rank, self.world)
            return self._tensors(arch_idx)

        x, y = self._tensors(idx)
        return Batch(x, y, step // self.shards.steps_per_epoch, arch_data)

    def _tensors(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.from_numpy(idx)
        return self.data.x_train[index].to(self.device), self.data.y_train[index].to(self.device)

    def run(self, step: int) -> None:
        start_step, start = step, time.monotonic()
        every = self.job["progress_every"]
        while step < self.total:
            metrics = self.method.train_step(self.batch(step), step)
            step += 1
            if not math.isfinite(metrics["loss"]):
                raise UserError(f"training diverged at step {step} (loss {metrics['loss']}); lower lr "
                                f"(--set lr=...; now {self.config.lr:g})")
            stop = self._agree_on_stop(step) and step < self.total
            if self.rank == 0 and (step % every == 0 or step == self.total or stop):
                rate = (step - start_step) / max(time.monotonic() - start, 1e-9)
                self._progress({
                    "step": step, "total": self.total, "epoch": (step - 1) // self.shards.steps_per_epoch + 1,
                    "epochs": self.config.epochs, "steps_per_s": rate, "eta_s": (self.total - step) / rate,
                    "time": time.time(), **metrics})
            if stop:
                if self.rank == 0:
                    self._save(step, complete=False)
                return
            if self.rank == 0 and step % self.config.checkpoint_every == 0 and step < self.total:
                self._save(step, complete=False)
        if self.rank == 0:
            self.method.finish(self.data)
            self._save(step, complete=True)

    def _agree_on_stop(self, step: int) -> bool:
        """Whether the driver asked to stop (its file in the run dir, as rank 0 last saw it), agreed by every
        worker (one all-reduce every `_AGREE_EVERY` steps, at the same steps on all of them)."""
        if self.world > 1 and step % _AGREE_EVERY:
            return False
        if self.rank == 0 and not self._stop_requested and time.monotonic() - self._last_poll > _STOP_POLL_S:
            self._last_poll = time.monotonic()
            self._stop_requested = (self.run_dir / STOP_NAME).exists()
        if self.world == 1:
            return self._stop_requested
        flag = torch.tensor([1.0 if self._stop_requested else 0.0])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def _progress(self, record: Mapping[str, Any]) -> None:
        """Append one progress record to the run dir's `progress.jsonl`, which the driver follows."""
        with open(self.run_dir / PROGRESS_NAME, "a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")

    def _save(self, step: int, complete: bool) -> None:
        method = self.method
        found = method.found_arch() if complete else None
        state = {"method": method.state_dict(), "torch_rng": torch.get_rng_state(), "step": step}
        meta = {**self.job["identity"], "step": step, "epoch": step / self.shards.steps_per_epoch,
                "total_steps": self.total, "complete": complete, "workers": self.world,
                "found_arch": None if found is None else found.to_dict(),
                "found_metrics": method.found_metrics() if complete else {},
                "nas_version": self.job["nas_version"]}
        path = checkpoint.save(self.run_dir, state, meta)
        log.info("checkpoint %s", path)
