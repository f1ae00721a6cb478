"""The two evaluators of the platform: `lut` (cost only) and `train` (short training).

`lut` needs no training: latency from the table, params and MACs from the space's
per-unit counts, at tens of thousands of archs per second. `train` builds the
network, trains it for a few epochs on the data set and reports validation
accuracy beside the same cost metrics. `normalize_evaluator_config` turns a run's
evaluator config into what is stored and sent to workers (paths made absolute).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from nas.arch import Arch
from nas.config import SEED_LIMIT, parse
from nas.errors import UserError, shorten
from nas.evaluate.base import Evaluator, EvaluatorConfig, metric_rows
from nas.limits import path_problem
from nas.registry import EVALUATORS

if TYPE_CHECKING:
    from nas.hardware.table import LatencyTable
    from nas.space import SearchSpace


@EVALUATORS.register("lut")
class LutEvaluator(Evaluator):
    """Latency from the lookup table plus params and MACs; no training."""

    metrics = ("latency_ms", "params", "macs")
    default_metric = "macs"
    archs_per_trial = 2048
    needs_table = True
    in_process = True

    def evaluate(self, arch: Arch) -> dict[str, float]:
        return self.evaluate_many([arch])[0]  # priced as in a batch, to the last bit

    def evaluate_many(self, archs: Sequence[Arch]) -> list[dict[str, float]]:
        """The metrics of `evaluate`, priced for the whole batch with arrays (`cost_metrics_many`)."""
        return metric_rows(self.cost_metrics_many(archs))


class TrainConfig(EvaluatorConfig):
    """Short-training settings: a proxy of the final accuracy, not a full training.

    `data` is one of `nas.evaluate.data.DATASETS`; `data_dir` is given exactly for the data sets
    read from disk (`DATA_DIR_DATASETS`: cifar10, a directory; npz, a user's `.npz` file; digits
    ships with scikit-learn), is bounded like every path, and is made absolute when validated: the
    evaluator may be built in a Ray worker that runs in another working directory. `seed` seeds
    the weights, the batch order and, unless `split_seed` is given, the digits train/validation
    split: a fixed `split_seed` lets several training seeds be compared on one validation split.
    """

    model_config = ConfigDict(allow_inf_nan=False)

    data: str = Field(default="digits", max_length=100)
    data_dir: Path | None = None
    epochs: int = Field(default=2, gt=0, le=10_000)
    batch_size: int = Field(default=64, gt=0, le=65_536)
    lr: float = Field(default=0.05, gt=0, le=100)
    seed: int = Field(default=0, ge=0, lt=SEED_LIMIT)
    split_seed: int | None = Field(default=None, ge=0, lt=SEED_LIMIT)
    threads: int = Field(default=1, gt=0, le=1024)

    @property
    def data_seed(self) -> int:
        """The seed of the digits train/validation split: `split_seed`, else `seed` (one seed moves both)."""
        return self.seed if self.split_seed is None else self.split_seed

    @field_validator("data")
    @classmethod
    def _known(cls, data: str) -> str:
        from nas.evaluate.data import DATASETS

        if data not in DATASETS:
            raise ValueError(f"unknown data set; allowed: {', '.join(DATASETS)}")
        return data

    @field_validator("data_dir", mode="before")
    @classmethod
    def _bounded(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        problem = path_problem(os.fspath(value)) if isinstance(value, str | Path) else None
        if problem is not None:
            raise ValueError(problem)
        from nas.evaluate.data import DATA_DIR_DATASETS

        data = info.data.get("data")  # absent when it failed its own check
        if data is not None and data not in DATA_DIR_DATASETS:
            raise ValueError(f"data set {data!r} takes no data dir (it ships with scikit-learn); data sets that "
                             f"take one: {', '.join(DATA_DIR_DATASETS)}; drop the data dir or choose one of those")
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        return None if path is None else path.expanduser().resolve()


def normalize_evaluator_config(
    name: str, config: Mapping[str, Any], where: str | None = None, *, prefix: str = "",
    flags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """`config` of evaluator `name`, validated, as plain JSON data with its paths made absolute.

    Store this (not what the user typed) in the run config and the evaluator spec: workers
    run in another directory, so a relative `data_dir` would name another place there. Only
    the keys given are returned (defaults stay in one place, the config model).

    Args:
        name: a registered evaluator.
        config: its config overrides (the run config's `evaluator_config`).
        where: the source, for messages (default `evaluator <name> config`).
        prefix: key path of `config` in a larger config (`evaluator_config.`), for messages.
        flags: full key path (`evaluator_config.data_dir`) -> CLI flag, for messages.
    """
    cls = EVALUATORS.get(name)
    if not isinstance(config, Mapping):
        raise UserError(f"{where or name}: evaluator_config must be a mapping of keys; got {shorten(config)}")
    checked = parse(cls.config_model, dict(config), where or f"evaluator {name} config", prefix=prefix, flags=flags,
                    owner=f"the {name} evaluator")
    return checked.model_dump(mode="json", exclude_unset=True)


@EVALUATORS.register("train")
class TrainEvaluator(Evaluator):
    """Train for `epochs` on the data set; report validation accuracy and cost metrics."""

    config_model = TrainConfig
    config: TrainConfig
    metrics = ("accuracy", "latency_ms", "params", "macs")
    default_metric = "accuracy"

    def __init__(self, space: SearchSpace, config: TrainConfig, table: LatencyTable | None) -> None:
        super().__init__(space, config, table)
        self._check_data()

    def _check_data(self) -> None:
        """Refuse a bad data set when the search starts, not in every Ray worker (where it would fail each trial).

        The whole data set is loaded: a corrupt or foreign file anywhere in it is a `UserError`
        here. Files stay cached per process, so a worker's own load costs little.
        """
        from nas.evaluate.data import load_dataset

        load_dataset(self.config.data, self.config.data_dir, resolution=self.space.config.resolution,
                     seed=self.config.data_seed, num_classes=getattr(self.space.config, "num_classes", None))

    def evaluate(self, arch: Arch, on_epoch: Callable[[int, dict[str, float]], None] | None = None
                 ) -> dict[str, float]:
        """The metrics of `arch` after `epochs` of training; `epochs` in them is the number trained.

        Args:
            arch: the arch to build and train.
            on_epoch: called as `on_epoch(epoch, metrics)` after each epoch with the metrics this method
                returns as they stand then (`epochs` = epoch): what an early-stopping scheduler (ASHA)
                judges the arch by; an exception it raises stops the training. The cost metrics are known
                before training, so an objective that reads latency can score every epoch.
        """
        import torch

        from nas.evaluate.data import load_dataset
        from nas.evaluate.train import train_and_evaluate

        start = time.perf_counter()
        torch.set_num_threads(self.config.threads)
        # Loaded at the space's largest resolution, fed at the arch's own (the same images for every arch).
        data = load_dataset(
            self.config.data, self.config.data_dir, resolution=self.space.config.resolution,
            seed=self.config.data_seed,
        ).at_resolution(self.space.input_resolution(arch))
        cost = self.cost_metrics(arch)

        def metrics_of(epoch: int, result: dict[str, float]) -> dict[str, float]:
            return {**cost, "accuracy": result["accuracy"], "train_loss": result["train_loss"], "epochs": epoch,
                    "eval_seconds": time.perf_counter() - start}

        torch.manual_seed(self.config.seed)
        model = self.space.build(arch)
        result = train_and_evaluate(
            model, data, epochs=self.config.epochs, batch_size=self.config.batch_size,
            lr=self.config.lr, seed=self.config.seed,
            on_epoch=None if on_epoch is None else lambda epoch, result: on_epoch(epoch, metrics_of(epoch, result)),
        )
        # A diverged training stops early too, but reports its epochs as planned: its train_loss is null.
        return metrics_of(self.config.epochs, result)
