"""Peak memory and time of building NASNet-A Large at 331x331 and running one forward pass at batch 1.

Run: .venv/bin/python benchmarks/nasnet_memory.py [--threads 1]
Each measurement runs in a fresh Python process, so its peak resident set size
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`) is that of the work alone: importing torch
and the package (baseline), building the network (weights allocated), and one inference
forward pass (eval mode, `torch.no_grad()`), plus a second forward pass for the warm time.
Goal: peak RSS under 8 GiB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

_GIB = 2**30
_LIMIT_GIB = 8.0

# Runs in the child process: prints one JSON line with the figures.
_CHILD = """
import json, resource, sys, time
import torch
torch.set_num_threads({threads})
from nas.space import find_preset, space_of
from nas.evaluate.metrics import count_params

def rss():  # peak resident set size so far, bytes (ru_maxrss is in KiB on Linux)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

arch = find_preset("nasnet_a_large")
space = space_of(arch)
baseline = rss()
start = time.perf_counter()
net = space.build(arch).eval()
built = time.perf_counter()
after_build = rss()
r = arch.config["resolution"]
x = torch.randn(1, 3, r, r)
times = []
with torch.no_grad():
    for _ in range(2):
        t = time.perf_counter()
        y = net(x)
        times.append(time.perf_counter() - t)
assert y.shape == (1, arch.config["num_classes"])
print(json.dumps({{"baseline_rss": baseline, "after_build_rss": after_build, "peak_rss": rss(),
                  "build_seconds": built - start, "forward_seconds": times, "params": count_params(net),
                  "resolution": r}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads in the child")
    args = parser.parse_args()
    done = subprocess.run([sys.executable, "-c", _CHILD.format(threads=args.threads)], capture_output=True,
                          text=True, check=True)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    peak_gib = got["peak_rss"] / _GIB
    write_result("nasnet_memory", {
        "command": f"python benchmarks/nasnet_memory.py --threads {args.threads}",
        "preset": "nasnet_a_large",
        "resolution": got["resolution"],
        "batch": 1,
        "threads": args.threads,
        "params": got["params"],
        "baseline_rss_gib": round(got["baseline_rss"] / _GIB, 3),
        "after_build_rss_gib": round(got["after_build_rss"] / _GIB, 3),
        "peak_rss_gib": round(peak_gib, 3),
        "build_seconds": round(got["build_seconds"], 2),
        "first_forward_seconds": round(got["forward_seconds"][0], 2),
        "warm_forward_seconds": round(got["forward_seconds"][1], 2),
        "goal_peak_rss_gib": _LIMIT_GIB,
        "passes": peak_gib < _LIMIT_GIB,
    })


if __name__ == "__main__":
    main()
