"""Typed configuration: every YAML file becomes a frozen pydantic model.

`load_yaml` reads a file with `yaml.safe_load`; `parse` validates data against a
model and turns a pydantic error into one `UserError` line naming the file, the
key path and, for an unknown key, the allowed keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nas.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SPACES_DIR = ROOT / "search_spaces"
STRATEGIES_DIR = ROOT / "strategies"
PROFILES_DIR = ROOT / "hardware_profiles"

M = TypeVar("M", bound=BaseModel)


class Frozen(BaseModel):
    """Base of every config model: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def load_yaml(path: Path) -> Any:
    """Parse a YAML file safely; a missing or malformed file is a `UserError`."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (not UTF-8); expected YAML") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else "parse error"
        raise UserError(f"{path}: malformed YAML ({first})") from None


def parse(model: type[M], data: Any, where: str) -> M:
    """Validate `data` against `model`; errors name `where`, the key path and the fix."""
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as err:
        first = err.errors()[0]
        path = ".".join(str(p) for p in first["loc"]) or "(top level)"
        if first["type"] == "extra_forbidden":
            owner = _model_at(model, first["loc"][:-1])
            allowed = ", ".join(sorted(owner.model_fields)) if owner else "see docs"
            raise UserError(f"{where}: unknown key {path!r}; allowed keys: {allowed}") from None
        value = first.get("input")
        raise UserError(f"{where}: {path}: {first['msg']} (got {value!r})") from None


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


class Objective(Frozen):
    """What a search optimises: one metric, a direction and optional hard bounds.

    An architecture that breaks a bound scores below every architecture that keeps
    them all (see `nas.strategies.score`). `metric` None means the evaluator's default
    (accuracy for `train`, MACs for `lut`: the largest network under the bounds).
    """

    metric: Literal["accuracy", "latency_ms", "params", "macs"] | None = None
    mode: Literal["max", "min"] = "max"
    max_latency_ms: float | None = Field(default=None, gt=0)
    max_params: int | None = Field(default=None, gt=0)


class RunConfig(Frozen):
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
    trials: int = Field(default=20, gt=0)
    seed: int = 0
    hardware: str | None = None
    archs_per_trial: int | None = Field(default=None, gt=0)
    cpus_per_trial: float = Field(default=1.0, gt=0)


def merge_run_config(path: Path | None, flags: dict[str, Any]) -> RunConfig:
    """A `RunConfig` from an optional YAML file, with flags (dotted keys, None = unset) on top."""
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
        target[leaf] = str(value) if isinstance(value, Path) else value
    return parse(RunConfig, data, str(path) if path else "run config")
