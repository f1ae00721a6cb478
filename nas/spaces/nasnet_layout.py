"""Where the NASNet space's cells go: the config, the cell positions with their wiring, widths and sizes.

`nas.spaces.nasnet` builds the space, its latency keys and its networks on this layout (slim's
`_build_nasnet_base` and `_imagenet_stem` wiring; see that module's docstring for the choices).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, field_validator
from torch import nn

from nas.arch import Choice
from nas.errors import UserError
from nas.space import MAX_RESOLUTION, NumClasses, SpaceConfig

NORMAL, REDUCTION = "normal", "reduction"
CELL_TYPES = (NORMAL, REDUCTION)
BLOCKS = 5
_BLOCK_STATES = tuple(range(2, 2 + BLOCKS))  # hidden states made by the blocks
# Choice tokens of `b{b}.inputs`: the unordered pairs of the b + 2 states block b can read.
_PAIRS = tuple(tuple(f"{i}+{j}" for i in range(b + 2) for j in range(i, b + 2)) for b in range(BLOCKS))

HiddenState = Annotated[int, Field(ge=0, le=1 + BLOCKS)]
_Factory = Callable[[], nn.Module]


class NASNetConfig(SpaceConfig):
    """Input, classes, stem, N (normal cells per stack), F (filters) and slim's extra output states."""

    resolution: int = Field(ge=16, le=MAX_RESOLUTION)
    num_classes: NumClasses
    stem: Literal["cifar", "imagenet"]
    # Upper bounds: about five times NASNet-A Large (N = 6, F = 168, stem multiplier 3).
    cells_per_stack: int = Field(gt=0, le=32)
    num_filters: int = Field(gt=0, le=1024)
    stem_multiplier: float = Field(default=3.0, gt=0, le=16)
    skip_reduction_layer_input: bool = False
    normal_concat_extra: tuple[HiddenState, ...] = Field(default=(), max_length=2 + BLOCKS)
    reduction_concat_extra: tuple[HiddenState, ...] = Field(default=(), max_length=2 + BLOCKS)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)

    @field_validator("normal_concat_extra", "reduction_concat_extra")
    @classmethod
    def _distinct_sorted(cls, states: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(states)) != len(states):
            raise ValueError("hidden states must be distinct")
        return tuple(sorted(states))

    def concat_extra(self, kind: str) -> tuple[int, ...]:
        """Hidden states of a `kind` cell concatenated into its output even when used."""
        return self.normal_concat_extra if kind == NORMAL else self.reduction_concat_extra


def _pair(token: Choice) -> tuple[int, int]:
    """The two hidden states of an `inputs` choice: "0+3" -> (0, 3)."""
    first, second = str(token).split("+")
    return int(first), int(second)


def _half(size: int) -> int:
    return -(-size // 2)  # 'SAME' stride 2: ceil(H / 2)


@dataclass(frozen=True)
class _Cell:
    """One cell position: type, filters, input size and the outputs it reads (0 = stem, 1 + k = cell k)."""

    kind: str
    filters: int
    in_size: int
    src0: int
    src1: int | None  # None: the raw input of src0 again (slim's prev_layer=None)

    @property
    def out_size(self) -> int:
        return _half(self.in_size) if self.kind == REDUCTION else self.in_size

    def stride(self, state: int) -> int:
        """Reduction cells stride only the ops on the cell inputs [nasnet_utils._apply_conv_operation]."""
        return 2 if self.kind == REDUCTION and state < 2 else 1


@dataclass(frozen=True)
class _Layout:
    stem_width: int
    stem_size: int
    cells: tuple[_Cell, ...]

    def size(self, output: int) -> int:
        return self.stem_size if output == 0 else self.cells[output - 1].out_size


def _layout(cfg: NASNetConfig) -> _Layout:
    """Cells in network order with slim's wiring [nasnet.py `_build_nasnet_base`, `_imagenet_stem`]."""
    f, n = cfg.num_filters, cfg.cells_per_stack
    if cfg.stem == "cifar":
        stem_width, stem_size = int(f * cfg.stem_multiplier), cfg.resolution
    else:
        stem_width, stem_size = int(32 * cfg.stem_multiplier), (cfg.resolution - 3) // 2 + 1
    cells: list[_Cell] = []
    sizes = [stem_size]
    history: list[int | None] = [None, 0]  # slim's cell_outputs, as output indices

    def add(kind: str, filters: int, src1: int | None) -> None:
        cell = _Cell(kind, filters, sizes[history[-1]], history[-1], src1)
        cells.append(cell)
        sizes.append(cell.out_size)
        history.append(len(cells))

    if cfg.stem == "imagenet":
        for scaling in (0.25, 0.5):
            add(REDUCTION, int(f * scaling), history[-2])
    scaling = 1
    for k in range(3 * n):
        prev = history[-2]
        if k in (n, 2 * n):
            scaling *= 2
            add(REDUCTION, f * scaling, history[-2])
        add(NORMAL, f * scaling, prev if cfg.skip_reduction_layer_input else history[-2])
    layout = _Layout(stem_width, stem_size, tuple(cells))
    _check_widths(layout, cfg)
    return layout


def _check_widths(layout: _Layout, cfg: NASNetConfig) -> None:
    """Every width is positive; factorized reduction at stride 2 splits one in halves
    [nasnet_utils.factorized_reduction]."""
    narrowest = min(layout.stem_width, *(c.filters for c in layout.cells))
    if narrowest < 1:
        raise UserError(f"nasnet space config: num_filters {cfg.num_filters} and stem_multiplier "
                        f"{cfg.stem_multiplier} give a layer with no channels; raise them")
    for cell in layout.cells:
        reduces_prev = cell.src1 is not None and layout.size(cell.src1) != cell.in_size
        reduces_out = cell.kind == REDUCTION and bool(set(cfg.concat_extra(REDUCTION)) & {0, 1})
        if (reduces_prev or reduces_out) and cell.filters % 2:
            raise UserError(
                f"nasnet space config: num_filters {cfg.num_filters} gives a cell of {cell.filters} filters "
                f"that needs a factorized reduction, which needs an even width; choose another num_filters"
            )
