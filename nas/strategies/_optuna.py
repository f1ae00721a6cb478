"""`OptunaStrategy`: the ask/tell bridge from a strategy to an Optuna study and one of Optuna's samplers.

The study lives in Optuna's `JournalStorage`, in the file `optuna.journal` of the strategy's
workdir (in memory without one; `nas.strategies._journal`). Each decision of the space is one
categorical parameter named after the decision (`s3.b1.op`; Optuna takes any string), with the
decision's choices. Each asked arch is one RUNNING trial; `tell` completes it, `forget` fails
it (the sampler learns nothing from it), and the trial numbers of archs in flight are part of
the state, so tells may come in any order and after a resume.

Archs that break the space's rules: a sampled parameter set that `space.make_arch` refuses
(NASNet cells with an unread input, say) is told as a PRUNED trial and the sampler is asked
again, at most `max_invalid_draws` times per arch. TPE ranks pruned trials among its bad
ones, so it learns to avoid such sets; NSGA-II leaves them out of its populations. When
every draw is invalid the arch comes from the space's own rejection sampler (uniform over
valid archs, from the strategy's seeded RNG), is enqueued as the trial's fixed parameters,
and a warning says so. An arch the strategy adopts (`Strategy.adopt`: the dedup wrapper's
unseen arch in place of a repeat) is enqueued the same way, so the sampler learns from it.

Exact resume: the JSON state holds the journal's mark (byte size and sha256, or the lines
in memory), the state of every numpy `RandomState` inside the sampler (found by walking its
attributes, so the random sampler inside and NSGA-II's child generation are included),
and the open trials. `load_state_dict` builds a fresh sampler (no cache from the run it
replaces), restores those RNGs, rewinds the journal to the mark and reloads the study, so
a resumed strategy asks exactly what the unbroken one would.
"""

from __future__ import annotations

import logging
import math
from abc import abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.trial import TrialState
from pydantic import Field

from nas.arch import Arch
from nas.errors import UserError
from nas.strategies._journal import JOURNAL_NAME, FileJournal, MemoryJournal, open_journal
from nas.strategies.base import Strategy, StrategyConfig

logger = logging.getLogger(__name__)

STUDY_NAME = "nas"
"""The one study of a journal."""

_DIRECTIONS = {"max": "maximize", "min": "minimize"}
_WALK_DEPTH = 4
_MT_WORDS = 624
"""Words in an MT19937 state (numpy's `RandomState`)."""


class OptunaConfig(StrategyConfig):
    """Config keys of every Optuna strategy."""

    max_invalid_draws: int = Field(
        ge=1, le=100_000,
        description="parameter sets the sampler may draw per arch before one passes the space's rules; past "
                    "it the arch is a uniform valid sample (see nas.strategies._optuna)")


def directions_of(kinds: Sequence[str]) -> list[str]:
    """Optuna's direction names for `nas.objective.directions` (`max` -> `maximize`)."""
    return [_DIRECTIONS[k] for k in kinds]


def sampler_seed(seed: int) -> int:
    """A 32-bit seed for Optuna's `RandomState`s, derived from the strategy seed."""
    return int(np.random.SeedSequence(seed).generate_state(1)[0])


def random_states(sampler: BaseSampler) -> dict[str, np.random.RandomState]:
    """Every numpy `RandomState` reachable from `sampler` through Optuna objects, by attribute path.

    A state shared by two objects (NSGA-II's sampler and its child generation strategy) is
    listed once, under the path met first in sorted order.
    """
    found: dict[str, np.random.RandomState] = {}
    seen: set[int] = set()

    def walk(obj: Any, path: str, depth: int) -> None:
        for name, value in sorted(vars(obj).items()):
            if isinstance(value, np.random.RandomState):
                if id(value) not in seen:
                    seen.add(id(value))
                    found[f"{path}.{name}"] = value
            elif (depth < _WALK_DEPTH and not isinstance(value, type) and hasattr(value, "__dict__")
                  and type(value).__module__.startswith("optuna.")):
                walk(value, f"{path}.{name}", depth + 1)

    walk(sampler, "sampler", 0)
    return found


