"""LatencyTable files, prediction, matching and lookup; timer argument checks."""

from __future__ import annotations

import hashlib
import itertools
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nas.errors import UserError
from nas.hardware.onnx_timers import OnnxRuntimeTimer
from nas.hardware.table import Correction, Entry, Figures, LatencyTable, Metadata, Report, TableFile
from nas.hardware.timers import CpuTimer, CudaTimer
from nas.registry import TIMERS

from .conftest import FakeConfig, FakeSpace


def make_table(space, batch: int = 1, drop: int = 0, corrected: bool = True) -> LatencyTable:
    keys = space.all_latency_keys()[drop:]
    entries = {k: Entry(mean=0.1 * (i + 1), std=0.01, count=90) for i, k in enumerate(keys)}
    correction = None
    if corrected:
        correction = Correction(method="ridge", intercept_ms=0.05,
                                entries={k: 1.5 * e.mean for k, e in entries.items()}, params={"scale": 1.5})
    meta = Metadata(space=space.name, space_config=space.config.model_dump(mode="json"),
                    device_id="test-cpu-torch-t1-fp32-b1", backend="cpu", hardware="test cpu", batch=batch,
                    dtype="fp32", threads=1, versions={"torch": torch.__version__},
                    measured_at="2025-01-01T00:00:00+00:00")
    return LatencyTable(TableFile(metadata=meta, entries=entries, correction=correction))


def test_round_trip(space, tmp_path):
    table = make_table(space)
    path = tmp_path / "dev" / "fake-r8.yaml"
    table.save(path)
    loaded = LatencyTable.load(path, space)
    assert loaded.data == table.data
    assert loaded.source == str(path)
    arch = space.sample(np.random.default_rng(0))
    assert loaded.predict(arch) == pytest.approx(LatencyTable(table.data, space=space).predict(arch))
    text = path.read_text()
    assert text == yaml.safe_dump(yaml.safe_load(text), sort_keys=True)


def test_predict_is_intercept_plus_sum(space):
    table = make_table(space)
    arch = space.sample(np.random.default_rng(1))
    keys = space.latency_keys(arch)
    expected = table.correction.intercept_ms + sum(table.correction.entries[k] for k in keys)
    assert LatencyTable(table.data, space=space).predict(arch) == pytest.approx(expected)
    assert table.predict_naive(keys) == pytest.approx(sum(table.entries[k].mean for k in keys))
    naive = make_table(space, corrected=False)
    assert naive.predict_keys(keys) == pytest.approx(naive.predict_naive(keys))


def test_lower_bound_is_the_cheapest_arch(space):
    """The fake space has 81 archs: the bound equals the cheapest prediction, found exhaustively."""
    table = LatencyTable(make_table(space).data, space=space)
    names = [d.name for d in space.decisions()]
    choices = itertools.product(*(d.choices for d in space.decisions()))
    cheapest = min(table.predict(space.make_arch(dict(zip(names, c, strict=True)))) for c in choices)
    assert table.lower_bound() == pytest.approx(cheapest)
    negative = make_table(space).replace(correction=table.correction.model_copy(update={"intercept_ms": -5.0}))
    assert negative.lower_bound(space) == pytest.approx(cheapest - 5.05) and negative.lower_bound(space) < 0


def test_predict_is_fast(space):
    table = make_table(space)
    keys = space.latency_keys(space.sample(np.random.default_rng(2))) * 5
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        table.predict_keys(keys)
    assert n / (time.perf_counter() - start) > 50_000


def test_failed_write_keeps_old_file(space, tmp_path, monkeypatch):
    path = tmp_path / "fake-r8.yaml"
    make_table(space).save(path)
    before = path.read_bytes()

    import nas.run_dir

    def broken_fsync(fd):  # the new text is in the temp file, not yet renamed over the table
        raise OSError("disk full")

    monkeypatch.setattr(nas.run_dir.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        make_table(space, batch=4).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda text: text[: len(text) // 2], "fake-r8.yaml"),
        (lambda text: "metadata: [unclosed\n", "malformed YAML"),
        (lambda text: "", "metadata"),
        (lambda text: "- just\n- a list\n", "not a latency table"),
        (lambda text: text.replace("count: 90", "count: many", 1), "count"),
        (lambda text: text + "extra_key: 1\n", "extra_key"),
    ],
    ids=["truncated", "malformed", "empty", "list", "bad-value", "unknown-key"],
)
def test_corrupt_file_is_user_error(space, tmp_path, mutate, message):
    path = tmp_path / "fake-r8.yaml"
    make_table(space).save(path)
    path.write_text(mutate(path.read_text()))
    with pytest.raises(UserError, match=message) as err:
        LatencyTable.load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_correction_must_cover_entries(space):
    table = make_table(space)
    entries = dict(table.correction.entries)
    entries.pop(next(iter(entries)))
    with pytest.raises(UserError, match="correction keys differ"):
        table.replace(correction=table.correction.model_copy(update={"entries": entries}))


