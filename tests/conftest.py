"""Shared fixtures: registry names for contract tests, a seeded RNG, the tiny preset."""

from __future__ import annotations

import numpy as np
import pytest

from nas.registry import SPACES, STRATEGIES


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Enrol every registered space and strategy in the contract tests that ask for one."""
    if "space_name" in metafunc.fixturenames:
        metafunc.parametrize("space_name", SPACES.names())
    if "strategy_name" in metafunc.fixturenames:
        metafunc.parametrize("strategy_name", STRATEGIES.names())


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
