"""Checkpoints of `nas supernet train`: written whole or not at all, pruned to the newest two, and refused with
one line (exit 2, every file unchanged) when corrupt, truncated, of another run, or when the request is bad."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from nas.errors import UserError
from nas.oneshot import checkpoint
from nas.oneshot.trainer import train_supernet
from nas.run_dir import DiskFullError
from tests.cli_harness import assert_user_error, run_cli, snapshot, warm_cli  # noqa: F401 (fixture)
from tests.oneshot.train_helpers import checkpoints, cli_args, request

pytestmark = pytest.mark.usefixtures("warm_cli")
IDENTITY = {key: key for key in checkpoint.IDENTITY}


def _save(run_dir: Path, step: int, value: float = 0.0) -> Path:
    return checkpoint.save(run_dir, {"w": torch.full((3,), value), "step": step}, {**IDENTITY, "step": step})


def test_save_then_latest_round_trip(tmp_path: Path) -> None:
    assert checkpoint.latest(tmp_path, IDENTITY) is None
    _save(tmp_path, 5, 1.5)
    found = checkpoint.latest(tmp_path, IDENTITY)
    assert found is not None and found.step == 5 and found.path.name == "step-00000005"
    assert torch.equal(found.load_state()["w"], torch.full((3,), 1.5))


def test_keeps_the_newest_two_and_replaces_a_step(tmp_path: Path) -> None:
    for step in (5, 10, 15, 20):
        _save(tmp_path, step)
    assert [p.name for p in checkpoints(tmp_path)] == ["step-00000015", "step-00000020"]
    _save(tmp_path, 20, 7.0)  # the same step again (a re-run after a stop): replaced whole
    assert [p.name for p in checkpoints(tmp_path)] == ["step-00000015", "step-00000020"]
    assert torch.equal(checkpoint.latest(tmp_path, IDENTITY).load_state()["w"], torch.full((3,), 7.0))
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]


def test_a_full_disk_leaves_older_checkpoints_as_they_were(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save(tmp_path, 5, 1.0)
    before = snapshot(tmp_path)
    real, calls = checkpoint._write_synced, []

    def write_then_fill(path: Path, data: bytes) -> None:
        calls.append(path.name)
        if len(calls) == 2:  # state.pt went in; the disk fills while writing meta.json
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)

    monkeypatch.setattr(checkpoint, "_write_synced", write_then_fill)
    with pytest.raises(DiskFullError, match="older checkpoints are unchanged"):
        _save(tmp_path, 10, 2.0)
    assert snapshot(tmp_path) == before  # no half checkpoint, no temp dir
    assert checkpoint.latest(tmp_path, IDENTITY).step == 5


def test_a_dead_writers_temp_dir_is_ignored_then_removed(tmp_path: Path) -> None:
    _save(tmp_path, 5)
    stale = tmp_path / "checkpoints" / ".tmp-999999999-step-00000010"  # no such pid: killed mid-write
    stale.mkdir()
    (stale / "state.pt").write_bytes(b"half")
    assert checkpoint.latest(tmp_path, IDENTITY).step == 5
    _save(tmp_path, 10)
    assert not stale.exists()


def test_refuses_another_runs_checkpoint_naming_the_difference(tmp_path: Path) -> None:
    _save(tmp_path, 5)
    with pytest.raises(UserError, match=r"space_config: checkpoint \"space_config\", this run \{\}"):
        checkpoint.latest(tmp_path, {**IDENTITY, "space_config": {}})


# -- the CLI: every bad input is one line, exit 2, and leaves the run dir's bytes as they were ---------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained")
    threads = torch.get_num_threads()
    try:
        train_supernet(request(run_dir, epochs=1, max_steps_per_epoch=10))
    finally:
        torch.set_num_threads(threads)
    assert len(checkpoints(run_dir)) == 2
    return run_dir


@pytest.fixture
def run_dir(trained: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def _refused(run_dir: Path, *args: str, needles: tuple[str, ...] = (), space: dict | None = None,
             **method: object) -> None:
    before = snapshot(run_dir)
    proc = run_cli(*cli_args(run_dir, "--workers", "0", *args, space=space, epochs=1, max_steps_per_epoch=10,
                             **method))
    assert_user_error(proc, *needles)
    assert snapshot(run_dir) == before


def test_the_same_command_on_a_finished_run_reports_it(run_dir: Path) -> None:
    before = snapshot(run_dir / "checkpoints")
    proc = run_cli(*cli_args(run_dir, "--workers", "0", epochs=1, max_steps_per_epoch=10))
    assert proc.returncode == 0, proc.stderr
    assert "found arch" in proc.stdout and "[supernet]" not in proc.stderr, proc.stdout + proc.stderr
    assert snapshot(run_dir / "checkpoints") == before


def test_truncated_state_is_refused(run_dir: Path) -> None:
    state = checkpoints(run_dir)[-1] / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    _refused(run_dir, needles=(str(state), "truncated"))


def test_corrupt_state_is_refused(run_dir: Path) -> None:
    state = checkpoints(run_dir)[-1] / "state.pt"
    raw = bytearray(state.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    state.write_bytes(bytes(raw))
    _refused(run_dir, needles=(str(state), "corrupt", "sha256"))


def test_unreadable_meta_is_refused(run_dir: Path) -> None:
    path = checkpoints(run_dir)[-1] / "meta.json"
    path.write_text('{"step": ')
    _refused(run_dir, needles=(str(path), "meta"))


def test_another_space_config_is_refused(run_dir: Path) -> None:
    _refused(run_dir, space={"init_channels": 8}, needles=("space_config.init_channels", "checkpoint 4", "this run 8"))


def test_another_method_config_is_refused(run_dir: Path) -> None:
    _refused(run_dir, needles=("method_config.lr", "this run 0.1"), lr=0.1)


def test_another_seed_is_refused(run_dir: Path) -> None:
    _refused(run_dir, "--seed", "4", needles=("seed", "checkpoint 3", "this run 4"))


def test_another_method_is_refused(run_dir: Path) -> None:
    path = checkpoints(run_dir)[-1] / "meta.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "method": "proxyless"}))
    _refused(run_dir, needles=(str(path), "method: checkpoint \"proxyless\", this run \"spos\""))


def test_a_method_for_other_spaces_is_refused(run_dir: Path) -> None:
    before = snapshot(run_dir)
    args = cli_args(run_dir, "--workers", "0")
    args[args.index("spos")] = "proxyless"
    proc = run_cli(*args)
    assert_user_error(proc, "--method proxyless", "nasbench201", "applies to proxylessnas")
    assert snapshot(run_dir) == before


def test_more_workers_than_cpus_is_refused(run_dir: Path) -> None:
    cpus = str(os.cpu_count())
    _refused(run_dir, "--workers", "2", "--cpus-per-worker", cpus, needles=("--workers 2", f"{cpus} CPUs"))


def test_a_bad_request_on_a_new_run_dir_writes_nothing(tmp_path: Path) -> None:
    proc = run_cli(*cli_args(tmp_path / "new", "--workers", "0", batch_size=0))
    assert_user_error(proc, "batch_size")
    assert not (tmp_path / "new").exists()


def test_a_run_dir_in_use_is_refused(tmp_path: Path) -> None:
    from filelock import FileLock

    with FileLock(tmp_path / ".supernet.lock"):
        proc = run_cli(*cli_args(tmp_path, "--workers", "0"))
    assert_user_error(proc, "another `nas supernet train` is using it")
    assert {p.name for p in tmp_path.iterdir()} == {".supernet.lock"}


def test_a_latency_target_below_the_table_writes_nothing(tmp_path: Path) -> None:
    """The method's own checks (`check_setup`: here a target under the table's cheapest arch) run before the run
    dir is made."""
    from nas.config import PROFILES_DIR

    table = PROFILES_DIR / "amd-epyc-torch-t1-fp32-b1" / "proxylessnas-r32.yaml"
    proc = run_cli("supernet", "train", "--space", "proxylessnas", "--method", "proxyless", "--workers", "0",
                   "--hardware", str(table), "--set", "target_ms=0.001", "--run-dir", str(tmp_path / "new"))
    assert_user_error(proc, "target_ms 0.001", "lower bound")
    assert not (tmp_path / "new").exists()
