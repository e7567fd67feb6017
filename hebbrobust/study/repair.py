"""Rebuilding a study's damaged records from the others (Ray-free): `hebbrobust study repair DIR`.

- study.json lost or damaged: rebuilt from spec.yaml (name, MLflow store, experiment, num_trials)
  and the study's parent run in MLflow (the one started in this directory, else the newest).
- optuna.db lost or damaged: moved aside (`optuna.db.damaged-<time>`) and rebuilt from the trial
  runs in MLflow: each trial's FINISHED run becomes a COMPLETE Optuna trial (its searched params,
  distributions from the spec's space, objective values from its metrics), a trial whose last
  attempt FAILED a FAIL trial (it counts, as before), and one cut off (KILLED or left RUNNING) is
  enqueued to run again with the same params. Sampler state beyond the trials is not kept (TPE and
  random samplers need none; a grid sampler skips the grid points already run).
- the MLflow store itself cannot be rebuilt here (it is the record of the runs): a damaged one is
  reported with the way on by `record.check_stores`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hebbrobust import tracking
from hebbrobust.config import StudySpec, load_study
from hebbrobust.errors import HebbrobustError
from hebbrobust.fileio import sqlite_problem
from hebbrobust.study import directory as sd
from hebbrobust.study.record import RERUN_ATTR, TUNE_TRIAL_ATTR, check_stores, create_optuna_study
from hebbrobust.study.space import applies, optuna_space

_SQLITE = "sqlite:///"
REBUILT_ATTR = "hebbrobust_rebuilt_from"  # Optuna user attr on a rebuilt trial: the MLflow run it came from


@dataclass
class Repair:
    """What `repair_study` rebuilt (empty when nothing was damaged)."""

    rebuilt: list[str] = field(default_factory=list)  # files rebuilt: study.json, optuna.db
    moved_aside: list[Path] = field(default_factory=list)  # the damaged files, kept for a look
    complete: int = 0  # Optuna trials rebuilt COMPLETE
    failed: int = 0  # ... FAIL
    rerun: int = 0  # cut-off trials enqueued to run again
    skipped: int = 0  # runs whose params or values no longer fit the spec's space


def repair_study(study_dir: Path | str, *, tracking_uri: str | None = None) -> Repair:
    """Rebuilds what is damaged in `study_dir` from the other records (see the module doc); the
    trial runs are read from `tracking_uri` when given, else from the store the study recorded."""
    study_dir = Path(study_dir).expanduser().resolve()
    spec_file = study_dir / sd.SPEC_FILE
    if not spec_file.is_file():
        raise HebbrobustError(f"{spec_file}: missing; the study cannot be repaired without the spec it ran")
    spec = load_study(spec_file)
    out = Repair()
    with sd.driver_lock(study_dir):
        try:
            meta = sd.read_meta(study_dir)
        except HebbrobustError:
            meta = _rebuild_meta(spec, study_dir, tracking_uri, out)
        if tracking_uri:
            meta["tracking_uri"] = tracking.resolve_tracking_uri(tracking_uri)
            sd.write_meta(study_dir, meta)
        try:
            check_stores(meta)
            damaged = _optuna_damage(meta)
        except HebbrobustError as e:
            if "Optuna record" not in str(e):
                raise
            damaged = str(e)
        if damaged:
            _rebuild_optuna(spec, study_dir, meta, out)
    return out


def _aside(path: Path, out: Repair) -> None:
    if path.exists():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        target = path.with_name(f"{path.name}.damaged-{stamp}")
        path.rename(target)
        out.moved_aside.append(target)


def _rebuild_meta(spec: StudySpec, study_dir: Path, tracking_uri: str | None, out: Repair) -> dict[str, Any]:
    uri = tracking.resolve_tracking_uri(tracking_uri or spec.tracking_uri)
    if not tracking_uri and spec.storage and uri.startswith(_SQLITE):  # the store where it sits for a moved study
        rel = sd.relative_near(Path(uri[len(_SQLITE) :]), Path(spec.storage) / spec.name)
        if rel is not None and (study_dir / rel).resolve().is_file():
            uri = f"{_SQLITE}{(study_dir / rel).resolve()}"
    experiment = str(spec.experiment or spec.name)
    target = tracking.find_experiment(uri, experiment)
    parents = tracking.find_parent_runs(target, spec.name) if target else []
    if target is None or not parents:
        raise HebbrobustError(
            f"{study_dir / sd.STUDY_FILE}: cannot be rebuilt: MLflow at {uri} has no study {spec.name!r} in "
            f"experiment {experiment!r} (name the store holding it with --tracking-uri)"
        )
    here = [p for p in parents if p["study_dir"] == str(study_dir)]
    parent = (here or parents)[0]
    tune = sorted(d.name for d in study_dir.glob(f"{sd.TUNE_DIR}*") if d.is_dir())
    meta: dict[str, Any] = {
        "name": spec.name, "created": datetime.fromtimestamp(parent["start_time"] / 1000, UTC).isoformat(),
        "spec_source": None, "tracking_uri": target.uri, "experiment": experiment,
        "experiment_id": target.experiment_id, "parent_run_id": parent["run_id"],
        "optuna_storage": f"sqlite:///{study_dir / sd.OPTUNA_FILE}", "tune_path": str(study_dir / sd.TUNE_DIR),
        "tune_sessions": tune or [sd.TUNE_DIR], "num_trials": int(parent["num_trials"] or spec.num_trials or 1),
    }  # fmt: skip
    _aside(study_dir / sd.STUDY_FILE, out)
    sd.write_meta(study_dir, meta)
    out.rebuilt.append(sd.STUDY_FILE)
    return meta


def _optuna_damage(meta: dict[str, Any]) -> str | None:
    """Why the Optuna record cannot be used (missing, damaged, without the study), or None."""
    import optuna

    storage = str(meta["optuna_storage"])
    why = sqlite_problem(storage.removeprefix("sqlite:///")) if storage.startswith("sqlite:///") else None
    if why:
        return why
    try:
        optuna.load_study(study_name=meta["name"], storage=storage)
    except KeyError:
        return f"no study {meta['name']!r}"
    return None


def _rebuild_optuna(spec: StudySpec, study_dir: Path, meta: dict[str, Any], out: Repair) -> None:
    from optuna.trial import TrialState, create_trial

    storage = str(meta["optuna_storage"])
    _aside(Path(storage.removeprefix("sqlite:///")), out)
    target = tracking.TrackingTarget(meta["tracking_uri"], meta["experiment"], str(meta["experiment_id"]))
    runs = tracking.read_trials(target, meta["parent_run_id"])
    study = create_optuna_study(spec, storage)
    space = optuna_space(spec)
    objectives = [o.metric for o in spec.objectives]
    for trial_id, attempts in (runs.groupby("trial_id", sort=False) if len(runs) else []):
        finished = attempts[attempts["status"] == "FINISHED"]
        row = (finished if len(finished) else attempts).iloc[-1]
        try:
            params: dict[str, Any] = {}
            for k in space:  # in the space's order, as SearchSpace suggests: only the keys that apply
                if applies(spec, k, params):
                    params[k] = _plain(row.get(k))
            if row["status"] == "FINISHED":
                values: list[float] | None = [float(row[m]) for m in objectives]
                if not all(math.isfinite(v) for v in values or []):
                    raise ValueError("objective not finite")
                state = TrialState.COMPLETE
            elif row["status"] == "FAILED":
                state, values = TrialState.FAIL, None
            else:  # KILLED (cut off) or RUNNING: run again with the same params
                study.enqueue_trial(params, user_attrs={RERUN_ATTR: str(trial_id)}, skip_if_exists=False)
                out.rerun += 1
                continue
            study.add_trial(create_trial(
                state=state, params=params, distributions={k: space[k] for k in params}, values=values,
                user_attrs={TUNE_TRIAL_ATTR: str(trial_id), REBUILT_ATTR: str(row["run_id"])},
            ))  # fmt: skip
        except (ValueError, KeyError, TypeError):
            out.skipped += 1
            continue
        out.complete += state == TrialState.COMPLETE
        out.failed += state == TrialState.FAIL
    out.rebuilt.append(sd.OPTUNA_FILE)


def _plain(value: Any) -> Any:
    """A searched value as read back from MLflow (numpy/pandas scalars, JSON) as Optuna takes it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise KeyError("param missing")
    if hasattr(value, "item"):
        value = value.item()
    return json.loads(json.dumps(value))

