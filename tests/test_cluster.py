"""Whole searches as a user runs them: `nas search` killed with kill -9 and resumed, and a
search joining a two-node Ray cluster (both nodes on this machine, one CPU each)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _nas(*args: str) -> list[str]:
    return [sys.executable, "-m", "nas.cli", "search", *args]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_search_killed_with_kill_9_resumes_without_losing_or_rerunning(lut_path: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cmd = _nas("--evaluator", "lut", "--hardware", str(lut_path), "--trials", "3000", "--archs-per-trial", "10",
               "--max-latency-ms", "1.2", "--run-dir", str(run_dir), "--num-cpus", "2")
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = run_dir / "trials.jsonl"
    deadline = time.monotonic() + 240
    while len(_lines(log)) < 100 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _lines(log)
    assert 100 <= len(before) < 3000, "the kill must land mid-search"

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    after = _lines(log)
    assert len(after) == 3000
    complete = [line for line in before if line.endswith("}")]
    assert after[: len(complete)] == complete  # nothing finished was lost or rewritten
    assert [json.loads(line)["trial"] for line in after] == list(range(3000))  # nothing ran twice
    assert len(json.loads((run_dir / "best.json").read_text())) == 10


def test_search_joins_a_two_node_cluster_and_runs_on_both(lut_path: Path, tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        run_dir = tmp_path / "run"
        done = subprocess.run(
            _nas("--evaluator", "lut", "--hardware", str(lut_path), "--trials", "400", "--archs-per-trial", "20",
                 "--run-dir", str(run_dir), "--address", cluster.address),
            capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        nodes = Counter(json.loads(line)["node"] for line in _lines(run_dir / "trials.jsonl"))
        assert sum(nodes.values()) == 400
        assert len(nodes) == 2, nodes
        (tmp_path / "nodes.json").write_text(json.dumps(nodes))
    finally:
        cluster.shutdown()
