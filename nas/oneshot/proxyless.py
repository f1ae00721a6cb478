"""ProxylessNAS: binary-gate (ProxylessNAS-G) or REINFORCE (ProxylessNAS-R) search with a latency loss.

Cai, Zhu and Han, "ProxylessNAS: Direct Neural Architecture Search on Target Task and Hardware"
(ICLR 2019); reference mit-han-lab/proxylessnas `search/nas_manager.py`, `search/modules/mix_op.py`,
`search/imagenet_arch_search.py` (defaults, in `methods/proxyless.yaml`). Every decision of the
space has architecture parameters alpha (normal(0, 1e-3)); p = softmax(alpha). A weight step trains
one path drawn from p (SGD, label smoothing); after the weights-only warm-up, and not in the first
joint epoch, every `arch_update_every`-th step of an epoch takes an architecture step (Adam) on a
batch of the held-out split: in `two` mode two paths per decision are drawn from p, the active one
of them from their renormalised probabilities, gates g are one-hot over them, and
dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i) over the pair, then the pair's alphas are shifted to
keep their total mass (`full` mode: every path, no shift); a decision whose active path is the zero
op is not updated. The loss is plain CE with a latency term from the table's expected latency
(`LatencyTable.expected_latency`, over the pair's renormalised probabilities in `two` mode, as the
reference's `current_prob_over_ops`): `mul#log` alpha*CE*(log E[lat]/log T)^beta or `add#linear`
CE + lambda*(E[lat] - T)/T; no target, no term. `grad_estimator: reinforce` instead samples
`rl_batch_size` paths per update (spread `rl_updates_per_epoch` over the epoch), rewards
acc*(T/LAT)^tau with the table's latency, and follows (reward - baseline) * grad log p. The found arch
is the argmax of alpha per decision (a chosen zero op skips its block).

Deviations: the reference's default gate mode `full_v2` recomputes the inactive paths in backward to
save memory; `full` here gives the same gradients by running them without a graph in forward, and
`two` (the paper's two-path sampling) is this package's default. The weight learning rate follows the
reference's two cosine schedules (warm-up from `warmup_lr`, then from `lr`) but within one run of
`epochs` epochs, `warmup_epochs` of them the warm-up. The held-out split is `arch_fraction` of the
training set (the reference holds out 50,000 ImageNet images, about 4%). The table prices the
space's own latency keys at its own config (the reference's mobile LUT keys); `mul#log` needs every
arch above 1 ms, where log E[lat] / log T keeps its sign. The block shortcut sits inside each
candidate (see `nas.ops.mixed`); the gate-to-alpha gradient is unchanged by it. Accuracy for
REINFORCE is averaged over the workers' shards.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from nas.arch import Arch
from nas.errors import UserError
from nas.oneshot._binary_gates import (
    BinaryMode,
    GateSample,
    LossForm,
    all_reduce_mean,
    gate_alpha_grad,
    latency_loss,
    path_probs,
    reinforce_reward,
    rescale_pair,
    sample_gates,
    sample_path,
    spread_updates,
    update_baseline,
)
from nas.oneshot.base import Batch, MethodConfig, OneShotMethod
from nas.registry import METHODS
from nas.supernet import module_name

_WEIGHT_STREAM, _ARCH_STREAM = 0, 1  # `step_rng` streams: weight-step paths, arch-step samples (+ update index)
Beta = Annotated[float, Field(ge=0, lt=1)]


class ProxylessConfig(MethodConfig):
    """ProxylessNAS keys (defaults in methods/proxyless.yaml, from the reference's search script).

    `target_ms` is T (None: CE alone, REINFORCE rewards accuracy alone); `mul_alpha`, `mul_beta` and
    `add_lambda` are the two loss forms' constants; `arch_*` the Adam optimizer of alpha, its init std and
    its schedule (`arch_update_steps` updates every `arch_update_every` steps); `rl_*` REINFORCE's
    sampled paths per update, updates per epoch, baseline decay and latency trade-off tau.
    """

    grad_estimator: Literal["binary_gate", "reinforce"]
    binary_mode: BinaryMode
    loss: LossForm
    target_ms: Annotated[float, Field(gt=0, le=1e7)] | None
    mul_alpha: float = Field(gt=0, le=1e3)
    mul_beta: float = Field(gt=0, le=100)
    add_lambda: float = Field(ge=0, le=1e4)
    warmup_lr: float = Field(gt=0, le=10)
    arch_lr: float = Field(gt=0, le=10)
    arch_beta1: Beta
    arch_beta2: Beta
    arch_eps: float = Field(gt=0, le=1)
    arch_init_std: float = Field(ge=0, le=10)
    arch_update_every: int = Field(ge=1, le=10_000_000)
    arch_update_steps: int = Field(ge=1, le=1000)
    rl_batch_size: int = Field(ge=1, le=10_000)
    rl_updates_per_epoch: int = Field(ge=1, le=10_000_000)
    rl_baseline_decay: float = Field(ge=0, le=1)
    rl_tradeoff: float = Field(ge=0, le=100)


@METHODS.register("proxyless")
class ProxylessMethod(OneShotMethod):
    """ProxylessNAS-G (binary gates) or -R (REINFORCE) over the mixed ops of a chain supernet."""

    config_model = ProxylessConfig
    config: ProxylessConfig
    spaces = frozenset({"proxylessnas"})
    needs_table = True

    def __init__(self, space: Any, config: ProxylessConfig, table: Any = None) -> None:
        super().__init__(space, config, table)
        self.check_setup(space, config, table)
        self._decisions = list(space.decisions())
        self._by_name = {d.name: d for d in self._decisions}
        self._points = self.supernet.choice_points()
        for d in self._decisions:
            if not {str(c) for c in d.choices} <= set(self._points[d.name].choices):
                raise ValueError(f"{space.name} supernet: mixed op of {d.name} lacks some of its decision's choices")
        gen = torch.Generator().manual_seed(config.seed)
        self.model.alphas = nn.ParameterDict({  # AP_path_alpha, init normal(0, arch_init_ratio)
            module_name(d.name): nn.Parameter(torch.randn(len(d.choices), generator=gen) * config.arch_init_std)
            for d in self._decisions})
        self.arch_optimizer: torch.optim.Optimizer | None = None
        self._baseline: float | None = None

    @classmethod
    def check_setup(cls, space: Any, cfg: ProxylessConfig, table: Any) -> None:
        """One-line `UserError`s for a config that cannot run with this space and table (checked before a run
        writes anything): no held-out split, a target below the table's lower bound, `mul#log` under 1 ms."""
        if cfg.arch_fraction <= 0:
            raise UserError("method proxyless: arch_fraction must be above 0 (architecture steps use a held-out "
                            f"split of the training set, the reference's 50,000 images); got {cfg.arch_fraction}")
        table.check_matches(space)
        table.check_covers(space)
        bound = table.lower_bound(space)
        if cfg.target_ms is not None and cfg.target_ms < bound:
            raise UserError(f"method proxyless: target_ms {cfg.target_ms:.4g} ms is below the latency table's "
                            f"lower bound {bound:.4g} ms (the cheapest {space.name} arch, {table.source}); "
                            f"choose target_ms >= {bound:.4g}")
        if cfg.target_ms is not None and cfg.grad_estimator == "binary_gate" and cfg.loss == "mul#log" and bound <= 1:
            raise UserError(f"method proxyless: loss mul#log needs every arch above 1 ms (log E[lat] / log T "
                            f"changes sign below); the table's lower bound is {bound:.4g} ms ({table.source}); "
                            "use loss add#linear")

    # -- parameters and schedule ----------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.model.alphas.values())

    def start(self, wrapped: nn.Module, steps_per_epoch: int, total_steps: int) -> None:
        super().start(wrapped, steps_per_epoch, total_steps)
        cfg = self.config
        self.arch_optimizer = torch.optim.Adam(self.arch_parameters(), lr=cfg.arch_lr,
                                               betas=(cfg.arch_beta1, cfg.arch_beta2), eps=cfg.arch_eps,
                                               weight_decay=0.0)

    def lr_at(self, step: int) -> float:
        """Cosine from `warmup_lr` over the warm-up steps [nas_manager.py `warm_up`], then cosine from `lr`
        over the remaining steps [run_manager.py `_calc_learning_rate`]."""
        warm = self.config.warmup_epochs * self.steps_per_epoch
        if step < warm:
            return 0.5 * self.config.warmup_lr * (1 + math.cos(math.pi * step / warm))
        rest = max(self.total_steps - warm, 1)
        return 0.5 * self.config.lr * (1 + math.cos(math.pi * min(step - warm, rest) / rest))

    def arch_updates_at(self, epoch: int, step: int) -> int:
        """How many architecture updates follow the weight step `step`: none in the warm-up and in the first
        joint epoch [nas_manager.py `train`: `if epoch > 0`], else as the estimator's schedule says."""
        cfg = self.config
        if epoch <= cfg.warmup_epochs or self.in_warmup(step):
            return 0
        index = step - epoch * self.steps_per_epoch
        if cfg.grad_estimator == "reinforce":
            return int(index in spread_updates(self.steps_per_epoch, cfg.rl_updates_per_epoch))
        return cfg.arch_update_steps if (index + 1) % cfg.arch_update_every == 0 else 0

    # -- probabilities and paths ------------------------------------------------------------
    def _alpha(self, decision: str) -> nn.Parameter:
        return self.model.alphas[module_name(decision)]

    def probabilities(self) -> dict[str, np.ndarray]:
        """Decision -> softmax(alpha) over its choices (float64)."""
        return {d.name: torch.softmax(self._alpha(d.name).detach().double().cpu(), 0).numpy()
                for d in self._decisions}

    def sample_arch(self, rng: np.random.Generator) -> tuple[Arch, dict[str, int]]:
        """One path per decision drawn from softmax(alpha), and each decision's chosen index."""
        probs = self.probabilities()
        index = {d.name: sample_path(probs[d.name], rng) for d in self._decisions}
        return self.space.make_arch({d.name: d.choices[index[d.name]] for d in self._decisions}), index

    def expected_latency(self) -> torch.Tensor:
        """E[latency] (ms) of an arch drawn from softmax(alpha), from the table (no graph)."""
        probs = {d.name: torch.softmax(self._alpha(d.name).detach().double().cpu(), 0) for d in self._decisions}
        return self.table.expected_latency(probs, self.space)

    def found_arch(self) -> Arch:
        """argmax alpha per decision [mix_op.py `chosen_index`] (the first of equals)."""
        probs = self.probabilities()
        return self.space.make_arch({d.name: d.choices[int(np.argmax(probs[d.name]))] for d in self._decisions})

    def found_metrics(self) -> dict[str, float]:
        """The found arch's latency from the table, and the expected latency under softmax(alpha)."""
        return {"lut_latency_ms": self.table.predict(self.found_arch()),
                "expected_latency_ms": float(self.expected_latency())}

    # -- steps ------------------------------------------------------------------------------------
    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        self.model.train()
        arch, _ = self.sample_arch(self.step_rng(step, _WEIGHT_STREAM))
        self.supernet.activate(arch)
        loss = self.loss(self.wrapped(batch.x), batch.y)
        self.weight_step(loss, step)
        metrics = {"loss": float(loss.detach())}
        for k in range(self.arch_updates_at(batch.epoch, step)):
            x, y = batch.arch_data()
            rng = self.step_rng(step, _ARCH_STREAM + k)
            metrics.update(self.gradient_step(x, y, rng) if self.config.grad_estimator == "binary_gate"
                           else self.reinforce_step(x, y, rng))
        self.supernet.activate(arch)  # leave every mixed op in `active` mode
        metrics["expected_latency_ms"] = float(self.expected_latency())
        return metrics

    def gradient_step(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> dict[str, float]:
        """One binary-gate architecture update on (x, y) [nas_manager.py `gradient_step`]; the network is in
        train mode, and the weights are left as they are (their gradients are not computed)."""
        cfg = self.config
        probs = self.probabilities()
        samples: dict[str, GateSample] = {}
        gates: dict[str, torch.Tensor] = {}
        for d in self._decisions:
            alpha = self._alpha(d.name)
            sample = samples[d.name] = sample_gates(probs[d.name], cfg.binary_mode, rng)
            gate = torch.zeros(len(sample.involved), dtype=alpha.dtype, device=alpha.device)
            gate[0] = 1.0  # AP_path_wb: one-hot on the active path
            gates[d.name] = gate.requires_grad_()
            tokens = [str(d.choices[i]) for i in sample.involved]
            self._points[d.name].set_sampled(tokens, gate, no_grad=tokens[1:])
        ce = nn.functional.cross_entropy(self.supernet.run(x), y)  # the reference's arch CE: no smoothing
        two = cfg.binary_mode == "two"
        loss_probs = {d.name: path_probs(self._alpha(d.name), samples[d.name] if two else None).cpu()
                      for d in self._decisions}
        expected = self.table.expected_latency(loss_probs, self.space).to(ce.device, ce.dtype)
        loss = latency_loss(ce, expected, cfg.target_ms, cfg.loss, cfg.mul_alpha, cfg.mul_beta, cfg.add_lambda)
        names = [d.name for d in self._decisions]
        alphas = [self._alpha(n) for n in names]
        grads = torch.autograd.grad(loss, [gates[n] for n in names] + alphas, allow_unused=True)
        updates: dict[str, torch.Tensor] = {}
        for name, alpha, gate_grad, direct in zip(names, alphas, grads[:len(names)], grads[len(names):],
                                                  strict=True):
            sample = samples[name]
            if self._is_zero(name, sample.active):
                continue  # the reference sets this alpha's gradient to None: no update
            grad = torch.zeros_like(alpha) if direct is None else direct.clone()
            index = torch.tensor(sample.involved, device=alpha.device)
            gate_grad = torch.zeros_like(gates[name]) if gate_grad is None else gate_grad
            grad[index] += gate_alpha_grad(gate_grad, torch.softmax(alpha.detach()[index], 0))
            updates[name] = grad
        self._apply(updates, samples if two else None)
        return {"arch_loss": float(loss.detach())}

    def reinforce_step(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> dict[str, float]:
        """One REINFORCE update from `rl_batch_size` sampled paths [nas_manager.py `rl_update_step`]."""
        cfg = self.config
        names = [d.name for d in self._decisions]
        alphas = [self._alpha(n) for n in names]
        archs, accuracies, grads = [], [], []
        for _ in range(cfg.rl_batch_size):
            arch, index = self.sample_arch(rng)
            self.supernet.activate(arch)
            with torch.no_grad():  # train mode, as the reference: batch-norm statistics of this batch
                accuracies.append((self.supernet.run(x).argmax(1) == y).double().mean())
            log_prob = sum(torch.log_softmax(a, 0)[index[n]] for n, a in zip(names, alphas, strict=True))
            grads.append(torch.autograd.grad(-log_prob, alphas))
            archs.append(arch)
        accuracy = torch.stack(accuracies)
        all_reduce_mean([accuracy])
        rewards = [reinforce_reward(float(acc), self.table.predict(arch), cfg.target_ms, cfg.rl_tradeoff)
                   for acc, arch in zip(accuracy, archs, strict=True)]
        self._baseline = baseline = update_baseline(self._baseline, sum(rewards) / len(rewards),
                                                    cfg.rl_baseline_decay)
        updates = {name: sum((r - baseline) * g[i] for r, g in zip(rewards, grads, strict=True)) / len(rewards)
                   for i, name in enumerate(names)}
        self._apply(updates, None)
        return {"reward": sum(rewards) / len(rewards), "baseline": baseline}

    def _is_zero(self, decision: str, index: int) -> bool:
        """Whether choice `index` of `decision` is the zero op (a module-less candidate)."""
        return self._points[decision].candidate(str(self._by_name[decision].choices[index])) is None

    def _apply(self, updates: dict[str, torch.Tensor], samples: dict[str, GateSample] | None) -> None:
        """Average the gradients over workers, take one Adam step, and in two mode keep each pair's mass."""
        assert self.arch_optimizer is not None, "start() was not called"
        all_reduce_mean(list(updates.values()))
        old = {name: self._alpha(name).detach()[list(samples[name].involved)].clone()
               for name in updates} if samples else {}
        self.arch_optimizer.zero_grad(set_to_none=True)
        for name, grad in updates.items():
            self._alpha(name).grad = grad
        self.arch_optimizer.step()
        self.arch_optimizer.zero_grad(set_to_none=True)
        for name, before in old.items():
            rescale_pair(self._alpha(name), before, samples[name].involved)

    # -- state ------------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        assert self.arch_optimizer is not None, "start() was not called"
        return {"arch_optimizer": self.arch_optimizer.state_dict(),
                "baseline": [] if self._baseline is None else [self._baseline]}

    def _load_state(self, state: dict[str, Any]) -> None:
        assert self.arch_optimizer is not None, "start() was not called"
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        self._baseline = state["baseline"][0] if state["baseline"] else None


__all__ = ["ProxylessConfig", "ProxylessMethod"]
