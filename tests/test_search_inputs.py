"""`nas search` input checks: everything is validated before the run dir is written, an objective
the evaluator cannot measure or a bound no arch can meet is refused before Ray starts, a budget
only grows, and `--help` shows the defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_harness import assert_user_error, run_cli, snapshot
from tests.conftest import synthetic_table

pytestmark = pytest.mark.usefixtures("warm_cli", "in_tmp_dir")


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_table("proxylessnas", tmp_path_factory.mktemp("t") / "proxylessnas-r32.yaml")


def _search(table: Path, run_dir: Path, *more: str) -> list[str]:
    return ["search", "--evaluator", "lut", "--hardware", str(table), "--trials", "40", "--archs-per-trial", "20",
            "--num-cpus", "1", "--run-dir", str(run_dir), *more]


@pytest.mark.parametrize(("more", "needles"), [
    (["--space", "foo"], ["foo", "proxylessnas"]),
    (["--seed", "-1"], ["seed", "-1"]),
    (["--width-mult", "nan"], ["width", "nan"]),
    (["--metric", "accuracy"], ["--metric accuracy", "lut", "latency_ms, macs, params"]),
    (["--max-latency-ms", "0.0001"], ["--max-latency-ms 0.0001", "cheapest"]),
    (["--strategy", "evolution", "--population-size", "0"], ["population_size", "0"]),
    (["--num-cpus", "0"], ["--num-cpus", "0"]),
    (["--cpus-per-trial", "1000"], ["--cpus-per-trial 1000", "at most 1"]),
])
def test_a_typo_writes_nothing(table: Path, tmp_path: Path, more: list[str], needles: list[str]) -> None:
    run_dir = tmp_path / "run"
    assert_user_error(run_cli(*_search(table, run_dir, *more)), *needles)
    assert not run_dir.exists(), sorted(p.name for p in run_dir.rglob("*"))


@pytest.mark.parametrize(("address", "needles"), [
    ("127.0.0.1:1", ["--address 127.0.0.1:1", "cannot connect"]),
    ("garbage", ["--address 'garbage'", "host:port"]),
])
def test_an_unreachable_cluster_is_one_line_and_writes_nothing(table: Path, tmp_path: Path, address: str,
                                                               needles: list[str]) -> None:
    run_dir = tmp_path / "run"
    args = [a for a in _search(table, run_dir) if a not in ("--num-cpus", "1")]
    assert_user_error(run_cli(*args, "--address", address, timeout=60), *needles)
    assert not run_dir.exists()


@pytest.mark.slow
def test_after_a_typo_the_corrected_command_runs(table: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert_user_error(run_cli(*_search(table, run_dir, "--seed", "-1")), "seed")
    done = run_cli(*_search(table, run_dir, "--seed", "1"), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len((run_dir / "trials.jsonl").read_text().splitlines()) == 40
    before = snapshot(run_dir)
    smaller = run_cli(*[a if a != "40" else "10" for a in _search(table, run_dir, "--seed", "1")])
    assert_user_error(smaller, "--trials 10", "budget of 40", "may grow but not shrink")
    after = snapshot(run_dir)
    assert {p: b for p, b in after.items() if "tune" not in p.parts} == \
        {p: b for p, b in before.items() if "tune" not in p.parts}


def test_help_shows_the_defaults() -> None:
    proc = run_cli("search", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for needle in ("[default: proxylessnas]", "[default: evolution]", "[default: train]", "[default: 20]",
                   "[default: a private local cluster]"):
        assert needle in text, needle


# -- every flag, out of its range: one line naming it, exit 2, nothing written ------------------------

HUGE_INT = "9" * 5000  # more digits than Python parses an int from
HUGE = "x" * 130_000

_INT_LOW_HIGH = {  # flag: (a value below its range, one above)
    "--trials": ("0", "10000001"), "--seed": ("-1", "4294967296"), "--max-params": ("0", "10000000000001"),
    "--epochs": ("0", "10001"), "--resolution": ("0", "1025"), "--classes": ("0", "100001"),
    "--population-size": ("1", "10001"), "--sample-size": ("0", "10001"), "--archs-per-trial": ("0", "1000001"),
    "--num-cpus": ("0", "100000"),
}
_FLOAT_LOW_HIGH = {
    "--max-latency-ms": ("0", "1e10"), "--width-mult": ("0", "4.5"), "--cpus-per-trial": ("0.00001", "1025"),
}
_CASES = [(flag, value) for flag, (low, high) in _INT_LOW_HIGH.items() for value in (low, high, "nan", "1.5", "-")]
_CASES += [(flag, HUGE_INT) for flag in _INT_LOW_HIGH]
_CASES += [(flag, value) for flag, (low, high) in _FLOAT_LOW_HIGH.items()
           for value in (low, high, "nan", "inf", "-inf", "many", HUGE_INT)]
_CASES += [("--cpus-per-trial", "0.12345"), ("--cpus-per-trial", "-1"), ("--max-latency-ms", "-1e-300"),
           ("--trials", "-" + HUGE_INT)]


@pytest.mark.parametrize(("flag", "value"), _CASES)
def test_every_numeric_flag_refuses_out_of_range_values_up_front(flag: str, value: str) -> None:
    line = assert_user_error(run_cli("search", flag, value, "--run-dir", "run"), flag)
    if len(value) < 100 and not line.startswith("error: Invalid value"):  # typer's own: "not a valid number"
        assert f"got {value}" in line.replace("'", "") or f"got {float(value)}" in line, line
    assert len(line) < 400, line
    assert not list(Path.cwd().iterdir()), "a refused search wrote files"


@pytest.mark.parametrize(("flag", "value", "needles"), [
    ("--trials", "10000001", ["(0, 10000000]"]),
    ("--population-size", "10001", ["[2, 10000]"]),
    ("--cpus-per-trial", "0.00001", ["[0.01, 1024], a multiple of 0.0001"]),
    ("--num-cpus", "100000", ["4 x this machine's"]),
    ("--max-latency-ms", "1e10", ["(0, 1e+09]"]),
])
def test_a_refusal_names_the_allowed_range(flag: str, value: str, needles: list[str]) -> None:
    assert_user_error(run_cli("search", flag, value, "--run-dir", "run"), flag, *needles)


@pytest.mark.parametrize(("args", "needles"), [
    (["--sample-size", "51"], ["--sample-size", "at most population_size (50)", "got 51"]),
    (["--population-size", "8"], ["--sample-size", "at most population_size (8)", "got 10"]),  # the YAML's S = 10
    (["--strategy", "random", "--population-size", "8"], ["--population-size", "the random strategy takes no options"]),
    (["--strategy", "random", "--sample-size", "3"], ["--sample-size", "the random strategy takes no options"]),
    (["--evaluator", "lut", "--epochs", "3"], ["--epochs", "the lut evaluator takes no options"]),
    (["--evaluator", "lut", "--data", "cifar10"], ["--data", "the lut evaluator takes no options"]),
    (["--data-dir", "cifar"], ["--data-dir", "'digits' takes no data dir", "take one: cifar10", "'cifar'"]),
    (["--data", "digits", "--data-dir", "."], ["--data-dir", "'digits' takes no data dir"]),
])
def test_flags_that_do_not_fit_together_are_refused(args: list[str], needles: list[str]) -> None:
    Path("cifar").mkdir()
    assert_user_error(run_cli("search", *args, "--run-dir", "run"), *needles)
    assert [p.name for p in Path.cwd().iterdir()] == ["cifar"] and not any(Path("cifar").iterdir())


_PATH_FLAGS = {"--run-dir": [], "--config": [], "--hardware": ["--evaluator", "lut"],
               "--data-dir": ["--data", "cifar10"]}


@pytest.mark.parametrize(("flag", "value", "needles"), [
    (flag, value, needles) for flag in _PATH_FLAGS for value, needles in (
        ("", ["an empty path", "got ''"]),
        (HUGE, ["130,000 characters", "4,095 bytes", "(130000 chars)"]),
        ("d/" + "n" * 256, ["component of 256 bytes", "limit is 255"]),
    )
])
def test_every_path_flag_is_bounded_up_front(flag: str, value: str, needles: list[str]) -> None:
    line = assert_user_error(run_cli("search", *_PATH_FLAGS[flag], flag, value), flag, *needles)
    assert len(line) < 400, line
    assert not list(Path.cwd().iterdir()), "a refused search wrote files (runs/ or a config.yaml)"


def test_help_shows_the_strategy_defaults_and_ranges() -> None:
    proc = run_cli("search", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.replace("│", " ").split())
    for needle in ("Evolution population P; an integer in [2, 10000]. [default: 50]",
                   "at most P. [default: 10]", "a multiple of 0.0001. [default: 1.0]",
                   "Budget: distinct archs to evaluate; an integer in (0, 10000000]. [default: 20]"):
        assert needle in text, needle
    assert "strategies/evolution.yaml" not in text
