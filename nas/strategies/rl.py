"""`rl`: NASNet's RL controller, an LSTM that emits an arch one decision at a time, trained with PPO.

Zoph, Vasudevan, Shlens, Le, "Learning Transferable Architectures for Scalable Image Recognition",
CVPR 2018, §3 and appendix A (../shared/reference/nasnet.md §7): a one-layer LSTM makes one softmax
prediction per decision, the embedding of each sampled token is the next step's input, and the
controller is trained with Proximal Policy Optimization (Schulman et al. 2017, clipped objective) on
the child's validation accuracy minus an exponential-moving-average baseline, with an entropy
penalty; weights start uniform in [-0.1, 0.1] (values as the reference recalls them, UNVERIFIED).
REINFORCE with the same baseline (Zoph & Le, ICLR 2017; NAS-Bench-201's
`exps/NATS-algos/reinforce.py`) is the `algorithm: reinforce` option.
Settings and sources are in strategies/rl.yaml. Deviations:
- Any registered space: one softmax per decision of `space.decisions()`, in its order, each with its
  own output layer and token embeddings (NASNet's 2 x 5B predictions are the special case).
- Reward: the objective's score (`weighted` is MnasNet's reward, the natural one). An arch that
  breaks a hard bound scores about -1e9 (`nas.objective.INFEASIBLE`), which would swamp every
  gradient, so it is mapped into a bounded range below the feasible ones: with lo and hi the worst
  and best feasible scores told so far (0 and 1 before any), its reward is
  `lo - spread * v / (1 + v)`, v its total relative violation and spread `hi - lo` (or `max(|lo|, 1)`
  while hi = lo): the worst feasible arch ranks above it, and a smaller violation ranks higher.
- Advantage: (reward - baseline) divided by the running RMS of (reward - baseline), both moving
  averages with the paper's decay, bias-corrected (NAS-Bench-201's `ExponentialMovingAverage`).
  The paper feeds raw accuracy; the scaling (OpenAI baselines' ppo2, inherited by NNI's PPO tuner,
  normalises advantages per batch) lets one learning rate fit any objective's units, and running
  statistics keep it defined for a batch of one. Each reward is compared with the baseline before it.
- Batches: `ask(n)` samples n archs at once and keeps each token's log-probability; tells come in
  any order, and every `batch_size` tells make one update (PPO: `ppo_epochs` full-batch Adam steps;
  REINFORCE: one step on the arch's joint log-probability). The paper's GPU work queue updated the
  controller asynchronously.
- PPO clips one probability ratio per decision (to its log-probability at ask time), each with its
  arch's advantage, as NNI's PPO tuner (ppo2, one action per time step) does: a single ratio of the
  whole arch leaves the clip range after a tiny change per decision, and learnt far slower on
  21-decision spaces. The entropy bonus is on the mean entropy per decision, so one weight suits
  spaces of 6 to 45 decisions.
- Archs that break a space rule (`space.check`) are drawn again from the policy (up to
  `space.max_draws` rounds per ask); the kept arch's log-probability is that of its own draw.
- An arch the policy did not draw (`Strategy.adopt`: the dedup wrapper's unseen arch in place of
  a repeat) is learnt with its log-probability under the policy when it was adopted.
- Defaults suit searches of hundreds to thousands of archs: a higher learning rate and entropy weight
  than the paper's 20,000-arch search (rl.yaml gives both, and the NAS-Bench-201 runs that chose them).
Torch runs on one thread inside the strategy (the caller's setting is restored after each call),
so the same seed and tells give the same asks bit for bit; its generator is private, never global.
"""

from __future__ import annotations

import base64
import math
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import ConfigDict, Field

from nas import objective as objectives
from nas.arch import Arch
from nas.errors import NasError, UserError
from nas.registry import STRATEGIES
from nas.strategies.base import Strategy, StrategyConfig

if TYPE_CHECKING:
    import torch

_PAD = -1e9
"""Logit of a padding slot (decisions with fewer choices than the widest): its probability is 0."""


