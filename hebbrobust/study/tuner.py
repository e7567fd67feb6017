"""Run a study: Ray Tune schedules the trials, Optuna (multi-objective) picks their parameters,
MLflow records them. `run_study` starts one, `resume_study` continues an interrupted one,
`list_studies` / `show_study` read them back.

A study directory (`<storage>/<name>/`, every path in it absolute) holds:
    study.json   where everything is: MLflow URI, experiment, parent run, Optuna storage, Tune state
    spec.yaml    the spec as run (paths absolute), so resume and report need nothing else
    optuna.db    the Optuna RDB study (optuna-dashboard sqlite:///<dir>/optuna.db)
    tune/        Ray Tune's experiment state (tune-resume-<n>/ for each resumed session; not needed to resume)
    driver.lock  held (flock) by the driver running the study: a second driver is refused
    trials/<id>/ each trial's metrics.json, filters.png, robustness.png, model.pt (seed<i>/ per seed)
    front.csv, front.png, trials.csv   written when the study ends (also on the MLflow parent run)

Choices that avoid the traps in docs/platform.md: OptunaSearch gets the metric/mode lists and TuneConfig
gets neither (else the study silently turns single-objective); FIFO scheduling (early stopping
would put partial values on the front); the GPU request follows `ray.cluster_resources()`; the
progress callback holds no renderer (Tune pickles callbacks into its state), only the study
directory under which the driver registered its `on_progress` function.

Failures and resuming. The study's record is Optuna (written by the driver when a trial is asked
and told) and MLflow (written by the trial itself), never Ray Tune's own state file: Tune snapshots
that every >= 10 s, so after a crash it lags the other two, and `Tuner.restore` from it would rerun
trials that had finished (a second FINISHED run) or sample extra ones (more than num_trials
COMPLETE), and a truncated tuner.pkl (ray issue 58179) would stop the resume outright. So:
- each Optuna trial carries the Ray Tune trial id (user attr `tune_trial_id`), each MLflow child
  run the same id (tag `hebbrobust.trial_id`), the Ray node and the worker's host:pid;
- a trial that raises closes its own run FAILED (reason tag, traceback.txt) and Optuna gets FAIL;
  a trial whose worker dies (killed, out of memory, node lost) has its run closed FAILED by the
  driver (`TrialRunCloser`); `max_failures` retries either, each attempt its own MLflow run;
- `resume_study` first reconciles: runs left RUNNING are closed KILLED; an Optuna trial left
  RUNNING whose run FINISHED is told COMPLETE with the run's values; one without is marked FAIL
  (user attr `hebbrobust_cut_off`) and its parameters enqueued to run again. Then a fresh Tuner
  (Tune experiment `tune-resume-<n>`) runs num_trials - COMPLETE - FAIL(not cut off) more trials
  against the same Optuna study.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from hebbrobust import report, tracking
from hebbrobust.config import StudySpec, load_study
from hebbrobust.errors import HebbrobustError
from hebbrobust.study.space import (
    absolute_paths,
    check_data_paths,
    check_objectives,
    make_sampler,
    num_samples,
    optuna_space,
)
from hebbrobust.study.trainable import TrialContext, run_study_trial

log = logging.getLogger(__name__)

STUDY_FILE = "study.json"
SPEC_FILE = "spec.yaml"
OPTUNA_FILE = "optuna.db"
TUNE_DIR = "tune"
LOCK_FILE = "driver.lock"
DEFAULT_STORAGE = "hebbrobust-studies"
OBJECT_STORE_BYTES = 200 * 1024**2
TUNE_TRIAL_ATTR = "tune_trial_id"  # Optuna user attr: the Ray Tune trial that ran this Optuna trial
CUT_OFF_ATTR = "hebbrobust_cut_off"  # Optuna user attr on a trial failed by a resume: why
RERUN_ATTR = "hebbrobust_rerun_of"  # Optuna user attr on an enqueued rerun: the cut-off trial's number


# --------------------------------------------------------------------------- results


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


ProgressFn = Callable[[StudyProgress], None]


@dataclass
class StudyOutcome:
    """A study's state after `run_study` / `resume_study` / `show_study`."""

    name: str
    study_dir: Path
    spec: StudySpec
    objectives: list[tuple[str, str]]  # (metric, "max" | "min")
    tracking_uri: str  # absolute MLflow URI
    experiment: str
    experiment_id: str
    parent_run_id: str
    optuna_storage: str  # sqlite URL of the Optuna study (optuna-dashboard reads it)
    trials: pd.DataFrame  # one row per MLflow child run: run_id, trial_id, status, reason, params, metrics,
    #                       on_front, pareto_rank
    front: pd.DataFrame  # the finished trials on the front, best first objective first
    counts: dict[str, int]  # total, finished, failed, unfinished (never run or cut off), runs (MLflow)
    files: dict[str, Path] = field(default_factory=dict)  # spec.yaml, front.csv, front.png, trials.csv
    wall_seconds: float | None = None  # this run/resume call, Ray start-up included
    interrupted: bool = False  # Tune stopped before every trial ended: `study resume` continues
    resumed: dict[str, int] = field(default_factory=dict)  # what `resume_study` found and fixed (see Resume)

    @property
    def mlflow_ui_command(self) -> str:
        """The command that shows this study in the MLflow UI."""
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"open {self.tracking_uri}"
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"

    @property
    def front_columns(self) -> list[str]:
        """Columns worth a front table: trial, model kind, objectives, searched params, key metrics."""
        cols = ["trial_id", "model.kind"] + [m for m, _ in self.objectives]
        cols += [k for k in self.spec.space if k not in cols]
        cols += [c for c in ("clean_acc", "unconverged_frac", "train_seconds") if c not in cols]
        return [c for c in cols if c in self.front.columns]


