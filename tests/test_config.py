"""Configs: YAML and JSON read within limits, and one-line messages that name the key, its flag and the bounds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from nas.config import Objective, RunConfig, merge_run_config, parse
from nas.errors import UserError
from nas.files import MAX_DEPTH, MAX_FILE_BYTES, load_json, load_yaml, parse_yaml, read_bounded


def _one_line(err: pytest.ExceptionInfo, limit: int = 300) -> str:
    message = str(err.value)
    assert "\n" not in message and len(message) < limit, message[:1000]
    return message


# -- YAML -------------------------------------------------------------------------------------

def _laughs(levels: int, fan_out: int = 10) -> str:
    """A billion-laughs document: `fan_out ** levels` values from a few hundred bytes."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * fan_out) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan_out) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("section", ["", "space_config:\n  ", "objective:\n  "])
def test_alias_bomb_is_refused_in_any_section(section: str, tmp_path: Path) -> None:
    body = _laughs(9).replace("\n", "\n" + " " * len(section.split("\n")[-1]))
    path = tmp_path / "bomb.yaml"
    path.write_text(section + body)
    with pytest.raises(UserError, match=r"aliases expand it to 1,\d{3},\d{3},\d{3} values") as err:
        load_yaml(path)
    assert str(path) in _one_line(err)


def test_alias_count_is_limited(tmp_path: Path) -> None:
    text = "a: &a x\nb: [" + ", ".join(["*a"] * 101) + "]\n"
    with pytest.raises(UserError, match="more than 100 YAML aliases") as err:
        parse_yaml(text, "many.yaml")
    assert _one_line(err).startswith("many.yaml: ")


def test_small_aliases_and_merge_keys_still_work() -> None:
    data = parse_yaml("base: &base {width: 8, depth: 2}\nuse: {<<: *base, depth: 3}\nagain: *base\n", "ok.yaml")
    assert data == {"base": {"width": 8, "depth": 2}, "use": {"width": 8, "depth": 3},
                    "again": {"width": 8, "depth": 2}}


@pytest.mark.parametrize("text", [
    "a: " + "[" * 100_000 + "]" * 100_000,  # a RecursionError without the limit
    "a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
    "a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, MAX_DEPTH + 2)),
])
def test_deep_yaml_is_refused(text: str) -> None:
    with pytest.raises(UserError, match=f"nested deeper than {MAX_DEPTH} levels") as err:
        parse_yaml(text, "deep.yaml")
    _one_line(err)


def test_aliases_cannot_stack_depth_or_refer_to_themselves() -> None:
    deep = "[" * 30 + "x" + "]" * 30
    with pytest.raises(UserError, match="once its aliases are expanded"):
        parse_yaml(f"a: &a {deep}\nb: {deep.replace('x', '*a')}\n", "stacked.yaml")
    with pytest.raises(UserError, match="refers to itself"):
        parse_yaml("a: &a [1, *a]\n", "self.yaml")


def test_yaml_at_the_depth_limit_loads() -> None:
    depth = MAX_DEPTH - 1  # the document's top mapping is one level; scalars are none (as in JSON)
    data = parse_yaml("a: " + "[" * depth + "1" + "]" * depth, "ok.yaml")["a"]
    for _ in range(depth):
        (data,) = data
    assert data == 1
    with pytest.raises(UserError, match="deeper"):
        parse_yaml("a: " + "[" * (depth + 1) + "1" + "]" * (depth + 1), "deep.yaml")


def test_large_yaml_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as f:
        f.truncate(8 * MAX_FILE_BYTES)  # sparse: cheap to make, 32 MiB to read
    with pytest.raises(UserError, match="larger than the 4 MiB limit") as err:
        load_yaml(path)
    assert str(path) in _one_line(err)


def test_huge_integer_in_yaml_is_malformed_not_a_crash() -> None:
    with pytest.raises(UserError, match="malformed YAML") as err:
        parse_yaml("trials: " + "9" * 5000 + "\n", "int.yaml")
    _one_line(err)


def test_read_bounded(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(b"x" * 11)
    assert read_bounded(path, "f", limit=11) == "x" * 11
    with pytest.raises(UserError, match="f: larger than the 10 bytes limit"):
        read_bounded(path, "f", limit=10)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match="not UTF-8"):
        read_bounded(path, "f")
    with pytest.raises(FileNotFoundError):
        read_bounded(tmp_path / "absent", "absent")