class RLConfig(StrategyConfig):
    """Hyper-parameters of the controller and its training (defaults and sources in strategies/rl.yaml)."""

    model_config = ConfigDict(allow_inf_nan=False)

    algorithm: Literal["ppo", "reinforce"] = Field(description="PPO (the paper) or REINFORCE")
    hidden_size: int = Field(ge=1, le=1024, description="LSTM hidden units, also the token embedding size")
    learning_rate: float = Field(gt=0, le=1, description="Adam step size of the controller")
    batch_size: int = Field(ge=1, le=10_000, description="rewards per policy update")
    ppo_epochs: int = Field(ge=1, le=100, description="Adam steps per PPO update (full batch each)")
    clip: float = Field(gt=0, le=1, description="PPO clip range epsilon of the probability ratio")
    entropy_weight: float = Field(ge=0, le=100, description="weight of the mean per-decision entropy bonus")
    baseline_decay: float = Field(ge=0, lt=1, description="decay of the moving-average reward baseline")
    init_range: float = Field(gt=0, le=1, description="controller weights start uniform in [-r, r]")


def _moved(average: list[float], value: float, decay: float) -> list[float]:
    """A bias-corrected moving average, kept as (decayed sum, decayed weight), moved on by `value`
    (NAS-Bench-201's `ExponentialMovingAverage`: its value is sum / weight, exact from the first value)."""
    return [decay * average[0] + (1 - decay) * value, decay * average[1] + 1 - decay]


@contextmanager
def _one_thread() -> Iterator[None]:
    """Torch on one thread for the block (a tiny LSTM gains nothing from more, and results then do not
    depend on the caller's thread count); the caller's setting comes back afterwards."""
    import torch

    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


def _encode(tensor: torch.Tensor) -> dict[str, Any]:
    """A tensor as JSON: dtype, shape and the base64 of its raw bytes (exact)."""
    array = tensor.detach().contiguous().numpy()
    return {"dtype": str(array.dtype), "shape": list(array.shape), "data": base64.b64encode(array.tobytes()).decode()}


def _decode(data: Mapping[str, Any], like: torch.Tensor, what: str) -> torch.Tensor:
    """The tensor `_encode` gave, checked to have the dtype and shape of `like` (ValueError otherwise)."""
    import torch

    want = (str(like.detach().numpy().dtype), list(like.shape))
    if (data["dtype"], list(data["shape"])) != want:
        raise ValueError(f"rl state {what}: {data['dtype']} {list(data['shape'])}, expected {want[0]} {want[1]}")
    raw = base64.b64decode(data["data"], validate=True)
    array = np.frombuffer(raw, dtype=want[0])
    if array.size != like.numel():
        raise ValueError(f"rl state {what}: {array.size} values, expected {like.numel()}")
    return torch.from_numpy(array.reshape(want[1]).copy())