# --------------------------------------------------------------------------- progress

_SINKS: dict[str, ProgressFn] = {}  # study dir -> on_progress, in the driver process only


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
    ) -> None:
        self.study_dir, self.name, self.total, self.objectives = study_dir, name, total, objectives
        self.done_before, self.failed_before = done_before, failed_before  # ended before this (resumed) session
        self.best_before = dict(best_before or {})
        self._start = time.time()
        self._last: tuple[Any, ...] | None = None

    def setup(self, stop: Any = None, num_samples: Any = None, total_num_samples: Any = None, **info: Any) -> None:
        self._start = time.time()
        self._last = None

    def snapshot(self, trials: list[Any]) -> StudyProgress:
        states = [t.status for t in trials]
        best: dict[str, float | None] = {}
        for metric, mode in self.objectives:
            values = [
                float(t.last_result[metric])
                for t in trials
                if t.status == "TERMINATED" and isinstance(t.last_result.get(metric), int | float)
            ]
            if self.best_before.get(metric) is not None:
                values.append(float(self.best_before[metric]))  # type: ignore[arg-type]
            best[metric] = (max(values) if mode == "max" else min(values)) if values else None
        done = self.done_before + states.count("TERMINATED")
        failed = self.failed_before + states.count("ERROR")
        running = states.count("RUNNING")
        return StudyProgress(
            name=self.name,
            total=self.total,
            done=done,
            running=running,
            pending=max(0, self.total - done - failed - running),
            failed=failed,
            best=best,
            elapsed_s=time.time() - self._start,
            cache_hits=sum(
                1 for t in trials if t.status == "TERMINATED" and (t.last_result or {}).get("filters_cache_hit") == 1
            ),
        )

    def _emit(self, trials: list[Any]) -> None:
        sink = _SINKS.get(self.study_dir)
        if sink is None:
            return
        progress = self.snapshot(trials)
        key = (
            progress.done,
            progress.running,
            progress.pending,
            progress.failed,
            progress.cache_hits,
            tuple(progress.best.items()),
        )
        if key == self._last:
            return
        self._last = key
        try:
            sink(progress)
        except Exception:  # a broken renderer must not stop the study
            log.exception("on_progress failed; progress reports stop")
            _SINKS.pop(self.study_dir, None)

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self._emit(trials)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._emit(trials)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._emit(trials)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._emit(trials)


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


