"""The NNI tuners the `nni` strategy offers, and `Host`: one tuner with its RNGs kept private and savable.

Kept apart from `nas.strategies.nni` (the ask/tell bookkeeping) so each module tells one idea; nothing here
imports nni until a `Host` is built.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import logging
import os
import random
import warnings
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, redirect_stderr
from dataclasses import dataclass
from typing import Any

import numpy as np

from nas.arch import Arch
from nas.errors import NasError, UserError
from nas.space import SearchSpace

_TPE_ARGS = ("n_startup_jobs", "n_ei_candidates", "linear_forgetting", "prior_weight", "gamma", "constant_liar_type")
_PPO_ARGS = ("trials_per_update", "epochs_per_update", "minibatch_size", "ent_coef", "lr", "vf_coef",
             "max_grad_norm", "gamma", "lam", "cliprange")
_PPO_MODEL_ARGS = ("ent_coef", "lr", "vf_coef", "max_grad_norm", "gamma", "lam", "cliprange")
"""PPO arguments NNI 3.0's `PPOTuner.__init__` accepts but drops: they are set on its `model_config` instead."""
PPO_DEFAULTS = {"trials_per_update": 20, "minibatch_size": 4}  # NNI 3.0's, for the divisibility check
_QUIET = ("nni", "ppo_tuner_AutoML", "hyperopt", "tensorflow", "absl")


@dataclass(frozen=True)
class TunerKind:
    """How one NNI tuner is built and resumed."""

    module: str
    cls: str
    space_type: str  # `choice` (HPO tuners) or `layer_choice` (NAS tuners)
    resume: str  # `import_data` or `replay` (its import_data ignores the data)
    args: tuple[str, ...]  # the config keys it takes
    needs: tuple[str, ...] = ()  # packages outside this project's dependencies


TUNERS = {
    "TPE": TunerKind("nni.algorithms.hpo.tpe_tuner", "TpeTuner", "choice", "import_data", _TPE_ARGS),
    "Evolution": TunerKind("nni.algorithms.hpo.evolution_tuner", "EvolutionTuner", "choice", "replay",
                           ("population_size",)),
    "RegularizedEvolution": TunerKind("nni.algorithms.hpo.regularized_evolution_tuner", "RegularizedEvolutionTuner",
                                      "layer_choice", "replay", ("population_size", "sample_size")),
    "PPO": TunerKind("nni.algorithms.hpo.ppo_tuner", "PPOTuner", "layer_choice", "replay", _PPO_ARGS,
                     ("tensorflow", "tf_keras", "gym")),
    "Anneal": TunerKind("nni.algorithms.hpo.hyperopt_tuner", "HyperoptTuner", "choice", "import_data", (),
                        ("hyperopt",)),
}
ARG_NAMES = tuple(dict.fromkeys(a for kind in TUNERS.values() for a in kind.args))


def check_arg(tuner: str, name: str, value: Any, data: Mapping[str, Any]) -> Any:
    """`value` of tuner argument `name`, refused (ValueError naming the fix) when it does not fit `tuner`."""
    if name not in TUNERS[tuner].args:
        owners = [t for t, kind in TUNERS.items() if name in kind.args]
        takes = ", ".join(TUNERS[tuner].args) or "no options"
        raise ValueError(f"an option of the {' and '.join(owners)} tuner, not of {tuner}; {tuner} takes: {takes}")
    if name == "gamma" and tuner == "TPE" and value <= 0:
        raise ValueError("TPE's gamma is the share of trials taken as good; allowed: a number in (0, 1]")
    if name == "sample_size" and value > (data.get("population_size") or value):
        raise ValueError(f"must be at most population_size ({data['population_size']}): a tournament samples "
                         "the population")
    if name == "minibatch_size":
        per_update = data.get("trials_per_update") or PPO_DEFAULTS["trials_per_update"]
        if per_update % value:
            raise ValueError(f"{value} must divide trials_per_update ({per_update}): PPO splits each update's "
                             "trials into equal minibatches")
    return value


def require(tuner: str) -> None:
    """Refuse a tuner whose extra packages are not installed, naming them."""
    missing = [p for p in TUNERS[tuner].needs if importlib.util.find_spec(p) is None]
    if missing:
        others = ", ".join(t for t, kind in TUNERS.items() if not kind.needs)
        raise UserError(f"--set tuner={tuner}: NNI's {tuner} tuner needs {', '.join(missing)}, not installed; "
                        f"allowed: pip install {' '.join(missing)} (see nas/strategies/nni.py), or tuner {others}")


