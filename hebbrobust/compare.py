"""`hebbrobust study compare A B [C ...]`: which study found the better front, and how fast.

The numbers come from pure functions over each study's trials table (one row per MLflow run, as
`tracking.read_trials` gives it): `compare_table` (trials, finished, stopped, failed, summed trial
hours, final hypervolume, the share of each study's front that each other study's front dominates)
and `kind_fronts` (fronts per model kind). `compare_studies` reads the study directories, writes
compare.csv / compare.md / compare.html, fronts.png, hypervolume.png, hypervolume.csv and
dominance.csv to the output directory (the page rendered by `render.compare_page` from the
templates compare.html.j2 / compare.md.j2), and logs them on an MLflow run of its own (experiment
`hebbrobust-compare` in the first study's MLflow store). Studies whose objectives (metric, mode,
hypervolume reference) differ are refused: their hypervolumes do not compare.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hebbrobust import hypervolume as hv
from hebbrobust import render, tracking
from hebbrobust.errors import HebbrobustError
from hebbrobust.numeric import Objectives, pareto_front
from hebbrobust.study.record import KIND, StudyRecord, read_study, study_counts, write_hypervolume

EXPERIMENT = "hebbrobust-compare"


def _finished(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["status"] == "FINISHED"] if "status" in trials.columns else trials


def front_of(trials: pd.DataFrame, objectives: Objectives) -> pd.DataFrame:
    """The finished rows of `trials` on their Pareto front."""
    done = _finished(trials)
    if done.empty or any(m not in done.columns for m, _ in objectives):
        return done.iloc[:0]
    return done[pareto_front(done, objectives)]


def kind_fronts(trials: Mapping[str, pd.DataFrame], objectives: Objectives) -> dict[str, dict[str, pd.DataFrame]]:
    """model kind -> study -> that study's front among its trials of that kind; one kind "all" when
    the studies' finished trials are all of one kind (or name none)."""
    kinds: set[str] = set()
    for df in trials.values():
        done = _finished(df)
        if KIND in done.columns:
            kinds |= set(done[KIND].dropna().astype(str))
    if len(kinds) <= 1:
        return {"all": {name: front_of(df, objectives) for name, df in trials.items()}}
    out: dict[str, dict[str, pd.DataFrame]] = {}
    for kind in sorted(kinds):
        out[kind] = {
            name: front_of(df[df[KIND].astype(str) == kind] if KIND in df.columns else df.iloc[:0], objectives)
            for name, df in trials.items()
        }
    return out


def _points(df: pd.DataFrame, objectives: Objectives) -> np.ndarray:
    if df.empty:
        return np.zeros((0, len(objectives)))
    return np.stack([pd.to_numeric(df[m], errors="coerce").to_numpy(dtype=float) for m, _ in objectives], axis=1)


