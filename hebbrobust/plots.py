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


def _times_255(eps: np.typing.ArrayLike) -> np.typing.ArrayLike:
    return np.asarray(eps, dtype=float) * 255


def _over_255(eps: np.typing.ArrayLike) -> np.typing.ArrayLike:
    return np.asarray(eps, dtype=float) / 255


def robustness_figure(extras: dict, title: str = "") -> Figure:
    """Accuracy vs L∞ ε for FGSM and PGD, from `evaluate_robustness`'s extras: A(ε) = fraction of the
    confident images with minimal radius ρ > ε (steps), the logistic fit (dashed) and R (dotted), and
    the fixed-ε grid (filled: among clean-correct images, open: absolute). ε on the bottom axis in
    [0, 1] pixel units, on the top axis in units of 1/255."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colours = {"fgsm": "tab:blue", "pgd": "tab:red"}
    curve_eps = np.asarray(extras.get("curve_eps", []), dtype=float)
    grid_eps = np.asarray(extras.get("grid_eps", []), dtype=float) / 255
    for attack, colour in colours.items():
        label = attack.upper()
        curve = np.asarray(extras.get(f"curve_{attack}", []), dtype=float)
        radii = np.asarray(extras.get(f"radii_{attack}", []), dtype=float)
        if curve.size and curve.size == curve_eps.size and radii.size:
            ax.step(curve_eps, curve, where="post", color=colour, label=f"{label}: A(ε), {radii.size} images")
        fitted = np.asarray(extras.get(f"fitcurve_{attack}", []), dtype=float)
        if fitted.size and fitted.size == curve_eps.size:
            ax.plot(curve_eps, fitted, "--", color=colour, lw=1, alpha=0.8, label=f"{label}: logistic fit")
        r = extras.get(f"R_{attack}")
        if r is not None and math.isfinite(r):
            ax.axvline(r, color=colour, ls=":", lw=1, label=f"{label}: R = {r:.4f}")
        for kind, face in (("racc", colour), ("acc", "none")):
            values = np.asarray(extras.get(f"grid_{attack}_{kind}", []), dtype=float)
            if values.size and values.size == grid_eps.size:
                note = "grid, of clean-correct" if kind == "racc" else "grid, absolute"
                ax.plot(grid_eps, values, "o", mfc=face, mec=colour, ms=6, ls="none",
                        label=f"{label}: {note}")
    right = max([float(extras.get("eps_max", 0.0)), *grid_eps.tolist(), 1 / 255])
    ax.set_xlim(0, right * 1.03)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("ε (L∞, pixel range [0, 1])")
    ax.set_ylabel("accuracy")
    top = ax.secondary_xaxis("top", functions=(_times_255, _over_255))
    top.set_xlabel("ε (units of 1/255)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper right")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
