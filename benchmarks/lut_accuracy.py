"""How well each committed latency table predicts whole-network latency: naive sum against the fitted table.

Every table under `hardware_profiles/` carries the validation report of `nas profile`
(held-out random archs, each timed end to end twice; the naive plain sum of isolated unit
timings and the fitted table scored on the same timings). This script turns each report
into `<out>/lut_accuracy/<device-id>-<space>-r<R>.json` (naive and final figures side by
side, their ratio, MAPE against the re-measurement noise, where the table stands against
nn-Meter's 99% within +-10%, and which accuracy criterion a failing table misses) and a
plot of predicted against measured latency with the +-10% band (`.png` beside it), plus a
summary `<out>/lut_accuracy.json`. `<out>` is `benchmarks/out/` (not tracked) unless
`--out` names another directory; `--out benchmarks` rewrites the committed results.

    python benchmarks/lut_accuracy.py                   # report the committed tables
    python benchmarks/lut_accuracy.py --out benchmarks  # ... into the tracked files
    python benchmarks/lut_accuracy.py --measure         # first re-profile this machine's CPU tables

`--measure` runs `nas profile` for the cpu and onnxruntime backends at batch 1, at the
space's demo resolution and at 224x224 (about 3-5 minutes each on a 2-core machine); the
tables go to the user profiles directory (`nas.hardware.store`), which is then reported.
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
from _common import HERE, machine  # noqa: E402

from nas.config import PROFILES_DIR, ROOT  # noqa: E402
from nas.hardware.profile import missed_criteria  # noqa: E402
from nas.hardware.store import user_profiles_dir  # noqa: E402
from nas.hardware.table import LatencyTable  # noqa: E402

NN_METER_WITHIN_10 = 0.99  # nn-Meter's best published kernel-level predictor (mobile CPU 99.0%, GPU 99.1%)
DEFAULT_OUT = HERE / "out"


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
    path = table.path
    return {
        "table": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
        "device_id": meta.device_id, "backend": meta.backend, "hardware": meta.hardware, "space": meta.space,
        "resolution": meta.space_config["resolution"], "batch": meta.batch, "dtype": meta.dtype,
        "threads": meta.threads, "measured_at": report.measured_at, "profile_seconds": report.seconds,
        "n_archs": report.n_archs, "noise_pct": report.noise, "naive": naive, "final": final,
        "mape_ratio_naive_over_final": round(naive["mape"] / final["mape"], 2),
        "mape_over_noise": round(final["mape"] / report.noise, 2) if report.noise else None,
        "passes": {"within_10_ge_0.95": final["within_10"] >= 0.95, "spearman_ge_0.95": final["spearman"] >= 0.95,
                   "mape_le_2x_noise": final["mape"] <= 2 * report.noise,
                   "beats_nn_meter_0.99": final["within_10"] >= NN_METER_WITHIN_10},
        "missed": missed_criteria(final),
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
    parser.add_argument("--profiles", type=Path, default=None,
                        help="tables to report [default: hardware_profiles/, or the user profiles dir with --measure]")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory [default: benchmarks/out]")
    args = parser.parse_args()
    if args.measure:
        measure(args.space, [None, 224], args.devices.split(","))
    profiles = args.profiles or (user_profiles_dir() if args.measure else PROFILES_DIR)
    plots = args.out / "lut_accuracy"
    plots.mkdir(parents=True, exist_ok=True)
    results = []
    for path in sorted(profiles.glob("*/*.yaml")):
        table = LatencyTable.load(path)
        if table.validation is None or not table.validation.points:
            print(f"skip {path}: no validation points (re-validate it with `nas profile --validate`)")
            continue
        stem = f"{table.metadata.device_id}-{path.stem}"
        summary = summarize(table)
        _write(plots / f"{stem}.json", summary)
        plot(table, plots / f"{stem}.png")
        results.append(summary)
        if summary["missed"]:
            print(f"{path}: misses the accuracy bar: {'; '.join(summary['missed'])}")
    result = {"tables": results, "nn_meter_within_10": NN_METER_WITHIN_10, "machine": machine()}
    _write(args.out / "lut_accuracy.json", result)
    print(json.dumps(result, indent=1, sort_keys=True))


def _write(path: Path, data: dict[str, Any]) -> None:
    """JSON with sorted keys, replaced atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main()
