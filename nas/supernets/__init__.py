"""Supernets (`nas.supernet.Supernet`) of the search spaces, one module per space or family of spaces.

Spaces import their supernet lazily in `SearchSpace.supernet()`, so importing a space does
not import these modules: `chain` (ProxylessNAS and any `ChainSpace`), `nasbench201`,
`single_path` (superkernel), `ofa_mbv3` and `shiftnas_cnn` (elastic CNNs), `nasnet` and `eeea`
(cells, with `_cells`), `vit_resnas` and `shiftnas_vit` (sliced transformers) and `bossnas_hytra`
(a mixed op over a convolution and an attention block per layer and scale).
"""
