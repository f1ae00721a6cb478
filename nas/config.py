"""Typed configuration: every YAML file becomes a frozen pydantic model.

`load_yaml` reads a file within fixed limits (size, nesting, aliases) and `load_json`
parses JSON within the same limits, so no input file can exhaust memory or the stack.
`parse` validates data against a model and turns a pydantic error into one `UserError`
line naming the file, the key path (and its CLI flag, where one exists), the bad value
cut short and the allowed values. `merge_run_config` builds the `RunConfig` of a search
from a YAML file and CLI flags and checks its space and evaluator configs too.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from itertools import accumulate
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nas.errors import UserError, shorten

ROOT = Path(__file__).resolve().parents[1]
SPACES_DIR = ROOT / "search_spaces"
STRATEGIES_DIR = ROOT / "strategies"
PROFILES_DIR = ROOT / "hardware_profiles"

# Limits on every YAML or JSON input. Committed latency tables are 20-30 KB and their
# nesting is 5 deep; a run's strategy state is its largest JSON.
MAX_FILE_BYTES = 4 * 2**20
MAX_DEPTH = 50
MAX_ALIASES = 100
MAX_ALIAS_GROWTH = 10_000
"""Nodes that aliases may add to a YAML document beyond the nodes written in it."""

SEED_LIMIT = 2**32
"""Seeds are 0 <= seed < 2**32: what every consumer (numpy, torch, Ray) accepts alike."""

RUN_FLAGS: Mapping[str, str] = {
    "space": "--space", "strategy": "--strategy", "evaluator": "--evaluator", "trials": "--trials",
    "seed": "--seed", "hardware": "--hardware", "archs_per_trial": "--archs-per-trial",
    "cpus_per_trial": "--cpus-per-trial", "objective.metric": "--metric", "objective.mode": "--mode",
    "objective.max_latency_ms": "--max-latency-ms", "objective.max_params": "--max-params",
    "space_config.resolution": "--resolution", "space_config.num_classes": "--classes",
    "space_config.width_mult": "--width-mult", "strategy_config.population_size": "--population-size",
    "strategy_config.sample_size": "--sample-size", "evaluator_config.data": "--data",
    "evaluator_config.data_dir": "--data-dir", "evaluator_config.epochs": "--epochs",
}
"""Run-config key path -> the `nas search` flag that sets it, for messages."""

M = TypeVar("M", bound=BaseModel)


class Frozen(BaseModel):
    """Base of every config model: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class UserConfig(Frozen):
    """Base of configs a user sets: also refuses NaN and infinity in every float field.

    Measured data (latency tables) stays on `Frozen`: a fit may legitimately record `inf`.
    """

    model_config = ConfigDict(allow_inf_nan=False)


# -- bounded reading and parsing --------------------------------------------------------------

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


# -- validation -------------------------------------------------------------------------------

def parse(model: type[M], data: Any, where: str, *, prefix: str = "",
          flags: Mapping[str, str] | None = None) -> M:
    """Validate `data` against `model`; errors name `where`, the key path, its flag and the fix.

    Args:
        model: the pydantic model.
        data: the parsed YAML or JSON (None stands for an empty mapping).
        where: the file or source, first in the message.
        prefix: key path of `data` inside a larger config (`space_config.`), for messages.
        flags: full key path -> CLI flag that sets it (`RUN_FLAGS`); a message names both.
    """
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as err:
        first = err.errors()[0]
        path = prefix + (".".join(str(p) for p in first["loc"]) or "(top level)")
        label = f"{flags[path]} ({path})" if flags and path in flags else path
        if first["type"] == "extra_forbidden":
            owner = _model_at(model, first["loc"][:-1])
            allowed = ", ".join(sorted(owner.model_fields)) if owner else "see docs"
            raise UserError(f"{where}: unknown key {shorten(label)}; allowed keys: {allowed}") from None
        bounds = _bounds(model, first["loc"])
        allowed = f" (allowed: {bounds})" if bounds else ""
        raise UserError(f"{where}: {label}: {first['msg']}{allowed}; got {shorten(first.get('input'))}") from None


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The nested model class reached by following `loc` from `model`, if any."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = field.annotation
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _bounds(model: type[BaseModel], loc: tuple) -> str:
    """The numeric interval a field at `loc` allows, e.g. `a finite number in (0, 4]`; "" if unbounded."""
    owner = _model_at(model, loc[:-1]) if len(loc) > 1 else model
    field = owner.model_fields.get(loc[-1]) if owner is not None and loc and isinstance(loc[-1], str) else None
    if field is None or field.annotation not in (int, float, int | None, float | None):
        return ""
    limits = {kind: _number(getattr(m, kind.lower())) for m in field.metadata
              if (kind := type(m).__name__) in ("Gt", "Ge", "Lt", "Le")}
    if not limits:
        return ""
    low = f"({limits['Gt']}" if "Gt" in limits else f"[{limits['Ge']}" if "Ge" in limits else "(-inf"
    high = f"{limits['Lt']})" if "Lt" in limits else f"{limits['Le']}]" if "Le" in limits else "inf)"
    kind = "an integer" if field.annotation in (int, int | None) else "a finite number"
    return f"{kind} in {low}, {high}"


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# -- config files -----------------------------------------------------------------------------

