"""Running a study: Ray Tune schedules the trials, Optuna (multi-objective) picks their parameters,
MLflow records them. `run_study` starts one, `resume_study` continues a stopped one (after
`resume.reconcile`); both build their Tuner in `_tuner` from one `StudyRun`.

Choices that avoid the traps in docs/platform.md: OptunaSearch gets the metric/mode lists and TuneConfig gets neither
(else the study silently turns single-objective); FIFO scheduling unless the spec asks for MOASHA,
whose stopped trials are told PRUNED (never COMPLETE with partial values, which would put them on the
front), closed KILLED in MLflow with tag `hebbrobust.stopped_at_rung` and counted apart; Tune's own
state is never read back (see resume.py)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from hebbrobust import tracking
from hebbrobust.config import StudySpec
from hebbrobust.errors import HebbrobustError
from hebbrobust.metrics import GATED, GATED_REASON
from hebbrobust.study import directory as sd
from hebbrobust.study.callbacks import (
    SINKS,
    ProgressCallback,
    ProgressFn,
    TrialRunCloser,
    close_open_runs,
    stopped_rung,
)
from hebbrobust.study.moasha import MOASHA
from hebbrobust.study.record import (
    GATED_ATTR,
    STOPPED_ATTR,
    TUNE_TRIAL_ATTR,
    StudyOutcome,
    create_optuna_study,
    outcome,
    read_study,
    set_trial_attr,
)
from hebbrobust.study.resume import Resume, reconcile
from hebbrobust.study.session import check_address, quiet_tune, ray_session, trial_resources
from hebbrobust.study.space import (
    SearchSpace,
    absolute_paths,
    check_data_paths,
    check_objectives,
    grid_points,
    is_conditional,
    make_sampler,
    num_samples,
    optuna_space,
)
from hebbrobust.study.trainable import VAL_PREFIX, TrialContext, run_study_trial


class StudySearch(OptunaSearch):
    """OptunaSearch that writes the Ray Tune trial id on each Optuna trial (user attr
    `tune_trial_id`), so that Optuna trials join the MLflow runs (tag `hebbrobust.trial_id`).
    Tune asks one trial at a time in the driver, so the trial just asked is the newest RUNNING one
    without the attr; it is found and marked through the Optuna storage's public API. A trial cut
    short on purpose (`pruned_mark`: gated at rule.min_converged, or stopped at a rung by the
    scheduler) is marked and told as a result without values: OptunaSearch then tells Optuna PRUNED
    (a list of None objectives would be a COMPLETE that Optuna rejects; a rung's values are no point
    for the front)."""

    def __init__(self, *, storage: Any, study_name: str, **kwargs: Any) -> None:
        super().__init__(storage=storage, study_name=study_name, **kwargs)
        self.record_storage, self.record_name = storage, study_name

    def _running(self) -> list[Any]:
        from optuna.trial import TrialState

        study_id = self.record_storage.get_study_id_from_name(self.record_name)
        return list(self.record_storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)))

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        params = super().suggest(trial_id)
        if params is not None:
            fresh = [t.number for t in self._running() if TUNE_TRIAL_ATTR not in t.user_attrs]
            if fresh:
                set_trial_attr(self.record_storage, self.record_name, max(fresh), TUNE_TRIAL_ATTR, trial_id)
        return params  # type: ignore[no-any-return]

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        mark = None if error else pruned_mark(result)
        if mark is not None:
            for t in self._running():
                if t.user_attrs.get(TUNE_TRIAL_ATTR) == trial_id:
                    set_trial_attr(self.record_storage, self.record_name, t.number, *mark)
            result = None  # OptunaSearch tells a trial that ended without values PRUNED
        super().on_trial_complete(trial_id, result=result, error=error)


def gated_result(result: dict[str, Any] | None) -> bool:
    """Whether a trial's final result says it stopped at rule.min_converged (Optuna: PRUNED)."""
    return bool(result) and result.get(GATED) == 1  # type: ignore[union-attr]