class StudySearch(OptunaSearch):
    """OptunaSearch that writes the Ray Tune trial id on each Optuna trial (user attr
    `tune_trial_id`), so that Optuna trials join the MLflow runs (tag `hebbrobust.trial_id`)."""

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        params = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if params is not None and ot_trial is not None:
            ot_trial.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
        return params  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- ray

_ADDRESS = re.compile(r"^(ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")


def check_address(address: str | None, source: str = "--address") -> None:
    """A Ray address is host:port of the head's GCS (e.g. 10.0.0.5:6379), ray://host:port, or auto;
    checked before anything starts."""
    if address is None or address == "auto":
        return
    found = _ADDRESS.match(address)
    if found is None or not 0 < int(found.group(3)) < 65536:
        raise HebbrobustError(
            f"{source} {address!r}: must be host:port of a Ray head node (e.g. 10.0.0.5:6379) or auto"
        )


@contextmanager
def ray_session(address: str | None = None) -> Iterator[dict[str, float]]:
    """Joins the Ray cluster at `address` (or $RAY_ADDRESS), or starts a local Ray sized to this
    machine (all its CPUs, a 200 MiB object store, no dashboard) even when a `ray start` cluster
    runs on this machine (join that one with --address auto). Yields the cluster's resources.
    A Ray this call started is shut down at the end; one already running is left alone."""
    import ray

    started = False
    if not ray.is_initialized():
        addr = address or os.environ.get("RAY_ADDRESS")
        check_address(addr, "--address" if address else "$RAY_ADDRESS")
        try:
            if addr:
                ray.init(address=addr, log_to_driver=False, logging_level=logging.WARNING)
            else:
                ray.init(
                    address="local",
                    num_cpus=os.cpu_count() or 1,
                    object_store_memory=OBJECT_STORE_BYTES,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {addr}" if addr else "a local Ray"
            raise HebbrobustError(f"cannot start or join {where}: {str(e).splitlines()[0] if str(e) else e}") from None
        started = True
    try:
        yield dict(ray.cluster_resources())
    finally:
        if started:
            ray.shutdown()


def trial_resources(spec: StudySpec, cluster: Mapping[str, float]) -> dict[str, float]:
    """CPUs and GPUs per trial. gpu auto: 1 when the cluster has a GPU, else 0; a GPU request on a
    cluster without GPUs is an error (Tune would leave the trials pending forever)."""
    cpus_avail = float(cluster.get("CPU", 0))
    gpus_avail = float(cluster.get("GPU", 0))
    cpu = float(spec.resources.cpu)
    if cpus_avail and cpu > cpus_avail:
        raise HebbrobustError(f"resources.cpu: each trial asks for {cpu:g} CPUs but the Ray cluster has {cpus_avail:g}")
    want = spec.resources.gpu
    if want == "auto":
        gpu = 1.0 if gpus_avail >= 1 else 0.0
    else:
        gpu = float(want)
        if gpu > gpus_avail:
            raise HebbrobustError(
                f"resources.gpu: each trial asks for {gpu:g} GPUs but the Ray cluster has {gpus_avail:g} "
                "(use gpu: auto)"
            )
    return {"cpu": cpu, "gpu": gpu}


@contextmanager
def _quiet_tune() -> Iterator[None]:
    """Tune's console output off while a study runs (the caller renders `on_progress`): its new
    output engine prints tables even at verbose=0, the legacy one with verbose=0 prints nothing.
    Trial failures still reach the `ray.tune` logger, and MLflow has their tracebacks."""
    import optuna

    saved = os.environ.get("RAY_AIR_NEW_OUTPUT")
    optuna_level = optuna.logging.get_verbosity()
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(optuna_level)
        if saved is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved


def _trial_dirname(trial: Any) -> str:
    return str(trial.trial_id)


# --------------------------------------------------------------------------- study directory


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _read_meta(study_dir: Path) -> dict[str, Any]:
    path = study_dir / STUDY_FILE
    try:
        meta: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise HebbrobustError(f"{study_dir}: not a study directory (no {STUDY_FILE})") from None
    except (OSError, ValueError) as e:
        raise HebbrobustError(f"{path}: unreadable ({e.__class__.__name__}: {e})") from None
    return meta


def _storage_root(storage: Path | str | None, spec: StudySpec | None = None) -> Path:
    root = Path(storage) if storage is not None else (spec.storage if spec and spec.storage else Path(DEFAULT_STORAGE))
    return root.expanduser().resolve()


def find_study_dir(name_or_dir: str | Path, storage: Path | str | None = None) -> Path:
    """A study directory given itself or the study's name (looked up under `storage`)."""
    candidate = Path(name_or_dir).expanduser()
    if (candidate / STUDY_FILE).exists():
        return candidate.resolve()
    by_name = _storage_root(storage) / str(name_or_dir)
    if (by_name / STUDY_FILE).exists():
        return by_name
    raise HebbrobustError(
        f"no study {str(name_or_dir)!r}: neither a study directory nor a study under {by_name.parent}"
    )


def _objectives(spec: StudySpec) -> list[tuple[str, str]]:
    return [(o.metric, o.mode) for o in spec.objectives]


def _context(spec: StudySpec, study_dir: Path, target: tracking.TrackingTarget, parent: str) -> TrialContext:
    return TrialContext(
        spec=spec, study_dir=str(study_dir), tracking=target, parent_run_id=parent, cpus=spec.resources.cpu,
        filter_cache=str(filter_cache_dir(spec, study_dir)) if spec.filter_cache else None,
    )


def filter_cache_dir(spec: StudySpec, study_dir: Path) -> Path:
    """Where a study's trials share filters: spec.filter_cache_dir (shared storage on a cluster),
    else <study dir>/filter-cache."""
    return Path(spec.filter_cache_dir).absolute() if spec.filter_cache_dir else Path(study_dir) / "filter-cache"


@contextmanager
def _driver_lock(study_dir: Path) -> Iterator[None]:
    """One driver per study: `study run`/`resume` hold <study dir>/driver.lock (an flock, so a killed
    driver releases it), and a second driver, e.g. a resume while the study still runs, is refused."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(study_dir / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise HebbrobustError(
            f"{study_dir}: study is being run by another driver (it holds {study_dir / LOCK_FILE}); "
            "wait for it or stop it first"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _trainable(ctx: TrialContext, resources: dict[str, float]) -> Any:
    return tune.with_resources(tune.with_parameters(run_study_trial, ctx=ctx), resources)


# --------------------------------------------------------------------------- run / resume


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
    spec = absolute_paths(spec)
    root = _storage_root(storage, spec)
    study_dir = root / spec.name
    for where in (root, study_dir):
        if where.exists() and not where.is_dir():
            raise HebbrobustError(f"--storage: {where} is a file, not a directory for studies")
    if (study_dir / STUDY_FILE).exists():
        raise HebbrobustError(
            f"{study_dir} already holds study {spec.name!r}: `hebbrobust study resume {study_dir}` "
            "continues it; a new name (--set name=...) or --storage starts another"
        )
    uri = tracking.resolve_tracking_uri(tracking_uri or spec.tracking_uri)
    experiment = spec.experiment or spec.name
    spec = spec.model_copy(update={"storage": root, "tracking_uri": uri, "experiment": experiment})
    space = optuna_space(spec, spec_path)  # spec problems surface before anything starts
    make_sampler(spec, spec_path)
    check_objectives(spec, spec_path)
    check_data_paths(spec, spec_path)

    with ray_session(address) as cluster:
        resources = trial_resources(spec, cluster)  # before anything is written
        target = tracking.ensure_experiment(uri, experiment)
        study_dir.mkdir(parents=True, exist_ok=True)
        with _driver_lock(study_dir):
            return _start(spec, spec_path, study_dir, target, space, resources, on_progress, started)


def _start(
    spec: StudySpec,
    spec_path: Path | str | None,
    study_dir: Path,
    target: tracking.TrackingTarget,
    space: Mapping[str, Any],
    resources: dict[str, float],
    on_progress: ProgressFn | None,
    started: float,
) -> StudyOutcome:
    """A new study's files, parent run and first Tune session (inside the caller's Ray session and lock)."""
    spec_file = study_dir / SPEC_FILE
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    objectives = _objectives(spec)
    parent = tracking.start_parent_run(
        target,
        spec.name,
        params={
            "num_trials": num_samples(spec),
            "max_concurrent": spec.max_concurrent,
            "seeds": spec.seeds,
            "sampler": spec.sampler.name,
            "sampler.seed": spec.sampler.seed,
            "objectives": [f"{m}:{mode}" for m, mode in objectives],
            "space": list(spec.space),
        },
        tags={
            "hebbrobust.study_dir": str(study_dir),
            "hebbrobust.spec_source": str(Path(spec_path).resolve()) if spec_path else "",
            "hebbrobust.space": json.dumps(spec.model_dump(mode="json")["space"])[:8000],
        },
        artifacts={"spec.yaml": spec_file},
    )
    meta: dict[str, Any] = {
        "name": spec.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "spec_source": str(Path(spec_path).resolve()) if spec_path else None,
        "tracking_uri": target.uri,
        "experiment": target.experiment,
        "experiment_id": target.experiment_id,
        "parent_run_id": parent,
        "optuna_storage": f"sqlite:///{study_dir / OPTUNA_FILE}",
        "tune_path": str(study_dir / TUNE_DIR),
        "tune_sessions": [TUNE_DIR],
        "num_trials": num_samples(spec),
    }
    _write_json(study_dir / STUDY_FILE, meta)
    count = num_samples(spec)
    return _fit(
        spec, study_dir, meta, target, resources, on_progress, started,
        lambda trainable, callbacks: _tuner(trainable, callbacks, spec, spec_path, study_dir, meta, space,
                                            count, TUNE_DIR),
        count, Resume(),
    )  # fmt: skip


def _tuner(
    trainable: Any,
    callbacks: list[Any],
    spec: StudySpec,
    spec_path: Path | str | None,
    study_dir: Path,
    meta: Mapping[str, Any],
    space: Mapping[str, Any],
    count: int,
    name: str,
    seed_offset: int = 0,
) -> Any:
    """A Tuner running `count` trials of the study, asked from its Optuna study (created or loaded).
    `seed_offset` shifts a seeded sampler, so a resumed session does not repeat the first one's draws."""
    from optuna.storages import RDBStorage
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    sampling = spec
    if seed_offset and spec.sampler.seed is not None:
        seed = (spec.sampler.seed + seed_offset) % 2**32
        sampling = spec.model_copy(update={"sampler": spec.sampler.model_copy(update={"seed": seed})})
    objectives = _objectives(spec)
    searcher = StudySearch(
        space=dict(space),
        metric=[m for m, _ in objectives],
        mode=[mode for _, mode in objectives],
        sampler=make_sampler(sampling, spec_path),
        study_name=spec.name,
        storage=RDBStorage(meta["optuna_storage"]),
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(  # no metric/mode here: they would make it single-objective
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent),
            scheduler=FIFOScheduler(),
            num_samples=count,
            reuse_actors=True,  # a trial's worker keeps torch/mlflow imported for the next
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(study_dir),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            callbacks=callbacks,
            verbose=0,
        ),
    )


