"""Matplotlib figures from arrays and DataFrames. Only draws: every number comes computed."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def filter_grid(filters: np.ndarray, title: str = "", max_filters: int = 400) -> Figure:
    """All filters (F, C, w, w) as a grid, each scaled to its own range; colour when C == 3."""
    f = np.asarray(filters, dtype=np.float32)[:max_filters]
    n, c = f.shape[0], f.shape[1]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(min(12, 0.6 * cols + 1), min(12, 0.6 * rows + 1)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        w = f[i]
        lo, hi = float(w.min()), float(w.max())
        w = (w - lo) / (hi - lo) if hi > lo else np.zeros_like(w)
        if c == 3:
            ax.imshow(w.transpose(1, 2, 0), interpolation="nearest")
        else:
            ax.imshow(w[0], cmap="gray", interpolation="nearest")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.2)
    return fig