def pruned_mark(result: dict[str, Any] | None) -> tuple[str, Any] | None:
    """(Optuna user attr, value) for a trial whose last result says it was cut short on purpose and
    must be told PRUNED (off the front, counted apart), else None: gated at rule.min_converged
    (GATED_ATTR) or stopped at a rung by MOASHA (STOPPED_ATTR, the rung)."""
    if gated_result(result):
        return GATED_ATTR, str((result or {}).get(GATED_REASON, "gated"))
    rung = stopped_rung(result)
    return None if rung is None else (STOPPED_ATTR, rung)


@dataclass
class StudyRun:
    """One Tune session of a study: everything `_tuner` and `_fit` need, in one place."""

    spec: StudySpec
    spec_path: Path | str | None  # the spec file as given (error messages, sampler files)
    study_dir: Path
    meta: dict[str, Any]  # study.json
    target: tracking.TrackingTarget
    resources: dict[str, float]  # per trial: cpu, gpu
    count: int  # trials this session runs
    tune_name: str  # Tune experiment (tune, tune-resume-<n>)
    on_progress: ProgressFn | None
    started: float  # time.monotonic() when the run/resume call began
    before: Resume  # what earlier sessions finished (a new study: nothing)
    seed_offset: int = 0  # shifts a seeded sampler so a resumed session does not repeat the first's draws

    @property
    def parent(self) -> str:
        return str(self.meta["parent_run_id"])

    @property
    def objectives(self) -> list[tuple[str, str]]:
        return [(o.metric, o.mode) for o in self.spec.objectives]


# --------------------------------------------------------------------------- run


def run_study(
    spec: StudySpec,
    *,
    spec_path: Path | str | None = None,
    address: str | None = None,
    storage: Path | str | None = None,
    tracking_uri: str | None = None,
    on_progress: ProgressFn | None = None,
) -> StudyOutcome:
    """Run the study `spec` to the end (or until interrupted) and return its outcome.

    `storage` (else spec.storage, else ./hebbrobust-studies) holds the study directory
    `<storage>/<spec.name>`; it must not hold that study already (`resume_study` continues one).
    `tracking_uri` (else spec.tracking_uri, else $MLFLOW_TRACKING_URI, else sqlite ./mlflow.db) is the
    MLflow store; `address` (else $RAY_ADDRESS) a Ray cluster to join instead of a local Ray.
    Everything the spec and arguments can get wrong is checked before Ray starts or a file is written."""
    started = time.monotonic()
    check_address(address)
    spec, study_dir = _checked(spec, spec_path, storage, tracking_uri)
    with ray_session(address) as cluster:
        resources = trial_resources(spec, cluster)  # before anything is written
        target = tracking.ensure_experiment(str(spec.tracking_uri), str(spec.experiment))
        study_dir.mkdir(parents=True, exist_ok=True)
        with sd.driver_lock(study_dir):
            meta = _start(spec, spec_path, study_dir, target)
            count = int(meta["num_trials"])
            run = StudyRun(spec, spec_path, study_dir, meta, target, resources, count, sd.TUNE_DIR, on_progress,
                           started, Resume())  # fmt: skip
            return _fit(run)


def _checked(
    spec: StudySpec, spec_path: Path | str | None, storage: Path | str | None, tracking_uri: str | None
) -> tuple[StudySpec, Path]:
    """The spec with absolute paths, its storage, tracking URI and experiment filled in, and its
    study directory; every spec problem raised here, before anything starts."""
    spec = absolute_paths(spec)
    root = sd.storage_root(storage, spec)
    study_dir = root / spec.name
    for where in (root, study_dir):
        if where.exists() and not where.is_dir():
            raise HebbrobustError(f"--storage: {where} is a file, not a directory for studies")
    if (study_dir / sd.STUDY_FILE).exists():
        raise HebbrobustError(
            f"{study_dir} already holds study {spec.name!r}: `hebbrobust study resume {study_dir}` "
            "continues it; a new name (--set name=...) or --storage starts another"
        )
    uri = tracking.resolve_tracking_uri(tracking_uri or spec.tracking_uri)
    spec = spec.model_copy(update={"storage": root, "tracking_uri": uri, "experiment": spec.experiment or spec.name})
    optuna_space(spec, spec_path)
    make_sampler(spec, spec_path)
    check_objectives(spec, spec_path)
    check_data_paths(spec, spec_path)
    return spec, study_dir


