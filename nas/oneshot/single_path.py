"""Single-Path NAS: one superkernel per layer, its choices made by trainable thresholds, with a runtime loss.

Stamoulis et al., "Single-Path NAS: Designing Hardware-Efficient ConvNets in less than 4 Hours"
(ECML-PKDD 2019, arXiv:1904.02877); reference dstamoulis/single-path-nas `nas-search/superkernel.py`
(`Indicator`, `DepthwiseConv2DMasked`), `singlepath_supernet.py`, `search_main.py`, `nas_utils.py`.
Every searchable layer runs at full width (k5e6) with its depthwise kernel masked by three
indicators, in the reference's order: d_k5 = 1(||w_5x5\\3x3|| > t_k5), w_k = w_3x3 + d_k5 w_5x5\\3x3;
d_e6 = 1(||w_k,100c|| > t_e6); on a skippable layer d_keep = 1(||w_k,50c|| > t_skip), else 1; kernel
= d_keep (w_k,50c + d_e6 w_k,100c). An indicator's value is the step 1(x >= 0) and its gradient that
of sigmoid(x) (straight-through). The thresholds start at 0 (every layer k5e6) and are trained with
the weights by the same optimizer, on loss CE + lambda ln R, R the runtime of the indicators: per
layer, from the table's entries R(k, e) of its four sub-kernels, `reference`: R_ch = d_keep (R(5,3) +
d_e6 (R(5,6) - R(5,3))), R = R_ch r + R_ch (1 - r) d_k5 with r = R(3,6) / R(5,6) [superkernel.py], or
`exact`: the multilinear form that equals the table's price of every 0/1 setting; a skip costs 0;
R adds the table's intercept and fixed units. During the warm-up epochs lambda is 0 and every
indicator is dropped with probability 1 - keep and otherwise scaled by 1 / keep (TF 1's
`tf.nn.dropout(x, keep_prob)`, [nas_utils.py `build_dropout_rate`]). The found arch is read off the
indicators without dropout: skip if d_keep = 0, else k{3,5} by d_k5 and e{3,6} by d_e6.

Deviations: PyTorch's RMSProp adds eps outside the square root and starts its mean square at 0
(TF 1's inside, from 1); there is no weight EMA (the reference evaluates with a 0.9999 EMA); weight
decay skips biases (the reference decays every non-batch-norm variable); `optimizer: sgd` trains
with this package's recipe instead. `runtime_lambda` multiplies ln R (ms) directly: the
reference's flag 0.020 with its hard-coded x1000 is 20 here. Runtimes come from this package's
latency table at the space's config, not the Pixel 1 table, and the fixed parts' cost is the table's
(the reference's constant 19.5999 ms). Batch norm momentum and init are the space's (`nas.ops.mbconv`).
`threshold_init` (an addition, default 0: the paper) starts each threshold at that fraction of the initial
norm of its kernel part instead of 0, so that a short proxy run's indicators start where their sigmoid
gradients are not vanishing (used by `benchmarks/_oneshot_latency.py`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from nas.arch import Arch
from nas.errors import UserError
from nas.oneshot.base import WEIGHT_DECAY, Batch, MethodConfig, OneShotMethod
from nas.registry import METHODS
from nas.supernet import module_name

_OPS = ("k3e3", "k3e6", "k5e3", "k5e6")  # the table's column order [superkernel.py runtimes]
_SKIP = "skip"
_RMSPROP_DECAY = 1e-5  # the reference's weight decay [search_main.py `weight_decay`]
RuntimeForm = Literal["reference", "exact"]


class SinglePathMethodConfig(MethodConfig):
    """Single-Path NAS keys (defaults in methods/single_path.yaml): `runtime_lambda` is lambda on ln R (ms);
    `indicator_keep` the keep probability of indicator dropout in the warm-up; `runtime_form` the per-layer
    runtime model (`reference` or `exact`); `optimizer` of weights and thresholds together: `rmsprop` as the
    reference, or `sgd`, this package's recipe (`nas.oneshot.base`)."""

    runtime_lambda: float = Field(ge=0, le=1e4)
    indicator_keep: float = Field(gt=0, le=1)
    runtime_form: RuntimeForm
    optimizer: Literal["rmsprop", "sgd"]
    threshold_init: float = Field(default=0.0, ge=0, le=1)
    """Each threshold starts at this fraction of the initial norm of the kernel part it is compared with; 0 is
    the paper's zeros. A short proxy run needs it near 1: at 0 the indicators' sigmoid gradients are ~1e-4 and
    the thresholds barely move (the reference relies on ~3,750 post-warm-up steps)."""


