"""`nas.search`, the Python API: the CLI's search and run dir, trials as a pandas table, a user's function as the
evaluator (failures as trials, stop and resume with no arch lost or repeated), a user's data set as arrays,
and refusals in one line before anything is written."""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import nas
from nas.arch import Arch
from nas.config import Objective
from nas.errors import NasError, UserError
from nas.interrupts import Interrupted
from nas.space import load_space
from nas.trials import FAILURE_LIMIT
from tests.cli_harness import assert_user_error, run_cli

_WHERE = ("node", "host", "pid", "finished_at")
_FIXED = ["trial", "hash", "status", "score", "feasible"]


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "trials.jsonl").read_text().splitlines()]


def _one_line(err: pytest.ExceptionInfo, *needles: str) -> str:
    text = str(err.value)
    assert "\n" not in text and len(text) < 500, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    return text


def _accuracy(arch: Arch) -> dict[str, float]:
    """A cheap stand-in for a trained accuracy: fewer MACs score higher, in (0, 1)."""
    return {"accuracy": 1.0 / (1.0 + load_space(arch.space, arch.config).cost(arch)["macs"] / 1e7)}


class _Flaky:
    """An evaluator function that fails for archs whose first block is `mb3_k3`, counts its calls per arch, and
    can interrupt the search once, at the first arch that does not fail from its `stop_at`-th call on (a SIGINT
    to this process, or a KeyboardInterrupt). Archs run one at a time and a failed one is retried at once, so
    no failing arch is between its attempts then."""

    def __init__(self, stop_at: int | None = None, how: str = "sigint") -> None:
        self.calls: dict[str, int] = {}
        self.stop_at, self.how, self.stopped = stop_at, how, False

    def __call__(self, arch: Arch) -> dict[str, float]:
        self.calls[arch.hash] = self.calls.get(arch.hash, 0) + 1
        if arch.choices["s1.b1.op"] == "mb3_k3":
            raise RuntimeError(f"no memory for {arch.short_hash}")
        if self.stop_at is not None and sum(self.calls.values()) >= self.stop_at and not self.stopped:
            self.stopped = True
            if self.how == "sigint":
                os.kill(os.getpid(), signal.SIGINT)  # as a notebook's interrupt: the search stops after this arch
            else:
                raise KeyboardInterrupt
        return _accuracy(arch)


def test_a_lut_search_returns_its_trials_as_a_table(lut_path: Path, tmp_path: Path) -> None:
    df = nas.search("proxylessnas", evaluator="lut", hardware=lut_path, trials=300, max_latency_ms=1.2,
                    run_dir=tmp_path / "run")
    lines = _lines(tmp_path / "run")
    decisions = [d.name for d in load_space("proxylessnas").decisions()]
    assert isinstance(df, pd.DataFrame) and len(df) == 300 == len(lines)
    assert list(df.columns) == [*_FIXED, "latency_ms", "macs", "params", "error", "finished_at", *decisions]
    assert df["trial"].tolist() == list(range(300)) and df["hash"].tolist() == [r["hash"] for r in lines]
    assert df["score"].tolist() == [r["score"] for r in lines] and df["error"].isna().all()
    assert df["feasible"].dtype == bool and df["feasible"].tolist() == [r["feasible"] for r in lines]
    assert df["macs"].dtype == np.int64 and df["macs"].tolist() == [r["metrics"]["macs"] for r in lines]
    assert df[decisions].to_dict("records") == [{d: r["arch"]["choices"][d] for d in decisions} for r in lines]
    assert df.attrs["run_dir"] == str((tmp_path / "run").resolve())
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert [b["hash"] for b in df.attrs["best"]] == [b["hash"] for b in best]
    top = df.attrs["best"][0]
    assert top["rank"] == 1 and top["feasible"] and top["metrics"]["latency_ms"] <= 1.2
    assert top["score"] == df.loc[df["feasible"], "score"].max()
    assert Arch.from_dict(top["arch"]).hash == top["hash"]
    assert df.head(5).attrs["best"] == df.attrs["best"]  # plain data: pandas copies attrs deeply


