"""nas: hardware-aware neural architecture search on Ray with measured latency lookup tables.

Importing this package is cheap: torch and ray load only when a space, evaluator or
search is used, so `nas --help` stays fast. `nas.search` (the Python API, `nas.api`) is
imported on first use for the same reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nas.api import search

__version__ = "0.1.0"
__all__ = ["search"]


def __getattr__(name: str) -> Any:
    """`nas.search`, imported from `nas.api` on first use (PEP 562)."""
    if name == "search":
        from nas.api import search

        return search
    raise AttributeError(f"module 'nas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "search"])
