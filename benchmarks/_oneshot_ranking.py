"""Ranking section of `benchmarks/oneshot.py` (issue 13 §7): does a supernet rank archs as short training does?

For `spos` and `proxyless` on the `proxylessnas` space at its default config (width 1.0, 32 px, 10
classes; the committed CPU table `amd-epyc-torch-t1-fp32-b1/proxylessnas-r32.yaml` measures that config),
each supernet is trained once in this process (`nas.oneshot.trainer.train_supernet`, `workers=0`, digits,
seed 0). The same archs, drawn uniformly from the space with a fixed seed (distinct, in draw order), are
then scored twice: with weights inherited from each supernet, by the `supernet` evaluator itself (extract,
batch norm recalibrated on training batches, validation accuracy), and once each from scratch by the
`train` evaluator, the project's short training (same seed, recipe and budget for every arch, shared by
both methods). Kendall's tau-b (scipy) between the two accuracy lists, its p-value (H0: tau = 0), and a
bootstrap 95% percentile interval (archs resampled with replacement) are reported per method, beside
every arch's two accuracies and LUT latency. The standalone budget is one epoch: digits is easy, and
longer training puts most archs near the same accuracy, where a rank carries little information.
`proxyless` trains the path its architecture parameters favour (with a latency target), not a uniform
one; its tau is still over the same uniformly drawn archs. The tau of parameter count against standalone
accuracy is given too, as the zero-cost ranking a supernet has to beat. Run dirs live in a temporary
directory; nothing is cached.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nas.config import PROFILES_DIR

SPACE = "proxylessnas"
TABLE = PROFILES_DIR / "amd-epyc-torch-t1-fp32-b1" / "proxylessnas-r32.yaml"
METHODS = ("spos", "proxyless")
SEED = 0
THREADS = 1  # other jobs share the two cores; one thread also keeps the accuracies reproducible
CONFIDENCE = 0.95
_ARCH_STREAM = 7  # seeds the arch draw, apart from every seed the training uses

FULL: dict[str, Any] = {
    "archs": 20, "bootstrap": 1000, "standalone_epochs": 1, "bn_batches": 20,
    "methods": {"spos": {"epochs": 10, "search_archs": 0},
                "proxyless": {"epochs": 10, "warmup_epochs": 3, "target_ms": 9.0}},
}
QUICK: dict[str, Any] = {
    "archs": 5, "bootstrap": 200, "standalone_epochs": 1, "bn_batches": 5,
    "methods": {"spos": {"epochs": 1, "search_archs": 0, "max_steps_per_epoch": 5},
                "proxyless": {"epochs": 2, "warmup_epochs": 1, "target_ms": 9.0, "max_steps_per_epoch": 5}},
}
"""Per-method overrides of `methods/<name>.yaml` (seed, batch size and lr stay at their defaults)."""


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Kendall's tau-b of two paired lists and its two-sided p-value (scipy; NaN when either list is constant)."""
    from scipy.stats import kendalltau

    result = kendalltau(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return float(result.statistic), float(result.pvalue)


def bootstrap_tau(x: Sequence[float], y: Sequence[float], resamples: int, seed: int,
                  confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Percentile bootstrap interval of Kendall's tau-b: the pairs (x_i, y_i) resampled with replacement.

    A resample in which either side is constant has no tau; it is left out and counted (`undefined`).
    `low`/`high` are None when no resample has a tau.
    """
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"need two paired lists of at least 2 values; got lengths {len(x)} and {len(y)}")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"resamples must be >= 1 and confidence in (0, 1); got {resamples}, {confidence}")
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rng = np.random.default_rng(seed)
    taus = []
    for _ in range(resamples):
        idx = rng.integers(len(xs), size=len(xs))
        tau, _ = kendall_tau(xs[idx], ys[idx])
        if math.isfinite(tau):
            taus.append(tau)
    tail = 100 * (1 - confidence) / 2
    low, high = (None, None) if not taus else (float(v) for v in np.percentile(taus, [tail, 100 - tail]))
    return {"low": low, "high": high, "confidence": confidence, "resamples": resamples, "seed": seed,
            "undefined": resamples - len(taus)}


def distinct_samples(sample: Callable[[np.random.Generator], Any], n: int, seed: int,
                     max_draws: int = 10_000) -> list[Any]:
    """The first `n` distinct values of `sample(rng)` in draw order (one seeded generator); a bounded loop."""
    rng = np.random.default_rng(seed)
    found: list[Any] = []
    for _ in range(max_draws):
        value = sample(rng)
        if value not in found:
            found.append(value)
            if len(found) == n:
                return found
    raise RuntimeError(f"only {len(found)} distinct samples in {max_draws} draws; asked for {n}")


def arch_summary(choices: dict[str, Any], order: Sequence[str]) -> str:
    """The choices in network order, stages apart: `s1: mb3_k5 zero | s2: ...` (decision `s<k>.b<i>.op`)."""
    stages: dict[str, list[str]] = {}
    for name in order:
        stages.setdefault(name.split(".", 1)[0], []).append(str(choices[name]))
    return " | ".join(f"{stage}: {' '.join(ops)}" for stage, ops in stages.items())


def rank_figures(inherited: Sequence[float], standalone: Sequence[float], resamples: int, seed: int) -> dict[str, Any]:
    """tau, its p-value and bootstrap interval, and the spread of each accuracy list."""
    tau, p = kendall_tau(inherited, standalone)
    return {"kendall_tau": _num(tau), "p_value": _num(p), "ci": bootstrap_tau(inherited, standalone, resamples, seed),
            "inherited_accuracy": spread(inherited), "standalone_accuracy": spread(standalone)}


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Min, median, max, standard deviation and the number of distinct values (ties shrink a rank's content)."""
    v = np.asarray(values, dtype=float)
    return {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max()), "std": float(v.std()),
            "distinct": int(len(np.unique(v)))}


def _num(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


def _train(method: str, overrides: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train one supernet in this process; its settings, found arch, last loss and seconds."""
    from nas.oneshot.base import parse_method_config
    from nas.oneshot.trainer import TrainRequest, train_supernet

    records: list[dict[str, Any]] = []
    overrides = {"seed": SEED, "checkpoint_every": 1_000_000, **overrides}  # one checkpoint: the final one
    request = TrainRequest(space=SPACE, method=method, run_dir=run_dir, method_config=overrides,
                           hardware=str(TABLE), workers=0, cpus_per_worker=THREADS, progress_every=10)
    start = time.perf_counter()
    result = train_supernet(request, on_progress=records.append)
    seconds = time.perf_counter() - start
    last = records[-1] if records else {}
    return {"config": parse_method_config(method, overrides).model_dump(mode="json"),
            "steps": result.total_steps, "final_loss": last.get("loss"),
            "final_expected_latency_ms": last.get("expected_latency_ms"),
            "found_arch": None if result.found_arch is None else result.found_arch.short_hash,
            "found_metrics": dict(result.found_metrics), "seconds": round(seconds, 1)}


def run(quick: bool) -> dict[str, Any]:
    """The ranking figures (quick: a smoke-test size whose figures mean little)."""
    import torch

    from nas.evaluate.base import EvaluatorSpec, build_evaluator
    from nas.space import load_space

    logging.getLogger("nas").setLevel(logging.WARNING)
    settings = QUICK if quick else FULL
    threads = torch.get_num_threads()
    space = load_space(SPACE, {})
    order = [d.name for d in space.decisions()]
    archs = distinct_samples(space.sample, settings["archs"], seed=SEED + _ARCH_STREAM)
    standalone_config = {"data": "digits", "epochs": settings["standalone_epochs"], "batch_size": 64, "lr": 0.05,
                         "seed": SEED, "threads": THREADS}
    try:
        start = time.perf_counter()
        trainer = build_evaluator(EvaluatorSpec(space=SPACE, evaluator="train", config=standalone_config,
                                                table=str(TABLE)))
        standalone = [trainer.evaluate(arch) for arch in archs]
        standalone_seconds = time.perf_counter() - start
        per_method: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="nas-bench-ranking-") as tmp:
            for method in METHODS:
                run_dir = Path(tmp) / method
                trained = _train(method, settings["methods"][method], run_dir)
                start = time.perf_counter()
                scorer = build_evaluator(EvaluatorSpec(
                    space=SPACE, evaluator="supernet", table=str(TABLE),
                    config={"checkpoint": str(run_dir), "bn_batches": settings["bn_batches"], "batch_size": 64,
                            "seed": SEED, "threads": THREADS}))
                inherited = [scorer.evaluate(arch)["accuracy"] for arch in archs]
                per_method[method] = {
                    "supernet": trained, "inherited_accuracy": inherited,
                    "inherited_seconds": round(time.perf_counter() - start, 1),
                    **rank_figures(inherited, [s["accuracy"] for s in standalone], settings["bootstrap"], SEED)}
    finally:
        torch.set_num_threads(threads)
    accuracy = [s["accuracy"] for s in standalone]
    params_tau, params_p = kendall_tau([s["params"] for s in standalone], accuracy)
    return {
        "method": ("Kendall tau-b (scipy) between supernet-inherited accuracy (supernet evaluator: extract, BN "
                   "recalibrated, validation accuracy) and standalone short-training accuracy (train evaluator, "
                   "from scratch) over the same uniformly drawn archs; 95% percentile bootstrap CI over archs"),
        "space": SPACE, "space_config": "defaults (width 1.0, resolution 32, 10 classes)",
        "table": str(TABLE.relative_to(PROFILES_DIR.parent)), "data": "digits (split seed 0)",
        "archs": {"count": len(archs), "sampling": f"uniform (space.sample), distinct, seed {SEED + _ARCH_STREAM}"},
        "standalone": {"evaluator": "train", "config": standalone_config, "seconds": round(standalone_seconds, 1),
                       "accuracy": spread(accuracy)},
        "supernet_evaluator": {"bn_batches": settings["bn_batches"], "batch_size": 64, "seed": SEED},
        "threads": THREADS,
        "params_vs_standalone": {"kendall_tau": _num(params_tau), "p_value": _num(params_p)},
        "per_arch": [{"arch": arch.short_hash, "summary": arch_summary(dict(arch.choices), order),
                      "latency_ms": round(s["latency_ms"], 4), "params": int(s["params"]),
                      "standalone_accuracy": s["accuracy"],
                      **{f"{m}_inherited_accuracy": per_method[m]["inherited_accuracy"][i] for m in METHODS}}
                     for i, (arch, s) in enumerate(zip(archs, standalone, strict=True))],
        **{m: {k: v for k, v in per_method[m].items() if k != "inherited_accuracy"} for m in METHODS},
    }
