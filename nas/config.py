"""Typed configuration: every YAML file becomes a frozen pydantic model.

Files are read within fixed limits by `nas.files`. `parse` validates data against a model
and turns a pydantic error into one `UserError` line naming the file, the key path (and its
CLI flag, where one exists), the bad value cut short and the allowed values.
`merge_run_config` builds the `RunConfig` of a search from a YAML file and CLI flags and
checks its space and evaluator configs too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from nas.errors import UserError, shorten
from nas.files import load_yaml
from nas.limits import SEED_LIMIT, path_problem

ROOT = Path(__file__).resolve().parents[1]
SPACES_DIR = ROOT / "search_spaces"
STRATEGIES_DIR = ROOT / "strategies"
METHODS_DIR = ROOT / "methods"
"""`methods/<name>.yaml`: each one-shot method's defaults; the files are also the list of methods."""
PROFILES_DIR = ROOT / "hardware_profiles"


RUN_FLAGS: Mapping[str, str] = {
    "space": "--space", "strategy": "--strategy", "evaluator": "--evaluator", "trials": "--trials",
    "seed": "--seed", "hardware": "--hardware", "archs_per_trial": "--archs-per-trial",
    "cpus_per_trial": "--cpus-per-trial", "objective.metric": "--metric", "objective.mode": "--mode",
    "objective.max_latency_ms": "--max-latency-ms", "objective.max_params": "--max-params",
    "objective.kind": "--objective", "objective.metrics": "--metrics", "objective.target_ms": "--target-ms",
    "objective.alpha": "--alpha", "objective.beta": "--beta",
    "space_config.resolution": "--resolution", "space_config.num_classes": "--classes",
    "space_config.width_mult": "--width-mult", "strategy_config.population_size": "--population-size",
    "strategy_config.sample_size": "--sample-size", "evaluator_config.data": "--data",
    "evaluator_config.data_dir": "--data-dir", "evaluator_config.epochs": "--epochs",
    "evaluator_config.checkpoint": "--checkpoint",
    "scheduler.kind": "--scheduler", "scheduler.grace_period": "--asha-grace-period",
    "scheduler.reduction_factor": "--asha-reduction-factor",
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


# -- validation -------------------------------------------------------------------------------

def parse(model: type[M], data: Any, where: str, *, prefix: str = "",
          flags: Mapping[str, str] | None = None, owner: str | None = None) -> M:
    """Validate `data` against `model`; errors name `where`, the key path, its flag and the fix.

    Args:
        model: the pydantic model.
        data: the parsed YAML or JSON (None stands for an empty mapping).
        where: the file or source, first in the message.
        prefix: key path of `data` inside a larger config (`space_config.`), for messages.
        flags: full key path -> CLI flag that sets it (`RUN_FLAGS`); a message names both.
        owner: what `model` configures (`the random strategy`), for a model that takes no keys.
    """
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as err:
        first = err.errors()[0]
        path = prefix + (".".join(str(p) for p in first["loc"]) or "(top level)")
        label = f"{flags[path]} ({path})" if flags and path in flags else path
        if first["type"] == "extra_forbidden":
            raise UserError(f"{where}: unknown key {shorten(label)}; "
                            f"{_allowed_keys(model, first['loc'][:-1], owner)}") from None
        bounds = _bounds(model, first["loc"])
        allowed = f" (allowed: {bounds})" if bounds else ""
        # A validator's own message reads as it was written, without pydantic's "Value error, ".
        message = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
        raise UserError(f"{where}: {label}: {message}{allowed}; got {shorten(first.get('input'))}") from None


def _allowed_keys(model: type[BaseModel], loc: tuple, owner: str | None) -> str:
    """`allowed keys: a, b` for the model at `loc`, or that it takes none."""
    found = _model_at(model, loc)
    if found is None:
        return "allowed keys: see the docs"
    if not found.model_fields:
        return f"{owner or 'this section'} takes no options"
    return f"allowed keys: {', '.join(sorted(found.model_fields))}"


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
    steps = [_number(m.multiple_of) for m in field.metadata if type(m).__name__ == "MultipleOf"]
    return f"{kind} in {low}, {high}" + (f", a multiple of {steps[0]}" if steps else "")


def describe_bounds(model: type[BaseModel], field: str) -> str:
    """The range a numeric field of `model` allows, as messages show it (`an integer in (0, 100]`), for help texts."""
    return _bounds(model, (field,))


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


MetricName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
"""A metric an evaluator measures (`accuracy`, `latency_ms`, ...); checked against the evaluator by `nas.plan`."""


class Objective(UserConfig):
    """What a search optimises (the three kinds are explained in `nas.objective`).

    `constrained` (the default): one `metric` with a `mode`; `weighted`: the reward
    `metric * (latency_ms / target_ms) ** w`, w = `alpha` within the target and `beta` past it;
    `pareto`: `metrics`, two or more, each `max` or `min`. Every kind takes the hard bounds
    `max_latency_ms` and `max_params`: an arch that breaks one ranks below every arch that keeps
    them all. `metric` None means the evaluator's default (accuracy for `train`, MACs for `lut`).
    """

    kind: Literal["constrained", "weighted", "pareto"] = "constrained"
    metric: MetricName | None = None
    mode: Literal["max", "min"] = "max"
    metrics: dict[MetricName, Literal["max", "min"]] | None = Field(default=None, max_length=8)
    target_ms: float | None = Field(default=None, gt=0, le=1e9)
    alpha: float = Field(default=-0.07, ge=-10, le=10)
    beta: float = Field(default=-0.07, ge=-10, le=10)
    max_latency_ms: float | None = Field(default=None, gt=0, le=1e9)
    max_params: int | None = Field(default=None, gt=0, le=10**13)

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Objective:
        if self.kind == "pareto":
            if len(self.metrics or {}) < 2:
                raise ValueError("a pareto objective needs two or more --metrics, each max or min (e.g. "
                                 "accuracy:max,latency_ms:min)")
            if self.metric is not None or self.target_ms is not None:
                raise ValueError("a pareto objective takes metrics, not metric or target_ms")
        elif self.metrics is not None:
            raise ValueError(f"metrics (several) need kind pareto; a {self.kind} objective takes one metric")
        if self.kind == "weighted" and self.target_ms is None:
            raise ValueError("a weighted objective needs --target-ms, the latency target T of its reward")
        if self.kind != "weighted" and self.target_ms is not None:
            raise ValueError(f"target_ms needs kind weighted; this objective is {self.kind}")
        return self


class Scheduler(UserConfig):
    """How a search schedules its trials: `fifo` trains every arch for all its epochs; `asha` is Ray Tune's
    ASHA scheduler (Li et al., "A System for Massively Parallel Hyperparameter Tuning", MLSys 2020), which
    stops an arch whose score after an epoch ranks low among the archs that reached that epoch (a rung).
    Rungs lie at `grace_period` x `reduction_factor`^k epochs; at each, an arch goes on only if its score is
    in the top 1/`reduction_factor` of those recorded there so far. Only the `train` evaluator reports epochs.
    """

    kind: Literal["fifo", "asha"] = "fifo"
    grace_period: int = Field(default=1, ge=1, le=10_000)
    reduction_factor: float = Field(default=4.0, gt=1, le=100)


class RunConfig(UserConfig):
    """A search: what to search, how, for how long. Stored as the run dir's `config.yaml`.

    CLI flags override keys of a `--config` YAML of this shape; `*_config` dicts
    override the defaults in the space, strategy and evaluator YAML files. Every number has a
    range (`nas search --help` shows it). `cpus_per_trial` is what Ray can reserve: Ray counts
    CPUs in steps of 0.0001 (a finer value is refused or silently rounded down), and below 0.01 a
    trial would share one CPU with a hundred others. `hardware` is a device id or a table file,
    bounded like every path. `scheduler` of kind `asha` stops archs early (`Scheduler`).
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
    cpus_per_trial: float = Field(default=1.0, ge=0.01, le=1024, multiple_of=0.0001)
    scheduler: Scheduler = Field(default_factory=Scheduler)

    @field_validator("hardware")
    @classmethod
    def _bounded_path(cls, hardware: str | None) -> str | None:
        problem = None if hardware is None else path_problem(hardware)
        if problem is not None:
            raise ValueError(f"{problem}; give a device id or a latency table file")
        return hardware

    @model_serializer(mode="wrap")
    def _without_fifo(self, dump: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A `fifo` search stores no `scheduler` (`nas.plan` refuses ASHA options without ASHA): its
        `config.yaml` reads as one written before schedulers existed, so such a run dir still resumes."""
        data = dump(self)
        if self.scheduler.kind == "fifo":
            data.pop("scheduler", None)
        return data


def merge_run_config(path: Path | None, flags: dict[str, Any],
                     flag_names: Mapping[str, str] | None = None) -> RunConfig:
    """A checked `RunConfig` from an optional YAML file, with flags (dotted keys, None = unset) on top.

    `flag_names` names the flag of keys beyond `RUN_FLAGS` (`strategy_config.x` -> `--set x`), for messages.

    Beyond the run config itself, the space config is validated against its space, the strategy
    config against its strategy and the evaluator config against its evaluator (messages name
    the flag, e.g. `--width-mult`), and
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
    from nas.strategies.base import check_objective_kind, parse_strategy_config

    parse_space_config(run.space, run.space_config, where, prefix="space_config.", flags=RUN_FLAGS)
    parse_strategy_config(run.strategy, run.strategy_config, where, prefix="strategy_config.",
                          flags={**RUN_FLAGS, **(flag_names or {})})
    check_objective_kind(run.strategy, run.objective)
    evaluator_config = normalize_evaluator_config(run.evaluator, run.evaluator_config, where,
                                                  prefix="evaluator_config.", flags=RUN_FLAGS)
    return run.model_copy(update={"evaluator_config": evaluator_config})


_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_SET_OPTIONS = 64


def parse_set_options(items: list[str], flag: str) -> dict[str, Any]:
    """`KEY=VALUE` strings (a strategy's options, `--set`) as a dict; each VALUE is read as a YAML
    scalar or flat list (`64`, `0.5`, `true`, `[a, b]`), within the bounded YAML loader's limits."""
    from nas.files import parse_yaml

    if len(items) > MAX_SET_OPTIONS:
        raise UserError(f"{flag}: {len(items)} options; allowed: at most {MAX_SET_OPTIONS}")
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not _KEY.match(key):
            raise UserError(f"{flag} {shorten(item)}: allowed: KEY=VALUE with KEY in snake_case (e.g. "
                            f"{flag} population_size=64; `nas strategies NAME` lists the keys)")
        if key in options:
            raise UserError(f"{flag} {key}: given twice; allowed: each key once")
        value = parse_yaml(text, f"{flag} {key}") if text.strip() else None
        flat = isinstance(value, list) and all(not isinstance(v, list | dict) for v in value)
        if isinstance(value, dict) or (isinstance(value, list) and not flat) or value is None:
            raise UserError(f"{flag} {key}={shorten(text)}: allowed: a number, a word, true/false or a flat "
                            "list like [a, b]")
        options[key] = value
    return options


def parse_metric_directions(text: str | None, flag: str) -> dict[str, str] | None:
    """`accuracy:max,latency_ms:min` as {metric: direction}, in the order given (None stays None)."""
    if text is None:
        return None
    directions: dict[str, str] = {}
    for part in text.split(","):
        metric, sep, direction = part.strip().partition(":")
        if not sep or not _KEY.match(metric) or direction not in ("max", "min") or metric in directions:
            raise UserError(f"{flag} {shorten(text)}: allowed: distinct METRIC:max or METRIC:min pairs joined "
                            "by commas, e.g. accuracy:max,latency_ms:min")
        directions[metric] = direction
    return directions

