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
from json.encoder import c_make_encoder, encode_basestring_ascii
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
"""The fields of an ok line besides `arch`, in the sorted order `Search.record` builds them in (a line with an
optional field, `stopped_early`, is encoded by `canonical_json` instead)."""


def trial_line(arch: Arch, fields: dict[str, Any]) -> TrialLine:
    """The trial record of `arch` with `fields` (every field but `arch`), its line encoded once with the
    arch's cached JSON: `canonical_json` of the record exactly, at a fraction of the cost."""
    line = TrialLine(fields)
    line["arch"] = arch.to_dict()
    if tuple(fields) == _OK:  # the common line, written field by field as `canonical_json` writes it
        rest = (f'"feasible":{_plain(fields["feasible"])},"finished_at":{_text(fields["finished_at"])},'
                f'"hash":{_text(fields["hash"])},"host":{_plain(fields["host"])},'
                f'"metrics":{_encode_flat(fields["metrics"])},"node":{_plain(fields["node"])},'
                f'"pid":{_plain(fields["pid"])},"score":{_plain(fields["score"])},'
                f'"status":{_text(fields["status"])},"trial":{_plain(fields["trial"])}}}')
    else:
        rest = canonical_json(fields)[1:] if fields else "}"
    # "arch" sorts before every other field, so it opens the line
    line.text = f'{{"arch":{arch.to_json()}{"," if fields else ""}{rest}'
    return line


def _text(value: Any) -> str:
    """`canonical_json` of a field that is nearly always a string."""
    return encode_basestring_ascii(value) if type(value) is str else _plain(value)


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


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_FLAT = c_make_encoder(None, _not_json, encode_basestring_ascii, None, ":", ",", True, False, False) \
    if c_make_encoder is not None else None
"""json's C encoder with `canonical_json`'s options, made once: `canonical_json` makes one for every call,
which is half the time of encoding a small dict. Without the check for circular references (`markers`
None): only for data that cannot hold itself, such as metrics (`_encode_flat`)."""


def _encode_flat(value: Any) -> str:
    """`canonical_json` of a metrics dict: names to numbers or null (`nas.trial_log.clean_metrics`)."""
    if _FLAT is None or type(value) is not dict:
        return canonical_json(value)
    return "".join(_FLAT(value, 0))


def encode_trial(record: dict[str, Any]) -> str:
    """The line of `trials.jsonl` (canonical JSON, no newline) of a trial record."""
    text = record.text if type(record) is TrialLine else ""
    return text or canonical_json(record)  # a line whose text was dropped once written is encoded again


_in_flight: dict[tuple[Any, ...], Arch] = {}
"""The archs in flight at the last state saved (`state_json`), by their choices. Told since, they fill the lists
of the next state (an evolution's population), which takes their cached JSON; replaced at every save, so it
holds one batch of archs."""


def state_json(saved: dict[str, Any], pending: Sequence[Arch] = ()) -> str:
    """`canonical_json(saved)`, fast: `saved["strategy"]["pending"]` is taken from the cached JSON of `pending`
    when it lists exactly those archs, and the arch dicts in the state's other lists (a population of
    `[arch, score]`) from the cached JSON of the archs in flight at the last save, each checked to equal its
    arch. A state of any other shape is encoded plainly."""
    global _in_flight
    state = saved["strategy"]
    listed = state.get("pending")
    if not pending or not isinstance(listed, list) or len(listed) != len(pending) or \
            set(saved) != {"n_recorded", "strategy"} or not all(type(key) is str for key in state) or \
            not all(_is_dict_of(data, arch) for data, arch in zip(listed, pending, strict=True)):
        return canonical_json(saved)
    told, _in_flight = _in_flight, {tuple(arch.choices.values()): arch for arch in pending}
    parts = [f"{encode_basestring_ascii(key)}:" + ("[" + ",".join(arch.to_json() for arch in pending) + "]"
                                                 if key == "pending" else _encode_archs(state[key], told))
             for key in sorted(state)]  # the order of `sort_keys`
    return f'{{"n_recorded":{canonical_json(saved["n_recorded"])},"strategy":{{{",".join(parts)}}}}}'


def _encode_archs(value: Any, told: dict[tuple[Any, ...], Arch]) -> str:
    """`canonical_json(value)`, where `value` is a list of arch dicts, or of lists that start with one, with each
    arch dict that equals an arch of `told` written as that arch's cached JSON."""
    first = value[0] if type(value) is list and value else None
    if type(first) is list and first:
        first = first[0]
    if type(first) is not dict or _find(first, told) is None:  # not such a list, or not of recent archs
        return canonical_json(value)
    return "[" + ",".join([_encode_item(item, told) for item in value]) + "]"


def _encode_item(item: Any, told: dict[tuple[Any, ...], Arch]) -> str:
    if type(item) is list:
        return "[" + ",".join([_encode_arch(x, told) if type(x) is dict else _plain(x) for x in item]) + "]"
    return _encode_arch(item, told) if type(item) is dict else canonical_json(item)


def _encode_arch(data: dict[str, Any], told: dict[tuple[Any, ...], Arch]) -> str:
    arch = _find(data, told)
    return canonical_json(data) if arch is None else arch.to_json()


def _find(data: dict[str, Any], told: dict[tuple[Any, ...], Arch]) -> Arch | None:
    """The arch of `told` whose `to_dict()` equals `data`, or None."""
    choices = data.get("choices")
    try:
        arch = told.get(tuple(choices.values())) if type(choices) is dict else None
    except TypeError:  # an unhashable choice: no arch's
        return None
    return arch if arch is not None and _is_dict_of(data, arch) else None


def _is_dict_of(data: Any, arch: Arch) -> bool:
    """Whether `data` equals `arch.to_dict()` (without building it)."""
    return type(data) is dict and len(data) == 3 and data.get("choices") == arch.choices and \
        data.get("config") == arch.config and data.get("space") == arch.space
