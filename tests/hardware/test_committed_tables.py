"""The latency tables committed under hardware_profiles/ load, cover their space and meet the accuracy targets."""

from __future__ import annotations

import numpy as np
import pytest

from nas.config import PROFILES_DIR
from nas.errors import UserError
from nas.hardware.fit import FLOOR_SHARE, fit_ridge
from nas.hardware.fit import lower_bound as fit_lower_bound
from nas.hardware.profile import BAR, refit
from nas.hardware.table import LatencyTable
from nas.space import load_space

TABLES = sorted(PROFILES_DIR.glob("*/*.yaml"))
# Fitted with a floor on the cheapest arch (`fit_positive`): the intercept was raised until the all-skip
# network is predicted at least FLOOR_SHARE of the fastest fit arch (README, "How a table predicts a whole network").
FLOORED = {"amd-epyc-onnxruntime-t1-fp32-b1/proxylessnas-r32"}


def test_the_cpu_tables_of_issue_5_are_committed():
    names = {f"{path.parent.name}/{path.name}" for path in TABLES}
    for engine in ("torch", "onnxruntime"):
        for resolution in (32, 224):
            assert f"amd-epyc-{engine}-t1-fp32-b1/proxylessnas-r{resolution}.yaml" in names


@pytest.mark.parametrize("path", TABLES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_committed_table_meets_its_targets(path):
    meta = LatencyTable.load(path).metadata
    space = load_space(meta.space, meta.space_config)
    table = LatencyTable.load(path, space, batch=meta.batch)
    assert set(table.entries) == set(space.all_latency_keys())
    report = table.validation
    assert report.n_archs >= 100 and report.passes
    assert report.within_10 >= BAR["within_10"] and report.spearman >= BAR["spearman"]
    assert report.mape <= 2 * report.noise  # MAPE no more than twice the re-measurement noise
    measured, predicted, naive = np.array(report.points).T
    assert report.mape == pytest.approx(np.mean(np.abs(predicted - measured) / measured) * 100, rel=1e-3)
    assert report.naive.mape == pytest.approx(np.mean(np.abs(naive - measured) / measured) * 100, rel=1e-3)
    assert len(table.correction.fit_ms) == table.correction.params["n_fit"]
    assert table.metadata.protocol["network_reference"]["ms"] > 0
    assert table.lower_bound() >= FLOOR_SHARE * min(table.correction.fit_ms) * (1 - 1e-6)
    assert ("min_intercept" in table.correction.params) is (f"{path.parent.name}/{path.stem}" in FLOORED)
    assert table.metadata.rescaled is None
    arch = space.sample(np.random.default_rng(0))
    assert table.predict(arch) >= table.lower_bound()


@pytest.mark.parametrize("name", sorted(FLOORED))
def test_floored_table_is_its_refit(name):
    """The floored table is `refit` of its own stored timings (nothing timed), and still passes the bar."""
    path = PROFILES_DIR / f"{name}.yaml"
    meta = LatencyTable.load(path).metadata
    space = load_space(meta.space, meta.space_config)
    table = LatencyTable.load(path, space)
    again = refit(table, space)
    assert again.correction == table.correction
    assert again.validation.points == table.validation.points and again.validation.passes
    # Without the floor the intercept extrapolates below zero, and a table bound to its space refuses that.
    with pytest.raises(UserError, match=r"predicts -0\.04\d* ms for the cheapest proxylessnas arch"):
        refit(table, space, fit_ridge)
    free = refit(LatencyTable.load(path), space, fit_ridge)
    assert free.correction.intercept_ms < table.correction.intercept_ms
    assert fit_lower_bound(free.correction, space) < 0 < table.lower_bound()
