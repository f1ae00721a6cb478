"""ProxylessNAS (`nas.oneshot.proxyless`): binary-gate gradients, latency losses, schedule, read-off, bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from nas.errors import UserError
from nas.oneshot._binary_gates import (
    gate_alpha_grad,
    latency_loss,
    path_probs,
    reinforce_reward,
    rescale_pair,
    sample_gates,
    spread_updates,
    update_baseline,
)
from nas.oneshot.base import Batch, build_method, parse_method_config
from nas.oneshot.proxyless import ProxylessMethod
from nas.ops.mixed import MixedOp
from nas.space import load_space
from nas.supernet import module_name
from tests.oneshot.synthetic_tables import synthetic_table, tiny_space

BATCH = 4


@pytest.fixture(scope="module")
def space():
    return tiny_space("proxylessnas")


@pytest.fixture(scope="module")
def table(space):
    return synthetic_table(space)


def _method(space, table, steps_per_epoch: int = 10, **overrides) -> ProxylessMethod:
    torch.manual_seed(0)
    method = build_method("proxyless", parse_method_config("proxyless", overrides), space, table)
    method.start(method.model, steps_per_epoch, steps_per_epoch * method.config.epochs)
    return method


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, 3, 32, 32, generator=gen), torch.randint(0, 10, (BATCH,), generator=gen)


def _set_alphas(method: ProxylessMethod, index: dict[str, int], high: float = 50.0) -> None:
    with torch.no_grad():
        for d in method.space.decisions():
            alpha = method.model.alphas[module_name(d.name)]
            alpha.zero_()
            alpha[index[d.name]] = high


# -- the binary-gate estimator -------------------------------------------------------------------
def test_closed_form_equals_the_reference_double_loop() -> None:
    rng = np.random.default_rng(0)
    for n in (2, 6, 7):
        grads, probs = torch.tensor(rng.normal(size=n)), torch.softmax(torch.tensor(rng.normal(size=n)), 0)
        loop = torch.zeros(n, dtype=torch.float64)
        for i in range(n):  # mix_op.py set_arch_param_grad
            for j in range(n):
                loop[i] += grads[j] * probs[j] * (float(i == j) - probs[i])
        assert torch.allclose(gate_alpha_grad(grads, probs), loop, atol=1e-12)
        # A term added to every gate's gradient (the shortcut inside each candidate) cancels.
        assert torch.allclose(gate_alpha_grad(grads + 3.7, probs), loop, atol=1e-12)


def _toy_op() -> tuple[MixedOp, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    candidates = {c: nn.Linear(5, 5).double() for c in ("a", "b", "c", "d")}
    op = MixedOp({**candidates, "zero": None}, zero="zeros")
    return op, torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)


def _linear_loss(op: MixedOp, x: torch.Tensor, c: torch.Tensor, weights: torch.Tensor, involved: list[int]):
    tokens = [op.choices[i] for i in involved]
    op.set_sampled(tokens, weights, no_grad=tokens[1:])
    return (op(x) * c).sum()


@pytest.mark.parametrize("involved", [[0, 2], [3, 1], [2, 4], [1, 0, 2, 3, 4]])
def test_gate_estimator_equals_finite_differences_of_the_weighted_sum(involved: list[int]) -> None:
    """For a loss linear in the op's output, the estimator is the exact gradient of the loss of
    sum_k p_k o_k(x), p the softmax over the involved paths' alphas: checked by central differences."""
    op, x, c = _toy_op()
    alpha = torch.tensor([0.3, -0.2, 0.5, 0.1, -0.4], dtype=torch.float64)
    gate = torch.zeros(len(involved), dtype=torch.float64)
    gate[0] = 1.0
    gate.requires_grad_()
    gate_grad, = torch.autograd.grad(_linear_loss(op, x, c, gate, involved), gate)
    index = torch.tensor(involved)
    estimate = gate_alpha_grad(gate_grad, torch.softmax(alpha[index], 0))

    def weighted(a: torch.Tensor) -> float:
        with torch.no_grad():
            return float(_linear_loss(op, x, c, torch.softmax(a[index], 0), involved))

    eps = 1e-6
    for k, i in enumerate(involved):
        step = torch.zeros_like(alpha)
        step[i] = eps
        numeric = (weighted(alpha + step) - weighted(alpha - step)) / (2 * eps)
        assert estimate[k].item() == pytest.approx(numeric, abs=1e-7)


