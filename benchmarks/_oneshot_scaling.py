"""Scaling section of `benchmarks/oneshot.py`: supernet training throughput with 1 and 2 Ray Train workers.

Issue 13 §7: step throughput of `nas supernet train` (`nas.oneshot.trainer.train_supernet`) with one and
with two Ray Train workers (`TrainRequest(workers=N, cpus_per_worker=1)`, DDP over gloo, one torch thread
each), the same global batch (each of two workers takes half), `spos` on the `proxylessnas` space at its
default config (width 1.0, resolution 32; quick mode: the `proxylessnas_tiny` config and a smaller batch),
digits data. The in-process run (`workers=0`, Ray Train's local mode, no DDP) is measured as well, for
reference. Steady throughput comes from rank 0's progress records (`progress.jsonl`, one every
`progress_every` steps, each with its wall time): steps between the first record at or after `skip`
steps and the last record, over the time between them, so Ray's start-up, the first steps (allocation,
oneDNN's kernel choices) and the final checkpoint are left out; images/s is that times the global batch.
The worker counts run in rounds, forwards then backwards (0, 1, 2, 2, 1, 0), and each figure is the
median over rounds, so a drift in the machine's load weighs on every count alike.
Each run is a fresh Python process (`python _oneshot_scaling.py --child JSON`) with a time limit: on
timeout it gets SIGTERM (the trainer stops and shuts Ray down) and, 60 s later, SIGKILL. This process is a
child subreaper (Linux `PR_SET_CHILD_SUBREAPER`), so Ray processes the run orphaned come back to it: any
still alive 30 s after the run ended are counted in the JSON (`leftover_processes`) and killed by pid.
Timing-sensitive: the committed figure is to be re-measured on a quiet machine. Where Linux's scheduler
autogroup is on (`/proc/sys/kernel/sched_autogroup_enabled`, recorded), CPU time is shared fairly between
sessions, and every Ray Train worker runs in the raylet's session: while other sessions keep the cores
busy, two workers together get about the share one would, so a busy machine shows no speed-up at all.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPACE = "proxylessnas"
METHOD = "spos"
FULL = {"space_config": {}, "batch_size": 64, "epochs": 3, "skip": 10, "progress_every": 2, "rounds": 2}
QUICK = {"space_config": "proxylessnas_tiny", "batch_size": 16, "epochs": 1, "max_steps_per_epoch": 16, "skip": 4,
         "progress_every": 2, "rounds": 1}
WORKERS = (0, 1, 2)
_CHILD_TIMEOUT_S = 900
_TERM_GRACE_S = 60
_ORPHAN_GRACE_S = 30
_PR_SET_CHILD_SUBREAPER = 36


# -- pure helpers ------------------------------------------------------------------------------------------
def steady_rate(records: Sequence[Mapping[str, Any]], skip: int) -> dict[str, float]:
    """Steps per second between the first progress record at step >= `skip` and the last one, from their wall
    times; a `ValueError` when fewer than two records lie there."""
    kept = sorted((r for r in records if r["step"] >= skip), key=lambda r: r["step"])
    if len(kept) < 2 or kept[-1]["time"] <= kept[0]["time"]:
        raise ValueError(f"need two progress records at step >= {skip} with time passing between them; got "
                         f"{[(r['step'], r['time']) for r in kept]}")
    steps = kept[-1]["step"] - kept[0]["step"]
    seconds = kept[-1]["time"] - kept[0]["time"]
    return {"steps": steps, "seconds": round(seconds, 3), "steps_per_s": round(steps / seconds, 4),
            "from_step": kept[0]["step"], "to_step": kept[-1]["step"]}


def run_order(workers: Sequence[int], rounds: int) -> list[int]:
    """Worker counts in the order to run them: forwards, then backwards, and so on (a drift in the machine's
    load then weighs on every count alike)."""
    return [w for r in range(rounds) for w in (workers if r % 2 == 0 else list(reversed(workers)))]


def speedup(rates: Mapping[int, float], workers: int, base: int = 1) -> float:
    """Throughput of `workers` workers over that of `base` workers (same global batch)."""
    return round(rates[workers] / rates[base], 3)


# -- the child: one training run in a fresh process ------------------------------------------------------------
def child(spec: Mapping[str, Any]) -> dict[str, Any]:
    """One `train_supernet` run with `spec["workers"]` workers; its progress records and wall time."""
    import logging

    from nas.oneshot.trainer import TrainRequest, train_supernet

    logging.basicConfig(level=logging.WARNING)
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="nas-scaling-") as tmp:
        start = time.perf_counter()
        result = train_supernet(TrainRequest(
            space=SPACE, method=METHOD, run_dir=Path(tmp) / "run", space_config=spec["space_config"],
            method_config=spec["method_config"], workers=spec["workers"], cpus_per_worker=1.0,
            progress_every=spec["progress_every"]), on_progress=lambda r: records.append(dict(r)))
        wall = time.perf_counter() - start
    return {"records": [{k: r[k] for k in ("step", "time", "steps_per_s", "loss")} for r in records],
            "total_steps": result.total_steps, "wall_s": round(wall, 1)}


# -- the parent ----------------------------------------------------------------------------------------------------
def _become_subreaper() -> bool:
    """Make orphaned descendants (Ray's processes, if a run leaves any) children of this process."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _children_of_me() -> list[tuple[int, str]]:
    """(pid, command) of this process's live children (orphans adopted as subreaper included)."""
    me, found = str(os.getpid()), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[1] == me and fields[0] != "Z":
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")[:80]
                found.append((int(entry.name), command.decode(errors="replace")))
        except (OSError, ValueError):
            continue  # it ended meanwhile
    return found


def _reap() -> None:
    """Collect the exit status of adopted children that ended (no zombies)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _leftovers(known: set[int]) -> list[str]:
    """Children left after a run (not in `known`): waited for up to `_ORPHAN_GRACE_S`, then killed by pid."""
    deadline = time.monotonic() + _ORPHAN_GRACE_S
    while True:
        _reap()
        left = [(pid, cmd) for pid, cmd in _children_of_me() if pid not in known]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.5)
    _reap()
    return [f"{pid} {cmd}" for pid, cmd in left]


def _run_child(spec: Mapping[str, Any]) -> dict[str, Any]:
    known = {pid for pid, _ in _children_of_me()}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=_CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the trainer stops at a step and shuts its Ray cluster down
        try:
            out, err = proc.communicate(timeout=_TERM_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=_TERM_GRACE_S)
        left = _leftovers(known)
        raise RuntimeError(f"scaling run {spec['workers']} workers: over {_CHILD_TIMEOUT_S} s, stopped; leftover "
                           f"processes killed: {left}; stderr:\n{err[-3000:]}") from None
    left = _leftovers(known)
    if proc.returncode != 0:
        raise RuntimeError(f"scaling run {spec['workers']} workers failed (exit {proc.returncode}); leftover "
                           f"processes killed: {left}; stderr:\n{err[-3000:]}")
    return {**json.loads(out.strip().splitlines()[-1]), "leftover_processes": left}


def _autogroup() -> str | None:
    """The scheduler's autogroup switch ("1": CPU shared fairly between sessions), None where unknown."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    except OSError:
        return None


def _plan(quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(space config, method config) of the runs."""
    from nas.space import load_space

    plan = QUICK if quick else FULL
    space_config = plan["space_config"]
    if isinstance(space_config, str):  # a preset's config
        space_config = dict(load_space(SPACE).preset(space_config).config)
    method_config = {"batch_size": plan["batch_size"], "epochs": plan["epochs"], "seed": 0, "search_archs": 0,
                     "checkpoint_every": 10_000_000}
    if "max_steps_per_epoch" in plan:
        method_config["max_steps_per_epoch"] = plan["max_steps_per_epoch"]
    return space_config, method_config


def run(quick: bool) -> dict[str, Any]:
    """One run per worker count (0, 1, 2); the section's JSON."""
    plan = QUICK if quick else FULL
    space_config, method_config = _plan(quick)
    subreaper = _become_subreaper()
    runs: dict[int, list[dict[str, Any]]] = {w: [] for w in WORKERS}
    for workers in run_order(WORKERS, plan["rounds"]):
        got = _run_child({"workers": workers, "space_config": space_config, "method_config": method_config,
                          "progress_every": plan["progress_every"]})
        rate = steady_rate(got["records"], plan["skip"])
        runs[workers].append({**rate, "total_steps": got["total_steps"], "wall_s": got["wall_s"],
                              "trainer_steps_per_s_incl_startup": round(got["records"][-1]["steps_per_s"], 4),
                              "leftover_processes": got["leftover_processes"],
                              "load_average_1min": round(os.getloadavg()[0], 2)})
    rates = {w: statistics.median(r["steps_per_s"] for r in got) for w, got in runs.items()}
    summary = {("in_process" if w == 0 else f"workers_{w}"): {
        "steps_per_s": round(rates[w], 4), "images_per_s": round(rates[w] * method_config["batch_size"], 2),
        "runs": got} for w, got in runs.items()}
    return {
        "method": f"steady steps/s from rank 0's progress records (step >= {plan['skip']} to the last, by their wall "
                  "times), one fresh process per run, cpus_per_worker 1 (one torch thread per worker); median "
                  "over rounds (run order forwards then backwards); images/s = steps/s x global batch",
        "space": SPACE, "space_config": space_config, "method_name": METHOD, "method_config": method_config,
        "data": "digits", "skip_steps": plan["skip"], "progress_every": plan["progress_every"],
        "rounds": plan["rounds"], "runs": summary,
        "speedup_2_over_1": speedup(rates, 2),
        "ray_over_in_process_1_worker": speedup(rates, 1, base=0),
        "subreaper": subreaper,
        "sched_autogroup_enabled": _autogroup(),
        "note": "timing-sensitive: each run records the 1-minute load average at its end (2 workers alone make it "
                "about 2 on 2 cores); with autogroup on, Ray's workers share one scheduling group (the raylet's "
                "session), so when other sessions load the machine 2 workers get about one worker's CPU share",
    }


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--child":
        sys.exit("usage: _oneshot_scaling.py --child JSON (run by benchmarks/oneshot.py --sections scaling)")
    print(json.dumps(child(json.loads(sys.argv[2]))))