def indicator(x: torch.Tensor) -> torch.Tensor:
    """1(x >= 0) in value, d sigmoid(x) / dx in gradient [superkernel.py `Indicator`]."""
    soft = torch.sigmoid(x)
    return ((x >= 0).to(x.dtype) - soft).detach() + soft


def layer_runtime(d_k5: torch.Tensor, d_e6: torch.Tensor, d_keep: torch.Tensor | float, costs: torch.Tensor,
                  form: RuntimeForm) -> torch.Tensor:
    """The runtime (ms) of one layer as a function of its indicators; `costs` are R(k3e3), R(k3e6), R(k5e3),
    R(k5e6). `reference` [superkernel.py, end of `build`]; `exact`: d_keep * sum of each sub-kernel's cost
    times the product of the indicators (or their complements) that select it."""
    r33, r36, r53, r56 = costs
    if form == "reference":
        ratio = r36 / r56
        channels = d_keep * (r53 + d_e6 * (r56 - r53))
        return channels * ratio + channels * (1 - ratio) * d_k5
    return d_keep * ((1 - d_k5) * ((1 - d_e6) * r33 + d_e6 * r36) + d_k5 * ((1 - d_e6) * r53 + d_e6 * r56))


def op_of(d_k5: float, d_e6: float, d_keep: float) -> str:
    """The op of hard indicator values [parse_search_output.py `encode_single_path_nas_arch`, with the
    expansions mapped as meant: enyac-group/single-path-nas issue 8]."""
    if d_keep < 0.5:
        return _SKIP
    return f"k{5 if d_k5 >= 0.5 else 3}e{6 if d_e6 >= 0.5 else 3}"


