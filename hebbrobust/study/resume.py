"""Reconciling a stopped study before it is resumed (no Ray, no Tune state).

The study's record is Optuna (written by the driver when a trial is asked and told) and MLflow
(written by the trial itself), never Ray Tune's own state file: Tune snapshots that every >= 10 s,
so after a crash it lags the other two, and `Tuner.restore` from it would rerun trials that had
finished (a second FINISHED run) or sample extra ones (more than num_trials COMPLETE), and a
truncated tuner.pkl (ray issue 58179) would stop the resume outright. So:
- each Optuna trial carries the Ray Tune trial id (user attr `tune_trial_id`), each MLflow child
  run the same id (tag `hebbrobust.trial_id`), the Ray node and the worker's host:pid;
- a trial that raises closes its own run FAILED (reason tag, traceback.txt) and Optuna gets FAIL;
  a trial whose worker dies (killed, out of memory, node lost) has its run closed FAILED by the
  driver (`callbacks.TrialRunCloser`); `max_failures` retries either, each attempt its own MLflow run;
- `reconcile` closes runs left RUNNING as KILLED; an Optuna trial left RUNNING whose run FINISHED
  is told COMPLETE with the run's values; one without is marked FAIL (user attr
  `hebbrobust_cut_off`) and its parameters enqueued to run again; a gated one (FINISHED run with
  `hebbrobust.gated`) is told PRUNED. A trial that FAILED because a write found the disk full (reason
  `disk full: ...`) is enqueued again the same way (the rerun carries `hebbrobust_disk_full_rerun_of`,
  so it is enqueued once and the FAIL does not count): the cause was the machine, not the trial.
  Then `run.resume_study` runs num_trials - COMPLETE - PRUNED - FAIL(not cut off, not rerun) more
  trials against the same Optuna study.
- a trial the scheduler (MOASHA) stopped is PRUNED (user attr `hebbrobust_stopped_at_rung`) and its run
  KILLED with tag `hebbrobust.stopped_at_rung`; one left RUNNING in Optuna whose run carries the tag
  (the driver died between the stop and the tell) is told PRUNED here. PRUNED trials with that attr
  count as stopped, the others as gated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hebbrobust import tracking
from hebbrobust.config import StudySpec
from hebbrobust.metrics import GATED_REASON
from hebbrobust.study.record import (
    CUT_OFF_ATTR,
    DISK_FULL,
    DISK_RERUN_ATTR,
    RERUN_ATTR,
    STOPPED_ATTR,
    TUNE_TRIAL_ATTR,
    optuna_record,
    set_trial_attr,
)


@dataclass
class Resume:
    """What `resume_study` found before running anything (all zero for a new study)."""

    finished: int = 0  # Optuna COMPLETE trials (after recovering those below)
    failed: int = 0  # Optuna FAIL trials that really failed (they count towards num_trials)
    closed_runs: int = 0  # MLflow runs left RUNNING by the stopped driver, now KILLED
    recovered: int = 0  # Optuna trials left RUNNING whose MLflow run had FINISHED: told COMPLETE
    cut_off: int = 0  # Optuna trials left RUNNING without a finished run: FAIL + enqueued again
    gated: int = 0  # Optuna PRUNED trials stopped at rule.min_converged (they count towards num_trials)
    stopped: int = 0  # Optuna PRUNED trials: stopped at a rung by the scheduler (they count towards num_trials)
    disk_full: int = 0  # Optuna trials FAILED for want of disk space: marked cut off + enqueued again
    remaining: int = 0  # trials still to run
    best: dict[str, float | None] = field(default_factory=dict)  # best objective values so far

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, int)}


def reconcile(spec: StudySpec, meta: Mapping[str, Any], target: tracking.TrackingTarget) -> Resume:
    """Makes Optuna and MLflow agree after the driver stopped (SIGKILL, crash, Ctrl-C): see the
    module doc. Idempotent; needs no Ray and no Tune state."""
    from optuna.trial import TrialState

    meta = {"name": spec.name, **meta}
    study = optuna_record(meta)
    parent = meta["parent_run_id"]
    out = Resume()
    out.closed_runs = len(
        tracking.close_stale_runs(
            target, parent, status="KILLED",
            reason="cut off: the study driver stopped before the trial ended (`study resume` runs it again)",
        )
    )  # fmt: skip
    runs = tracking.read_trials(target, parent)
    done = runs[runs["status"] == "FINISHED"].drop_duplicates("trial_id", keep="last") if len(runs) else runs
    finished = {str(row["trial_id"]): row for _, row in done.iterrows()}
    objectives: list[tuple[str, str]] = [(o.metric, o.mode) for o in spec.objectives]
    stopped = _stopped_runs(runs)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tune_id = str(trial.user_attrs.get(TUNE_TRIAL_ATTR))
        row = finished.get(tune_id)
        gated = row is not None and isinstance(row.get(GATED_REASON), str)
        if tune_id in stopped or gated:  # stopped at a rung or gated, then the driver died before the tell
            if tune_id in stopped:
                set_trial_attr(meta["optuna_storage"], meta["name"], trial.number, STOPPED_ATTR, stopped[tune_id])
            study.tell(trial.number, state=TrialState.PRUNED)
            out.recovered += int(gated)
            continue
        values = [row.get(m) for m, _ in objectives] if row is not None else []
        if values and all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            study.tell(trial.number, [float(v) for v in values])  # the driver died between its end and the tell
            out.recovered += 1
        else:
            _cut_off(study, meta, trial)
            out.cut_off += 1
    out.disk_full = _rerun_disk_full(study, runs, target)
    _tally(out, study.get_trials(deepcopy=False), objectives, int(meta["num_trials"]))
    return out


def _stopped_runs(runs: Any) -> dict[str, int]:
    """Tune trial id -> the rung the scheduler stopped it at, from the runs' `stopped_at_rung` column."""
    cut = runs[runs["stopped_at_rung"].notna()] if "stopped_at_rung" in runs.columns else runs[:0]
    return {str(row["trial_id"]): int(row["stopped_at_rung"]) for _, row in cut.iterrows()}


