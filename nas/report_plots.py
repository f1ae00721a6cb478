"""The PNG plots of a run report (`nas.run_report`): a scatter of archs and a progress curve, as PNG bytes.

Drawn on matplotlib's Agg canvas directly, imported when first drawn: no pyplot, so no global
backend or figure state, and `nas --help` does not load matplotlib. A scatter draws every
highlighted arch but at most `MAX_PLOTTED` others (a random sample, fixed seed), and its caption
says so; past that, more points only blur the picture and slow the drawing.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nas.run_dir import write_atomic

__all__ = ["MAX_PLOTTED", "curve_png", "scatter_png", "write_png"]

MAX_PLOTTED = 50_000
"""Most points a scatter draws besides the highlighted ones; beyond, a random sample of this size."""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def curve_png(trials: Sequence[int], series: Sequence[tuple[str, Sequence[float | None]]], title: str,
              caption: str) -> bytes:
    """Step curves against trials: the first series on the left axis, a second one (if any) on the right."""
    def draw(fig: Any) -> None:
        axes = fig.add_subplot()
        for k, (name, values) in enumerate(series):
            y = np.array([np.nan if v is None else v for v in values], dtype=float)
            ax = axes if k == 0 else axes.twinx()
            ax.step(np.asarray(trials), y, where="post", color=f"C{k}")
            ax.set_ylabel(name, color=f"C{k}")
        axes.set_xlabel("trials")
        axes.set_title(title, fontsize=9)
        fig.text(0.01, 0.005, caption, fontsize=7, ha="left", va="bottom")
    return _render(draw)


def scatter_png(x: np.ndarray, y: np.ndarray, feasible: np.ndarray, highlight: np.ndarray, *, labels: tuple[str, str],
                title: str, label: str, why: str = "") -> bytes:
    """Archs at (x, y), NaN meaning not measured: `highlight`ed ones in colour, other feasible ones faded,
    infeasible ones as grey crosses. `label` names the highlighted ones (`front`), `why` says what they are."""
    has_xy = np.isfinite(x) & np.isfinite(y)
    rest = np.flatnonzero(has_xy & ~highlight)
    marked = np.flatnonzero(has_xy & highlight)
    caption = f"{len(marked):,} {label} arch{'' if len(marked) == 1 else 's'} highlighted{why}"
    if len(rest) > MAX_PLOTTED:
        caption += (f"; other archs: a random sample of {MAX_PLOTTED:,} of {len(rest):,} drawn (every {label} arch "
                    "is drawn)")
        rest = np.sort(np.random.default_rng(0).choice(rest, MAX_PLOTTED, replace=False))

    def draw(fig: Any) -> None:
        axes = fig.add_subplot()
        good, bad = rest[feasible[rest]], rest[~feasible[rest]]
        axes.scatter(x[bad], y[bad], s=6, marker="x", color="0.75", alpha=0.4, linewidths=0.5, label="infeasible",
                     rasterized=True)
        axes.scatter(x[good], y[good], s=6, color="C0", alpha=0.2, linewidths=0, label="feasible", rasterized=True)
        axes.plot(x[marked], y[marked], "o", color="C3", markersize=4, label=label)
        axes.set_xlabel(labels[0])
        axes.set_ylabel(labels[1])
        axes.set_title(title, fontsize=9)
        legend = axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # "best" scans every point
        for handle in legend.legend_handles:
            handle.set_alpha(1.0)  # the faded points' markers stay visible in the legend
        fig.text(0.01, 0.005, caption, fontsize=7, ha="left", va="bottom")
    return _render(draw)


def write_png(path: Path, data: bytes) -> None:
    """`nas.run_dir.write_atomic` of PNG bytes."""
    assert data.startswith(PNG_MAGIC), "only PNG bytes are written here"
    write_atomic(path, data)


def _render(draw: Callable[[Any], None]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5), dpi=100, layout="constrained")
    fig.get_layout_engine().set(rect=(0, 0.04, 1, 0.96))  # the bottom strip holds the caption (`fig.text`)
    FigureCanvasAgg(fig)
    draw(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
