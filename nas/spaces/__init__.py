"""Search spaces; importing this package registers every space in `SPACES`."""

from nas.spaces import eeea, nasbench201, nasnet, ofa_mbv3, proxylessnas, single_path

__all__ = ["eeea", "nasbench201", "nasnet", "ofa_mbv3", "proxylessnas", "single_path"]