def _start(spec: StudySpec, spec_path: Path | str | None, study_dir: Path, target: tracking.TrackingTarget) -> dict:
    """A new study's spec.yaml, MLflow parent run and study.json (inside the caller's lock)."""
    spec_file = study_dir / sd.SPEC_FILE
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    source = str(Path(spec_path).resolve()) if spec_path else None
    parent = tracking.start_parent_run(
        target, spec.name,
        params={
            "num_trials": num_samples(spec), "max_concurrent": spec.max_concurrent, "seeds": spec.n_seeds,
            "sampler": spec.sampler.name, "sampler.seed": spec.sampler.seed,
            "objectives": [f"{o.metric}:{o.mode}" for o in spec.objectives], "space": list(spec.space),
        },
        tags={
            "hebbrobust.study_dir": str(study_dir), "hebbrobust.spec_source": source or "",
            "hebbrobust.space": json.dumps(spec.model_dump(mode="json")["space"])[:8000],
        },
        artifacts={"spec.yaml": spec_file},
        description=study_description(spec, study_dir),
    )  # fmt: skip
    meta: dict[str, Any] = {
        "name": spec.name, "created": datetime.now(UTC).isoformat(timespec="seconds"), "spec_source": source,
        "tracking_uri": target.uri, "experiment": target.experiment, "experiment_id": target.experiment_id,
        "parent_run_id": parent, "optuna_storage": f"sqlite:///{study_dir / sd.OPTUNA_FILE}",
        "tune_path": str(study_dir / sd.TUNE_DIR), "tune_sessions": [sd.TUNE_DIR], "num_trials": num_samples(spec),
    }  # fmt: skip
    _create_optuna_study(spec, meta["optuna_storage"], spec_path)
    sd.write_meta(study_dir, meta)
    return meta


def _create_optuna_study(spec: StudySpec, storage: str, spec_path: Path | str | None = None) -> None:
    """The study's Optuna record (`record.create_optuna_study`), a conditional grid's points enqueued
    (in grid order; shuffled when num_trials cuts the grid short); OptunaSearch loads it."""
    import random

    study = create_optuna_study(spec, storage)
    if spec.sampler.name == "grid" and is_conditional(spec):
        points = grid_points(spec, spec_path)
        if num_samples(spec) < len(points):
            random.Random(spec.sampler.seed).shuffle(points)
        for point in points:
            study.enqueue_trial(point, skip_if_exists=False)


def study_description(spec: StudySpec, study_dir: Path) -> str:
    """The parent run's MLflow description (Markdown): what the study is and how to read it."""
    objectives = ", ".join(f"`{o.metric}` ({o.mode})" for o in spec.objectives)
    space = ", ".join(f"`{k}`" for k in spec.space)
    return (
        f"**hebbrobust study `{spec.name}`**: {num_samples(spec)} trials, each a model trained with the "
        f"Krotov-Hopfield local rule or backprop, scored on {objectives}. Searched: {space}; "
        f"sampler {spec.sampler.name}, {spec.n_seeds} seed(s) per trial.\n\n"
        "How to read it: each child run below is one trial attempt, named by model kind and its "
        "distinguishing parameters; compare the objective columns, and sort or chart them against each "
        "other to see the accuracy-robustness trade-off. This run holds the Pareto front "
        "(`front.csv`, `front.png`), every trial (`trials.csv`) and, after `hebbrobust study report`, "
        f"the report under `report/`. Study directory: `{study_dir}`."
    )


