"""Search spaces; importing this package registers every space in `SPACES`."""

from nas.spaces import proxylessnas

__all__ = ["proxylessnas"]
