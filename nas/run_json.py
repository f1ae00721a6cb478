"""Encoding what a search writes to its run dir, fast: trial lines and strategy states.

Both are canonical JSON (`nas.arch.canonical_json`) and hold archs, whose canonical JSON each
`Arch` already has (`Arch.to_json`, made once by its space). A trial line is encoded once, when
it is made (`trial_line`), with its arch's JSON spliced in; a strategy state takes the JSON of
its archs in flight the same way (`state_json`). Both give exactly `canonical_json` of the same
data (tests/test_in_process.py), for a fraction of the cost: at a hundred thousand archs a
search, encoding the same archs again was a large part of a LUT search's time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any

from nas.arch import canonical_json

if TYPE_CHECKING:
    from nas.arch import Arch

__all__ = ["TrialLine", "encode_trial", "state_json", "trial_line"]


class TrialLine(dict):
    """A trial record made by `trial_line`: a plain dict that also carries its line of `trials.jsonl`
    (`text`; set to "" once written, to give its memory back)."""

    __slots__ = ("text",)
    text: str


_OK = ("feasible", "finished_at", "hash", "host", "metrics", "node", "pid", "score", "status", "trial")
"""The fields of an ok line besides `arch`, in the sorted order `Search.record` builds them in."""


def trial_line(arch: Arch, fields: dict[str, Any]) -> TrialLine:
    """The trial record of `arch` with `fields` (every field but `arch`), its line encoded once with the
    arch's cached JSON: `canonical_json` of the record exactly, at a fraction of the cost."""
    line = TrialLine(fields)
    line["arch"] = arch.to_dict()
    if tuple(fields) == _OK:  # the common line, written field by field as `canonical_json` writes it
        rest = (f'"feasible":{_plain(fields["feasible"])},"finished_at":{_plain(fields["finished_at"])},'
                f'"hash":{_plain(fields["hash"])},"host":{_plain(fields["host"])},'
                f'"metrics":{canonical_json(fields["metrics"])},"node":{_plain(fields["node"])},'
                f'"pid":{_plain(fields["pid"])},"score":{_plain(fields["score"])},'
                f'"status":{_plain(fields["status"])},"trial":{_plain(fields["trial"])}}}')
    else:
        rest = canonical_json(fields)[1:] if fields else "}"
    # "arch" sorts before every other field, so it opens the line
    line.text = f'{{"arch":{arch.to_json()}{"," if fields else ""}{rest}'
    return line


def _plain(value: Any) -> str:
    """`canonical_json(value)`, fast for a string, a bool, None, an int or a finite float."""
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(value)  # what `json` writes a string with
    if kind is bool:
        return "true" if value else "false"
    if value is None:
        return "null"
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    return canonical_json(value)


def encode_trial(record: dict[str, Any]) -> str:
    """The line of `trials.jsonl` (canonical JSON, no newline) of a trial record."""
    text = record.text if type(record) is TrialLine else ""
    return text or canonical_json(record)  # a line whose text was dropped once written is encoded again


_PENDING = "\x00pending\x00"
"""Stands for the pending archs while the rest of a state is encoded; a state holding this string itself
(it has NUL characters) is encoded plainly."""


def state_json(saved: dict[str, Any], pending: Sequence[Arch] = ()) -> str:
    """`canonical_json(saved)`, with `saved["strategy"]["pending"]` taken from the cached JSON of `pending`
    when it lists exactly those archs."""
    state = saved["strategy"]
    listed = state.get("pending")
    if not pending or not isinstance(listed, list) or len(listed) != len(pending) or \
            not all(_is_dict_of(data, arch) for data, arch in zip(listed, pending, strict=True)):
        return canonical_json(saved)
    text = canonical_json({**saved, "strategy": {**state, "pending": _PENDING}})
    marker = canonical_json(_PENDING)
    if text.count(marker) != 1:
        return canonical_json(saved)
    return text.replace(marker, "[" + ",".join(arch.to_json() for arch in pending) + "]")


def _is_dict_of(data: Any, arch: Arch) -> bool:
    """Whether `data` equals `arch.to_dict()` (without building it)."""
    return type(data) is dict and len(data) == 3 and data.get("choices") == arch.choices and \
        data.get("config") == arch.config and data.get("space") == arch.space
