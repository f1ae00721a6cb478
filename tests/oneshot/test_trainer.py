"""`nas supernet train` on Ray Train: exact resume after kill -9, a stop on SIGINT with a checkpoint, and
data-parallel runs with one and two Ray workers (slow: each starts a local Ray cluster)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nas.oneshot.base import build_method, parse_method_config
from nas.oneshot.trainer import train_supernet
from nas.space import load_space
from tests.cli_harness import run_cli, warm_cli  # noqa: F401 (fixture)
from tests.oneshot.train_helpers import (
    METHOD_CONFIG,
    SPACE,
    SPACE_CONFIG,
    assert_same_tensors,
    checkpoints,
    cli_args,
    final_state,
    meta,
    one_thread,  # noqa: F401 (fixture)
    request,
    wait_for_checkpoint,
)

pytestmark = [pytest.mark.usefixtures("warm_cli", "one_thread"), pytest.mark.slow]


def _start(run_dir: Path, **method: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nas.cli", *cli_args(run_dir, "--workers", "0", **method)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run trained without a break, in this process (Ray Train's local mode)."""
    run_dir = tmp_path_factory.mktemp("unbroken")
    result = train_supernet(request(run_dir))
    assert result.resumed_from is None and result.found_arch is not None
    return run_dir


def test_kill_9_then_rerun_ends_as_the_unbroken_run(tmp_path: Path, unbroken: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _start(run_dir)
    wait_for_checkpoint(run_dir, proc, timeout_s=60)
    proc.kill()  # SIGKILL: no handler, no final checkpoint
    proc.communicate(timeout=30)
    saved = checkpoints(run_dir)
    assert saved and not meta(saved[-1])["complete"], "the run finished before it was killed: lengthen it"
    killed_at = meta(saved[-1])["step"]

    rerun = run_cli(*cli_args(run_dir, "--workers", "0"), timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed from step {killed_at}" in rerun.stdout, rerun.stdout
    resumed, reference = final_state(run_dir), final_state(unbroken)
    assert resumed["step"] == reference["step"] == 40
    assert_same_tensors(resumed, reference)  # weights, BN statistics, optimizer, RNG: bit for bit
    assert json.loads((run_dir / "found.json").read_text()) == json.loads((unbroken / "found.json").read_text())


def test_sigint_stops_within_seconds_with_a_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _start(run_dir, max_steps_per_epoch=80, checkpoint_every=1000)
    deadline = time.monotonic() + 60
    while not (run_dir / "progress.jsonl").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert time.monotonic() - sent < 10, err
    assert err.strip().splitlines()[-1] == "stopped; re-run the same command to resume", err
    saved = checkpoints(run_dir)
    assert len(saved) == 1, err  # no periodic one was due: this is the stop's
    stopped = meta(saved[0])
    assert 0 < stopped["step"] < stopped["total_steps"] and not stopped["complete"]
    assert not (run_dir / ".stop-request").exists()


@pytest.mark.exhaustive  # Ray Train itself runs in make test: two workers below
def test_one_ray_worker_trains_as_in_process(tmp_path: Path, unbroken: Path) -> None:
    proc = run_cli(*cli_args(tmp_path / "run", "--workers", "1"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert_same_tensors(final_state(tmp_path / "run"), final_state(unbroken))


def test_two_ray_workers_train_data_parallel(tmp_path: Path, unbroken: Path) -> None:
    run_dir = tmp_path / "run"
    proc = run_cli(*cli_args(run_dir, "--workers", "2", "--json"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["total_steps"] == 40 and out["found_arch"] is not None
    last = checkpoints(run_dir)[-1]
    assert meta(last)["workers"] == 2 and meta(last)["complete"]
    state, reference = final_state(run_dir), final_state(unbroken)
    # Batch norm normalises each worker's half batch (no SyncBN), so the weights differ from the one-worker
    # run's; the checkpoint must still load into a fresh method and hold trained weights.
    method = build_method("spos", parse_method_config("spos", METHOD_CONFIG), load_space(SPACE, SPACE_CONFIG))
    method.start(method.model, steps_per_epoch=20, total_steps=40)
    initial = {k: v.clone() for k, v in method.model.state_dict().items()}
    method.load_state_dict(state["method"])
    assert sorted(state["method"]["model"]) == sorted(reference["method"]["model"])
    assert not torch.equal(initial["supernet.stem.conv.weight"], method.model.state_dict()["supernet.stem.conv.weight"])
    assert method.found_arch() is not None and method.found_arch().to_dict() == out["found_arch"]
    records = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 40 and all(r["loss"] == r["loss"] for r in records)