def test_two_path_sampling_draws_distinct_paths_by_probability() -> None:
    rng = np.random.default_rng(0)
    probs = np.array([0.6, 0.3, 0.1])
    pairs = [sample_gates(probs, "two", rng).involved for _ in range(4000)]
    assert all(len(set(p)) == 2 for p in pairs)
    first = np.bincount([p[0] for p in pairs], minlength=3) / len(pairs)
    # P(active = i) = sum_j P(pair {i, j}) * p_i / (p_i + p_j) for sampling without replacement.
    expected = [sum(probs[a] * probs[b] / (1 - probs[a]) * (probs[i] / (probs[a] + probs[b]))
                    for a in range(3) for b in range(3) if a != b and i in (a, b)) for i in range(3)]
    assert first == pytest.approx(expected, abs=0.03)
    full = sample_gates(probs, "full", rng).involved
    assert sorted(full) == [0, 1, 2]


def test_two_mode_probabilities_and_rescale_keep_the_pair_mass() -> None:
    alpha = torch.tensor([0.2, -1.0, 0.7, 0.0])
    sample = sample_gates(np.ones(4) / 4, "two", np.random.default_rng(3))
    probs = path_probs(alpha, sample)
    assert float(probs.sum()) == pytest.approx(1.0)
    assert all(probs[i] == 0 for i in range(4) if i not in sample.involved)
    index = list(sample.involved)
    before = torch.softmax(alpha, 0)[index].sum()
    old = alpha[index].clone()
    alpha[index[0]] += 0.8  # an optimizer step
    alpha[index[1]] -= 0.3
    rescale_pair(alpha, old, index)
    assert float(torch.softmax(alpha, 0)[index].sum()) == pytest.approx(float(before), rel=1e-6)


def test_gradient_step_updates_only_involved_paths_and_skips_zero_active(space, table) -> None:
    method = _method(space, table, binary_mode="two", target_ms=25.0, loss="add#linear")
    captured: dict[str, torch.Tensor] = {}
    apply = method._apply
    method._apply = lambda updates, samples: (captured.update(updates), captured.__setitem__("_s", samples),
                                              apply(updates, samples))
    x, y = _data()
    method.gradient_step(x, y, np.random.default_rng(0))
    samples = captured.pop("_s")
    assert samples is not None and set(samples) == {d.name for d in space.decisions()}
    for d in space.decisions():
        involved = samples[d.name].involved
        if d.choices[involved[0]] == "zero":
            assert d.name not in captured  # the reference leaves this alpha without a gradient
            continue
        grad = captured[d.name]
        outside = [i for i in range(len(d.choices)) if i not in involved]
        assert torch.all(grad[outside] == 0)
        scale = float(grad.abs().max())
        assert abs(float(grad[list(involved)].sum())) <= 1e-5 * scale  # softmax Jacobian: the entries sum to 0
        assert grad.abs().sum() > 0


# -- the latency loss ----------------------------------------------------------------------------
def test_expected_latency_of_one_hot_alphas_is_the_table_price(space, table) -> None:
    method = _method(space, table)
    rng = np.random.default_rng(5)
    for _ in range(3):
        arch = space.sample(rng)
        _set_alphas(method, {d.name: d.choices.index(arch.choices[d.name]) for d in space.decisions()}, 200.0)
        assert float(method.expected_latency()) == pytest.approx(table.predict(arch), rel=1e-9)
        assert method.found_arch() == arch
        assert method.found_metrics()["lut_latency_ms"] == table.predict(arch)


