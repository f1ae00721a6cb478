"""Ranking section of `benchmarks/oneshot.py` (issue 13 §7): does a supernet rank archs as short training does?

For `spos` and `proxyless` on the `proxylessnas` space, each supernet is trained once in this process
(`nas.oneshot.trainer.train_supernet`, `workers=0`, digits, seed 0, methods' YAML defaults except the
epochs, the learning rate (`LR`) and, for `proxyless`, a latency target). The same archs are scored with
weights inherited from each supernet by the `supernet` evaluator itself (extract, batch norm recalibrated on
training batches, validation accuracy), and from scratch by the `train` evaluator, the project's short
training, once per seed of `standalone_seeds` (same recipe and budget for every arch, one train/validation
split for all: the supernets' own); an arch's standalone accuracy is the mean over those seeds, shared by
both methods. Kendall's tau-b (scipy) between inherited and standalone accuracy, its p-value (H0: tau = 0)
and a bootstrap 95% percentile interval (archs resampled with replacement) are reported per method, beside
every arch's accuracies and LUT latency, and the tau of parameter count against standalone accuracy, the
zero-cost ranking a supernet has to beat. The tau between two seeds' standalone trainings
(`standalone_seeds_tau`) says how reproducible one training's ranking is; their mean is more reproducible
than either. Each supernet's training loss is reported as the mean of its last
`loss_window` steps and as a curve of means over ten equal spans of the run (one step's loss is one random
path on one batch), beside ln 10, the loss of a uniform guess: a supernet that did not learn ranks nothing.

Choices. The space runs at width 0.5 (32 px, 10 classes), not its default width 1.0, whose steps cost
about 2.5 times as much, so the supernets get about 2.5 times the steps. Its decisions and choices are
those of width 1.0, so its latency table is the committed CPU table's twin (`twin_table`): an arch's LUT
latency is the committed table's price of the same choices at width 1.0. Both supernets train at `LR`,
below the YAMLs' rates and near the references' rates scaled to batch 64: with the path redrawn every
step, larger steps undo what the previous paths learnt. They learn at all because `ChainSupernet` starts
each decision's candidates as slices of its largest and its residual candidates as the identity (see
`nas.supernets.chain`); with independently drawn candidates neither supernet left chance on this proxy.
The archs are `archs` of a pool of `pool` distinct seeded draws, taken at evenly spaced ranks of LUT latency
(`latency_strata`), and the pool spans every depth (`depth_spread_sample`: the number of skipped blocks is
drawn uniformly, then the blocks and every other choice). Uniform draws skip about one block in seven, so they
crowd around the median depth and latency, and on digits they differ less than two trainings of one arch do:
with uniform draws two seeds' standalone rankings were unrelated, after one epoch and after three. The
standalone budget is three epochs and two seeds, trained in two child processes while this one trains the
supernets (every run uses one thread and its own seeds, so the figures do not depend on that order).
`standalone_seeds_tau` is to be read before any supernet's tau.
`proxyless` samples the paths its architecture parameters favour, not uniform ones; its tau is still over
the same archs. Run dirs live in a temporary directory; nothing is cached.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from nas.config import PROFILES_DIR

SPACE = "proxylessnas"
SPACE_CONFIG: dict[str, Any] = {"width_mult": 0.5}
TABLE = PROFILES_DIR / "amd-epyc-torch-t1-fp32-b1" / "proxylessnas-r32.yaml"
METHODS = ("spos", "proxyless")
SEED = 0
THREADS = 1  # other jobs share the two cores; one thread also keeps the accuracies reproducible
CONFIDENCE = 0.95
_ARCH_STREAM = 7  # seeds the arch draw, apart from every seed the training uses
_STANDALONE_TIMEOUT_S = 3 * 3600  # one seed's standalone trainings of every arch: about 15 minutes on a busy core

LR = 0.01
"""The weight learning rate of both supernets (batch 64): the references' rates scaled linearly to batch 64 lie
around it (SPOS 0.5 at batch 1024: 0.031; ProxylessNAS 0.05 warm-up / 0.025 search at batch 256: 0.0125 /
0.006); at the YAMLs' 0.025 to 0.05 uniform path sampling does not train on this proxy."""
FULL: dict[str, Any] = {
    "archs": 20, "pool": 400, "bootstrap": 1000, "standalone_epochs": 3, "standalone_seeds": [0, 1], "bn_batches": 20,
    "loss_window": 50,
    "methods": {"spos": {"epochs": 50, "search_archs": 0, "lr": LR},
                "proxyless": {"epochs": 50, "warmup_epochs": 12, "target_ms": 9.0, "lr": LR, "warmup_lr": LR}},
}
QUICK: dict[str, Any] = {
    "archs": 5, "pool": 10, "bootstrap": 200, "standalone_epochs": 1, "standalone_seeds": [0], "bn_batches": 5,
    "loss_window": 5,
    "methods": {"spos": {"epochs": 1, "search_archs": 0, "max_steps_per_epoch": 5, "lr": LR},
                "proxyless": {"epochs": 2, "warmup_epochs": 1, "target_ms": 9.0, "max_steps_per_epoch": 5,
                              "lr": LR, "warmup_lr": LR}},
}
"""Sizes of a full and a quick run; `methods`: overrides of `methods/<name>.yaml` (batch size and the rest stay
at the YAML defaults); `pool`: uniform draws that `archs` are picked from by latency; `loss_window`: the last
steps whose mean training loss is reported; `standalone_seeds`: the training seeds whose standalone accuracies
are averaged (the split stays `SEED`'s)."""


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


