"""Study reports: the Pareto front (pure, any number of objectives) and its export to CSV/PNG.

`pareto_front` / `pareto_rank` take a DataFrame with one row per trial and a list of
`(column, "max" | "min")` objectives. A row dominates another when it is at least as good in every
objective and strictly better in one; equal rows do not dominate each other, so ties share a front.
Rows with a missing (NaN/None) objective value are never on a front and get no rank.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from hebbrobust import tracking
from hebbrobust.config import CategoricalDist, StudySpec, load_study
from hebbrobust.errors import HebbrobustError

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
    known = [k for k in ("local", "backprop") if k in present]
    groups = known + sorted(k for k in present if k not in known)
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


def _objective_value(index: int, trial: Any) -> float:
    return float(trial.values[index])


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
                    target=functools.partial(_objective_value, i),
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
    trial_dir = study_dir / "trials" / trial_id
    for candidate in (trial_dir / "filters.png", trial_dir / "seed0" / "filters.png"):
        if candidate.exists():
            return candidate
    return None


# --------------------------------------------------------------------------- reading a study


@dataclass(frozen=True)
class StudyRecord:
    """What a report needs of a study directory."""

    name: str
    study_dir: Path
    spec: StudySpec
    spec_text: str  # spec.yaml as run
    target: tracking.TrackingTarget  # where the trial runs are read from
    recorded_uri: str  # the tracking URI in study.json (target.uri differs with --tracking-uri)
    parent_run_id: str
    optuna_storage: str
    num_trials: int

    @property
    def objectives(self) -> list[tuple[str, str]]:
        return [(o.metric, o.mode) for o in self.spec.objectives]


def read_study(study_dir: Path | str, *, tracking_uri: str | None = None) -> StudyRecord:
    """The study in `study_dir`; its runs are read from `tracking_uri` when given (a store moved or
    served elsewhere: the experiment is looked up by name there), else from the URI it recorded."""
    study_dir = Path(study_dir).expanduser().resolve()
    meta_file = study_dir / STUDY_FILE
    try:
        meta = json.loads(meta_file.read_text())
        spec_text = (study_dir / SPEC_FILE).read_text()
    except FileNotFoundError as e:
        raise HebbrobustError(f"{study_dir}: not a study directory (no {Path(str(e.filename)).name})") from None
    except (OSError, ValueError) as e:
        raise HebbrobustError(f"{meta_file}: unreadable ({e.__class__.__name__}: {e})") from None
    spec = load_study(study_dir / SPEC_FILE)
    if tracking_uri:
        uri = tracking.resolve_tracking_uri(tracking_uri)
        found = tracking.find_experiment(uri, meta["experiment"])
        if found is None:
            raise HebbrobustError(
                f"MLflow at {uri}: no experiment {meta['experiment']!r} (the study recorded {meta['tracking_uri']})"
            )
        target = found
    else:
        target = tracking.TrackingTarget(meta["tracking_uri"], meta["experiment"], str(meta["experiment_id"]))
    return StudyRecord(
        name=meta["name"],
        study_dir=study_dir,
        spec=spec,
        spec_text=spec_text,
        target=target,
        recorded_uri=meta["tracking_uri"],
        parent_run_id=meta["parent_run_id"],
        optuna_storage=meta["optuna_storage"],
        num_trials=int(meta["num_trials"]),
    )


# --------------------------------------------------------------------------- page content
# A page is a list of blocks; `_html` and `_markdown` render the same blocks.


@dataclass(frozen=True)
class _Code:
    text: str


@dataclass(frozen=True)
class _Link:
    text: str
    url: str


_Inline = str | _Code | _Link


@dataclass(frozen=True)
class _Heading:
    level: int
    text: str


@dataclass(frozen=True)
class _Para:
    parts: tuple[_Inline, ...]


@dataclass(frozen=True)
class _Table:
    header: tuple[str, ...]
    rows: tuple[tuple[_Inline, ...], ...]


@dataclass(frozen=True)
class _Image:
    file: str  # relative to the report directory
    caption: str


@dataclass(frozen=True)
class _Pre:
    summary: str
    text: str


_Block = _Heading | _Para | _Table | _Image | _Pre


def _fmt(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else ""
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return str(value)


def _table(df: pd.DataFrame, columns: Sequence[str], links: dict[str, str | None] | None = None) -> _Table:
    """`df[columns]` as a table block; a `run_id` cell links to `links[run_id]` when there is one."""
    cols = [c for c in dict.fromkeys(columns) if c in df.columns]
    rows = []
    for _, row in df[cols].iterrows():
        cells: list[_Inline] = []
        for col in cols:
            text = _fmt(row[col])
            url = (links or {}).get(str(row[col])) if col == "run_id" else None
            cells.append(_Link(text, url) if url else (_Code(text) if col == "run_id" else text))
        rows.append(tuple(cells))
    return _Table(tuple(cols), tuple(rows))


def _inline_html(part: _Inline) -> str:
    if isinstance(part, _Code):
        return f"<code>{html.escape(part.text)}</code>"
    if isinstance(part, _Link):
        return f'<a href="{html.escape(part.url, quote=True)}">{html.escape(part.text)}</a>'
    return html.escape(part)


def _inline_md(part: _Inline) -> str:
    if isinstance(part, _Code):
        return f"`{part.text}`"
    if isinstance(part, _Link):
        return f"[{part.text}]({part.url})"
    return part.replace("|", "\\|")


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1250px; margin: 1.5em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; font-size: 13px; margin: .6em 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; white-space: nowrap; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
.scroll { overflow-x: auto; max-width: 100%; }
figure { margin: .8em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; }
code, pre { font-size: 12.5px; } pre { background: #f6f6f6; padding: .6em; overflow-x: auto; }
"""