# --------------------------------------------------------------------------- resume


def resume_study(
    study_dir: Path | str, *, address: str | None = None, on_progress: ProgressFn | None = None
) -> StudyOutcome:
    """Continue a stopped study from its directory: nothing lost, nothing counted twice. Reconciles
    Optuna and MLflow (see `resume.reconcile`), then runs the trials still missing in a fresh Tuner.
    Works on a finished study too (nothing to run; the front is recomputed). Ray Tune's own state
    files are not needed: a truncated tuner.pkl or a missing experiment state changes nothing."""
    started = time.monotonic()
    check_address(address)
    study_dir = Path(study_dir).expanduser().resolve()
    sd.read_meta(study_dir)  # a broken directory is a one-line error before the lock
    with sd.driver_lock(study_dir):
        record = read_study(study_dir)
        spec, meta, target = record.spec, dict(record.meta), record.target
        state = reconcile(spec, meta, target)
        if state.remaining == 0:
            tracking.set_run_status(target, record.parent_run_id, "RUNNING")
            result = _conclude(study_dir, started, interrupted=False)
        else:
            result = _resume_session(spec, study_dir, meta, target, address, on_progress, started, state)
    result.resumed = state.counts()
    return result


def _resume_session(
    spec: StudySpec, study_dir: Path, meta: dict[str, Any], target: tracking.TrackingTarget,
    address: str | None, on_progress: ProgressFn | None, started: float, state: Resume,
) -> StudyOutcome:  # fmt: skip
    """A fresh Tune session (`tune-resume-<n>`) for the trials still missing, against the same Optuna study."""
    sessions = list(meta.get("tune_sessions", [sd.TUNE_DIR]))
    name = f"tune-resume-{len(sessions)}"
    optuna_space(spec)
    with ray_session(address) as cluster:
        resources = trial_resources(spec, cluster)
        tracking.set_run_status(target, meta["parent_run_id"], "RUNNING")
        meta["tune_sessions"] = [*sessions, name]
        sd.write_meta(study_dir, meta)
        asked = len(read_study(study_dir).optuna_study().get_trials(deepcopy=False))
        run = StudyRun(spec, None, study_dir, meta, target, resources, state.remaining, name, on_progress,
                       started, state, seed_offset=asked)  # fmt: skip
        return _fit(run)


# --------------------------------------------------------------------------- the Tune session


def _tuner(run: StudyRun, callbacks: list[Any]) -> Any:
    """A Tuner running `run.count` trials of the study, asked from its Optuna study (created or loaded)."""
    from optuna.storages import RDBStorage
    from ray.tune.search import ConcurrencyLimiter

    spec = run.spec
    sampling = spec
    if run.seed_offset and spec.sampler.seed is not None:
        seed = (spec.sampler.seed + run.seed_offset) % 2**32
        sampling = spec.model_copy(update={"sampler": spec.sampler.model_copy(update={"seed": seed})})
    searcher = StudySearch(
        space=SearchSpace(spec, run.spec_path),  # define-by-run: a trial sees only the keys that apply to it
        metric=[m for m, _ in run.objectives],
        mode=[mode for _, mode in run.objectives],
        sampler=make_sampler(sampling, run.spec_path),
        study_name=spec.name,
        storage=RDBStorage(run.meta["optuna_storage"]),
    )
    ctx = TrialContext(
        spec=spec, study_dir=str(run.study_dir), tracking=run.target, parent_run_id=run.parent, cpus=spec.resources.cpu,
        filter_cache=str(sd.filter_cache_dir(spec, run.study_dir)) if spec.filter_cache else None,
    )  # fmt: skip
    return tune.Tuner(
        tune.with_resources(tune.with_parameters(run_study_trial, ctx=ctx), run.resources),
        tune_config=tune.TuneConfig(  # no metric/mode here: they would make it single-objective
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent),
            scheduler=scheduler(spec),
            num_samples=run.count,
            reuse_actors=True,  # a trial's worker keeps torch/mlflow imported for the next
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=run.tune_name,
            storage_path=str(run.study_dir),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            callbacks=callbacks,
            verbose=0,
        ),
    )


