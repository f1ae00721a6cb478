"""`fit_positive`: the fitted table predicts at least a floor for the cheapest arch of the space."""

from __future__ import annotations

import numpy as np
import pytest

from nas.hardware.fit import FLOOR_SHARE, fit_positive, fit_ridge, lower_bound
from nas.hardware.schema import Entry

COST = {"stem": 0.3, "k3": 1.0, "k5": 2.0, "head": 0.2}


def _rows(space, intercept: float, n: int = 40) -> tuple[dict[str, Entry], list]:
    """Timings `intercept + sum of unit costs` of random archs with three or four convs (none near the cheapest)."""
    rng = np.random.default_rng(7)
    keys = space._keys()
    entries = {keys[name]: Entry(mean=ms, std=0.0, count=1, params=int(ms * 1e5), macs=int(ms * 1e6))
               for name, ms in COST.items()}
    rows = []
    while len(rows) < n:
        arch = space.sample(rng)
        if sum(op != "skip" for op in arch.choices.values()) >= 3:
            arch_keys = space.latency_keys(arch)
            rows.append((arch_keys, intercept + sum(entries[k].mean for k in arch_keys)))
    return entries, rows


def test_a_negative_intercept_is_raised_until_the_cheapest_arch_costs_the_floor(space):
    entries, rows = _rows(space, intercept=-2.0)
    free = fit_ridge(entries, rows)
    assert free.intercept_ms == pytest.approx(-2.0, abs=0.05)
    assert lower_bound(free, space) < -1  # the all-skip arch: stem + head - 2 ms
    fitted = fit_positive(space)(entries, rows)
    floor = FLOOR_SHARE * min(ms for _, ms in rows)
    assert floor <= lower_bound(fitted, space) <= 1.1 * floor
    assert fitted.params["min_intercept"] == pytest.approx(fitted.intercept_ms)
    errors = [abs(fitted.intercept_ms + sum(fitted.entries[k] for k in keys) - ms) / ms for keys, ms in rows]
    assert np.mean(errors) < 0.15  # still a fit of the random archs, if a worse one
    assert lower_bound(fit_positive(space, floor_ms=1.0)(entries, rows), space) >= 1.0


def test_a_fit_above_the_floor_is_left_alone(space):
    entries, rows = _rows(space, intercept=0.4)
    assert fit_positive(space)(entries, rows) == fit_ridge(entries, rows)