def _html(title: str, blocks: Sequence[_Block], out_dir: Path) -> str:
    body = []
    for b in blocks:
        if isinstance(b, _Heading):
            body.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, _Para):
            body.append("<p>" + "".join(_inline_html(p) for p in b.parts) + "</p>")
        elif isinstance(b, _Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in b.rows)
            body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
        elif isinstance(b, _Image):
            data = base64.b64encode((out_dir / b.file).read_bytes()).decode("ascii")
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.file, quote=True)}">'
                f"<figcaption>{html.escape(b.caption)} ({html.escape(b.file)})</figcaption></figure>"
            )
        elif isinstance(b, _Pre):
            body.append(f"<details><summary>{html.escape(b.summary)}</summary><pre>{html.escape(b.text)}</pre></details>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _markdown(blocks: Sequence[_Block]) -> str:
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, _Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, _Para):
            lines += ["".join(_inline_md(p) for p in b.parts), ""]
        elif isinstance(b, _Table):
            lines.append("| " + " | ".join(_inline_md(h) for h in b.header) + " |")
            lines.append("|" + "---|" * len(b.header))
            lines += ["| " + " | ".join(_inline_md(c) for c in r) + " |" for r in b.rows]
            lines.append("")
        elif isinstance(b, _Image):
            lines += [f"![{b.caption}]({b.file})", "", f"*{b.caption}*", ""]
        elif isinstance(b, _Pre):
            lines += [f"<details><summary>{b.summary}</summary>", "", "```yaml", b.text.rstrip(), "```", "",
                      "</details>", ""]
    return "\n".join(lines)


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
    importance: pd.DataFrame  # importance.csv
    notes: list[str] = field(default_factory=list)  # what could not be shown, and why
    artifact_uri: str | None = None  # where the files went on the parent MLflow run


