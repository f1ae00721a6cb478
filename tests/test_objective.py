"""The three objective kinds: scores, bounds, Pareto ranks and hypervolume, and their bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nas import objective as obj
from nas.config import Objective, parse
from nas.errors import UserError


def test_constrained_scores_the_signed_metric_and_ranks_infeasible_below_everything():
    o = Objective(metric="latency_ms", mode="min", max_params=1000)
    assert obj.score(o, {"latency_ms": 3.0, "params": 10}) == -3.0
    near, far = obj.score(o, {"latency_ms": 1.0, "params": 1100}), obj.score(o, {"latency_ms": 1.0, "params": 3000})
    assert far < near < obj.score(o, {"latency_ms": 1e6, "params": 10})
    assert obj.violations(o, {"latency_ms": 1.0, "params": 1100}) == {"params": [1100.0, 1000.0]}


@pytest.mark.parametrize(("alpha", "beta"), [(-0.07, -0.07), (0.0, -1.0)])
def test_weighted_reward_is_the_mnasnet_formula(alpha, beta):
    o = Objective(kind="weighted", metric="accuracy", target_ms=10.0, alpha=alpha, beta=beta)
    for acc, lat in itertools.product([0.5, 0.9], [5.0, 10.0, 20.0]):
        w = alpha if lat <= 10.0 else beta
        assert obj.score(o, {"accuracy": acc, "latency_ms": lat}) == pytest.approx(acc * (lat / 10.0) ** w)
    # hard (0, -1): the reward is the accuracy itself within the target, and falls off past it
    if alpha == 0.0:
        assert obj.score(o, {"accuracy": 0.8, "latency_ms": 3.0}) == pytest.approx(0.8)
        assert obj.score(o, {"accuracy": 0.8, "latency_ms": 20.0}) == pytest.approx(0.4)


def test_pareto_values_directions_and_front():
    o = Objective(kind="pareto", metrics={"accuracy": "max", "latency_ms": "min"})
    assert obj.directions(o) == ("max", "min")
    assert obj.values(o, {"accuracy": 0.9, "latency_ms": 3.0, "params": 5}) == (0.9, 3.0)
    points = np.array([[0.9, 5.0], [0.8, 3.0], [0.7, 4.0], [0.95, 9.0], [0.8, 3.0]])
    assert obj.pareto_mask(points, obj.directions(o)).tolist() == [True, True, False, True, True]
    ranks = obj.nondominated_ranks(points, obj.directions(o))
    assert ranks[2] == 1 and ranks[[0, 1, 3, 4]].tolist() == [0, 0, 0, 0]


def test_hypervolume_of_a_known_staircase():
    dirs = ("max", "min")
    points = np.array([[0.5, 1.0], [1.0, 2.0]])
    # boxes from the reference (0, 3): 0.5 x 2 and 0.5 x 1 more
    assert obj.hypervolume(points, dirs, (0.0, 3.0)) == pytest.approx(1.5)
    assert obj.hypervolume(np.array([[0.5, 4.0]]), dirs, (0.0, 3.0)) == 0.0  # worse than the reference
    more = np.vstack([points, [[0.75, 1.5]]])
    assert obj.hypervolume(more, dirs, (0.0, 3.0)) > 1.5


def test_metrics_read_lists_what_the_plan_must_check():
    assert obj.metrics_read(Objective(metric="accuracy", max_latency_ms=5)) == ("accuracy", "latency_ms")
    assert obj.metrics_read(Objective(kind="weighted", metric="accuracy", target_ms=5)) == ("accuracy", "latency_ms")
    pareto = Objective(kind="pareto", metrics={"accuracy": "max", "params": "min"}, max_latency_ms=9)
    assert obj.metrics_read(pareto) == ("accuracy", "params", "latency_ms")


@pytest.mark.parametrize(("data", "needle"), [
    ({"kind": "pareto", "metrics": {"accuracy": "max"}}, "two or more"),
    ({"kind": "pareto"}, "two or more"),
    ({"kind": "weighted", "metric": "accuracy"}, "target"),
    ({"kind": "constrained", "metrics": {"accuracy": "max", "macs": "min"}}, "pareto"),
    ({"kind": "pareto", "metrics": {"accuracy": "up", "macs": "min"}}, "max"),
    ({"kind": "nash"}, "constrained"),
    ({"kind": "weighted", "metric": "accuracy", "target_ms": 5, "alpha": float("nan")}, "alpha"),
])
def test_bad_objectives_are_one_line(data, needle):
    with pytest.raises(UserError) as err:
        parse(Objective, data, "objective")
    message = str(err.value)
    assert "\n" not in message and needle in message, message
