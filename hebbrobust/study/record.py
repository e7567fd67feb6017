"""A study as recorded, read-only and Ray-free: study.json, the spec, the MLflow trial runs, their
counts and front, and the Optuna study. `study show`, `study list`, the report, resume and the
progress line all read a study through here, and the front files (front.csv, front.png,
trials.csv, hypervolume.csv, hypervolume.png in the study directory) are written here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from hebbrobust import hypervolume as hv
from hebbrobust import tracking
from hebbrobust.config import StudySpec, load_study
from hebbrobust.errors import HebbrobustError
from hebbrobust.fileio import sqlite_problem
from hebbrobust.metrics import CLEAN_ACC, GATED_REASON, TRAIN_SECONDS, UNCONVERGED_FRAC
from hebbrobust.numeric import Objectives, front_table, with_front
from hebbrobust.study.directory import SPEC_FILE, filter_cache_dir, find_study_dir, read_meta, storage_root, study_dirs

TUNE_TRIAL_ATTR = "tune_trial_id"  # Optuna user attr: the Ray Tune trial that ran this Optuna trial
CUT_OFF_ATTR = "hebbrobust_cut_off"  # Optuna user attr on a trial failed by a resume: why
RERUN_ATTR = "hebbrobust_rerun_of"  # Optuna user attr on an enqueued rerun: the cut-off trial's number
GATED_ATTR = "hebbrobust_gated"  # Optuna user attr on a trial gated at rule.min_converged (PRUNED): why
STOPPED_ATTR = "hebbrobust_stopped_at_rung"  # Optuna user attr on a trial the scheduler stopped (PRUNED)
DISK_RERUN_ATTR = "hebbrobust_disk_full_rerun_of"  # Optuna user attr on the rerun of a trial failed on a full disk
DISK_FULL = "disk full"  # how a trial's failure reason starts when a write found no space: resume reruns it
KIND = "model.kind"
FRONT_FILES = ("front.csv", "trials.csv", "front.png")
HYPERVOLUME_FILES = ("hypervolume.csv", "hypervolume.png")


def load_optuna_study(storage_url: str, name: str, *, again: str = "") -> Any:
    """The Optuna study `name` in `storage_url` (never creating a storage), or a one-line error that
    ends with `again` (how to go on)."""
    import optuna

    tail = f"; {again}" if again else ""
    path = Path(storage_url.removeprefix("sqlite:///"))
    if storage_url.startswith("sqlite:///") and not path.is_file():  # load_study would create an empty one
        raise HebbrobustError(f"{path}: the study's Optuna record is missing (no Optuna storage){tail}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=name, storage=storage_url)
    except KeyError:
        raise HebbrobustError(f"{storage_url} holds no Optuna study {name!r}{tail}") from None
    except Exception as e:  # noqa: BLE001 - sqlalchemy: a truncated or foreign file
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise HebbrobustError(f"{path}: unreadable Optuna record ({e.__class__.__name__}: {first}){tail}") from None


def optuna_record(meta: dict[str, Any]) -> Any:
    """The Optuna study of a study.json, or a one-line error that says how to go on."""
    return load_optuna_study(meta["optuna_storage"], meta["name"], again=repair_hint(meta))


def repair_hint(meta: dict[str, Any]) -> str:
    """The way on when the Optuna record is lost: rebuilt from the trial runs in MLflow."""
    where = Path(str(meta["optuna_storage"]).removeprefix("sqlite:///")).parent
    return (
        f"`hebbrobust study repair {where}` rebuilds it from the trial runs in MLflow "
        f"({meta['tracking_uri']}, experiment {meta['experiment']!r})"
    )


def check_stores(meta: dict[str, Any]) -> None:
    """A damaged (truncated, overwritten) sqlite Optuna or MLflow store, as a one-line error naming the
    file and the way on, before anything reads or writes it."""
    storage, uri = str(meta["optuna_storage"]), str(meta["tracking_uri"])
    path = Path(storage.removeprefix("sqlite:///"))
    if storage.startswith("sqlite:///") and (why := sqlite_problem(path)):
        raise HebbrobustError(f"{path}: the study's Optuna record is {why}; {repair_hint(meta)}")
    if uri.startswith("sqlite:///") and (why := sqlite_problem(db := Path(uri.removeprefix("sqlite:///")))):
        raise HebbrobustError(
            f"{db}: the MLflow store is {why}; restore it from a backup (the trial runs live only there; "
            f"the Optuna record {storage.removeprefix('sqlite:///')} and the trials/ files are intact)"
        )


def create_optuna_study(spec: StudySpec, storage: str) -> Any:
    """The study's Optuna record, its objectives named (optuna-dashboard labels them by name);
    OptunaSearch loads it (load_if_exists)."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    up, down = optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE
    directions = [up if o.mode == "max" else down for o in spec.objectives]
    study = optuna.create_study(study_name=spec.name, storage=storage, directions=directions, load_if_exists=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o.metric for o in spec.objectives])
    return study


