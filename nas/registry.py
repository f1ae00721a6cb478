"""One small registry type and its instances, the extension points of the platform.

A module registers a class under an explicit snake_case name with a decorator; the
package `__init__` of each extension point imports its modules explicitly, so looking
a name up first imports that package (`SPACES.get` imports `nas.spaces`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from nas.errors import NasError, UserError, shorten

T = TypeVar("T")


class Registry(Generic[T]):
    """A named mapping from registered names to classes.

    Args:
        kind: what the registry holds, for messages ("space", "strategy").
        package: the package whose import registers every member.
    """

    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self.package = package
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering a class under `name`; a duplicate name is a bug."""

        def add(item: T) -> T:
            if name in self._items:
                raise NasError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def _load(self) -> None:
        importlib.import_module(self.package)

    def get(self, name: str) -> T:
        """The member named `name`, or a `UserError` listing the known names."""
        self._load()
        item = self._items.get(name) if isinstance(name, str) else None
        if item is None:
            raise UserError(f"unknown {self.kind} {shorten(name)}; known: {', '.join(self.names())}")
        return item

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._load()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items


SPACES: Registry = Registry("space", "nas.spaces")
STRATEGIES: Registry = Registry("strategy", "nas.strategies")
EVALUATORS: Registry = Registry("evaluator", "nas.evaluate")
TIMERS: Registry = Registry("device", "nas.hardware")
EXPORTERS: Registry = Registry("export format", "nas.export")
METHODS: Registry = Registry("one-shot method", "nas.oneshot")
