"""One small registry type and its instances, the extension points of the platform.

A module registers a class under an explicit snake_case name with a decorator. Spaces,
evaluators, devices and export formats: the package `__init__` of the extension point imports
its modules explicitly, so looking a name up first imports that package (`SPACES.get` imports
`nas.spaces`). Strategies and one-shot methods: a folder of YAML files lists the members, one
`<name>.yaml` per module `<package>.<name>`, so looking a name up imports that one module
(a search with `evolution` never imports Optuna, which `tpe` needs); listing the names imports
every module the folder names, explicitly by name, never by scanning the package.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from nas.config import METHODS_DIR, STRATEGIES_DIR
from nas.errors import NasError, UserError, shorten

T = TypeVar("T")
_STEM = re.compile(r"[a-z][a-z0-9_]{0,63}")
"""A member name that can name a module (and its YAML file): no dots, slashes or upper case."""


class Registry(Generic[T]):
    """A named mapping from registered names to classes.

    Args:
        kind: what the registry holds, for messages ("space", "strategy").
        package: the package whose import registers every member (without `members`).
        members: the folder whose `<name>.yaml` files name the members, each registered by the module
            `<package>.<name>`.
    """

    def __init__(self, kind: str, package: str, members: Path | None = None) -> None:
        self.kind = kind
        self.package = package
        self.members = members
        self._items: dict[str, T] = {}
        self._all_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering a class under `name`; a duplicate name is a bug."""

        def add(item: T) -> T:
            if name in self._items:
                raise NasError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def _load(self, name: str | None = None) -> None:
        """Register every member, or (with `members`) only the one whose YAML file `name` names, if any."""
        if self._all_loaded:
            return
        importlib.import_module(self.package)
        if self.members is None:
            self._all_loaded = True
            return
        if name is not None:
            if _STEM.fullmatch(name) and (self.members / f"{name}.yaml").is_file():
                importlib.import_module(f"{self.package}.{name}")
            return
        for path in sorted(self.members.glob("*.yaml")):
            importlib.import_module(f"{self.package}.{path.stem}")
        self._all_loaded = True

    def get(self, name: str) -> T:
        """The member named `name`, or a `UserError` listing the known names."""
        item = self._items.get(name) if isinstance(name, str) else None
        if item is None and isinstance(name, str):
            self._load(name)
            item = self._items.get(name)
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
STRATEGIES: Registry = Registry("strategy", "nas.strategies", STRATEGIES_DIR)
EVALUATORS: Registry = Registry("evaluator", "nas.evaluate")
TIMERS: Registry = Registry("device", "nas.hardware")
EXPORTERS: Registry = Registry("export format", "nas.export")
METHODS: Registry = Registry("one-shot method", "nas.oneshot", METHODS_DIR)
