"""The figure and the Markdown table of `strategies_nb201.py`, drawn from its result dict (what its JSON holds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

FIRST_ARCH_SHOWN = 5
"""The left panel starts here: after 1-4 archs the mean is far below the range that tells strategies apart."""


def plot(result: dict[str, Any], path: Path) -> None:
    """Best validation accuracy against archs (mean +- std over seeds) per strategy, with the archs that 12,000 s
    buy at 200- and (estimated) 12-epoch costs; and nsga2's hypervolume against random search's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.4), dpi=110)
    emphasised = {"random", *result["bar"]["strategies"]}
    for name, row in result["single_objective"].items():
        archs, mean, std = (np.array(row["curve"][k]) for k in ("archs", "mean", "std"))
        keep = archs >= FIRST_ARCH_SHOWN
        style = {"lw": 2.2} if name in emphasised else {"lw": 1.0, "ls": "--"}
        (line,) = left.plot(archs[keep], mean[keep], label=f"{name} ({row['seeds']} seeds)", **style)
        left.fill_between(archs[keep], (mean - std)[keep], (mean + std)[keep], color=line.get_color(), alpha=0.07)
    left.axhline(result["space_best_accuracy"], color="0.3", lw=0.8, ls=":", label="space's best (mean over seeds)")
    random_budgets = result["single_objective"]["random"]["budgets"]
    for key, label in (("12000s", "12,000 s at 200-epoch cost"), ("12000s_12epoch_estimate", "12,000 s at 12-epoch "
                                                                                            "cost (estimate)")):
        archs = random_budgets[key]["archs"][0]
        left.axvline(archs, color="0.5", lw=0.8, ls="-.")
        left.annotate(f"{label}: {archs:.0f} archs", (archs, 91.85), rotation=90, fontsize=7, va="top", ha="right")
    left.set(xlabel="distinct archs evaluated", ylabel="best validation accuracy seen (%)", ylim=(89.0, 91.9),
             xlim=(0, result["archs_per_run"] + 5), title="NAS-Bench-201 CIFAR-10: best accuracy vs archs (mean ± std)")
    left.legend(fontsize=7, loc="lower right", ncol=2)
    for name, row in result["multi_objective"]["strategies"].items():
        archs, mean, std = (np.array(row["curve"][k]) for k in ("archs", "mean", "std"))
        (line,) = right.plot(archs, mean, lw=2, label=f"{name} ({row['seeds']} seeds)")
        right.fill_between(archs, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    mo = result["multi_objective"]
    right.axhline(mo["space_front_hypervolume"], color="0.3", lw=0.8, ls=":", label="whole table's front")
    ref = mo["reference_point"]
    right.set(xlabel="distinct archs evaluated", ylabel="hypervolume (accuracy × ms)",
              title=f"pareto (accuracy max, latency_ms min), reference ({ref['accuracy']}, {ref['latency_ms']} ms)")
    right.legend(fontsize=8, loc="lower right")
    for ax in (left, right):
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png")
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def table(result: dict[str, Any]) -> str:
    """Markdown: best accuracy seen (one-sided p against random) per budget, picked arch's regret, cost."""
    keys = list(next(iter(result["single_objective"].values()))["budgets"])
    last = [k for k in keys if k.isdigit()][-1]
    lines = ["| strategy | " + " | ".join(keys) + f" | regret@{last} (pp) | ask+tell ms/arch |",
             "|---" * (len(keys) + 3) + "|"]
    for name, row in result["single_objective"].items():
        cells = []
        for k in keys:
            b = row["budgets"][k]
            p = f" (p={b['p_vs_random']:.1e})" if "p_vs_random" in b else ""
            cells.append(f"{b['best'][0]:.2f} ± {b['best'][1]:.2f}{p}")
        regret = row["budgets"][last]["regret"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {regret[0]:.2f} ± {regret[1]:.2f} | "
                                                          f"{row['ask_tell_ms_per_arch']:.2f} |")
    return "\n".join(lines)
