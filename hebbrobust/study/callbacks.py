"""The study driver's Tune callbacks: the progress line (`ProgressCallback` -> the driver's
`on_progress`) and the run closer (`TrialRunCloser`: MLflow runs of trial attempts whose worker died).
Tune pickles callbacks into its state, so they hold plain data only; the progress callback finds
the driver's renderer through the study directory it was registered under."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from hebbrobust import tracking
from hebbrobust.errors import HebbrobustError
from hebbrobust.metrics import FILTERS_CACHE_HIT, GATED
from hebbrobust.study.moasha import RUNG_KEY
from hebbrobust.study.trainable import stopped_reason

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyProgress:
    """What the progress bar shows; sent to `on_progress` whenever a count or a best value changes."""

    name: str
    total: int  # trials the study will run
    done: int  # finished and reported (Tune TERMINATED)
    running: int
    pending: int
    failed: int  # errored (after retries)
    best: dict[str, float | None]  # objective -> best value among finished trials
    elapsed_s: float
    cache_hits: int = 0  # finished trials whose filters came from the filter cache
    gated: int = 0  # ended at rule.min_converged without a head (Optuna PRUNED; among `done`)
    stopped: int = 0  # stopped at a rung by the scheduler (MOASHA), not counted in `done`


ProgressFn = Callable[[StudyProgress], None]

SINKS: dict[str, ProgressFn] = {}  # study dir -> on_progress, in the driver process only


class ProgressCallback(tune.Callback):
    """Counts trials and tracks the best objective values; holds only plain data (it is pickled
    into Tune's state) and finds the driver's `on_progress` through the study directory."""

    def __init__(
        self,
        study_dir: str,
        name: str,
        total: int,
        objectives: list[tuple[str, str]],
        *,
        done_before: int = 0,
        failed_before: int = 0,
        best_before: Mapping[str, float | None] | None = None,
        gated_before: int = 0,
    ) -> None:
        self.study_dir, self.name, self.total, self.objectives = study_dir, name, total, objectives
        self.done_before, self.failed_before = done_before, failed_before  # ended before this (resumed) session
        self.gated_before = gated_before
        self.best_before = dict(best_before or {})
        self._start = time.time()
        self._last: tuple[Any, ...] | None = None

    def setup(self, stop: Any = None, num_samples: Any = None, total_num_samples: Any = None, **info: Any) -> None:
        self._start = time.time()
        self._last = None

    def snapshot(self, trials: list[Any]) -> StudyProgress:
        states = ["STOPPED" if stopped_rung(t.last_result) is not None else t.status for t in trials]
        best: dict[str, float | None] = {}
        for metric, mode in self.objectives:
            values = [
                float(t.last_result[metric])
                for t, state in zip(trials, states, strict=True)
                if state == "TERMINATED"
                and isinstance(t.last_result.get(metric), int | float)
                and math.isfinite(t.last_result[metric])
            ]
            if self.best_before.get(metric) is not None:
                values.append(float(self.best_before[metric]))  # type: ignore[arg-type]
            best[metric] = (max(values) if mode == "max" else min(values)) if values else None
        done = self.done_before + states.count("TERMINATED")
        failed = self.failed_before + states.count("ERROR")
        running = states.count("RUNNING")
        ended = [t.last_result or {} for t, state in zip(trials, states, strict=True) if state == "TERMINATED"]
        return StudyProgress(
            name=self.name,
            total=self.total,
            done=done,
            running=running,
            pending=max(0, self.total - done - failed - running - states.count("STOPPED")),
            failed=failed,
            stopped=states.count("STOPPED"),
            best=best,
            elapsed_s=time.time() - self._start,
            cache_hits=sum(1 for r in ended if r.get(FILTERS_CACHE_HIT) == 1),
            gated=self.gated_before + sum(1 for r in ended if r.get(GATED) == 1),
        )

    def _emit(self, trials: list[Any]) -> None:
        sink = SINKS.get(self.study_dir)
        if sink is None:
            return
        progress = self.snapshot(trials)
        key = (
            progress.done,
            progress.running,
            progress.pending,
            progress.failed,
            progress.cache_hits,
            progress.gated,
            progress.stopped,
            tuple(progress.best.items()),
        )
        if key == self._last:
            return
        self._last = key
        try:
            sink(progress)
        except Exception:  # a broken renderer must not stop the study
            log.exception("on_progress failed; progress reports stop")
            SINKS.pop(self.study_dir, None)

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self._emit(trials)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._emit(trials)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._emit(trials)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._emit(trials)


def stopped_rung(result: Mapping[str, Any] | None) -> int | None:
    """The rung at which the scheduler stopped a trial whose last result is `result` (a rung report:
    the final report carries no rung), else None. Such a trial is Optuna PRUNED, MLflow KILLED."""
    return int(result[RUNG_KEY]) if result and RUNG_KEY in result else None


def _trial_error(trial: Any) -> str:
    """The first line of the last error Tune recorded for `trial` (its error file), or ''."""
    try:
        text = Path(trial.error_file).read_text() if getattr(trial, "error_file", None) else ""
    except OSError:
        text = ""
    last = text.rsplit("Failure # ", 1)[-1].splitlines()[1:]  # the lines after "Failure # n (occurred at ...)"
    return next((line.strip() for line in last if line.strip()), "")[:500]


class TrialRunCloser(tune.Callback):
    """Closes the MLflow run of a trial attempt that could not close it itself (its worker process
    died: killed, out of memory, node lost) FAILED, with Tune's error as the reason. A trial that
    raises has already closed its run; then there is nothing to do. Plain data only (pickled by Tune)."""

    def __init__(self, target: tracking.TrackingTarget, parent_run_id: str) -> None:
        self.target, self.parent_run_id = target, parent_run_id

    def _close(self, trial: Any, then: str) -> None:
        error = _trial_error(trial) or "no error recorded"
        try:
            tracking.close_stale_runs(
                self.target,
                self.parent_run_id,
                status="FAILED",
                reason=f"the trial's worker ended without closing its run ({error}){then}",
                trial_id=str(trial.trial_id),
                started_before_ms=int(time.time() * 1000) + 1,  # never the retry's own new run
            )
        except HebbrobustError:  # the tracking store is away: the study goes on, resume closes it
            log.exception("could not close the MLflow run of trial %s", trial.trial_id)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._close(trial, f"; retried (failure {trial.num_failures}, max_failures {trial.max_failures})")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._close(trial, "")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial the scheduler stopped at a rung cannot close its run (it waits in tune.report until
        its worker goes): closed KILLED here, tagged with the rung."""
        rung = stopped_rung(trial.last_result)
        if rung is None:
            return
        try:
            tracking.close_stale_runs(
                self.target, self.parent_run_id, status="KILLED", reason=stopped_reason(rung),
                trial_id=str(trial.trial_id), tags={tracking.STOPPED_TAG: str(rung)},
            )  # fmt: skip
        except HebbrobustError:
            log.exception("could not close the MLflow run of stopped trial %s", trial.trial_id)



def close_open_runs(target: tracking.TrackingTarget, parent: str, status: str, reason: str) -> None:
    try:
        tracking.close_stale_runs(target, parent, status=status, reason=reason)
    except HebbrobustError:  # the store is away; `study resume` closes them
        log.exception("could not close the study's open trial runs")