def save_random_states(sampler: BaseSampler) -> dict[str, dict[str, Any]]:
    """The sampler's RNG states as JSON (MT19937 key as a list of ints)."""
    saved = {}
    for path, rng in random_states(sampler).items():
        state = rng.get_state(legacy=False)
        saved[path] = {"key": state["state"]["key"].tolist(), "pos": int(state["state"]["pos"]),
                       "has_gauss": int(state["has_gauss"]), "gauss": float(state["gauss"])}
    return saved


def load_random_states(sampler: BaseSampler, saved: Mapping[str, Mapping[str, Any]]) -> None:
    """Restore what `save_random_states` saved into a sampler built with the same config."""
    rngs = random_states(sampler)
    if set(rngs) != set(saved):
        raise ValueError(f"sampler RNGs {sorted(saved)} do not match this Optuna's {sorted(rngs)}")
    for path, rng in rngs.items():
        state = saved[path]
        key, pos = state["key"], state["pos"]
        if not (isinstance(key, list) and len(key) == _MT_WORDS and all(type(k) is int and 0 <= k < 2**32 for k in key)
                and type(pos) is int and 0 <= pos <= _MT_WORDS):
            raise ValueError(f"sampler RNG {path}: key must be {_MT_WORDS} integers in [0, 2**32) and pos one in "
                             f"[0, {_MT_WORDS}]")
        rng.set_state({"bit_generator": "MT19937",
                       "state": {"key": np.asarray(state["key"], dtype=np.uint32), "pos": int(state["pos"])},
                       "has_gauss": int(state["has_gauss"]), "gauss": float(state["gauss"])})


