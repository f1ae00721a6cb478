"""Runner overhead and parallel speed-up of the `train` evaluator, measured in one run.

Run: .venv/bin/python benchmarks/train_runner.py [--trials 4 --epochs 1]
1. The same `trials` random archs are searched with `num_cpus=1` (one trial at a time):
   overhead = (wall time from the first trial's start to the end) / (sum of the trials'
   own `eval_seconds`) - 1; cluster start-up is reported separately.
2. The same archs with `num_cpus=2` (two concurrent trials): speed-up = wall(1) / wall(2).
3. A plain Ray Tune run of trivial trials on the same machine: seconds per trial.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from nas.config import RunConfig  # noqa: E402
from nas.runner import run_search  # noqa: E402


def _search(config: RunConfig, num_cpus: int) -> dict:
    import ray

    marks: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_search(config, Path(tmp), num_cpus=num_cpus, progress=lambda *a: marks.append(time.perf_counter()))
        wall = time.perf_counter() - start
        lines = [json.loads(x) for x in (Path(tmp) / "trials.jsonl").read_text().splitlines()]
    ray.shutdown()
    evals = [r["metrics"]["eval_seconds"] for r in lines]
    first_done = marks[1] - start
    work_wall = wall - (first_done - evals[0])  # from the first trial's start (approx.) to the end
    return {"wall_seconds": round(wall, 2), "trials_wall_seconds": round(work_wall, 2),
            "sum_eval_seconds": round(sum(evals), 2), "startup_seconds": round(first_done - evals[0], 2),
            "hashes": [r["hash"] for r in lines]}


def _plain_tune(n: int) -> float:
    import ray
    from ray import tune

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        tune.Tuner(lambda config: {"x": config["i"]}, param_space={"i": tune.grid_search(list(range(n)))},
                   run_config=tune.RunConfig(storage_path=tmp, verbose=0)).fit()
        seconds = time.perf_counter() - start
    ray.shutdown()
    return seconds / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    config = RunConfig(space="proxylessnas", strategy="random", evaluator="train", trials=args.trials,
                       evaluator_config={"epochs": args.epochs})
    one = _search(config, 1)
    two = _search(config, 2)
    assert sorted(one["hashes"]) == sorted(two["hashes"]), "both runs must train the same archs"
    tune_s = _plain_tune(10)
    write_result("train_runner", {
        "command": f"python benchmarks/train_runner.py --trials {args.trials} --epochs {args.epochs}",
        "sequential": {k: v for k, v in one.items() if k != "hashes"},
        "parallel_2": {k: v for k, v in two.items() if k != "hashes"},
        "runner_overhead_ratio": round(one["trials_wall_seconds"] / one["sum_eval_seconds"] - 1, 4),
        "mean_trial_seconds": round(one["sum_eval_seconds"] / args.trials, 2),
        "speedup_2_vs_1": round(one["trials_wall_seconds"] / two["trials_wall_seconds"], 3),
        "plain_tune_seconds_per_trivial_trial": round(tune_s, 3),
        "goal_overhead_ratio": 0.05,
    })


if __name__ == "__main__":
    main()
