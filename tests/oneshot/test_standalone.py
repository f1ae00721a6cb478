"""`standalone` (`nas train`): one arch trained on the one-shot trainer reaches a real accuracy, resumes from an
intermediate checkpoint to the same weights, refuses another arch in its run dir, and can start from a trained
supernet's weights of the arch."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from nas.errors import UserError
from nas.evaluate.supernet import load_supernet, newest_checkpoint
from nas.oneshot.base import build_method, parse_method_config
from nas.oneshot.trainer import TrainRequest, train_supernet
from nas.space import load_space
from tests.cli_harness import run_cli, warm_cli  # noqa: F401 (fixture)
from tests.oneshot.train_helpers import (
    SPACE,
    SPACE_CONFIG,
    assert_same_tensors,
    checkpoints,
    final_state,
    meta,
    one_thread,  # noqa: F401 (fixture)
)
from tests.oneshot.train_helpers import request as supernet_request

pytestmark = pytest.mark.usefixtures("one_thread")
SPACE_ = load_space(SPACE, SPACE_CONFIG)
ARCH = SPACE_.sample(np.random.default_rng(0))
TRAIN = {"epochs": 2, "batch_size": 32, "checkpoint_every": 20, "seed": 0}


def _request(out: Path, arch=ARCH, **config: object) -> TrainRequest:
    return TrainRequest(space=SPACE, method="standalone", run_dir=out, space_config=SPACE_CONFIG,
                        method_config={**TRAIN, "arch": arch.to_json(), **config}, workers=0, progress_every=50)


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("standalone")
    result = train_supernet(_request(out))
    assert result.found_arch == ARCH
    return out


def test_trained_arch_is_far_above_chance(unbroken: Path) -> None:
    final = checkpoints(unbroken)[-1]
    assert meta(final)["complete"] and meta(final)["found_metrics"]["accuracy"] > 0.5, meta(final)


def test_resume_from_an_intermediate_checkpoint_ends_as_the_unbroken_run(unbroken: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    shutil.copytree(unbroken, out)
    shutil.rmtree(checkpoints(out)[-1])  # as if killed after the last intermediate checkpoint
    assert not meta(checkpoints(out)[-1])["complete"]
    result = train_supernet(_request(out))
    assert result.resumed_from == meta(checkpoints(unbroken)[-2])["step"]
    assert_same_tensors(final_state(out)["method"]["model"], final_state(unbroken)["method"]["model"])


def test_another_arch_in_the_same_run_dir_is_refused(unbroken: Path) -> None:
    other = SPACE_.sample(np.random.default_rng(5))
    assert other != ARCH
    before = {p: p.stat().st_mtime_ns for p in unbroken.rglob("*")}
    with pytest.raises(UserError, match="method_config.arch: checkpoint") as err:
        train_supernet(_request(unbroken, other))
    assert "\n" not in str(err.value)
    assert before == {p: p.stat().st_mtime_ns for p in unbroken.rglob("*")}


def test_init_from_a_supernet_starts_from_its_extracted_weights(tmp_path: Path) -> None:
    supernet_dir = tmp_path / "supernet"
    train_supernet(supernet_request(supernet_dir, epochs=1, max_steps_per_epoch=5, search_archs=0))
    config = parse_method_config("standalone", {**TRAIN, "arch": ARCH.to_json(), "init_from": str(supernet_dir)})
    method = build_method("standalone", config, SPACE_)
    expected = load_supernet(SPACE_, newest_checkpoint(supernet_dir, SPACE_)).extract(ARCH).state_dict()
    assert_same_tensors(method.model.state_dict(), expected)
    other_config = load_space(SPACE, {**SPACE_CONFIG, "init_channels": 8})
    with pytest.raises(UserError, match="--init-from"):
        newest_checkpoint(supernet_dir, other_config, "--init-from")


@pytest.mark.usefixtures("warm_cli")
def test_cli_refuses_an_arch_of_another_run_in_one_line(unbroken: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(SPACE_.sample(np.random.default_rng(7)).to_json())
    result = run_cli("train", "--arch", other, "--out", unbroken, "--workers", "0", "--epochs", "2",
                     "--set", "batch_size=32", "--set", "checkpoint_every=20")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "method_config.arch" in result.stderr, result.stderr