def test_loss_forms_equal_their_formulas() -> None:
    ce, expected = torch.tensor(1.7), torch.tensor(42.0)
    mul = latency_loss(ce, expected, 30.0, "mul#log", 0.2, 0.3, 0.1)
    assert float(mul) == pytest.approx(0.2 * 1.7 * (np.log(42.0) / np.log(30.0)) ** 0.3, rel=1e-6)
    add = latency_loss(ce, expected, 30.0, "add#linear", 0.2, 0.3, 0.1)
    assert float(add) == pytest.approx(1.7 + 0.1 * (42.0 - 30.0) / 30.0, rel=1e-6)
    assert float(latency_loss(ce, expected, None, "mul#log", 0.2, 0.3, 0.1)) == pytest.approx(1.7)
    assert reinforce_reward(0.8, 40.0, 30.0, 0.1) == pytest.approx(0.8 * (30 / 40) ** 0.1)
    assert reinforce_reward(0.8, 40.0, None, 0.1) == 0.8
    assert update_baseline(None, 0.5, 0.99) == 0.5
    assert update_baseline(0.5, 0.7, 0.99) == pytest.approx(0.5 + 0.99 * 0.2)


def test_defaults_are_the_reference_search_script(space, table) -> None:
    cfg = _method(space, table).config
    assert (cfg.mul_alpha, cfg.mul_beta, cfg.add_lambda, cfg.loss) == (0.2, 0.3, 0.1, "mul#log")
    assert (cfg.arch_lr, cfg.arch_beta1, cfg.arch_beta2, cfg.arch_eps) == (1e-3, 0.0, 0.999, 1e-8)
    assert (cfg.arch_update_every, cfg.arch_update_steps, cfg.arch_init_std) == (5, 1, 1e-3)
    assert (cfg.rl_batch_size, cfg.rl_updates_per_epoch, cfg.rl_baseline_decay, cfg.rl_tradeoff) == (
        10, 300, 0.99, 0.1)


@pytest.mark.parametrize("estimator", ["binary_gate", "reinforce"])
def test_a_high_latency_weight_lowers_expected_and_found_latency(estimator: str) -> None:
    # Two classes and 16 images: an untrained path is rarely right on none of them, which would zero
    # REINFORCE's multiplicative reward acc * (T / LAT)^tau whatever the latency.
    space = load_space("proxylessnas", {**tiny_space("proxylessnas").config.model_dump(), "num_classes": 2})
    table = synthetic_table(space)
    lb = table.lower_bound()
    target = lb + 0.5 * (float(_method(space, table).expected_latency()) - lb)
    method = _method(space, table, grad_estimator=estimator, binary_mode="full", loss="add#linear",
                     add_lambda=50.0, target_ms=target, arch_lr=0.2, rl_tradeoff=10.0, rl_batch_size=4)
    start_expected, start_found = float(method.expected_latency()), table.predict(method.found_arch())
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32, generator=gen), torch.randint(0, 2, (16,), generator=gen)
    for k in range(8):
        rng = np.random.default_rng(k)
        (method.gradient_step if estimator == "binary_gate" else method.reinforce_step)(x, y, rng)
    assert float(method.expected_latency()) < start_expected - 0.1 * (start_expected - lb)
    assert table.predict(method.found_arch()) < start_found


