"""The reference's `network_def` tuples <-> ViT-ResNAS choices.

yilunliao/vit-search describes every network as a tuple of entries [vit_sr_supernet.py,
compute_flop_mac.py]: `(4, E)` the conv stem (`(5, E, 24)` with its mid width spelt out), `(1, (E, heads,
head_dim), (E, mlp), exists)` a transformer block, `(3, E_in, E_out)` a spatial reduction and
`(2, E, classes)` the head. A search output keeps every slot of the supernet, removed blocks with
`exists` 0; the retraining scripts delete them. `from_network_def` reads both forms: a stage with fewer
entries than slots has lost its last optional slots (the positions a retraining tuple no longer
records; the network is the same either way, only the module names and drop-path rates follow the slots).
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from nas.arch import Choice
from nas.errors import UserError, shorten

if TYPE_CHECKING:
    from nas.spaces.vit_resnas import ViTResNASSpace

_MAX_CHARS = 100_000  # a Small supernet's tuple is ~2,000 characters
_STEM, _BLOCK, _HEAD, _REDUCTION, _FLEX_STEM = 4, 1, 2, 3, 5


def _parse(network_def: object) -> tuple:
    if isinstance(network_def, str):
        if len(network_def) > _MAX_CHARS:
            raise UserError(f"network_def: {len(network_def)} characters; allowed: at most {_MAX_CHARS}")
        try:
            network_def = ast.literal_eval(network_def)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise UserError(f"network_def: not a Python tuple literal; got {shorten(network_def)}") from None
    if not isinstance(network_def, tuple | list) or len(network_def) < 2:
        raise UserError(f"network_def: expected a tuple of entries ((4, E), ..., (2, E, classes)); "
                        f"got {shorten(network_def)}")
    return tuple(network_def)


def _flat_ints(entry: object) -> bool:
    return isinstance(entry, tuple | list) and bool(entry) and all(type(v) is int for v in entry)


def _entry(entry: object, kind: int, shape: str, ok: bool) -> None:
    if not (ok and isinstance(entry, tuple | list) and entry and entry[0] == kind):
        raise UserError(f"network_def: expected an entry {shape}; got {shorten(entry)}")


def from_network_def(space: ViTResNASSpace, network_def: object) -> dict[str, Choice]:
    """The choices of a `network_def` (tuple, list or its string) at `space`'s config; `make_arch` checks them.

    Raises:
        UserError: a malformed entry, a width that changes inside a stage, a head dim other than the
            config's, a number of reductions other than 2 or a stage depth outside its range.
    """
    from nas.spaces.vit_resnas import OPTIONAL_SLOTS

    stem, *body, head = _parse(network_def)
    if not (_flat_ints(stem) and (len(stem) == 2 and stem[0] == _STEM
                                  or len(stem) == 3 and stem[0] == _FLEX_STEM and stem[2] == 24)):
        raise UserError(f"network_def: expected the stem entry (4, E) or (5, E, 24) first; got {shorten(stem)}")
    choices: dict[str, Choice] = {"s1.width": stem[1]}
    stages: list[list[tuple]] = [[]]
    for entry in body:
        if isinstance(entry, tuple | list) and entry and entry[0] == _REDUCTION:
            _entry(entry, _REDUCTION, "(3, E_in, E_out)", len(entry) == 3 and _flat_ints(entry))
            if len(stages) == len(space.stages) or entry[1] != choices[f"s{len(stages)}.width"]:
                raise UserError(f"network_def: reduction {shorten(entry)} does not follow stage {len(stages)} "
                                f"of width {choices[f's{len(stages)}.width']} (3 stages, 2 reductions)")
            stages.append([])
            choices[f"s{len(stages)}.width"] = entry[2]
            continue
        _entry(entry, _BLOCK, "(1, (E, heads, head_dim), (E, mlp), exists)",
               isinstance(entry, tuple | list) and len(entry) == 4 and type(entry[3]) is int
               and all(_flat_ints(part) and len(part) == n for part, n in zip(entry[1:3], (3, 2), strict=True)))
        stages[-1].append(entry)
    if len(stages) != len(space.stages):
        raise UserError(f"network_def: {len(stages) - 1} reductions (type 3); allowed: 2 (3 stages)")
    _entry(head, _HEAD, f"(2, {choices['s3.width']}, {space.config.num_classes}) last",
           _flat_ints(head) and tuple(head[1:]) == (choices["s3.width"], space.config.num_classes))
    for stage, blocks in zip(space.stages, stages, strict=True):
        s, slots = stage.index, _slots(stage.slots, len(blocks), stage.index, space.config.supernet)
        for j, entry in zip(slots, blocks, strict=True):
            (width, heads, head_dim), (width2, mlp), exists = entry[1], entry[2], entry[3]
            if width != choices[f"s{s}.width"] or width2 != width:
                raise UserError(f"network_def: block {shorten(entry)} of stage {s} is not of the stage's width "
                                f"{choices[f's{s}.width']}")
            if head_dim != stage.head_dim:
                raise UserError(f"network_def: block {shorten(entry)}: head dim {head_dim} is not stage {s}'s "
                                f"{stage.head_dim} (space config head_dims)")
            if exists not in (0, 1) or (exists == 0 and j not in OPTIONAL_SLOTS):
                raise UserError(f"network_def: block {shorten(entry)}: slot {j} of stage {s} cannot be removed; "
                                f"removable slots: {', '.join(map(str, OPTIONAL_SLOTS[: _optional(stage.slots)]))}")
            choices.update({f"s{s}.b{j}.heads": heads, f"s{s}.b{j}.mlp": mlp})
            if j in OPTIONAL_SLOTS:
                choices[f"s{s}.b{j}.exists"] = exists
        for j in sorted(set(range(1, stage.slots + 1)) - set(slots)):  # removed: the largest choices, as a search
            choices.update({f"s{s}.b{j}.exists": 0, f"s{s}.b{j}.heads": max(stage.heads),
                            f"s{s}.b{j}.mlp": max(stage.mlps)})
    return choices


def _optional(slots: int) -> int:
    from nas.spaces.vit_resnas import OPTIONAL_SLOTS

    return sum(j <= slots for j in OPTIONAL_SLOTS)


def _slots(slots: int, blocks: int, stage: int, supernet: str) -> list[int]:
    """The slots of a stage's `blocks` entries: all of them, or all but the last removable ones."""
    from nas.spaces.vit_resnas import OPTIONAL_SLOTS

    low = slots - _optional(slots)
    if not low <= blocks <= slots:
        raise UserError(f"network_def: stage {stage} depth {blocks} is outside its range; allowed: {low}..{slots} "
                        f"blocks (the {supernet} supernet)")
    removed = [j for j in OPTIONAL_SLOTS if j <= slots][::-1][: slots - blocks]
    return [j for j in range(1, slots + 1) if j not in removed]


def to_network_def(space: ViTResNASSpace, choices: dict[str, Choice], keep_removed: bool) -> tuple:
    """The `network_def` of `choices`: every slot with its `exists` flag, or (`keep_removed=False`) only kept ones."""
    from nas.spaces.vit_resnas import OPTIONAL_SLOTS

    out: list[tuple] = [(_STEM, choices["s1.width"])]
    for stage in space.stages:
        s, width = stage.index, choices[f"s{stage.index}.width"]
        if s > 1:
            out.append((_REDUCTION, choices[f"s{s - 1}.width"], width))
        for j in range(1, stage.slots + 1):
            exists = int(choices[f"s{s}.b{j}.exists"]) if j in OPTIONAL_SLOTS else 1
            if exists or keep_removed:
                out.append((_BLOCK, (width, choices[f"s{s}.b{j}.heads"], stage.head_dim),
                            (width, choices[f"s{s}.b{j}.mlp"]), exists))
    return (*out, (_HEAD, choices["s3.width"], space.config.num_classes))


__all__ = ["from_network_def", "to_network_def"]
