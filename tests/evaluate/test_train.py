"""Short training: a small CNN learns digits, and the same seed gives the same numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas.errors import UserError
from nas.evaluate.data import load_dataset
from nas.evaluate.train import train_and_evaluate


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10),  # (B, 512) at 16x16 input
    )


def test_small_cnn_learns_digits_deterministically() -> None:
    data = load_dataset("digits", resolution=16)
    first = train_and_evaluate(_small_cnn(), data, epochs=2, batch_size=32, seed=0)
    assert set(first) == {"accuracy", "train_loss", "train_seconds"}
    assert first["accuracy"] > 0.8  # chance is 0.1
    assert 0 < first["train_loss"] < 2.3 and first["train_seconds"] > 0
    again = train_and_evaluate(_small_cnn(), data, epochs=2, batch_size=32, seed=0)
    assert (again["accuracy"], again["train_loss"]) == (first["accuracy"], first["train_loss"])


def test_seed_changes_batch_order() -> None:
    data = load_dataset("digits", resolution=16)
    a = train_and_evaluate(_small_cnn(), data, epochs=1, seed=0, max_batches=5)
    b = train_and_evaluate(_small_cnn(), data, epochs=1, seed=1, max_batches=5)
    assert a["train_loss"] != b["train_loss"]


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"batch_size": -1}, {"lr": 0.0}, {"max_batches": 0}])
def test_bad_settings_are_user_errors(bad: dict) -> None:
    data = load_dataset("digits", resolution=8)
    flag = "--" + next(iter(bad)).replace("_", "-")
    with pytest.raises(UserError, match=flag):
        train_and_evaluate(_small_cnn(), data, **{"epochs": 1, **bad})
