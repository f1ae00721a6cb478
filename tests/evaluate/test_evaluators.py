"""The train evaluator's data check: bad data fails once when the search starts, not in every trial."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from nas.errors import UserError
from nas.evaluate.base import EvaluatorSpec, build_evaluator
from nas.evaluate.evaluators import TrainConfig, normalize_evaluator_config
from tests.cli_harness import assert_user_error, run_cli


def _cifar(root: Path) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for name in ("data_batch_1", "test_batch"):
        batch = {b"data": rng.integers(0, 256, size=(4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


def _spec(config: dict) -> EvaluatorSpec:
    return EvaluatorSpec(space="proxylessnas", evaluator="train", config=config)


def test_relative_data_dir_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _cifar(tmp_path / "data" / "cifar")
    monkeypatch.chdir(tmp_path)
    config = normalize_evaluator_config("train", {"data": "cifar10", "data_dir": "data/cifar"})
    assert config == {"data": "cifar10", "data_dir": str(tmp_path.resolve() / "data" / "cifar")}
    assert TrainConfig(data="cifar10", data_dir="~/x").data_dir == Path.home() / "x"
    monkeypatch.chdir(tmp_path / "data")  # a Ray worker runs elsewhere: the stored path still finds the data
    assert build_evaluator(_spec(config)).config.data_dir == tmp_path.resolve() / "data" / "cifar"
    assert normalize_evaluator_config("lut", {}) == {}


def test_normalize_refuses_bad_values() -> None:
    with pytest.raises(UserError, match=r"evaluator train config: lr: .*finite.*got nan"):
        normalize_evaluator_config("train", {"lr": float("nan")})
    with pytest.raises(UserError, match="unknown key 'epoch'"):
        normalize_evaluator_config("train", {"epoch": 3})
    with pytest.raises(UserError, match=r"seed: .*\[0, 4294967296\)"):
        normalize_evaluator_config("train", {"seed": -1})


@pytest.mark.parametrize(("name", "config", "needles"), [
    ("lut", {"epochs": 3}, ["unknown key 'epochs'", "the lut evaluator takes no options"]),
    ("train", {"data_dir": "/data"}, ["data_dir: data set 'digits' takes no data dir", "take one: cifar10"]),
    ("train", {"data": "digits", "data_dir": "/data"}, ["'digits' takes no data dir"]),
    ("train", {"data": "cifar10", "data_dir": ""}, ["data_dir: an empty path"]),
    ("train", {"data": "cifar10", "data_dir": "d" * 300}, ["component of 300 bytes"]),
    ("train", {"data": "mnist"}, ["data: unknown data set; allowed: cifar10, digits, npz; got 'mnist'"]),
])
def test_evaluator_configs_refuse_what_they_would_ignore(name: str, config: dict, needles: list[str]) -> None:
    with pytest.raises(UserError) as err:
        normalize_evaluator_config(name, config)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400
    for needle in needles:
        assert needle in str(err.value), str(err.value)
    if name == "train":  # a Ray worker builds it from the spec: the same check there
        with pytest.raises(UserError, match=needles[0].split(":")[0]):
            build_evaluator(_spec(config))


@pytest.mark.parametrize("damage", ["truncated", "str_keys_foreign", "not_uint8"])
def test_bad_cifar_file_fails_when_the_evaluator_is_built(tmp_path: Path, damage: str) -> None:
    root = _cifar(tmp_path / "cifar")
    target = root / "data_batch_1"
    if damage == "truncated":
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "str_keys_foreign":
        target.write_bytes(pickle.dumps({"pixels": [], "labels": []}))
    else:
        target.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}))
    with pytest.raises(UserError, match="data_batch_1") as err:
        build_evaluator(_spec({"data": "cifar10", "data_dir": str(root)}))
    assert "\n" not in str(err.value)


def test_str_keyed_cifar_is_accepted_at_start(tmp_path: Path) -> None:
    root = tmp_path / "cifar"
    root.mkdir()
    for name in ("data_batch_1", "test_batch"):
        batch = {"data": np.zeros((3, 3072), np.uint8), "labels": [1, 2, 3]}
        (root / name).write_bytes(pickle.dumps(batch, protocol=4))
    evaluator = build_evaluator(_spec({"data": "cifar10", "data_dir": str(root)}))
    assert evaluator.config.data_dir == root.resolve()


@pytest.mark.usefixtures("warm_cli", "in_tmp_dir")
def test_search_refuses_a_corrupt_cifar_file_before_any_trial() -> None:
    root = _cifar(Path("cifar"))
    (root / "test_batch").write_bytes(b"\x80\x02}q\x00(truncated")
    proc = run_cli("search", "--evaluator", "train", "--data", "cifar10", "--data-dir", "cifar", "--trials", "2",
                   "--run-dir", "run")
    assert_user_error(proc, os.path.join("cifar", "test_batch"), "not a CIFAR-10 pickle", "re-extract")
    assert not Path("run/trials.jsonl").exists()


@pytest.mark.usefixtures("warm_cli", "in_tmp_dir")
def test_search_refuses_labels_beyond_the_networks_classes_before_writing() -> None:
    """Digits has labels 0-9: networks of 5 outputs would fail every trial's loss; refused when the search starts."""
    proc = run_cli("search", "--evaluator", "train", "--classes", "5", "--trials", "2", "--run-dir", "run")
    assert_user_error(proc, "--classes 5", "labels up to 9", "--classes 10 or more")
    assert not Path("run").exists()