def set_trial_attr(storage: Any, study_name: str, number: int, key: str, value: Any) -> None:
    """Sets user attr `key` on trial `number` of an Optuna study through the storage's public API
    (a Trial object exists only inside ask/tell; the driver marks trials it did not ask itself)."""
    from optuna.storages import BaseStorage, RDBStorage

    store = storage if isinstance(storage, BaseStorage) else RDBStorage(str(storage))
    study_id = store.get_study_id_from_name(study_name)
    store.set_trial_user_attr(store.get_trial_id_from_study_id_trial_number(study_id, number), key, value)


def study_counts(trials: pd.DataFrame, total: int) -> dict[str, int]:
    """Trials planned, finished, gated (FINISHED runs stopped at rule.min_converged: no objectives),
    failed, stopped (at a rung by the scheduler: never on the front), unfinished (never run, cut off or
    running) and MLflow runs, counting a retried trial's last attempt."""
    if trials.empty or "status" not in trials.columns:
        return {"total": total, "finished": 0, "gated": 0, "failed": 0, "stopped": 0, "unfinished": total,
                "runs": len(trials)}  # fmt: skip
    latest = trials.drop_duplicates("trial_id", keep="last") if "trial_id" in trials.columns else trials
    done = latest["status"] == "FINISHED"
    gated = int((done & is_gated(latest)).sum())
    finished = int(done.sum()) - gated
    failed = int((latest["status"] == "FAILED").sum())
    stopped = int(latest["stopped_at_rung"].notna().sum()) if "stopped_at_rung" in latest.columns else 0
    return {
        "total": total,
        "finished": finished,
        "gated": gated,
        "failed": failed,
        "stopped": stopped,
        "unfinished": max(0, total - finished - gated - failed - stopped),
        "runs": len(trials),
    }


def is_gated(trials: pd.DataFrame) -> pd.Series:
    """Per run: whether it stopped at rule.min_converged (its `gated_reason` is set)."""
    if GATED_REASON not in trials.columns:
        return pd.Series(False, index=trials.index)
    return trials[GATED_REASON].notna()


@dataclass(frozen=True)
class StudyRecord:
    """A study directory's record; trials, counts and the Optuna study are read on first use, once."""

    name: str
    study_dir: Path
    spec: StudySpec
    spec_text: str  # spec.yaml as run
    meta: dict[str, Any]  # study.json
    target: tracking.TrackingTarget  # where the trial runs are read from

    @property
    def objectives(self) -> list[tuple[str, str]]:
        return [(o.metric, o.mode) for o in self.spec.objectives]

    @property
    def parent_run_id(self) -> str:
        return str(self.meta["parent_run_id"])

    @property
    def optuna_storage(self) -> str:  # sqlite URL of the Optuna study (optuna-dashboard reads it)
        return str(self.meta["optuna_storage"])

    @property
    def num_trials(self) -> int:
        return int(self.meta["num_trials"])

    @cached_property
    def trials(self) -> pd.DataFrame:
        """One row per MLflow child run (every attempt), with `on_front` and `pareto_rank` (finished
        runs compete), lead columns first: trial_id, model kind, objectives, searched params."""
        raw = tracking.read_trials(self.target, self.parent_run_id)
        if raw.empty:
            raw = pd.DataFrame(columns=["run_id", "trial_id", "status", "reason", KIND])
        raw = raw.assign(**{m: float("nan") for m, _ in self.objectives if m not in raw.columns})  # none reported
        marked = with_front(raw, self.objectives)
        lead = ["trial_id", KIND, *[m for m, _ in self.objectives], *self.spec.space, "on_front", "pareto_rank"]
        first = list(dict.fromkeys(c for c in [*lead, "status"] if c in marked.columns))
        return marked[first + [c for c in marked.columns if c not in first]]

    @cached_property
    def counts(self) -> dict[str, int]:
        return study_counts(self.trials, self.num_trials)

    @property
    def front(self) -> pd.DataFrame:
        """The finished trials on the front, best first objective first."""
        return front_table(self.trials, self.objectives)

    @property
    def reference_point(self) -> Any:
        """The hypervolume reference point (numpy, one value per objective; see hebbrobust/hypervolume.py)."""
        return hv.reference_point(self.objectives, [o.ref for o in self.spec.objectives])

    @property
    def reference_text(self) -> str:
        return ", ".join(f"{m} {r:g}" for (m, _), r in zip(self.objectives, self.reference_point, strict=True))

    @cached_property
    def hypervolume(self) -> float:
        """The hypervolume of the finished trials' front."""
        return hv.front_hypervolume(self.trials, self.objectives, self.reference_point)

    @cached_property
    def hypervolume_history(self) -> pd.DataFrame:
        """The hypervolume as trials ended: trial, hours (summed trial hours), hypervolume, trial_id."""
        return hv.history(self.trials, self.objectives, self.reference_point)

    def optuna_study(self) -> Any:
        """The study's Optuna record (loaded on each call: resume changes it), or a one-line error."""
        return optuna_record(self.meta)

    def write_front(self) -> dict[str, Path]:
        """front.csv, trials.csv, front.png (see `write_front`), hypervolume.csv and hypervolume.png
        (the front's hypervolume as the trials ended) in the study directory."""
        title = f"{self.name}: {self.counts['finished']} finished trials"
        paths = write_front(self.trials, self.objectives, self.study_dir, title=title)
        hv_paths = write_hypervolume({self.name: self.hypervolume_history}, self.reference_text, self.study_dir)
        return {**paths, **hv_paths}


