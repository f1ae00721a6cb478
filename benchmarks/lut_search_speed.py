"""LUT-only search speed: regularized evolution with the `lut` evaluator, its archs scored in the search
process, against the same search run as Ray Tune trials on a local cluster, in the same run.

Run: .venv/bin/python benchmarks/lut_search_speed.py [--trials 100000]
Each path runs in a fresh Python process, so its start-up (imports, the latency table, counting the
params and MACs of every unit, and for Ray the cluster) is part of its time. Per path: the wall time of
`run_search` (`wall_seconds`) and of the whole process (`process_seconds`, interpreter and imports
too), archs per second over each, the time to the first finished batch and the steady rate after it,
the CPU seconds, and the 1-minute load average of the machine when the path started and ended (the
machine is shared: a wall time means little without it).
Bar: 100,000 archs in process in <= 10 s of wall time.

The population is 1,000 (tournament 10): with the default 50 the search finds its best arch's
neighbourhood exhausted after about 5,300 distinct archs and ends early (`strategy.Deduplicated`), so
no 100,000-arch search would run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

PATHS = {"in_process": None, "ray_tune": 2}
"""Path -> `num_cpus` of `run_search`: None scores in process, 2 starts a local Ray cluster of 2 CPUs."""
STRATEGY = {"population_size": 1000, "sample_size": 10}
BOUND_MS = 9.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100_000)
    parser.add_argument("--hardware", default=None, help="table (default: this machine's committed CPU table)")
    parser.add_argument("--path", choices=sorted(PATHS), default=None, help="run one path here (a child run)")
    parser.add_argument("--out", default=None, help="where a child run writes its figures (JSON)")
    parser.add_argument("--profile", default=None, help="a child run writes its cProfile stats here")
    args = parser.parse_args()
    if args.path is not None:
        _child(args)
        return
    results = {}
    for path in PATHS:  # in process first: its figures do not depend on a cluster left behind
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "figures.json"
            cmd = [sys.executable, __file__, "--trials", str(args.trials), "--path", path, "--out", str(out)]
            if args.hardware:
                cmd += ["--hardware", args.hardware]
            start = time.perf_counter()
            subprocess.run(cmd, check=True)
            figures = json.loads(out.read_text())
        figures["process_seconds"] = round(time.perf_counter() - start, 2)
        figures["archs_per_second_process"] = round(figures["archs"] / figures["process_seconds"], 1)
        results[path] = figures
    here, ray = results["in_process"], results["ray_tune"]
    write_result("lut_search_speed", {
        "command": f"python benchmarks/lut_search_speed.py --trials {args.trials}",
        "config": {"space": "proxylessnas", "strategy": "evolution", "strategy_config": STRATEGY, "evaluator": "lut",
                   "objective": {"metric": "macs", "max_latency_ms": BOUND_MS}, "trials": args.trials},
        **results,
        "speedup_wall": round(ray["wall_seconds"] / here["wall_seconds"], 1),
        "bar": {"archs": 100_000, "wall_seconds": 10.0,
                "met": here["archs"] >= 100_000 and here["wall_seconds"] <= 10.0},
    })


def _child(args: argparse.Namespace) -> None:
    """One path in this process: time `run_search` (imports of nas.runner included) and write the figures."""
    start, cpu_start, load_start = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    from nas.config import Objective, RunConfig
    from nas.runner import run_search

    config = RunConfig(space="proxylessnas", strategy="evolution", evaluator="lut", trials=args.trials,
                       hardware=args.hardware, strategy_config=STRATEGY,
                       objective=Objective(metric="macs", max_latency_ms=BOUND_MS))
    marks: list[tuple[float, int]] = []

    def progress(done: int, total: int, best: dict | None) -> None:
        marks.append((time.perf_counter(), done))

    with tempfile.TemporaryDirectory() as tmp:
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            result = profiler.runcall(run_search, config, Path(tmp), num_cpus=PATHS[args.path], progress=progress)
            profiler.dump_stats(args.profile)
        else:
            result = run_search(config, Path(tmp), num_cpus=PATHS[args.path], progress=progress)
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        n = len((Path(tmp) / "trials.jsonl").read_text().splitlines())
    finished = [(t, d) for t, d in marks if d > marks[0][1]]
    (t0, d0), (t1, d1) = finished[0], finished[-1]
    best = result.best[0]
    Path(args.out).write_text(json.dumps({
        "archs": n, "wall_seconds": round(wall, 2), "archs_per_second_wall": round(n / wall, 1),
        "cpu_seconds": round(cpu, 2), "load_average_1min": round(os.getloadavg()[0], 2),
        "load_average_1min_start": round(load_start, 2),
        "archs_per_second_steady": round((d1 - d0) / max(t1 - t0, 1e-9), 1),
        "first_batch_seconds": round(t0 - start, 2), "archs_per_batch": d0, "n_feasible": result.n_feasible,
        "best": {"macs": best["metrics"]["macs"], "latency_ms": best["metrics"]["latency_ms"],
                 "feasible": best["feasible"]},
    }))


if __name__ == "__main__":
    main()