class PresetSpec(Frozen):
    """A published architecture: its source, config overrides, choices and published figures."""

    source: str
    config: dict[str, Any] = Field(default_factory=dict)
    choices: dict[str, str | int]
    published: dict[str, float] = Field(default_factory=dict)


class SpaceFile(Frozen):
    """`search_spaces/<space>.yaml`: default space config and named presets."""

    defaults: dict[str, Any] = Field(default_factory=dict)
    presets: dict[str, PresetSpec] = Field(default_factory=dict)


class Objective(UserConfig):
    """What a search optimises: one metric, a direction and optional hard bounds.

    An architecture that breaks a bound scores below every architecture that keeps
    them all (see `nas.strategies.score`). `metric` None means the evaluator's default
    (accuracy for `train`, MACs for `lut`: the largest network under the bounds).
    """

    metric: Literal["accuracy", "latency_ms", "params", "macs"] | None = None
    mode: Literal["max", "min"] = "max"
    max_latency_ms: float | None = Field(default=None, gt=0, le=1e9)
    max_params: int | None = Field(default=None, gt=0, le=10**13)


class RunConfig(UserConfig):
    """A search: what to search, how, for how long. Stored as the run dir's `config.yaml`.

    CLI flags override keys of a `--config` YAML of this shape; `*_config` dicts
    override the defaults in the space, strategy and evaluator YAML files.
    """

    space: str = "proxylessnas"
    space_config: dict[str, Any] = Field(default_factory=dict)
    strategy: str = "evolution"
    strategy_config: dict[str, Any] = Field(default_factory=dict)
    evaluator: str = "train"
    evaluator_config: dict[str, Any] = Field(default_factory=dict)
    objective: Objective = Field(default_factory=Objective)
    trials: int = Field(default=20, gt=0, le=10_000_000)
    seed: int = Field(default=0, ge=0, lt=SEED_LIMIT)
    hardware: str | None = None
    archs_per_trial: int | None = Field(default=None, gt=0, le=1_000_000)
    cpus_per_trial: float = Field(default=1.0, gt=0, le=1024)


def merge_run_config(path: Path | None, flags: dict[str, Any]) -> RunConfig:
    """A checked `RunConfig` from an optional YAML file, with flags (dotted keys, None = unset) on top.

    Beyond the run config itself, the space config is validated against its space and the
    evaluator config against its evaluator (messages name the flag, e.g. `--width-mult`), and
    the evaluator config is stored normalised: `data_dir` absolute, since Ray workers run in
    another working directory.
    """
    data = load_yaml(path) if path is not None else {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a run config must be a mapping of keys (see RunConfig), got {type(data).__name__}")
    for dotted, value in flags.items():
        if value is None:
            continue
        target = data
        *parents, leaf = dotted.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise UserError(f"{path}: {parent}: must be a mapping of keys; got {shorten(target)}")
        target[leaf] = str(value) if isinstance(value, Path) else value
    where = str(path) if path else "run config"
    run = parse(RunConfig, data, where, flags=RUN_FLAGS)
    from nas.evaluate.evaluators import normalize_evaluator_config
    from nas.space import parse_space_config

    parse_space_config(run.space, run.space_config, where, prefix="space_config.", flags=RUN_FLAGS)
    evaluator_config = normalize_evaluator_config(run.evaluator, run.evaluator_config, where,
                                                  prefix="evaluator_config.", flags=RUN_FLAGS)
    return run.model_copy(update={"evaluator_config": evaluator_config})