def latency_strata(latencies: Sequence[float], n: int) -> list[int]:
    """Indices of `n` items at evenly spaced ranks of `latencies` (the fastest and the slowest among them), in
    rank order; ties keep input order. A `ValueError` unless 2 <= n <= len(latencies)."""
    if not 2 <= n <= len(latencies):
        raise ValueError(f"need 2 <= n <= {len(latencies)} items; got n={n}")
    order = np.argsort(np.asarray(latencies, dtype=float), kind="stable")
    return [int(order[round(i * (len(order) - 1) / (n - 1))]) for i in range(n)]


def depth_spread_sample(space: Any, rng: np.random.Generator, skip: str = "zero") -> Any:
    """An arch of `space` whose number of skipped blocks is uniform over 0..(the decisions that offer `skip`):
    that many of them, chosen at random, take `skip`, and every other decision a uniform choice of its others.
    A uniform draw skips each such block with the chance 1/(its choices), so all its archs have about the same
    depth; these span every depth the space allows."""
    decisions = space.decisions()
    skippable = [d.name for d in decisions if skip in d.choices]
    if not skippable:
        raise ValueError(f"{space.name}: no decision offers {skip!r}; no depth to spread")
    count = int(rng.integers(len(skippable) + 1))
    skipped = {str(name) for name in rng.choice(skippable, size=count, replace=False)} if count else set()
    choices: dict[str, Any] = {}
    for d in decisions:
        others = [c for c in d.choices if c != skip]
        choices[d.name] = skip if d.name in skipped else others[int(rng.integers(len(others)))]
    return space.make_arch(choices)


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
            "inherited_spread": spread(inherited), "standalone_spread": spread(standalone)}


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Min, median, max, standard deviation and the number of distinct values (ties shrink a rank's content)."""
    v = np.asarray(values, dtype=float)
    return {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max()), "std": float(v.std()),
            "distinct": int(len(np.unique(v)))}


def twin_keys(space: Any, default: Any) -> dict[str, str]:
    """Each latency key of `space` -> the key of the same unit (position, op, kernel, expansion) in `default`, the
    same chain space at another config. A `ValueError` unless the two have the same decisions and choices and
    every key of `space` has one twin."""
    if [(d.name, tuple(d.choices)) for d in space.decisions()] != [(d.name, tuple(d.choices))
                                                                   for d in default.decisions()]:
        raise ValueError(f"{space.name}: the two configs have different decisions or choices; no twin table")
    (front, by_choice, back), (front2, by_choice2, back2) = space.chain, default.chain
    if len(front) != len(front2) or len(back) != len(back2):
        raise ValueError(f"{space.name}: the two configs have different fixed units; no twin table")
    pairs = [*zip(front, front2, strict=True), *zip(back, back2, strict=True)]
    for (_, units), (_, units2) in zip(by_choice, by_choice2, strict=True):
        for choice, unit in units.items():
            if (unit is None) != (units2[choice] is None):
                raise ValueError(f"{space.name}: choice {choice} is a skip at one config only; no twin table")
            if unit is not None:
                pairs.append((unit, units2[choice]))
    twins: dict[str, str] = {}
    for (_, key), (_, twin) in pairs:
        if twins.setdefault(key, twin) != twin:
            raise ValueError(f"{space.name}: key {key} stands for two units of the other config ({twins[key]}, "
                             f"{twin}); no twin table")
    return twins


def twin_table(space: Any, table: Any) -> Any:
    """A table of `space`'s config that prices each arch as `table` prices the same choices at its own config
    (`table.predict` of the arch's twin): the committed table's milliseconds, keyed for a smaller network."""
    from nas.hardware.schema import TableFile
    from nas.hardware.table import LatencyTable
    from nas.space import load_space

    twins = twin_keys(space, load_space(space.name, table.metadata.space_config))
    entries = {key: table.entries[twin].model_copy(update={"params": None, "macs": None})
               for key, twin in twins.items()}
    correction = None if table.correction is None else table.correction.model_copy(
        update={"entries": {key: table.correction.entries[twin] for key, twin in twins.items()}, "fit_ms": []})
    meta = table.metadata.model_copy(update={
        "space_config": space.config.model_dump(mode="json"),
        "protocol": {"twin_of": table.source, "twin_of_sha256": table.sha256,
                     "rule": "each key's value is that of the same unit at the table's config"}})
    return LatencyTable(TableFile(metadata=meta, entries=entries, correction=correction), space=space)


