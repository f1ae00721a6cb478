"""`standalone`: train one arch on its own with the one-shot trainer, for `nas train`.

Not a search method: the model is `space.build(arch)` with no sampling and no architecture
parameters, so a found arch (of a search or of a one-shot method) gets its own weights with
the same Ray Train loop, checkpoints and exact resume as `nas supernet train`. The arch is a
config key (its canonical JSON), so it is part of the run's identity: a checkpoint of another
arch in the same run dir is refused. Training starts from the seeded initialisation, or from a
trained supernet's weights of that arch (`init_from`: a `nas supernet train` run dir, as
Once-for-All fine-tunes extracted subnets). `finish` recalibrates batch norm on training batches
(as `nas.evaluate.train` does) and measures validation accuracy, so the final checkpoint holds
the weights an export ships and the accuracy they score.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from nas.arch import Arch
from nas.errors import UserError
from nas.oneshot.base import Batch, MethodConfig, OneShotMethod
from nas.registry import METHODS

if TYPE_CHECKING:
    from nas.evaluate.data import Dataset
    from nas.hardware.table import LatencyTable
    from nas.space import SearchSpace


class StandaloneConfig(MethodConfig):
    """`arch`: the canonical JSON of the arch to train; `init_from`: a `nas supernet train` run dir (absolute)
    whose newest checkpoint's weights of the arch start the training, or None for the seeded initialisation."""

    arch: str = Field(max_length=1_000_000)
    init_from: str | None = Field(default=None, max_length=4096)


@METHODS.register("standalone")
class StandaloneMethod(OneShotMethod):
    """Plain training of `space.build(arch)`."""

    config_model = StandaloneConfig
    config: StandaloneConfig
    shares_weights = False

    def __init__(self, space: SearchSpace, config: StandaloneConfig, table: LatencyTable | None = None) -> None:
        super().__init__(space, config, table)
        self.arch = self.arch_of(space, config)
        self.model = space.build(self.arch)
        self.wrapped = self.model
        self._accuracy: float | None = None
        if config.init_from is not None:
            from nas.evaluate.supernet import load_supernet, newest_checkpoint

            found = newest_checkpoint(Path(config.init_from), space, "--init-from")
            self.model.load_state_dict(load_supernet(space, found).extract(self.arch).state_dict(), strict=True)

    @staticmethod
    def arch_of(space: SearchSpace, config: StandaloneConfig) -> Arch:
        """The config's arch, refused in one line unless it is one of `space` at its config."""
        try:
            arch = Arch.from_json(config.arch)
            space.check_own(arch)
        except UserError as err:
            raise UserError(f"--set arch: {err}") from None
        return arch

    @classmethod
    def check_setup(cls, space: SearchSpace, config: MethodConfig, table: LatencyTable | None) -> None:
        assert isinstance(config, StandaloneConfig)
        cls.arch_of(space, config)
        if config.init_from is not None:
            from nas.evaluate.supernet import newest_checkpoint

            newest_checkpoint(Path(config.init_from), space, "--init-from")

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        from nas.evaluate.data import resize_images

        self.model.train()
        x = resize_images(batch.x, self.space.input_resolution(self.arch))  # loaded at the largest resolution
        loss = self.loss(self.wrapped(x), batch.y)
        self.weight_step(loss, step)
        return {"loss": float(loss.detach())}

    def finish(self, data: Dataset) -> None:
        """Batch-norm statistics recalibrated on training batches, then validation accuracy."""
        import torch

        from nas.evaluate.train import accuracy, recalibrate_bn

        device = next(self.model.parameters()).device
        data = data.at_resolution(self.space.input_resolution(self.arch))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            recalibrate_bn(self.model, data, self.config.batch_size)
            self._accuracy = accuracy(self.model, data, batch_size=4 * self.config.batch_size)

    def found_arch(self) -> Arch:
        return self.arch

    def found_metrics(self) -> dict[str, float]:
        return {} if self._accuracy is None else {"accuracy": self._accuracy}

    def _state(self) -> dict[str, Any]:
        return {"accuracy": self._accuracy}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self._accuracy = state["accuracy"]