def test_missing_keys_are_listed(space):
    table = make_table(space, drop=2)
    missing = sorted(set(space.all_latency_keys()[:2]))
    arch = space.make_arch({f"b{i}.op": "k3" if i % 2 else "k5" for i in range(1, 5)})
    with pytest.raises(UserError, match="lacks 2 of the 4 keys of arch") as err:
        table.predict_keys(space.latency_keys(arch), what=f"arch {arch.short_hash}")
    for key in missing:
        assert key in str(err.value)
    assert "nas profile --space fake" in str(err.value)
    with pytest.raises(UserError, match="lacks 2 of the 4 keys of space fake"):  # refused when bound to its space
        LatencyTable(table.data, space=space)


def test_other_space_config_or_batch_is_refused(space):
    table = make_table(space)
    table.check_matches(space, batch=1)
    with pytest.raises(UserError, match="measured at batch 1, not 8"):
        table.check_matches(space, batch=8)
    with pytest.raises(UserError, match="resolution=8 .want 16."):
        table.check_matches(FakeSpace(FakeConfig(resolution=16)))

    class OtherSpace(FakeSpace):
        name = "other"

    with pytest.raises(UserError, match="for space 'fake', not 'other'"):
        table.check_matches(OtherSpace(FakeConfig()))
    arch16 = FakeSpace(FakeConfig(resolution=16)).sample(np.random.default_rng(0))
    with pytest.raises(UserError, match="table is for space fake"):
        table.predict(arch16)


def test_cuda_timer_without_gpu_is_user_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(UserError, match="no CUDA GPU on this machine; allowed here: cpu, onnxruntime"):
        CudaTimer()


@pytest.mark.parametrize("kwargs", [{"batch": 0}, {"batch": -2}, {"threads": 0}])
def test_non_positive_batch_or_threads_is_user_error(kwargs):
    flag = "--" + next(iter(kwargs))
    with pytest.raises(UserError, match=flag):
        CpuTimer(**kwargs)
    with pytest.raises(UserError, match="--batch"):
        CpuTimer().time(torch.nn.ReLU(), (1, 2, 2), batch=0)


def test_unknown_timer_lists_known():
    with pytest.raises(UserError, match="unknown device 'tpu'; known: cpu, cuda, onnxruntime"):
        TIMERS.get("tpu")


@pytest.mark.parametrize(
    ("timer_cls", "kwargs"),
    [(CpuTimer, {}), (CpuTimer, {"reference": False, "threads": 2}), (OnnxRuntimeTimer, {})],
    ids=["cpu", "cpu-plain-t2", "onnxruntime"],
)
def test_timers_measure(timer_cls, kwargs):
    threads_before = torch.get_num_threads()
    timer = timer_cls(**{"threads": 1, "batch": 2, "blocks": 3, "block_ms": 1.0, "warmup_ms": 1.0, **kwargs})
    module = torch.nn.Conv2d(4, 4, 3, padding=1).train()
    timing = timer.time(module, (4, 8, 8))
    assert timing.mean_ms > 0 and timing.std_ms >= 0 and timing.count >= 3
    assert module.training and torch.get_num_threads() == threads_before
    assert timer.device_id.endswith(f"-t{timer.threads}-fp32-b2") and timer.device_id == timer.device_id.lower()
    assert Path(timer.device_id).name == timer.device_id
    assert "torch" in timer.versions()
    protocol = timer.protocol()
    assert protocol["blocks"] == 3 and protocol["reference"] is timer.reference
    assert (protocol.get("reference_ms", 0) > 0) is timer.reference


def test_slow_modules_are_timed_within_the_budget():
    """A module slower than a block gets one call per block and only as many blocks as the budget holds."""
    slow = torch.nn.Sequential(*[torch.nn.Conv2d(32, 32, 3, padding=1) for _ in range(4)])
    timer = CpuTimer(blocks=50, block_ms=0.5, warmup_ms=0.0, budget_ms=1.0, reference=False)
    assert timer.time(slow, (32, 64, 64)).count == 11  # the minimum number of blocks, one call each
    generous = CpuTimer(blocks=9, block_ms=0.5, warmup_ms=0.0, budget_ms=1e6, reference=False)
    assert generous.time(slow, (32, 64, 64)).count == 9


