"""`Arch`: one architecture as a small immutable value.

An `Arch` is a space name, the chosen value of every decision and the space
configuration it was built for (input resolution, classes, widths). Its canonical
JSON has sorted keys and compact separators, so `arch.hash` (sha256 of that JSON)
is the same in every process and on every machine. Spaces create validated archs
(`SearchSpace.make_arch`), and `Arch.from_json` validates against the registered
space, so an `Arch` met anywhere names only decisions and choices its space has.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import cached_property
from types import MappingProxyType
from typing import Any

from nas.errors import UserError, shorten

Choice = str | int


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)
"""One encoder for every call: `json.dumps` with these options builds a new one each time."""


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and compact separators: the form that is hashed."""
    return _CANONICAL.encode(value)


class Arch:
    """An immutable architecture: space name, decision choices and space config."""

    __slots__ = ("space", "choices", "config", "__dict__")

    def __init__(self, space: str, choices: Mapping[str, Choice], config: Mapping[str, Any]) -> None:
        object.__setattr__(self, "space", space)
        object.__setattr__(self, "choices", MappingProxyType(dict(sorted(choices.items()))))
        object.__setattr__(self, "config", MappingProxyType(json.loads(canonical_json(dict(config)))))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Arch is immutable; use replace()")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, the same data as `to_json`."""
        return {"space": self.space, "choices": self.choices.copy(), "config": self.config.copy()}

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, compact separators)."""
        return self._json

    @cached_property
    def _json(self) -> str:
        return canonical_json(self.to_dict())

    @cached_property
    def hash(self) -> str:
        """sha256 hex digest of the canonical JSON."""
        return hashlib.sha256(self._json.encode()).hexdigest()

    @property
    def short_hash(self) -> str:
        """The first 12 hex digits of `hash`, for logs and directory names."""
        return self.hash[:12]

    def replace(self, **choices: Choice) -> Arch:
        """A new arch of the same space with some choices changed (not validated)."""
        return Arch(self.space, {**self.choices, **choices}, self.config)

    @staticmethod
    def from_dict(data: Any) -> Arch:
        """Build and validate an arch from its plain-dict form."""
        if not isinstance(data, dict) or set(data) != {"space", "choices", "config"}:
            got = shorten(sorted(data)) if isinstance(data, dict) else type(data).__name__
            raise UserError(f"arch must be an object with keys choices, config, space; got {got}")
        if not isinstance(data["choices"], dict) or not isinstance(data["config"], dict):
            raise UserError("arch 'choices' and 'config' must be JSON objects")
        if not isinstance(data["space"], str):
            raise UserError(f"arch 'space' must be a space name (a string); got {shorten(data['space'])}")
        from nas.space import load_space

        space = load_space(data["space"], data["config"])
        return space.make_arch(data["choices"])

    @staticmethod
    def from_json(text: str | bytes) -> Arch:
        """Parse (within the limits of `nas.config.load_json`) and validate JSON of an arch."""
        from nas.files import load_json

        return Arch.from_dict(load_json(text, "arch"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Arch) and other.hash == self.hash

    def __hash__(self) -> int:
        return int(self.hash[:16], 16)

    def __repr__(self) -> str:
        return f"Arch({self.space}, {self.short_hash})"


class ArchFactory:
    """Makes the archs of one space and config fast, for a search that makes hundreds of thousands.

    Each (decision, choice) pair is encoded once, so an arch's canonical JSON is a join of pieces,
    and its archs share one read-only config (`config`). What it makes equals `Arch(space, choices,
    config)` (same JSON, hash and equality); the space checks its own rules (`SearchSpace.check`).

    Args:
        space: the space's name.
        decisions: decision name -> its allowed choices.
        config: the space config as canonical JSON data.
    """

    def __init__(self, space: str, decisions: Mapping[str, tuple[Choice, ...]], config: Mapping[str, Any]) -> None:
        self.space = space
        self.config: Mapping[str, Any] = MappingProxyType(dict(config))
        """The read-only config of every arch made here, one object shared by all of them."""
        self._pieces = {name: {c: (type(c), f"{canonical_json(name)}:{canonical_json(c)}") for c in choices}
                        for name, choices in sorted(decisions.items())}
        self._tail = f'}},"config":{canonical_json(dict(config))},"space":{canonical_json(space)}}}'

    def make(self, choices: Mapping[str, Choice]) -> Arch | None:
        """The arch of `choices`, or None unless every decision has one of its allowed choices (and no more)."""
        pieces = self._pieces
        if len(choices) != len(pieces):
            return None
        ordered, parts = {}, []
        try:
            for name, table in pieces.items():
                value = choices[name]
                kind, text = table[value]
                if type(value) is not kind:  # True for 1, 1.0 for 1: equal, but not the choice
                    return None
                ordered[name] = value
                parts.append(text)
        except (KeyError, TypeError):  # a missing decision, an unknown or unhashable choice
            return None
        return self._arch(ordered, parts)

    def make_known(self, choices: dict[str, Choice]) -> Arch:
        """The arch of `choices` known to be allowed ones, in name order (a copy of a made arch's, one changed)."""
        parts = [table[value][1] for table, value in zip(self._pieces.values(), choices.values(), strict=True)]
        return self._arch(choices, parts)

    def _arch(self, choices: dict[str, Choice], parts: list[str]) -> Arch:
        arch = object.__new__(Arch)
        object.__setattr__(arch, "space", self.space)
        object.__setattr__(arch, "choices", MappingProxyType(choices))
        object.__setattr__(arch, "config", self.config)
        arch.__dict__["_json"] = '{"choices":{' + ",".join(parts) + self._tail
        return arch
