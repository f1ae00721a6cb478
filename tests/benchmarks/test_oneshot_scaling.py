"""Pure helpers of the scaling section of benchmarks/oneshot.py (`_oneshot_scaling`; no training runs here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from _oneshot_scaling import run_order, speedup, steady_rate  # noqa: E402


def _records(times: dict[int, float]) -> list[dict[str, float]]:
    return [{"step": s, "time": t} for s, t in times.items()]


def test_steady_rate_leaves_out_the_first_steps() -> None:
    # Steps 2 and 4 slow (start-up), then 1 s per 2 steps.
    records = _records({2: 100.0, 4: 110.0, 6: 111.0, 8: 112.0, 10: 113.0})
    got = steady_rate(records, skip=4)
    assert got == {"steps": 6, "seconds": 3.0, "steps_per_s": 2.0, "from_step": 4, "to_step": 10}
    assert steady_rate(list(reversed(records)), skip=5)["steps_per_s"] == 2.0  # from step 6, any order


def test_steady_rate_needs_two_records_after_the_skip() -> None:
    with pytest.raises(ValueError, match="need two progress records at step >= 9"):
        steady_rate(_records({2: 1.0, 4: 2.0, 10: 3.0}), skip=9)
    with pytest.raises(ValueError, match="time passing"):
        steady_rate(_records({4: 5.0, 6: 5.0}), skip=4)


def test_speedup_is_relative_to_the_base_worker_count() -> None:
    assert speedup({0: 2.0, 1: 4.0, 2: 6.0}, 2) == 1.5
    assert speedup({0: 2.0, 1: 4.0, 2: 6.0}, 1, base=0) == 2.0


def test_run_order_goes_forwards_then_backwards() -> None:
    assert run_order([0, 1, 2], 1) == [0, 1, 2]
    assert run_order([0, 1, 2], 3) == [0, 1, 2, 2, 1, 0, 0, 1, 2]
    assert run_order([0, 1, 2], 0) == []


_ORPHAN_SCRIPT = """
import json, os, subprocess, sys, time
sys.path.insert(0, {bench!r})
import _oneshot_scaling as sc
sc._ORPHAN_GRACE_S = 1.0
assert sc._become_subreaper()
known = {{pid for pid, _ in sc._children_of_me()}}
# A run that leaves a process behind: the shell exits at once, its background sleep is orphaned (adopted here).
subprocess.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 &"], check=True, capture_output=True, text=True, timeout=10)
time.sleep(0.2)
orphans = [pid for pid, _ in sc._children_of_me() if pid not in known]
left = sc._leftovers(known)
alive = [pid for pid in orphans if os.path.exists(f"/proc/{{pid}}")]
print(json.dumps({{"orphans": orphans, "left": left, "alive": alive, "again": sc._leftovers(known)}}))
"""


def test_leftover_processes_are_adopted_listed_and_killed() -> None:
    bench = str(Path(__file__).resolve().parents[2] / "benchmarks")
    done = subprocess.run([sys.executable, "-c", _ORPHAN_SCRIPT.format(bench=bench)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(got["orphans"]) == 1, got
    assert len(got["left"]) == 1 and got["left"][0].startswith(f"{got['orphans'][0]} sleep 60"), got
    assert got["alive"] == [] and got["again"] == [], got
