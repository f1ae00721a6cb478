"""Pricing a batch of archs with arrays (the latency table's and the space's per-term costs) gives what
pricing each arch from its latency keys gives, for every registered space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nas.errors import UserError
from nas.evaluate.base import EvaluatorSpec, build_evaluator
from nas.hardware.table import LatencyTable
from nas.pricing import choice_indices, cost_many
from nas.space import load_space
from tests.conftest import synthetic_table


def _random_archs(space, n: int, seed: int) -> list:
    """Samples and mutants of them: every decision's choices, and each space's rules, are exercised."""
    rng = np.random.default_rng(seed)
    archs = [space.sample(rng) for _ in range(n // 2)]
    return archs + [space.mutate(a, rng) for a in archs]


def test_vectorised_prices_equal_per_arch_prices(space_name: str, tmp_path: Path) -> None:
    space = load_space(space_name)
    path = synthetic_table(space_name, tmp_path / "table.yaml")
    table = LatencyTable.load(path)
    archs = _random_archs(space, 200, seed=len(space_name))
    indices = choice_indices(space, archs)
    assert indices.shape == (len(archs), len(space.decisions()))
    params, macs = cost_many(space, indices)
    latency = table.predict_many(space, indices)
    for arch, p, m, ms in zip(archs, params.tolist(), macs.tolist(), latency.tolist(), strict=True):
        keys = space.latency_keys(arch)
        assert space.cost_of_keys(keys) == {"params": p, "macs": m}
        assert abs(table.predict_keys(keys) - ms) <= 1e-9
    evaluator = build_evaluator(EvaluatorSpec(space=space_name, evaluator="lut", table=str(path)))
    batch = evaluator.evaluate_many(archs)
    assert batch == [{"latency_ms": ms, "params": p, "macs": m} for ms, p, m in
                     zip(latency.tolist(), params.tolist(), macs.tolist(), strict=True)]
    assert batch[:5] == [evaluator.evaluate(a) for a in archs[:5]]  # one arch is priced as in a batch
    assert {type(v) for metrics in batch for v in metrics.values()} == {int, float}


def test_an_arch_of_another_space_or_config_is_refused(tmp_path: Path) -> None:
    space = load_space("proxylessnas")
    rng = np.random.default_rng(0)
    other = load_space("proxylessnas", {"resolution": 64}).sample(rng)
    with pytest.raises(UserError, match="belongs to space 'proxylessnas' at config .*resolution.:64"):
        choice_indices(space, [space.sample(rng), other])
    with pytest.raises(UserError, match="belongs to space 'single_path'"):
        choice_indices(space, [load_space("single_path").sample(rng)])
    assert choice_indices(space, []).shape == (0, len(space.decisions()))