@pytest.mark.usefixtures("warm_cli")
def test_the_api_runs_the_cli_search_and_resumes_a_cli_run_dir(lut_path: Path, tmp_path: Path) -> None:
    """Same options, same config.yaml and the same trial log; and a run dir of one resumes with the other."""
    cli_dir, api_dir = tmp_path / "cli", tmp_path / "api"
    done = run_cli("search", "--space", "proxylessnas", "--evaluator", "lut", "--hardware", lut_path, "--trials",
                   "400", "--max-latency-ms", "1.2", "--set", "population_size=50", "--run-dir", cli_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    nas.search("proxylessnas", evaluator="lut", hardware=lut_path, trials=400, max_latency_ms=1.2,
               strategy_config={"population_size": 50}, run_dir=api_dir)
    assert (api_dir / "config.yaml").read_text() == (cli_dir / "config.yaml").read_text()
    strip = [[{k: v for k, v in r.items() if k not in _WHERE} for r in _lines(d)] for d in (cli_dir, api_dir)]
    assert strip[0] == strip[1]
    df = nas.search("proxylessnas", evaluator="lut", hardware=str(lut_path), trials=500, max_latency_ms=1.2,
                    strategy_config={"population_size": 50}, run_dir=cli_dir)
    assert df["trial"].tolist() == list(range(500)) and df["hash"].is_unique
    assert df["hash"].tolist()[:400] == [r["hash"] for r in strip[0]]


def test_a_function_evaluator_records_its_errors_as_failed_trials(lut_path: Path, tmp_path: Path) -> None:
    flaky = _Flaky()
    df = nas.search("proxylessnas", evaluator=flaky, measures=("accuracy",), hardware=lut_path, trials=60,
                    strategy_config={"population_size": 20, "sample_size": 5}, run_dir=tmp_path / "run")
    assert len(df) == 60 and df["hash"].is_unique and df["trial"].tolist() == list(range(60))
    assert df.attrs["objective"]["metric"] == "accuracy" and df.attrs["objective"]["mode"] == "max"
    assert list(df.columns[:9]) == [*_FIXED, "accuracy", "latency_ms", "macs", "params"]
    failed = df[df["status"] == "failed"]
    first = df["s1.b1.op"] == "mb3_k3"
    assert len(failed) > 0 and failed.index.tolist() == df[first].index.tolist()
    errors = [f"RuntimeError: no memory for {h[:12]}" for h in failed["hash"]]
    assert failed["error"].tolist() == errors
    assert failed["score"].isna().all() and not failed["feasible"].any() and failed["accuracy"].isna().all()
    ok = df[df["status"] == "ok"]
    assert ok["accuracy"].tolist() == [_accuracy(Arch.from_dict(r["arch"]))["accuracy"]
                                       for r in _lines(tmp_path / "run") if r["status"] == "ok"]
    assert (ok["params"] > 0).all() and (ok["latency_ms"] > 0).all()
    assert ok["score"].tolist() == ok["accuracy"].tolist()
    # Each failing arch was tried FAILURE_LIMIT times, every other arch once.
    assert {h: flaky.calls[h] for h in df["hash"]} == {h: FAILURE_LIMIT if f else 1
                                                      for h, f in zip(df["hash"], first, strict=True)}
    assert df.attrs["best"][0]["metrics"]["accuracy"] == ok["accuracy"].max()


@pytest.mark.parametrize("how", ["sigint", "keyboard_interrupt"])
def test_a_stopped_function_search_resumes_with_no_arch_lost_or_repeated(lut_path: Path, tmp_path: Path,
                                                                          how: str) -> None:
    run = tmp_path / "run"
    options = {"measures": ["accuracy"], "hardware": lut_path, "run_dir": run, "strategy_config": {
        "population_size": 10, "sample_size": 3}}
    flaky = _Flaky(stop_at=25, how=how)
    with pytest.raises(Interrupted if how == "sigint" else KeyboardInterrupt):
        nas.search("proxylessnas", evaluator=flaky, trials=40, **options)
    before = _lines(run)
    assert 0 < len(before) < 40
    df = nas.search("proxylessnas", evaluator=flaky, trials=40, **options)
    assert df["trial"].tolist() == list(range(40)) and df["hash"].is_unique
    assert _lines(run)[: len(before)] == before  # the log only grew
    grown = nas.search("proxylessnas", evaluator=flaky, trials=50, **options)  # a budget may grow
    assert grown["hash"].tolist()[:40] == df["hash"].tolist() and grown["hash"].is_unique and len(grown) == 50
    # An arch is scored again only when the stop came before it was recorded (a KeyboardInterrupt).
    expected = {h: FAILURE_LIMIT if s == "failed" else 1 for h, s in zip(grown["hash"], grown["status"], strict=True)}
    again = [h for h in expected if flaky.calls[h] != expected[h]]
    assert again == ([] if how == "sigint" else [again[0]]) and len(flaky.calls) == 50
    if again:
        assert flaky.calls[again[0]] == 2 and (grown["status"] == "failed").any()


def test_a_space_object_and_its_config(tmp_path: Path) -> None:
    space = load_space("proxylessnas", {"width_mult": 0.5})
    df = nas.search(space, evaluator=lambda arch: {"score_b": 1.0}, measures=["score_b"], trials=5,
                    run_dir=tmp_path / "run")
    assert len(df) == 5 and (df["status"] == "ok").all() and df.attrs["objective"]["metric"] == "score_b"
    assert _lines(tmp_path / "run")[0]["arch"]["config"]["width_mult"] == 0.5


def test_a_metric_named_like_a_column_keeps_both(tmp_path: Path) -> None:
    df = nas.search("proxylessnas", evaluator=lambda arch: {"score": 0.5, "trial": 1}, measures=["score"],
                    trials=3, run_dir=tmp_path / "run")
    assert df["metrics.score"].tolist() == [0.5] * 3 and df["metrics.trial"].tolist() == [1] * 3
    assert df["trial"].tolist() == [0, 1, 2] and df["score"].tolist() == [0.5] * 3


@pytest.mark.parametrize(("kwargs", "needles"), [
    ({"evaluator": _accuracy, "measures": ["accuracy"], "metric": "top5"},
     ["--metric top5", "does not measure it", "accuracy"]),
    ({"evaluator": _accuracy, "measures": ["accuracy"], "strategy": "random", "objective": "pareto",
      "metrics": "accuracy:max,energy_mj:min"}, ["--metrics energy_mj", "does not measure it"]),
    ({"evaluator": "lut", "metric": "accuracy"}, ["--metric accuracy", "evaluator lut does not measure it"]),
    ({"evaluator": _accuracy, "measures": ["accuracy"], "objective": Objective(metric="top1")}, ["top1"]),
    ({"evaluator": _accuracy}, ["measures", "measures=('accuracy',)"]),
    ({"evaluator": "lut", "measures": ["accuracy"]}, ["measures", "only with a function evaluator"]),
    ({"evaluator": _accuracy, "measures": ["accuracy"], "num_cpus": 2}, ["address/num_cpus", "this process"]),
    ({"evaluator": _accuracy, "measures": ["accuracy"], "objective": Objective(), "metric": "accuracy"},
     ["metric", "not both"]),
    ({"evaluator": _accuracy, "measures": ["accuracy", "Top1!"]}, ["measures: 'Top1!' is no metric name"]),
    ({"evaluator": _accuracy, "measures": ["accuracy"], "strategy_config": {"population_size": 0}},
     ["strategy_config['population_size']"]),
    ({"evaluator": "lut", "progress": "yes"}, ["progress 'yes'"]),
    ({"evaluator": "lut", "scheduler": "asha"}, ["--scheduler asha", "--evaluator lut"]),
    ({"evaluator": "lut", "scheduler": {"grace_period": 0}}, ["--asha-grace-period", "scheduler.grace_period"]),
    ({"evaluator": "lut", "options": {"bogus": 1}}, ["unknown key 'bogus'"]),
    ({"evaluator": "train", "data": "mnist"}, ["--data (evaluator_config.data)", "cifar10, digits, npz"]),
])
def test_bad_input_is_refused_in_one_line_before_anything_is_written(lut_path: Path, tmp_path: Path, kwargs: dict,
                                                                     needles: list[str]) -> None:
    run = tmp_path / "run"
    with pytest.raises(UserError) as err:
        nas.search("proxylessnas", **{"trials": 10, "hardware": lut_path, **kwargs, "run_dir": run})
    _one_line(err, *needles)
    assert not run.exists()


def test_a_search_from_another_thread_is_refused(tmp_path: Path) -> None:
    import threading

    caught: list[BaseException] = []

    def call() -> None:
        try:
            nas.search("proxylessnas", evaluator=_accuracy, measures=["accuracy"], trials=2, run_dir=tmp_path / "run")
        except BaseException as err:  # handed to the test thread
            caught.append(err)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join(timeout=60)
    assert len(caught) == 1 and isinstance(caught[0], UserError), caught
    assert "main thread" in str(caught[0]) and not (tmp_path / "run").exists()


@pytest.mark.usefixtures("warm_cli")
def test_the_cli_refuses_the_function_evaluator(tmp_path: Path) -> None:
    line = assert_user_error(run_cli("search", "--evaluator", "function", "--trials", "3", "--run-dir",
                                     tmp_path / "run"), "evaluator_config.function", "nas.search")
    assert "Python" in line and not (tmp_path / "run").exists()


# -- a user's data set ---------------------------------------------------------------------------

def _data(n: int = 16, m: int = 6, resolution: int = 32, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 3, resolution, resolution)).astype(np.float32), rng.integers(0, 10, n),
            rng.normal(size=(m, 3, resolution, resolution)).astype(np.float32), rng.integers(0, 10, m))


