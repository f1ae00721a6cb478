"""The latency tables committed under hardware_profiles/ load, cover their space and meet the accuracy targets."""

from __future__ import annotations

import numpy as np
import pytest

from nas.config import PROFILES_DIR
from nas.hardware.profile import BAR
from nas.hardware.table import LatencyTable
from nas.space import load_space

TABLES = sorted(PROFILES_DIR.glob("*/*.yaml"))
# The fitted intercept may be negative; only this table then extrapolates below zero for the
# cheapest archs of its space (README, "How a table predicts a whole network"). A change either way shows here.
EXTRAPOLATES_BELOW_ZERO = {"amd-epyc-onnxruntime-t1-fp32-b1/proxylessnas-r32"}


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
    assert (table.lower_bound() > 0) is (f"{path.parent.name}/{path.stem}" not in EXTRAPOLATES_BELOW_ZERO)
    arch = space.sample(np.random.default_rng(0))
    assert table.predict(arch) >= table.lower_bound()
