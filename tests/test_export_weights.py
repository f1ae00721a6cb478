"""`nas export` ships trained weights when `nas train` left a checkpoint of the arch (the exported PyTorch
model then scores far above chance on the digits validation split), says plainly when it exports an untrained
network, and refuses weights of another arch in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nas.evaluate.data import load_dataset
from nas.evaluate.train import accuracy
from nas.oneshot.trainer import TrainRequest, train_supernet
from nas.space import load_space
from tests.cli_harness import run_cli, warm_cli  # noqa: F401 (fixture)
from tests.oneshot.train_helpers import SPACE, SPACE_CONFIG, one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread", "warm_cli")
ARCH = load_space(SPACE, SPACE_CONFIG).sample(np.random.default_rng(0))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A search run dir whose best.json ranks ARCH first, and `nas train --rank 1`'s output in it."""
    run = tmp_path_factory.mktemp("search")
    (run / "best.json").write_text(json.dumps([{"arch": ARCH.to_dict(), "metrics": {"accuracy": 0.9}}]))
    train_supernet(TrainRequest(space=SPACE, method="standalone", run_dir=run / "train-rank1",
                                space_config=SPACE_CONFIG, workers=0, progress_every=100,
                                method_config={"epochs": 3, "batch_size": 32, "seed": 0, "arch": ARCH.to_json()}))
    return run


def _pt_accuracy(path: Path) -> float:
    saved = torch.load(path, weights_only=True)
    model = load_space(SPACE, SPACE_CONFIG).build(ARCH)
    model.load_state_dict(saved["state_dict"])
    return accuracy(model, load_dataset("digits", resolution=SPACE_CONFIG["resolution"], seed=0))


def test_trained_export_scores_far_above_chance(run_dir: Path, tmp_path: Path) -> None:
    result = run_cli("export", "--run-dir", run_dir, "--rank", "1", "--out", tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["trained"] is True and "untrained" not in result.stderr, result.stderr
    pt = next(Path(f["path"]) for f in shown["files"] if f["format"] == "pt")
    assert torch.load(pt, weights_only=True)["trained"] is True
    assert _pt_accuracy(pt) > 0.5


def test_untrained_export_says_so(tmp_path: Path) -> None:
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(ARCH.to_json())
    result = run_cli("export", "--arch", arch_file, "--out", tmp_path / "out", "--format", "json,pt", "--json")
    assert result.returncode == 0, result.stderr
    assert "untrained (random initialisation)" in result.stderr
    shown = json.loads(result.stdout)
    assert shown["trained"] is False and shown["weights"] == "untrained (random initialisation)"
    pt = next(Path(f["path"]) for f in shown["files"] if f["format"] == "pt")
    assert torch.load(pt, weights_only=True)["weights"] == "untrained (random initialisation)"


def test_weights_of_another_arch_are_refused(run_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(load_space(SPACE, SPACE_CONFIG).sample(np.random.default_rng(9)).to_json())
    result = run_cli("export", "--arch", other, "--weights", run_dir / "train-rank1", "--out", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "trained arch" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