def scheduler(spec: StudySpec) -> Any:
    """The study's Tune scheduler: FIFO, or MOASHA on the rung reports' `val_<objective>` values."""
    from ray.tune.schedulers import FIFOScheduler

    if spec.scheduler.name == "moasha":
        return MOASHA([(VAL_PREFIX + o.metric, o.mode) for o in spec.objectives], spec.scheduler.reduction)
    return FIFOScheduler()


def _trial_dirname(trial: Any) -> str:
    return str(trial.trial_id)


def _fit(run: StudyRun) -> StudyOutcome:
    """Runs the Tuner inside the caller's Ray session, closes any run its trials left open, then
    reads the trials back, logs the front to the parent run and closes it."""
    callback = ProgressCallback(
        str(run.study_dir), run.spec.name, int(run.meta["num_trials"]), run.objectives,
        done_before=run.before.finished + run.before.gated, failed_before=run.before.failed,
        best_before=run.before.best, gated_before=run.before.gated,
    )  # fmt: skip
    if run.on_progress is not None:
        SINKS[str(run.study_dir)] = run.on_progress
    try:
        with quiet_tune():
            grid = _tuner(run, [callback, TrialRunCloser(run.target, run.parent)]).fit()
        ended = grid.num_terminated + grid.num_errors
    except KeyboardInterrupt:
        close_open_runs(run.target, run.parent, "KILLED", "cut off: the study was interrupted")
        tracking.set_run_status(run.target, run.parent, "KILLED")
        raise
    except BaseException:
        close_open_runs(run.target, run.parent, "KILLED", "cut off: the study driver failed")
        tracking.set_run_status(run.target, run.parent, "FAILED")
        raise
    finally:
        SINKS.pop(str(run.study_dir), None)
    # Ctrl+C: Tune's own SIGINT handler ends fit() normally and marks the running trials TERMINATED,
    # so `ended` alone misses an interrupt once every trial has started; a trial Optuna was never
    # told about (still RUNNING) did not end either
    interrupted = ended < run.count or _untold(run)
    if interrupted:
        why = "cut off: the study was interrupted (`study resume` runs it again)"
        close_open_runs(run.target, run.parent, "KILLED", why)
    else:
        close_open_runs(run.target, run.parent, "FAILED", "the trial ended without closing its run")
    return _conclude(run.study_dir, run.started, interrupted=interrupted)


def _untold(run: StudyRun) -> bool:
    """Whether an Optuna trial of the study is still RUNNING (asked, never told) after Tune ended."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=run.spec.name, storage=run.meta["optuna_storage"])
    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def _conclude(study_dir: Path, started: float, *, interrupted: bool) -> StudyOutcome:
    """Reads the trials back (once), writes and logs the front to the parent run and closes it."""
    result = outcome(read_study(study_dir))
    record = result.record
    summary = {
        "trials_finished": record.counts["finished"],
        "trials_failed": record.counts["failed"],
        "trials_gated": record.counts["gated"],
        "trials_stopped": record.counts["stopped"],
        "front_size": len(record.front),
        "hypervolume": record.hypervolume,
    }
    files = {k: v for k, v in result.files.items() if k != "spec.yaml"}
    tracking.log_front(record.target, record.parent_run_id, files, summary)
    tracking.set_run_status(record.target, record.parent_run_id, "KILLED" if interrupted else "FINISHED")
    result.wall_seconds = time.monotonic() - started
    result.interrupted = interrupted
    return result