def write_front(trials: pd.DataFrame, objectives: Objectives, out_dir: Path, *, title: str = "") -> dict[str, Path]:
    """front.csv (the front), trials.csv (every run, marked) and front.png (the first two
    objectives, local and backprop apart, the front ringed and joined) under `out_dir`."""
    import matplotlib.pyplot as plt

    from hebbrobust import plots

    missing = {m: float("nan") for m, _ in objectives if m not in trials.columns}  # every trial failed so far
    trials = trials.assign(**missing) if missing else trials
    trials = trials if "on_front" in trials.columns else with_front(trials, objectives)
    paths = {name: Path(out_dir) / name for name in FRONT_FILES}
    front_table(trials, objectives).to_csv(paths["front.csv"], index=False)
    trials.to_csv(paths["trials.csv"], index=False)
    (y_name, _), *rest = objectives
    x_name, x_mode = rest[0] if rest else (None, "max")
    fig = plots.pareto_scatter(trials, y=y_name, x=x_name, x_mode=x_mode, kind=KIND, step=len(objectives) == 2,
                               title=title)  # fmt: skip
    fig.savefig(paths["front.png"], dpi=110)
    plt.close(fig)
    return paths


def write_hypervolume(histories: dict[str, pd.DataFrame], reference: str, out_dir: Path) -> dict[str, Path]:
    """hypervolume.csv (the histories, a `study` column telling them apart) and hypervolume.png
    (against trials ended and summed trial hours, one line per study) under `out_dir`."""
    import matplotlib.pyplot as plt

    from hebbrobust import plots

    paths = {name: Path(out_dir) / name for name in HYPERVOLUME_FILES}
    pd.concat([h.assign(study=n) for n, h in histories.items()], ignore_index=True).to_csv(
        paths["hypervolume.csv"], index=False
    )
    fig = plots.hypervolume_history(histories, title=f"hypervolume of the front so far (reference point: {reference})")
    fig.savefig(paths["hypervolume.png"], dpi=100, bbox_inches="tight")
    plt.close(fig)
    return paths


def read_study(study_dir: Path | str, *, tracking_uri: str | None = None) -> StudyRecord:
    """The study in `study_dir`; its runs are read from `tracking_uri` when given (a store moved or
    served elsewhere: the experiment is looked up by name there), else from the URI it recorded."""
    study_dir = Path(study_dir).expanduser().resolve()
    meta = read_meta(study_dir)
    try:
        spec_text = (study_dir / SPEC_FILE).read_text()
    except OSError as e:
        raise HebbrobustError(f"{study_dir}: not a study directory (no {SPEC_FILE}: {e.__class__.__name__})") from None
    spec = load_study(study_dir / SPEC_FILE)
    check_stores(meta)
    target = tracking.TrackingTarget(meta["tracking_uri"], meta["experiment"], str(meta["experiment_id"]))
    if tracking_uri:
        uri = tracking.resolve_tracking_uri(tracking_uri)
        found = tracking.find_experiment(uri, meta["experiment"])
        if found is None:
            raise HebbrobustError(
                f"MLflow at {uri}: no experiment {meta['experiment']!r} (the study recorded {meta['tracking_uri']})"
            )
        target = found
    return StudyRecord(meta["name"], study_dir, spec, spec_text, meta, target)


