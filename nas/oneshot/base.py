"""`OneShotMethod`: the interface every one-shot (weight-sharing) NAS method implements.

A method owns a space's supernet plus its architecture parameters (gates, thresholds) in one
`nn.Module`, `self.model`, which the trainer (`nas.oneshot.trainer`) wraps for data-parallel
training; it trains them one step at a time (`train_step`) and reads the found arch off them
(`found_arch`). It holds no loop, Ray, data loader or file: the trainer feeds it each step's
batch and saves `state_dict()` in checkpoints. Every worker of a data-parallel run must run the
same path at the same step, so a method draws its per-step randomness from `step_rng(step)`
(seeded by the config's seed and the step), never from a worker-local generator.
Weights are trained as `nas.evaluate.train` trains a network (ProxylessNAS' recipe): SGD with
Nesterov momentum 0.9, per-step cosine decay, weight decay 4e-5 on conv and linear weights,
label smoothing 0.1.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import nn

from nas.arch import Arch
from nas.config import METHODS_DIR, Frozen
from nas.errors import UserError, shorten
from nas.evaluate.data import resize_images

if TYPE_CHECKING:
    from nas.evaluate.data import Dataset
    from nas.hardware.table import LatencyTable
    from nas.space import SearchSpace

MOMENTUM = 0.9
WEIGHT_DECAY = 4e-5
LABEL_SMOOTHING = 0.1


class MethodConfig(Frozen):
    """Config keys every one-shot method accepts (defaults here; a method's `methods/<name>.yaml` holds its own
    keys and may change these). A method subclasses this with its own keys.

    `epochs` are passes over the training split (each cut to `max_steps_per_epoch` steps when given);
    `batch_size` is the global batch of one step, split evenly over the workers; `lr` the initial weight
    learning rate, cosine-decayed to zero per step over all epochs; `warmup_epochs` train weights only (no
    architecture updates, as ProxylessNAS warms up; methods without arch parameters ignore it); `seed` seeds
    weights, data order and path sampling; `checkpoint_every` is the step interval of checkpoints;
    `arch_fraction` is the share of the training split held out for architecture updates (ProxylessNAS
    updates them on a validation split of the training set; 0 for a method that takes none).
    """

    epochs: int = Field(default=10, ge=1, le=10_000)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    lr: float = Field(default=0.05, gt=0, le=10)
    warmup_epochs: int = Field(default=0, ge=0, le=10_000)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    checkpoint_every: int = Field(default=100, ge=1, le=10_000_000)
    max_steps_per_epoch: int | None = Field(default=None, ge=1, le=10_000_000)
    arch_fraction: float = Field(default=0.0, ge=0, lt=1)


@dataclass(frozen=True, eq=False)
class Batch:
    """One step's data on one worker: its shard of the step's global batch of the weight split, and (lazily)
    its shard of a batch of the held-out arch split, the same for every worker at a given step."""

    x: torch.Tensor  # (B, 3, R, R) on the worker's device
    y: torch.Tensor  # (B,) int64
    epoch: int  # counts from 0
    arch_data: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    """This step's (x, y) of the arch split; a `UserError` when the config holds out none (`arch_fraction` 0)."""


class MethodModel(nn.Module):
    """The default `OneShotMethod.model`: the supernet, running its active arch. Methods set the path with
    `supernet.activate(arch)` and then call `method.wrapped(x)`, so DDP sees only tensors. The batch, loaded at
    the space's largest resolution, is resized to the active arch's own (BigNAS trains each sampled resolution)."""

    def __init__(self, supernet: nn.Module) -> None:
        super().__init__()
        self.supernet = supernet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active = self.supernet.active
        if active is not None:
            x = resize_images(x, self.supernet.space.input_resolution(active))  # as it is when the sizes agree
        return self.supernet(x)  # (B, num_classes)


