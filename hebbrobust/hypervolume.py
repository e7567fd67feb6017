"""Hypervolume of a study's front, and how it grew: pure (numpy, pandas, moocore), no Ray/MLflow/Optuna.

The hypervolume of a set of points is the volume of objective space they dominate, bounded by a
reference point. It is computed by moocore (exact: O(n log n) in 2-3 objectives). Values below are
taken in the objectives' own units and directions; the reference point is fixed per objective so
that hypervolumes of different studies with the same objectives compare:

- a maximised objective: reference 0. Every metric we maximise is >= 0 and 0 is its worst value
  (accuracies in [0, 1], robust accuracies, radii R, eps50 in 1/255 units, AUCs).
- a minimised objective: reference 1. The metrics one minimises here are fractions in [0, 1]
  (unconverged_frac, error rates); for anything else (seconds, ...) set `ref` in the spec:
  `objectives: [{metric: train_seconds, mode: min, ref: 600}]`.

A point no better than the reference in some objective adds nothing. Rows with a missing objective
add nothing either.
"""

from __future__ import annotations

from collections.abc import Sequence

import moocore
import numpy as np
import pandas as pd

from hebbrobust.numeric import dominated_by, pareto_rank

DEFAULT_REF = {"max": 0.0, "min": 1.0}

# (metric, "max" | "min") pairs, as the rest of hebbrobust passes objectives
Objectives = Sequence[tuple[str, str]]


def reference_point(objectives: Objectives, refs: Sequence[float | None] | None = None) -> np.ndarray:
    """The reference point: `refs[i]` where given, else the default for objective i's mode."""
    refs = list(refs) if refs is not None else [None] * len(objectives)
    if len(refs) != len(objectives):
        raise ValueError(f"hypervolume: {len(refs)} reference values for {len(objectives)} objectives")
    out = []
    for (name, mode), ref in zip(objectives, refs, strict=True):
        if mode not in DEFAULT_REF:
            raise ValueError(f"hypervolume: mode of {name!r} must be 'max' or 'min', got {mode!r}")
        out.append(DEFAULT_REF[mode] if ref is None else float(ref))
    return np.asarray(out, dtype=float)


def _maximise(objectives: Objectives) -> list[bool]:
    return [mode == "max" for _, mode in objectives]


def hypervolume(points: np.ndarray, objectives: Objectives, ref: np.ndarray) -> float:
    """Hypervolume of `points` (n, m; objective units, rows with NaN ignored) against `ref`."""
    pts = np.asarray(points, dtype=float).reshape(-1, len(objectives))
    pts = pts[~np.isnan(pts).any(axis=1)]
    if not len(pts):
        return 0.0
    return float(moocore.hypervolume(pts, ref=ref, maximise=_maximise(objectives)))


def _values(trials: pd.DataFrame, objectives: Objectives) -> np.ndarray:
    cols = []
    for name, _ in objectives:
        if name not in trials.columns:
            cols.append(np.full(len(trials), np.nan))
        else:
            cols.append(pd.to_numeric(trials[name], errors="coerce").to_numpy(dtype=float))
    return np.stack(cols, axis=1) if cols else np.zeros((len(trials), 0))


def front_hypervolume(trials: pd.DataFrame, objectives: Objectives, ref: np.ndarray) -> float:
    """Hypervolume of the FINISHED rows of `trials` (all rows when there is no status column)."""
    done = trials[trials["status"] == "FINISHED"] if "status" in trials.columns else trials
    return hypervolume(_values(done, objectives), objectives, ref)


def trial_hours(trials: pd.DataFrame) -> pd.Series:
    """Each row's wall time in hours: end_time - start_time where both are known, else
    train_seconds + attack_seconds, else 0 (float Series on trials.index)."""
    hours = pd.Series(np.nan, index=trials.index)
    if {"start_time", "end_time"} <= set(trials.columns):
        spans = (pd.to_datetime(trials["end_time"]) - pd.to_datetime(trials["start_time"])).dt.total_seconds()
        hours = spans / 3600.0
    fallback = pd.Series(0.0, index=trials.index)
    for col in ("train_seconds", "attack_seconds"):
        if col in trials.columns:
            fallback = fallback + pd.to_numeric(trials[col], errors="coerce").fillna(0.0)
    return hours.where(hours.notna(), fallback / 3600.0).astype(float)


