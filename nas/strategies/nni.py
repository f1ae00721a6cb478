"""NNI 3.0's tuners as strategies, driven through their pull interface (Microsoft NNI, `nni.algorithms.hpo`).

Each decision is one NNI parameter: a `choice` for the HPO tuners (TPE, Evolution, Anneal), a `layer_choice`
for the NAS tuners (RegularizedEvolution, PPO), whose values are the decision's choices. An ask is
`generate_parameters(id)` (a batch: n calls), a tell `receive_trial_result(id, params, score)` with the
maximised `self.score(metrics)` (`optimize_mode: maximize`), a forgotten or invalid arch `trial_end(id, False)`
(a proposal that breaks the space's rules is ended and drawn again). NNI's logging is muted to warnings on
stderr, and nni is imported only when the strategy is built, so `import nas` stays as fast as without it.

Resume (`load_state_dict`) rebuilds the tuner with the saved seed and `update_search_space`, then:
- TPE and Anneal: `import_data` with every told (params, score) in tell order, as NNI resumes an experiment.
  Exact: the tuner's RNG state is saved and restored (TPE `rng`, Anneal `rval.rstate`), and what import_data
  leaves out is put back: TPE's constant-liar updates and the archs still in flight (`_running_params`,
  which the liar reads); Anneal's record of asked archs
  (`total_data`, its duplicate check). Import values are `{"default": score}`: Anneal's import drops a
  plain 0.0 as "useless".
- Evolution, RegularizedEvolution and PPO: their `import_data` ignores the data, so the saved asks, tells
  and ends are replayed in order through the same calls, which gives an exact resume; each replayed ask
  must return the saved params, or the resume stops with an error. The replay costs the run again (for
  PPO its training, about a second per update on a CPU).
Determinism: TPE takes a seed. The others draw from Python's `random` and NumPy's global RNG, and PPO from
TensorFlow: every tuner call runs with private `random`/NumPy global states swapped in and out (they are
saved), Evolution's own `RandomState` is seeded, and PPO builds in a private TensorFlow graph and session
whose graph seed is set (NNI's `set_global_seeds(None)` would seed everything from the OS).
What NNI cannot do here:
- Pareto objectives (each tuner takes one scalar).
- Asks beyond what the tuner can propose with results pending: PPO proposes `trials_per_update` archs per
  policy update and waits for all their results; Evolution has no member left after `population_size` asks
  without a result; RegularizedEvolution likewise. Such asks are uniform random archs that NNI never sees
  (logged once; counted in `n_random`; TPE and Anneal learn them through `import_data`), so no worker idles.
  An arch the run loop adopts in place of a repeat (`nas.strategies.dedup`) is kept the same way.
- Anneal needs `hyperopt` (0.3 works; NNI pins 0.1.2), PPO needs TensorFlow with `tf_keras` and `gym`;
  none is a dependency of this package, and building either tuner without them is a one-line error.
- PPO learns from raw scores: an arch over a hard bound scores about -1e9 and swamps its value function;
  a `weighted` objective suits it better.
- NNI's TPE is greedy on categorical decisions: it asks the best of 24 candidates by the density ratio of
  its few good trials (ceil(0.25 sqrt(N)): 2 of 50, 5 of 300), so from about its 25th ask on it mostly
  proposes archs it has already tried. Here a repeat is told its known result and, after a few in a row,
  replaced by an unseen neighbour (`nas.strategies.dedup`): a local search around its best archs.
Fixes around NNI 3.0: TPE's `Deduplicator` is off (`_nni_tuners._NoDedup`). It replaced each repeat with the
next point of a grid search: ~88% of TPE's proposals on NAS-Bench-201, and TPE stopped learning (150 seeds of
benchmarks/strategies_nb201.py: 90.82% at 100 archs, 90.85% at 300, below random search's 91.05% and 91.29%;
without it, 10 seeds: 91.45% and 91.64%, random 90.96% and 91.30%). PPOTuner accepts but drops ent_coef, lr,
vf_coef, max_grad_norm, gamma, lam and cliprange (they are set on its `model_config` before its model is built)
and divides by a zero update count for large batches (its `total_timesteps` is raised); TPE's
`constant_liar_type: none` is mapped to None.
The tuners, their arguments and `Host` (one tuner, its RNGs private) live in `_nni_tuners`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from nas.arch import Arch
from nas.errors import NasError, UserError
from nas.registry import STRATEGIES
from nas.strategies import _nni_tuners as tuners
from nas.strategies.base import Strategy, StrategyConfig
from nas.strategies.dedup import SpaceExhausted

log = logging.getLogger(__name__)

_ASK, _TELL, _END, _IMPORT = 0, 1, 2, 3
"""Event kinds of the saved history: an NNI ask, a told result, an ended trial, a result imported."""
_RANDOM = -1
"""Pending id of an arch NNI did not propose (a uniform draw while NNI had none)."""


class NniConfig(StrategyConfig):
    """The NNI tuner and its own arguments (NNI's names; unset means NNI's default; see strategies/nni.yaml).

    Each argument belongs to one tuner (`population_size` to Evolution and RegularizedEvolution; `gamma` is
    TPE's share of good trials or PPO's discount); one given for another tuner is refused.
    """

    tuner: Literal[tuple(tuners.TUNERS)] = Field(description="the NNI tuner")  # type: ignore[valid-type]
    n_startup_jobs: int | None = Field(default=None, ge=1, le=100_000, description="TPE: random asks first")
    n_ei_candidates: int | None = Field(default=None, ge=1, le=10_000, description="TPE: EI samples per ask")
    linear_forgetting: int | None = Field(default=None, ge=1, le=1_000_000, description="TPE: trials before decay")
    prior_weight: float | None = Field(default=None, ge=0, le=1000, description="TPE: weight of the prior")
    constant_liar_type: Literal["best", "worst", "mean", "none"] | None = Field(
        default=None, description="TPE: result assumed for asks in flight")
    gamma: float | None = Field(default=None, ge=0, le=1, description="TPE: share of good trials; PPO: discount")
    population_size: int | None = Field(default=None, ge=1, le=99_999, description="Evolution, Regularized...")
    sample_size: int | None = Field(default=None, ge=1, le=9_999, description="RegularizedEvolution: tournament")
    trials_per_update: int | None = Field(default=None, ge=1, le=99_999, description="PPO: asks per update")
    epochs_per_update: int | None = Field(default=None, ge=1, le=1000, description="PPO: epochs per update")
    minibatch_size: int | None = Field(default=None, ge=1, le=99_999, validate_default=True,
                                       description="PPO: minibatches per update")
    ent_coef: float | None = Field(default=None, ge=0, le=10, description="PPO: entropy coefficient")
    lr: float | None = Field(default=None, gt=0, le=1, description="PPO: learning rate")
    vf_coef: float | None = Field(default=None, ge=0, le=10, description="PPO: value loss coefficient")
    max_grad_norm: float | None = Field(default=None, gt=0, le=1000, description="PPO: gradient clip")
    lam: float | None = Field(default=None, ge=0, le=1, description="PPO: GAE lambda")
    cliprange: float | None = Field(default=None, gt=0, le=1, description="PPO: clip range")

    @field_validator(*tuners.ARG_NAMES)
    @classmethod
    def _of_this_tuner(cls, value: Any, info: ValidationInfo) -> Any:
        tuner, name = info.data.get("tuner"), info.field_name
        if tuner is None:
            return value
        if value is None:
            if tuner == "PPO" and name == "minibatch_size":  # NNI's default must divide trials_per_update too
                tuners.check_arg(tuner, name, tuners.PPO_DEFAULTS[name], info.data)
            return value
        return tuners.check_arg(tuner, name, value, info.data)


@STRATEGIES.register("nni")
class NniTuner(Strategy):
    """One NNI tuner behind ask/tell; see the module docstring for resume and limits."""

    config_model = NniConfig
    config: NniConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kind = tuners.TUNERS[self.config.tuner]
        tuners.require(self.config.tuner)
        self.tuner_seed = int(self.rng.integers(2**31))
        self.n_random = 0
        self._start(self.tuner_seed)

    def _start(self, seed: int) -> None:
        """A fresh tuner with its search space, and an empty history."""
        self.tuner_seed = seed
        self.host = tuners.Host(self.config, self.space, seed)
        self.events: list[list[Any]] = []
        self.params: dict[int, Any] = {}  # NNI id -> params as NNI returned them
        self.ids: dict[str, list[int]] = {}  # arch hash -> ids in flight (FIFO; _RANDOM for a uniform draw)
        self._warned = False

    # -- asking ----------------------------------------------------------------------
    @property
    def ask_batch(self) -> int:
        """PPO: one policy update's worth (it proposes that many, then waits); the others learn from each tell."""
        if self.config.tuner == "PPO":
            return self.config.trials_per_update or tuners.PPO_DEFAULTS["trials_per_update"]
        return 1

    def _propose_many(self, n: int) -> list[Arch]:
        archs: list[Arch] = []
        for _ in range(n):
            try:
                archs.append(self._propose())
            except SpaceExhausted as err:
                raise SpaceExhausted(str(err), archs) from None
        return archs

    def _propose(self) -> Arch:
        for _ in range(self.space.max_draws):
            pid = len(self.params)
            params = self.host.ask(pid)
            if params is None:
                return self._random_arch()
            self.params[pid] = params
            self.events.append([_ASK, pid])
            try:
                arch = self.space.make_arch(self.host.choices(params))
            except UserError:  # breaks the space's rules: NNI learns nothing, as for a failed trial
                self.host.end(pid)
                self.events.append([_END, pid])
                continue
            self.ids.setdefault(arch.hash, []).append(pid)
            return arch
        raise NasError(f"nni {self.config.tuner}: {self.space.max_draws} proposals in a row broke the rules of "
                       f"space {self.space.name}")

    def _random_arch(self) -> Arch:
        """A uniform arch while NNI has none to give (its asks wait for results), or the end of the space."""
        if not any(pid != _RANDOM for pids in self.ids.values() for pid in pids):
            raise SpaceExhausted(f"nni {self.config.tuner}: NNI has no new arch to propose and none in flight; "
                                 f"the space looks exhausted after {len(self.params)} asks")
        if not self._warned:
            log.warning("nni %s: NNI proposes nothing more until results come in; asking uniform random archs "
                        "meanwhile (see nas/strategies/nni.py)", self.config.tuner)
            self._warned = True
        self.n_random += 1
        arch = self.space.sample(self.rng)
        self.ids.setdefault(arch.hash, []).append(_RANDOM)
        return arch

    # -- learning --------------------------------------------------------------------
    def _observe(self, arch: Arch, metrics: Mapping[str, float]) -> None:
        pid, value = self._pop(arch), self.score(metrics)
        if pid == _RANDOM:
            if self.kind.resume == "import_data":  # the tuner learns it as an imported trial
                self.host.import_data([(self.host.choices_to_params(arch), value)])
                self.events.append([_IMPORT, arch.to_dict(), value])
            return
        self.host.tell(pid, self.params[pid], value)
        self.events.append([_TELL, pid, value])

    def _forgotten(self, arch: Arch) -> None:
        pid = self._pop(arch)
        if pid != _RANDOM:
            self.host.end(pid)
            self.events.append([_END, pid])

    def _adopted(self, arch: Arch) -> None:
        """An arch NNI did not propose, kept as a uniform draw is: TPE and Anneal learn it through `import_data`."""
        self.ids.setdefault(arch.hash, []).append(_RANDOM)

    def _pop(self, arch: Arch) -> int:
        pids = self.ids[arch.hash]
        pid = pids.pop(0)
        if not pids:
            del self.ids[arch.hash]
        return pid

    # -- state -----------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"nni": {
            "tuner": self.config.tuner, "seed": self.tuner_seed, "n_random": self.n_random,
            "params": [[pid, p] for pid, p in self.params.items()], "events": self.events,
            "ids": [[h, pids] for h, pids in self.ids.items()], "host": self.host.state(),
        }}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        saved = state.get("nni")
        if not isinstance(saved, Mapping) or saved.get("tuner") != self.config.tuner:
            got = saved.get("tuner") if isinstance(saved, Mapping) else None
            raise NasError(f"nni state is for tuner {got!r}, not {self.config.tuner!r}; resume with the same config")
        self._start(int(saved["seed"]))
        self.n_random = int(saved["n_random"])
        self.params = {int(pid): p for pid, p in saved["params"]}
        self.events = [list(e) for e in saved["events"]]
        self.ids = {h: [int(p) for p in pids] for h, pids in saved["ids"]}
        in_flight = [pid for pids in self.ids.values() for pid in pids if pid != _RANDOM]
        if self.kind.resume == "import_data":
            self.host.restore(self.params, self.events, in_flight, saved["host"])
        else:
            self.host.replay(self.params, self.events)


__all__ = ["NniConfig", "NniTuner"]
