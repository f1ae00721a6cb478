"""The host-speed cache: a reference timing is reused for `TTL_S` per table and host, and a bad cache file is
ignored, never an error."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from nas.hardware import host_speed
from nas.hardware.host_speed import TTL_S, remembered


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "host_speed.json"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


def counting(result: tuple[float, float] = (6.0, 5.0)):
    calls = []

    def measure() -> tuple[float, float]:
        calls.append(1)
        return result
    return measure, calls


def test_a_timing_is_reused_within_the_ttl_and_measured_again_after(cache: Path, monkeypatch) -> None:
    clock = Clock()
    monkeypatch.setattr(host_speed.time, "time", clock.time)
    measure, calls = counting()
    assert remembered("a" * 64, measure) == (6.0, 5.0)
    clock.now += TTL_S - 1
    assert remembered("a" * 64, measure) == (6.0, 5.0)
    assert len(calls) == 1
    clock.now += 2
    remembered("a" * 64, measure)
    assert len(calls) == 2


def test_another_table_or_an_in_memory_one_is_measured(cache: Path) -> None:
    measure, calls = counting()
    remembered("a" * 64, measure)
    remembered("b" * 64, measure)
    remembered(None, measure)
    remembered(None, measure)
    assert len(calls) == 4
    assert len(json.loads(cache.read_text())) == 2


@pytest.mark.parametrize("damage", [b"", b"{not json", b"[1, 2]", b'{"k": 3}', b"[" * 10_000,
                                    b'{"k": {"measured_ms": -1, "stored_ms": 1, "at": 1}}',
                                    b"x" * (host_speed.MAX_BYTES + 1)])
def test_a_damaged_cache_is_ignored_and_replaced(cache: Path, damage: bytes) -> None:
    cache.parent.mkdir(parents=True)
    cache.write_bytes(damage)
    measure, calls = counting()
    assert remembered("a" * 64, measure) == (6.0, 5.0)
    assert len(calls) == 1
    assert set(json.loads(cache.read_text())) == {f"{'a' * 64}@{host_speed.socket.gethostname()}"}


def test_a_cache_that_is_a_directory_or_unwritable_is_not_an_error(cache: Path) -> None:
    cache.mkdir(parents=True)  # the file's path is a directory: neither read nor replaced
    measure, calls = counting()
    assert remembered("a" * 64, measure) == (6.0, 5.0)
    assert remembered("a" * 64, measure) == (6.0, 5.0)
    assert len(calls) == 2
    if os.geteuid() != 0:  # root writes anywhere
        folder = cache.parent
        cache.rmdir()
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
        try:
            assert remembered("a" * 64, measure) == (6.0, 5.0)
        finally:
            folder.chmod(stat.S_IRWXU)
        assert not cache.exists() and not list(folder.glob(".host_speed.*"))


def test_a_full_disk_leaves_no_temp_file(cache: Path, monkeypatch) -> None:
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(host_speed.json, "dump", full)
    measure, _ = counting()
    assert remembered("a" * 64, measure) == (6.0, 5.0)
    assert not cache.exists() and not list(cache.parent.glob(".host_speed.*"))


def test_the_newest_entries_are_kept(cache: Path, monkeypatch) -> None:
    clock = Clock()
    monkeypatch.setattr(host_speed.time, "time", clock.time)
    monkeypatch.setattr(host_speed, "MAX_ENTRIES", 3)
    for k in range(5):
        clock.now += 1
        remembered(f"{k:064d}", counting()[0])
    kept = json.loads(cache.read_text())
    assert sorted(key.split("@")[0][-1] for key in kept) == ["2", "3", "4"]
