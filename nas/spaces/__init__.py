"""Search spaces; importing this package registers every space in `SPACES`."""

from nas.spaces import (
    bossnas_hytra,
    eeea,
    nasbench201,
    nasnet,
    ofa_mbv3,
    proxylessnas,
    shiftnas_cnn,
    shiftnas_vit,
    single_path,
    vit_resnas,
)

__all__ = [
    "bossnas_hytra",
    "eeea",
    "nasbench201",
    "nasnet",
    "ofa_mbv3",
    "proxylessnas",
    "shiftnas_cnn",
    "shiftnas_vit",
    "single_path",
    "vit_resnas",
]