# -- JSON -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"a":' * 60 + "1" + "}" * 60])
def test_deep_json_is_refused_before_parsing(text: str) -> None:
    with pytest.raises(UserError, match=f"trials.jsonl line 3: JSON nested deeper than {MAX_DEPTH} levels") as err:
        load_json(text, "trials.jsonl line 3")
    _one_line(err)


def test_json_brackets_inside_strings_do_not_count() -> None:
    text = '{"a": ["' + "[{" * 500 + '\\"]", "\\\\"], "b": {"c": [1, 2]}}'
    assert load_json(text, "s")["b"] == {"c": [1, 2]}
    data = load_json("[" * MAX_DEPTH + "]" * MAX_DEPTH, "edge")  # exactly at the limit
    for _ in range(MAX_DEPTH - 1):
        (data,) = data
    assert data == []


@pytest.mark.parametrize(("text", "needle"), [
    ("x" * (MAX_FILE_BYTES + 1), "larger than the 4 MiB limit for JSON"),
    ('{"a": ', "is not valid JSON (Expecting value"),
    ("9" * 5000, "is not valid JSON"),
    (b"\xff[]", "not UTF-8"),
])
def test_bad_json_is_one_line(text: str | bytes, needle: str) -> None:
    with pytest.raises(UserError, match=needle.replace("(", r"\(")) as err:
        load_json(text, "best.json")
    assert _one_line(err).startswith("best.json")


def test_json_limits_are_parameters() -> None:
    assert load_json(b'{"a": [1]}', "x") == {"a": [1]}
    with pytest.raises(UserError, match="deeper than 1 levels"):
        load_json('{"a": [1]}', "x", max_depth=1)
    with pytest.raises(UserError, match="limit"):
        load_json('{"a": [1]}', "x", max_bytes=5)


# -- run config: bounds and flag names ----------------------------------------------------------

