"""Search spaces; importing this package registers every space in `SPACES`."""

from nas.spaces import eeea, nasnet, ofa_mbv3, proxylessnas, single_path

__all__ = ["eeea", "nasnet", "ofa_mbv3", "proxylessnas", "single_path"]