class ThresholdSupernet(nn.Module):
    """The supernet with its thresholds, running the paper's masked full-width forward.

    `forward(x)` returns (logits, runtime in ms); indicator dropout multipliers for the next forward are
    set with `set_dropout` (None: no dropout).

    Args:
        supernet: the `SinglePathSupernet`.
        costs: decision -> the table's costs of its four sub-kernels (ms), in `_OPS` order.
        fixed_ms: the table's intercept plus its fixed units (stem, first and last layers, head).
        form: the per-layer runtime model.
    """

    def __init__(self, supernet: nn.Module, costs: dict[str, list[float]], fixed_ms: float,
                 form: RuntimeForm) -> None:
        super().__init__()
        self.supernet = supernet
        space = supernet.space
        front, _, back = space.chain
        self._front, self._back = [n for n, _ in front], [n for n, _ in back]
        self._layers = dict(supernet.choice_points())  # decision -> SuperkernelMBConv, in network order
        skippable = {d.name for d in space.decisions() if _SKIP in d.choices}
        self._skippable = skippable
        zeros = {module_name(d): nn.Parameter(torch.zeros(1)) for d in self._layers}
        self.t_k5 = nn.ParameterDict(zeros)
        self.t_e6 = nn.ParameterDict({k: nn.Parameter(torch.zeros(1)) for k in zeros})
        self.t_skip = nn.ParameterDict({module_name(d): nn.Parameter(torch.zeros(1)) for d in self._layers
                                        if d in skippable})
        self.register_buffer("costs", torch.tensor([costs[d] for d in self._layers], dtype=torch.float64),
                             persistent=False)
        self.fixed_ms = fixed_ms
        self.form = form
        self._dropout: dict[str, torch.Tensor] | None = None

    @property
    def decisions(self) -> list[str]:
        """The searchable layers' decisions, in network order."""
        return list(self._layers)

    def thresholds(self) -> list[nn.Parameter]:
        return [*self.t_k5.values(), *self.t_e6.values(), *self.t_skip.values()]

    def set_dropout(self, multipliers: dict[str, np.ndarray] | None) -> None:
        """Decision -> (d_k5, d_e6, d_keep) multipliers for the next forward passes; None: no dropout."""
        self._dropout = None if multipliers is None else {
            d: torch.as_tensor(m, dtype=torch.float32) for d, m in multipliers.items()}

    def indicators(self, decision: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | float]:
        """(d_k5, d_e6, d_keep) of a layer, in the reference's order, each a scalar (dropout applied)."""
        layer, key = self._layers[decision], module_name(decision)
        drop = self._dropout[decision].to(self.t_k5[key].device) if self._dropout is not None else None
        inner, ring = layer.kernel_parts()
        d_k5 = indicator(torch.linalg.vector_norm(ring) - self.t_k5[key][0])
        if drop is not None:
            d_k5 = d_k5 * drop[0]
        half, rest = layer.channel_halves(inner + d_k5 * ring)
        d_e6 = indicator(torch.linalg.vector_norm(rest) - self.t_e6[key][0])
        if drop is not None:
            d_e6 = d_e6 * drop[1]
        if decision not in self._skippable:
            return d_k5, d_e6, 1.0  # a stage's first layer cannot be skipped
        d_keep = indicator(torch.linalg.vector_norm(half) - self.t_skip[key][0])
        return d_k5, d_e6, d_keep if drop is None else d_keep * drop[2]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for name in self._front:
            x = self.supernet.get_submodule(name)(x)
        runtime: torch.Tensor | float = self.fixed_ms
        for i, (decision, layer) in enumerate(self._layers.items()):
            d_k5, d_e6, d_keep = self.indicators(decision)
            x = layer.forward_with_kernel(x, layer.threshold_kernel(d_k5, d_e6, d_keep))
            runtime = runtime + layer_runtime(d_k5, d_e6, d_keep, self.costs[i].to(d_k5.dtype), self.form)
        for name in self._back:
            x = self.supernet.get_submodule(name)(x)
        return x, torch.as_tensor(runtime)  # (B, num_classes), ()

    @torch.no_grad()
    def start_thresholds_at(self, fraction: float) -> None:
        """Set every threshold to `fraction` of the norm it is compared with now, every layer at k5e6 (the
        norms of w_k's halves taken with the 5x5 ring, as the indicators see them at k5)."""
        for decision, layer in self._layers.items():
            key = module_name(decision)
            inner, ring = layer.kernel_parts()
            half, rest = layer.channel_halves(inner + ring)
            self.t_k5[key].fill_(fraction * float(torch.linalg.vector_norm(ring)))
            self.t_e6[key].fill_(fraction * float(torch.linalg.vector_norm(rest)))
            if decision in self._skippable:
                self.t_skip[key].fill_(fraction * float(torch.linalg.vector_norm(half)))

    @torch.no_grad()
    def runtime(self) -> float:
        """R (ms) of the current indicators without dropout."""
        saved, self._dropout = self._dropout, None
        try:
            total = self.fixed_ms
            for i, decision in enumerate(self._layers):
                d_k5, d_e6, d_keep = self.indicators(decision)
                total += float(layer_runtime(d_k5, d_e6, d_keep, self.costs[i].to(d_k5.dtype), self.form))
            return total
        finally:
            self._dropout = saved

    @torch.no_grad()
    def read_ops(self) -> dict[str, str]:
        """Decision -> the op its indicators select, without dropout [§2.4 order]."""
        saved, self._dropout = self._dropout, None
        try:
            return {d: op_of(*(float(v) for v in self.indicators(d))) for d in self._layers}
        finally:
            self._dropout = saved