def history(trials: pd.DataFrame, objectives: Objectives, ref: np.ndarray) -> pd.DataFrame:
    """The hypervolume as trials ended: one row per trial (every run counts, failed and stopped
    ones too: they cost time), in the order they ended (end_time, else their order in `trials`),
    columns trial (1, 2, ...), hours (summed trial hours so far), hypervolume (of the FINISHED
    trials so far), trial_id."""
    if trials.empty:
        return pd.DataFrame({"trial": [], "hours": [], "hypervolume": [], "trial_id": []})
    order = trials.assign(_hours=trial_hours(trials), _pos=np.arange(len(trials)))
    if "end_time" in order.columns:
        order = order.assign(_end=pd.to_datetime(order["end_time"])).sort_values(["_end", "_pos"], kind="stable")
    values = _values(order, objectives)
    finished = (order["status"] == "FINISHED").to_numpy() if "status" in order.columns else np.ones(len(order), bool)
    hv = np.zeros(len(order))
    kept: list[np.ndarray] = []
    current = 0.0
    for i in range(len(order)):
        if finished[i] and not np.isnan(values[i]).any():
            kept.append(values[i])
            current = hypervolume(np.asarray(kept), objectives, ref)
        hv[i] = current
    return pd.DataFrame(
        {
            "trial": np.arange(1, len(order) + 1),
            "hours": order["_hours"].cumsum().to_numpy(),
            "hypervolume": hv,
            "trial_id": order["trial_id"].to_numpy() if "trial_id" in order.columns else np.arange(len(order)),
        }
    )


def dominated_share(front: np.ndarray, other: np.ndarray, objectives: Objectives) -> float:
    """The share of `front`'s points (n, m) that some point of `other` dominates (at least as good
    everywhere, better somewhere); NaN for an empty front."""
    a = np.asarray(front, dtype=float).reshape(-1, len(objectives))
    b = np.asarray(other, dtype=float).reshape(-1, len(objectives))
    a, b = a[~np.isnan(a).any(axis=1)], b[~np.isnan(b).any(axis=1)]
    if not len(a):
        return float("nan")
    sign = np.where(_maximise(objectives), 1.0, -1.0)
    return float(np.mean(dominated_by(a * sign, b * sign)))


def rank_for_promotion(points: np.ndarray, objectives: Objectives) -> np.ndarray:
    """Positions of `points` (n, m) best first: by non-dominated rank (numeric.pareto_rank: 0 =
    the front; a point missing an objective last), then within a rank by crowding distance
    (NSGA-II: the points at a rank's ends first, then those with the emptiest neighbourhood), then
    by row order (earlier first)."""
    pts = np.asarray(points, dtype=float).reshape(-1, len(objectives))
    n = len(pts)
    if n == 0:
        return np.zeros(0, dtype=int)
    names = [f"o{j}" for j in range(len(objectives))]
    frame = pd.DataFrame(pts, columns=names)
    rank = pareto_rank(frame, [(n, mode) for n, (_, mode) in zip(names, objectives, strict=True)]).fillna(-1)
    rank = rank.to_numpy(dtype=int)
    rank[rank < 0] = rank.max() + 1  # a point missing an objective ranks last
    crowd = np.zeros(n)
    for level in np.unique(rank):
        idx = np.flatnonzero(rank == level)
        crowd[idx] = crowding_distance(pts[idx])
    return np.lexsort((np.arange(n), -crowd, rank))


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each row of `points` (n, m): per objective, the gap between its
    two neighbours in that objective divided by the objective's range, summed; the ends get inf."""
    n, m = points.shape
    out = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(points[:, j], kind="stable")
        col = points[order, j]
        span = col[-1] - col[0]
        out[order[0]] = out[order[-1]] = np.inf
        if span > 0:
            out[order[1:-1]] += (col[2:] - col[:-2]) / span
    return out
