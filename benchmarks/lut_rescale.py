"""How close a table's raw predictions come to plain wall-clock timings on this host, before and after `--rescale`.

A table's milliseconds belong to the host it was measured on. This script takes the
committed PyTorch ProxylessNAS 32x32 table, draws 30 random archs (a seed the project uses
nowhere else), and times each network in a fresh process with nothing but
`time.perf_counter` around single calls (one thread, batch 1, eval and inference mode; three
passes over all archs, each with 5 warm-up calls and 90 timed calls in all). It runs `nas profile --rescale`
on the table (in its own process, into a temp dir: the user profiles dir is left alone)
before and after the timings, and scores the table's raw predictions (no host correction)
and the rescaled table's against two statistics of the wall-clock timings: the fastest call
(the machine at its best, which is what a table's milliseconds stand for) and the median
call (the machine as loaded while it ran): MAPE, share within ±5% / ±10%, Spearman. The
second rescale shows how much the host's speed moved meanwhile. About 1.5 minutes on 2 cores.

    python benchmarks/lut_rescale.py                   # result in benchmarks/out/lut_rescale.json
    python benchmarks/lut_rescale.py --out benchmarks  # ... in the tracked benchmarks/lut_rescale.json
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
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, machine  # noqa: E402

from nas.config import PROFILES_DIR  # noqa: E402

TABLE = PROFILES_DIR / "amd-epyc-torch-t1-fp32-b1" / "proxylessnas-r32.yaml"
SEED = 20_261_201  # used nowhere else in the project
N_ARCHS = 30
PASSES, WARMUP_CALLS, CALLS = 3, 5, 30


def time_archs(choices: list[dict[str, str]]) -> list[list[float]]:
    """Per arch, per-call wall times (ms) of one-call blocks, single-threaded (runs in the worker process).

    `PASSES` passes over all archs, so a burst of load on a shared machine touches every arch
    alike rather than a few in a row; each pass warms the network up, then times `CALLS` calls.
    """
    import torch

    from nas.space import load_space

    torch.set_num_threads(1)
    space = load_space("proxylessnas")
    x = torch.randn(1, 3, space.config.resolution, space.config.resolution)
    nets = [space.build(space.make_arch(c)).eval() for c in choices]
    times: list[list[float]] = [[] for _ in nets]
    with torch.inference_mode():
        for _ in range(PASSES):
            for net, record in zip(nets, times, strict=True):
                for _ in range(WARMUP_CALLS):
                    net(x)
                for _ in range(CALLS):
                    start = time.perf_counter()
                    net(x)
                    record.append((time.perf_counter() - start) * 1e3)
    return times


def rescale(out: Path) -> dict[str, Any]:
    """`nas profile --rescale` of the table into `out`, in a fresh process; its JSON report."""
    command = [sys.executable, "-m", "nas.cli", "profile", "--rescale", "--table", str(TABLE), "--out", str(out),
               "--json"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def figures(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr

    rel = np.abs(predicted - measured) / measured
    return {"mape": round(float(rel.mean() * 100), 2), "within_5": float((rel <= 0.05).mean()),
            "within_10": float((rel <= 0.10).mean()),
            "spearman": round(float(spearmanr(predicted, measured).statistic), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "out", help="output directory [default: benchmarks/out]")
    parser.add_argument("--time-archs", type=Path, help=argparse.SUPPRESS)  # the worker: choices JSON in, ms out
    args = parser.parse_args()
    if args.time_archs is not None:
        print(json.dumps(time_archs(json.loads(args.time_archs.read_text()))))
        return

    from nas.hardware.table import LatencyTable
    from nas.space import load_space

    started = time.perf_counter()
    space = load_space("proxylessnas")
    rng = np.random.default_rng(SEED)
    archs = [space.sample(rng) for _ in range(N_ARCHS)]
    with tempfile.TemporaryDirectory(prefix="nas-lut-rescale-") as tmp:
        before = rescale(Path(tmp) / "rescaled.yaml")
        rescaled = LatencyTable.load(Path(tmp) / "rescaled.yaml", space)
        choices = Path(tmp) / "choices.json"
        choices.write_text(json.dumps([dict(a.choices) for a in archs]))
        worker = subprocess.run([sys.executable, __file__, "--time-archs", str(choices)], capture_output=True,
                                text=True, timeout=600)
        if worker.returncode != 0:
            raise SystemExit(f"timing worker failed:\n{worker.stderr}")
        calls = np.array(json.loads(worker.stdout))  # (archs, calls) ms
        after = rescale(Path(tmp) / "again.yaml")
    table = LatencyTable.load(TABLE, space)
    raw = np.array([table.predict(a) for a in archs])
    scaled = np.array([rescaled.predict(a) for a in archs])
    fastest, median = calls.min(axis=1), np.median(calls, axis=1)
    result = {
        "table": str(TABLE.relative_to(PROFILES_DIR.parent)), "n_archs": N_ARCHS, "seed": SEED,
        "timing": f"time.perf_counter around single calls, fresh process, 1 thread, batch 1, {PASSES} passes over "
                  f"all archs of {WARMUP_CALLS} warm-up and {CALLS} timed calls",
        "scale": round(before["scale"], 4), "scale_after_timings": round(after["scale"], 4),
        "reference_ms": {"stored": round(before["stored_ms"], 4), "measured": round(before["measured_ms"], 4),
                         "measured_after_timings": round(after["measured_ms"], 4)},
        "fastest_call": {"raw": figures(raw, fastest), "rescaled": figures(scaled, fastest),
                         "measured_over_raw_median": round(float(np.median(fastest / raw)), 4)},
        "median_call": {"raw": figures(raw, median), "rescaled": figures(scaled, median),
                        "measured_over_raw_median": round(float(np.median(median / raw)), 4)},
        "points": [[round(float(v), 4) for v in row] for row in zip(fastest, median, raw, scaled, strict=True)],
        "points_columns": ["fastest call ms", "median call ms", "raw prediction ms", "rescaled prediction ms"],
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "seconds": round(time.perf_counter() - started, 1), "machine": machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "lut_rescale.json"
    tmp_path = path.with_name(f".{path.name}.tmp")
    tmp_path.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    tmp_path.replace(path)
    print(json.dumps({k: v for k, v in result.items() if k != "points"}, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
