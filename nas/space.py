"""`SearchSpace`: the base class every space implements, and `load_space`.

A space is built from its typed config (defaults from `search_spaces/<name>.yaml`
merged with overrides). It lists its decisions, samples, mutates and crosses archs
(defaults here work from the decisions), builds an `nn.Module`, and names the
latency key of every timed unit of an arch, so a latency table can price it.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
from pydantic import Field

from nas.arch import Arch, ArchFactory, Choice, canonical_json
from nas.config import SPACES_DIR, PresetSpec, SpaceFile, UserConfig, parse
from nas.errors import NasError, UserError, shorten
from nas.files import load_yaml
from nas.registry import SPACES

if TYPE_CHECKING:
    from torch import nn

    from nas.supernet import Supernet


@dataclass(frozen=True)
class Decision:
    """A named categorical choice, e.g. `s3.b1.op` over (`mb3_k3`, ..., `zero`)."""

    name: str
    choices: tuple[Choice, ...]


@dataclass(frozen=True)
class Unit:
    """One timed unit of a network: its module and its input shape (C, H, W), batch excluded."""

    module: nn.Module
    input_shape: tuple[int, ...]


@dataclass(frozen=True)
class LatencyTerm:
    """Timed units that depend on a few decisions only: `keys(choices)` for the choices of `decisions`.

    A space's terms together give every arch's latency keys: the multiset union of
    `keys(tuple(arch.choices[d] for d in decisions))` over its terms equals `latency_keys(arch)`.
    Fixed parts (stem, head) are a term with no decisions (`keys(())`). An expected latency
    under independent choice probabilities is then a sum over terms of small products, which
    `LatencyTable.expected_latency` evaluates exactly (it enumerates each term's choices, so
    keep a term's decisions few).
    """

    decisions: tuple[str, ...]
    keys: Callable[[tuple[Choice, ...]], tuple[str, ...]]


# Bounds of every space config, so no config asks for more memory than a machine has: the
# largest published input is NASNet-A Large's 331 px and the most classes ImageNet-21k's 21841.
MAX_RESOLUTION = 1024
MAX_CLASSES = 100_000
NumClasses = Annotated[int, Field(gt=0, le=MAX_CLASSES)]
WidthMult = Annotated[float, Field(gt=0, le=4)]
"""Published width multipliers are 0.35 to 1.4; 4 leaves room and keeps networks buildable."""


class SpaceConfig(UserConfig):
    """Config keys every space has; a space subclasses this with its own (same bounds, its own minimum)."""

    resolution: int = Field(gt=0, le=MAX_RESOLUTION)
    num_classes: NumClasses


class SearchSpace(ABC):
    """Base class of search spaces.

    Subclasses set `config_model`, register with `@SPACES.register(name)` and
    implement `decisions`, `build`, `latency_keys`, `unit_table` and `latency_terms`.
    """

    name: ClassVar[str]
    config_model: ClassVar[type[SpaceConfig]]
    max_draws: ClassVar[int] = 1000
    """Proposals `sample`, `mutate` and `crossover` draw before giving up on one that passes `check`."""

    def __init__(self, config: SpaceConfig, presets: Mapping[str, PresetSpec] | None = None) -> None:
        self.config = config
        self._config_dump = json.loads(canonical_json(config.model_dump()))  # as an Arch stores it
        self._preset_specs = dict(presets or {})
        self._decisions = {d.name: d for d in self.decisions()}
        self._mutable = [d for d in self._decisions.values() if len(d.choices) > 1]
        # Per mutable decision: its choice -> the other choices (what `mutate` picks among), and their count.
        self._others = [{c: tuple(o for o in d.choices if o != c) for c in d.choices} for d in self._mutable]
        self._n_others = np.array([len(d.choices) - 1 for d in self._mutable], dtype=np.int64)
        self._factory = ArchFactory(self.name, {d.name: d.choices for d in self._decisions.values()},
                                    self._config_dump)
        self.arch_config = self._factory.config
        """The read-only config of the archs this space makes, one object shared by all of them."""

    # -- what a space must define -------------------------------------------------
    @abstractmethod
    def decisions(self) -> list[Decision]:
        """Every decision, in network order."""

    @abstractmethod
    def build(self, arch: Arch) -> nn.Module:
        """The network of `arch`, ready for a forward pass on (B, 3, R, R)."""

    @abstractmethod
    def latency_keys(self, arch: Arch) -> list[str]:
        """One key per timed unit of `arch`, in network order; together they make the whole network."""

    @property
    @abstractmethod
    def unit_table(self) -> Mapping[str, tuple[Callable[[], nn.Module], tuple[int, ...]]]:
        """Every latency key at this config -> (factory of the module `build` uses for it, input shape (C, H, W))."""

    @abstractmethod
    def latency_terms(self) -> list[LatencyTerm]:
        """The latency keys as terms over few decisions each (see `LatencyTerm`), in network order."""

    def all_latency_keys(self) -> list[str]:
        """Every key any arch of this space (at this config) can produce, sorted."""
        return sorted(self.unit_table)

    def unit(self, key: str) -> Unit:
        """A fresh module of the unit `key` (the one `build` uses) and its input shape."""
        entry = self.unit_table.get(key)
        if entry is None:
            raise UserError(f"{self.name}: {shorten(key)} is not a latency key of this space at config "
                            f"{canonical_json(self.config.model_dump())}; see all_latency_keys() for the "
                            f"{len(self.unit_table)} keys")
        factory, input_shape = entry
        return Unit(factory(), input_shape)

    def input_resolution(self, arch: Arch) -> int:
        """The side R of the (B, 3, R, R) input `build(arch)` takes: the config's `resolution`, unless the space
        searches the resolution (then the arch's choice). Whatever feeds an arch's network reads it here."""
        return self.config.resolution

    def input_resolutions(self) -> tuple[int, ...]:
        """Every `input_resolution` an arch of this space can have, ascending; the config's `resolution` is the
        largest, so data loaded at it serve every arch after a resize (`nas.evaluate.data.resize_images`)."""
        return (self.config.resolution,)

    def check_own(self, arch: Arch) -> None:
        """Refuse an arch of another space or config (its keys would price another network)."""
        if arch.space != self.name or arch.config != self._config_dump:
            raise UserError(
                f"{self.name}: arch {arch.short_hash} belongs to space {arch.space!r} at config "
                f"{canonical_json(dict(arch.config))}, not this one; use nas.space.space_of(arch)"
            )

    def unit_cost(self, key: str) -> tuple[int, int]:
        """(params, MACs) of the unit `key`, counted once from its built module and cached."""
        from nas.pricing import unit_costs

        return unit_costs(self, [key])[0]

    def cost(self, arch: Arch) -> dict[str, int]:
        """Params and MACs of `arch` as the sum over its timed units (equal to the whole built network)."""
        return self.cost_of_keys(self.latency_keys(arch))

    def cost_of_keys(self, keys: list[str]) -> dict[str, int]:
        """Params and MACs summed over the units `keys`."""
        from nas.pricing import unit_costs

        costs = unit_costs(self, keys)
        return {"params": sum(c[0] for c in costs), "macs": sum(c[1] for c in costs)}

    # -- archs --------------------------------------------------------------------
    def make_arch(self, choices: Mapping[str, Choice]) -> Arch:
        """A validated `Arch` of this space and config."""
        arch = self._factory.make(choices)  # None: something is wrong, said by the slow path
        if arch is None:
            return self._make_arch_slowly(choices)
        self.check(choices)
        return arch

    def _make_known(self, choices: dict[str, Choice]) -> Arch:
        """`make_arch` of choices known to be allowed ones, in name order: only the space's rules are checked."""
        self.check(choices)
        return self._factory.make_known(choices)

    def _make_arch_slowly(self, choices: Mapping[str, Choice]) -> Arch:
        """`make_arch` for any input: the `UserError` of what is wrong, else the arch."""
        unknown = sorted(set(choices) - set(self._decisions))
        if unknown:
            raise UserError(
                f"{self.name}: unknown decision {shorten(unknown[0])}; decisions are e.g. "
                f"{', '.join(list(self._decisions)[:4])}, ... ({len(self._decisions)} in all)"
            )
        missing = [name for name in self._decisions if name not in choices]
        if missing:
            raise UserError(f"{self.name}: decision {missing[0]!r} has no choice ({len(missing)} missing)")
        for name, value in choices.items():
            allowed = self._decisions[name].choices
            if value not in allowed or type(value) is not type(allowed[allowed.index(value)]):
                # Quoted where a type tells them apart: 3.0 is not the choice "3.0".
                shown = repr if any(type(c) is not type(value) for c in allowed) else str
                raise UserError(
                    f"{self.name}: decision {name!r} has no choice {shorten(value)}; "
                    f"allowed: {', '.join(map(shown, allowed))}"
                )
        self.check(choices)
        return Arch(self.name, choices, self.config.model_dump())

    def check(self, choices: Mapping[str, Choice]) -> None:
        """Hook for constraints across decisions; raise `UserError` naming the decision."""

    def size(self) -> int:
        """Number of distinct archs (product of choice counts)."""
        return int(np.prod([len(d.choices) for d in self._decisions.values()], dtype=object))

    def sample(self, rng: np.random.Generator) -> Arch:
        """A uniformly random arch among those that pass `check` (rejection sampling)."""
        items = list(self._decisions.items())
        return self._first_valid(lambda: {n: d.choices[rng.integers(len(d.choices))] for n, d in items}, "sample")

    def active_decisions(self, choices: Mapping[str, Choice]) -> list[str]:
        """The decisions that shape the network of `choices`, in order: all of them, unless the space has
        inert ones (a slot past its stage's depth) and names the live ones. `mutate` changes only these, so
        every mutation changes the network."""
        return list(self._decisions)

    def active_choices(self, arch: Arch) -> dict[str, Choice]:
        """The choices that shape `arch`'s network (see `active_decisions`)."""
        return {name: arch.choices[name] for name in self.active_decisions(arch.choices)}

    def mutate(self, arch: Arch, rng: np.random.Generator) -> Arch:
        """`arch` with one random active decision changed to a different choice, redrawn until it passes `check`."""
        choices = arch.choices
        mutable = self._mutable if not self._has_inert_decisions else [
            d for d in map(self._decisions.__getitem__, self.active_decisions(choices)) if len(d.choices) > 1]

        def propose() -> dict[str, Choice]:
            decision = mutable[rng.integers(len(mutable))]
            current = choices[decision.name]
            others = [c for c in decision.choices if c != current]
            proposal = choices.copy()
            proposal[decision.name] = others[rng.integers(len(others))]
            return proposal

        # An arch this space made holds allowed choices only, in name order, as does each proposal from it.
        return self._first_valid(propose, "mutate", known=arch.config is self.arch_config)

    def mutate_many(self, archs: Sequence[Arch], rng: np.random.Generator) -> list[Arch]:
        """`mutate` of each arch, with the draws of all made at once: the same distribution, another order
        of random numbers. A space with its own `mutate`, or a child that breaks a rule, is mutated one by one."""
        mutable = self._mutable
        if type(self).mutate is not SearchSpace.mutate or self._has_inert_decisions or not mutable or not archs:
            return [self.mutate(arch, rng) for arch in archs]
        which = rng.integers(len(mutable), size=len(archs))
        picks = rng.integers(self._n_others[which]).tolist()
        children = []
        for arch, decision, pick in zip(archs, which.tolist(), picks, strict=True):
            proposal = arch.choices.copy()
            name = mutable[decision].name
            try:  # the same draws for any arch; one this space made needs no check of its choices
                proposal[name] = self._others[decision][proposal[name]][pick]
                children.append(self._make_known(proposal) if arch.config is self.arch_config else
                                self.make_arch(proposal))
            except (KeyError, UserError):  # not a choice of this space, or a rule broken: one at a time
                children.append(self.mutate(arch, rng))
        return children

    @property
    def _has_inert_decisions(self) -> bool:
        return type(self).active_decisions is not SearchSpace.active_decisions

    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        """Uniform crossover (each decision from `a` or `b` with equal chance), redrawn until it passes `check`."""
        names = list(self._decisions)

        def propose() -> dict[str, Choice]:
            pick = rng.random(len(names)) < 0.5
            return {n: (a if p else b).choices[n] for n, p in zip(names, pick, strict=True)}

        return self._first_valid(propose, "crossover")

    def _first_valid(self, propose: Callable[[], dict[str, Choice]], what: str, known: bool = False) -> Arch:
        """The first of up to `max_draws` proposals that passes `check` (every one, in a space without rules).

        `known`: every proposal holds allowed choices only, in name order, so only `check` is left to do.
        """
        make = self._make_known if known else self.make_arch
        for _ in range(self.max_draws):
            try:
                return make(propose())
            except UserError:
                continue
        raise NasError(f"{self.name}: {what} found no arch that passes the space's rules in {self.max_draws} draws")

    # -- presets --------------------------------------------------------------------
    def preset_names(self) -> list[str]:
        """Names of the published archs in this space's YAML."""
        return sorted(self._preset_specs)

    def preset(self, name: str) -> Arch:
        """The published arch `name`, at the preset's own config (e.g. 224x224, 1000 classes)."""
        spec = self._preset_specs.get(name)
        if spec is None:
            raise UserError(f"{self.name}: unknown preset {shorten(name)}; known: {', '.join(self.preset_names())}")
        space = load_space(self.name, spec.config)
        return space.make_arch(spec.choices)

    def preset_spec(self, name: str) -> PresetSpec:
        """Source and published figures of preset `name`."""
        self.preset(name)
        return self._preset_specs[name]

    # -- one-shot -------------------------------------------------------------------
    def supernet(self) -> Supernet:
        """One module holding the weights of every arch of this space (`nas.supernet.Supernet`)."""
        raise UserError(f"space {self.name} has no supernet yet")


def hwc(size: int, channels: int) -> str:
    """A square feature map as latency keys spell it: `{H}x{W}x{C}`."""
    return f"{size}x{size}x{channels}"


def _space_file(name: str) -> SpaceFile:
    path = SPACES_DIR / f"{name}.yaml"
    return parse(SpaceFile, load_yaml(path), str(path))


def parse_space_config(
    name: str, overrides: Mapping[str, Any] | None = None, where: str | None = None, *,
    prefix: str = "", flags: Mapping[str, str] | None = None,
) -> SpaceConfig:
    """The validated config of space `name`: its YAML defaults merged with `overrides`.

    `where`, `prefix` and `flags` shape the message of a bad value as in `nas.config.parse`,
    e.g. `run config: --width-mult (space_config.width_mult): ...`.
    """
    where = where or f"{name} space config"
    if not isinstance(overrides, Mapping | None):
        raise UserError(f"{where}: the space config must be a mapping of keys; got {shorten(overrides)}")
    cls = SPACES.get(name)
    merged = {**_space_file(name).defaults, **(overrides or {})}
    return parse(cls.config_model, merged, where, prefix=prefix, flags=flags)


def load_space(name: str, overrides: Mapping[str, Any] | None = None) -> SearchSpace:
    """The registered space `name` at its YAML defaults merged with `overrides` (validated)."""
    try:
        key = canonical_json(dict(overrides or {}))
    except (TypeError, ValueError):  # NaN, infinity or a non-JSON value: the config model names the key
        parse_space_config(name, overrides)
        raise UserError(f"{name} space config: not plain JSON data; got {shorten(overrides)}") from None
    return _load_space(name, key)


@cache
def _load_space(name: str, overrides_json: str) -> SearchSpace:
    config = parse_space_config(name, json.loads(overrides_json))
    return SPACES.get(name)(config, _space_file(name).presets)


def space_of(arch: Arch) -> SearchSpace:
    """The space (at the arch's own config) that `arch` belongs to."""
    return load_space(arch.space, dict(arch.config))


def find_preset(name: str) -> Arch:
    """The preset `name` from whichever space defines it (names are unique across spaces)."""
    for space_name in SPACES.names():
        if name in _space_file(space_name).presets:
            return load_space(space_name).preset(name)
    known = sorted(p for s in SPACES.names() for p in _space_file(s).presets)
    raise UserError(f"unknown preset {shorten(name)}; known: {', '.join(known)}")


__all__ = [
    "Decision",
    "LatencyTerm",
    "MAX_CLASSES",
    "MAX_RESOLUTION",
    "NumClasses",
    "SearchSpace",
    "SpaceConfig",
    "Unit",
    "WidthMult",
    "find_preset",
    "hwc",
    "load_space",
    "parse_space_config",
    "space_of",
]