def _cut_off(study: Any, meta: Mapping[str, Any], trial: Any) -> None:
    """A RUNNING trial without a finished run: marked cut off, its parameters enqueued again, then FAIL
    (in this order, so a crash in between leaves it RUNNING for the next reconcile)."""
    from optuna.trial import TrialState

    set_trial_attr(meta["optuna_storage"], meta["name"], trial.number, CUT_OFF_ATTR, "the study driver stopped first")
    study.enqueue_trial(dict(trial.params), user_attrs={RERUN_ATTR: trial.number}, skip_if_exists=False)
    study.tell(trial.number, state=TrialState.FAIL)


def _rerun_disk_full(study: Any, runs: Any, target: tracking.TrackingTarget) -> int:
    """Enqueues again, once, each FAIL trial whose last MLflow attempt failed `disk full: ...` (a
    finished Optuna trial takes no new attrs: the rerun carries DISK_RERUN_ATTR = its number); that
    run becomes KILLED (cut off, reason kept), so it is not counted as a failed trial."""
    from optuna.trial import TrialState

    latest = runs.drop_duplicates("trial_id", keep="last") if len(runs) else runs
    last = {str(r["trial_id"]): r for _, r in latest.iterrows()}
    trials = study.get_trials(deepcopy=False)
    rerun = {t.user_attrs.get(DISK_RERUN_ATTR) for t in trials}
    count = 0
    for trial in trials:
        run = last.get(str(trial.user_attrs.get(TUNE_TRIAL_ATTR)))
        if run is None or trial.state != TrialState.FAIL or trial.number in rerun:
            continue
        if str(run.get("reason") or "").startswith(DISK_FULL):
            attrs = {RERUN_ATTR: trial.number, DISK_RERUN_ATTR: trial.number}
            study.enqueue_trial(dict(trial.params), user_attrs=attrs, skip_if_exists=False)
            tracking.set_run_status(target, str(run["run_id"]), "KILLED")
            count += 1
    return count


def _tally(out: Resume, trials: list[Any], objectives: list[tuple[str, str]], total: int) -> None:
    from optuna.trial import TrialState

    rerun = {t.user_attrs.get(DISK_RERUN_ATTR) for t in trials}
    out.finished = sum(t.state == TrialState.COMPLETE for t in trials)
    out.failed = sum(
        t.state == TrialState.FAIL and CUT_OFF_ATTR not in t.user_attrs and t.number not in rerun for t in trials
    )
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    out.stopped = sum(STOPPED_ATTR in t.user_attrs for t in pruned)
    out.gated = len(pruned) - out.stopped
    out.remaining = max(0, total - out.finished - out.failed - out.gated - out.stopped)
    for i, (metric, mode) in enumerate(objectives):
        values = [t.values[i] for t in trials if t.state == TrialState.COMPLETE and t.values]
        out.best[metric] = (max(values) if mode == "max" else min(values)) if values else None
