"""Study reports. Computing: pure functions on the study's trial DataFrame that return data
(`trials_table`, `correlations`, `importance_table`); the Pareto maths lives in `numeric` and the
study's trials and front in `study.record` (read once). Building: `build_report` writes the CSVs
and figures (plots.py draws them) and hands the page to `render` (jinja2 templates).

`build_report(study_dir)` writes to `<study_dir>/report/` (or `out_dir`):
  trials.csv (the finished trials), correlations.csv (with bootstrap 95% intervals), values.csv (per
  searched value and model kind: count, mean and max clean accuracy, mean R), importance.csv;
  pareto.png, importance.png, effects.png, unconverged.png, accuracy_vs_R.png, converged.png,
  hypervolume.png (the front's hypervolume as the trials ended);
  filters/ (the front's filter grids: one composite, plus a copy each); after `study audit`:
  audit.csv (ours vs worst case per ε), masking/ (the images behind each masking warning);
  adversarial/ (each front member's minimal-radius twins); after `study transfer`: transfer/ (the
  matrices); report.html (self-contained: images as data URIs) or report.md (links the PNG files);
and logs them to the study's parent MLflow run under report/.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hebbrobust import render, tracking
from hebbrobust.config import CategoricalDist
from hebbrobust.errors import HebbrobustError
from hebbrobust.metrics import CLEAN_ACC
from hebbrobust.metrics import UNCONVERGED_FRAC as UNCONVERGED
from hebbrobust.numeric import Objectives, with_front
from hebbrobust.study.audit import TRANSFER_DIR, summary_row
from hebbrobust.study.record import KIND, StudyRecord, is_gated, read_study

MIN_IMPORTANCE_TRIALS = 3  # fANOVA on fewer finished trials rates nothing but noise
EVALUATOR = "fANOVA (optuna.importance.FanovaImportanceEvaluator, seed 0)"
MAX_FILTER_PANELS = 12  # front members drawn in the composite; every member gets its copy
_LAST_COLUMNS = ("run_id", "run_name", "start_time", "end_time")
_CORR_COLUMNS = ["x", "y", "kind", "n", "pearson", "pearson_lo", "pearson_hi", "spearman", "spearman_lo",
                 "spearman_hi", "note"]  # fmt: skip
ROBUSTNESS = ("fgsm_R", "pgd_R")  # the thesis's R per attack: clean accuracy is correlated with each
CI_LEVEL = 0.95
CI_RESAMPLES = 2000  # paired bootstrap resamples of the trials (scipy.stats.bootstrap, percentile method)
CI_SEED = 0
SAMPLER_NOTES = {
    "grid": "every grid point once: the population is the design itself, as in the thesis (whose populations "
    "were grids)",
    "random": "independent random draws from the space: a random sample of it",
}
OPTIMISER_NOTE = (
    "an optimiser's population, not a random sample: it crowds where the objectives were good, so its "
    "correlations describe this population, not the space"
)


# --------------------------------------------------------------------------- computing


def trials_table(trials: pd.DataFrame, objectives: Objectives, searched: Sequence[str] = ()) -> pd.DataFrame:
    """One row per finished trial (a retried trial's last attempt) of `trials` (as the study record
    or tracking.read_trials gives them), with `pareto` (on the front of the finished trials: the
    record's `on_front` where present) and `pareto_rank`; columns: trial_id, model kind, the
    objectives and their seed spread (`<name>_std`, with seeds > 1), pareto, pareto_rank, the searched
    parameters, the unconverged fraction, every other metric, then the MLflow run. Rows: front first,
    best first objective first."""
    if "on_front" not in trials.columns:
        trials = with_front(trials, objectives)
    if trials.empty or "status" not in trials.columns:
        done = trials.iloc[0:0].copy()
    else:
        latest = trials.drop_duplicates("trial_id", keep="last") if "trial_id" in trials.columns else trials
        done = latest[latest["status"] == "FINISHED"]
    marked = done.drop(columns=[c for c in ("status", "reason") if c in done]).rename(columns={"on_front": "pareto"})
    names = [m for m, _ in objectives]
    lead = ["trial_id", KIND, *names, *[f"{m}_std" for m in names], "pareto", "pareto_rank", *searched]
    lead += [UNCONVERGED, f"{UNCONVERGED}_std"]
    first = [c for c in dict.fromkeys(lead) if c in marked.columns]
    last = [c for c in _LAST_COLUMNS if c in marked.columns and c not in first]
    table = marked[first + [c for c in marked.columns if c not in first and c not in last] + last]
    if len(table) and all(m in table.columns for m in names):
        name, mode = objectives[0]
        table = table.assign(_r=table["pareto_rank"].astype("float").fillna(np.inf))
        table = table.sort_values(["_r", name], ascending=[True, mode == "min"], kind="stable").drop(columns="_r")
    return table.reset_index(drop=True)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _groups(kinds: pd.Series) -> list[str]:
    """Model kinds, local and backprop first, then "all" when there is more than one."""
    present = list(dict.fromkeys(kinds))
    known = [k for k in ("local", "backprop") if k in present]
    groups = known + sorted(k for k in present if k not in known)
    return groups + ["all"] if len(groups) > 1 else groups


def correlations(df: pd.DataFrame, x: str, y: str, *, by: str = KIND) -> pd.DataFrame:
    """Pearson and Spearman correlation of columns `x` and `y` within each value of `by` (local and
    backprop first) and over all rows ("all", only with more than one group): one row per group
    with x, y, kind, n (rows with both values), pearson, spearman, their bootstrap 95% intervals
    (`bootstrap_intervals`) and a note when undefined (fewer than 3 rows, or a column constant within
    the group)."""
    kinds = df[by].fillna("?").astype(str) if by in df.columns else pd.Series("all", index=df.index)
    rows = []
    for group in _groups(kinds):
        part = df if group == "all" else df[kinds == group]
        pair = pd.DataFrame(
            {"x": pd.to_numeric(part[x], errors="coerce"), "y": pd.to_numeric(part[y], errors="coerce")}
        ).dropna()
        n = len(pair)
        pearson = spearman = np.nan
        ci = dict.fromkeys(("pearson_lo", "pearson_hi", "spearman_lo", "spearman_hi"), np.nan)
        note = ""
        if n < 3:
            note = f"{n} trial{'s' if n != 1 else ''}: needs 3"
        elif pair["x"].nunique() == 1 or pair["y"].nunique() == 1:
            note = f"{x if pair['x'].nunique() == 1 else y} is constant"
        else:
            pearson = _pearson(pair["x"].to_numpy(float), pair["y"].to_numpy(float))
            spearman = _pearson(pair["x"].rank().to_numpy(float), pair["y"].rank().to_numpy(float))
            ci = bootstrap_intervals(pair["x"].to_numpy(float), pair["y"].to_numpy(float))
        rows.append({"x": x, "y": y, "kind": group, "n": n, "pearson": pearson, "spearman": spearman, **ci,
                     "note": note})  # fmt: skip
    return pd.DataFrame(rows, columns=_CORR_COLUMNS)


def _pearson_axis(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.mean(axis=axis, keepdims=True)
    y = y - y.mean(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample with a constant column: NaN
        return np.asarray((x * y).sum(axis=axis) / np.sqrt((x * x).sum(axis=axis) * (y * y).sum(axis=axis)))


def _spearman_axis(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    from scipy.stats import rankdata

    return _pearson_axis(rankdata(x, axis=axis), rankdata(y, axis=axis), axis=axis)


def bootstrap_intervals(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Paired bootstrap 95% intervals (percentile method, `CI_RESAMPLES` resamples, seed `CI_SEED`)
    of Pearson and Spearman: pearson_lo/hi, spearman_lo/hi. Resamples whose columns came out constant
    have no correlation and are left out (then an interval is NaN only if too few remain)."""
    from scipy.stats import bootstrap

    out: dict[str, float] = {}
    for name, statistic in (("pearson", _pearson_axis), ("spearman", _spearman_axis)):
        res = bootstrap((x, y), statistic, paired=True, vectorized=True, n_resamples=CI_RESAMPLES,
                        confidence_level=CI_LEVEL, method="percentile", random_state=CI_SEED)  # fmt: skip
        dist = res.bootstrap_distribution[np.isfinite(res.bootstrap_distribution)]
        enough = len(dist) >= CI_RESAMPLES // 2
        tail = (1 - CI_LEVEL) / 2 * 100
        lo, hi = np.percentile(dist, [tail, 100 - tail]) if enough else (np.nan, np.nan)
        out[f"{name}_lo"], out[f"{name}_hi"] = float(np.clip(lo, -1, 1)), float(np.clip(hi, -1, 1))  # rounding
    return out


def correlation_pairs(names: Sequence[str], columns: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs the report correlates: clean accuracy against each R the trials report (the thesis's
    trade-off, whatever the objectives), every objective pair, and the unconverged fraction against
    each objective (when reported)."""
    pairs = [(CLEAN_ACC, r) for r in ROBUSTNESS if CLEAN_ACC in columns and r in columns]
    pairs += [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]
    if UNCONVERGED in columns:
        pairs += [(UNCONVERGED, m) for m in names]
    return list(dict.fromkeys(p for p in pairs if p[0] != p[1]))


def correlation_table(table: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """`correlations` of every pair in `correlation_pairs`, per model kind, with intervals."""
    pairs = [correlations(table, x, y) for x, y in correlation_pairs(names, list(table.columns))]
    return pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame(columns=_CORR_COLUMNS)


def sampler_note(sampler: str) -> str:
    """How the study's sampler drew its population (whether it is a random sample of the space)."""
    return f"The population was drawn by the {sampler} sampler: {SAMPLER_NOTES.get(sampler, OPTIMISER_NOTE)}."


def value_table(table: pd.DataFrame, params: Sequence[str]) -> pd.DataFrame:
    """Per searched parameter, model kind and value (the thesis's Tables 8.1, A.1-A.4): n, mean and
    max clean accuracy, mean of each R reported. A parameter that does not apply to a kind (no value
    in its trials: conditional spaces) has no rows for it."""
    metrics = [m for m in (CLEAN_ACC, *ROBUSTNESS) if m in table.columns]
    kinds = table[KIND].fillna("?").astype(str) if KIND in table.columns else pd.Series("all", index=table.index)
    frames = []
    for param in (p for p in params if p in table.columns):
        part = pd.DataFrame({"kind": kinds, "value": table[param]}).join(
            table[metrics].apply(pd.to_numeric, errors="coerce")
        )
        stats = {"n": ("value", "size"), **{f"{m}_mean": (m, "mean") for m in metrics}}
        if CLEAN_ACC in metrics:
            stats[f"{CLEAN_ACC}_max"] = (CLEAN_ACC, "max")
        grouped = part.dropna(subset=["value"]).groupby(["kind", "value"], sort=True).agg(**stats).reset_index()
        frames.append(grouped.assign(param=param))
    cols = ["param", "kind", "value", "n", *[c for m in metrics for c in (f"{m}_mean", f"{m}_max")]]
    if not frames:
        return pd.DataFrame(columns=["param", "kind", "value", "n"])
    out = pd.concat(frames, ignore_index=True)
    return out[[c for c in cols if c in out.columns]]


def _objective_value(index: int, trial: Any) -> float:
    return float(trial.values[index])


def _why_not_rated(study: Any, n_objectives: int, n: int, varied: list[str], min_trials: int) -> str:
    if study is None:
        return "no Optuna study"
    if len(study.directions) != n_objectives:
        return f"the Optuna study has {len(study.directions)} objectives, the spec {n_objectives}"
    if n < min_trials:
        return f"{n} finished trial{'s' if n != 1 else ''}: importance needs at least {min_trials}"
    return "" if varied else "no parameter took more than one value"


def _rated(study: Any, index: int, params: Sequence[str], varied: list[str]) -> dict[str, tuple[float, str]]:
    """param -> (importance, note) for objective `index`; raises ValueError with the reason."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    try:
        found = get_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=0), params=varied,
            target=functools.partial(_objective_value, index),
        )  # fmt: skip
    except (RuntimeError, ValueError) as e:  # zero variance in every tree, ...
        raise ValueError("the objective never varied" if "zero total variance" in str(e) else str(e)) from None
    return {p: (float(found[p]), "") if p in found else (np.nan, "took one value only") for p in params}


def importance_table(
    study: Any, objectives: Objectives, params: Sequence[str], *, min_trials: int = MIN_IMPORTANCE_TRIALS
) -> pd.DataFrame:
    """Hyperparameter importances per objective (Optuna's fANOVA evaluator, seeded) over the
    study's COMPLETE trials, as rows (objective, param, importance, evaluator, trials, note). Where
    an importance cannot be computed the row holds NaN and the note says why: too few trials, a
    parameter that took one value only (fANOVA would rate it 0), an objective that never varied."""
    from optuna.trial import TrialState

    complete = list(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) if study else []
    varied = [p for p in params if len({repr(t.params.get(p)) for t in complete}) > 1]
    why = _why_not_rated(study, len(objectives), len(complete), varied, min_trials)
    rows: list[dict[str, Any]] = []
    for i, (objective, _) in enumerate(objectives):
        try:
            if why:
                raise ValueError(why)
            rated = _rated(study, i, params, varied)
        except ValueError as e:
            note = str(e) if why else f"not computed: {e}"
            rated = {p: (np.nan, note) for p in params or [""]}
        rows += [{"objective": objective, "param": p, "importance": v, "note": n} for p, (v, n) in rated.items()]
    out = pd.DataFrame(rows, columns=["objective", "param", "importance", "evaluator", "trials", "note"])
    return out.assign(evaluator=EVALUATOR, trials=len(complete))


def importance_by_kind(
    study: Any, objectives: Objectives, params: Sequence[str], *, min_trials: int = MIN_IMPORTANCE_TRIALS
) -> pd.DataFrame:
    """`importance_table` per model kind (column `kind`) when the study searches `model.kind`: each
    kind's COMPLETE trials rated over the parameters they carry (a conditional space gives backprop
    trials no rule.* parameter, so none is rated for them; pooled, fANOVA would drop every trial that
    lacks one). Without a searched kind, one table with kind "all"."""
    import optuna
    from optuna.trial import TrialState

    if study is None or KIND not in params:
        return importance_table(study, objectives, params, min_trials=min_trials).assign(kind="all")
    complete = list(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    frames = []
    kinds = [k for k in _groups(pd.Series([str(t.params.get(KIND)) for t in complete], dtype=object)) if k != "all"]
    if not kinds:
        return importance_table(study, objectives, params, min_trials=min_trials).assign(kind="all")
    for kind in kinds:
        mine = [t for t in complete if str(t.params.get(KIND)) == kind]
        sub = optuna.create_study(directions=study.directions)
        sub.add_trials(mine)
        carried = [p for p in params if p != KIND and any(p in t.params for t in mine)]
        frames.append(importance_table(sub, objectives, carried, min_trials=min_trials).assign(kind=kind))
    return pd.concat(frames, ignore_index=True)


def filter_image(study_dir: Path, trial_id: str) -> Path | None:
    """A trial's filters.png (the first seed's when the study ran several), or None."""
    trial_dir = study_dir / "trials" / trial_id
    for candidate in (trial_dir / "filters.png", trial_dir / "seed0" / "filters.png"):
        if candidate.exists():
            return candidate
    return None


def audit_table(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per audited trial (one with worst_acc@<e> metrics) and ε: trial_id, model kind, eps,
    pgd_acc (ours), worst_acc (every attack, ours included), each audit attack's accuracy, gap
    (ours minus worst) and masked (gap above 2 points: our PGD overestimates robust accuracy)."""
    worst = [c for c in trials.columns if c.startswith("worst_acc@")]
    rows: list[dict[str, Any]] = []
    for _, row in trials.iterrows():
        metrics = {k: v for k, v in row.items() if isinstance(k, str) and pd.notna(v)}
        if any(c in metrics for c in worst):
            rows += summary_row(str(row["trial_id"]), row.get(KIND), metrics)
    return pd.DataFrame(rows)


def masked_trials(audit: pd.DataFrame) -> pd.DataFrame:
    """The audited trials where our PGD overestimates robust accuracy by more than 2 points at some ε:
    trial_id, model kind, the largest gap and the ε where it is."""
    if audit.empty:
        return pd.DataFrame(columns=["trial_id", KIND, "gap", "eps"])
    flagged = audit[audit["masked"]].sort_values("gap", ascending=False)
    return flagged.drop_duplicates("trial_id")[["trial_id", KIND, "gap", "eps"]].reset_index(drop=True)


def masked_images(audit_npz: Path) -> np.ndarray:
    """(N, H, W[, C]) images in [0, 1] our PGD left correct but an audit attack broke (audit.npz)."""
    if not audit_npz.exists():
        return np.zeros((0, 1, 1))
    with np.load(audit_npz) as z:
        x = np.asarray(z["masked_images"], dtype=np.float32) if "masked_images" in z else np.zeros((0, 1, 1, 1))
    x = x.transpose(0, 2, 3, 1)
    return x[..., 0] if x.shape[-1] == 1 else x


# --------------------------------------------------------------------------- building the report


@dataclass
class Report:
    """A written report: where its files are and the numbers it shows."""

    study: StudyRecord
    out_dir: Path
    files: dict[str, Path]  # name relative to out_dir -> path
    trials: pd.DataFrame  # trials.csv
    counts: dict[str, int]
    correlations: pd.DataFrame  # correlations.csv: objectives pairwise and unconverged fraction vs each
    importance: pd.DataFrame  # importance.csv: per model kind (`importance_by_kind`)
    values: pd.DataFrame  # values.csv: per searched value and kind (`value_table`)
    population: pd.DataFrame  # every FINISHED trial, gated ones included (the converged-fraction histogram)
    notes: list[str] = field(default_factory=list)  # what could not be shown, and why
    sampler: str = ""  # how the population was drawn (`sampler_note`)
    audit: pd.DataFrame = field(default_factory=pd.DataFrame)  # audit.csv: ours vs worst case per ε
    masked: pd.DataFrame = field(default_factory=pd.DataFrame)  # masking warnings, one row per trial
    transfers: list[tuple[float, pd.DataFrame, str]] = field(default_factory=list)  # (ε, matrix, PNG name)
    adversarial: list[tuple[str, str]] = field(default_factory=list)  # front member's (title, PNG name)
    artifact_uri: str | None = None  # where the files went on the parent MLflow run


def build_report(
    study_dir: Path | str,
    *,
    out_dir: Path | str | None = None,
    fmt: str = "html",
    tracking_uri: str | None = None,
    log: bool = True,
) -> Report:
    """Reads the study in `study_dir` and writes its report to `out_dir` (default
    `<study_dir>/report`): the CSVs, the figures, filters/ and report.html (`fmt` "html") or
    report.md ("md"); with `log`, the report's files go to the study's parent MLflow run under report/."""
    if fmt not in render.FORMATS:
        raise HebbrobustError(f"report format: must be one of {', '.join(render.FORMATS)}, got {fmt!r}")
    study = read_study(study_dir, tracking_uri=tracking_uri)
    if study.counts["finished"] == 0:
        raise HebbrobustError(
            f"study {study.name!r}: no finished trials yet ({study.counts['runs']} runs in {study.target.uri}); "
            "nothing to report"
        )
    out = Path(out_dir).expanduser().resolve() if out_dir else study.study_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    rep = _compute(study, out)
    rep.files.update(_figures(rep))
    rep.files.update(_front_filters(rep))
    rep.files.update(_robustness_extras(rep))
    page = out / f"report.{fmt}"
    page.write_text(render.page(rep, fmt))
    rep.files[page.name] = page
    if log:
        rep.artifact_uri = tracking.log_report(study.target, study.parent_run_id, rep.files)
    return rep


def _compute(study: StudyRecord, out: Path) -> Report:
    """The report's tables, written as CSVs."""
    names = [m for m, _ in study.objectives]
    everyone = trials_table(study.trials, study.objectives, list(study.spec.space))
    table = everyone[~is_gated(everyone)].reset_index(drop=True)  # gated: no head, no objectives
    corr = correlation_table(table, names)
    values = value_table(table, list(study.spec.space))
    notes: list[str] = []
    try:
        optuna_study = study.optuna_study()
    except HebbrobustError as e:
        optuna_study = None
        notes.append(f"importance: {e}")
    importance = importance_by_kind(optuna_study, study.objectives, list(study.spec.space))
    files = {"trials.csv": out / "trials.csv", "correlations.csv": out / "correlations.csv",
             "importance.csv": out / "importance.csv", "values.csv": out / "values.csv"}  # fmt: skip
    audit = audit_table(table)
    frames = {"trials.csv": table, "correlations.csv": corr, "importance.csv": importance, "values.csv": values}
    if len(audit):
        files["audit.csv"], frames["audit.csv"] = out / "audit.csv", audit
    for name, frame in frames.items():
        frame.to_csv(files[name], index=False)
    return Report(study, out, files, table, study.counts, corr, importance, values, everyone, notes,
                  sampler=sampler_note(study.spec.sampler.name), audit=audit, masked=masked_trials(audit))  # fmt: skip


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _figures(r: Report) -> dict[str, Path]:
    """pareto.png, hypervolume.png, importance.png, effects.png and (when reported) unconverged.png and
    the population figures."""
    from hebbrobust import plots

    study, table, objectives = r.study, r.trials, r.study.objectives
    names, space = [m for m, _ in objectives], study.spec.space
    (y_name, _), *rest = objectives
    x_name, x_mode = rest[0] if rest else (None, "max")
    title = f"{study.name}: {r.counts['finished']} finished trials, {int(table['pareto'].sum())} on the Pareto front"
    title += f" of {len(objectives)} objectives (first two shown)" if len(objectives) > 2 else ""
    rated = f"Hyperparameter importance: {EVALUATOR}, {render.rated_trials(r)} finished trials"
    hv_title = f"{study.name}: hypervolume of the front so far (reference point: {study.reference_text})"
    figures = {
        "hypervolume.png": plots.hypervolume_history({study.name: study.hypervolume_history}, title=hv_title),
        "pareto.png": plots.pareto_scatter(table, y=y_name, x=x_name, x_mode=x_mode, front="pareto", kind=KIND,
                                           step=len(objectives) == 2, title=title),
        "importance.png": plots.importance_bars(_kind_labelled(r.importance), names, title=rated),
        "effects.png": plots.effects_grid(
            table, [p for p in space if p in table.columns], names,
            categorical={k for k, d in space.items() if isinstance(d, CategoricalDist)},
            log_scale={k for k, d in space.items() if getattr(d, "log", False)}, kind=KIND,
            title=f"{study.name}: each searched hyperparameter against the objectives",
        ),
    }  # fmt: skip
    unconverged = r.correlations[r.correlations["x"] == UNCONVERGED]
    if len(unconverged):
        notes = {m: render.corr_note(unconverged[unconverged["y"] == m]) for m in names}
        figures["unconverged.png"] = plots.scatter_by_kind(
            table, UNCONVERGED, names, notes=notes, kind=KIND,
            title=f"{study.name}: unconverged filter fraction against the objectives",
        )  # fmt: skip
    else:
        r.notes.append(f"unconverged.png: the trials report no {UNCONVERGED}")
    figures.update(_population_figures(r))
    return {name: _save(fig, r.out_dir / name) for name, fig in figures.items()}


def _population_figures(r: Report) -> dict[str, Any]:
    """accuracy_vs_R.png (clean accuracy against each R, kinds apart: thesis Figs 9.3/9.9) and
    converged.png (the local trials' converged filter fraction f, gated ones included: Fig 8.6)."""
    from hebbrobust import plots

    figures: dict[str, Any] = {}
    rs = [m for m in ROBUSTNESS if m in r.trials.columns]
    if CLEAN_ACC in r.trials.columns and rs:
        corr = r.correlations[r.correlations["x"] == CLEAN_ACC]
        notes = {m: render.corr_note(corr[corr["y"] == m]) for m in rs}
        figures["accuracy_vs_R.png"] = plots.scatter_by_kind(
            r.trials, CLEAN_ACC, rs, notes=notes, kind=KIND,
            title=f"{r.study.name}: clean accuracy against the mean minimal radius R, per model kind",
        )  # fmt: skip
    else:
        r.notes.append("accuracy_vs_R.png: the trials report no clean_acc with fgsm_R or pgd_R")
    if UNCONVERGED in r.population.columns:
        f = 1 - pd.to_numeric(r.population[UNCONVERGED], errors="coerce")
        gate = r.study.spec.base.rule.min_converged
        figures["converged.png"] = plots.histogram(
            f.dropna().to_numpy(float), xlabel="converged filter fraction f", line=gate,
            line_label=f"rule.min_converged {gate:g}" if gate is not None else "",
            title=f"{r.study.name}: converged fraction of the local trials' filters ({int(f.notna().sum())} trials, "
            "gated ones included)",
        )  # fmt: skip
    return figures


def _kind_labelled(importance: pd.DataFrame) -> pd.DataFrame:
    """Params labelled `kind: param` when the table holds more than one kind."""
    if importance["kind"].nunique() < 2:
        return importance
    return importance.assign(param=importance["kind"].astype(str) + ": " + importance["param"].astype(str))


def _front_filters(r: Report) -> dict[str, Path]:
    """filters/front_filters.png (the front's filter grids side by side, scores in the titles) and a
    copy of each member's grid; {} (with a note) when no member has one."""
    import matplotlib.image as mpimg

    from hebbrobust import plots

    folder = r.out_dir / "filters"
    for old in folder.glob("*.png") if folder.exists() else []:
        old.unlink()
    members = r.trials[r.trials["pareto"]] if "pareto" in r.trials.columns else r.trials.iloc[0:0]
    images: list[Any] = []
    titles: list[str] = []
    files: dict[str, Path] = {}
    for i, (_, row) in enumerate(members.iterrows()):
        source = filter_image(r.study.study_dir, str(row["trial_id"]))
        if source is None:
            r.notes.append(f"front member {row['trial_id']}: no filters.png in its trial directory")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        copy = folder / f"{i:02d}_{row['trial_id']}_{row.get(KIND, 'trial')}.png"
        files[f"filters/{copy.name}"] = Path(shutil.copyfile(source, copy))
        if len(images) < MAX_FILTER_PANELS:
            images.append(mpimg.imread(source))
            titles.append(render.member_title(row, r.study.objectives))
    if len(members) > MAX_FILTER_PANELS:
        r.notes.append(f"filters: the composite shows the first {MAX_FILTER_PANELS} of {len(members)} front members")
    if images:
        title = f"{r.study.name}: filters of the Pareto front's members (best {r.study.objectives[0][0]} first)"
        files["filters/front_filters.png"] = _save(plots.image_panels(images, titles, title=title),
                                                   folder / "front_filters.png")  # fmt: skip
    return files


def _robustness_extras(r: Report) -> dict[str, Path]:
    """masking/<trial>.png (the images behind each masking warning, from audit.npz), adversarial/
    (each front member's adversarial.png) and transfer/ (the study's transfer matrices)."""
    from hebbrobust import plots
    from hebbrobust.study.audit import member_dir

    files: dict[str, Path] = {}
    for folder in ("masking", "adversarial", TRANSFER_DIR):
        shutil.rmtree(r.out_dir / folder, ignore_errors=True)
    for _, row in r.masked.iterrows():
        images = masked_images(member_dir(r.study, str(row["trial_id"])) / "audit.npz")
        if len(images):
            (r.out_dir / "masking").mkdir(exist_ok=True)
            title = f"{row['trial_id']}: our PGD failed, another attack succeeded"
            fig = plots.image_panels(list(images), [f"test image {i}" for i in range(len(images))], cols=8,
                                     title=title)  # fmt: skip
            name = f"masking/{row['trial_id']}.png"
            files[name] = _save(fig, r.out_dir / name)
    for i, (_, row) in enumerate(r.trials[r.trials["pareto"]].iterrows() if "pareto" in r.trials else []):
        source = member_dir(r.study, str(row["trial_id"])) / "adversarial.png"
        if source.exists():
            (r.out_dir / "adversarial").mkdir(exist_ok=True)
            name = f"adversarial/{i:02d}_{row['trial_id']}.png"
            files[name] = Path(shutil.copyfile(source, r.out_dir / name))
            r.adversarial.append((render.member_title(row, r.study.objectives).replace("\n", ", "), name))
    for csv in sorted((r.study.study_dir / TRANSFER_DIR).glob("transfer_eps*.csv")):
        (r.out_dir / TRANSFER_DIR).mkdir(exist_ok=True)
        eps = float(csv.stem.removeprefix("transfer_eps"))
        for src in (csv, csv.with_suffix(".png")):
            if src.exists():
                files[f"{TRANSFER_DIR}/{src.name}"] = Path(shutil.copyfile(src, r.out_dir / TRANSFER_DIR / src.name))
        r.transfers.append((eps, pd.read_csv(csv, index_col=0), f"{TRANSFER_DIR}/{csv.with_suffix('.png').name}"))
    return files
