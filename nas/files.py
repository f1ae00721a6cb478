"""Reading input files within fixed limits, so no file can exhaust memory, the stack or the wait.

`check_regular` refuses what is not a regular file (a FIFO would block), `read_bounded`
reads at most a size, `load_yaml`/`parse_yaml` parse YAML with bounded size, nesting and
alias expansion, and `load_json` parses JSON within the same limits. Each failure is one
`UserError` line naming the file.
"""

from __future__ import annotations

import json
import os
import re
import stat
from itertools import accumulate
from pathlib import Path
from typing import Any

import yaml

from nas.errors import UserError

# Limits on every YAML or JSON input. Committed latency tables are 20-30 KB and their
# nesting is 5 deep; a run's strategy state is its largest JSON.
MAX_FILE_BYTES = 4 * 2**20
MAX_DEPTH = 50
MAX_ALIASES = 100
MAX_ALIAS_GROWTH = 10_000
"""Nodes that aliases may add to a YAML document beyond the nodes written in it."""


def check_regular(path: Path, where: str) -> None:
    """Refuse anything but a regular file (or a link to one) before it is opened: opening a FIFO
    blocks until a writer comes, and a device or a directory is no input file. `OSError` (a missing
    file) passes through."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = ("directory" if stat.S_ISDIR(mode) else "named pipe" if stat.S_ISFIFO(mode)
                else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "socket" if stat.S_ISSOCK(mode)
                else "special file")
        raise UserError(f"{where}: {path} is a {kind}, not a regular file; give a file")


def read_bounded(path: Path, where: str, limit: int = MAX_FILE_BYTES) -> str:
    """The text of `path`, refusing a file over `limit` bytes, not UTF-8 or not a regular file;
    `OSError` passes through.

    Reads at most `limit + 1` bytes, so a huge file costs nothing.
    """
    check_regular(path, where)
    with Path(path).open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise UserError(f"{where}: larger than the {_size(limit)} limit for input files; give a smaller file")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise UserError(f"{where}: not a text file (not UTF-8)") from None


def load_yaml(path: Path) -> Any:
    """Parse a YAML file safely and within limits; a missing, malformed or oversized file is a `UserError`."""
    try:
        text = read_bounded(path, str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, where: str) -> Any:
    """`yaml.safe_load` of `text` within the limits: size, nesting depth, alias count and alias growth."""
    if len(text) > MAX_FILE_BYTES:
        raise UserError(f"{where}: larger than the {_size(MAX_FILE_BYTES)} limit for YAML; give a smaller file")
    try:
        loader = _BoundedLoader(text, where)  # its reader refuses NUL and other control characters
    except yaml.YAMLError as err:
        raise UserError(f"{where}: malformed YAML ({_cut(str(err))})") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, where)
        return loader.construct_document(node)
    except (yaml.YAMLError, ValueError) as err:  # ValueError: e.g. an integer of over 4300 digits
        raise UserError(f"{where}: malformed YAML ({_cut(str(err))})") from None
    finally:
        loader.dispose()


class _BoundedLoader(yaml.SafeLoader):
    """A `SafeLoader` that counts aliases and nesting while it composes, before anything is built."""

    def __init__(self, stream: str, where: str) -> None:
        super().__init__(stream)
        self._where = where
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise UserError(f"{self._where}: more than {MAX_ALIASES} YAML aliases (*name); "
                                "write the values out instead")
        nests = self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent)  # levels count as in JSON
        self._depth += nests
        try:
            if self._depth > MAX_DEPTH:
                raise UserError(f"{self._where}: nested deeper than {MAX_DEPTH} levels; flatten it")
            return super().compose_node(parent, index)
        finally:
            self._depth -= nests


def _check_expansion(root: yaml.Node, where: str) -> None:
    """Refuse a document whose aliases expand it by over `MAX_ALIAS_GROWTH` nodes or past `MAX_DEPTH`.

    Aliases share nodes, so a few of them can stand for billions of values once the data is
    copied (validated, serialised); each distinct node's expanded size is counted once here.
    An alias to its own ancestor is infinitely deep, and refused as such.
    """
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, levels of collections)

    def walk(node: yaml.Node, depth: int) -> tuple[int, int]:
        if depth > MAX_DEPTH + 1:  # only a cycle gets here: deeper documents were refused while composing
            raise UserError(f"{where}: nested deeper than {MAX_DEPTH} levels once its aliases are expanded "
                            "(or an alias refers to itself); write the values out")
        known = sizes.get(id(node))
        if known is not None:
            return known
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        size, below = 1, 0
        for child in children:
            child_size, child_depth = walk(child, depth + 1)
            size, below = size + child_size, max(below, child_depth)
        sizes[id(node)] = (size, below + isinstance(node, yaml.CollectionNode))
        return sizes[id(node)]

    expanded, height = walk(root, 1)
    if height > MAX_DEPTH:
        raise UserError(f"{where}: nested deeper than {MAX_DEPTH} levels once its aliases are expanded; "
                        "write the values out")
    if expanded - len(sizes) > MAX_ALIAS_GROWTH:
        raise UserError(f"{where}: YAML aliases expand it to {expanded:,} values from {len(sizes):,} written "
                        f"(limit: {MAX_ALIAS_GROWTH:,} more); write the values out")


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET_STEPS = {"[": 1, "{": 1, "]": -1, "}": -1}


def load_json(text: str | bytes, where: str, *, max_bytes: int = MAX_FILE_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON `text` within limits; too large, too deep or malformed input is one `UserError` line.

    Size and nesting depth are checked before `json.loads` (which would recurse once per
    level): the depth by counting brackets outside strings.

    Args:
        text: the JSON document (bytes are decoded as UTF-8).
        where: what the text is, for messages (a file name, "arch", "line 3 of trials.jsonl").
        max_bytes: largest accepted length of `text`.
        max_depth: deepest accepted nesting of arrays and objects.
    """
    if len(text) > max_bytes:
        raise UserError(f"{where}: larger than the {_size(max_bytes)} limit for JSON")
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError:
            raise UserError(f"{where}: not a text file (not UTF-8); expected JSON") from None
    if text.count("[") + text.count("{") > max_depth and _json_depth(text) > max_depth:
        raise UserError(f"{where}: JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError, as is a 5000-digit int
        raise UserError(f"{where} is not valid JSON ({_cut(str(err))})") from None


def _json_depth(text: str) -> int:
    """Deepest nesting of brackets outside JSON strings (of well-formed JSON; an estimate otherwise)."""
    brackets = re.findall(r"[\[\]{}]", _JSON_STRING.sub("", text))
    return max(accumulate(map(_BRACKET_STEPS.__getitem__, brackets)), default=0)


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 and n % 2**20 == 0 else f"{n:,} bytes"


def _cut(message: str, limit: int = 200) -> str:
    """The first line of a library's message, at most `limit` characters."""
    first = message.splitlines()[0] if message else "no detail"
    return first if len(first) <= limit else f"{first[:limit]}…"


__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "check_regular", "load_json", "load_yaml", "parse_yaml", "read_bounded"]
