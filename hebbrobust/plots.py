"""Matplotlib figures from arrays and DataFrames. Only draws: every number comes computed."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


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
    # tight_layout ignores the suptitle: keep ~0.3 inch above the grid for it
    top = 1 - 0.3 / fig.get_figheight() if title else 1
    fig.tight_layout(pad=0.2, rect=(0, 0, 1, top))
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


def _show(ax: plt.Axes, img: np.ndarray, **kw: object) -> None:
    """One image (C, H, W): grey when C == 1, colour when C == 3."""
    img = np.asarray(img, dtype=np.float32)
    if img.shape[0] == 1:
        ax.imshow(img[0], interpolation="nearest", **({"cmap": "gray"} | kw))  # type: ignore[arg-type]
    else:
        ax.imshow(img.transpose(1, 2, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def adversarial_examples(examples: dict, classes: list[str] | None = None, title: str = "") -> Figure:
    """Thesis Fig. 9.1 from `evaluate_robustness`'s extras["examples"]: per image (a column) the clean
    image with its prediction, the minimal-radius twin with its prediction, and the perturbation
    x_adv - x scaled to its own L∞ size (grey = 0; the radius in 1/255 in the title)."""
    x, adv = np.asarray(examples["x"]), np.asarray(examples["x_adv"])
    n = len(x)
    name = (lambda c: classes[c]) if classes else str  # noqa: E731
    fig, axes = plt.subplots(3, max(n, 1), figsize=(1.7 * max(n, 1) + 0.6, 5.4), squeeze=False)
    for i in range(n):
        delta = adv[i] - x[i]
        size = float(np.abs(delta).max())
        _show(axes[0, i], x[i], vmin=0, vmax=1)
        axes[0, i].set_title(f"label {name(int(examples['y'][i]))}\npred {name(int(examples['pred'][i]))}",
                             fontsize=8)
        _show(axes[1, i], adv[i], vmin=0, vmax=1)
        axes[1, i].set_title(f"pred {name(int(examples['pred_adv'][i]))}", fontsize=8, color="tab:red")
        _show(axes[2, i], 0.5 + 0.5 * delta / size if size > 0 else np.full_like(delta, 0.5), vmin=0, vmax=1)
        axes[2, i].set_title(f"δ, ε={255 * float(examples['radius'][i]):.2g}/255", fontsize=8)
    for ax, label in zip(axes[:, 0], ("clean", "adversarial", "perturbation"), strict=True):
        ax.set_ylabel(label, fontsize=8)
    if n == 0:
        axes[0, 0].axis("off")
        axes[1, 0].axis("off")
        axes[2, 0].axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def transfer_heatmap(matrix: pd.DataFrame, eps: float, title: str = "") -> Figure:
    """Robust accuracy of each target model (column) on PGD examples crafted on each source (row), as a
    heatmap with the numbers written in; the diagonal is white-box PGD. `eps` in units of 1/255."""
    values = matrix.to_numpy(dtype=float)
    rows, cols = values.shape
    fig, ax = plt.subplots(figsize=(1.1 * cols + 2.6, 0.8 * rows + 1.8))
    im = ax.imshow(values, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(cols), [str(c) for c in matrix.columns], rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(rows), [str(r) for r in matrix.index], fontsize=8)
    ax.set_xlabel("target model (evaluated)")
    ax.set_ylabel("source model (PGD crafted on)")
    for i in range(rows):
        for j in range(cols):
            colour = "black" if values[i, j] > 0.6 else "white"
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7, color=colour,
                    fontweight="bold" if str(matrix.index[i]) == str(matrix.columns[j]) else "normal")
    fig.colorbar(im, ax=ax, label="robust accuracy")
    ax.set_title(title or f"transfer of PGD examples, L∞ ε = {eps:g}/255", fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- study reports

KIND_STYLE = {"local": ("tab:blue", "o"), "backprop": ("tab:orange", "s")}  # model kind -> (colour, marker)


def _kind_style(kind: str) -> tuple[str, str]:
    return KIND_STYLE.get(kind, ("tab:gray", "^"))


def _kinds(df: pd.DataFrame, kind: str) -> pd.Series:
    if kind in df.columns:
        return df[kind].fillna("?").astype(str)
    return pd.Series("trial", index=df.index)


def _kind_order(kinds: pd.Series) -> list[str]:
    present = set(kinds)
    return [k for k in KIND_STYLE if k in present] + sorted(present - set(KIND_STYLE))


def _numbers(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)


def pareto_scatter(
    df: pd.DataFrame,
    *,
    y: str,
    x: str | None = None,
    x_mode: str = "max",
    front: str = "on_front",
    kind: str = "model.kind",
    label: str | None = "trial_id",
    step: bool = True,
    title: str = "",
) -> Figure:
    """Every row of `df` as a point of (`x`, `y`) (`y` against row order when `x` is None), model
    kinds in their own colour and marker; the rows flagged in the bool column `front` ringed, joined
    by the front's staircase when `step` (the boundary of the region the front dominates: `x_mode`
    says whether larger x is better) and labelled with their `label` column."""
    fig, ax = plt.subplots(figsize=(7.2, 5.2), layout="constrained")
    data = df.reset_index(drop=True)
    xs = _numbers(data[x]) if x is not None else np.arange(len(data), dtype=float)
    ys = _numbers(data[y])
    kinds = _kinds(data, kind)
    for k in _kind_order(kinds):
        colour, marker = _kind_style(k)
        part = (kinds == k).to_numpy()
        ax.scatter(xs[part], ys[part], s=30, alpha=0.65, color=colour, marker=marker, label=f"{k} ({part.sum()})")
    flagged = data[front].fillna(False).astype(bool).to_numpy() if front in data.columns else np.zeros(len(data), bool)
    on = flagged & np.isfinite(xs) & np.isfinite(ys)
    if on.any():
        order = np.argsort(xs[on], kind="stable")
        fx, fy = xs[on][order], ys[on][order]
        ax.scatter(fx, fy, s=110, facecolors="none", edgecolors="black", lw=1.2, label=f"Pareto front ({on.sum()})")
        if step and x is not None and len(fx) > 1:
            ax.step(fx, fy, where="pre" if x_mode == "max" else "post", color="black", lw=1, alpha=0.7)
        if label is not None and label in data.columns:
            names = data[label].astype(str).to_numpy()[on][order]
            for px, py, name in zip(fx, fy, names, strict=True):
                ax.annotate(name, (px, py), xytext=(5, 5), textcoords="offset points", fontsize=7)
    ax.set_xlabel(x if x is not None else "trial")
    ax.set_ylabel(y)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def importance_bars(table: pd.DataFrame, objectives: list[str], title: str = "") -> Figure:
    """Horizontal bars of `importance` per `param`, one panel per objective, from a long table
    (objective, param, importance, note); a panel with no importances shows its note instead."""
    n_params = max(1, table["param"].nunique()) if len(table) else 1
    fig, axes = plt.subplots(
        1, len(objectives), figsize=(5.2 * len(objectives), 1.6 + 0.45 * n_params), squeeze=False, layout="constrained"
    )
    for ax, objective in zip(axes.flat, objectives, strict=True):
        part = table[table["objective"] == objective]
        values = part.dropna(subset=["importance"]).sort_values("importance")
        ax.set_title(objective, fontsize=10)
        if values.empty:
            notes = [str(n) for n in part["note"].dropna().unique() if n] if "note" in part else []
            ax.text(0.5, 0.5, "\n".join(notes) or "no importances", ha="center", va="center", wrap=True,
                    fontsize=9, transform=ax.transAxes)
            ax.set_axis_off()
            continue
        ax.barh(values["param"].astype(str), values["importance"], color="tab:green", alpha=0.8)
        ax.set_xlim(0, max(1.0, float(values["importance"].max())))
        ax.set_xlabel("importance (sums to 1)")
        ax.grid(axis="x", alpha=0.3)
        skipped = part[part["importance"].isna()]
        if len(skipped):
            ax.text(0.99, 0.01, "not rated: " + ", ".join(skipped["param"].astype(str)), ha="right", va="bottom",
                    fontsize=7, color="dimgray", transform=ax.transAxes)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def effects_grid(
    df: pd.DataFrame,
    params: list[str],
    objectives: list[str],
    *,
    categorical: set[str] | frozenset[str] = frozenset(),
    log_scale: set[str] | frozenset[str] = frozenset(),
    kind: str = "model.kind",
    title: str = "",
) -> Figure:
    """One panel per (parameter, objective): the objective against the parameter, model kinds
    apart; categorical parameters as a box per choice with the trials jittered over it."""
    rows, cols = max(1, len(params)), max(1, len(objectives))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 2.9 * rows), squeeze=False, layout="constrained")
    kinds = _kinds(df, kind)
    order = _kind_order(kinds)
    jitter = np.random.default_rng(0).uniform(-0.18, 0.18, len(df))
    for r, param in enumerate(params):
        for c, objective in enumerate(objectives):
            ax = axes[r, c]
            ys = _numbers(df[objective])
            if param in categorical:
                choices = list(dict.fromkeys(df[param].dropna().astype(str)))
                pos = {choice: i for i, choice in enumerate(choices)}
                xs = np.array([pos.get(str(v), np.nan) if pd.notna(v) else np.nan for v in df[param]], dtype=float)
                boxes = [ys[(xs == i) & np.isfinite(ys)] for i in range(len(choices))]
                drawn = [i for i, b in enumerate(boxes) if len(b)]
                if drawn:
                    ax.boxplot([boxes[i] for i in drawn], positions=drawn, widths=0.5, showfliers=False,
                               medianprops={"color": "black"}, boxprops={"color": "gray"})
                ax.set_xticks(range(len(choices)), choices)
                ax.set_xlim(-0.6, len(choices) - 0.4)
                xs = xs + jitter
            else:
                xs = _numbers(df[param])
                if param in log_scale:
                    ax.set_xscale("log")
                finite = xs[np.isfinite(xs)]
                if finite.size and np.all(finite == np.round(finite)):  # integer settings: integer ticks
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            for k in order:
                colour, marker = _kind_style(k)
                part = (kinds == k).to_numpy()
                ax.scatter(xs[part], ys[part], s=22, alpha=0.7, color=colour, marker=marker, label=k)
            ax.set_xlabel(param, fontsize=9)
            ax.set_ylabel(objective, fontsize=9)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
    if len(order) > 1:
        axes[0, 0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def scatter_by_kind(
    df: pd.DataFrame, x: str, ys: list[str], *, notes: dict[str, str] | None = None, kind: str = "model.kind",
    title: str = "",
) -> Figure:
    """One panel per column of `ys` against `x`, model kinds apart; `notes[y]` printed under panel y
    (save with bbox_inches="tight" to keep it)."""
    fig, axes = plt.subplots(
        1, max(1, len(ys)), figsize=(5.4 * max(1, len(ys)), 5.2), squeeze=False, layout="constrained"
    )
    kinds = _kinds(df, kind)
    xs = _numbers(df[x])
    for ax, y in zip(axes.flat, ys, strict=False):
        values = _numbers(df[y])
        for k in _kind_order(kinds):
            colour, marker = _kind_style(k)
            part = (kinds == k).to_numpy()
            ax.scatter(xs[part], values[part], s=28, alpha=0.7, color=colour, marker=marker, label=k)
        note = (notes or {}).get(y)
        if note:  # below the x label: the saved figure's tight bounding box takes it in
            ax.text(0.0, -0.14, note, transform=ax.transAxes, fontsize=8, family="monospace", va="top")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def histogram(
    values: np.ndarray, *, xlabel: str, line: float | None = None, line_label: str = "", title: str = ""
) -> Figure:
    """A histogram of `values` (20 bins over [0, 1] when they lie there), a dashed line at `line`."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    inside = len(values) > 0 and values.min() >= 0 and values.max() <= 1
    ax.hist(values, bins=list(np.linspace(0, 1, 21)) if inside else 20, color="tab:blue", alpha=0.8)
    if line is not None:
        ax.axvline(line, color="tab:red", linestyle="--", label=line_label or None)
        if line_label:
            ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("trials")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def image_panels(images: list[np.ndarray], titles: list[str], *, cols: int = 4, title: str = "") -> Figure:
    """Images (H, W[, C]) side by side, `cols` to a row, each under its title."""
    n = max(1, len(images))
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    size = (max(7.0, 3.6 * cols), 4.4 * rows)
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False, layout="constrained")
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], interpolation="nearest")
            ax.set_title(titles[i], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def hypervolume_history(histories: dict[str, pd.DataFrame], *, title: str = "") -> Figure:
    """Hypervolume of the front so far against trials ended (left) and summed trial hours (right),
    one line per study; each history has columns trial, hours, hypervolume (hypervolume.history)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.2), layout="constrained", sharey=True)
    for name, hist in histories.items():
        left.step(hist["trial"], hist["hypervolume"], where="post", label=f"{name} ({len(hist)} trials)")
        right.step(hist["hours"], hist["hypervolume"], where="post", label=name)
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("trials ended")
    right.set_xlabel("summed trial hours")
    left.set_ylabel("hypervolume of the front")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def fronts_overlay(
    trials: dict[str, dict[str, pd.DataFrame]],
    fronts: dict[str, dict[str, pd.DataFrame]],
    *,
    y: str,
    x: str | None,
    x_mode: str = "max",
    title: str = "",
) -> Figure:
    """One panel per model kind (`trials[kind][study]`, `fronts[kind][study]`): each study's trials
    as faint dots and its front as a staircase in the study's colour (`y` against trial order
    when `x` is None)."""
    kinds = list(fronts)
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.2 * len(kinds), 4.8), layout="constrained", squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, kind in zip(axes[0], kinds, strict=True):
        for i, (study, front) in enumerate(fronts[kind].items()):
            colour = colours[i % len(colours)]
            df = trials[kind][study]
            xs = _numbers(df[x]) if x is not None else np.arange(len(df), dtype=float)
            ax.scatter(xs, _numbers(df[y]), s=14, alpha=0.3, color=colour)
            fx = _numbers(front[x]) if x is not None else np.arange(len(front), dtype=float)
            fy = _numbers(front[y])
            order = np.argsort(fx, kind="stable")
            ax.scatter(fx[order], fy[order], s=40, color=colour, edgecolors="black", lw=0.6,
                       label=f"{study}: front {len(front)} of {len(df)}")  # fmt: skip
            if x is not None and len(fx) > 1:
                ax.step(fx[order], fy[order], where="pre" if x_mode == "max" else "post", color=colour, lw=1.4)
        ax.set_title(kind if kind != "all" else "all trials", fontsize=10)
        ax.set_xlabel(x if x is not None else "trial")
        ax.set_ylabel(y)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
