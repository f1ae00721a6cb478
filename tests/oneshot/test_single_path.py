"""Single-Path NAS (`nas.oneshot.single_path`): indicators, decision order, runtime model, loss, read-off."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nas.errors import UserError
from nas.oneshot.base import Batch, build_method, parse_method_config
from nas.oneshot.single_path import SinglePathMethod, indicator, layer_runtime, op_of
from nas.supernet import module_name
from tests.oneshot.synthetic_tables import synthetic_table, tiny_space

BATCH = 4


@pytest.fixture(scope="module")
def space():
    return tiny_space("single_path")


@pytest.fixture(scope="module")
def table(space):
    return synthetic_table(space)


def _method(space, table, steps_per_epoch: int = 10, **overrides) -> SinglePathMethod:
    torch.manual_seed(0)
    method = build_method("single_path", parse_method_config("single_path", overrides), space, table)
    method.start(method.model, steps_per_epoch, steps_per_epoch * method.config.epochs)
    return method


def _batch(epoch: int = 0, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(BATCH, 3, 32, 32, generator=gen), torch.randint(0, 10, (BATCH,), generator=gen)
    return Batch(x, y, epoch, lambda: (x, y))


@torch.no_grad()
def _norms(method: SinglePathMethod, decision: str) -> dict[str, float]:
    layer = method.supernet.choice_points()[decision]
    inner, ring = layer.kernel_parts()
    half3, rest3 = layer.channel_halves(inner)
    half5, rest5 = layer.channel_halves(inner + ring)
    return {k: float(torch.linalg.vector_norm(v)) for k, v in
            dict(ring=ring, half3=half3, rest3=rest3, half5=half5, rest5=rest5).items()}


def _set(method: SinglePathMethod, decision: str, k5: float, e6: float, skip: float | None = None) -> None:
    key = module_name(decision)
    with torch.no_grad():
        method.model.t_k5[key].fill_(k5)
        method.model.t_e6[key].fill_(e6)
        if skip is not None:
            method.model.t_skip[key].fill_(skip)


# -- indicators and decisions ---------------------------------------------------------------------
def test_indicator_is_a_step_with_the_sigmoid_gradient() -> None:
    x = torch.tensor([-2.0, -0.1, 0.0, 0.3, 4.0], requires_grad=True)
    value = indicator(x)
    assert value.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    value.sum().backward()
    s = torch.sigmoid(x.detach())
    assert torch.allclose(x.grad, s * (1 - s))


def test_indicator_values_map_to_ops_as_the_reference_table() -> None:
    table = {(0, 0, 0): "skip", (0, 0, 1): "skip", (0, 1, 0): "k3e3", (0, 1, 1): "k3e6", (1, 0, 0): "skip",
             (1, 0, 1): "skip", (1, 1, 0): "k5e3", (1, 1, 1): "k5e6"}  # [d5x5, d50c, d100c] as parse_search_output
    for (k5, keep, e6), op in table.items():
        assert op_of(k5, e6, keep) == op


def test_thresholds_at_zero_give_the_largest_choice(space, table) -> None:
    method = _method(space, table)
    assert set(method.found_arch().choices.values()) == {"k5e6"}


def test_decisions_follow_the_reference_order(space, table) -> None:
    """The expansion and skip norms are taken of w_k, the kernel after the kernel-size decision."""
    method = _method(space, table)
    name = "s1.b2.op"  # a repeated layer: skippable
    n = _norms(method, name)
    assert n["rest3"] < n["rest5"] and n["half3"] < n["half5"]
    e6_between, skip_between = (n["rest3"] + n["rest5"]) / 2, (n["half3"] + n["half5"]) / 2
    _set(method, name, k5=0.0, e6=e6_between, skip=0.0)
    assert method.found_arch().choices[name] == "k5e6"  # ring kept: ||w_100c|| of the 5x5 kernel is above
    _set(method, name, k5=n["ring"] + 1, e6=e6_between, skip=0.0)
    assert method.found_arch().choices[name] == "k3e3"  # ring dropped: ||w_100c|| of the 3x3 kernel is below
    _set(method, name, k5=n["ring"] + 1, e6=0.0, skip=skip_between)
    assert method.found_arch().choices[name] == "skip"
    _set(method, name, k5=0.0, e6=0.0, skip=skip_between)
    assert method.found_arch().choices[name] == "k5e6"
    _set(method, name, k5=0.0, e6=1e3, skip=0.0)
    assert method.found_arch().choices[name] == "k5e3"


def test_a_stage_first_layer_is_never_skipped(space, table) -> None:
    method = _method(space, table)
    assert "s1__b1__op" not in method.model.t_skip and "s1__b2__op" in method.model.t_skip
    _set(method, "s1.b1.op", k5=1e3, e6=1e3)
    assert method.found_arch().choices["s1.b1.op"] == "k3e3"


def test_masked_forward_at_zero_thresholds_is_the_k5e6_network(space, table) -> None:
    method = _method(space, table)
    method.model.eval()
    x = _batch().x
    arch = space.make_arch({d.name: "k5e6" for d in space.decisions()})
    with torch.no_grad():
        logits, runtime = method.model(x)
        assert torch.allclose(logits, method.supernet(x, arch), atol=1e-5)
    assert float(runtime) == pytest.approx(table.predict(arch), rel=1e-6)


# -- runtime model and loss --------------------------------------------------------------------------
def test_runtime_forms_equal_their_formulas() -> None:
    costs = torch.tensor([1.0, 2.5, 1.6, 3.2])
    r33, r36, r53, r56 = costs.tolist()
    for k5, e6, keep in itertools.product((0.0, 1.0, 0.3), (0.0, 1.0, 0.7), (0.0, 1.0)):
        d5, d6 = torch.tensor(k5), torch.tensor(e6)
        ratio = r36 / r56
        channels = keep * (r53 + e6 * (r56 - r53))
        assert float(layer_runtime(d5, d6, keep, costs, "reference")) == pytest.approx(
            channels * ratio + channels * (1 - ratio) * k5)
        exact = keep * ((1 - k5) * (1 - e6) * r33 + (1 - k5) * e6 * r36 + k5 * (1 - e6) * r53 + k5 * e6 * r56)
        assert float(layer_runtime(d5, d6, keep, costs, "exact")) == pytest.approx(exact)


def test_exact_runtime_of_the_read_off_arch_is_the_table_price(space, table) -> None:
    method = _method(space, table, runtime_form="exact")
    rng = np.random.default_rng(0)
    for decision in space.decisions()[:12]:
        n = _norms(method, decision.name)
        _set(method, decision.name, k5=n["ring"] * rng.choice([0.5, 2.0]), e6=n["rest3"] * rng.choice([0.5, 2.0]),
             skip=n["half3"] * rng.choice([0.5, 2.0]) if "skip" in decision.choices else None)
    arch = method.found_arch()
    assert len(set(arch.choices.values())) > 2
    assert method.model.runtime() == pytest.approx(table.predict(arch), rel=1e-6)
    assert method.found_metrics()["lut_latency_ms"] == table.predict(arch)


def test_loss_is_ce_in_warmup_then_ce_plus_lambda_log_runtime(space, table) -> None:
    method = _method(space, table, steps_per_epoch=2, warmup_epochs=1, runtime_lambda=3.0)
    warm = method.train_step(_batch(0), 0)
    assert warm["loss"] == warm["ce"]
    after = method.train_step(_batch(1), 2)
    assert after["loss"] == pytest.approx(after["ce"] + 3.0 * np.log(after["expected_latency_ms"]), rel=1e-5)


def test_indicator_dropout_only_in_warmup(space, table) -> None:
    method = _method(space, table, steps_per_epoch=10, warmup_epochs=1, indicator_keep=0.6)
    drops = [method.dropout_at(s) for s in range(10)]
    values = np.concatenate([m for d in drops for m in d.values()])
    assert set(np.round(values, 6)) == {0.0, round(1 / 0.6, 6)}  # TF 1 dropout: zero, or scaled by 1 / keep
    assert abs(float(np.mean(values > 0)) - 0.6) < 0.05
    assert method.dropout_at(10) is None
    assert all(np.array_equal(method.dropout_at(3)[k], v) for k, v in drops[3].items())  # same on every worker


def test_every_weight_and_threshold_gets_a_gradient(space, table) -> None:
    method = _method(space, table, warmup_epochs=0)
    method.train_step(_batch(), 0)
    assert [n for n, p in method.model.named_parameters() if p.grad is None] == []


def test_a_runtime_weight_lowers_runtime_and_found_latency(space, table) -> None:
    """From thresholds just under the kernel norms (where the sigmoid gradient is not vanishing; at 0 they sit
    under norms of about 5 here, as in the reference, and take hundreds of steps), lambda = 20 (the reference's)
    ends a few steps at a lower runtime and found latency than lambda = 0 from the same start."""
    found = {}
    for lam in (0.0, 20.0):
        method = _method(space, table, warmup_epochs=0, runtime_lambda=lam)
        for d in space.decisions():
            n = _norms(method, d.name)
            _set(method, d.name, n["ring"] - 0.3, n["rest5"] - 0.3, n["half5"] - 0.3 if "skip" in d.choices else None)
        start = method.model.runtime()
        for step in range(4):
            method.train_step(_batch(seed=step), step)
        found[lam] = (method.model.runtime(), table.predict(method.found_arch()))
    assert start == pytest.approx(table.predict(space.make_arch({d.name: "k5e6" for d in space.decisions()})))
    assert found[20.0][0] < found[0.0][0] < start
    assert found[20.0][1] < found[0.0][1]


def test_threshold_init_starts_thresholds_at_a_fraction_of_their_norms(space, table) -> None:
    """`threshold_init` f puts t_k5, t_e6, t_skip at f times ||ring||, ||w_k,100c||, ||w_k,50c|| (w_k at k5); the
    start is still k5e6 everywhere; 0 (the default) keeps the paper's zeros."""
    method = _method(space, table, threshold_init=0.9)
    for d in space.decisions():
        key, n = module_name(d.name), _norms(method, d.name)
        assert float(method.model.t_k5[key].detach()) == pytest.approx(0.9 * n["ring"], rel=1e-6)
        assert float(method.model.t_e6[key].detach()) == pytest.approx(0.9 * n["rest5"], rel=1e-6)
        if "skip" in d.choices:
            assert float(method.model.t_skip[key].detach()) == pytest.approx(0.9 * n["half5"], rel=1e-6)
        assert n["ring"] > 1 and n["rest5"] > 1  # the thresholds did move off 0
    assert set(method.model.read_ops().values()) == {"k5e6"}
    assert all(float(t.detach()) == 0.0 for t in _method(space, table).model.thresholds())


# -- bad input -----------------------------------------------------------------------------------
def test_a_space_it_does_not_apply_to_is_one_line_listing_spaces() -> None:
    other = tiny_space("proxylessnas")
    with pytest.raises(UserError) as err:
        build_method("single_path", parse_method_config("single_path", {}), other, synthetic_table(other))
    assert "\n" not in str(err.value) and "applies to single_path" in str(err.value)