def test_every_data_set_is_checked_against_the_classes(tmp_path: Path) -> None:
    from nas.evaluate.data import load_dataset
    from nas.evaluate.npz_data import write_npz

    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.random((6, 3, 32, 32), dtype=np.float32), "y_train": np.array([0, 1, 2, 0, 1, 3]),
              "x_val": rng.random((2, 3, 32, 32), dtype=np.float32), "y_val": np.array([0, 1])}
    write_npz(arrays, tmp_path / "d.npz")
    assert load_dataset("npz", tmp_path / "d.npz", num_classes=4).num_classes == 4
    with pytest.raises(UserError, match=r"--classes 3: data set npz .* labels up to 3.* --classes 4 or more"):
        load_dataset("npz", tmp_path / "d.npz", num_classes=3)
    with pytest.raises(UserError, match="--classes 9: data set digits has labels up to 9"):
        load_dataset("digits", num_classes=9)


def test_split_seed_fixes_the_validation_split_apart_from_the_training_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    from nas.evaluate import data as data_module

    seen: list[int] = []
    real = data_module.load_dataset

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - a pass-through spy
        seen.append(kwargs["seed"])
        return real(*args, **kwargs)

    monkeypatch.setattr(data_module, "load_dataset", recording)
    from nas.evaluate import train  # what is trained does not matter here: only which split is loaded

    monkeypatch.setattr(train, "train_and_evaluate",
                        lambda *args, **kwargs: {"accuracy": 0.5, "train_loss": 1.0, "train_seconds": 0.0})
    space_config = {"width_mult": 0.25}
    arch_evaluator = build_evaluator(EvaluatorSpec(space="proxylessnas", space_config=space_config, evaluator="train",
                                                   config={"seed": 3, "split_seed": 0, "epochs": 1}))
    arch = arch_evaluator.space.sample(np.random.default_rng(0))
    arch_evaluator.evaluate(arch)
    assert seen and set(seen) == {0}, seen  # the data check at build and the load in evaluate: split_seed's split
    seen.clear()
    build_evaluator(EvaluatorSpec(space="proxylessnas", space_config=space_config, evaluator="train",
                                  config={"seed": 3, "epochs": 1})).evaluate(arch)
    assert seen and set(seen) == {3}, seen  # without split_seed the training seed picks the split
    with pytest.raises(UserError, match=r"split_seed: .*\[0, 4294967296\)"):
        normalize_evaluator_config("train", {"split_seed": -1})