class _Policy:
    """The controller: its tensors, Adam optimizer and private generator (torch is imported only here).

    Token ids: 0 starts every arch; choice c of decision d is `offsets[d] + c`.
    """

    def __init__(self, sizes: Sequence[int], config: RLConfig, seed: int) -> None:
        import torch

        self.config, self.sizes = config, list(sizes)
        self.offsets = (1 + np.concatenate([[0], np.cumsum(sizes)[:-1]])).tolist()
        hidden, widest = config.hidden_size, max(sizes)
        # A private generator from the seed; the modules are built on the meta device, so building them
        # draws nothing from torch's global generator.
        seq = np.random.SeedSequence(seed, spawn_key=(0x726C,))  # "rl": apart from the strategy's numpy stream
        self.generator = torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0]))
        self.lstm = torch.nn.LSTM(hidden, hidden, batch_first=True, device="meta").to_empty(device="cpu")
        self.cell = torch.nn.LSTMCell(hidden, hidden, device="meta")  # one step of `lstm`, for sampling
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            setattr(self.cell, name, getattr(self.lstm, f"{name}_l0"))  # the same tensors, not copies
        self.params: dict[str, torch.Tensor] = {
            "embedding": torch.empty(1 + sum(sizes), hidden),
            "head": torch.empty(len(sizes), widest, hidden),  # (D, K, H): decision d's softmax layer, padded
            **dict(self.lstm.named_parameters()),
        }
        with torch.no_grad():
            for tensor in self.params.values():
                tensor.uniform_(-config.init_range, config.init_range, generator=self.generator)
                tensor.requires_grad_(True)
        self.mask = torch.tensor([[0.0] * k + [_PAD] * (widest - k) for k in sizes])  # (D, K)
        self.optimizer = self._adam()

    def _adam(self) -> torch.optim.Adam:
        import torch

        return torch.optim.Adam(list(self.params.values()), lr=self.config.learning_rate)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (n, D) of n archs drawn from the policy, and the log-probability of each token (n, D)."""
        import torch

        embedding, head = self.params["embedding"], self.params["head"]
        tokens, logp = torch.empty(n, len(self.sizes), dtype=torch.long), torch.empty(n, len(self.sizes))
        with torch.no_grad():
            x, state = embedding[torch.zeros(n, dtype=torch.long)], None
            for d, k in enumerate(self.sizes):
                state = self.cell(x, state)  # (h, c), each (n, H)
                step_logp = torch.log_softmax(state[0] @ head[d, :k].T, dim=-1)  # (n, k)
                u = torch.rand(n, 1, generator=self.generator)
                token = (step_logp.exp().cumsum(-1) < u).sum(-1).clamp_(max=k - 1)  # inverse CDF
                tokens[:, d] = token
                logp[:, d] = step_logp.gather(1, token[:, None])[:, 0]
                x = embedding[token + self.offsets[d]]
        return tokens, logp

    def log_probs(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of each token (B, D) and mean per-decision entropy (B,) of archs `tokens` (B, D)."""
        import torch

        offsets = torch.tensor(self.offsets[:-1], dtype=torch.long)
        previous = torch.cat([torch.zeros(len(tokens), 1, dtype=torch.long), tokens[:, :-1] + offsets], dim=1)
        out, _ = self.lstm(self.params["embedding"][previous])  # (B, D, H): teacher-forced
        logits = torch.einsum("bdh,dkh->bdk", out, self.params["head"]) + self.mask
        step_logp = torch.log_softmax(logits, dim=-1)  # (B, D, K); padding slots ~ -1e9, probability 0
        logp = step_logp.gather(2, tokens[..., None])[..., 0]
        entropy = -(step_logp.exp() * step_logp).sum(dim=2).mean(dim=1)
        return logp, entropy

    def update(self, tokens: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor) -> None:
        """One policy update on a batch: PPO's clipped surrogate (several steps) or REINFORCE (one step)."""
        import torch

        c = self.config
        for _ in range(c.ppo_epochs if c.algorithm == "ppo" else 1):
            logp, entropy = self.log_probs(tokens)
            if c.algorithm == "ppo":  # one ratio per decision, each with its arch's advantage
                ratio, advantage = torch.exp(logp - old_logp), advantages[:, None]
                gain = torch.min(ratio * advantage, ratio.clamp(1 - c.clip, 1 + c.clip) * advantage).sum(1)
            else:
                gain = logp.sum(1) * advantages  # the arch's joint log-probability
            loss = -(gain.mean() + c.entropy_weight * entropy.mean())
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()

    def state(self) -> dict[str, Any]:
        """Weights, Adam moments (per tensor, in order; empty before the first update) and generator state."""
        adam = [{key: _encode(value) for key, value in sorted(self.optimizer.state[p].items())}
                for p in self.params.values()]
        return {"params": {name: _encode(p) for name, p in self.params.items()}, "adam": adam,
                "generator": _encode(self.generator.get_state())}

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore `state()` exactly; a state of another shape is a ValueError naming the tensor."""
        import torch

        params = {name: _decode(state["params"][name], p, name) for name, p in self.params.items()}
        if len(state["adam"]) != len(self.params):
            raise ValueError(f"rl state adam: {len(state['adam'])} entries, expected {len(self.params)}")
        moments = {}
        for i, (entry, (name, p)) in enumerate(zip(state["adam"], self.params.items(), strict=True)):
            if entry:
                moments[i] = {key: _decode(value, torch.zeros(()) if key == "step" else p, f"adam.{name}.{key}")
                              for key, value in entry.items()}
        generator = _decode(state["generator"], self.generator.get_state(), "generator")
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(params[name])
        self.optimizer = self._adam()
        self.optimizer.load_state_dict({"state": moments, "param_groups": self.optimizer.state_dict()["param_groups"]})
        self.generator.set_state(generator)


@STRATEGIES.register("rl")
class RLController(Strategy):
    """NASNet's LSTM controller trained with PPO (or REINFORCE) on the objective's score."""

    config_model = RLConfig
    config: RLConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._decisions = self.space.decisions()
        self._tokens = [{choice: i for i, choice in enumerate(d.choices)} for d in self._decisions]
        self._policy = _Policy([len(d.choices) for d in self._decisions], self.config, self.seed)
        # hash -> (tokens, their log-probabilities at ask time), oldest first; told ones wait in the batch
        self._in_flight: dict[str, deque[tuple[list[int], list[float]]]] = {}
        self._batch: list[tuple[list[int], list[float], float]] = []  # (tokens, log-probabilities, reward)
        self._baseline = [0.0, 0.0, 0.0, 0.0]  # (decayed sum, decayed weight) of rewards, then of squared gaps
        self._range: list[float] | None = None  # [worst, best] feasible score told so far
        self.n_updates = 0

    # -- asking -----------------------------------------------------------------------
    @property
    def ask_batch(self) -> int:
        """One policy update's worth: the policy changes only when `batch_size` archs are told."""
        return self.config.batch_size

    def _propose(self) -> Arch:
        return self._propose_many(1)[0]

    def _propose_many(self, n: int) -> list[Arch]:
        archs: list[Arch | None] = [None] * n
        missing = list(range(n))
        with _one_thread():
            for _ in range(self.space.max_draws):
                tokens, logp = self._policy.sample(len(missing))
                still = []
                for row, slot in enumerate(missing):
                    arch = self._arch(tokens[row].tolist())
                    if arch is None:
                        still.append(slot)
                        continue
                    archs[slot] = arch
                    self._in_flight.setdefault(arch.hash, deque()).append((tokens[row].tolist(), logp[row].tolist()))
                missing = still
                if not missing:
                    return archs
        raise NasError(f"rl: the controller drew no arch that passes the rules of space {self.space.name} in "
                       f"{self.space.max_draws} draws for {len(missing)} of {n} asks; lower learning_rate or raise "
                       "entropy_weight")

    def _arch(self, tokens: list[int]) -> Arch | None:
        """The arch of `tokens`, or None when it breaks a rule of the space."""
        try:
            return self.space.make_arch({d.name: d.choices[t] for d, t in zip(self._decisions, tokens, strict=True)})
        except UserError:
            return None

    # -- learning ---------------------------------------------------------------------
    def _observe(self, arch: Arch, metrics: Mapping[str, float]) -> None:
        tokens, logp = self._pop(arch)
        self._batch.append((tokens, logp, self._reward(metrics)))
        if len(self._batch) >= self.config.batch_size:
            self._update()

    def _forgotten(self, arch: Arch) -> None:
        self._pop(arch)

    def _adopted(self, arch: Arch) -> None:
        """Keep the arch's tokens and their log-probabilities under the policy now, as if it had drawn them:
        PPO's ratios start at 1 for it, as for an arch asked now."""
        import torch

        tokens = [index[arch.choices[d.name]] for d, index in zip(self._decisions, self._tokens, strict=True)]
        with _one_thread(), torch.no_grad():
            logp, _ = self._policy.log_probs(torch.tensor([tokens], dtype=torch.long))
        self._in_flight.setdefault(arch.hash, deque()).append((tokens, logp[0].tolist()))

    def _pop(self, arch: Arch) -> tuple[list[int], list[float]]:
        queue = self._in_flight[arch.hash]
        entry = queue.popleft()
        if not queue:
            del self._in_flight[arch.hash]
        return entry

    def _reward(self, metrics: Mapping[str, float]) -> float:
        """The objective's score, or for an infeasible arch a bounded reward below the feasible ones."""
        broken = objectives.violations(self.objective, metrics)
        if not broken:
            value = self.score(metrics)
            lo, hi = self._range or (value, value)
            self._range = [min(lo, value), max(hi, value)]
            return value
        violation = sum(value / bound - 1.0 for value, bound in broken.values())
        lo, hi = self._range or (0.0, 1.0)
        spread = hi - lo if hi > lo else max(abs(lo), 1.0)
        return lo - spread * violation / (1.0 + violation)

    def _advantages(self, rewards: list[float]) -> list[float]:
        """(reward - moving-average baseline) / running RMS of that gap, moving both averages on."""
        decay = self.config.baseline_decay
        mean, square = self._baseline[:2], self._baseline[2:]
        gaps = []
        for reward in rewards:
            gap = reward - mean[0] / mean[1] if mean[1] else 0.0  # the first reward ever has no baseline
            if mean[1]:
                square = _moved(square, gap * gap, decay)
            mean = _moved(mean, reward, decay)
            gaps.append(gap)
        self._baseline = [*mean, *square]
        scale = math.sqrt(square[0] / square[1]) if square[1] else 0.0
        if scale <= 1e-9 * max(abs(r) for r in rewards):  # equal rewards: a gap is rounding noise, not signal
            return [0.0] * len(gaps)
        return [gap / scale for gap in gaps]

    def _update(self) -> None:
        import torch

        tokens, logp, rewards = zip(*self._batch, strict=True)
        advantages = self._advantages(list(rewards))
        self._batch = []
        with _one_thread():
            self._policy.update(torch.tensor(tokens, dtype=torch.long), torch.tensor(logp),
                                torch.tensor(advantages, dtype=torch.float32))
        self.n_updates += 1

    # -- state ------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "controller": self._policy.state(),
            "in_flight": [[h, list(t), list(lp)] for h, queue in self._in_flight.items() for t, lp in queue],
            "batch": [[list(t), list(lp), r] for t, lp, r in self._batch],
            "baseline": list(self._baseline),
            "reward_range": None if self._range is None else list(self._range),
            "n_updates": self.n_updates,
        }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        in_flight: dict[str, deque[tuple[list[int], list[float]]]] = {}
        for h, tokens, logp in state["in_flight"]:
            in_flight.setdefault(str(h), deque()).append((self._checked_tokens(tokens), self._checked_logp(logp)))
        if {h: len(q) for h, q in in_flight.items()} != dict(self._pending):
            raise ValueError("rl state in_flight does not match the pending archs")
        batch = [(self._checked_tokens(t), self._checked_logp(lp), float(r)) for t, lp, r in state["batch"]]
        baseline = [float(v) for v in state["baseline"]]
        reward_range = state["reward_range"]
        if len(baseline) != 4 or (reward_range is not None and len(reward_range) != 2):
            raise ValueError(f"rl state baseline/reward_range: {baseline}, {reward_range}")
        self._policy.load(state["controller"])
        self._in_flight, self._batch, self._baseline = in_flight, batch, baseline
        self._range = None if reward_range is None else [float(v) for v in reward_range]
        self.n_updates = int(state["n_updates"])

    def _checked_tokens(self, tokens: Sequence[int]) -> list[int]:
        sizes = [len(d.choices) for d in self._decisions]
        if len(tokens) != len(sizes) or not all(
                isinstance(t, int) and 0 <= t < k for t, k in zip(tokens, sizes, strict=True)):
            raise ValueError(f"rl state: tokens {list(tokens)[:8]} do not fit the space's {len(sizes)} decisions")
        return list(tokens)

    def _checked_logp(self, logp: Sequence[float]) -> list[float]:
        if len(logp) != len(self._decisions) or not all(isinstance(v, float) and v <= 0.0 for v in logp):
            raise ValueError(f"rl state: log-probabilities {list(logp)[:8]} do not fit the space's "
                             f"{len(self._decisions)} decisions")
        return list(logp)
