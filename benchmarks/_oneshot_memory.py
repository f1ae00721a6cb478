"""Memory section of `benchmarks/oneshot.py`: peak memory of one training step, ProxylessNAS vs DARTS vs one path.

Issue 13 §7: one `proxyless` binary-gate training step should need at most 1.3x the memory of training
the largest single path alone, measured in the same run as a DARTS-style step that runs every path.
Three variants on the `proxylessnas` space at its default config (width 1.0), same batch and resolution:
- `proxyless`: `ProxylessMethod.train_step` (nas/oneshot/proxyless.py, `two` mode) with an architecture
  update due, so the step is the weight step (one path, SGD) followed by the binary-gate architecture step
  (two paths per block, the inactive one without a graph, Adam on alpha) on a held-out batch. alpha is
  set high on each block's largest choice, so both steps run the largest path with a graph: the worst
  case (at init every path is as likely, and smaller paths need less). `gradient_step` alone is also
  measured in the same process;
- `largest_path`: `StandaloneMethod.train_step` (what `nas train` runs) of `space.build(largest arch)`,
  every block at its most expensive choice by MACs (mb6_k7, no zero), no supernet built;
- `darts`: the same supernet with every mixed op summing all its decision's candidates weighted by
  softmax(alpha) (`MixedOp.set_sampled` over the decision's choices: `set_all` but for the `zero` that the
  mixed ops of unskippable blocks hold and their decision lacks), each with a graph, one backward into
  weights and alpha, SGD and Adam steps (first-order DARTS).
CPU only (no GPU here). Each measurement runs in a fresh Python process (`python _oneshot_memory.py
--child JSON`, one torch thread, glibc with one arena and a fixed 64 KiB mmap threshold and trim
threshold so freed tensors go back to the OS, `malloc_trim` before the step). The child builds the
model and optimizers, runs warm-up steps (so gradients, optimizer state and oneDNN's caches exist),
reads its resident set size, resets the kernel's peak-RSS mark (`/proc/self/clear_refs` 5), runs the
measured step and reads the peak (`VmHWM`): `step` = peak - RSS before (activations, gradients and
temporaries: what ProxylessNAS' claim is about) and `total` = the peak itself (weights included; the
supernet holds every candidate's weights, which is not the step's memory). Cross-check in the same
child (first repeat only, it is slow): torch's profiler (`profile_memory=True`) over two further steps,
the peak of the CPU allocator's live tensor bytes in the second minus its value at that step's start.
Each variant is repeated in fresh processes; figures are medians.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPACE = "proxylessnas"
TABLE = ROOT / "hardware_profiles/amd-epyc-torch-t1-fp32-b1/proxylessnas-r32.yaml"
VARIANTS = ("proxyless", "largest_path", "darts")
LIMIT = 1.3  # issue 13 §7: proxyless step <= 1.3x the largest single path's
WARMUP_STEPS = 2
ALPHA_HIGH = 20.0  # alpha of the largest choice (others 0): p > 1 - 2e-8, so every sampled path is the largest
_MIB = 2**20
_CHILD_TIMEOUT_S = 900
# glibc: one arena, big blocks mmapped and returned on free, heap top trimmed: RSS follows live memory.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536",
              "MALLOC_TOP_PAD_": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
FULL = {"settings": [{"resolution": 32, "batch": 64}, {"resolution": 64, "batch": 64}], "repeats": 3}
QUICK = {"settings": [{"resolution": 32, "batch": 8}], "repeats": 1}


# -- pure helpers ------------------------------------------------------------------------------------------
def parse_status(text: str) -> dict[str, int]:
    """`/proc/<pid>/status` -> {field: bytes} for its `kB` fields (VmRSS, VmHWM, ...)."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[key] = int(parts[0]) * 1024
    return out


def largest_choices(costs: Mapping[str, Mapping[str, int | None]]) -> dict[str, str]:
    """Decision -> its choice with the most MACs (`costs[decision][choice]`; None: the zero op, never chosen).
    Ties go to the first choice listed."""
    out = {}
    for decision, by_choice in costs.items():
        priced = [(macs, choice) for choice, macs in by_choice.items() if macs is not None]
        if not priced:
            raise ValueError(f"decision {decision}: every choice is the zero op")
        best = max(m for m, _ in priced)
        out[decision] = next(c for m, c in priced if m == best)
    return out


