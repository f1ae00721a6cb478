"""Single Path One-Shot (SPOS): Guo et al., "Single Path One-Shot Neural Architecture Search with Uniform
Sampling", ECCV 2020 (arXiv:1904.00420); reference implementation megvii-model/SinglePathOneShot.

Each step trains the weights of one path drawn uniformly from the space (`space.sample`), so every
choice's weights are trained about equally often and no architecture parameter biases them; the
supernet is then searched with inherited weights (BN statistics recalibrated on training data).
The path of a step comes from `step_rng(step)`: every data-parallel worker runs the same path.
Deviations: the paper's search is an evolutionary search of 1,000 archs under constraints; here
`finish` scores `search_archs` uniformly sampled archs (validation accuracy after BN recalibration on
the first training batches) and keeps the best, so a run has a found arch to export; the paper's
search (any strategy, with latency constraints) is `nas search --evaluator supernet`. A space's
`sample` is uniform over its decisions subject to the space's rules, not over whole paths of the
ShuffleNet-v2 space. Channel search (the paper's section 3.3) is not done unless the space's
decisions include channels. Weight decay is not applied to parameters a step leaves unused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field

from nas.arch import Arch
from nas.oneshot.base import Batch, MethodConfig, OneShotMethod
from nas.registry import METHODS

if TYPE_CHECKING:
    from nas.evaluate.data import Dataset

_SEARCH_STREAM = 1  # `step_rng` stream of the archs `finish` scores (stream 0 is the training paths)
_RECALIBRATION_BATCHES = 20


class SposConfig(MethodConfig):
    """SPOS keys (defaults in methods/spos.yaml): `search_archs` archs are scored after training to pick the
    found arch (0: none; search with `nas search --evaluator supernet`)."""

    search_archs: int = Field(ge=0, le=10_000)


@METHODS.register("spos")
class SposMethod(OneShotMethod):
    """Uniform single-path sampling per step; weights only."""

    config_model = SposConfig
    config: SposConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._found: Arch | None = None
        self._found_accuracy: float | None = None

    def path(self, step: int) -> Arch:
        """The path trained at `step`: uniform, determined by (seed, step)."""
        return self.space.sample(self.step_rng(step))

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        self.supernet.activate(self.path(step))
        self.model.train()
        loss = self.loss(self.wrapped(batch.x), batch.y)
        self.weight_step(loss, step)
        return {"loss": float(loss.detach())}

    def finish(self, data: Dataset) -> None:
        """Score `search_archs` uniform archs with inherited weights; keep the most accurate (first of equals)."""
        from nas.evaluate.train import accuracy, recalibrate_bn

        if self.config.search_archs == 0:
            return
        rng = self.step_rng(self.total_steps, _SEARCH_STREAM)
        best: tuple[float, Arch] | None = None
        device = next(self.supernet.parameters()).device
        # Recalibration runs train-mode forwards (dropout draws): the training RNG stays as it was.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for _ in range(self.config.search_archs):
                arch = self.space.sample(rng)
                net = self.supernet.extract(arch)  # a copy: recalibration leaves the supernet's BN as trained
                own = data.at_resolution(self.space.input_resolution(arch))
                recalibrate_bn(net, own, self.config.batch_size, max_batches=_RECALIBRATION_BATCHES)
                value = accuracy(net, own, batch_size=4 * self.config.batch_size)
                if best is None or value > best[0]:
                    best = (value, arch)
        assert best is not None
        self._found_accuracy, self._found = best

    def found_arch(self) -> Arch | None:
        return self._found

    def found_metrics(self) -> dict[str, float]:
        """The found arch's validation accuracy with inherited weights, when `finish` scored it."""
        return {} if self._found_accuracy is None else {"supernet_accuracy": self._found_accuracy}

    def _state(self) -> dict[str, Any]:
        return {"found": None if self._found is None else self._found.to_json(),
                "found_accuracy": self._found_accuracy}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self._found = None if state["found"] is None else Arch.from_json(state["found"])
        self._found_accuracy = state["found_accuracy"]