def _torch_data() -> tuple:
    import torch

    return tuple(torch.from_numpy(a) for a in _data())


@pytest.mark.parametrize(("data", "needles"), [
    (lambda: (_data()[0][:, :, :16, :16], *_data()[1:]), ["data: x_train", "16x16", "resolution is 32"]),
    (lambda: (_data()[0][:, :1], *_data()[1:]), ["data: x_train", "(16, 1, 32, 32)", "(N, 3, 32, 32)"]),
    (lambda: (*_data()[:3], _data()[3][:4]), ["data: y_val", "(4,)", "6 integer labels"]),
    (lambda: (*_data()[:3], _data()[3] + 10), ["data: y_val", "label 1", "0..9"]),
    (lambda: (*_data()[:3], _data()[3].astype(np.float64)), ["data: y_val", "float64"]),
    (lambda: (_torch_data()[0].long(), *_torch_data()[1:]), ["data: x_train is int64", "float images"]),
    (lambda: {"x_train": _data()[0], "y_train": _data()[1], "x_val": _data()[2]}, ["y_val", "missing"]),
    (lambda: (_data()[0].tolist(), *_data()[1:]), ["data: x_train is a list", "numpy array or a torch tensor"]),
    (lambda: _data()[:3], ["data: ", "tuple or dict"]),
])
def test_a_bad_data_set_is_refused_in_one_line(tmp_path: Path, data, needles: list[str]) -> None:
    run = tmp_path / "run"
    with pytest.raises(UserError) as err:
        nas.search("proxylessnas", evaluator="train", data=data(), trials=2, run_dir=run)
    _one_line(err, *needles)
    assert not run.exists()


