"""The `supernet` evaluator: inherited weights of a tiny trained SPOS supernet give accuracy far above chance;
a checkpoint of another space config, or a corrupt one, is refused at plan time in one line; and
`nas search --evaluator supernet --checkpoint D` runs (slow: Ray)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nas.errors import UserError
from nas.evaluate.base import EvaluatorSpec, build_evaluator
from nas.oneshot.trainer import train_supernet
from nas.space import load_space
from tests.cli_harness import run_cli, warm_cli  # noqa: F401 (fixture)
from tests.oneshot.train_helpers import SPACE, SPACE_CONFIG, checkpoints, one_thread, request  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("supernet")
    train_supernet(request(run_dir, epochs=3, max_steps_per_epoch=40, search_archs=0))
    return run_dir


def _spec(run_dir: Path, space_config: dict | None = None, **config: object) -> EvaluatorSpec:
    return EvaluatorSpec(space=SPACE, space_config=space_config or SPACE_CONFIG, evaluator="supernet",
                         config={"checkpoint": str(run_dir), "bn_batches": 5, **config})


def test_inherited_accuracy_is_far_above_chance_and_deterministic(trained: Path) -> None:
    evaluator = build_evaluator(_spec(trained))
    space = load_space(SPACE, SPACE_CONFIG)
    archs = [space.sample(np.random.default_rng(i)) for i in range(3)]
    first = [evaluator.evaluate(a) for a in archs]
    assert max(m["accuracy"] for m in first) > 0.3, first  # chance is 0.1 on digits
    for metrics, arch in zip(first, archs, strict=True):
        assert {"accuracy", "params", "macs"} <= set(metrics)
        assert metrics["params"] == evaluator.cost_metrics(arch)["params"]
    again = build_evaluator(_spec(trained)).evaluate(archs[0])  # the same process-wide supernet, unchanged
    assert again["accuracy"] == first[0]["accuracy"]


def test_another_space_config_is_refused_in_one_line(trained: Path) -> None:
    with pytest.raises(UserError, match="space_config.init_channels: checkpoint 4, this run 8") as err:
        build_evaluator(_spec(trained, {**SPACE_CONFIG, "init_channels": 8}))
    assert "\n" not in str(err.value) and str(err.value).startswith("--checkpoint")


def test_corrupt_or_missing_checkpoint_is_refused(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no checkpoint there"):
        build_evaluator(_spec(tmp_path))
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    state = checkpoints(copy)[-1] / "state.pt"
    state.write_bytes(state.read_bytes()[:-10])  # truncated
    with pytest.raises(UserError, match="truncated or corrupt checkpoint") as err:
        build_evaluator(_spec(copy))
    assert "\n" not in str(err.value)


def test_other_data_than_the_checkpoints_is_refused(trained: Path) -> None:
    with pytest.raises(UserError, match="--data 'cifar10': the supernet of --checkpoint was trained on data 'digits'"):
        build_evaluator(_spec(trained, data="cifar10"))


@pytest.mark.slow
@pytest.mark.usefixtures("warm_cli")
def test_search_with_the_supernet_evaluator(trained: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"space_config": SPACE_CONFIG}))
    result = run_cli("search", "--space", SPACE, "--strategy", "random", "--evaluator", "supernet", "--checkpoint",
                     trained, "--trials", "8", "--archs-per-trial", "4", "--num-cpus", "1", "--config", config,
                     "--run-dir", tmp_path / "run", "--json")
    assert result.returncode == 0, result.stderr
    best = json.loads(result.stdout)
    assert best and best[0]["metrics"]["accuracy"] > 0.3, best
