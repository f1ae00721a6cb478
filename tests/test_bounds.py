"""Unbounded input: huge values are echoed short, space sizes are bounded, and the CLI says so in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nas.arch import Arch
from nas.errors import UserError, shorten
from nas.registry import SPACES
from nas.space import MAX_CLASSES, MAX_RESOLUTION, find_preset, load_space
from tests.cli_harness import assert_user_error, run_cli

pytestmark = pytest.mark.usefixtures("warm_cli", "in_tmp_dir")

HUGE = "a" * 10_485_760  # 10 MiB


def _one_line(err: pytest.ExceptionInfo, limit: int = 300) -> str:
    message = str(err.value)
    assert "\n" not in message and len(message) < limit, message[:1000]
    return message


def test_shorten() -> None:
    assert shorten("mb3_k3") == "'mb3_k3'" and shorten(3) == "3" and shorten(None) == "None"
    assert shorten(HUGE) == "'" + "a" * 80 + "…' (10485760 chars)"
    assert shorten(b"\x00" * 100, limit=4) == "b'\\x0…' (100 bytes)"
    assert shorten(list(range(1000))).endswith("… (4890 chars)")
    assert len(shorten("x" * 200, limit=10)) < 40


@pytest.fixture(scope="module")
def tiny() -> Arch:
    return find_preset("proxylessnas_tiny")


def test_huge_choice_and_decision_are_echoed_short(tiny: Arch) -> None:
    space = load_space("proxylessnas", dict(tiny.config))
    with pytest.raises(UserError, match=r"has no choice 'aaa.*…' \(10485760 chars\); allowed: ") as err:
        space.make_arch({**tiny.choices, "s1.b1.op": HUGE})
    _one_line(err)
    with pytest.raises(UserError, match="unknown decision 'aaa") as err:
        space.make_arch({**tiny.choices, HUGE: "mb3_k3"})
    _one_line(err)
    with pytest.raises(UserError, match="unknown preset") as err:
        space.preset(HUGE)
    _one_line(err)


def test_huge_names_are_echoed_short(tiny: Arch) -> None:
    with pytest.raises(UserError, match="unknown space 'aaa") as err:
        SPACES.get(HUGE)
    _one_line(err)
    with pytest.raises(UserError, match="unknown preset") as err:
        find_preset(HUGE)
    _one_line(err, limit=1000)  # it lists the 37 known presets
    with pytest.raises(UserError, match="'space' must be a space name") as err:
        Arch.from_dict({**tiny.to_dict(), "space": [HUGE]})
    _one_line(err)


@pytest.mark.parametrize("space", SPACES.names())
@pytest.mark.parametrize(("key", "value"), [
    ("resolution", MAX_RESOLUTION + 4), ("resolution", 10_000_000), ("num_classes", MAX_CLASSES + 1),
    ("num_classes", 0), ("resolution", math.nan),
])
def test_every_space_bounds_resolution_and_classes(space: str, key: str, value: float) -> None:
    with pytest.raises(UserError, match=f"{space} space config: {key}: ") as err:
        load_space(space, {key: value})
    _one_line(err)


@pytest.mark.parametrize("space", ["ofa_mbv3", "proxylessnas", "single_path"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, 0.0, 4.01])
def test_width_mult_is_finite_and_bounded(space: str, value: float) -> None:
    with pytest.raises(UserError, match=r"width_mult: .*\(allowed: a finite number in \(0, 4\]\)") as err:
        load_space(space, {"width_mult": value})
    _one_line(err)


def test_arch_asking_for_petabytes_is_refused_before_building(tiny: Arch) -> None:
    data = tiny.to_dict()
    data["config"]["resolution"] = 10_000_000
    with pytest.raises(UserError, match="resolution: .*got 10000000") as err:
        Arch.from_json(json.dumps(data))
    _one_line(err)


# -- the CLI ------------------------------------------------------------------------------------

def _arch_file(tiny: Arch, choices: dict | None = None, config: dict | None = None) -> Path:
    data = tiny.to_dict()
    data["choices"].update(choices or {})
    data["config"].update(config or {})
    path = Path("arch.json")
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(("size", "needles"), [
    (3 * 2**20, ["has no choice 'aaa", f"({3 * 2**20} chars)", "allowed: mb3_k3"]),
    (10 * 2**20, ["larger than the 4 MiB limit"]),
])
def test_export_of_a_huge_choice_is_one_short_line(tiny: Arch, size: int, needles: list[str]) -> None:
    path = _arch_file(tiny, choices={"s1.b1.op": "a" * size})
    line = assert_user_error(run_cli("export", "--arch", path, "--format", "json", "--out", "out"),
                             "arch.json", *needles)
    assert len(line) < 300, line
    assert not Path("out").exists()


@pytest.mark.parametrize(("text", "needles"), [
    ("[" * 100_000 + "]" * 100_000, ["nested deeper than 50 levels"]),
    ('{"space": "proxylessnas", "choices": {}, "config": {"resolution": 1e400}}', ["resolution", "inf"]),
])
def test_export_refuses_deep_or_infinite_arch_json(text: str, needles: list[str]) -> None:
    Path("arch.json").write_text(text)
    assert_user_error(run_cli("export", "--arch", "arch.json", "--out", "out"), "arch.json", *needles)
    assert not Path("out").exists()


def test_export_refuses_a_petabyte_arch(tiny: Arch) -> None:
    path = _arch_file(tiny, config={"resolution": 10_000_000})
    assert_user_error(run_cli("export", "--arch", path, "--out", "out", timeout=60), "resolution", "10000000", "1024")
    assert not Path("out").exists()


@pytest.mark.parametrize("best", [
    "[" * 100_000 + "]" * 100_000,
    '{"arch": 1}',
    "[1, 2]",
])
def test_export_refuses_a_damaged_best_json(best: str) -> None:
    Path("run").mkdir()
    Path("run/best.json").write_text(best)
    assert_user_error(run_cli("export", "--run-dir", "run", "--out", "out"), "best.json", "damaged",
                      "re-run the search")


@pytest.mark.parametrize(("args", "needles"), [
    (["--width-mult", "nan"], ["--width-mult (space_config.width_mult)", "finite number in (0, 4]", "nan"]),
    (["--resolution", "10000000"], ["--resolution", "1024", "10000000"]),
    (["--seed", "-1"], ["--seed", "got -1"]),
    (["--cpus-per-trial", "inf"], ["--cpus-per-trial", "finite"]),
])
def test_search_names_the_flag_of_an_out_of_bounds_value(args: list[str], needles: list[str]) -> None:
    assert_user_error(run_cli("search", "--evaluator", "lut", "--run-dir", "run", *args), *needles)
    assert not Path("run").exists()


def test_profile_refuses_nan_width_mult() -> None:
    assert_user_error(run_cli("profile", "--width-mult", "nan", "--out", "t.yaml"), "width_mult", "finite")
    assert not Path("t.yaml").exists()


def test_an_optional_table_that_is_damaged_is_refused_not_dropped(tmp_path, monkeypatch):
    """A `train` search does not need a table, but one that is found and damaged is one line, not a search
    that silently runs without `latency_ms`; a table that is merely missing is fine."""
    from nas.config import RunConfig
    from nas.errors import UserError
    from nas.hardware.store import default_device_id, table_path
    from nas.plan import plan_search
    from nas.space import load_space

    monkeypatch.setenv("NAS_PROFILES_DIR", str(tmp_path / "profiles"))
    config = RunConfig(space="proxylessnas", evaluator="train", trials=1, space_config={"resolution": 40})
    assert plan_search(config).table is None  # none found: optional
    path = table_path(default_device_id("cpu"), load_space("proxylessnas", {"resolution": 40}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("entries: [not, a, table]\n")
    with pytest.raises(UserError, match=str(path.name)):
        plan_search(config)