def test_protocol_records_the_allocator_and_refuses_a_bad_dtype():
    timer = CpuTimer()
    assert timer.protocol()["allocator"].startswith("glibc")
    with pytest.raises(UserError, match="--dtype 'fp16' is not supported by device 'cpu'; allowed: fp32"):
        CpuTimer(dtype="fp16")


# -- poisoned tables: refused when loaded, one line naming file, field, value and fix --------------

@pytest.mark.parametrize(
    ("edit", "field", "value"),
    [
        (lambda d: d["correction"]["entries"].update({next(iter(d["correction"]["entries"])): float("nan")}),
         "correction.entries.", "nan"),
        (lambda d: d["correction"].update(intercept_ms=float("inf")), "correction.intercept_ms", "inf"),
        (lambda d: d["entries"][next(iter(d["entries"]))].update(mean=float("nan")), "entries.", "nan"),
        (lambda d: d["validation"]["points"][1].__setitem__(0, float("-inf")), "validation.points[1][0]", "-inf"),
        (lambda d: d["validation"].update(spearman=float("nan")), "validation.spearman", "nan"),
    ],
    ids=["correction-entry-nan", "intercept-inf", "entry-mean-nan", "point-inf", "spearman-nan"],
)
def test_non_finite_numbers_are_refused(space, tmp_path, edit, field, value):
    path = tmp_path / "fake-r8.yaml"
    data = yaml.safe_load(yaml.safe_dump(_with_validation(make_table(space)).data.model_dump()))  # plain lists
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=True))
    with pytest.raises(UserError) as err:
        LatencyTable.load(path)
    message = str(err.value)
    assert str(path) in message and field in message and f"is {value}" in message, message
    assert "re-profile" in message and "nas profile" in message and "\n" not in message
    with pytest.raises(UserError, match=re.escape(field)):  # built in memory: refused alike
        LatencyTable(TableFile.model_validate(data))


def test_a_negative_prediction_is_refused_once_the_space_is_known(space, tmp_path):
    """intercept -1000 made every arch cost about -988 ms; loading it for its space refuses it."""
    path = tmp_path / "fake-r8.yaml"
    table = make_table(space)
    poisoned = table.replace(correction=table.correction.model_copy(update={"intercept_ms": -1000.0}))
    poisoned.save(path)
    assert LatencyTable.load(path).lower_bound(space) < -990  # without a space nothing can be checked yet
    with pytest.raises(UserError) as err:
        LatencyTable.load(path, space)
    message = str(err.value)
    for needle in (str(path), "predicts -99", "cheapest fake arch", "correction.intercept_ms = -1000",
                   "re-profile it with `nas profile --space fake"):
        assert needle in message, message
    with pytest.raises(UserError, match="correction.intercept_ms = -1000"):
        LatencyTable(poisoned.data, space=space)


def test_a_poisoned_table_is_refused_by_resolve_and_predict(lut_path, tmp_path):
    """The same through `resolve_table` (what a search does) and through `predict` of an unbound table."""
    from nas.hardware.store import resolve_table
    from nas.space import load_space

    data = yaml.safe_load(lut_path.read_text())
    data["correction"] = {"method": "test", "intercept_ms": -1000.0, "entries": {k: e["mean"] for k, e in
                                                                                 data["entries"].items()}}
    path = tmp_path / "proxylessnas-r32.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=True))
    space = load_space("proxylessnas")
    with pytest.raises(UserError, match="must predict a positive time") as err:
        resolve_table(str(path), space, batch=1)
    assert "--resolution 32 --device cpu" in str(err.value)
    unbound = LatencyTable.load(path)
    with pytest.raises(UserError, match="must predict a positive time"):
        unbound.predict(space.sample(np.random.default_rng(0)))


def test_table_keeps_its_path_and_sha256(space, tmp_path):
    path = tmp_path / "dev" / "fake-r8.yaml"
    table = make_table(space)
    assert table.path is None and table.sha256 is None
    table.save(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (table.path, table.sha256) == (path.resolve(), digest)
    loaded = LatencyTable.load(path)
    assert (loaded.path, loaded.sha256) == (path.resolve(), digest)
    assert "rescaled" not in path.read_text()  # a table never rescaled is written as before the field existed


def _with_validation(table: LatencyTable) -> LatencyTable:
    figures = Figures(mape=1.0, within_5=0.9, within_10=1.0, spearman=0.99)
    report = Report(**figures.model_dump(), n_archs=3, noise=1.0, naive=figures, passes=True, seed=0,
                    measured_at="2025-01-01T00:00:00+00:00", points=[(1.0, 1.01, 0.9), (2.0, 2.1, 1.8),
                                                                     (3.0, 2.9, 2.5)])
    return table.replace(validation=report)