@pytest.mark.parametrize(("flags", "needles"), [
    ({"space_config.width_mult": math.nan},
     ["--width-mult (space_config.width_mult)", "finite number in (0, 4]", "got nan"]),
    ({"space_config.width_mult": math.inf}, ["--width-mult", "got inf"]),
    ({"space_config.width_mult": 0.0}, ["--width-mult", "(0, 4]", "got 0.0"]),
    ({"space_config.resolution": 10_000_000}, ["--resolution (space_config.resolution)", "[32, 1024]", "10000000"]),
    ({"space_config.resolution": 16}, ["--resolution", "[32, 1024]", "got 16"]),
    ({"space_config.num_classes": 10**9}, ["--classes (space_config.num_classes)", "100000"]),
    ({"seed": -1}, ["--seed (seed)", "[0, 4294967296)", "got -1"]),
    ({"seed": 2**32}, ["--seed", "got 4294967296"]),
    ({"trials": 10**8}, ["--trials (trials)", "10000000"]),
    ({"cpus_per_trial": math.nan}, ["--cpus-per-trial", "finite"]),
    ({"objective.max_latency_ms": math.inf}, ["--max-latency-ms (objective.max_latency_ms)", "finite"]),
    ({"evaluator_config.epochs": 0}, ["--epochs (evaluator_config.epochs)", "(0, 10000]"]),
    ({"evaluator_config.lr": math.nan}, ["evaluator_config.lr", "finite"]),
    # Ray counts CPUs in steps of 0.0001: a finer share is refused, not rounded to nothing
    ({"cpus_per_trial": 0.00001}, ["--cpus-per-trial (cpus_per_trial)", "[0.01, 1024], a multiple of 0.0001",
                                   "got 1e-05"]),
    ({"cpus_per_trial": 0.12345}, ["--cpus-per-trial", "multiple of 0.0001", "got 0.12345"]),
    ({"cpus_per_trial": 0.009}, ["--cpus-per-trial", "greater than or equal to 0.01"]),
    ({"cpus_per_trial": 1025.0}, ["--cpus-per-trial", "less than or equal to 1024"]),
    ({"strategy_config.population_size": 10_001}, ["--population-size (strategy_config.population_size)",
                                                   "[2, 10000]", "got 10001"]),
    ({"strategy_config.population_size": 1}, ["--population-size", "[2, 10000]", "got 1"]),
    ({"strategy_config.sample_size": 0}, ["--sample-size (strategy_config.sample_size)", "[1, 10000]", "got 0"]),
    ({"strategy_config.sample_size": 51}, ["--sample-size", "at most population_size (50)", "got 51"]),
    ({"strategy_config.population_size": 8, "strategy_config.sample_size": 9}, ["--sample-size",
                                                                                "population_size (8)", "got 9"]),
    ({"strategy_config.population_size": "many"}, ["--population-size", "integer", "'many'"]),
    ({"strategy_config.tournament": 3}, ["unknown key 'strategy_config.tournament'",
                                         "allowed keys: population_size, sample_size"]),
    ({"strategy": "random", "strategy_config.population_size": 8},
     ["unknown key '--population-size (strategy_config.population_size)'", "the random strategy takes no options"]),
    ({"evaluator": "lut", "evaluator_config.epochs": 3},
     ["unknown key '--epochs (evaluator_config.epochs)'", "the lut evaluator takes no options"]),
    ({"evaluator_config.data": "imagenet"}, ["--data (evaluator_config.data)", "allowed: cifar10, digits",
                                            "got 'imagenet'"]),
    ({"evaluator_config.data_dir": "/data/cifar"},
     ["--data-dir (evaluator_config.data_dir)", "'digits' takes no data dir", "take one: cifar10", "'/data/cifar'"]),
    ({"evaluator_config.data": "digits", "evaluator_config.data_dir": "x"}, ["--data-dir", "'digits'"]),
    ({"hardware": ""}, ["--hardware (hardware)", "an empty path", "device id or a latency table file"]),
    ({"hardware": "t" * 130_000}, ["--hardware", "130,000 characters", "4,095 bytes", "(130000 chars)"]),
    ({"hardware": "d/" + "t" * 256}, ["--hardware", "component of 256 bytes", "limit is 255"]),
    ({"evaluator_config.data": "cifar10", "evaluator_config.data_dir": ""}, ["--data-dir", "an empty path"]),
    ({"evaluator_config.data": "cifar10", "evaluator_config.data_dir": "c" * 5000}, ["--data-dir", "5,000"]),
])
def test_run_config_bounds_name_the_flag(flags: dict, needles: list[str]) -> None:
    with pytest.raises(UserError) as err:
        merge_run_config(None, flags)
    message = _one_line(err)
    assert message.startswith("run config: ")
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize(("space", "key", "value"), [
    ("eeea", "layers", 1000), ("eeea", "init_channels", 10_000), ("nasnet", "num_filters", 10_000),
    ("nasnet", "cells_per_stack", 100), ("nasnet", "stem_multiplier", math.nan),
    ("proxylessnas", "feature_mix_width", 10**6), ("proxylessnas", "stage_widths", [8, 8, 8, 8, 8, 10**6]),
    ("single_path", "head_width", 10**6), ("ofa_mbv3", "width_mult", 4.5), ("ofa_mbv3", "dropout", math.nan),
])
def test_space_sizes_are_bounded(space: str, key: str, value: object) -> None:
    with pytest.raises(UserError, match=f"space_config.{key}") as err:
        merge_run_config(None, {"space": space, f"space_config.{key}": value})
    _one_line(err)


def test_bounds_in_a_config_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("space_config:\n  width_mult: .nan\n")
    with pytest.raises(UserError, match=f"^{path}: --width-mult"):
        merge_run_config(path, {})


def test_relative_data_dir_is_stored_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = merge_run_config(None, {"evaluator_config.data": "cifar10", "evaluator_config.data_dir": Path("data/cifar"),
                                  "evaluator_config.epochs": 3})
    assert run.evaluator_config == {"data": "cifar10", "data_dir": str(tmp_path.resolve() / "data" / "cifar"),
                                    "epochs": 3}
    assert run.model_dump(mode="json")["evaluator_config"]["data_dir"] == str(tmp_path.resolve() / "data/cifar")


def test_good_run_config_passes() -> None:
    run = merge_run_config(None, {"seed": 2**32 - 1, "space_config.width_mult": 0.5, "trials": 10_000_000})
    assert (run.seed, run.space_config, run.trials) == (2**32 - 1, {"width_mult": 0.5}, 10_000_000)


@pytest.mark.parametrize("cpus", [0.01, 0.3, 0.1234, 1.0, 2.5, 1023.9999, 1024.0])
def test_cpus_per_trial_that_ray_can_reserve_pass(cpus: float) -> None:
    assert merge_run_config(None, {"cpus_per_trial": cpus}).cpus_per_trial == cpus