class OneShotMethod(ABC):
    """Base class of one-shot methods.

    Subclasses register with `@METHODS.register(name)` (the stem of `methods/<name>.yaml`), set
    `config_model`, `spaces` and `needs_table`, build any architecture parameters in `__init__`
    (inside `self.model`, after calling `super().__init__`), and implement `train_step` and `found_arch`;
    `arch_parameters`, `start`, `finish`, `_state` and `_load_state` when they have more to do.

    Life cycle (driven by the trainer, identically on every worker):
    `__init__` -> `start(wrapped, steps_per_epoch, total_steps)` -> [`load_state_dict`] ->
    `train_step(batch, step)` for each step -> `finish(data)` (rank 0 only) -> `found_arch()`.
    """

    config_model: ClassVar[type[MethodConfig]] = MethodConfig
    spaces: ClassVar[frozenset[str] | None] = None
    """Spaces the method applies to; None: every space with a supernet."""
    needs_table: ClassVar[bool] = False
    """Whether the method needs a latency table (`--hardware`)."""
    shares_weights: ClassVar[bool] = True
    """Whether the method trains the space's supernet (False: it sets `self.model` itself, `self.supernet` None)."""
    find_unused_parameters: ClassVar[bool] = True
    """Whether a step may leave parameters without a gradient (single-path sampling does): DDP must look."""

    def __init__(self, space: SearchSpace, config: MethodConfig, table: LatencyTable | None = None) -> None:
        self.check_applies(space)
        if self.needs_table and table is None:
            raise UserError(f"method {self.name()}: needs a latency table; pass --hardware TABLE")
        self.space = space
        self.config = config
        self.table = table
        self.supernet = space.supernet() if self.shares_weights else None
        self.model: nn.Module = MethodModel(self.supernet) if self.supernet is not None else nn.Module()
        """Everything the method trains (supernet and arch parameters): what DDP wraps and checkpoints save.
        A method adds its arch parameters to it (`self.model.gates = nn.ParameterDict(...)`) or replaces it by
        its own module whose `supernet` child is `self.supernet`."""
        self.wrapped: nn.Module = self.model
        self.steps_per_epoch = 1
        self.total_steps = 1
        self.weight_optimizer: torch.optim.Optimizer | None = None

    # -- identity and applicability -------------------------------------------------
    @classmethod
    def name(cls) -> str:
        """The registered name (the YAML stem)."""
        from nas.registry import METHODS

        return next(n for n in METHODS.names() if METHODS.get(n) is cls)

    @classmethod
    def check_applies(cls, space: SearchSpace) -> None:
        """A one-line `UserError` when this method does not apply to `space`, listing those it applies to."""
        if cls.spaces is not None and space.name not in cls.spaces:
            raise UserError(f"--method {cls.name()}: does not apply to space {space.name}; it applies to "
                            f"{', '.join(sorted(cls.spaces))}")

    @classmethod
    def check_setup(cls, space: SearchSpace, config: MethodConfig, table: LatencyTable | None) -> None:
        """One-line `UserError`s for a config that cannot run on this space and table (a latency target below
        the table's cheapest arch, say); `prepare` calls it before a run writes anything. Nothing by default."""

    # -- parameters and optimisation --------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """Architecture parameters (gates, thresholds), all inside `self.model`; none by default."""
        return []

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter of `self.model` that is not an architecture parameter."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.model.parameters() if p.requires_grad and id(p) not in arch]

    def start(self, wrapped: nn.Module, steps_per_epoch: int, total_steps: int) -> None:
        """Called once before the first step, after the trainer moved `self.model` to its device and wrapped
        it (`wrapped`: DDP, or the model itself with one worker). Forward passes that must sync gradients
        across workers go through `self.wrapped`. Builds the optimizers; a subclass adds its arch optimizer
        after calling this."""
        self.wrapped = wrapped
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps
        params = self.weight_parameters()
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": WEIGHT_DECAY},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        self.weight_optimizer = torch.optim.SGD([g for g in groups if g["params"]], lr=self.config.lr,
                                                momentum=MOMENTUM, nesterov=True)

    def lr_at(self, step: int) -> float:
        """The weight learning rate of `step`: cosine decay from `lr` to zero over the whole run."""
        return 0.5 * self.config.lr * (1 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))

    def weight_step(self, loss: torch.Tensor, step: int) -> None:
        """Backpropagate `loss` and take one SGD step on the weights at `lr_at(step)`. Gradients are cleared to
        None first, so parameters the step's path left unused get no momentum or weight-decay update."""
        assert self.weight_optimizer is not None, "start() was not called"
        self.weight_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.weight_optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        self.weight_optimizer.step()

    @staticmethod
    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy with label smoothing, as `nas.evaluate.train`."""
        return nn.functional.cross_entropy(logits, y, label_smoothing=LABEL_SMOOTHING)

    def in_warmup(self, step: int) -> bool:
        """Whether `step` is in the weights-only warm-up epochs."""
        return step < self.config.warmup_epochs * self.steps_per_epoch

    def step_rng(self, step: int, stream: int = 0) -> np.random.Generator:
        """A generator determined by (seed, step, stream): the same on every worker and on resume."""
        return np.random.default_rng([self.config.seed, step, stream])

    # -- what a method must define ------------------------------------------------------
    @abstractmethod
    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        """One training step (the weight update, and the arch update when due) on this worker's shard.

        Returns plain floats for progress: at least `loss`, and `expected_latency_ms` when the method has a
        latency table."""

    @abstractmethod
    def found_arch(self) -> Arch | None:
        """The arch the method found so far (e.g. the argmax of its arch parameters); None if it finds none
        by itself (it is found by a search over inherited weights instead)."""

    def found_metrics(self) -> dict[str, float]:
        """Metrics of the found arch the method measured itself (e.g. `supernet_accuracy`); none by default."""
        return {}

    def finish(self, data: Dataset) -> None:
        """Called once after the last step, on rank 0 only, before the final checkpoint: a method that finds
        its arch by scoring archs on `data` does it here (no-op by default)."""

    # -- state ------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        """Subclass state beyond the model and weight optimizer (arch optimizer, baselines): tensors, numbers,
        strings, lists and dicts only (checkpoints load with `weights_only=True`)."""
        return {}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what `_state` saved (no-op by default)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs: the model's tensors, the optimizers' state, subclass state."""
        assert self.weight_optimizer is not None, "start() was not called"
        return {"model": self.model.state_dict(), "weight_optimizer": self.weight_optimizer.state_dict(),
                "method": self._state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict()` into a method built with the same space and config, after `start`."""
        assert self.weight_optimizer is not None, "start() was not called"
        self.model.load_state_dict(state["model"])
        self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        self._load_state(state["method"])


def method_defaults(name: str) -> dict[str, Any]:
    """The defaults of method `name`: its `methods/<name>.yaml` (the one place they live), or none."""
    from nas.files import load_yaml

    path = METHODS_DIR / f"{name}.yaml"
    defaults = load_yaml(path) if path.exists() else None
    if defaults is not None and not isinstance(defaults, dict):
        raise UserError(f"{path}: method defaults must be a mapping of keys; got {shorten(defaults)}")
    return dict(defaults or {})


def parse_method_config(name: str, overrides: Mapping[str, Any], *, flags: Mapping[str, str] | None = None,
                        where: str | None = None) -> MethodConfig:
    """The checked config of method `name`: `methods/<name>.yaml` with `overrides` (`--set`, flags) on top.

    Args:
        name: a registered method (an unknown one is a `UserError` listing the known ones).
        overrides: config keys -> values.
        flags: key -> CLI flag, for messages (`seed` -> `--seed`); other keys are named as `--set KEY`.
        where: the source, for messages (default `method <name> (methods/<name>.yaml)`).
    """
    from nas.config import parse
    from nas.registry import METHODS

    cls = METHODS.get(name)
    return parse(cls.config_model, {**method_defaults(name), **overrides},
                 where or f"method {name} (methods/{name}.yaml)", flags=flags, owner=f"the {name} method")


def build_method(name: str, config: MethodConfig, space: SearchSpace,
                 table: LatencyTable | None = None) -> OneShotMethod:
    """The registered method `name` on `space` (its applicability checked first, before any supernet is built)."""
    from nas.registry import METHODS

    cls = METHODS.get(name)
    cls.check_applies(space)
    return cls(space, config, table)


__all__ = ["Batch", "METHODS_DIR", "MethodConfig", "MethodModel", "OneShotMethod", "build_method",
           "method_defaults", "parse_method_config"]