# -- schedule, read-off, state ---------------------------------------------------------------------
def test_schedule_warmup_first_joint_epoch_and_every_fifth_step(space, table) -> None:
    method = _method(space, table, steps_per_epoch=10, warmup_epochs=1)
    due = [s for s in range(40) if method.arch_updates_at(s // 10, s)]
    assert due == [24, 29, 34, 39]  # none in warm-up epoch 0 nor in the first joint epoch 1
    assert method.lr_at(0) == pytest.approx(0.05) and method.lr_at(10) == pytest.approx(0.025)
    assert spread_updates(10, 3) == {3, 6, 9}
    assert spread_updates(5, 300) == {0, 1, 2, 3, 4}
    rl = _method(space, table, steps_per_epoch=10, warmup_epochs=0, grad_estimator="reinforce",
                 rl_updates_per_epoch=2)
    assert [s for s in range(20) if rl.arch_updates_at(s // 10, s)] == [14, 19]


def test_found_arch_is_the_argmax_including_zero(space, table) -> None:
    method = _method(space, table)
    index = {d.name: len(d.choices) - 1 for d in space.decisions()}  # `zero` where allowed, else mb6_k7
    _set_alphas(method, index, 0.01)
    found = method.found_arch()
    for d in space.decisions():
        assert found.choices[d.name] == ("zero" if "zero" in d.choices else "mb6_k7")


def test_train_step_and_resume_from_state_dict(space, table) -> None:
    x, y = _data()
    batch = Batch(x, y, 2, lambda: (x, y))
    method = _method(space, table, steps_per_epoch=5, warmup_epochs=1)
    metrics = method.train_step(batch, 14)  # epoch 2, in-epoch step 4: a weight and an arch step
    assert {"loss", "arch_loss", "expected_latency_ms"} <= set(metrics)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)  # as a checkpoint: the state must load with weights_only
    buffer.seek(0)
    other = _method(space, table, steps_per_epoch=5, warmup_epochs=1)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    for m in (method, other):
        m.gradient_step(x, y, np.random.default_rng(9))
    for a, b in zip(method.arch_parameters(), other.arch_parameters(), strict=True):
        assert torch.equal(a, b)


# -- bad input -----------------------------------------------------------------------------------
def test_target_below_the_lower_bound_is_refused_in_one_line(space, table) -> None:
    lb = table.lower_bound()
    with pytest.raises(UserError) as err:
        _method(space, table, target_ms=lb / 2)
    message = str(err.value)
    assert "\n" not in message and f"{lb / 2:.4g}" in message and f"{lb:.4g}" in message
    # The same check runs without a supernet, for the trainer to call before it writes anything.
    with pytest.raises(UserError, match="lower bound"):
        ProxylessMethod.check_setup(space, parse_method_config("proxyless", {"target_ms": lb / 2}), table)
    _method(space, table, target_ms=lb)


def test_mul_log_on_a_table_under_one_ms_is_refused(space) -> None:
    fast = synthetic_table(space, base_ms=0.001, ms_per_mac=1e-9)
    with pytest.raises(UserError, match="mul#log.*add#linear"):
        _method(space, fast, target_ms=fast.lower_bound() * 2)
    _method(space, fast, target_ms=fast.lower_bound() * 2, loss="add#linear")


def test_no_held_out_split_is_refused(space, table) -> None:
    with pytest.raises(UserError, match="arch_fraction"):
        _method(space, table, arch_fraction=0.0)


def test_a_space_it_does_not_apply_to_is_one_line_listing_spaces() -> None:
    other = tiny_space("single_path")
    with pytest.raises(UserError) as err:
        build_method("proxyless", parse_method_config("proxyless", {}), other, synthetic_table(other))
    assert "\n" not in str(err.value) and "applies to proxylessnas" in str(err.value)


def _reduce_worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from nas.oneshot._binary_gates import all_reduce_mean

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        tensors = [torch.full((3,), float(rank + 1)), torch.tensor([[10.0 * rank]])]
        all_reduce_mean(tensors)
        torch.save(tensors, f"{out}-{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch: about 10 s
def test_arch_gradients_are_averaged_over_workers(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_reduce_worker, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path / "out")), nprocs=2)
    for rank in (0, 1):
        first, second = torch.load(tmp_path / f"out-{rank}.pt", weights_only=True)
        assert torch.equal(first, torch.full((3,), 1.5)) and torch.equal(second, torch.tensor([[5.0]]))
