"""The `supernet` evaluator: scores archs with weights inherited from a trained supernet (SPOS, OFA).

`nas supernet train` leaves checkpoints in its run dir; this evaluator takes that run dir
(`checkpoint`), loads the newest checkpoint's supernet weights once per process, and scores each
arch as Single Path One-Shot does (Guo et al., 2020, section 3.4): the arch's network is extracted
from the supernet (a copy), its batch-norm statistics recalibrated on training batches, then its
top-1 accuracy measured on the validation split, beside the cost metrics of every evaluator. A
checkpoint of another space or space config than the search's, or a corrupt one, is refused in one
line when the search is planned (the driver builds the evaluator once before Ray starts). The data
is the checkpoint's own (name, directory and split seed), so validation images are never ones the
supernet trained on; `data`/`data_dir`, when given, must match it.
"""

from __future__ import annotations

import json
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from nas.arch import Arch
from nas.errors import UserError, shorten
from nas.evaluate.base import Evaluator, EvaluatorConfig
from nas.limits import path_problem
from nas.registry import EVALUATORS

if TYPE_CHECKING:
    from nas.evaluate.data import Dataset
    from nas.hardware.table import LatencyTable
    from nas.oneshot.checkpoint import Checkpoint
    from nas.space import SearchSpace
    from nas.supernet import Supernet

_SUPERNET_PREFIX = "supernet."  # every method's model holds its supernet as the child `supernet`


class SupernetEvalConfig(EvaluatorConfig):
    """`checkpoint`: the run dir of `nas supernet train` (its newest checkpoint is used); `bn_batches` training
    batches of `batch_size` recalibrate batch norm; `data`/`data_dir` default to the checkpoint's."""

    checkpoint: Path
    data: str | None = Field(default=None, max_length=100)
    data_dir: Path | None = None
    bn_batches: int = Field(default=20, gt=0, le=100_000)
    batch_size: int = Field(default=64, gt=0, le=65_536)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    threads: int = Field(default=1, gt=0, le=1024)

    @field_validator("checkpoint", "data_dir", mode="before")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        problem = path_problem(os.fspath(value)) if isinstance(value, str | Path) else None
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("checkpoint", "data_dir")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        return None if path is None else path.expanduser().resolve()


def newest_checkpoint(run_dir: Path, space: SearchSpace, flag: str = "--checkpoint") -> Checkpoint:
    """The newest checkpoint of a `nas supernet train` run dir, checked (format, sha256) and refused in one line
    when it is missing, corrupt, or of another space or space config than `space`."""
    from nas.oneshot import checkpoint

    run_dir = Path(run_dir)
    steps = sorted(checkpoint.directory(run_dir).glob("step-*")) if run_dir.is_dir() else []
    if not steps:
        raise UserError(f"{flag} {shorten(str(run_dir))}: no checkpoint there (checkpoints/step-*); give the "
                        f"--run-dir of a `nas supernet train` run")
    meta_path = steps[-1] / checkpoint.META
    try:
        meta = json.loads(meta_path.read_text())
        # The run's own keys pass as they are; the space and its config must be the search's.
        identity = {key: meta[key] for key in checkpoint.IDENTITY}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{flag}: {meta_path}: unreadable checkpoint meta ({shorten(str(err), 80)}); re-train, "
                        f"or remove that checkpoint dir to use an older one") from None
    identity["space"] = space.name
    identity["space_config"] = json.loads(json.dumps(space.config.model_dump(mode="json")))
    try:
        found = checkpoint.latest(run_dir, identity)
    except UserError as err:
        raise UserError(f"{flag}: {err}") from None
    assert found is not None  # a step dir was listed above
    return found


def supernet_weights(found: Checkpoint) -> dict[str, Any]:
    """The supernet's tensors of a checkpoint's method state (the `supernet.` child of the method's model)."""
    model = found.load_state()["method"]["model"]
    return {k[len(_SUPERNET_PREFIX):]: v for k, v in model.items() if k.startswith(_SUPERNET_PREFIX)}


def load_supernet(space: SearchSpace, found: Checkpoint) -> Supernet:
    """`space.supernet()` carrying the checkpoint's weights (eval mode, CPU)."""
    supernet = space.supernet()
    try:
        supernet.load_state_dict(supernet_weights(found), strict=True)
    except RuntimeError as err:
        raise UserError(f"--checkpoint {found.path}: its weights do not fit the {space.name} supernet "
                        f"({shorten(str(err).splitlines()[0], 120)}); re-train it with this version") from None
    return supernet.eval()


@lru_cache(maxsize=2)
def _cached_supernet(space_name: str, space_config: str, path: str, meta: str) -> Supernet:
    """One loaded supernet per process and checkpoint (the meta holds the state's sha256)."""
    from nas.oneshot.checkpoint import Checkpoint
    from nas.space import load_space

    return load_supernet(load_space(space_name, json.loads(space_config)), Checkpoint(Path(path), json.loads(meta)))


@EVALUATORS.register("supernet")
class SupernetEvaluator(Evaluator):
    """Accuracy with inherited, BN-recalibrated weights of a trained supernet, plus cost metrics."""

    config_model = SupernetEvalConfig
    config: SupernetEvalConfig
    metrics = ("accuracy", "latency_ms", "params", "macs")
    default_metric = "accuracy"
    archs_per_trial = 16

    def __init__(self, space: SearchSpace, config: SupernetEvalConfig, table: LatencyTable | None) -> None:
        super().__init__(space, config, table)
        self.found = newest_checkpoint(config.checkpoint, space)
        data = self.found.meta["data"]
        self.data_name, self.data_dir = data["name"], data["data_dir"]
        given_dir = None if config.data_dir is None else str(config.data_dir)
        for key, given, saved in (("data", config.data, self.data_name), ("data_dir", given_dir, self.data_dir)):
            if given is not None and given != saved:
                raise UserError(f"--{key.replace('_', '-')} {shorten(given)}: the supernet of --checkpoint was "
                                f"trained on {key} {shorten(saved)}; drop --{key.replace('_', '-')} or give that")
        self._data()  # the data set, checked when the search is planned

    def _data(self) -> Dataset:
        from nas.evaluate.data import load_dataset

        # The checkpoint's split seed: another one would put training images in the validation split.
        return load_dataset(self.data_name, self.data_dir, resolution=self.space.config.resolution,
                            seed=int(self.found.meta["seed"]))

    def supernet(self) -> Supernet:
        return _cached_supernet(self.space.name, json.dumps(self.space.config.model_dump(mode="json")),
                                str(self.found.path), json.dumps(dict(self.found.meta), sort_keys=True))

    def evaluate(self, arch: Arch) -> dict[str, float]:
        import torch

        from nas.evaluate.train import accuracy, recalibrate_bn

        start = time.perf_counter()
        torch.set_num_threads(self.config.threads)
        self.space.check_own(arch)
        data = self._data().at_resolution(self.space.input_resolution(arch))  # loaded at the largest resolution
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)  # recalibration runs train-mode forwards (dropout draws)
            net = self.supernet().extract(arch)  # a copy: the shared supernet's BN stays as trained
            recalibrate_bn(net, data, self.config.batch_size, max_batches=self.config.bn_batches)
            value = accuracy(net, data, batch_size=4 * self.config.batch_size)
        return {**self.cost_metrics(arch), "accuracy": value, "eval_seconds": time.perf_counter() - start}


__all__ = ["SupernetEvalConfig", "SupernetEvaluator", "load_supernet", "newest_checkpoint", "supernet_weights"]