@dataclass
class Resume:
    """What `resume_study` found before running anything (all zero for a new study)."""

    finished: int = 0  # Optuna COMPLETE trials (after recovering those below)
    failed: int = 0  # Optuna FAIL trials that really failed (they count towards num_trials)
    closed_runs: int = 0  # MLflow runs left RUNNING by the stopped driver, now KILLED
    recovered: int = 0  # Optuna trials left RUNNING whose MLflow run had FINISHED: told COMPLETE
    cut_off: int = 0  # Optuna trials left RUNNING without a finished run: FAIL + enqueued again
    remaining: int = 0  # trials still to run
    best: dict[str, float | None] = field(default_factory=dict)  # best objective values so far

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, int)}


def _optuna_study(meta: Mapping[str, Any], name: str) -> Any:
    """The study's Optuna record, or a one-line error that says how to go on."""
    import optuna

    url = meta["optuna_storage"]
    again = (
        f"its finished trials stay in MLflow ({meta['tracking_uri']}, experiment {meta['experiment']!r}); "
        f"to go on, start a new study: hebbrobust study run {meta.get('spec_source') or 'SPEC'} "
        f"--set name={name}-2"
    )
    path = Path(url.removeprefix("sqlite:///"))
    if url.startswith("sqlite:///") and not path.is_file():  # load_study would create an empty one
        raise HebbrobustError(f"{path}: the study's Optuna record is missing; {again}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=name, storage=url)
    except KeyError:
        raise HebbrobustError(f"{url} holds no Optuna study {name!r}; {again}") from None
    except Exception as e:  # noqa: BLE001 - sqlalchemy: a truncated or foreign file
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise HebbrobustError(f"{path}: unreadable Optuna record ({e.__class__.__name__}: {first}); {again}") from None


def reconcile(spec: StudySpec, meta: Mapping[str, Any], target: tracking.TrackingTarget) -> Resume:
    """Makes Optuna and MLflow agree after the driver stopped (SIGKILL, crash, Ctrl-C): see the
    module doc. Idempotent; needs no Ray and no Tune state."""
    from optuna.trial import TrialState

    study = _optuna_study(meta, spec.name)
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
    objectives = _objectives(spec)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        row = finished.get(str(trial.user_attrs.get(TUNE_TRIAL_ATTR)))
        values = [row.get(m) for m, _ in objectives] if row is not None else []
        if values and all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            study.tell(trial.number, [float(v) for v in values])  # the driver died between its end and the tell
            out.recovered += 1
            continue
        study._storage.set_trial_user_attr(trial._trial_id, CUT_OFF_ATTR, "the study driver stopped first")
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(dict(trial.params), user_attrs={RERUN_ATTR: trial.number}, skip_if_exists=False)
        out.cut_off += 1
    trials = study.get_trials(deepcopy=False)
    out.finished = sum(t.state == TrialState.COMPLETE for t in trials)
    out.failed = sum(t.state == TrialState.FAIL and CUT_OFF_ATTR not in t.user_attrs for t in trials)
    out.remaining = max(0, int(meta["num_trials"]) - out.finished - out.failed)
    for i, (_, mode) in enumerate(objectives):
        values = [t.values[i] for t in trials if t.state == TrialState.COMPLETE and t.values]
        out.best[objectives[i][0]] = (max(values) if mode == "max" else min(values)) if values else None
    return out


def resume_study(
    study_dir: Path | str, *, address: str | None = None, on_progress: ProgressFn | None = None
) -> StudyOutcome:
    """Continue a stopped study from its directory: nothing lost, nothing counted twice. Reconciles
    Optuna and MLflow (see `reconcile`), then runs the trials still missing in a fresh Tuner.
    Works on a finished study too (nothing to run; the front is recomputed). Ray Tune's own state
    files are not needed: a truncated tuner.pkl or a missing experiment state changes nothing."""
    started = time.monotonic()
    check_address(address)
    study_dir = Path(study_dir).expanduser().resolve()
    meta = _read_meta(study_dir)
    with _driver_lock(study_dir):
        return _resume_locked(study_dir, meta, address, on_progress, started)


def _resume_locked(
    study_dir: Path, meta: dict[str, Any], address: str | None, on_progress: ProgressFn | None, started: float
) -> StudyOutcome:
    spec = load_study(study_dir / SPEC_FILE)
    target = tracking.TrackingTarget(meta["tracking_uri"], meta["experiment"], meta["experiment_id"])
    state = reconcile(spec, meta, target)
    if state.remaining == 0:
        tracking.set_run_status(target, meta["parent_run_id"], "RUNNING")
        outcome = _conclude(spec, study_dir, meta, target, started, interrupted=False)
        outcome.resumed = state.counts()
        return outcome
    space = optuna_space(spec)
    sessions = list(meta.get("tune_sessions", [TUNE_DIR]))
    name = f"tune-resume-{len(sessions)}"
    with ray_session(address) as cluster:
        resources = trial_resources(spec, cluster)
        tracking.set_run_status(target, meta["parent_run_id"], "RUNNING")
        meta["tune_sessions"] = [*sessions, name]
        _write_json(study_dir / STUDY_FILE, meta)
        asked = len(_optuna_study(meta, spec.name).get_trials(deepcopy=False))
        outcome = _fit(
            spec, study_dir, meta, target, resources, on_progress, started,
            lambda trainable, callbacks: _tuner(trainable, callbacks, spec, None, study_dir, meta, space,
                                                state.remaining, name, seed_offset=asked),
            state.remaining, state,
        )  # fmt: skip
    outcome.resumed = state.counts()
    return outcome


def _fit(
    spec: StudySpec,
    study_dir: Path,
    meta: dict[str, Any],
    target: tracking.TrackingTarget,
    resources: dict[str, float],
    on_progress: ProgressFn | None,
    started: float,
    make_tuner: Callable[[Any, list[Any]], Any],
    count: int,
    before: Resume,
) -> StudyOutcome:
    """Builds the Tuner for `count` trials, runs it inside the caller's Ray session, closes any run
    its trials left open, then reads the trials back from MLflow, logs the front to the parent run
    and closes it."""
    parent = meta["parent_run_id"]
    callback = ProgressCallback(
        str(study_dir), spec.name, int(meta["num_trials"]), _objectives(spec),
        done_before=before.finished, failed_before=before.failed, best_before=before.best,
    )  # fmt: skip
    if on_progress is not None:
        _SINKS[str(study_dir)] = on_progress
    try:
        with _quiet_tune():
            tuner = make_tuner(
                _trainable(_context(spec, study_dir, target, parent), resources),
                [callback, TrialRunCloser(target, parent)],
            )
            grid = tuner.fit()
        ended = grid.num_terminated + grid.num_errors
    except KeyboardInterrupt:
        _close_open_runs(target, parent, "KILLED", "cut off: the study was interrupted")
        tracking.set_run_status(target, parent, "KILLED")
        raise
    except BaseException:
        _close_open_runs(target, parent, "KILLED", "cut off: the study driver failed")
        tracking.set_run_status(target, parent, "FAILED")
        raise
    finally:
        _SINKS.pop(str(study_dir), None)
    interrupted = ended < count
    if interrupted:
        _close_open_runs(target, parent, "KILLED", "cut off: the study was interrupted (`study resume` runs it again)")
    else:
        _close_open_runs(target, parent, "FAILED", "the trial ended without closing its run")
    return _conclude(spec, study_dir, meta, target, started, interrupted=interrupted)


def _close_open_runs(target: tracking.TrackingTarget, parent: str, status: str, reason: str) -> None:
    try:
        tracking.close_stale_runs(target, parent, status=status, reason=reason)
    except HebbrobustError:  # the store is away; `study resume` closes them
        log.exception("could not close the study's open trial runs")


def _conclude(
    spec: StudySpec,
    study_dir: Path,
    meta: dict[str, Any],
    target: tracking.TrackingTarget,
    started: float,
    *,
    interrupted: bool,
) -> StudyOutcome:
    """Reads the trials back, logs the front to the parent run and closes it."""
    parent = meta["parent_run_id"]
    outcome = _outcome(spec, study_dir, meta, target)
    summary = {
        "trials_finished": outcome.counts["finished"],
        "trials_failed": outcome.counts["failed"],
        "front_size": len(outcome.front),
    }
    tracking.log_front(target, parent, {k: v for k, v in outcome.files.items() if k != "spec.yaml"}, summary)
    tracking.set_run_status(target, parent, "KILLED" if interrupted else "FINISHED")
    outcome.wall_seconds = time.monotonic() - started
    outcome.interrupted = interrupted
    return outcome


def _outcome(spec: StudySpec, study_dir: Path, meta: dict[str, Any], target: tracking.TrackingTarget) -> StudyOutcome:
    """Reads the study's trials back from MLflow, computes the front and writes front.csv/png."""
    objectives = _objectives(spec)
    trials = tracking.read_trials(target, meta["parent_run_id"])
    if trials.empty:
        trials = pd.DataFrame(columns=["run_id", "trial_id", "status", "reason", "model.kind"])
    trials = report.with_front(trials, objectives)
    lead = ["trial_id", "model.kind", *[m for m, _ in objectives], *spec.space]
    lead += ["on_front", "pareto_rank", "status"]
    first = list(dict.fromkeys(c for c in lead if c in trials.columns))
    trials = trials[first + [c for c in trials.columns if c not in first]]
    latest = trials.drop_duplicates("trial_id", keep="last") if len(trials) else trials  # retries: last attempt
    total = int(meta["num_trials"])
    finished = int((latest["status"] == "FINISHED").sum())
    failed = int((latest["status"] == "FAILED").sum())
    counts = {
        "total": total,
        "finished": finished,
        "failed": failed,
        "unfinished": max(0, total - finished - failed),
        "runs": len(trials),
    }
    files = report.write_front(trials, objectives, study_dir, title=f"{spec.name}: {finished} finished trials")
    files["spec.yaml"] = study_dir / SPEC_FILE
    return StudyOutcome(
        name=spec.name,
        study_dir=study_dir,
        spec=spec,
        objectives=objectives,
        tracking_uri=target.uri,
        experiment=target.experiment,
        experiment_id=target.experiment_id,
        parent_run_id=meta["parent_run_id"],
        optuna_storage=meta["optuna_storage"],
        trials=trials,
        front=report.front_table(trials, objectives),
        counts=counts,
        files=files,
    )


# --------------------------------------------------------------------------- reading studies


def show_study(name_or_dir: str | Path, *, storage: Path | str | None = None) -> StudyOutcome:
    """A study's trials and front, read back from MLflow (front.csv/png rewritten in its directory)."""
    study_dir = find_study_dir(name_or_dir, storage)
    meta = _read_meta(study_dir)
    spec = load_study(study_dir / SPEC_FILE)
    target = tracking.TrackingTarget(meta["tracking_uri"], meta["experiment"], meta["experiment_id"])
    return _outcome(spec, study_dir, meta, target)


def optuna_counts(storage_url: str, study_name: str) -> dict[str, int]:
    """Trials per state (COMPLETE, FAIL, RUNNING, ...) in an Optuna RDB study; {} if it has none."""
    import optuna

    path = Path(storage_url.removeprefix("sqlite:///"))
    if storage_url.startswith("sqlite:///") and not path.exists():
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage_url)
    except KeyError:
        return {}
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def list_studies(storage: Path | str | None = None) -> pd.DataFrame:
    """One row per study under `storage` (default ./hebbrobust-studies): name, directory, creation
    time, planned trials, Optuna's COMPLETE / FAIL / RUNNING counts, sampler, objectives, MLflow."""
    root = _storage_root(storage)
    rows: list[dict[str, Any]] = []
    for meta_file in sorted(root.glob(f"*/{STUDY_FILE}")) if root.exists() else []:
        study_dir = meta_file.parent
        try:
            meta = _read_meta(study_dir)
            spec = load_study(study_dir / SPEC_FILE)
        except HebbrobustError as e:
            rows.append({"name": study_dir.name, "study_dir": str(study_dir), "error": str(e)})
            continue
        counts = optuna_counts(meta["optuna_storage"], meta["name"])
        rows.append(
            {
                "name": meta["name"],
                "study_dir": str(study_dir),
                "created": meta.get("created"),
                "num_trials": meta.get("num_trials"),
                "complete": counts.get("COMPLETE", 0),
                "failed": counts.get("FAIL", 0),
                "running": counts.get("RUNNING", 0),
                "sampler": spec.sampler.name,
                "objectives": ", ".join(f"{m} ({mode})" for m, mode in _objectives(spec)),
                "tracking_uri": meta["tracking_uri"],
                "experiment": meta["experiment"],
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "name",
            "study_dir",
            "created",
            "num_trials",
            "complete",
            "failed",
            "running",
            "sampler",
            "objectives",
            "tracking_uri",
            "experiment",
        ]
        + (["error"] if any("error" in r for r in rows) else []),
    )