def _corr_note(corr: pd.DataFrame) -> str:
    lines = []
    for _, r in corr.iterrows():
        if r["note"]:
            lines.append(f"{r['kind']:<9} n={r['n']:<3} {r['note']}")
        else:
            lines.append(f"{r['kind']:<9} n={r['n']:<3} Pearson {r['pearson']:+.2f}  Spearman {r['spearman']:+.2f}")
    return "\n".join(lines)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _front_filters(table: pd.DataFrame, study: StudyRecord, out_dir: Path, notes: list[str]) -> dict[str, Path]:
    """filters/front_filters.png (the front's filter grids side by side, scores in the titles) and a
    copy of each member's grid; {} (with a note) when no member has one."""
    import matplotlib.image as mpimg

    from hebbrobust import plots

    folder = out_dir / "filters"
    if folder.exists():
        for old in folder.glob("*.png"):
            old.unlink()
    members = table[table["pareto"]] if "pareto" in table.columns else table.iloc[0:0]
    images: list[np.ndarray] = []
    titles: list[str] = []
    files: dict[str, Path] = {}
    for i, (_, row) in enumerate(members.iterrows()):
        source = filter_image(study.study_dir, str(row["trial_id"]))
        if source is None:
            notes.append(f"front member {row['trial_id']}: no filters.png in its trial directory")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        copy = folder / f"{i:02d}_{row['trial_id']}_{row.get(KIND, 'trial')}.png"
        shutil.copyfile(source, copy)
        files[f"filters/{copy.name}"] = copy
        if len(images) < MAX_FILTER_PANELS:
            scores = [f"{m} {_fmt(row.get(m))}" for m, _ in study.objectives]
            if UNCONVERGED in row:
                scores.append(f"unconverged {_fmt(row[UNCONVERGED])}")
            images.append(mpimg.imread(source))
            titles.append(f"{row['trial_id']} ({row.get(KIND, '?')})\n" + "\n".join(scores))
    if len(members) > MAX_FILTER_PANELS:
        notes.append(f"filters: the composite shows the first {MAX_FILTER_PANELS} of {len(members)} front members")
    if images:
        title = f"{study.name}: filters of the Pareto front's members (best {study.objectives[0][0]} first)"
        files["filters/front_filters.png"] = _save(
            plots.image_panels(images, titles, title=title), folder / "front_filters.png"
        )
    return files


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
    from hebbrobust import plots

    if fmt not in FORMATS:
        raise HebbrobustError(f"report format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    study = read_study(study_dir, tracking_uri=tracking_uri)
    objectives = study.objectives
    names = [m for m, _ in objectives]
    searched = list(study.spec.space)
    raw = tracking.read_trials(study.target, study.parent_run_id)
    counts = study_counts(raw, study.num_trials)
    if counts["finished"] == 0:
        raise HebbrobustError(
            f"study {study.name!r}: no finished trials yet ({counts['runs']} runs in {study.target.uri}); "
            "nothing to report"
        )
    table = trials_table(raw, objectives, searched)
    out = Path(out_dir).expanduser().resolve() if out_dir else study.study_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    files: dict[str, Path] = {}

    table.to_csv(out / "trials.csv", index=False)
    files["trials.csv"] = out / "trials.csv"

    pairs = [correlations(table, names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]
    unconverged = {m: correlations(table, UNCONVERGED, m) for m in names} if UNCONVERGED in table.columns else {}
    corr = pd.concat([*pairs, *unconverged.values()], ignore_index=True) if pairs or unconverged else pd.DataFrame(
        columns=["x", "y", "kind", "n", "pearson", "spearman", "note"]
    )
    corr.to_csv(out / "correlations.csv", index=False)
    files["correlations.csv"] = out / "correlations.csv"

    optuna_study, why = load_optuna_study(study.optuna_storage, study.name)
    if why:
        notes.append(f"importance: {why}")
    importance = importance_table(optuna_study, objectives, searched)
    importance.to_csv(out / "importance.csv", index=False)
    files["importance.csv"] = out / "importance.csv"

    finished = counts["finished"]
    (y_name, _), *rest = objectives
    x_name, x_mode = rest[0] if rest else (None, "max")
    files["pareto.png"] = _save(
        plots.pareto_scatter(
            table, y=y_name, x=x_name, x_mode=x_mode, front="pareto", kind=KIND, step=len(objectives) == 2,
            title=f"{study.name}: {finished} finished trials, {int(table['pareto'].sum())} on the Pareto front"
            + (f" of {len(objectives)} objectives (first two shown)" if len(objectives) > 2 else ""),
        ),
        out / "pareto.png",
    )
    n_rated = int(importance["trials"].iloc[0]) if len(importance) else 0
    title = f"Hyperparameter importance: {EVALUATOR}, {n_rated} finished trials"
    files["importance.png"] = _save(
        plots.importance_bars(importance, names, title=title),
        out / "importance.png",
    )
    categorical = {k for k, d in study.spec.space.items() if isinstance(d, CategoricalDist)}
    log_scale = {k for k, d in study.spec.space.items() if getattr(d, "log", False)}
    files["effects.png"] = _save(
        plots.effects_grid(
            table, [p for p in searched if p in table.columns], names, categorical=categorical,
            log_scale=log_scale, kind=KIND, title=f"{study.name}: each searched hyperparameter against the objectives",
        ),
        out / "effects.png",
    )
    if unconverged:
        files["unconverged.png"] = _save(
            plots.scatter_by_kind(
                table, UNCONVERGED, names, notes={m: _corr_note(c) for m, c in unconverged.items()}, kind=KIND,
                title=f"{study.name}: unconverged filter fraction against the objectives",
            ),
            out / "unconverged.png",
        )
    else:
        notes.append(f"unconverged.png: the trials report no {UNCONVERGED}")
    files.update(_front_filters(table, study, out, notes))

    report = Report(study, out, files, table, counts, corr, importance, notes)
    page = _page(report)
    if fmt == "html":
        (out / "report.html").write_text(_html(f"{study.name}: study report", page, out))
        files["report.html"] = out / "report.html"
    else:
        (out / "report.md").write_text(_markdown(page))
        files["report.md"] = out / "report.md"
    if log:
        report.artifact_uri = tracking.log_report(study.target, study.parent_run_id, files)
    return report


def _page(r: Report) -> list[_Block]:
    """The report page's blocks (images by file name, relative to the report directory)."""
    study, names = r.study, [m for m, _ in r.study.objectives]
    target = study.target
    links = {run: mlflow_run_url(target.uri, target.experiment_id, run) for run in r.trials.get("run_id", [])}
    spec = study.spec
    c = r.counts
    finished = r.trials
    kinds = finished[KIND].fillna("?").value_counts().to_dict() if KIND in finished.columns else {}
    blocks: list[_Block] = [
        _Heading(1, f"Study {study.name}"),
        _Para((
            f"Generated {datetime.now(UTC).isoformat(timespec='seconds')} from ", _Code(str(study.study_dir)), ". ",
            "Objectives: " + ", ".join(f"{m} ({mode})" for m, mode in study.objectives)
            + f"; sampler {spec.sampler.name}"
            + (f" (seed {spec.sampler.seed})" if spec.sampler.seed is not None else "")
            + f"; {spec.seeds} seed{'s' if spec.seeds > 1 else ''} per trial"
            + ("; seed spread in the *_std columns" if spec.seeds > 1 else "") + ".",
        )),
        _Table(
            ("planned", "finished", "failed", "unfinished", "MLflow runs", "finished by model kind"),
            ((str(c["total"]), str(c["finished"]), str(c["failed"]), str(c["unfinished"]), str(c["runs"]),
              ", ".join(f"{k} {v}" for k, v in kinds.items())),),
        ),
    ]
    if r.notes:
        blocks.append(_Para(("Notes: " + "; ".join(r.notes) + ".",)))
    if len(names) > 1:
        blocks += [
            _Heading(2, f"Accuracy vs robustness: corr({names[0]}, {names[1]}) per model kind"),
            _table(r.correlations[(r.correlations["x"] == names[0]) & (r.correlations["y"] == names[1])],
                   ["kind", "n", "pearson", "spearman", "note"]),
        ]
    front_cols = ["trial_id", KIND, *names, *[f"{m}_std" for m in names], *spec.space, UNCONVERGED, "run_id"]
    blocks += [
        _Heading(2, "Pareto front"),
        _Image("pareto.png", "every finished trial; the front ringed, joined by its staircase and labelled"),
        _table(r.trials[r.trials["pareto"]], front_cols, links),
    ]
    if "filters/front_filters.png" in r.files:
        blocks += [
            _Heading(2, "Filters of the front's members"),
            _Image("filters/front_filters.png", "each front member's filter grid with its scores"),
        ]
    imp = r.importance
    rated = imp.dropna(subset=["importance"])
    blocks += [
        _Heading(2, "Hyperparameter importance"),
        _Para((f"Evaluator: {EVALUATOR}, over the {int(imp['trials'].iloc[0]) if len(imp) else 0} COMPLETE trials of "
               "the Optuna study (local and backprop pooled).",)),
        _Image("importance.png", "importance per objective"),
    ]
    if len(imp) and len(rated) < len(imp):
        blocks.append(_Para(("Not rated: " + "; ".join(sorted({f"{n}" for n in imp["note"] if n})) + ".",)))
    blocks += [
        _Heading(2, "Effects of each hyperparameter"),
        _Image("effects.png", "each searched hyperparameter against each objective; categorical ones as boxes"),
    ]
    if "unconverged.png" in r.files:
        uc = r.correlations[r.correlations["x"] == UNCONVERGED]
        blocks += [
            _Heading(2, "Unconverged filters vs the objectives"),
            _Image("unconverged.png", "unconverged filter fraction against each objective"),
            _table(uc, ["y", "kind", "n", "pearson", "spearman", "note"]),
        ]
    trial_cols = ["trial_id", KIND, *names, "pareto_rank", *spec.space, UNCONVERGED, "run_id"]
    blocks += [_Heading(2, f"All {len(r.trials)} finished trials"), _table(r.trials, trial_cols, links)]
    mlflow: list[_Inline] = ["Tracking URI ", _Code(target.uri), f", experiment {target.experiment!r} (id ",
                             _Code(target.experiment_id), "), parent run "]
    parent_url = mlflow_run_url(target.uri, target.experiment_id, study.parent_run_id)
    mlflow.append(_Link(study.parent_run_id, parent_url) if parent_url else _Code(study.parent_run_id))
    mlflow.append(" (this report is logged there under report/).")
    if parent_url is None:
        mlflow += [" Browse with ", _Code(f"mlflow ui --backend-store-uri {target.uri}"), ", then open ",
                   _Code(f"http://127.0.0.1:5000/#/experiments/{target.experiment_id}/runs/<run_id>"), "."]
    blocks += [
        _Heading(2, "Where the study lives"),
        _Para(tuple(mlflow)),
        _Para(("Optuna: ", _Code(f"optuna-dashboard {study.optuna_storage}"), f" (study name {study.name!r}).")),
        _Pre("The study's spec (spec.yaml)", study.spec_text),
    ]
    return blocks
