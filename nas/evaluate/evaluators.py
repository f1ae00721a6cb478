"""The two evaluators of the platform: `lut` (cost only) and `train` (short training).

`lut` needs no training: latency from the table, params and MACs from the space's
per-unit counts, at tens of thousands of archs per second. `train` builds the
network, trains it for a few epochs on the data set and reports validation
accuracy beside the same cost metrics.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from nas.arch import Arch
from nas.evaluate.base import Evaluator, EvaluatorConfig
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

    def evaluate(self, arch: Arch) -> dict[str, float]:
        return self.cost_metrics(arch)


class TrainConfig(EvaluatorConfig):
    """Short-training settings: a proxy of the final accuracy, not a full training."""

    data: str = "digits"
    data_dir: Path | None = None
    epochs: int = Field(default=2, gt=0)
    batch_size: int = Field(default=64, gt=0)
    lr: float = Field(default=0.05, gt=0)
    seed: int = 0
    threads: int = Field(default=1, gt=0)


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
        """Refuse a bad data set when the search starts, not in every Ray worker.

        `digits` is loaded here (small, cached per process). A CIFAR-10 directory that has its
        files is left to the workers; one that lacks them goes to the loader, which names what
        is missing before it reads anything.
        """
        from nas.evaluate.data import load_dataset

        root = self.config.data_dir
        if self.config.data == "cifar10" and root is not None and (Path(root) / "test_batch").is_file() \
                and any(Path(root).glob("data_batch_*")):
            return
        load_dataset(self.config.data, root, resolution=self.space.config.resolution, seed=self.config.seed)

    def evaluate(self, arch: Arch) -> dict[str, float]:
        import torch

        from nas.evaluate.data import load_dataset
        from nas.evaluate.train import train_and_evaluate

        start = time.perf_counter()
        torch.set_num_threads(self.config.threads)
        data = load_dataset(
            self.config.data, self.config.data_dir, resolution=self.space.config.resolution, seed=self.config.seed
        )
        torch.manual_seed(self.config.seed)
        model = self.space.build(arch)
        result = train_and_evaluate(
            model, data, epochs=self.config.epochs, batch_size=self.config.batch_size,
            lr=self.config.lr, seed=self.config.seed,
        )
        metrics = {**self.cost_metrics(arch), "accuracy": result["accuracy"], "train_loss": result["train_loss"]}
        metrics["eval_seconds"] = time.perf_counter() - start
        return metrics