@METHODS.register("single_path")
class SinglePathMethod(OneShotMethod):
    """Single-Path NAS on the `single_path` space: superkernels, trainable thresholds, runtime loss."""

    config_model = SinglePathMethodConfig
    config: SinglePathMethodConfig
    spaces = frozenset({"single_path"})
    needs_table = True
    find_unused_parameters = False  # the masked forward runs every weight and threshold each step

    def __init__(self, space: Any, config: SinglePathMethodConfig, table: Any = None) -> None:
        super().__init__(space, config, table)
        self.check_setup(space, config, table)
        costs, fixed = _costs(space, table)
        self.model = ThresholdSupernet(self.supernet, costs, fixed, config.runtime_form)
        if config.threshold_init > 0:
            self.model.start_thresholds_at(config.threshold_init)
        self.wrapped = self.model

    @classmethod
    def check_setup(cls, space: Any, config: SinglePathMethodConfig, table: Any) -> None:
        """A one-line `UserError` when the table does not price the space, or the runtime model is not positive
        for every 0/1 setting of the indicators (ln R would be undefined); checked before a run writes anything."""
        table.check_matches(space)
        table.check_covers(space)
        costs, cheapest = _costs(space, table)
        form = config.runtime_form
        for d in space.decisions():
            options = [float(layer_runtime(torch.tensor(float(op[1] == "5")), torch.tensor(float(op[3] == "6")),
                                           1.0, torch.tensor(costs[d.name]), form)) for op in _OPS]
            cheapest += min(options + ([0.0] if _SKIP in d.choices else []))
        if not cheapest > 0:
            raise UserError(f"method single_path: runtime_form {form} prices the cheapest {space.name} arch at "
                            f"{cheapest:.4g} ms from {table.source}; ln R needs a positive runtime; "
                            "use runtime_form exact or a table with a positive lower bound")

    def arch_parameters(self) -> list[nn.Parameter]:
        return self.model.thresholds()

    def start(self, wrapped: nn.Module, steps_per_epoch: int, total_steps: int) -> None:
        """One optimizer for weights and thresholds, as the reference: RMSProp (decay 0.9, momentum 0.9,
        eps 1e-3, weight decay 1e-5 on every weight but batch norms' and biases) [nas_utils.py
        `build_optimizer`, search_main.py], or the base's SGD with the thresholds added."""
        super().start(wrapped, steps_per_epoch, total_steps)
        if self.config.optimizer == "sgd":
            self.weight_optimizer.add_param_group({"params": self.arch_parameters(), "weight_decay": WEIGHT_DECAY})
            return
        params = self.weight_parameters()
        decayed = [p for p in params if p.ndim > 1] + self.arch_parameters()
        groups = [{"params": decayed, "weight_decay": _RMSPROP_DECAY},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        self.weight_optimizer = torch.optim.RMSprop([g for g in groups if g["params"]], lr=self.config.lr,
                                                    alpha=0.9, momentum=0.9, eps=1e-3)

    def lr_at(self, step: int) -> float:
        """RMSProp: `lr` times 0.97 every 2.4 epochs, staircase [nas_utils.py `build_learning_rate`, no warm-up
        in the search]; SGD: the base's cosine decay."""
        if self.config.optimizer == "sgd":
            return super().lr_at(step)
        return self.config.lr * 0.97 ** math.floor(step / (2.4 * self.steps_per_epoch))

    def dropout_at(self, step: int) -> dict[str, np.ndarray] | None:
        """Indicator multipliers of `step`: in the warm-up, 0 with probability 1 - keep, else 1 / keep."""
        keep = self.config.indicator_keep
        if not self.in_warmup(step) or keep >= 1:
            return None
        rng = self.step_rng(step)
        return {d: (rng.random(3) < keep) / keep for d in self.model.decisions}

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        """One step of weights and thresholds on CE (+ lambda ln R after the warm-up [search_main.py
        `nas_model_fn`]); `expected_latency_ms` is R of the step's indicators without dropout."""
        self.model.train()
        runtime_ms = self.model.runtime()
        self.model.set_dropout(self.dropout_at(step))
        try:
            logits, runtime = self.wrapped(batch.x)
        finally:
            self.model.set_dropout(None)
        ce = self.loss(logits, batch.y)
        warm = self.in_warmup(step) or self.config.runtime_lambda == 0
        loss = ce if warm else ce + self.config.runtime_lambda * torch.log(runtime.to(ce.dtype))
        self.weight_step(loss, step)
        return {"loss": float(loss.detach()), "ce": float(ce.detach()), "expected_latency_ms": runtime_ms}

    def found_arch(self) -> Arch:
        """The ops the thresholds select now (indicators without dropout)."""
        return self.space.make_arch(self.model.read_ops())

    def found_metrics(self) -> dict[str, float]:
        """The found arch's latency from the table, and R of the thresholds' indicators."""
        return {"lut_latency_ms": self.table.predict(self.found_arch()), "expected_latency_ms": self.model.runtime()}


def _costs(space: Any, table: Any) -> tuple[dict[str, list[float]], float]:
    """Per searchable layer, the table's cost (ms) of its four sub-kernels in `_OPS` order; and the intercept
    plus the fixed units' cost."""
    front, by_choice, back = space.chain
    intercept = table.predict_keys([])
    costs = {d: [table.predict_keys([units[op][1]]) - intercept for op in _OPS] for d, units in by_choice}
    return costs, table.predict_keys([key for _, key in (*front, *back)])


__all__ = ["SinglePathMethod", "SinglePathMethodConfig", "ThresholdSupernet", "indicator", "layer_runtime",
           "op_of"]
