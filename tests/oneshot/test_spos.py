"""SPOS (`nas.oneshot.spos`): uniform single paths determined by (seed, step), training that lowers the loss,
and a found arch picked after training without touching the trained supernet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nas.evaluate.data import load_dataset
from nas.oneshot.base import Batch, build_method, parse_method_config
from nas.oneshot.spos import SposMethod
from nas.oneshot.trainer import train_supernet
from nas.space import SearchSpace, load_space
from tests.cli_harness import run_cli, warm_cli  # noqa: F401 (fixture)
from tests.oneshot.train_helpers import SPACE, SPACE_CONFIG, cli_args, one_thread, request  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _single_thread(one_thread: None) -> None:  # noqa: F811 (the fixture restores the count afterwards)
    torch.set_num_threads(1)


def _method(seed: int = 0, space: SearchSpace | None = None, **config: object) -> SposMethod:
    space = space or load_space(SPACE, SPACE_CONFIG)
    method = build_method("spos", parse_method_config("spos", {"seed": seed, "batch_size": 8, **config}), space)
    method.start(method.model, steps_per_epoch=10, total_steps=20)
    return method


def test_paths_depend_on_seed_and_step_only() -> None:
    a, b, other = _method(), _method(), _method(seed=1)
    paths = [a.path(step) for step in range(30)]
    assert paths == [b.path(step) for step in range(30)]  # what every data-parallel worker relies on
    assert len({p.hash for p in paths}) > 20  # uniform over a space of 15,625 archs
    assert paths != [other.path(step) for step in range(30)]
    assert a.path(7) == a.path(7)  # no hidden generator state: asking again gives the same path


def test_choices_are_drawn_uniformly() -> None:
    method = _method()
    counts: dict[str, int] = {}
    for step in range(600):
        choice = method.path(step).choices["edge.1<-0"]
        counts[choice] = counts.get(choice, 0) + 1
    assert len(counts) == 5 and min(counts.values()) > 80, counts  # 120 expected each


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    train_supernet(request(tmp_path, epochs=2, max_steps_per_epoch=40, lr=0.1, search_archs=0))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert len(losses) == 80
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < first - 0.15, (first, last)


def test_finish_picks_a_scored_arch_and_leaves_the_supernet_as_trained() -> None:
    space = load_space(SPACE, SPACE_CONFIG)
    data = load_dataset("digits", resolution=16)
    method = _method(search_archs=3)
    for step in range(3):
        x, y = data.x_train[step * 8:(step + 1) * 8], data.y_train[step * 8:(step + 1) * 8]
        method.train_step(Batch(x, y, 0, lambda: (data.x_val[:8], data.y_val[:8])), step)
    before = {k: v.clone() for k, v in method.model.state_dict().items()}
    rng_before = torch.get_rng_state()
    assert method.found_arch() is None
    method.finish(data)
    after = method.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN recalibration ran on copies
    assert torch.equal(torch.get_rng_state(), rng_before)
    rng = method.step_rng(20, 1)
    scored = [space.sample(rng) for _ in range(3)]
    assert method.found_arch() in scored
    assert 0.0 <= method.found_metrics()["supernet_accuracy"] <= 1.0
    restored = _method(search_archs=3)
    restored.load_state_dict(method.state_dict())
    assert restored.found_arch() == method.found_arch()


def test_a_step_trains_the_sampled_path_only(space_name: str) -> None:
    """SPOS applies to every space (`space_name` runs over the registry): one step on its tiny config changes
    weights, and a weight the path left without a gradient gets no momentum or weight-decay update."""
    tiny = load_space(space_name).preset(f"{space_name}_tiny")
    space = load_space(space_name, dict(tiny.config))
    torch.manual_seed(0)
    method = _method(space=space)
    r = space.config.resolution
    x = torch.randn(4, 3, r, r, generator=torch.Generator().manual_seed(0))
    y = torch.arange(4) % space.config.num_classes
    before = {n: p.detach().clone() for n, p in method.model.named_parameters()}
    metrics = method.train_step(Batch(x, y, 0, lambda: (x, y)), 0)
    assert np.isfinite(metrics["loss"])
    params = dict(method.model.named_parameters())
    changed = {n for n, p in params.items() if not torch.equal(before[n], p.detach())}
    assert changed, "the step changed no weight"
    untouched = {n for n, p in params.items() if p.grad is None}
    assert not changed & untouched, sorted(changed & untouched)[:3]


def test_no_search_leaves_the_found_arch_to_nas_search(tmp_path: Path, warm_cli: None) -> None:  # noqa: F811
    proc = run_cli(*cli_args(tmp_path / "run", "--workers", "0", epochs=1, max_steps_per_epoch=3, search_archs=0))
    assert proc.returncode == 0, proc.stderr
    assert "no found arch" in proc.stdout and "nas search --evaluator supernet" in proc.stdout, proc.stdout
    assert json.loads((tmp_path / "run" / "found.json").read_text())["arch"] is None