def _num(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


def loss_summary(losses: Sequence[float], window: int, parts: int = 10) -> dict[str, Any]:
    """The mean training loss of the last `window` steps and of each of `parts` equal spans of the run (in order):
    one step's loss is that of one random path on one batch, too noisy to read alone."""
    if not losses or window < 1 or parts < 1:
        raise ValueError(f"need losses, window >= 1 and parts >= 1; got {len(losses)}, {window}, {parts}")
    values = np.asarray(losses, dtype=float)
    spans = np.array_split(values, min(parts, len(values)))
    return {"final_loss": float(values[-window:].mean()), "final_loss_steps": int(min(window, len(values))),
            "loss_curve": [round(float(span.mean()), 4) for span in spans]}


def _train(method: str, overrides: dict[str, Any], run_dir: Path, table: Path, window: int) -> dict[str, Any]:
    """Train one supernet in this process; its settings, found arch, training losses and seconds."""
    from nas.hardware.table import LatencyTable
    from nas.oneshot.base import parse_method_config
    from nas.oneshot.trainer import TrainRequest, train_supernet

    records: list[dict[str, Any]] = []
    overrides = {"seed": SEED, "checkpoint_every": 1_000_000, **overrides}  # one checkpoint: the final one
    request = TrainRequest(space=SPACE, method=method, run_dir=run_dir, space_config=SPACE_CONFIG,
                           method_config=overrides, hardware=str(table), workers=0, cpus_per_worker=THREADS,
                           progress_every=1)  # every step's loss: `loss_summary`
    start = time.perf_counter()
    result = train_supernet(request, on_progress=records.append)
    seconds = time.perf_counter() - start
    last = records[-1] if records else {}
    found = result.found_arch
    return {"config": parse_method_config(method, overrides).model_dump(mode="json"), "steps": result.total_steps,
            **loss_summary([r["loss"] for r in records], window),
            "final_expected_latency_ms": last.get("expected_latency_ms"),
            "found_arch": None if found is None else {
                "arch": found.short_hash, "summary": arch_summary(dict(found.choices), list(found.choices)),
                "latency_ms": round(LatencyTable.load(table).predict(found), 4)},
            "seconds": round(seconds, 1)}


def _standalone(choices: Sequence[dict[str, Any]], config: dict[str, Any], table: Path
                ) -> tuple[list[dict[str, Any]], float]:
    """Each arch (its choices: an `Arch` does not pickle, and this runs in a child process) trained from scratch
    by the `train` evaluator with `config`; its metrics, and the seconds taken."""
    from nas.evaluate.base import EvaluatorSpec, build_evaluator

    logging.getLogger("nas").setLevel(logging.WARNING)
    start = time.perf_counter()
    trainer = build_evaluator(EvaluatorSpec(space=SPACE, space_config=SPACE_CONFIG, evaluator="train",
                                            config=config, table=str(table)))
    return [trainer.evaluate(trainer.space.make_arch(c)) for c in choices], round(time.perf_counter() - start, 1)


def _table(space: Any, tmp: Path) -> tuple[Path, str]:
    """The latency table of `space`'s config: the committed one at its default config, else its twin (in tmp)."""
    from nas.hardware.table import LatencyTable

    committed = LatencyTable.load(TABLE)
    if space.config.model_dump(mode="json") == committed.metadata.space_config:
        return TABLE, f"committed {TABLE.relative_to(PROFILES_DIR.parent)}"
    path = tmp / "twin-table.yaml"
    twin_table(space, committed).save(path)
    return path, (f"twin of {TABLE.relative_to(PROFILES_DIR.parent)}: an arch's LUT latency is the committed "
                  f"table's price of the same choices at the default config (width 1.0)")


def run(quick: bool) -> dict[str, Any]:
    """The ranking figures (quick: a smoke-test size whose figures mean little)."""
    import torch

    from nas.evaluate.base import EvaluatorSpec, build_evaluator
    from nas.hardware.table import LatencyTable
    from nas.space import load_space

    logging.getLogger("nas").setLevel(logging.WARNING)
    settings = QUICK if quick else FULL
    threads = torch.get_num_threads()
    space = load_space(SPACE, SPACE_CONFIG)
    order = [d.name for d in space.decisions()]
    seeds = settings["standalone_seeds"]
    standalone_config = {"data": "digits", "epochs": settings["standalone_epochs"], "batch_size": 64, "lr": 0.05,
                         "split_seed": SEED, "threads": THREADS}
    scorer_config = {"bn_batches": settings["bn_batches"], "batch_size": 64, "seed": SEED, "threads": THREADS}
    per_method: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="nas-bench-ranking-") as tmp:
            table, table_note = _table(space, Path(tmp))
            pool = distinct_samples(lambda rng: depth_spread_sample(space, rng), settings["pool"],
                                    seed=SEED + _ARCH_STREAM)
            priced = LatencyTable.load(table)
            archs = [pool[i] for i in latency_strata([priced.predict(a) for a in pool], settings["archs"])]
            with ProcessPoolExecutor(max_workers=len(seeds), mp_context=multiprocessing.get_context("spawn")) as jobs:
                started = [jobs.submit(_standalone, [dict(a.choices) for a in archs],
                                       {**standalone_config, "seed": seed}, table) for seed in seeds]
                trained = {method: _train(method, settings["methods"][method], Path(tmp) / method, table,
                                          settings["loss_window"]) for method in METHODS}
                runs = [job.result(timeout=_STANDALONE_TIMEOUT_S) for job in started]
            standalone = runs[0][0]
            by_seed = [[r["accuracy"] for r in results] for results, _ in runs]
            accuracy = [float(np.mean(values)) for values in zip(*by_seed, strict=True)]
            for method in METHODS:
                run_dir = Path(tmp) / method
                start = time.perf_counter()
                scorer = build_evaluator(EvaluatorSpec(space=SPACE, space_config=SPACE_CONFIG, evaluator="supernet",
                                                       config={"checkpoint": str(run_dir), **scorer_config},
                                                       table=str(table)))
                inherited = [scorer.evaluate(arch)["accuracy"] for arch in archs]
                per_method[method] = {"supernet": trained[method], "inherited_accuracy": inherited,
                                      "inherited_seconds": round(time.perf_counter() - start, 1),
                                      **rank_figures(inherited, accuracy, settings["bootstrap"], SEED),
                                      "kendall_tau_per_seed": [_num(kendall_tau(inherited, one)[0])
                                                               for one in by_seed]}
    finally:
        torch.set_num_threads(threads)
    params_tau, params_p = kendall_tau([s["params"] for s in standalone], accuracy)
    seeds_tau = None
    if len(seeds) >= 2:
        figures = rank_figures(by_seed[1], by_seed[0], settings["bootstrap"], SEED)
        seeds_tau = {"seeds": seeds[:2], "kendall_tau": figures["kendall_tau"], "p_value": figures["p_value"],
                     "ci": figures["ci"]}
    return {
        "method": ("Kendall tau-b (scipy) between supernet-inherited accuracy (supernet evaluator: extract, BN "
                   "recalibrated, validation accuracy) and standalone short-training accuracy (train evaluator, "
                   "from scratch, mean over seeds) over the same archs; 95% percentile bootstrap CI over archs"),
        "space": SPACE, "space_config": space.config.model_dump(mode="json"), "table": table_note,
        "data": f"digits (train/validation split seed {SEED}, for the supernets and every standalone training)",
        "archs": {"count": len(archs), "sampling": (
            f"{settings['pool']} draws spanning every depth (depth_spread_sample, distinct, seed "
            f"{SEED + _ARCH_STREAM}), {len(archs)} of them at evenly spaced ranks of LUT latency (latency_strata)")},
        "standalone": {"evaluator": "train", "config": standalone_config, "seeds": seeds,
                       "seconds": [seconds for _, seconds in runs], "accuracy": spread(accuracy),
                       "accuracy_per_seed": [spread(values) for values in by_seed]},
        "standalone_seeds_tau": seeds_tau,
        "supernet_init": ("nas.supernets.chain.align_candidates: each decision's candidates start as slices of its "
                          "largest, residual candidates as the identity"),
        "supernet_evaluator": scorer_config,
        "chance_accuracy": 0.1, "uniform_guess_loss": round(math.log(10), 4),
        "params_vs_standalone": {"kendall_tau": _num(params_tau), "p_value": _num(params_p)},
        "per_arch": [{"arch": arch.short_hash, "summary": arch_summary(dict(arch.choices), order),
                      "latency_ms": round(s["latency_ms"], 4), "params": int(s["params"]),
                      "standalone_accuracy": accuracy[i],
                      "standalone_accuracy_per_seed": [values[i] for values in by_seed],
                      **{f"{m}_inherited_accuracy": per_method[m]["inherited_accuracy"][i] for m in METHODS}}
                     for i, (arch, s) in enumerate(zip(archs, standalone, strict=True))],
        **{m: {k: v for k, v in per_method[m].items() if k != "inherited_accuracy"} for m in METHODS},
    }
