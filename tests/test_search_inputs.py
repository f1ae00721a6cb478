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
