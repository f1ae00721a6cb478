"""Pure helpers of `benchmarks/_oneshot_ranking.py`: Kendall tau, its bootstrap interval, the arch draw and summary."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest

from nas.config import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import _oneshot_ranking as ranking  # noqa: E402


def _tau_b_by_pairs(x: list[float], y: list[float]) -> float:
    """tau-b straight from its definition: (concordant - discordant) / sqrt((n0 - ties_x) (n0 - ties_y))."""
    s = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        s += dx * dy
        tx += dx == 0
        ty += dy == 0
    n0 = len(x) * (len(x) - 1) / 2
    return s / np.sqrt((n0 - tx) * (n0 - ty))


def test_tau_is_one_for_the_same_order_and_minus_one_for_the_reverse() -> None:
    x = [0.1, 0.5, 0.3, 0.9, 0.7]
    assert ranking.kendall_tau(x, [2 * v + 1 for v in x])[0] == pytest.approx(1.0)
    assert ranking.kendall_tau(x, [-v for v in x])[0] == pytest.approx(-1.0)


def test_tau_with_ties_is_tau_b() -> None:
    rng = np.random.default_rng(1)
    x = list(rng.integers(0, 4, size=15).astype(float))  # many ties, as accuracies of a small validation split
    y = list(rng.integers(0, 3, size=15).astype(float))
    assert ranking.kendall_tau(x, y)[0] == pytest.approx(_tau_b_by_pairs(x, y))


def test_p_value_small_for_a_strong_order_and_large_for_noise() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    assert ranking.kendall_tau(x, x + 0.1 * rng.normal(size=30))[1] < 1e-6
    assert ranking.kendall_tau(x, rng.normal(size=30))[1] > 0.01


def test_constant_list_has_no_tau() -> None:
    tau, p = ranking.kendall_tau([1.0, 2.0, 3.0], [0.5, 0.5, 0.5])
    assert np.isnan(tau) and np.isnan(p)
    assert ranking.rank_figures([1.0, 2.0, 3.0], [0.5, 0.5, 0.5], 20, 0)["kendall_tau"] is None  # JSON-safe


def test_bootstrap_interval_holds_the_tau_and_narrows_with_more_archs() -> None:
    rng = np.random.default_rng(3)
    widths = []
    for n in (20, 200):
        x = rng.normal(size=n)
        y = x + rng.normal(size=n)
        tau, _ = ranking.kendall_tau(x, y)
        ci = ranking.bootstrap_tau(x, y, resamples=300, seed=0)
        assert ci["low"] < tau < ci["high"], (n, tau, ci)
        assert ci["undefined"] == 0 and ci["resamples"] == 300 and ci["confidence"] == 0.95
        widths.append(ci["high"] - ci["low"])
    assert widths[1] < widths[0] / 2, widths


def test_bootstrap_is_seeded_and_a_perfect_order_gives_a_point_interval() -> None:
    x = [0.1, 0.4, 0.2, 0.8, 0.6, 0.9]
    assert ranking.bootstrap_tau(x, x, 50, seed=5) == ranking.bootstrap_tau(x, x, 50, seed=5)
    ci = ranking.bootstrap_tau(x, x, 200, seed=5)
    assert ci["low"] == pytest.approx(1.0) and ci["high"] == pytest.approx(1.0)


def test_bootstrap_counts_resamples_without_a_tau() -> None:
    # Two archs: about half of the resamples draw one arch twice, a constant list with no tau.
    ci = ranking.bootstrap_tau([0.1, 0.2], [0.3, 0.4], resamples=400, seed=0)
    assert 100 < ci["undefined"] < 300, ci
    assert ci["low"] == ci["high"] == pytest.approx(1.0)
    none = ranking.bootstrap_tau([0.1, 0.1], [0.3, 0.4], resamples=10, seed=0)
    assert none["undefined"] == 10 and none["low"] is None and none["high"] is None


@pytest.mark.parametrize(("x", "y", "resamples", "confidence"), [
    ([0.1], [0.2], 10, 0.95), ([0.1, 0.2], [0.3], 10, 0.95), ([0.1, 0.2], [0.3, 0.4], 0, 0.95),
    ([0.1, 0.2], [0.3, 0.4], 10, 1.0),
])
def test_bootstrap_refuses_bad_input(x, y, resamples, confidence) -> None:
    with pytest.raises(ValueError):
        ranking.bootstrap_tau(x, y, resamples, seed=0, confidence=confidence)


def test_distinct_samples_are_distinct_seeded_and_bounded() -> None:
    draw = lambda rng: int(rng.integers(5))  # noqa: E731
    first = ranking.distinct_samples(draw, 5, seed=2)
    assert sorted(first) == [0, 1, 2, 3, 4] and first == ranking.distinct_samples(draw, 5, seed=2)
    with pytest.raises(RuntimeError, match="only 5 distinct samples in 100 draws"):
        ranking.distinct_samples(draw, 6, seed=2, max_draws=100)


def test_arch_summary_lists_choices_in_network_order_by_stage() -> None:
    order = ["s1.b1.op", "s1.b2.op", "s2.b1.op"]
    choices = {"s2.b1.op": "mb6_k7", "s1.b2.op": "zero", "s1.b1.op": "mb3_k3"}
    assert ranking.arch_summary(choices, order) == "s1: mb3_k3 zero | s2: mb6_k7"


def test_spread_counts_distinct_values() -> None:
    figures = ranking.spread([0.5, 0.9, 0.5, 0.7])
    assert figures == {"min": 0.5, "median": 0.6, "max": 0.9, "std": pytest.approx(0.1658, abs=1e-4),
                       "distinct": 3}


def test_twin_table_prices_each_arch_as_the_committed_table_prices_its_default_config_twin(tmp_path) -> None:
    from nas.hardware.table import LatencyTable
    from nas.space import load_space

    committed = LatencyTable.load(ranking.TABLE, load_space(ranking.SPACE))
    small = load_space(ranking.SPACE, {"width_mult": 0.5})
    path = tmp_path / "twin.yaml"
    ranking.twin_table(small, committed).save(path)
    twin = LatencyTable.load(path, small)  # bound to the small config: its keys, its config in the metadata
    assert twin.metadata.space_config == small.config.model_dump(mode="json")
    assert set(twin.entries) == set(small.all_latency_keys())
    shared = set(twin.entries) & set(committed.entries)  # units whose shapes the width leaves alone (the head)
    assert 0 < len(shared) < len(twin.entries) / 2
    assert all(twin.correction.entries[k] == committed.correction.entries[k] for k in shared)
    rng = np.random.default_rng(0)
    for _ in range(20):
        arch = small.sample(rng)
        default_twin = load_space(ranking.SPACE).make_arch(dict(arch.choices))
        assert twin.predict(arch) == pytest.approx(committed.predict(default_twin), rel=1e-12)
    assert twin.lower_bound() == pytest.approx(committed.lower_bound(), rel=1e-12)


def test_twin_keys_refuse_a_config_whose_decisions_differ() -> None:
    from nas.space import load_space

    # At width 0.35 stages 3 and 4 round to the same width, so s4.b1 gains a shortcut and a `zero` choice.
    with pytest.raises(ValueError, match="different decisions or choices"):
        ranking.twin_keys(load_space(ranking.SPACE, {"width_mult": 0.35}), load_space(ranking.SPACE))
    twins = ranking.twin_keys(load_space(ranking.SPACE, {"width_mult": 0.5}), load_space(ranking.SPACE))
    assert len(twins) == len(set(twins.values())) == len(load_space(ranking.SPACE).all_latency_keys())


def test_loss_summary_averages_the_last_steps_and_equal_spans() -> None:
    losses = [3.0] * 10 + [1.0] * 10
    figures = ranking.loss_summary(losses, window=5, parts=4)
    assert figures == {"final_loss": 1.0, "final_loss_steps": 5, "loss_curve": [3.0, 3.0, 1.0, 1.0]}
    short = ranking.loss_summary([2.0, 4.0], window=50)  # fewer steps than the window or the parts
    assert short["final_loss"] == 3.0 and short["final_loss_steps"] == 2 and short["loss_curve"] == [2.0, 4.0]
    with pytest.raises(ValueError):
        ranking.loss_summary([], window=5)


def test_latency_strata_spans_the_range_at_even_ranks() -> None:
    latencies = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0]  # ranks: 1.0 2.0 3.0 5.0 7.0 8.0 9.0
    picked = ranking.latency_strata(latencies, 4)
    assert [latencies[i] for i in picked] == [1.0, 3.0, 7.0, 9.0]
    assert ranking.latency_strata(latencies, 7) == [1, 5, 3, 0, 4, 6, 2]  # every item once, in rank order
    for bad in (1, 8):
        with pytest.raises(ValueError, match="need 2 <= n <= 7"):
            ranking.latency_strata(latencies, bad)


def test_depth_spread_sample_spans_every_depth_with_valid_archs() -> None:
    from nas.space import load_space

    space = load_space("proxylessnas", {"width_mult": 0.25})
    skippable = sum("zero" in d.choices for d in space.decisions())
    rng = np.random.default_rng(0)
    archs = [ranking.depth_spread_sample(space, rng) for _ in range(300)]
    skips = [sum(c == "zero" for c in a.choices.values()) for a in archs]
    assert min(skips) <= 1 and max(skips) >= skippable - 1  # uniform draws: 2.1 +- 1.4 of 15
    assert 0.3 * skippable < np.mean(skips) < 0.7 * skippable
    for arch in archs[:5]:
        space.check_own(arch)
    with pytest.raises(ValueError, match="no decision offers 'skip'"):
        ranking.depth_spread_sample(space, rng, skip="skip")
