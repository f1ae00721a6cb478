"""`Deduplicated`: a wrapper that makes any strategy propose each arch at most once per search.

Strategies draw archs at random, so they repeat themselves: evolution mutates the same parent
into the same child, and a random sampler meets an arch again in a small space. Evaluating a
repeat costs a trial and tells the strategy nothing new, and a best table full of one arch
hides the others. The wrapper asks the wrapped strategy again until it proposes an arch the
search has not seen:
- a repeat of an arch already scored is told its known metrics at once, so the strategy
  learns from it as it would from a new evaluation, at no cost;
- a repeat of an arch still in flight (or one that failed) is forgotten (`Strategy.forget`):
  its result comes once, from the first copy.
So the budget (`--trials`) counts distinct archs. A strategy that has converged proposes
little but repeats: an aging-evolution population fills with told copies of its best arch,
whose every neighbour was seen, and the strategy would never propose a new arch again. So
after `patience` repeats in a row, each further repeat is replaced by an unseen arch that
the strategy adopts (`Strategy.adopt`: it is told as one of its own asks): the first unseen
arch of a random walk of single-decision mutations from the repeat (near what the strategy
wanted), else a uniform unseen arch. Only when `max_draws` steps of the walk and `max_draws`
uniform draws all meet seen archs (fewer than about 0.5% of the space unseen), or every
arch of the space was seen, is the space exhausted (`SpaceExhausted`), and a small space
whose every arch has been evaluated ends the search early instead of looping.
The walk and the draws use the strategy's own RNG, saved with its state, so the same seed and
tells give the same archs and a resume is exact. The wrapper holds no state of its own worth
saving: what it has seen is the trial log plus the archs in flight, which the runner hands
back with `remember` on resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nas.arch import Arch
from nas.errors import NasError
from nas.strategies.base import Strategy

_UNSCORED = None
"""What the wrapper knows of an arch in flight or failed: a repeat of it is forgotten."""


class SpaceExhausted(NasError):
    """The wrapped strategy proposed only archs already seen, and no unseen arch could be found for it.

    `archs` holds the new archs the same `ask` found before, which the caller still runs.
    """

    def __init__(self, message: str, archs: list[Arch] | None = None) -> None:
        super().__init__(message)
        self.archs = archs or []


class Deduplicated:
    """Any strategy, asking for archs the search has not seen yet (see the module docstring).

    Args:
        strategy: the wrapped strategy; the wrapper forwards `state_dict`, `pending` and the rest.
        max_draws: steps of the random walk, and uniform draws, that look for one unseen arch before
            `ask` raises `SpaceExhausted`.
        patience: repeats in a row after which each further repeat is replaced by an unseen arch.
    """

    def __init__(self, strategy: Strategy, max_draws: int = 1000, patience: int = 10) -> None:
        self.strategy = strategy
        self.max_draws = max_draws
        self.patience = patience
        self._seen: dict[str, Any] = {}  # hash -> metrics, or _UNSCORED
        self.repeats = 0
        self.n_adopted = 0

    @property
    def ask_batch(self) -> int:
        """The wrapped strategy's `Strategy.ask_batch`."""
        return self.strategy.ask_batch

    def ask(self, n: int = 1) -> list[Arch]:
        """`n` new archs that no earlier ask of this search returned.

        Raises:
            SpaceExhausted: the strategy repeats itself and no unseen arch is left to find; its `archs`
                holds the new archs found before.
        """
        archs: list[Arch] = []
        repeats_in_row, exhausted = 0, False
        while len(archs) < n:  # each round adds an arch, or a repeat towards `patience`: bounded
            for arch in self.strategy.ask(n - len(archs)):  # each one is taken, told or forgotten: none dangles
                known = self._seen.get(arch.hash, arch)
                if known is arch:
                    self._seen[arch.hash] = _UNSCORED
                    archs.append(arch)
                    repeats_in_row = 0
                    continue
                self.repeats += 1
                repeats_in_row += 1
                if isinstance(known, Mapping):
                    self.strategy.tell(arch, known)
                else:
                    self.strategy.forget(arch)
                if repeats_in_row >= self.patience and not exhausted:
                    unseen = self._unseen(arch)
                    exhausted = unseen is None
                    if unseen is not None:
                        self._adopt(unseen)
                        archs.append(unseen)
            if exhausted and len(archs) < n:
                space = self.strategy.space
                raise SpaceExhausted(
                    f"strategy {type(self.strategy).__name__} proposed {self.patience} archs in a row that this search "
                    f"has already seen ({len(self._seen)} distinct archs so far, of at most {space.size():,} in space "
                    f"{space.name}), and {self.max_draws} mutations from them and {self.max_draws} uniform draws found "
                    "no unseen arch; the space looks exhausted", archs)
        return archs

    def _adopt(self, arch: Arch) -> None:
        """Hand an unseen arch to the strategy in place of its repeat."""
        self.strategy.adopt(arch)
        self._seen[arch.hash] = _UNSCORED
        self.n_adopted += 1

    def _unseen(self, start: Arch) -> Arch | None:
        """The first unseen arch of a random walk of mutations from `start`, else of uniform draws, or None."""
        space, rng, seen = self.strategy.space, self.strategy.rng, self._seen
        if len(seen) >= space.size():  # every arch seen (the size counts archs that break a rule too)
            return None
        arch = start
        if any(len(d.choices) > 1 for d in space.decisions()):
            for _ in range(self.max_draws):
                try:
                    arch = space.mutate(arch, rng)
                except NasError:  # no neighbour passes the space's rules: draw uniformly instead
                    break
                if arch.hash not in seen:
                    return arch
        for _ in range(self.max_draws):
            arch = space.sample(rng)
            if arch.hash not in seen:
                return arch
        return None

    def tell(self, arch: Arch, metrics: Mapping[str, float]) -> float:
        """Tell the wrapped strategy, and remember the metrics for its repeats."""
        value = self.strategy.tell(arch, metrics)
        self._seen[arch.hash] = dict(metrics)
        return value

    def forget(self, arch: Arch) -> None:
        """Drop an arch that failed; its repeats are dropped too."""
        self.strategy.forget(arch)
        self._seen[arch.hash] = _UNSCORED

    def remember(self, arch_hash: str, metrics: Mapping[str, float] | None) -> None:
        """Mark an arch as seen on resume: scored (`metrics`), or failed or in flight (None)."""
        self._seen[arch_hash] = dict(metrics) if metrics is not None else _UNSCORED

    def pending(self) -> list[Arch]:
        return self.strategy.pending()

    def state_dict(self) -> dict[str, Any]:
        return self.strategy.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.strategy.load_state_dict(state)