@dataclass
class StudyOutcome:
    """A study's state after `run_study` / `resume_study` / `show_study`: its record, the front
    files written, and what this call did."""

    record: StudyRecord
    files: dict[str, Path] = field(default_factory=dict)  # spec.yaml, front.csv, front.png, trials.csv
    wall_seconds: float | None = None  # this run/resume call, Ray start-up included
    interrupted: bool = False  # Tune stopped before every trial ended: `study resume` continues
    resumed: dict[str, int] = field(default_factory=dict)  # what `resume_study` found and fixed

    name = property(lambda self: self.record.name)
    study_dir = property(lambda self: self.record.study_dir)
    spec = property(lambda self: self.record.spec)
    objectives = property(lambda self: self.record.objectives)
    tracking_uri = property(lambda self: self.record.target.uri)
    experiment = property(lambda self: self.record.target.experiment)
    experiment_id = property(lambda self: self.record.target.experiment_id)
    parent_run_id = property(lambda self: self.record.parent_run_id)
    optuna_storage = property(lambda self: self.record.optuna_storage)
    trials = property(lambda self: self.record.trials)
    front = property(lambda self: self.record.front)
    counts = property(lambda self: self.record.counts)
    hypervolume = property(lambda self: self.record.hypervolume)

    @property
    def mlflow_ui_command(self) -> str:
        """The command that shows this study's runs in the MLflow UI."""
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"open {tracking.experiment_url(self.tracking_uri, self.experiment_id, self.objectives[0][0])}"
        url = tracking.experiment_url("http://127.0.0.1:5000", self.experiment_id, self.objectives[0][0])
        return f"mlflow ui --backend-store-uri {self.tracking_uri}  # then open {url}"

    @property
    def front_columns(self) -> list[str]:
        """Columns worth a front table: trial, model kind, objectives, searched params, key metrics."""
        cols = ["trial_id", KIND] + [m for m, _ in self.objectives]
        cols += [k for k in self.spec.space if k not in cols]
        cols += [c for c in (CLEAN_ACC, UNCONVERGED_FRAC, TRAIN_SECONDS) if c not in cols]
        return [c for c in cols if c in self.front.columns]


def outcome(record: StudyRecord) -> StudyOutcome:
    """The record's outcome, its front files (re)written."""
    return StudyOutcome(record, {**record.write_front(), "spec.yaml": record.study_dir / SPEC_FILE})


def show_study(name_or_dir: str | Path | None, *, storage: Path | str | None = None) -> StudyOutcome:
    """A study's trials and front, read back from MLflow (front.csv/png rewritten in its directory)."""
    return outcome(read_study(find_study_dir(name_or_dir, storage)))


_LIST_COLUMNS = ["name", "study_dir", "created", "num_trials", "complete", "failed", "running", "sampler",
                 "objectives", "tracking_uri", "experiment"]  # fmt: skip


def _list_row(study_dir: Path) -> dict[str, Any]:
    try:
        record = read_study(study_dir)
    except HebbrobustError as e:
        return {"name": study_dir.name, "study_dir": str(study_dir), "error": str(e)}
    try:
        states = pd.Series([t.state.name for t in record.optuna_study().get_trials(deepcopy=False)])
    except HebbrobustError:
        states = pd.Series([], dtype=str)
    meta = record.meta
    return {
        "name": record.name, "study_dir": str(study_dir), "created": meta.get("created"),
        "num_trials": meta.get("num_trials"), "complete": int((states == "COMPLETE").sum()),
        "failed": int((states == "FAIL").sum()), "running": int((states == "RUNNING").sum()),
        "sampler": record.spec.sampler.name,
        "objectives": ", ".join(f"{m} ({mode})" for m, mode in record.objectives),
        "tracking_uri": meta["tracking_uri"], "experiment": meta["experiment"],
    }  # fmt: skip


def list_studies(storage: Path | str | None = None) -> pd.DataFrame:
    """One row per study under `storage` (default ./hebbrobust-studies): name, directory, creation
    time, planned trials, Optuna's COMPLETE / FAIL / RUNNING counts, sampler, objectives, MLflow."""
    rows = [_list_row(d) for d in study_dirs(storage)]
    return pd.DataFrame(rows, columns=_LIST_COLUMNS + (["error"] if any("error" in r for r in rows) else []))


def filter_caches(storage: Path | str | None = None) -> list[Path]:
    """The filter caches of the studies under `storage` (default ./hebbrobust-studies) that use one
    and have written it, each once; or a one-line error naming where it looked."""
    found: dict[Path, None] = {}
    for study_dir in study_dirs(storage):
        try:
            spec = load_study(study_dir / SPEC_FILE)
        except HebbrobustError:
            continue
        where = filter_cache_dir(spec, study_dir)
        if spec.filter_cache and where.is_dir():
            found[where] = None
    if not found:
        raise HebbrobustError(f"{storage_root(storage)}: no study there has a filter cache; name a cache directory")
    return list(found)
