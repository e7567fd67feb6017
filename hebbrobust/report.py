"""Study reports: the Pareto front (pure, any number of objectives) and its export to CSV/PNG.

`pareto_front` / `pareto_rank` take a DataFrame with one row per trial and a list of
`(column, "max" | "min")` objectives. A row dominates another when it is at least as good in every
objective and strictly better in one; equal rows do not dominate each other, so ties share a front.
Rows with a missing (NaN/None) objective value are never on a front and get no rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

Objectives = Sequence[tuple[str, Literal["max", "min"] | str]]

_CHUNK = 1024  # rows compared at once: keeps the (chunk, n, m) comparison cube small


def _oriented(df: pd.DataFrame, objectives: Objectives) -> tuple[np.ndarray, np.ndarray]:
    """(values to maximise (n, m), rows that have every objective) from `df`."""
    if not objectives:
        raise ValueError("pareto: need at least one objective")
    cols = []
    for name, mode in objectives:
        if mode not in ("max", "min"):
            raise ValueError(f"pareto: mode of {name!r} must be 'max' or 'min', got {mode!r}")
        if name not in df.columns:
            raise KeyError(f"pareto: no column {name!r}; columns: {', '.join(map(str, df.columns))}")
        col = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float)
        cols.append(col if mode == "max" else -col)
    values: np.ndarray = np.stack(cols, axis=1) if len(df) else np.zeros((0, len(cols)))
    valid: np.ndarray = ~np.isnan(values).any(axis=1)
    return values, valid


def _non_dominated(values: np.ndarray) -> np.ndarray:
    """Mask of the rows of `values` (n, m; maximised, no NaN) that no other row dominates."""
    n = len(values)
    keep = np.ones(n, dtype=bool)
    for start in range(0, n, _CHUNK):
        block = values[start : start + _CHUNK]  # (c, m)
        # others[j] dominates block[i]: all(others >= block) and any(others > block)
        ge = np.all(values[None, :, :] >= block[:, None, :], axis=2)  # (c, n)
        gt = np.any(values[None, :, :] > block[:, None, :], axis=2)
        keep[start : start + len(block)] = ~np.any(ge & gt, axis=1)
    return keep


def pareto_front(df: pd.DataFrame, objectives: Objectives) -> pd.Series:
    """True for the rows of `df` on the Pareto front of `objectives` (bool Series on df.index)."""
    values, valid = _oriented(df, objectives)
    mask = np.zeros(len(df), dtype=bool)
    idx = np.flatnonzero(valid)
    mask[idx] = _non_dominated(values[idx])
    return pd.Series(mask, index=df.index, name="on_front")


def pareto_rank(df: pd.DataFrame, objectives: Objectives) -> pd.Series:
    """Non-dominated sorting: 0 for the front, 1 for the front once the front is removed, ...;
    <NA> for rows with a missing objective (nullable Int64 Series on df.index)."""
    values, valid = _oriented(df, objectives)
    rank = np.full(len(df), -1, dtype=np.int64)
    remaining = np.flatnonzero(valid)
    level = 0
    while remaining.size:
        front = _non_dominated(values[remaining])
        rank[remaining[front]] = level
        remaining = remaining[~front]
        level += 1
    out = pd.Series(rank, index=df.index, name="pareto_rank").astype("Int64")
    out[~valid] = pd.NA
    return out


def with_front(trials: pd.DataFrame, objectives: Objectives, *, finished_only: bool = True) -> pd.DataFrame:
    """`trials` with `on_front` and `pareto_rank` columns. With `finished_only`, only rows whose
    `status` is FINISHED (when there is a status column) compete for the front."""
    out = trials.copy()
    eligible = out
    if finished_only and "status" in out.columns:
        eligible = out[out["status"] == "FINISHED"]
    if any(name not in out.columns for name, _ in objectives):  # nothing reported them yet
        out["on_front"] = False
        out["pareto_rank"] = pd.Series(pd.NA, index=out.index, dtype="Int64")
        return out
    out["on_front"] = pareto_front(eligible, objectives).reindex(out.index, fill_value=False).astype(bool)
    out["pareto_rank"] = pareto_rank(eligible, objectives).reindex(out.index).astype("Int64")
    return out


def front_table(trials: pd.DataFrame, objectives: Objectives) -> pd.DataFrame:
    """The rows of `trials` (with `on_front`, see `with_front`) on the front, best first objective first."""
    if "on_front" not in trials.columns:
        trials = with_front(trials, objectives)
    front = trials[trials["on_front"]]
    name, mode = objectives[0]
    return front.sort_values(name, ascending=(mode == "min"), kind="stable")


def front_figure(trials: pd.DataFrame, objectives: Objectives, *, title: str = "", kind_column: str = "model.kind"):
    """Scatter of the first two objectives (the first against trial order when there is one):
    every finished trial, local and backprop models coloured apart, the front ringed and joined."""
    from hebbrobust import plots

    if "on_front" not in trials.columns:
        trials = with_front(trials, objectives)
    (y_name, _), *rest = objectives
    x_name, x_mode = rest[0] if rest else (None, "max")
    return plots.pareto_scatter(
        trials, y=y_name, x=x_name, x_mode=x_mode, kind=kind_column, step=len(objectives) == 2, title=title
    )


def write_front(trials: pd.DataFrame, objectives: Objectives, out_dir: Path, *, title: str = "") -> dict[str, Path]:
    """front.csv (the front), trials.csv (every trial) and front.png under `out_dir`; returns name -> path."""
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = with_front(trials, objectives) if "on_front" not in trials.columns else trials
    paths = {
        "front.csv": out_dir / "front.csv",
        "trials.csv": out_dir / "trials.csv",
        "front.png": out_dir / "front.png",
    }
    front_table(trials, objectives).to_csv(paths["front.csv"], index=False)
    trials.to_csv(paths["trials.csv"], index=False)
    fig = front_figure(trials, objectives, title=title)
    fig.savefig(paths["front.png"], dpi=110)
    plt.close(fig)
    return paths


# --------------------------------------------------------------------------- the study report
#
# `build_report(study_dir)` reads a study directory (study.json, spec.yaml, trials/<id>/ as
# hebbrobust.study.tuner writes them: that package imports ray, so it is not imported here), its
# MLflow child runs (finished trials only) and its Optuna storage, and writes:
#   trials.csv, correlations.csv, importance.csv; pareto.png, importance.png, effects.png,
#   unconverged.png; filters/ (the front's filter grids: one composite, plus a copy each);
#   report.html (self-contained: images as data URIs) or report.md (links the PNG files).
# The numbers come from the pure functions below (trials_table, study_counts, correlations,
# importance_table); plots.py draws them; the files go to the study's parent MLflow run.

STUDY_FILE = "study.json"  # = hebbrobust.study.tuner.STUDY_FILE
SPEC_FILE = "spec.yaml"  # = hebbrobust.study.tuner.SPEC_FILE
KIND = "model.kind"
UNCONVERGED = "unconverged_frac"  # = hebbrobust.evaluate.UNCONVERGED_FRAC (evaluate imports torch)
MIN_IMPORTANCE_TRIALS = 3  # fANOVA on fewer finished trials rates nothing but noise
EVALUATOR = "fANOVA (optuna.importance.FanovaImportanceEvaluator, seed 0)"
MAX_FILTER_PANELS = 12  # front members drawn in the composite; every member gets its copy
FORMATS = ("html", "md")
_LAST_COLUMNS = ("run_id", "run_name", "start_time", "end_time")


def trials_table(trials: pd.DataFrame, objectives: Objectives, searched: Sequence[str] = ()) -> pd.DataFrame:
    """One row per finished trial (a retried trial's last attempt) of `trials` (as
    tracking.read_trials gives them), with `pareto` (on the front of the finished trials) and
    `pareto_rank`; columns: trial_id, model kind, the objectives and their seed spread (`<name>_std`,
    present with seeds > 1), pareto, pareto_rank, the searched parameters, the unconverged fraction,
    every other metric, then the MLflow run. Rows: front first, best first objective first."""
    if trials.empty or "status" not in trials.columns:
        done = trials.iloc[0:0].copy()
    else:
        latest = trials.drop_duplicates("trial_id", keep="last") if "trial_id" in trials.columns else trials
        done = latest[latest["status"] == "FINISHED"].copy()
    done = done.drop(columns=[c for c in ("on_front", "pareto_rank", "pareto", "status", "reason") if c in done])
    marked = with_front(done, objectives, finished_only=False).rename(columns={"on_front": "pareto"})
    names = [m for m, _ in objectives]
    lead = ["trial_id", KIND, *names, *[f"{m}_std" for m in names], "pareto", "pareto_rank", *searched]
    lead += [UNCONVERGED, f"{UNCONVERGED}_std"]
    first = [c for c in dict.fromkeys(lead) if c in marked.columns]
    last = [c for c in _LAST_COLUMNS if c in marked.columns and c not in first]
    middle = [c for c in marked.columns if c not in first and c not in last]
    table = marked[first + middle + last]
    if len(table) and all(m in table.columns for m in names):
        name, mode = objectives[0]
        table = table.assign(_r=table["pareto_rank"].astype("float").fillna(np.inf))
        table = table.sort_values(["_r", name], ascending=[True, mode == "min"], kind="stable").drop(columns="_r")
    return table.reset_index(drop=True)


def study_counts(trials: pd.DataFrame, total: int) -> dict[str, int]:
    """Trials planned, finished, failed, unfinished (never run, cut off or running) and MLflow runs,
    counting a retried trial's last attempt."""
    if trials.empty or "status" not in trials.columns:
        return {"total": total, "finished": 0, "failed": 0, "unfinished": total, "runs": len(trials)}
    latest = trials.drop_duplicates("trial_id", keep="last") if "trial_id" in trials.columns else trials
    finished = int((latest["status"] == "FINISHED").sum())
    failed = int((latest["status"] == "FAILED").sum())
    return {
        "total": total,
        "finished": finished,
        "failed": failed,
        "unfinished": max(0, total - finished - failed),
        "runs": len(trials),
    }


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def correlations(df: pd.DataFrame, x: str, y: str, *, by: str = KIND) -> pd.DataFrame:
    """Pearson and Spearman correlation of columns `x` and `y` within each value of `by` (local and
    backprop first) and over all rows ("all", only with more than one group): one row per group
    with x, y, kind, n (rows with both values), pearson, spearman and a note when undefined
    (fewer than 3 rows, or a column constant within the group)."""
    kinds = df[by].fillna("?").astype(str) if by in df.columns else pd.Series("all", index=df.index)
    present = list(dict.fromkeys(kinds))
    groups = [k for k in ("local", "backprop") if k in present] + sorted(k for k in present if k not in ("local", "backprop"))
    if len(groups) > 1:
        groups.append("all")
    rows = []
    for group in groups:
        part = df if group == "all" else df[kinds == group]
        pair = pd.DataFrame(
            {"x": pd.to_numeric(part[x], errors="coerce"), "y": pd.to_numeric(part[y], errors="coerce")}
        ).dropna()
        n = len(pair)
        pearson = spearman = np.nan
        note = ""
        if n < 3:
            note = f"{n} trial{'s' if n != 1 else ''}: needs 3"
        elif pair["x"].nunique() == 1 or pair["y"].nunique() == 1:
            note = f"{x if pair['x'].nunique() == 1 else y} is constant"
        else:
            pearson = _pearson(pair["x"].to_numpy(float), pair["y"].to_numpy(float))
            spearman = _pearson(pair["x"].rank().to_numpy(float), pair["y"].rank().to_numpy(float))
        rows.append({"x": x, "y": y, "kind": group, "n": n, "pearson": pearson, "spearman": spearman, "note": note})
    return pd.DataFrame(rows, columns=["x", "y", "kind", "n", "pearson", "spearman", "note"])


