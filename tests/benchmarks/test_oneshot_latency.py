"""Pure helpers of the latency section of benchmarks/oneshot.py (`_oneshot_latency`; no training runs here)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from _oneshot_latency import (  # noqa: E402
    MIN_BRACKET,
    SAFEGUARD,
    STEP,
    TOLERANCE,
    best_probe,
    is_monotone,
    most_expensive,
    next_lambda,
    op_counts,
    relative_error,
    search_target,
    spread_targets,
)


def _p(weight: float, found: float) -> dict:
    return {"weight": weight, "found_ms": found}


def test_spread_targets_lie_between_the_ends() -> None:
    assert spread_targets(4.0, 12.0) == [6.0, 8.0, 10.0]
    assert spread_targets(4.0, 12.0, (0.5,)) == [8.0]


def test_relative_error_and_best_probe() -> None:
    assert relative_error(11.0, 10.0) == pytest.approx(0.1)
    assert relative_error(9.0, 10.0) == pytest.approx(0.1)
    probes = [_p(1, 12.0), _p(2, 9.5), _p(3, 10.4)]
    assert best_probe(probes, 10.0)["weight"] == 3
    assert best_probe([], 10.0) is None


def test_most_expensive_finds_the_priciest_choice_per_decision_and_interactions() -> None:
    cost = {"a": {"x": 1.0, "y": 3.0}, "b": {"x": 2.0, "y": 0.5, "z": 2.5}}
    arch, price = most_expensive({"a": ("x", "y"), "b": ("x", "y", "z")},
                                 lambda c: sum(cost[k][v] for k, v in c.items()))
    assert arch == {"a": "y", "b": "z"} and price == 5.5
    # a price that is not additive: b's best choice depends on a, found by a second sweep
    bonus = {("y", "x"): 10.0}
    arch, price = most_expensive({"b": ("x", "z"), "a": ("x", "y")},
                                 lambda c: sum(cost[k][v] for k, v in c.items()) + bonus.get((c["a"], c["b"]), 0))
    assert arch == {"a": "y", "b": "x"} and price == 15.0


def test_next_lambda_starts_at_the_guess_then_steps_out_until_bracketed() -> None:
    ce_only = _p(0.0, 14.0)
    assert next_lambda([ce_only], 8.0, 20.0) == 20.0
    assert next_lambda([ce_only, _p(20.0, 10.0)], 8.0, 20.0) == 20.0 * STEP  # too slow: more weight
    assert next_lambda([ce_only, _p(20.0, 5.0)], 8.0, 20.0) == 20.0 / STEP  # overshot: less weight
    assert next_lambda([ce_only, _p(20.0, 5.0), _p(5.0, 6.0)], 8.0, 20.0) == 5.0 / STEP


def test_next_lambda_interpolates_in_log_weight_within_the_bracket() -> None:
    probes = [_p(0.0, 14.0), _p(1.0, 12.0), _p(100.0, 4.0)]
    # 12 -> 4 over log 1 .. log 100: T 8 is half way, at 10
    assert next_lambda(probes, 8.0, 20.0) == pytest.approx(10.0)
    # near an end: kept SAFEGUARD of the (log) bracket away from it
    assert next_lambda(probes, 11.9, 20.0) == pytest.approx(math.exp(SAFEGUARD * math.log(100.0)))
    assert next_lambda(probes, 4.1, 20.0) == pytest.approx(math.exp((1 - SAFEGUARD) * math.log(100.0)))


def test_next_lambda_uses_the_inner_crossing_when_noise_breaks_the_order() -> None:
    # 4 found more than 2 did (noise): the bracket is (4, 8), the largest weight above T and the next below
    probes = [_p(1.0, 12.0), _p(2.0, 7.0), _p(4.0, 9.0), _p(8.0, 5.0)]
    lam = next_lambda(probes, 8.0, 20.0)
    assert 4.0 < lam < 8.0
    assert lam == pytest.approx(math.exp(math.log(4.0) + 0.25 * math.log(2.0)))


def test_next_lambda_gives_up_when_out_of_reach_jumping_or_inverted() -> None:
    assert next_lambda([_p(0.0, 7.0)], 8.0, 20.0) is None  # CE alone finds less than T
    narrow = [_p(10.0, 12.0), _p(10.0 * MIN_BRACKET * 0.99, 4.0)]
    assert next_lambda(narrow, 8.0, 20.0) is None
    assert next_lambda([_p(1.0, 5.0), _p(10.0, 12.0)], 8.0, 20.0) is None  # more weight found more


def test_search_target_stops_within_tolerance_and_shares_probes() -> None:
    """A fake method whose found latency falls with log lambda: the search brackets, then hits T within 10%."""
    calls: list[float] = []

    def fake(weight: float) -> dict:
        calls.append(weight)
        return _p(weight, max(4.0, 14.0 - 2.0 * math.log10(1 + weight)))

    known = [_p(0.0, 14.0)]
    best, runs, why = search_target(9.0, known, known, fake, max_runs=6, first_guess=20.0)
    assert why == "within 10%" and relative_error(best["found_ms"], 9.0) <= TOLERANCE
    assert runs == len(calls) and len(known) == 1 + runs
    # a second target on the same shared probes needs no run when one already lies within 10%
    best2, runs2, _ = search_target(best["found_ms"] * 1.05, known, known, fake, max_runs=6, first_guess=20.0)
    assert runs2 == 0 and best2 is best


def test_search_target_separate_own_list_and_run_cap() -> None:
    own: list[dict] = []
    known = [_p(0.0, 14.0)]
    best, runs, why = search_target(8.0, own, known, lambda w: _p(w, 13.0), max_runs=3, first_guess=1.0)
    assert runs == 3 and why == "3 runs" and len(own) == 3 and len(known) == 4
    assert [p["weight"] for p in own] == [1.0, 1.0 * STEP, 1.0 * STEP**2]
    assert best["found_ms"] == 13.0


def test_search_target_out_of_reach_makes_no_run() -> None:
    def never(weight: float) -> dict:
        raise AssertionError("no run expected")

    best, runs, why = search_target(9.0, [], [_p(0.0, 8.0)], never, max_runs=3, first_guess=1.0)
    assert best is None and runs == 0 and why.startswith("no bracket")


def test_is_monotone_and_op_counts() -> None:
    assert is_monotone([(3, 9.0), (1, 5.0), (2, 7.0)])
    assert not is_monotone([(1, 5.0), (2, 4.0)])
    assert is_monotone([(0, 14.0), (1, 9.0), (5, 9.0)], increasing=False)
    assert not is_monotone([(0, 14.0), (1, 9.0), (5, 9.5)], increasing=False)
    assert op_counts({"a": "k5e6", "b": "skip", "c": "k5e6"}) == {"k5e6": 2, "skip": 1}