def compare_table(
    trials: Mapping[str, pd.DataFrame],
    objectives: Objectives,
    ref: np.ndarray,
    planned: Mapping[str, int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]:
    """(one row per study: study, trials (runs' trials ended or cut off), planned, finished, stopped,
    failed, hours (summed trial hours), hypervolume, front (its size), dominated_by_<other> (the share
    of this study's front some point of the other's front dominates);
    dominance (study x study: that share); hypervolume histories per study)."""
    fronts = {name: _points(front_of(df, objectives), objectives) for name, df in trials.items()}
    rows, histories = [], {}
    for name, df in trials.items():
        counts = study_counts(df, int((planned or {}).get(name, 0)))
        hist = hv.history(df, objectives, ref)
        histories[name] = hist
        row: dict[str, object] = {
            "study": name,
            "trials": int(df["trial_id"].nunique()) if "trial_id" in df.columns else len(df),
            "planned": (planned or {}).get(name),
            "finished": counts["finished"],
            "gated": counts["gated"],
            "stopped": counts["stopped"],
            "failed": counts["failed"],
            "hours": float(hv.trial_hours(df).sum()) if len(df) else 0.0,
            "hypervolume": hv.front_hypervolume(df, objectives, ref),
            "front": len(fronts[name]),
        }
        for other in trials:
            if other != name:
                row[f"dominated_by_{other}"] = hv.dominated_share(fronts[name], fronts[other], objectives)
        rows.append(row)
    names = list(trials)
    dominance = pd.DataFrame(
        [[hv.dominated_share(fronts[a], fronts[b], objectives) if a != b else np.nan for b in names] for a in names],
        index=pd.Index(names, name="front of"),
        columns=pd.Index(names, name="dominated by"),
    )
    return pd.DataFrame(rows), dominance, histories


def check_same_objectives(studies: Sequence[StudyRecord]) -> None:
    """One line refusing studies whose objectives (metric, mode, reference) differ from the first's."""
    first = studies[0]
    want = [(o.metric, o.mode, o.ref) for o in first.spec.objectives]
    for study in studies[1:]:
        got = [(o.metric, o.mode, o.ref) for o in study.spec.objectives]
        if got != want:
            show = lambda objs: ", ".join(f"{m} ({md}{'' if r is None else f', ref {r:g}'})" for m, md, r in objs)  # noqa: E731
            raise HebbrobustError(
                f"{study.study_dir}: objectives {show(got)} differ from {first.name}'s {show(want)}; "
                "studies compare only on the same objectives"
            )


@dataclass
class Comparison:
    studies: list[StudyRecord]
    out_dir: Path
    table: pd.DataFrame
    dominance: pd.DataFrame
    histories: dict[str, pd.DataFrame]
    files: dict[str, Path] = field(default_factory=dict)
    run_id: str | None = None  # the comparison's MLflow run
    tracking_uri: str | None = None
    names: list[str] = field(default_factory=list)  # the studies as the page names them
    objectives: list[tuple[str, str]] = field(default_factory=list)
    reference: str = ""  # the hypervolume reference point, as text


def compare_studies(
    study_dirs: Sequence[Path | str],
    out_dir: Path | str,
    *,
    tracking_uri: str | None = None,
    log: bool = True,
) -> Comparison:
    """Reads the studies, writes the comparison to `out_dir` and (with `log`) logs it to MLflow."""
    if len(study_dirs) < 2:
        raise HebbrobustError("study compare: give at least two studies")
    studies = [read_study(d, tracking_uri=tracking_uri) for d in study_dirs]
    if len({s.study_dir for s in studies}) < len(studies):
        raise HebbrobustError(f"study compare: a study is given twice ({', '.join(str(d) for d in study_dirs)})")
    check_same_objectives(studies)
    names = [s.name for s in studies]
    names = [str(s.study_dir) if names.count(s.name) > 1 else s.name for s in studies]  # same name, other storage
    first = studies[0]
    trials = {name: s.trials for name, s in zip(names, studies, strict=True)}
    table, dominance, histories = compare_table(
        trials, first.objectives, first.reference_point, {n: s.num_trials for n, s in zip(names, studies, strict=True)}
    )
    table.insert(1, "sampler", [s.spec.sampler.name for s in studies])
    table.insert(2, "scheduler", [s.spec.scheduler.name for s in studies])
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    c = Comparison(studies, out, table, dominance, histories, names=names, objectives=first.objectives,
                   reference=first.reference_text)  # fmt: skip
    c.files = _write(c, trials)
    if log:
        _log(c)
    return c


def _write(c: Comparison, trials: Mapping[str, pd.DataFrame]) -> dict[str, Path]:
    """compare.csv, dominance.csv, hypervolume.csv/png, fronts.png, compare.md and compare.html in `c.out_dir`."""
    files = {name: c.out_dir / name for name in ("compare.csv", "dominance.csv", "compare.md", "compare.html")}
    c.table.to_csv(files["compare.csv"], index=False)
    c.dominance.to_csv(files["dominance.csv"], index=True)
    files.update(write_hypervolume(c.histories, c.reference, c.out_dir))
    files["fronts.png"] = _fronts_figure(c, trials)
    for fmt in render.FORMATS:
        files[f"compare.{fmt}"].write_text(render.compare_page(c, fmt))
    return files


def _fronts_figure(c: Comparison, trials: Mapping[str, pd.DataFrame]) -> Path:
    import matplotlib.pyplot as plt

    from hebbrobust import plots

    (y_name, _), *rest = c.objectives
    x_name, x_mode = rest[0] if rest else (None, "max")
    fronts = kind_fronts(trials, c.objectives)
    dots = {kind: {n: _finished(df) if kind == "all" else _finished(df)[_finished(df)[KIND].astype(str) == kind]
                   for n, df in trials.items()} for kind in fronts}  # fmt: skip
    title = "finished trials (dots) and each study's front (line)"
    title += f"; first two of {len(c.objectives)} objectives" if len(c.objectives) > 2 else ""
    fig = plots.fronts_overlay(dots, fronts, y=y_name, x=x_name, x_mode=x_mode, title=title)
    fig.savefig(c.out_dir / "fronts.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return c.out_dir / "fronts.png"


def _log(c: Comparison) -> None:
    """The comparison on an MLflow run of its own (experiment `hebbrobust-compare`, the first study's store)."""
    target = tracking.ensure_experiment(c.studies[0].target.uri, EXPERIMENT)
    c.run_id = tracking.log_run(
        target,
        "compare " + " vs ".join(c.names),
        params={"studies": ", ".join(c.names), "objectives": [f"{m}:{md}" for m, md in c.objectives],
                "reference_point": c.reference},
        metrics={f"hypervolume.{n}": float(h) for n, h in zip(c.names, c.table["hypervolume"], strict=True)},
        tags={"hebbrobust.role": "compare", "hebbrobust.study_dirs": ", ".join(str(s.study_dir) for s in c.studies)},
        files=c.files,
    )  # fmt: skip
    c.tracking_uri = target.uri