class OptunaStrategy(Strategy):
    """A strategy whose proposals come from an Optuna sampler (see the module docstring).

    Subclasses give `_make_sampler`, and for other than one maximised score, `_directions`,
    `_values` and `_constraint`.
    """

    config: OptunaConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._distributions = {d.name: CategoricalDistribution(d.choices) for d in self.space.decisions()}
        self._sampler = self._make_sampler(sampler_seed(self.seed))
        self._journal: FileJournal | MemoryJournal | None = None
        self._study: optuna.Study | None = None  # opened on first use: a resume rewinds the journal first
        self._trials: dict[str, list[int]] = {}  # arch hash -> numbers of its RUNNING trials, oldest first

    @abstractmethod
    def _make_sampler(self, seed: int) -> BaseSampler:
        """The sampler, from the config and a 32-bit seed."""

    def _directions(self) -> list[str]:
        """Optuna's study directions (`maximize`, `minimize`), one per told value."""
        return ["maximize"]

    def _values(self, metrics: Mapping[str, float]) -> list[float]:
        """What a trial is told, one value per direction."""
        return [self.score(metrics)]

    def _constraint(self, metrics: Mapping[str, float]) -> float | None:
        """Optuna constraint value of a trial (> 0: infeasible), or None to set none."""
        return None

    # -- the study --------------------------------------------------------------------
    @property
    def study(self) -> optuna.Study:
        """The Optuna study (a new one on first use unless `load_state_dict` reopened a saved one)."""
        if self._study is None:
            self._open(None)
        assert self._study is not None
        return self._study

    def _open(self, mark: dict[str, Any] | None) -> None:
        self._journal = open_journal(self.workdir, mark)
        storage = optuna.storages.JournalStorage(self._journal)
        directions = self._directions()
        if mark is None:
            # Optuna logs the new study at INFO through its own stderr handler; the search reports its own start.
            journal_logger = logging.getLogger("optuna.storages.journal._storage")
            level = journal_logger.level
            journal_logger.setLevel(logging.WARNING)
            try:
                storage.create_new_study([optuna.study.StudyDirection[d.upper()] for d in directions], STUDY_NAME)
            finally:
                journal_logger.setLevel(level)
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage, sampler=self._sampler)
        saved = [d.name.lower() for d in study.directions]
        if saved != directions:
            where = "in memory" if self.workdir is None else str(self.workdir / JOURNAL_NAME)
            raise UserError(f"strategy journal {where}: its study goes {', '.join(saved)}, but this search's "
                            f"objective goes {', '.join(directions)}; resume with the run's own objective")
        self._study = study

    # -- ask / tell ---------------------------------------------------------------------
    def _propose(self) -> Arch:
        return self._propose_many(1)[0]

    def _propose_many(self, n: int) -> list[Arch]:
        archs = []
        for _ in range(n):
            arch, number = self._draw()
            self._trials.setdefault(arch.hash, []).append(number)
            archs.append(arch)
        return archs

    def _draw(self) -> tuple[Arch, int]:
        """A valid arch and the number of its RUNNING trial."""
        study = self.study
        for _ in range(self.config.max_invalid_draws):
            trial = study.ask(self._distributions)
            try:
                return self.space.make_arch(trial.params), trial.number
            except UserError:
                study.tell(trial.number, state=TrialState.PRUNED)
        arch = self.space.sample(self.rng)
        logger.warning("%s: %d parameter sets in a row broke the rules of space %s; asking for the uniform valid "
                       "arch %s instead", type(self).__name__, self.config.max_invalid_draws, self.space.name,
                       arch.short_hash)
        return arch, self._enqueued(arch)

    def _adopted(self, arch: Arch) -> None:
        """A RUNNING trial with the arch's choices as fixed parameters, so its tell completes a trial of its own."""
        self._trials.setdefault(arch.hash, []).append(self._enqueued(arch))

    def _enqueued(self, arch: Arch) -> int:
        """The number of a new RUNNING trial whose parameters are the arch's choices."""
        study = self.study
        study.enqueue_trial(dict(arch.choices))
        return study.ask(self._distributions).number

    def _take_trial(self, arch: Arch) -> int:
        numbers = self._trials[arch.hash]
        number = numbers.pop(0)
        if not numbers:
            del self._trials[arch.hash]
        return number

    def _observe(self, arch: Arch, metrics: Mapping[str, float]) -> None:
        number = self._take_trial(arch)
        study = self.study
        values = self._values(metrics)
        if not all(math.isfinite(v) for v in values):
            logger.info("%s: arch %s scored %s, not finite; its trial fails", type(self).__name__, arch.short_hash,
                        values)
            study.tell(number, state=TrialState.FAIL)
            return
        constraint = self._constraint(metrics)
        if constraint is not None:
            trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
            optuna.trial.Trial(study, trial_id).set_constraint("bounds", constraint)
        study.tell(number, values)

    def _forgotten(self, arch: Arch) -> None:
        self.study.tell(self._take_trial(arch), state=TrialState.FAIL)

    # -- state ----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        if self._study is None:  # a fresh strategy makes its journal now, so every saved state has a mark
            self._open(None)
        assert self._journal is not None
        return {"optuna": {"journal": self._journal.mark(), "rngs": save_random_states(self._sampler),
                           "trials": {h: list(n) for h, n in self._trials.items()}}}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        saved = state["optuna"]
        trials = {str(h): [int(n) for n in numbers] for h, numbers in saved["trials"].items()}
        pending = Counter(arch.hash for arch in self.pending())
        if pending != Counter({h: len(n) for h, n in trials.items()}):
            raise ValueError("the open Optuna trials do not match the archs in flight")
        sampler = self._make_sampler(sampler_seed(self.seed))
        load_random_states(sampler, saved["rngs"])
        self._sampler = sampler
        self._open(dict(saved["journal"]))
        self._trials = trials
        running = {t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        missing = sorted(n for numbers in trials.values() for n in numbers if n not in running)
        if missing:
            raise ValueError(f"the journal has no running trial {missing[0]} for an arch in flight")

