"""Latency section of `benchmarks/oneshot.py`: `proxyless` and `single_path` hit latency targets on a proxy.

Issue 13 §7: for three targets T, each method finds an arch whose latency in the committed CPU table
(`hardware_profiles/amd-epyc-torch-t1-fp32-b1/<space>-r32.yaml`, `LatencyTable.predict(found arch)`) is
within 10% of T, and a higher T gives a higher found latency. Both spaces run at their default config
(what the tables were measured at) on digits, every run in this process (`train_supernet`, workers 0),
seed 0 for every run, so two runs differ only in their latency weight.

Neither paper's loss has a minimum at T: Single-Path NAS' CE + lambda ln R has no target, and both
ProxylessNAS forms only pull latency down, by a force that T scales. So each method's latency weight is
searched per target, over short runs (safeguarded regula falsi on log lambda, `next_lambda`): a run with a
larger weight finds a lower latency; the first run within 10% of T ends the search, else the closest run
after a bounded number is reported. Every probe (weight, found latency, the found arch's ops) is in the JSON.
- `single_path` (space single_path): lambda is `runtime_lambda`; its runs do not depend on T, so every
  target draws on all probes run so far. Thresholds start at `threshold_init` 0.9 of their kernel parts'
  initial norms (an addition to the method: the paper's zeros sit far below those norms, where the
  indicators' sigmoid gradients vanish, and do not move in a short run), no warm-up, the reference's
  RMSProp and lr.
- `proxyless` (space proxylessnas): loss `add#linear` with `target_ms` T, lambda `add_lambda` = kappa * T.
  `mul#log` is not used: alpha * CE * (log E / log T)^beta scales every gradient by the constant
  (1 / log T)^beta, which Adam divides out, so its runs do not depend on T at all. `add#linear`'s
  gradient depends on (lambda, T) only through kappa = lambda / T, the quantity searched; each target's
  runs use its own T, and earlier targets' runs only place its first kappa. Architecture steps after every
  weight step with a larger Adam lr than the reference's (a short run's alpha otherwise stays at its init).
A latency weight of 0 leaves CE alone: the arch a method finds then is the highest latency that any
target can reach, since a weight >= 0 only pulls latency down. That run comes first, and the targets are
25/50/75% of the way from the table's lower bound to its found latency (`spread_targets`). The table's
own range (lower bound, most expensive arch) and its 25/50/75% points are in the JSON beside them: a point
above the CE-only run's found latency is out of reach of the paper's loss in a run of this length.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TABLES = ROOT / "hardware_profiles" / "amd-epyc-torch-t1-fp32-b1"
TOLERANCE = 0.10
FRACTIONS = (0.25, 0.5, 0.75)
STEP = 4.0  # how far lambda moves while no probe lies on the far side of a target
SAFEGUARD = 0.2  # a new lambda keeps at least this share of the bracket (log scale) from either end
MIN_BRACKET = 1.1  # a bracket narrower than this ratio means the found latency jumps over the target's band
SEED = 0

Probe = dict[str, Any]  # {"weight": lambda (kappa for proxyless), "found_ms": float, ...}

FULL = {
    "single_path": {"space": "single_path", "weight_key": "runtime_lambda", "first_guess": 20.0,
                    "max_runs_per_target": 4,
                    "config": {"epochs": 2, "warmup_epochs": 0, "batch_size": 32, "max_steps_per_epoch": 33,
                               "threshold_init": 0.9}},
    "proxyless": {"space": "proxylessnas", "weight_key": "add_lambda", "first_guess": 0.5,
                  "max_runs_per_target": 4,
                  "config": {"epochs": 3, "warmup_epochs": 0, "batch_size": 32, "max_steps_per_epoch": 24,
                             "loss": "add#linear", "arch_update_every": 1, "arch_lr": 0.05}},
}
QUICK_CONFIG = {"epochs": 2, "batch_size": 16, "max_steps_per_epoch": 3}


# -- pure helpers ------------------------------------------------------------------------------------
def relative_error(found: float, target: float) -> float:
    return abs(found - target) / target


def spread_targets(lower: float, top: float, fractions: Sequence[float] = FRACTIONS) -> list[float]:
    """Targets at `fractions` of the way from `lower` to `top`."""
    return [lower + f * (top - lower) for f in fractions]


def most_expensive(choices: Mapping[str, Sequence[Any]], price: Callable[[dict[str, Any]], float],
                   sweeps: int = 3) -> tuple[dict[str, Any], float]:
    """The priciest arch by coordinate ascent (exact when the price adds up per decision, as a chain's does):
    each decision in turn takes its priciest choice given the others, until a sweep changes nothing."""
    arch = {name: options[0] for name, options in choices.items()}
    for _ in range(sweeps):
        changed = False
        for name, options in choices.items():
            best = max(options, key=lambda c: price({**arch, name: c}))
            changed |= best != arch[name]
            arch[name] = best
        if not changed:
            break
    return arch, price(arch)


def best_probe(probes: Sequence[Probe], target: float) -> Probe | None:
    """The probe whose found latency is closest to `target` (the first of equals)."""
    return min(probes, key=lambda p: relative_error(p["found_ms"], target), default=None)


def next_lambda(probes: Sequence[Probe], target: float, first_guess: float) -> float | None:
    """The next latency weight to try for `target`, or None when no probe can be expected to get closer.

    A larger weight should find a lower latency. With no positive probe: `first_guess`; while every positive
    probe lies on one side of the target: the outermost one times or divided by `STEP`. Otherwise the
    bracket is the largest weight that found more than the target and the smallest larger one that found
    less (noise may leave others out of order), interpolated linearly in log weight, kept `SAFEGUARD` from
    either end. None: the CE-only run (weight 0) already finds less than the target (out of reach), the
    bracket is narrower than `MIN_BRACKET`, or the probes are inverted (every weight below the target's
    side found less than every weight above it: noise dominates).
    """
    if any(p["weight"] == 0 and p["found_ms"] < target for p in probes):
        return None
    pos = sorted((p["weight"], p["found_ms"]) for p in probes if p["weight"] > 0)
    if not pos:
        return first_guess
    above = [(lam, f) for lam, f in pos if f > target]
    below = [(lam, f) for lam, f in pos if f <= target]
    if not below:
        return max(lam for lam, _ in above) * STEP
    if not above:
        return min(lam for lam, _ in below) / STEP
    lows = [(lam, f) for lam, f in above if any(b > lam for b, _ in below)]
    if not lows:
        return None
    lo, f_lo = max(lows)
    hi, f_hi = min((lam, f) for lam, f in below if lam > lo)
    if hi / lo < MIN_BRACKET:
        return None
    share = min(max((f_lo - target) / (f_lo - f_hi), SAFEGUARD), 1 - SAFEGUARD)
    return math.exp(math.log(lo) + share * (math.log(hi) - math.log(lo)))


def is_monotone(points: Sequence[tuple[float, float]], increasing: bool = True) -> bool:
    """Whether the second values never go the wrong way as the first ones grow (ties in x compared too)."""
    ys = [y for _, y in sorted(points)]
    pairs = list(zip(ys, ys[1:], strict=False))
    return all(b >= a for a, b in pairs) if increasing else all(b <= a for a, b in pairs)


def op_counts(choices: Mapping[str, Any]) -> dict[str, int]:
    """How many decisions chose each op (a summary of a found arch)."""
    return dict(sorted(Counter(str(c) for c in choices.values()).items()))


def search_target(target: float, own: list[Probe], known: list[Probe], run_probe: Callable[[float], Probe],
                  max_runs: int, first_guess: float) -> tuple[Probe | None, int, str]:
    """Probe latency weights for `target` until a probe of `own` is within `TOLERANCE`, `max_runs` new runs
    were made, or `next_lambda` (over `known`, which includes `own`) gives up. Appends each new probe to both
    lists; returns the closest probe of `own`, the new runs and why the search ended."""
    runs = 0
    while True:
        best = best_probe(own, target)
        if best is not None and relative_error(best["found_ms"], target) <= TOLERANCE:
            return best, runs, "within 10%"
        if runs >= max_runs:
            return best, runs, f"{max_runs} runs"
        lam = next_lambda(known, target, first_guess)
        if lam is None:
            return best, runs, "no bracket left (out of reach, or the found latency jumps over the band)"
        probe = run_probe(lam)
        runs += 1
        own.append(probe)
        if known is not own:
            known.append(probe)


# -- runs ---------------------------------------------------------------------------------------------
def _train(method: str, space: str, config: Mapping[str, Any], table: Path, run_dir: Path) -> dict[str, Any]:
    """One in-process training run; the found arch's table latency and what the method reports."""
    from nas.oneshot.trainer import TrainRequest, train_supernet

    request = TrainRequest(space=space, method=method, run_dir=run_dir, method_config={**config, "seed": SEED},
                           hardware=str(table), workers=0, progress_every=1_000_000)
    result = train_supernet(request)
    arch = result.found_arch
    assert arch is not None, f"{method} found no arch"
    return {"found_ms": round(result.found_metrics["lut_latency_ms"], 4),
            "expected_ms": round(result.found_metrics["expected_latency_ms"], 4),
            "ops": op_counts(arch.choices), "arch": dict(arch.choices), "seconds": round(result.seconds, 1)}


def _method_section(method: str, spec: Mapping[str, Any], quick: bool, work: Path) -> dict[str, Any]:
    from nas.hardware.table import LatencyTable
    from nas.space import load_space

    start = time.perf_counter()
    space = load_space(spec["space"], {})
    table_path = TABLES / f"{spec['space']}-r32.yaml"
    table = LatencyTable.load(table_path, space)
    lower = table.lower_bound(space)
    _, highest = most_expensive({d.name: d.choices for d in space.decisions()},
                                lambda c: table.predict(space.make_arch(c)))
    config = {**spec["config"], **(QUICK_CONFIG if quick else {})}
    key, proxyless = spec["weight_key"], method == "proxyless"
    count = 0

    def probe_at(weight: float, target: float | None) -> Probe:
        nonlocal count
        count += 1
        cfg = {**config, key: weight}
        if proxyless and target is not None:
            cfg |= {"target_ms": target, key: weight * target}
        out = _train(method, spec["space"], cfg, table_path, work / f"{method}-{count}")
        probe = {"weight": weight, **({"target_ms": target, key: cfg[key]} if proxyless else {}), **out}
        print(f"[latency] {method} probe {count}: {'kappa' if proxyless else 'lambda'} {weight:.4g} -> "
              f"{out['found_ms']:.3f} ms ({out['seconds']} s)", file=sys.stderr, flush=True)
        return probe

    ce_only = probe_at(0.0, None)
    top = ce_only["found_ms"]
    fractions = (0.5,) if quick else FRACTIONS
    max_runs = 1 if quick else spec["max_runs_per_target"]
    known: list[Probe] = [ce_only]
    targets = []
    for fraction, target in zip(fractions, spread_targets(lower, top, fractions), strict=True):
        target = round(target, 4)
        t0 = time.perf_counter()
        # proxyless: only runs with this target_ms count for it; single_path's runs do not depend on T
        own: list[Probe] = [] if proxyless else known
        best, runs, why = search_target(target, own, known, lambda w, t=target: probe_at(w, t), max_runs,
                                        spec["first_guess"])
        targets.append({"fraction": fraction, "target_ms": target, **_outcome(best, target, key, proxyless),
                        "ended": why, "new_runs": runs, "probes_seen": len(own),
                        "seconds": round(time.perf_counter() - t0, 1),
                        **({"probes": [_summary(p) for p in own]} if proxyless else {})})
    return {
        "space": spec["space"], "space_config": "defaults", "table": str(table_path.relative_to(ROOT)),
        "table_lower_bound_ms": round(lower, 4), "table_max_ms": round(highest, 4),
        "ce_only_found_ms": top, "weight": f"kappa = {key} / target_ms" if proxyless else key,
        "table_range_points_ms": dict(zip([f"{f:.0%}" for f in FRACTIONS],
                                          [round(t, 4) for t in spread_targets(lower, highest)], strict=True)),
        "settings": {"method_config": f"methods/{method}.yaml with overrides", "overrides": config, "seed": SEED,
                     "search": {"first_guess": spec["first_guess"], "max_runs_per_target": max_runs,
                                "tolerance": TOLERANCE, "step": STEP, "safeguard": SAFEGUARD,
                                "min_bracket": MIN_BRACKET}},
        "targets": targets, "runs": count,
        "probes": [_summary(p) for p in known],
        "monotone": is_monotone([(t["target_ms"], t["found_ms"]) for t in targets]),
        "probes_monotone": is_monotone([(p["weight"], p["found_ms"]) for p in known], increasing=False),
        "all_within_10pct": all(t["within_10pct"] for t in targets),
        "seconds": round(time.perf_counter() - start, 1)}


def _summary(probe: Probe) -> Probe:
    return {k: v for k, v in probe.items() if k != "arch"}


def _outcome(best: Probe | None, target: float, key: str, proxyless: bool) -> dict[str, Any]:
    """A target's figures from its closest probe (None: no run was made for it)."""
    if best is None:
        return {"found_ms": None, "rel_error": None, "within_10pct": False}
    error = relative_error(best["found_ms"], target)
    weight = {"kappa": best["weight"], key: best[key]} if proxyless else {key: best["weight"]}
    return {"found_ms": best["found_ms"], "rel_error": round(error, 4), "within_10pct": error <= TOLERANCE,
            **weight, "expected_ms": best["expected_ms"], "arch": best["arch"]}


def run(quick: bool) -> dict:
    import torch

    threads = torch.get_num_threads()  # a run sets one thread per worker CPU; restored for the next section
    try:
        with tempfile.TemporaryDirectory(prefix="nas-oneshot-latency-") as tmp:
            sections = {m: _method_section(m, spec, quick, Path(tmp)) for m, spec in FULL.items()}
    finally:
        torch.set_num_threads(threads)
    return {"method": "per method: one CE-only run, then per target T (25/50/75% from the table's lower bound to "
                      "the CE-only run's found latency) short in-process runs over the latency weight until "
                      "the found arch's LUT latency is within 10% of T; see settings and probes",
            "data": "digits", **sections}
