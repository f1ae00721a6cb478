"""The run dir under faults: full disks (a real small tmpfs, and a write that fails partway),
damaged or shrunk trial logs, stale temp files, and budgets that may grow but not shrink."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nas.errors import UserError
from nas.run_dir import DiskFullError, RunDir, arch_hash, remove_stale_temps, write_atomic


def _record(trial: int) -> dict:
    """A trial line as `Search.record` writes it (the arch need not be of a real space here)."""
    arch = {"space": "proxylessnas", "choices": {"d": trial}, "config": {}}
    return {"trial": trial, "arch": arch, "hash": arch_hash(arch), "metrics": {"macs": trial}, "status": "ok",
            "score": float(trial), "feasible": True, "node": "n", "host": "h", "pid": 1,
            "finished_at": "2026-01-01T00:00:00+00:00"}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a real full disk. Skipped where tmpfs cannot be mounted (not root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(directory: Path) -> Path:
    """Fill the disk under `directory` to the last byte; returns the filler file (delete it to free space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (4096, 1):  # pages, then the last bytes
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as err:
                    assert err.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def test_append_on_a_full_disk_leaves_no_torn_piece_and_resumes(small_disk: Path) -> None:
    with RunDir(small_disk / "run") as rd:
        rd.append_trials([_record(i) for i in range(10)])
        before = rd.trials_path.read_bytes()
        filler = _fill(small_disk)
        with pytest.raises(DiskFullError, match="disk full while writing .*trials.jsonl"):
            rd.append_trials([_record(i) for i in range(10, 400)])
        assert rd.trials_path.read_bytes() == before  # the torn piece was cut off
        filler.unlink()
        rd.append_trials([_record(10)])
    with RunDir(small_disk / "run") as rd:
        assert [r["trial"] for r in rd.read_trials()] == list(range(11))


def test_append_failing_partway_is_cut_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_write = os.write

    def half_then_fail(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    with RunDir(tmp_path) as rd:
        rd.append_trials([_record(0), _record(1)])
        before = rd.trials_path.read_bytes()
        monkeypatch.setattr("nas.run_dir.os.write", half_then_fail)
        with pytest.raises(DiskFullError):
            rd.append_trials([_record(2), _record(3)])
        monkeypatch.undo()
        assert rd.trials_path.read_bytes() == before
        rd.append_trials([_record(2)])
        assert [r["trial"] for r in rd.read_trials()] == [0, 1, 2]


def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_no_temp(small_disk: Path) -> None:
    target = small_disk / "state.json"
    write_atomic(target, "old")
    filler = _fill(small_disk)
    with pytest.raises(DiskFullError, match="previous version is unchanged"):
        write_atomic(target, "x" * 100_000)
    assert target.read_text() == "old"
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "state.json"]
    filler.unlink()


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "best.json"
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".best.json.{dead.pid}.abc.tmp"
    live = tmp_path / f".best.json.{os.getpid()}.def.tmp"
    stale.write_text("{")
    live.write_text("{")
    write_atomic(target, "[]")
    assert not stale.exists() and live.exists() and target.read_text() == "[]"
    assert remove_stale_temps(target) == []


def test_torn_last_line_is_ignored_then_cut_by_the_next_append(tmp_path: Path) -> None:
    with RunDir(tmp_path) as rd:
        rd.append_trials([_record(0)])
    with open(tmp_path / "trials.jsonl", "a") as handle:
        handle.write('{"trial": 1, "arch": {"spa')
    with RunDir(tmp_path) as rd:
        assert len(rd.read_trials()) == 1
        rd.append_trials([_record(1)])
        assert [r["trial"] for r in rd.read_trials()] == [0, 1]


@pytest.mark.parametrize(("damage", "needle"), [
    (lambda lines: lines[:1] + lines[2:], "line 2: trial number 2, expected 1"),
    (lambda lines: lines[:1] + ["not json"] + lines[2:], "line 2 is not valid JSON"),
    (lambda lines: lines[:1] + [lines[1].replace('"d":1', '"d":7')] + lines[2:], "does not match its hash"),
    (lambda lines: lines[:1] + ['{"trial": 1}'] + lines[2:], "not a trial record"),
    (lambda lines: ["[" * 100_000] + lines[1:], "line 1: JSON nested deeper than 50 levels"),
])
def test_a_damaged_log_is_refused_naming_the_line(tmp_path: Path, damage, needle: str) -> None:
    with RunDir(tmp_path) as rd:
        rd.append_trials([_record(i) for i in range(3)])
    lines = (tmp_path / "trials.jsonl").read_text().splitlines()
    (tmp_path / "trials.jsonl").write_text("\n".join(damage(lines)) + "\n")
    with RunDir(tmp_path) as rd, pytest.raises(UserError, match=needle):
        rd.read_trials()


@pytest.mark.parametrize("text", ["not json", "[]", '{"n_recorded": "x", "strategy": {}}'])
def test_a_damaged_state_is_refused(tmp_path: Path, text: str) -> None:
    (tmp_path / "strategy.json").write_text(text)
    with RunDir(tmp_path) as rd, pytest.raises(UserError, match="strategy.json"):
        rd.read_state()


def test_budget_may_grow_but_not_shrink(tmp_path: Path) -> None:
    config = {"space": "proxylessnas", "trials": 100, "seed": 0}
    with RunDir(tmp_path) as rd:
        rd.write_config(config)
        before = rd.config_path.read_bytes()
        with pytest.raises(UserError, match="--trials 10: .* budget of 100; a budget may grow but not shrink"):
            rd.check_config({**config, "trials": 10})
        assert rd.config_path.read_bytes() == before
        rd.check_config({**config, "trials": 200})
        with pytest.raises(UserError, match=r"holds a different search \(seed"):
            rd.check_config({**config, "seed": 1})
        rd.write_config({**config, "trials": 200})
        assert json.loads(json.dumps(rd.read_config()))["trials"] == 200


def test_write_atomic_gives_a_new_file_the_umask_mode_and_keeps_a_replaced_files_mode(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "new.yaml", "a: 1\n")
        assert (tmp_path / "new.yaml").stat().st_mode & 0o777 == 0o640  # 0666 less the umask, not mkstemp's 0600
        private = tmp_path / "private.yaml"
        private.write_text("a: 1\n")
        private.chmod(0o600)
        write_atomic(private, "a: 2\n")
        assert private.stat().st_mode & 0o777 == 0o600 and private.read_text() == "a: 2\n"
    finally:
        os.umask(old)
