"""Peak memory and time of a forward pass of each transformer/hybrid supernet's largest child at 224x224, batch 1.

Run: .venv/bin/python benchmarks/supernet_memory.py [--threads 1] [--cases vit_resnas:tiny,...]
Issue 14 §7. For every supernet config of the new spaces (`CASES`), a fresh Python process
(so its peak resident set size, `ru_maxrss`, is that of this work alone):
1. loads the space at 224x224 and 1000 classes with that supernet config
   (the config of a published preset of that supernet: `CASES`);
2. finds the largest child at 224 (a searched resolution pinned there): from each decision's last
   choice, one pass of coordinate ascent on MACs (`space.cost`, counted from the built units), each
   decision set to its choice with the most MACs given the others (choices that make an invalid arch
   are skipped);
3. builds the supernet (every choice's weights), activates the largest child and runs forward
   passes at batch 1 in eval mode under `torch.no_grad()` (the first, then the median of three
   warm ones), reading the peak RSS after the build and after the passes;
4. extracts the child (`extract`: a standalone network with the supernet's weights) and times it
   the same way.
Baseline = RSS after importing torch and the package. One torch thread by default, because other
jobs share the machine's two cores; timings are noisy there (see README), memory is not.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

_MIB = 2**20
_CHILD_TIMEOUT_S = 1800
CASES: dict[str, tuple[str, str]] = {
    "vit_resnas:tiny": ("vit_resnas", "vit_resnas_tiny"),
    "vit_resnas:small": ("vit_resnas", "vit_resnas_small"),
    "bossnas_hytra:t0": ("bossnas_hytra", "bossnet_t0"),
    "bossnas_hytra:t1": ("bossnas_hytra", "bossnet_t1"),
    "shiftnas_cnn": ("shiftnas_cnn", "shiftnas_cnn_max"),
    "shiftnas_vit:tiny": ("shiftnas_vit", "autoformer_t"),
    "shiftnas_vit:small": ("shiftnas_vit", "autoformer_s"),
    "shiftnas_vit:base": ("shiftnas_vit", "autoformer_b"),
}
"""Case name -> (space, the published preset whose space config (224x224, 1000 classes, full widths, which
supernet's ranges) is that supernet's)."""
METHOD = ("fresh process per case; largest child by coordinate ascent on MACs; supernet built, child activated, "
          "forward at batch 1 in eval mode under no_grad (first pass, then median of 3); then the extracted child; "
          "peak RSS = ru_maxrss")


def largest_child(space: Any, pinned: dict[str, Any]) -> Any:
    """The arch with the most MACs found by one pass of coordinate ascent from each decision's last choice,
    the `pinned` decisions kept at their given choices."""
    from nas.errors import UserError

    choices = {d.name: pinned.get(d.name, d.choices[-1]) for d in space.decisions()}
    arch = _first_valid(space, choices)
    best = space.cost(arch)["macs"]
    for decision in (d for d in space.decisions() if d.name not in pinned):
        for choice in decision.choices:
            trial = {**dict(arch.choices), decision.name: choice}
            try:
                candidate = space.make_arch(trial)
            except UserError:
                continue
            macs = space.cost(candidate)["macs"]
            if macs > best:
                arch, best = candidate, macs
    return arch


def _first_valid(space: Any, choices: dict[str, Any]) -> Any:
    """`choices` as an arch, or (when they make an invalid one) the valid sample with the most MACs of 50."""
    import numpy as np

    from nas.errors import UserError

    try:
        return space.make_arch(choices)
    except UserError:
        rng = np.random.default_rng(0)
        return max((space.sample(rng) for _ in range(50)), key=lambda a: space.cost(a)["macs"])


def child(space_name: str, preset: str, threads: int) -> dict[str, Any]:
    """One case, in this (fresh) process."""
    import resource
    import statistics
    import time

    import torch

    torch.set_num_threads(threads)
    from nas.evaluate.metrics import count_params
    from nas.space import load_space

    def rss() -> int:  # peak resident set size so far, bytes (ru_maxrss is in KiB on Linux)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def timed(net: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
        times = []
        with torch.no_grad():
            for _ in range(4):
                start = time.perf_counter()
                net(x)
                times.append(time.perf_counter() - start)
        return {"first_s": round(times[0], 3), "warm_median_s": round(statistics.median(times[1:]), 3)}

    baseline = rss()
    config = dict(load_space(space_name).preset(preset).config)
    space = load_space(space_name, config)
    # A space that searches the input size (its config's resolution is the largest) runs its largest child at 224.
    pinned = {"resolution": 224} if "resolution" in {d.name for d in space.decisions()} else {}
    arch = largest_child(space, pinned)
    assert space.input_resolution(arch) == 224 and config["num_classes"] == 1000, (arch, config)
    cost = space.cost(arch)
    r = space.input_resolution(arch)
    x = torch.randn(1, 3, r, r)
    torch.manual_seed(0)
    supernet = space.supernet().eval()
    supernet.activate(arch)
    after_build = rss()
    supernet_time = timed(supernet, x)
    after_supernet = rss()
    extracted = supernet.extract(arch).eval()
    child_time = timed(extracted, x)
    return {
        "arch": arch.to_json(), "resolution": r, "child_params": cost["params"], "child_macs": cost["macs"],
        "supernet_params": count_params(supernet), "extracted_params": count_params(extracted),
        "baseline_rss_mib": round(baseline / _MIB, 1), "after_supernet_build_rss_mib": round(after_build / _MIB, 1),
        "after_supernet_forward_peak_rss_mib": round(after_supernet / _MIB, 1),
        "peak_rss_mib": round(rss() / _MIB, 1), "supernet_forward": supernet_time, "extracted_forward": child_time,
    }


def _run_child(case: str, threads: int) -> dict[str, Any]:
    space_name, preset = CASES[case]
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from supernet_memory import child; "
            "print(json.dumps(child(sys.argv[2], sys.argv[3], int(sys.argv[4]))))")
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parent), space_name, preset,
                           str(threads)], capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"case {case} failed (exit {done.returncode}): {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads in each child")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated cases of {', '.join(CASES)}")
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {unknown}; choose from {', '.join(CASES)}")
    results = {case: _run_child(case, args.threads) for case in cases}
    write_result("supernet_memory", {
        "command": f"python benchmarks/supernet_memory.py --threads {args.threads} --cases {','.join(cases)}",
        "batch": 1, "threads": args.threads, "mode": "eval, torch.no_grad()",
        "method": METHOD, "cases": {case: {"preset_config": CASES[case][1], **got} for case, got in results.items()},
    })


if __name__ == "__main__":
    main()