def _import_nni() -> Any:
    """`nni`, imported with its logging turned down to warnings on stderr (it adds a stdout handler)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up lines (PPO)
    # oneDNN's kernels may change float sums by thread timing, and TensorFlow announces them on stderr
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # NNI's PPO needs tf.layers, gone with Keras 3
    import nni

    for name in _QUIET:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.setLevel(logging.ERROR if name in ("tensorflow", "absl", "ppo_tuner_AutoML") else logging.WARNING)
        logger.propagate = True
    return nni


class Host:
    """One NNI tuner over a space's decisions, seeded from `seed`, its global-RNG draws kept private."""

    def __init__(self, config: Any, space: SearchSpace, seed: int) -> None:
        self.nni = _import_nni()
        self.name, self.kind, self.seed = config.tuner, TUNERS[config.tuner], seed
        self.decisions = space.decisions()
        self._py = random.Random(seed).getstate()
        self._np = np.random.RandomState(seed).get_state()
        self._tf: tuple[Any, Any] | None = None
        args = {a: getattr(config, a) for a in self.kind.args if getattr(config, a) is not None}
        search_space = {d.name: {"_type": self.kind.space_type, "_value": list(d.choices)} for d in self.decisions}
        # gym prints a notice to stderr on import; TensorFlow warns of its deprecated v1 layers NNI's PPO uses
        with warnings.catch_warnings(), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            cls = getattr(importlib.import_module(self.kind.module), self.kind.cls)
            if self.name == "PPO":
                self._tf = _private_tf_session()
            with self._private():
                self.tuner = self._build(cls, args)
                self._set_up(search_space, args)

    def _build(self, cls: type, args: dict[str, Any]) -> Any:
        if self.name == "TPE":
            tpe = {k: v for k, v in args.items() if k != "constant_liar_type"}
            if "constant_liar_type" in args:  # NNI's own "none" check is broken (`.lower` not called)
                tpe["constant_liar_type"] = None if args["constant_liar_type"] == "none" else args["constant_liar_type"]
            return cls(optimize_mode="maximize", seed=self.seed, tpe_args=tpe)
        if self.name == "Anneal":
            return cls("anneal", optimize_mode="maximize")
        if self.name == "PPO":
            return cls("maximize", **{k: v for k, v in args.items() if k not in _PPO_MODEL_ARGS})
        return cls(optimize_mode="maximize", **args)

    def _set_up(self, search_space: dict[str, Any], args: dict[str, Any]) -> None:
        """`update_search_space`, with each tuner's unseeded randomness seeded."""
        if self.name == "PPO":
            import tensorflow.compat.v1 as tf
            from nni.algorithms.hpo.ppo_tuner import ppo_tuner as module

            for key in _PPO_MODEL_ARGS:
                if key in args:
                    setattr(self.tuner.model_config, key, float(args[key]))
            # nupdates = total_timesteps // (trials per update * decisions): NNI divides by it (zero for a large
            # batch) and warns past it; lr and cliprange are constants, so it matters for nothing else.
            self.tuner.model_config.total_timesteps = 10**12
            seed_all, module.set_global_seeds = module.set_global_seeds, lambda _: tf.set_random_seed(self.seed)
            try:
                self.tuner.update_search_space(search_space)
            finally:
                module.set_global_seeds = seed_all
            return
        self.tuner.update_search_space(search_space)
        if self.name == "TPE":
            self.tuner.dedup = _NoDedup()
        if self.name == "Evolution":  # its RandomState() is unseeded, and already drew the first population
            self.tuner.random_state = np.random.RandomState(self.seed)
            self.tuner.population = []
            for _ in range(self.tuner.population_size):
                self.tuner._random_generate_individual()
        elif self.name == "Anneal":
            self.tuner.rval.rstate = np.random.RandomState(self.seed)

    @contextmanager
    def _private(self) -> Iterator[None]:
        """Run NNI code with this tuner's own `random` and NumPy global states (and TF graph), then restore the
        caller's: the tuner's draws neither depend on nor disturb anyone else's."""
        saved = random.getstate(), np.random.get_state()
        random.setstate(self._py)
        np.random.set_state(self._np)
        try:
            with ExitStack() as stack:
                if self._tf is not None:
                    graph, session = self._tf
                    stack.enter_context(graph.as_default())
                    stack.enter_context(session.as_default())
                yield
        finally:
            self._py, self._np = random.getstate(), np.random.get_state()
            random.setstate(saved[0])
            np.random.set_state(saved[1])

    # -- the pull interface ----------------------------------------------------------
    def ask(self, pid: int) -> Any | None:
        """NNI's next params, or None when it has none now (it waits for results, or the space is done)."""
        with self._private():
            try:
                return self.tuner.generate_parameters(pid)
            except self.nni.NoMoreTrialError:
                if hasattr(self.tuner, "credit"):  # NNI would send these later through a callback we lack
                    self.tuner.credit = 0
                    self.tuner.param_ids.clear()
                return None
            except RuntimeError as err:
                if "population is empty" in str(err):  # Evolution: every member asked, none told yet
                    return None
                raise

    def tell(self, pid: int, params: Any, value: float) -> None:
        with self._private():
            self.tuner.receive_trial_result(pid, params, value)

    def end(self, pid: int) -> None:
        with self._private():
            self.tuner.trial_end(pid, False)

    def import_data(self, told: list[tuple[Any, float]]) -> None:
        with self._private():
            self.tuner.import_data([{"parameter": p, "value": {"default": v}} for p, v in told])

    def choices(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The arch choices of NNI's params."""
        if self.kind.space_type == "layer_choice":
            return {d.name: params[d.name]["_value"] for d in self.decisions}
        return {d.name: params[d.name] for d in self.decisions}

    def choices_to_params(self, arch: Arch) -> dict[str, Any]:
        """NNI's params for an arch NNI did not propose (imported; only the `choice` tuners import)."""
        return {d.name: arch.choices[d.name] for d in self.decisions}

    # -- resume ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """RNG states that `restore` puts back (the replayed tuners rebuild theirs)."""
        if self.kind.resume != "import_data":
            return {}
        if self.name == "TPE":
            own = self.tuner.rng.bit_generator.state
        else:  # hyperopt seeds each suggestion with rstate's draw + its count of trial ids (0, 1, ...)
            own = {"rstate": _np_state(self.tuner.rval.rstate.get_state()), "ids": len(self.tuner.rval.trials._ids)}
        return {"own": own, "random": [self._py[0], list(self._py[1]), self._py[2]],
                "numpy": _np_state(self._np)}

    def restore(self, params: Mapping[int, Any], events: list[list[Any]], in_flight: list[int],
                saved: Mapping[str, Any]) -> None:
        """Bring an `import_data` tuner to its saved state: import every told result, then what import leaves out."""
        told, liar = [], []
        for event in events:
            if event[0] == 1:
                told.append((params[event[1]], event[2]))
                liar.append(-event[2])  # TPE's loss of a maximised score
            elif event[0] == 3:
                told.append((self.choices_to_params(Arch.from_dict(event[1])), event[2]))
        if told:
            self.import_data(told)
        if self.name == "TPE":
            from nni.common.hpo_utils import format_parameters

            for loss in liar if self.tuner.liar else ():
                self.tuner.liar.update(loss)
            for pid in in_flight:  # the liar lies for these; import_data has no notion of them
                self.tuner._params[pid] = self.tuner._running_params[pid] = format_parameters(params[pid],
                                                                                             self.tuner.space)
            self.tuner.rng.bit_generator.state = saved["own"]
        else:
            from nni.algorithms.hpo.hyperopt_tuner import _add_index

            for pid, p in params.items():  # its duplicate check reads every asked arch
                self.tuner.total_data[pid] = _add_index(self.tuner.json, p)
            self.tuner.rval.rstate.set_state(_np_tuple(saved["own"]["rstate"]))
            self.tuner.rval.trials._ids.update(range(saved["own"]["ids"]))  # ids its asks took, besides imports
        self._py = (saved["random"][0], tuple(saved["random"][1]), saved["random"][2])
        self._np = _np_tuple(saved["numpy"])

    def replay(self, params: Mapping[int, Any], events: list[list[Any]]) -> None:
        """Bring a tuner whose import_data ignores data to its saved state by repeating every call in order."""
        for event in events:
            if event[0] == 0:
                again = self.ask(event[1])
                if again != params[event[1]]:
                    raise NasError(f"nni {self.name}: resuming replays the saved asks, but ask {event[1]} gave "
                                   "other params than it did first; the saved state does not fit this NNI version")
            elif event[0] == 1:
                self.tell(event[1], params[event[1]], event[2])
            elif event[0] == 2:
                self.end(event[1])
            else:
                self.import_data([(self.choices_to_params(Arch.from_dict(event[1])), event[2])])


class _NoDedup:
    """Stands in for NNI's `Deduplicator` in its TPE tuner: each proposal passes unchanged.

    NNI's replaces a repeated proposal with the next unseen point of a grid search, in grid order from the
    first choice of every decision. On NAS-Bench-201 TPE proposes repeats of its few best archs from about
    its 25th ask on, and about 88% of its proposals became such grid points (poor archs, which teach it
    nothing about its good ones), so its best stayed at the value of its first ~25 asks. The run loop
    deduplicates itself (`nas.strategies.dedup`): a repeat is told its known result, and after a few in a
    row it is replaced by an unseen arch near it, which TPE learns through `import_data`.
    """

    def __call__(self, formatted_parameters: Any) -> Any:
        return formatted_parameters

    def add_history(self, formatted_parameters: Any) -> None:
        """Nothing to remember: the run loop knows what was seen."""


def _private_tf_session() -> tuple[Any, Any]:
    """A graph and one-thread session of its own (NNI's PPO builds into the default ones, shared per process)."""
    import tensorflow.compat.v1 as tf

    graph = tf.Graph()
    config = tf.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
    return graph, tf.Session(graph=graph, config=config)


def _np_state(state: tuple) -> list[Any]:
    """A NumPy `RandomState.get_state()` tuple as JSON."""
    return [state[0], [int(k) for k in state[1]], int(state[2]), int(state[3]), float(state[4])]


def _np_tuple(state: list[Any]) -> tuple:
    return state[0], np.asarray(state[1], dtype=np.uint32), state[2], state[3], state[4]