def allocation_peak(allocs: Iterable[tuple[int, int, int]], start_ns: int, end_ns: int) -> int:
    """Peak live tensor bytes in [start_ns, end_ns] above their value just before it, from the profiler's
    allocation events (time ns, size, allocator's running total; frees have negative sizes)."""
    events = sorted(allocs)
    before = [total for t, _, total in events if t < start_ns]
    base = before[-1] if before else 0
    inside = [total for t, _, total in events if start_ns <= t <= end_ns]
    return max([base, *inside]) - base


def summarize(runs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Median (MiB, 1 decimal) of each key over repeated runs, and the per-run values."""
    return {key: {"median_mib": round(statistics.median(r[key] for r in runs) / _MIB, 1),
                  "runs_mib": [round(r[key] / _MIB, 1) for r in runs]} for key in keys}


def ratio(num: float, den: float) -> float:
    return round(num / den, 3)


# -- the child: one measurement in a fresh process -----------------------------------------------------
def _status() -> dict[str, int]:
    return parse_status(Path("/proc/self/status").read_text())


def _settle() -> None:
    """Free what can be freed and give glibc's free heap back to the OS, so RSS is live memory."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _measure(step: Any) -> dict[str, int]:
    """RSS before, peak during and after one call of `step` (the kernel's high-water mark reset first)."""
    _settle()
    before = _status()["VmRSS"]
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    step()
    now = _status()
    return {"before": before, "peak": now["VmHWM"], "step": now["VmHWM"] - before}


def _profiled(step: Any) -> int:
    """Peak live tensor bytes of `step` above its start, from torch's profiler (after one profiled step, so
    the frees of the previous step's tensors are known to it)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
        with record_function("measured-step"):
            step()
    allocs, marks = [], []
    nodes = list(prof.profiler.kineto_results.experimental_event_tree())
    while nodes:
        node = nodes.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            allocs.append((node.start_time_ns, node.extra_fields.alloc_size, node.extra_fields.total_allocated))
        elif node.name == "measured-step":
            marks.append((node.start_time_ns, node.end_time_ns))
        nodes.extend(node.children)
    assert len(marks) == 1, marks
    return allocation_peak(allocs, *marks[0])


def _largest_arch(space: Any) -> Any:
    """The arch with each block at its most expensive choice by MACs (a chain space's units)."""
    _, by_choice, _ = space.chain
    costs = {d: {c: None if unit is None else space.unit_cost(unit[1])[1] for c, unit in table.items()}
             for d, table in by_choice}
    return space.make_arch(largest_choices(costs))


def _proxyless(space: Any, largest: Any, batch: int) -> tuple[Any, dict[str, Any]]:
    """ProxylessNAS-G (two mode) with an arch update after every step, alpha high on `largest`'s choices."""
    import torch

    from nas.hardware.table import LatencyTable
    from nas.oneshot.base import build_method, parse_method_config
    from nas.supernet import module_name

    measured = space.config.resolution == 32
    table = LatencyTable.load(TABLE, space) if measured else _cost_table(space)
    target = round((table.lower_bound(space) + table.predict(largest)) / 2, 3)  # mid-range: the latency term runs
    config = parse_method_config("proxyless", {"batch_size": batch, "warmup_epochs": 0, "arch_update_every": 1,
                                               "target_ms": target})
    method = build_method("proxyless", config, space, table)
    with torch.no_grad():
        for d in space.decisions():
            alpha = method.model.alphas[module_name(d.name)]
            alpha.zero_()
            alpha[[str(c) for c in d.choices].index(str(largest.choices[d.name]))] = ALPHA_HIGH
    facts = {"table": TABLE.name if measured else "MAC-proportional (no measured table at this resolution)",
             "target_ms": target}
    return method, facts


def _darts_step(method: Any, x: Any, y: Any) -> None:
    """Every candidate with a graph, weighted by softmax(alpha); one backward into weights and alpha."""
    import torch

    from nas.supernet import module_name

    points = method.supernet.choice_points()
    for d in method.space.decisions():  # the decision's choices (a mixed op may also hold a zero it lacks)
        points[d.name].set_sampled([str(c) for c in d.choices],
                                   torch.softmax(method.model.alphas[module_name(d.name)], 0))
    method.weight_optimizer.zero_grad(set_to_none=True)
    method.arch_optimizer.zero_grad(set_to_none=True)
    method.loss(method.supernet.run(x), y).backward()
    method.weight_optimizer.step()
    method.arch_optimizer.step()


def _steps(variant: str, resolution: int, batch: int, choices: Mapping[str, str]) -> tuple[dict[str, Any],
                                                                                          dict[str, Any]]:
    """(named step callables, facts): the variant's model and optimizers built, nothing run yet; `choices` is
    the largest arch (found by the parent: pricing units leaves caches behind)."""
    import torch

    from nas.oneshot.base import Batch, build_method, parse_method_config
    from nas.space import load_space

    space = load_space(SPACE, {"resolution": resolution})
    largest = space.make_arch(choices)
    gen = torch.Generator().manual_seed(0)
    shape = (batch, 3, resolution, resolution)
    x, y = torch.randn(shape, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
    xa, ya = torch.randn(shape, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
    torch.manual_seed(0)
    facts: dict[str, Any] = {"largest_arch": sorted(set(largest.choices.values()))}
    if variant == "largest_path":
        config = parse_method_config("standalone", {"arch": largest.to_json(), "batch_size": batch})
        method = build_method("standalone", config, space)
    else:
        method, more = _proxyless(space, largest, batch)
        facts.update(more)
    method.start(method.model, 1, 1000)  # one step per epoch: step s is epoch s, an arch update after each
    facts["params"] = sum(p.numel() for p in method.model.parameters())
    if variant == "darts":
        return {"step": lambda: _darts_step(method, x, y)}, facts
    counter = iter(range(1, 1000))

    def train() -> None:
        s = next(counter)
        method.train_step(Batch(x, y, s, lambda: (xa, ya)), s)

    steps = {"step": train}
    if variant == "proxyless":
        rng = iter(range(10_000))
        steps["gradient_step"] = lambda: method.gradient_step(xa, ya, method.step_rng(next(rng), 1))
    return steps, facts


def _cost_table(space: Any) -> Any:
    """A latency table priced by MACs (0.5 ms + 1e-5 ms per MAC and unit) where no measured one exists: the
    latency term's memory does not depend on its values."""
    from nas.hardware.table import Entry, LatencyTable, Metadata, TableFile

    entries = {k: Entry(mean=0.5 + space.unit_cost(k)[1] * 1e-5, std=0.0, count=1) for k in space.all_latency_keys()}
    meta = Metadata(space=space.name, space_config=space.config.model_dump(mode="json"), device_id="synthetic",
                    backend="cpu", hardware="synthetic", batch=1, dtype="fp32", threads=1, versions={},
                    measured_at="2026-01-01")
    return LatencyTable(TableFile(metadata=meta, entries=entries), space=space)


def child(spec: Mapping[str, Any]) -> dict[str, Any]:
    """One variant's measurements in this (fresh) process: see the module docstring."""
    import torch

    import nas.hardware.table  # noqa: F401  (imported before the baseline: it is not the variant's memory)
    import nas.oneshot.base  # noqa: F401

    torch.set_num_threads(1)
    _settle()
    baseline = _status()["VmRSS"]
    steps, facts = _steps(spec["variant"], spec["resolution"], spec["batch"], spec["choices"])
    _settle()
    built = _status()["VmRSS"]
    for _ in range(WARMUP_STEPS):
        steps["step"]()
    out: dict[str, Any] = {**facts, "baseline_rss": baseline, "built": built}
    for name, step in steps.items():
        rss = _measure(step)
        out[name] = rss["step"]
        if name == "step":
            out.update(total=rss["peak"], before=rss["before"])
    if spec.get("profile"):
        out["profiler_step"] = _profiled(steps["step"])
    return out


# -- the parent ------------------------------------------------------------------------------------------------
def _run_child(spec: Mapping[str, Any]) -> dict[str, Any]:
    env = {**os.environ, **MALLOC_ENV}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"memory child {spec} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_setting(resolution: int, batch: int, repeats: int) -> dict[str, Any]:
    """Every variant at one resolution and batch, `repeats` fresh processes each (interleaved)."""
    from nas.space import load_space

    choices = dict(_largest_arch(load_space(SPACE, {"resolution": resolution})).choices)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    seconds: dict[str, float] = dict.fromkeys(VARIANTS, 0.0)
    for repeat in range(repeats):
        for variant in VARIANTS:
            t = time.perf_counter()
            runs[variant].append(_run_child({"variant": variant, "resolution": resolution, "batch": batch,
                                             "choices": choices, "profile": repeat == 0}))
            seconds[variant] += time.perf_counter() - t
    out: dict[str, Any] = {"resolution": resolution, "batch": batch, "repeats": repeats}
    for variant, got in runs.items():
        keys = ["step", "total", "before", "built", "baseline_rss"]
        keys += ["gradient_step"] if variant == "proxyless" else []
        facts = {k: v for k, v in got[0].items() if k in ("largest_arch", "table", "target_ms", "params")}
        out[variant] = {**summarize(got, keys), **summarize(got[:1], ["profiler_step"]), **facts,
                        "seconds": round(seconds[variant], 1)}
    med = {v: {k: out[v][k]["median_mib"] for k in ("step", "total", "profiler_step")} for v in VARIANTS}
    out["ratios"] = {
        "proxyless_over_largest_path_step": ratio(med["proxyless"]["step"], med["largest_path"]["step"]),
        "darts_over_largest_path_step": ratio(med["darts"]["step"], med["largest_path"]["step"]),
        "proxyless_over_largest_path_total": ratio(med["proxyless"]["total"], med["largest_path"]["total"]),
        "darts_over_largest_path_total": ratio(med["darts"]["total"], med["largest_path"]["total"]),
        "proxyless_over_largest_path_profiler": ratio(med["proxyless"]["profiler_step"],
                                                      med["largest_path"]["profiler_step"]),
        "darts_over_largest_path_profiler": ratio(med["darts"]["profiler_step"], med["largest_path"]["profiler_step"]),
    }
    out["passes"] = out["ratios"]["proxyless_over_largest_path_step"] <= LIMIT
    return out


def run(quick: bool) -> dict[str, Any]:
    """Every setting of the quick or full plan; the section's JSON."""
    plan = QUICK if quick else FULL
    settings = [measure_setting(s["resolution"], s["batch"], plan["repeats"]) for s in plan["settings"]]
    return {
        "method": "peak RSS (VmHWM after a clear_refs reset) of one step minus RSS before it, each variant in a "
                  "fresh process, 1 torch thread, glibc mmap/trim threshold 64 KiB, one arena; medians of "
                  "repeats; cross-check (first repeat): torch profiler's peak live tensor bytes in the step",
        "space": SPACE, "space_config": "default (width 1.0), resolution as given", "threads": 1,
        "warmup_steps": WARMUP_STEPS, "limit": LIMIT, "malloc_env": MALLOC_ENV,
        "variants": {
            "proxyless": "ProxylessMethod.train_step, two mode, arch update due: weight step (one path) + binary-gate "
                         f"arch step (two paths, inactive one without graph); alpha {ALPHA_HIGH} on the largest "
                         "choice (worst case); gradient_step = the arch step alone",
            "largest_path": "StandaloneMethod.train_step of space.build(arch), each block's max-MAC choice (the "
                            "unused supernet StandaloneMethod's base class builds is dropped first)",
            "darts": "same supernet, every mixed op sums all its decision's choices weighted by softmax(alpha), "
                     "each with a graph; one backward into weights and alpha, SGD + Adam steps",
        },
        "settings": settings,
        "passes": all(s["passes"] for s in settings),
    }


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--child":
        sys.exit("usage: _oneshot_memory.py --child JSON (run by benchmarks/oneshot.py --sections memory)")
    print(json.dumps(child(json.loads(sys.argv[2]))))
