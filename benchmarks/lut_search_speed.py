"""LUT-only search speed: archs evaluated per second by regularized evolution with the
`lut` evaluator, through the runner (Ray Tune trials of batched archs), on a local cluster.

Run: .venv/bin/python benchmarks/lut_search_speed.py [--trials 50000]
Reports the whole wall time (cluster start included) and the steady rate between the
first and the last finished batch. Goal: >= 1000 archs/s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from nas.config import Objective, RunConfig  # noqa: E402
from nas.runner import run_search  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50_000)
    parser.add_argument("--archs-per-trial", type=int, default=None)
    parser.add_argument("--hardware", default=None, help="table (default: this machine's committed CPU table)")
    parser.add_argument("--max-latency-ms", type=float, default=9.5, help="bound (3.0 before: below every arch)")
    args = parser.parse_args()
    config = RunConfig(space="proxylessnas", strategy="evolution", evaluator="lut", trials=args.trials,
                       hardware=args.hardware, archs_per_trial=args.archs_per_trial,
                       objective=Objective(metric="macs", max_latency_ms=args.max_latency_ms))
    marks: list[tuple[float, int]] = []

    def progress(done: int, total: int, best: dict | None) -> None:
        marks.append((time.perf_counter(), done))

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        best = run_search(config, Path(tmp), num_cpus=2, progress=progress).best
        wall = time.perf_counter() - start
        n = len((Path(tmp) / "trials.jsonl").read_text().splitlines())
    finished = [(t, d) for t, d in marks if d > marks[0][1]]
    (t0, d0), (t1, d1) = finished[0], finished[-1]
    write_result("lut_search_speed", {
        "command": f"python benchmarks/lut_search_speed.py --trials {args.trials}",
        "archs": n, "wall_seconds": round(wall, 2), "archs_per_second_wall": round(n / wall, 1),
        "archs_per_second_steady": round((d1 - d0) / max(t1 - t0, 1e-9), 1),
        "first_batch_seconds": round(t0 - start, 2), "archs_per_trial": d0,
        "best": {"macs": best[0]["metrics"]["macs"], "latency_ms": best[0]["metrics"]["latency_ms"]},
        "goal_archs_per_second": 1000,
    })


if __name__ == "__main__":
    main()