@pytest.mark.parametrize(("flags", "stored"), [
    ({"strategy_config.population_size": 10_000, "strategy_config.sample_size": 10_000},
     {"population_size": 10_000, "sample_size": 10_000}),
    ({"strategy_config.population_size": 2, "strategy_config.sample_size": 1},
     {"population_size": 2, "sample_size": 1}),
    ({"strategy": "random"}, {}),
])
def test_strategy_configs_at_their_bounds_pass(flags: dict, stored: dict) -> None:
    assert merge_run_config(None, flags).strategy_config == stored  # the overrides only: defaults stay in the YAML


def test_a_strategy_key_in_a_config_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("strategy: random\nstrategy_config:\n  sample_size: 3\n")
    with pytest.raises(UserError, match=f"^{path}: unknown key '--sample-size .*the random strategy takes no options$"):
        merge_run_config(path, {})
    path.write_text("strategy_config: [1, 2]\n")
    with pytest.raises(UserError, match="strategy_config: Input should be a valid dictionary"):
        merge_run_config(path, {})


def test_every_numeric_run_config_key_has_an_upper_bound() -> None:
    """The class behind the bounds above: a new number without a range fails here."""
    from nas.config import describe_bounds
    from nas.evaluate.evaluators import TrainConfig
    from nas.strategies.evolution import EvolutionConfig

    for model in (RunConfig, Objective, TrainConfig, EvolutionConfig):
        for name, field in model.model_fields.items():
            if field.annotation in (int, float, int | None, float | None):
                bounds = describe_bounds(model, name)
                assert bounds and not bounds.split(",")[1].strip().startswith("inf"), (model.__name__, name, bounds)


def test_flag_into_a_non_mapping_section(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("objective: fast\n")
    with pytest.raises(UserError, match="objective: must be a mapping"):
        merge_run_config(path, {"objective.metric": "macs"})


def test_huge_value_is_echoed_short() -> None:
    with pytest.raises(UserError) as err:
        parse(RunConfig, {"trials": "9" * 10_000_000}, "run.yaml")
    assert "(10000000 chars)" in _one_line(err)
    with pytest.raises(UserError) as err:
        parse(Objective, {"mode": "m" * 10_000_000}, "run.yaml")
    assert "(10000000 chars)" in _one_line(err)


# -- paths --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "needle"), [
    ("", "an empty path"),
    ("a\0b", "NUL byte"),
    ("p" * 4096, "4,096 characters"),
    ("p" * 4095, "once absolute"),  # short enough alone, too long once the working directory is prefixed
    ("dir/" + "n" * 256 + "/f", "component of 256 bytes"),
    ("é" * 128, "component of 256 bytes"),  # bytes, not characters, count: é is two in UTF-8
    ("\ud800", "not valid text"),
])
def test_path_problem(text: str, needle: str) -> None:
    from nas.limits import path_problem

    problem = path_problem(text)
    assert problem is not None and needle in problem and len(problem) < 200, problem


def test_paths_within_the_limits_pass(tmp_path: Path) -> None:
    from nas.limits import check_path, path_problem

    assert path_problem("n" * 255) is None and path_problem("runs/demo") is None and path_problem("/") is None
    assert check_path(None, "--out") is None and check_path("a/b", "--out") == Path("a/b")
    with pytest.raises(UserError, match=r"^--run-dir: a path of 10,000 characters .*got 'xxx.*…' \(10000 chars\)$"):
        check_path("x" * 10_000, "--run-dir")


@pytest.mark.parametrize(("value", "low", "high", "needle"), [
    (0, 1, 8, "got 0"), (9, 1, 8, "got 9"), (True, 1, 8, "got True"), (1.5, 1, 8, "an integer"),
    (math.nan, 0.5, 2.0, "got nan"), (math.inf, 0.5, 2.0, "got inf"), ("3", 1, 8, "got '3'"),
])
def test_check_range(value: object, low: float, high: float, needle: str) -> None:
    from nas.limits import check_range

    with pytest.raises(UserError, match=rf"^--flag: must be an? .* in \[{low}, {high}\]") as err:
        check_range("--flag", value, low, high)
    assert needle in _one_line(err)
    check_range("--flag", high, low, high)