@pytest.mark.parametrize(("kwargs", "needles"), [
    ({"evaluator": "lut"}, ["data: only the train evaluator", "lut"]),
    ({"evaluator": _accuracy, "measures": ["accuracy"]}, ["data: only the train evaluator", "function"]),
    ({"data_dir": "somewhere"}, ["data_dir: only with a data set name"]),
    ({"evaluator_config": {"data": "digits"}}, ["data: given twice"]),
])
def test_data_arrays_go_with_the_train_evaluator_only(tmp_path: Path, kwargs: dict, needles: list[str]) -> None:
    with pytest.raises(UserError) as err:
        nas.search("proxylessnas", **{"evaluator": "train", **kwargs}, data=_data(), trials=2,
                   run_dir=tmp_path / "run")
    _one_line(err, *needles)
    assert not (tmp_path / "run").exists()


def test_a_refused_search_removes_the_data_it_wrote(lut_path: Path, tmp_path: Path) -> None:
    """Checked by the plan after the data file is written: an unknown metric. In a new run dir nothing stays; in
    a run dir that is in use nothing of this call stays."""
    run = tmp_path / "run"
    with pytest.raises(UserError) as err:
        nas.search("proxylessnas", evaluator="train", data=_data(), metric="top5", trials=2, run_dir=run)
    _one_line(err, "--metric top5", "evaluator train does not measure it")
    assert not run.exists()
    from nas.run_dir import RunDir

    with RunDir(run):  # another search holds the run dir
        with pytest.raises(UserError) as err:
            nas.search("proxylessnas", evaluator="train", data=_data(), trials=2, run_dir=run)
        _one_line(err, "in use by another search")
        assert sorted(p.name for p in run.iterdir()) == [".lock"]


