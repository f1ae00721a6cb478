"""`LatencyTable.expected_latency`: exact, differentiable expected latency under choice probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nas.errors import UserError
from nas.hardware.table import LatencyTable
from nas.space import load_space


@pytest.fixture(scope="module")
def table(lut_path) -> LatencyTable:
    """The synthetic proxylessnas table with a fitted-looking correction: intercept and per-key values."""
    from nas.hardware.table import Correction

    space = load_space("proxylessnas")
    plain = LatencyTable.load(lut_path, space)
    rng = np.random.default_rng(0)
    values = {k: e.mean * rng.uniform(0.5, 2.0) for k, e in plain.entries.items()}
    return plain.replace(correction=Correction(method="test", intercept_ms=0.7, entries=values))


def _probs(space, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    return {d.name: torch.tensor(rng.dirichlet(np.ones(len(d.choices)))) for d in space.decisions()}


def test_one_hot_probabilities_give_the_arch_latency(table):
    space = load_space("proxylessnas")
    rng = np.random.default_rng(1)
    for _ in range(5):
        arch = space.sample(rng)
        one_hot = {d.name: torch.tensor([float(c == arch.choices[d.name]) for c in d.choices], dtype=torch.float64)
                   for d in space.decisions()}
        assert float(table.expected_latency(one_hot)) == pytest.approx(table.predict(arch), rel=1e-12)


def test_value_is_the_mean_over_sampled_archs(table):
    space = load_space("proxylessnas")
    rng = np.random.default_rng(2)
    probs = _probs(space, rng)
    expected = float(table.expected_latency(probs))
    decisions = space.decisions()
    samples = []
    for _ in range(3000):
        choices = {d.name: d.choices[rng.choice(len(d.choices), p=probs[d.name].numpy())] for d in decisions}
        samples.append(table.predict(space.make_arch(choices)))
    mean, stderr = np.mean(samples), np.std(samples) / np.sqrt(len(samples))
    assert abs(mean - expected) < 4 * stderr
    assert stderr < 0.01 * expected  # the check is tight enough to catch a missing or doubled term


def test_gradient_matches_finite_differences(table):
    space = load_space("proxylessnas")
    names = [d.name for d in space.decisions()]
    rng = np.random.default_rng(3)
    logits = [torch.tensor(rng.normal(size=len(d.choices)), requires_grad=True) for d in space.decisions()]

    def latency(*logits: torch.Tensor) -> torch.Tensor:
        return table.expected_latency({n: torch.softmax(x, 0) for n, x in zip(names, logits, strict=True)})

    assert torch.autograd.gradcheck(latency, tuple(logits), eps=1e-6, atol=1e-6)
    latency(*logits).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in logits)


def test_bad_probabilities_name_the_decision(table):
    space = load_space("proxylessnas")
    probs = _probs(space, np.random.default_rng(4))
    probs.pop("s2.b1.op")
    with pytest.raises(UserError, match=r"'s2.b1.op' needs a 1-D tensor of 6 probabilities"):
        table.expected_latency(probs)
    probs["s2.b1.op"] = torch.ones(3) / 3
    with pytest.raises(UserError, match="s2.b1.op"):
        table.expected_latency(probs)


def test_table_of_another_config_is_refused(table):
    with pytest.raises(UserError, match="resolution"):
        table.expected_latency({}, load_space("proxylessnas", {"resolution": 64}))