def load_optuna_study(storage_url: str, name: str) -> tuple[Any, str]:
    """(the Optuna study `name` in `storage_url`, "") or (None, why not); never creates a storage."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage_url.startswith("sqlite:///") and not Path(storage_url.removeprefix("sqlite:///")).exists():
        return None, f"no Optuna storage at {storage_url}"
    try:
        return optuna.load_study(study_name=name, storage=storage_url), ""
    except KeyError:
        return None, f"no Optuna study {name!r} in {storage_url}"
    except Exception as e:  # a broken or foreign database: the report goes on without importances
        return None, f"cannot open the Optuna storage {storage_url}: {e.__class__.__name__}: {e}"


def importance_table(
    study: Any, objectives: Objectives, params: Sequence[str], *, min_trials: int = MIN_IMPORTANCE_TRIALS
) -> pd.DataFrame:
    """Hyperparameter importances per objective (Optuna's fANOVA evaluator, seeded) over the
    study's COMPLETE trials, as rows (objective, param, importance, evaluator, trials, note). Where
    an importance cannot be computed the row holds NaN and the note says why: too few trials, a
    parameter that took one value only (fANOVA would rate it 0), an objective that never varied."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState

    columns = ["objective", "param", "importance", "evaluator", "trials", "note"]
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))] if study else []
    n = len(complete)
    rows: list[dict[str, Any]] = []

    def note_all(objective: str, note: str) -> None:
        for param in params or [""]:
            rows.append({"objective": objective, "param": param, "importance": np.nan, "note": note})

    varied = [p for p in params if len({repr(t.params.get(p)) for t in complete}) > 1]
    for i, (objective, _) in enumerate(objectives):
        if study is None:
            note_all(objective, "no Optuna study")
        elif len(study.directions) != len(objectives):
            note_all(objective, f"the Optuna study has {len(study.directions)} objectives, the spec {len(objectives)}")
        elif n < min_trials:
            note_all(objective, f"{n} finished trial{'s' if n != 1 else ''}: importance needs at least {min_trials}")
        elif not varied:
            note_all(objective, "no parameter took more than one value")
        else:
            try:
                found = get_param_importances(
                    study,
                    evaluator=FanovaImportanceEvaluator(seed=0),
                    params=varied,
                    target=lambda t, i=i: t.values[i],
                )
            except (RuntimeError, ValueError) as e:  # zero variance in every tree, ...
                reason = "the objective never varied" if "zero total variance" in str(e) else str(e)
                note_all(objective, f"not computed: {reason}")
                continue
            for param in params:
                if param in found:
                    rows.append({"objective": objective, "param": param, "importance": float(found[param]), "note": ""})
                else:
                    rows.append({"objective": objective, "param": param, "importance": np.nan,
                                 "note": "took one value only"})
    out = pd.DataFrame(rows, columns=columns)
    out["evaluator"] = EVALUATOR
    out["trials"] = n
    return out


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The MLflow UI page of a run when the tracking URI is an MLflow server, else None."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return None


def filter_image(study_dir: Path, trial_id: str) -> Path | None:
    """A trial's filters.png (the first seed's when the study ran several), or None."""
    for candidate in (study_dir / "trials" / trial_id / "filters.png", study_dir / "trials" / trial_id / "seed0" / "filters.png"):
        if candidate.exists():
            return candidate
    return None
