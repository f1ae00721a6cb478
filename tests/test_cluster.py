"""Whole searches as a user runs them: `nas search` killed with kill -9 and resumed, and the
README's multi-node recipe run as written, two `ray start` nodes on this machine (one CPU each)
standing in for two machines."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
RAY = str(Path(sys.executable).parent / "ray")

# The README's recipe, command by command; `test_readme_recipe_is_the_one_tested` keeps them equal.
RECIPE = {
    "token": "ray get-auth-token --generate",
    "head": "ray start --head --port=6379",
    "exports": "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<token>",
    "worker": "ray start --address=<head-ip>:6379",
    "search_on_head": "nas search --address auto",
    "search_on_node": "nas search --address <head-ip>:6379",
}


def _nas(*args: str) -> list[str]:
    return [sys.executable, "-m", "nas.cli", "search", *args]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.slow
def test_search_killed_with_kill_9_resumes_without_losing_or_rerunning(lut_path: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cmd = _nas("--evaluator", "lut", "--hardware", str(lut_path), "--trials", "3000", "--archs-per-trial", "10",
               "--max-latency-ms", "1.2", "--run-dir", str(run_dir), "--num-cpus", "2")
    stderr_path = tmp_path / "killed.stderr"
    with stderr_path.open("w") as stderr:  # kept: if the search dies by itself, its stderr says why
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr)
    log = run_dir / "trials.jsonl"
    deadline = time.monotonic() + 240
    while len(_lines(log)) < 100 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    exited = proc.poll()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the search and its local Ray cluster
    except ProcessLookupError:  # the group is gone already; `exited` says why below
        pass
    proc.wait(timeout=30)
    assert exited is None, f"the search exited ({exited}) before the kill: {stderr_path.read_text()[-3000:]}"
    before = _lines(log)
    assert 100 <= len(before) < 3000, f"the kill must land mid-search: {stderr_path.read_text()[-3000:]}"

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    after = _lines(log)
    assert len(after) == 3000
    complete = [line for line in before if line.endswith("}")]
    assert after[: len(complete)] == complete  # nothing finished was lost or rewritten
    assert [json.loads(line)["trial"] for line in after] == list(range(3000))  # nothing ran twice
    assert len(json.loads((run_dir / "best.json").read_text())) == 10


def _stop(proc: subprocess.Popen) -> None:
    """Stop a `ray start --block` and every process under it, by id (never `ray stop`: it
    would stop every Ray node of this machine, other people's tests' too)."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    proc.terminate()  # `ray start --block` stops its node's processes on SIGTERM
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=10)


@contextmanager
def ray_node(args: list[str], env: dict[str, str], log_path: Path, timeout_s: float = 120) -> Iterator[None]:
    """`ray start <args> --block` as a context: up (its address written) on entry, stopped on exit."""
    with log_path.open("w") as log:
        proc = subprocess.Popen([RAY, "start", *args, "--block"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        # Printed after the node registered and ray_current_cluster was written.
        while "will now block forever" not in log_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"`ray start {' '.join(args)}` is not up (exit {proc.poll()}): "
                            f"{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield
    finally:
        _stop(proc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _readme_cluster_section() -> str:
    text = README.read_text()
    start = text.index("## A multi-node Ray cluster")
    return text[start: text.index("\n## ", start + 1)]


def test_readme_recipe_is_the_one_tested() -> None:
    commands = [line.split("#")[0].strip() for line in _readme_cluster_section().splitlines()]
    for name, command in RECIPE.items():
        assert any(line.startswith(command) for line in commands), f"{name}: {command!r} is not in the README"


def machine_env(home: Path, ray_tmp: Path, exports: dict[str, str] | None = None) -> dict[str, str]:
    """One "machine": no Ray settings from this shell, its own HOME (so ~/.ray), the shared Ray temp dir."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "HOME": str(home), "RAY_TMPDIR": str(ray_tmp), **(exports or {})}


@pytest.mark.slow
def test_readme_recipe_runs_a_search_on_both_nodes(lut_path: Path, tmp_path: Path) -> None:
    port = _free_port()

    def as_run(command: str) -> list[str]:
        return command.replace("<head-ip>", "127.0.0.1").replace("6379", str(port)).split()

    search_args = ["--evaluator", "lut", "--hardware", str(lut_path), "--archs-per-trial", "20"]
    # Short: Ray's unix socket paths under it must stay within 107 bytes.
    with tempfile.TemporaryDirectory(prefix="nas-ray-", dir="/tmp") as ray_tmp:
        head = machine_env(tmp_path / "head-home", Path(ray_tmp))
        token = subprocess.run([RAY, *as_run(RECIPE["token"])[1:]], env=head, capture_output=True, text=True,
                               timeout=60)
        assert token.returncode == 0, token.stderr
        token_value = token.stdout.strip().splitlines()[-1]
        assert re.fullmatch(r"[0-9a-f]{32,}", token_value), token.stdout
        exports = dict(kv.split("=", 1) for kv in RECIPE["exports"].replace("<token>", token_value).split()[1:])
        other = machine_env(tmp_path / "other-home", Path(ray_tmp), exports)
        with (ray_node(as_run(RECIPE["head"])[2:] + ["--num-cpus", "1"], head, tmp_path / "head.log"),
              ray_node(as_run(RECIPE["worker"])[2:] + ["--num-cpus", "1"], other, tmp_path / "worker.log")):
            run_dir = tmp_path / "run"
            done = subprocess.run(_nas(*as_run(RECIPE["search_on_node"])[2:], *search_args, "--trials", "400",
                                       "--run-dir", str(run_dir)),
                                  env=other, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            nodes = Counter(json.loads(line)["node"] for line in _lines(run_dir / "trials.jsonl"))
            assert sum(nodes.values()) == 400
            assert len(nodes) == 2, nodes

            on_head = subprocess.run(_nas(*as_run(RECIPE["search_on_head"])[2:], *search_args, "--trials", "40",
                                          "--run-dir", str(tmp_path / "run-head")),
                                     env=head, capture_output=True, text=True, timeout=300)
            assert on_head.returncode == 0, on_head.stderr[-3000:]
            assert len(_lines(tmp_path / "run-head" / "trials.jsonl")) == 40

            # Issue 15: no token, a head that wants one: one line naming both variables, no retry spam.
            start = time.monotonic()
            refused = subprocess.run(_nas(*as_run(RECIPE["search_on_node"])[2:], *search_args, "--trials", "40",
                                          "--run-dir", str(tmp_path / "run-refused")),
                                     env=machine_env(tmp_path / "third-home", Path(ray_tmp)),
                                     capture_output=True, text=True, timeout=120)
            elapsed = time.monotonic() - start
    assert refused.returncode == 2, refused.stderr[-3000:]
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "RAY_AUTH_TOKEN" in errors[0] and "RAY_AUTH_MODE=token" in errors[0], refused.stderr
    assert "Traceback" not in refused.stderr and "gcs_client" not in refused.stderr, refused.stderr
    assert elapsed < 30, elapsed