def test_a_full_disk_while_writing_the_data_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(handle, **arrays):
        handle.write(b"PK" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(NasError) as err:
        nas.search("proxylessnas", evaluator="train", data=_data(), trials=2, run_dir=tmp_path / "run")
    assert "disk" in str(err.value).lower() and not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.exhaustive  # two Ray clusters in a row; the arrays' checks and the npz loader run in make test
@pytest.mark.usefixtures("warm_cli")
def test_a_user_data_set_trains_archs_and_its_run_dir_resumes_from_the_cli(lut_path: Path, tmp_path: Path) -> None:
    """Ray workers read the arrays from the run dir's `.npz`; the CLI resumes the run with `--data npz`; other
    arrays in the same run dir are another search."""
    run = tmp_path / "run"
    options = {"evaluator": "train", "hardware": lut_path, "run_dir": run, "num_cpus": 2,
               "evaluator_config": {"epochs": 1}}
    df = nas.search("proxylessnas", data=_torch_data(), trials=1, **options)
    first = _lines(run)
    assert (df["status"] == "ok").all(), df["error"].tolist()
    assert df["accuracy"].between(0, 1).all() and set((df["accuracy"] * 6).round(6) % 1) == {0}  # of 6 images
    (data_file,) = run.glob("data-*.npz")
    with np.load(data_file, allow_pickle=False) as npz:
        assert all(np.array_equal(npz[k], np.asarray(a)) for k, a in zip(("x_train", "y_train", "x_val", "y_val"),
                                                                          _data(), strict=True))
    done = run_cli("search", "--space", "proxylessnas", "--evaluator", "train", "--data", "npz", "--data-dir",
                   data_file, "--epochs", "1", "--hardware", lut_path, "--trials", "2", "--num-cpus", "2",
                   "--run-dir", run, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["trial"] for r in _lines(run)] == [0, 1] and _lines(run)[:1] == first
    assert _lines(run)[1]["status"] == "ok" and 0 <= _lines(run)[1]["metrics"]["accuracy"] <= 1
    with pytest.raises(UserError) as err:
        nas.search("proxylessnas", data=_data(seed=1), trials=2, **options)
    _one_line(err, "holds a different search", "evaluator_config")
    assert list(run.glob("data-*.npz")) == [data_file]


@pytest.mark.usefixtures("warm_cli")
def test_the_cli_refuses_a_bad_npz_file_before_anything_is_written(tmp_path: Path) -> None:
    x, y, xv, yv = _data()
    np.savez(tmp_path / "d.npz", x_train=x[:, :, :28, :28], y_train=y, x_val=xv[:, :, :28, :28], y_val=yv)
    proc = run_cli("search", "--space", "proxylessnas", "--evaluator", "train", "--data", "npz", "--data-dir",
                   tmp_path / "d.npz", "--trials", "2", "--run-dir", tmp_path / "run")
    assert_user_error(proc, "--data-dir", "x_train: images are 28x28", "resolution is 32")
    assert not (tmp_path / "run").exists()
