"""Profiling end to end on a tiny fake space, validation re-runs and the correction fit."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from nas.errors import NasError, UserError
from nas.evaluate.metrics import count_macs, count_params
from nas.hardware.profile import (
    _draw,
    _interleave,
    _log_report,
    fit_none,
    fit_ridge,
    missed_criteria,
    profile,
    refit,
    validate,
)
from nas.hardware.table import Entry, Figures, LatencyTable, Report
from nas.hardware.timers import CpuTimer
from nas.run_dir import DiskFullError

REPORT_FIELDS = {"n_archs", "mape", "within_5", "within_10", "spearman", "noise", "naive", "passes",
                 "seed", "measured_at", "seconds", "points"}


@pytest.fixture
def profiled(space, timer, tmp_path):
    stages = []
    path = tmp_path / timer.device_id / "fake-r8.yaml"
    table = profile(space, timer, 1, path, n_validate=4, seed=3, n_fit=10,
                    progress=lambda stage, done, total: stages.append((stage, done, total)))
    return table, path, stages


def test_profile_writes_a_complete_table(space, timer, profiled):
    table, path, stages = profiled
    loaded = LatencyTable.load(path, space, batch=1)
    assert loaded.data == table.data
    assert set(loaded.entries) == set(space.all_latency_keys())
    meta = loaded.metadata
    assert (meta.space, meta.device_id, meta.backend, meta.batch, meta.threads, meta.dtype) == (
        "fake", timer.device_id, "cpu", 1, 1, "fp32")
    assert meta.space_config == {"resolution": 8, "num_classes": 4, "width": 8}
    assert "torch" in meta.versions and meta.protocol["blocks"] == 3 and meta.protocol["reference_ms"] > 0
    network = meta.protocol["network_reference"]
    assert network["ms"] > 0 and space.make_arch(network["choices"]) == space.sample(np.random.default_rng([3, 2]))
    for key, entry in loaded.entries.items():
        unit = space.unit(key)
        assert entry.params == count_params(unit.module) and entry.macs == count_macs(unit.module, unit.input_shape)

    report = loaded.validation.model_dump()
    assert set(report) == REPORT_FIELDS
    assert set(report["naive"]) == {"mape", "within_5", "within_10", "spearman"}
    assert report["n_archs"] == 4 and report["seed"] == 3
    assert 0 <= report["within_5"] <= report["within_10"] <= 1 and report["mape"] >= 0 and report["noise"] >= 0
    assert report["seconds"] > 0 and len(report["points"]) == 4
    measured, predicted, naive = np.array(report["points"]).T
    assert report["mape"] == pytest.approx(np.mean(np.abs(predicted - measured) / measured) * 100, rel=1e-3)

    correction = loaded.correction
    assert correction.method == "ridge" and len(correction.fit_ms) == 10 and min(correction.fit_ms) > 0
    assert correction.params["n_fit"] == 10 and correction.params["seed"] == 3
    for arch in [space.sample(np.random.default_rng(i)) for i in range(5)]:
        expected = correction.intercept_ms + sum(correction.entries[k] for k in space.latency_keys(arch))
        assert loaded.predict(arch) == pytest.approx(expected, rel=1e-12)

    assert [s for s in dict.fromkeys(stage for stage, _, _ in stages)] == ["units", "archs", "validate again"]
    assert stages[-1] == ("validate again", 4, 4) and ("archs", 14, 14) in stages


def test_validate_rewrites_only_the_report(space, profiled):
    table, path, _ = profiled
    loaded = LatencyTable.load(path, space)
    timer = CpuTimer(blocks=3, block_ms=1.0, warmup_ms=1.0)
    report = validate(loaded, space, timer, n=3, seed=11)
    assert set(report) == REPORT_FIELDS and report["n_archs"] == 3 and report["seed"] == 11
    again = LatencyTable.load(path)
    assert again.validation.model_dump() == report
    assert again.entries == table.entries and again.correction == table.correction
    assert timer.reference_ms == table.metadata.protocol["reference_ms"]
    network = timer._reference_runs.keys() - {timer.unit_reference.name}
    assert network == {f"arch-{space.make_arch(table.metadata.protocol['network_reference']['choices']).short_hash}"}


def test_refit_reuses_the_measurements(space, profiled):
    table, path, _ = profiled
    same = refit(table, space)
    assert same.correction == table.correction and same.validation.points == table.validation.points
    assert same.validation.mape == pytest.approx(table.validation.mape, rel=1e-4)  # from the stored, rounded points
    naive = refit(table, space, fit_none)
    measured, predicted, naive_points = np.array(naive.validation.points).T
    assert measured.tolist() == [m for m, _, _ in table.validation.points]
    assert predicted == pytest.approx(naive_points, rel=1e-5)
    assert naive.validation.mape == pytest.approx(table.validation.naive.mape, rel=1e-3)
    assert LatencyTable.load(path).data == table.data  # refit saves nothing
    with pytest.raises(UserError, match="refit needs"):
        refit(table.replace(correction=None), space)


def test_validation_archs_are_held_out(space):
    fit = _draw(space, np.random.default_rng([3, 0]), 10, set())
    held_out = _draw(space, np.random.default_rng([3, 1]), 30, {a.hash for a in fit})
    assert len({a.hash for a in fit + held_out}) == 40


@pytest.mark.parametrize(("n_first", "n_second"), [(60, 100), (80, 100), (3, 6), (0, 5), (5, 1)])
def test_interleave_spreads_both_lists_evenly(n_first, n_second):
    first, second = [("f", i) for i in range(n_first)], [("s", i) for i in range(n_second)]
    merged = _interleave(first, second)
    assert [x for x in merged if x[0] == "f"] == first and [x for x in merged if x[0] == "s"] == second
    share = n_first / (n_first + n_second)
    for k in range(1, len(merged) + 1):  # every prefix holds its share of each list, to within one item
        assert abs(sum(x[0] == "f" for x in merged[:k]) - k * share) <= 1


def test_profile_refuses_bad_arguments_before_timing(space, timer, tmp_path):
    with pytest.raises(NasError, match="batch 2"):
        profile(space, timer, 2, tmp_path / "t.yaml")
    with pytest.raises(UserError, match="--n-validate must be at least 2"):
        profile(space, timer, 1, tmp_path / "t.yaml", n_validate=1)
    assert not (tmp_path / "t.yaml").exists()


def test_fit_ridge_recovers_intercept_and_scale():
    rng = np.random.default_rng(0)
    entries = {f"k{i}": Entry(mean=float(v), std=0.0, count=1) for i, v in enumerate(rng.uniform(0.1, 1.0, 12))}
    rows = []
    for _ in range(40):
        keys = list(rng.choice(list(entries), size=6, replace=True))
        rows.append((keys, 0.3 + 1.4 * sum(entries[k].mean for k in keys)))
    fitted = fit_ridge(entries, rows)
    for keys, measured in rows:
        predicted = fitted.intercept_ms + sum(fitted.entries[k] for k in keys)
        assert predicted == pytest.approx(measured, rel=0.01)
    assert fitted.params["scale"] == pytest.approx(1.4, rel=0.05)
    assert min(fitted.entries.values()) >= 0
    assert fitted.fit_ms == pytest.approx([ms for _, ms in rows], rel=1e-5)
    assert fit_none(entries, rows).entries == {k: e.mean for k, e in entries.items()}


def test_fit_ridge_learns_the_cost_of_weights_and_a_negative_intercept():
    """Isolated timings blind to weight traffic, network time super-linear in size: stage 1 recovers both."""
    rng = np.random.default_rng(1)
    entries = {f"k{i}": Entry(mean=float(rng.uniform(0.1, 1.0)), std=0.0, count=1, params=int(p), macs=int(m))
               for i, (p, m) in enumerate(zip(rng.integers(1e4, 2e6, 16), rng.integers(1e5, 1e7, 16), strict=True))}
    rows = []
    for _ in range(60):
        keys = list(rng.choice(list(entries), size=8, replace=True))
        rows.append((keys, -0.5 + sum(0.8 * entries[k].mean + 0.3 * entries[k].params / 1e6 for k in keys)))
    fitted = fit_ridge(entries, rows)
    assert fitted.intercept_ms == pytest.approx(-0.5, abs=0.05)
    assert fitted.params["scale"] == pytest.approx(0.8, rel=0.05)
    assert fitted.params["ms_per_mparam"] == pytest.approx(0.3, rel=0.05)
    naive_only = {k: e.model_copy(update={"params": None, "macs": None}) for k, e in entries.items()}
    worse = fit_ridge(naive_only, rows)
    assert fitted.params["cv_mape"] < worse.params["cv_mape"] / 5


def test_failing_report_warns_loudly(caplog):
    figures = Figures(mape=20.0, within_5=0.2, within_10=0.4, spearman=0.7)
    report = Report(**figures.model_dump(), n_archs=4, noise=3.0, naive=figures, passes=False, seed=0,
                    measured_at="2025-01-01T00:00:00+00:00")
    with caplog.at_level(logging.WARNING, logger="nas.hardware.profile"):
        _log_report(report, "dev")
    assert "FAILS ITS ACCURACY BAR" in caplog.text


# -- a full disk, killed writers, a missed bar -------------------------------------------------------

class _FullDisk:
    """A file handle whose `write` writes half of the text, then fails as a full disk does."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()

    def write(self, text: str) -> None:
        self.handle.write(text[: len(text) // 2])
        self.handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")


def _fill_disk_under(directory: Path, monkeypatch) -> None:
    """Writes of temp files under `directory` hit a full disk partway; writes elsewhere succeed."""
    import nas.run_dir

    real = os.fdopen

    def fdopen(fd, *args, **kwargs):
        handle = real(fd, *args, **kwargs)
        return _FullDisk(handle) if os.readlink(f"/proc/self/fd/{fd}").startswith(str(directory)) else handle

    monkeypatch.setattr(nas.run_dir.os, "fdopen", fdopen)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_full_disk_keeps_the_old_table_and_the_measurements(space, timer, tmp_path, monkeypatch):
    full = tmp_path / "full" / timer.device_id
    path = full / "fake-r8.yaml"
    old = profile(space, timer, 1, path, n_validate=2, seed=3, n_fit=4)
    before = path.read_bytes()
    stale = [full / f".fake-r8.yaml.{_dead_pid()}.tmp", full / ".fake-r8.yaml.x8k2p1.tmp"]  # killed writers
    live = full / f".fake-r8.yaml.{os.getpid()}.tmp"
    for tmp in (*stale, live):
        tmp.write_text("half a table")
    _fill_disk_under(full, monkeypatch)
    with pytest.raises(DiskFullError) as err:
        profile(space, timer, 1, path, n_validate=2, seed=4, n_fit=4)
    message = str(err.value)
    assert "\n" not in message and "disk full" in message and "nothing was written there" in message, message
    assert path.read_bytes() == before
    assert sorted(p.name for p in full.iterdir()) == sorted([path.name, live.name])  # no temp file of ours left
    spare = Path(message.split("saved to ")[1].split(":")[0])
    kept = LatencyTable.load(spare, space)
    assert set(kept.entries) == set(old.entries) and kept.validation.seed == 4
    assert f"move it to {path}" in message


def test_profile_start_removes_temp_files_of_killed_writers(tmp_path):
    from nas.cli_profile import _check_writable

    path = tmp_path / "dev" / "fake-r8.yaml"
    path.parent.mkdir()
    stale = path.parent / f".fake-r8.yaml.{_dead_pid()}.tmp"
    live = path.parent / f".fake-r8.yaml.{os.getpid()}.tmp"
    other = path.parent / f".other-r8.yaml.{_dead_pid()}.tmp"
    for tmp in (stale, live, other):
        tmp.write_text("")
    _check_writable(path)
    assert not stale.exists() and live.exists() and other.exists()


def test_missed_criteria_name_the_failing_one():
    def figures(within_10: float, spearman: float) -> Figures:
        return Figures(mape=5.0, within_5=0.5, within_10=within_10, spearman=spearman)

    assert missed_criteria(figures(0.97, 0.96)) == []
    assert missed_criteria(figures(0.91, 0.96)) == ["within ±10%: 91% < 95%"]
    assert missed_criteria(figures(0.99, 0.93)) == ["Spearman: 0.930 < 0.95"]
    assert len(missed_criteria(figures(0.5, float("nan")))) == 2
    assert missed_criteria(figures(0.91, 0.96).model_dump()) == ["within ±10%: 91% < 95%"]


def test_print_report_says_which_criterion_failed(capsys):
    from nas.cli_profile import _print_report

    naive = {"mape": 30.0, "within_5": 0.0, "within_10": 0.0, "spearman": 0.9}
    report = {"mape": 6.0, "within_5": 0.6, "within_10": 0.91, "spearman": 0.97, "noise": 2.0, "n_archs": 100,
              "naive": naive, "passes": False}
    _print_report(report, "dev", Path("t.yaml"))
    err = capsys.readouterr().err
    assert "misses the accuracy bar: within ±10%: 91% < 95%" in err and "Spearman" not in err
