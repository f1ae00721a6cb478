"""How well each committed latency table predicts whole-network latency: naive sum against the fitted table.

Every table under `hardware_profiles/` carries the validation report of `nas profile`
(held-out random archs, each timed end to end twice; the naive plain sum of isolated unit
timings and the fitted table scored on the same timings). This script turns each report
into `benchmarks/lut_accuracy/<device-id>-<space>-r<R>.json` (naive and final figures side
by side, their ratio, MAPE against the re-measurement noise, where the table stands
against nn-Meter's 99% within +-10%) and a plot of predicted against measured latency
with the +-10% band (`.png` beside it), plus a summary `benchmarks/lut_accuracy.json`.

    python benchmarks/lut_accuracy.py                 # report the committed tables
    python benchmarks/lut_accuracy.py --measure       # first re-profile this machine's CPU tables

`--measure` runs `nas profile` for the cpu and onnxruntime backends at batch 1, at the
space's demo resolution and at 224x224 (about 3-5 minutes each on a 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, write_result  # noqa: E402

from nas.config import PROFILES_DIR  # noqa: E402
from nas.hardware.table import LatencyTable  # noqa: E402

NN_METER_WITHIN_10 = 0.99  # nn-Meter's best published kernel-level predictor (mobile CPU 99.0%, GPU 99.1%)
OUT_DIR = HERE / "lut_accuracy"


def measure(space: str, resolutions: list[int | None], devices: list[str]) -> None:
    """Re-profile `space` on this machine for each device and resolution (None: the demo one)."""
    for device in devices:
        for res in resolutions:
            command = [sys.executable, "-m", "nas.cli", "profile", "--space", space, "--device", device]
            command += ["--resolution", str(res)] if res else []
            print("$", " ".join(command[2:]), flush=True)
            subprocess.run(command, check=True)


def summarize(table: LatencyTable) -> dict[str, Any]:
    """Naive and final figures of one table's validation report, with ratios."""
    meta, report = table.metadata, table.validation
    naive, final = report.naive.model_dump(), {k: getattr(report, k) for k in ("mape", "within_5", "within_10",
                                                                                 "spearman")}
    return {
        "table": str(Path(table.source).relative_to(PROFILES_DIR.parent)),
        "device_id": meta.device_id, "backend": meta.backend, "hardware": meta.hardware, "space": meta.space,
        "resolution": meta.space_config["resolution"], "batch": meta.batch, "dtype": meta.dtype,
        "threads": meta.threads, "measured_at": report.measured_at, "profile_seconds": report.seconds,
        "n_archs": report.n_archs, "noise_pct": report.noise, "naive": naive, "final": final,
        "mape_ratio_naive_over_final": round(naive["mape"] / final["mape"], 2),
        "mape_over_noise": round(final["mape"] / report.noise, 2) if report.noise else None,
        "passes": {"within_10_ge_0.95": final["within_10"] >= 0.95, "spearman_ge_0.95": final["spearman"] >= 0.95,
                   "mape_le_2x_noise": final["mape"] <= 2 * report.noise,
                   "beats_nn_meter_0.99": final["within_10"] >= NN_METER_WITHIN_10},
    }


def plot(table: LatencyTable, path: Path) -> None:
    """Predicted (final and naive) against measured latency, with the +-10% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = np.array(table.validation.points)  # measured, predicted, naive
    meta, report = table.metadata, table.validation
    lo, hi = points.min() * 0.9, points.max() * 1.1
    line = np.linspace(lo, hi, 2)
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    ax.fill_between(line, line * 0.9, line * 1.1, color="0.88", label="±10%")
    ax.plot(line, line, color="0.4", lw=0.8)
    ax.scatter(points[:, 0], points[:, 2], s=10, c="tab:orange", alpha=0.7,
               label=f"naive sum: {report.naive.within_10:.0%} within 10%, MAPE {report.naive.mape:.1f}%")
    ax.scatter(points[:, 0], points[:, 1], s=10, c="tab:blue",
               label=f"table: {report.within_10:.0%} within 10%, MAPE {report.mape:.1f}%")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="measured end-to-end latency (ms)", ylabel="predicted (ms)",
           title=f"{meta.space} r{meta.space_config['resolution']} on {meta.device_id}\n"
                 f"{report.n_archs} held-out archs, noise {report.noise:.1f}%")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", action="store_true", help="re-profile this machine's CPU tables first")
    parser.add_argument("--space", default="proxylessnas", help="space to re-profile with --measure")
    parser.add_argument("--devices", default="cpu,onnxruntime", help="backends to re-profile with --measure")
    args = parser.parse_args()
    if args.measure:
        measure(args.space, [None, 224], args.devices.split(","))
    OUT_DIR.mkdir(exist_ok=True)
    results = []
    for path in sorted(PROFILES_DIR.glob("*/*.yaml")):
        table = LatencyTable.load(path)
        if table.validation is None or not table.validation.points:
            print(f"skip {path}: no validation points (re-validate it with `nas profile --validate`)")
            continue
        stem = f"{table.metadata.device_id}-{path.stem}"
        summary = summarize(table)
        (OUT_DIR / f"{stem}.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
        plot(table, OUT_DIR / f"{stem}.png")
        results.append(summary)
    write_result("lut_accuracy", {"tables": results, "nn_meter_within_10": NN_METER_WITHIN_10})


if __name__ == "__main__":
    main()
