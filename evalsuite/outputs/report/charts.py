"""Charts as inline SVG strings, drawn with matplotlib's non-interactive backend.

SVG text stays text (``svg.fonttype = none``) so the page's system font renders it and the
file stays small; the XML prolog, DOCTYPE and metadata that matplotlib writes (which name
external URLs) are stripped, so the report references nothing outside itself.
"""
from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

PALETTE = ["#3b6ea8", "#e07b39", "#4f9a5a", "#b54a4a", "#7d62a8", "#8c6d4f", "#c1609a", "#6b6b6b",
           "#b0a33a", "#3aa6b0"]
STYLE: dict[RcKeyType, Any] = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#888888",
    "axes.grid": True,
    "grid.color": "#e6e6e6",
    "axes.axisbelow": True,
}


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def to_svg(fig: plt.Figure) -> str:
    """The figure as an ``<svg>`` element with nothing that points outside the page."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)
    return text.strip()


def _whiskers(values: Sequence[float], intervals: Sequence[tuple[float, float]]) -> np.ndarray:
    """``yerr`` of matplotlib (2 x n: below, above) from (low, high) intervals; none where absent."""
    below = [max(0.0, v - lo) if not (math.isnan(v) or math.isnan(lo)) else 0.0 for v, (lo, _) in zip(values, intervals)]
    above = [max(0.0, hi - v) if not (math.isnan(v) or math.isnan(hi)) else 0.0 for v, (_, hi) in zip(values, intervals)]
    return np.array([below, above])


def bars_with_ci(labels: Sequence[str], values: Sequence[float], intervals: Sequence[tuple[float, float]], title: str,
                 notes: Sequence[str] | None = None) -> str:
    """One bar per model with its 95% interval (low, high; :mod:`evalsuite.analysis.intervals`), in points."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(3.2, 0.9 * len(labels) + 1.4), 2.6))
        x = np.arange(len(labels))
        vals = [v if not math.isnan(v) else 0.0 for v in values]
        errs = _whiskers(values, intervals)
        ax.bar(x, vals, color=[color(i) for i in range(len(labels))], width=0.65)
        ax.errorbar(x, vals, yerr=errs, fmt="none", ecolor="#222222", capsize=4, linewidth=1)
        for i, v in enumerate(values):
            ax.text(i, 1.5, "—" if math.isnan(v) else f"{v:.1f}", ha="center", va="bottom", fontsize=8,
                    color="white" if not math.isnan(v) and v > 8 else "#333333")
        ax.set_xticks(x, [_short(lbl) for lbl in labels], rotation=20 if len(labels) > 3 else 0, ha="right"
                      if len(labels) > 3 else "center")
        ax.set_ylim(0, 100)
        ax.set_xlim(-0.9, len(labels) - 0.1)  # a lone bar stays a bar, not a wall
        ax.set_ylabel("score (x100)")
        ax.set_title(title, fontsize=10, loc="left")
        if notes:
            ax.set_xlabel("; ".join(notes), fontsize=7, color="#666666")
        return to_svg(fig)


def overall(labels: Sequence[str], tasks: Sequence[str], matrix: Sequence[Sequence[float]],
            intervals: Sequence[Sequence[tuple[float, float]]]) -> str:
    """Grouped bars: tasks (and H6) on x, one bar per model, with 95% intervals (low, high)."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(tasks) + 0.4 * len(labels)), 3.0))
        x = np.arange(len(tasks))
        width = 0.8 / max(1, len(labels))
        for i, label in enumerate(labels):
            vals = np.array([v if not math.isnan(v) else 0.0 for v in matrix[i]])
            errs = _whiskers(matrix[i], intervals[i])
            offset = x + (i - (len(labels) - 1) / 2) * width
            ax.bar(offset, vals, width * 0.92, yerr=errs, capsize=2,
                   color=color(i), label=_short(label), error_kw={"linewidth": 0.8, "ecolor": "#222222"})
            for xi, v in zip(offset, matrix[i], strict=True):
                if math.isnan(v):
                    ax.text(xi, 1, "—", ha="center", va="bottom", fontsize=8, color="#888888")
        ax.set_xticks(x, list(tasks))
        ax.set_ylim(0, 100)
        ax.set_ylabel("score (x100)")
        ax.set_title("All tasks (bars: score; whiskers: 95% interval; —: not evaluated)", fontsize=10, loc="left")
        ax.legend(fontsize=8, frameon=False, ncol=min(4, len(labels)), loc="upper left", bbox_to_anchor=(0, -0.12))
        return to_svg(fig)


def heatmap(rows: Sequence[str], cols: Sequence[str], matrix: np.ndarray, title: str) -> str:
    """Subjects x models, cell colour = score; missing cells are left grey and marked."""
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig, ax = plt.subplots(figsize=(2.2 + 1.1 * len(cols), 0.6 + 0.19 * len(rows)))
        masked = np.ma.masked_invalid(matrix)
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
        image = ax.imshow(masked, aspect="auto", cmap=cmap, vmin=0, vmax=100, interpolation="nearest")
        ax.set_yticks(np.arange(len(rows)), [r.replace("_", " ") for r in rows], fontsize=7)
        ax.set_xticks(np.arange(len(cols)), [_short(c) for c in cols], fontsize=8, rotation=20, ha="right")
        ax.xaxis.tick_top()
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, "—" if math.isnan(v) else f"{v:.0f}", ha="center", va="center", fontsize=6,
                    color="black" if math.isnan(v) or v > 60 else "white")
        fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="accuracy (x100)")
        ax.set_title(title, fontsize=10, loc="left", pad=28)
        return to_svg(fig)


def forest(labels: Sequence[str], deltas: Sequence[float], lows: Sequence[float], highs: Sequence[float],
           title: str, significant: Sequence[bool]) -> str:
    """Paired differences with 95% intervals; a vertical line at zero. Coloured only where the
    differences table says "significant" (its test applies: enough shared documents, p < 0.05)."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.0, 0.6 + 0.32 * len(labels)))
        y = np.arange(len(labels))[::-1]
        for yi, d, lo, hi, sig in zip(y, deltas, lows, highs, significant, strict=True):
            c = "#b54a4a" if sig and d < 0 else "#4f9a5a" if sig else "#777777"
            if not math.isnan(lo):
                ax.plot([lo, hi], [yi, yi], color=c, linewidth=2)
            ax.plot([d], [yi], "o", color=c, markersize=5)
        ax.axvline(0, color="#333333", linewidth=0.8)
        ax.set_yticks(y, list(labels), fontsize=8)
        ax.set_xlabel("difference vs baseline (points x100; green/red: significant, as in the table; grey: not, "
                      "or too few documents to test)", fontsize=8)
        ax.set_title(title, fontsize=10, loc="left")
        return to_svg(fig)


def _short(label: str, width: int = 28) -> str:
    """Long labels (local paths) shortened from the left, keeping the distinctive end."""
    return label if len(label) <= width else "…" + label[-(width - 1):]
