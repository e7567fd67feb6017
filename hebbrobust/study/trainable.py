"""What runs inside one Ray Tune trial: the base trial with the sampled parameters, `seeds` times,
averaged, logged to its MLflow child run, reported to Tune once at the end.

Nested seeds (`seeds: {filters: A, heads: B}`): A filter seeds (TrialConfig.seed = seed + i) x B head
seeds (head_seed = head_seed or seed, + j); the B head seeds of a filter seed share its filters
through the filter cache. Each metric m gets its mean over all A x B runs, `m_std` (sd over all),
`m_std_filters` = sample sd over filter seeds of the per-filter-seed means (A > 1; the spread the
filters cause, plus a 1/B share of the head noise) and `m_std_heads` = mean over filter seeds of the
sample sd within a filter seed (B > 1; the spread the head's init, order and attacks cause).

Gated trials (`rule.min_converged`): as soon as one filter seed's filters end below the gate, the
trial stops, closes its MLflow run FINISHED with tag `hebbrobust.gated` (the reason) and reports
`gated` = 1 without objectives; the study's searcher tells Optuna PRUNED (neither a failure nor a
point for the front).

With `scheduler: {name: moasha}` the first run (filter seed 0, head seed 0) also reports at each rung
(hebbrobust.trial.RungPlan): its objectives measured on the validation split as `val_<metric>` (the
objectives themselves NaN, so a stopped trial's last result never carries values Optuna could take
for its own), under `moasha.RUNG_KEY`; the scheduler may stop it there (see run.StudySearch and
callbacks.TrialRunCloser).

A trial that fails (TrialError from the science code, or any other exception) is closed FAILED in
MLflow with the reason as a tag and the traceback as an artifact, then re-raised so that Tune
marks it errored and OptunaSearch tells Optuna FAIL; the study goes on.

An attempt whose trial already has a FINISHED run (its worker died after closing the run, before
Tune had the result: Tune retries it) reports that run's values again instead of training a second
time, so a trial never has two FINISHED runs (the full chaos soak found one such double).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import statistics
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hebbrobust.config import AttackConfig, StudySpec, TrialConfig, study_trial
from hebbrobust.errors import TrialError
from hebbrobust.fileio import disk_full
from hebbrobust.metrics import GATED, GATED_REASON
from hebbrobust.study.record import DISK_FULL
from hebbrobust.tracking import GATED_TAG, HOST_TAG, NODE_TAG, TrackingTarget, TrialRun, finished_trial_run


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs besides its sampled parameters; picklable, all paths absolute.
    The parent run id travels here (by closure), never in the Tune config."""

    spec: StudySpec
    study_dir: str
    tracking: TrackingTarget
    parent_run_id: str
    cpus: float
    filter_cache: str | None = None  # shared filter-cache directory (issue 8); None: every trial trains its own


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys (the trial config as MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def aggregate(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-seed final metrics -> one dict: numbers averaged over the seeds that have them, and with
    more than one seed `<name>_std` (sample standard deviation) beside each; other values (text,
    None) taken from the first seed that has one. A number that no seed has stays None."""
    if len(runs) == 1:
        return dict(runs[0])
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run if k not in keys]
    out: dict[str, Any] = {}
    for key in keys:
        values = [run.get(key) for run in runs]
        numbers = [n for n in map(_number, values) if n is not None]
        if numbers:
            out[key] = statistics.fmean(numbers)
            out[f"{key}_std"] = statistics.stdev(numbers) if len(numbers) > 1 else 0.0
        elif not any(isinstance(v, int | float) for v in values if not isinstance(v, bool)):
            out[key] = next((v for v in values if v is not None), None)
        else:
            out[key] = None  # numbers, but none finite
    return out


def nested_spread(runs: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, float]:
    """Per filter seed, its head seeds' final metrics -> `<m>_std_filters` (sample sd of the
    per-filter-seed means; with more than one filter seed) and `<m>_std_heads` (mean over filter
    seeds of the sample sd within each; with more than one head seed), for every number m.
    Filter seeds where m has fewer than two numbers (or none) are left out of the part that needs them."""
    keys: list[str] = []
    for group in runs:
        for run in group:
            keys += [k for k in run if k not in keys]
    out: dict[str, float] = {}
    for key in keys:
        groups = [[n for n in (_number(r.get(key)) for r in group) if n is not None] for group in runs]
        means = [statistics.fmean(g) for g in groups if g]
        within = [statistics.stdev(g) for g in groups if len(g) > 1]
        if len(runs) > 1 and means:
            out[f"{key}_std_filters"] = statistics.stdev(means) if len(means) > 1 else 0.0
        if max(len(group) for group in runs) > 1 and within:
            out[f"{key}_std_heads"] = statistics.fmean(within)
    return out


def finished_report(done: Mapping[str, Any], objectives: Sequence[tuple[str, str]], out_dir: Path) -> dict[str, Any]:
    """What Tune gets from an attempt whose trial already has a FINISHED run
    (`tracking.finished_trial_run`): that run's final metrics, as the first attempt reported them (a
    gated one: objectives NaN and `gated` = 1, so the searcher tells Optuna PRUNED)."""
    report: dict[str, Any] = {k: n for k, v in done["metrics"].items() if (n := _number(v)) is not None}
    if done.get("gated"):
        report.update({m: math.nan for m, _ in objectives}, **{GATED: 1})
    report.update(mlflow_run_id=str(done["run_id"]), trial_dir=str(out_dir))
    return report


def objective_problem(metrics: Mapping[str, Any], objectives: Sequence[tuple[str, str]]) -> str | None:
    """Why the objectives cannot be told to Optuna (missing or not finite), or None."""
    for name, _ in objectives:
        if name not in metrics:
            shown = ", ".join(sorted(k for k, v in metrics.items() if _number(v) is not None))
            return f"objective {name!r} is not among the trial's metrics ({shown})"
        if _number(metrics[name]) is None:
            why = metrics.get(f"{name}_reason")
            return f"objective {name!r} is {metrics[name]!r}" + (f": {why}" if isinstance(why, str) else "")
    return None


def failure_reason(e: BaseException) -> str:
    """One line: the TrialError's reason; `disk full: ...` naming the file when a write ran out of
    space (checkpoint, cache entry, artifact); else the exception's class and first line."""
    if (full := disk_full(e)) is not None:
        where = f" writing {full.filename}" if full.filename else ""
        return f"{DISK_FULL}: no space left on device{where}; free space, then `hebbrobust study resume` runs it again"
    if isinstance(e, TrialError):
        return e.reason
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return f"{e.__class__.__name__}: {first}"



def trial_config(spec: StudySpec, params: Mapping[str, Any], seed_index: int = 0, head_index: int = 0) -> TrialConfig:
    """The trial of filter seed `seed_index` and head seed `head_index`. An int `seeds` moves the one
    seed; nested seeds cross them: filter seed i is seed + i, head seed j is (head_seed or seed) + j
    whatever i is, so every filter seed gets the same B head seeds."""
    base = study_trial(spec, dict(params))
    if isinstance(spec.seeds, int):
        return base.model_copy(update={"seed": base.seed + seed_index}) if seed_index else base
    return base.model_copy(update={"seed": base.seed + seed_index, "head_seed": base.training_seed + head_index})


def _seed_runs(spec: StudySpec) -> list[tuple[int, int, str]]:
    """(filter seed index, head seed index, directory / MLflow prefix) for every run of a configuration."""
    filters, heads = spec.seed_grid
    if isinstance(spec.seeds, int):
        return [(i, 0, f"seed{i}" if spec.seeds > 1 else "") for i in range(spec.seeds)]
    return [(i, j, f"f{i}h{j}") for i in range(filters) for j in range(heads)]


VAL_PREFIX = "val_"  # a rung report's objective values, measured on the validation split


def rung_attack(spec: StudySpec, config: TrialConfig) -> AttackConfig:
    """The attack a rung runs: the trial's own, on at most `scheduler.rung_images` validation images,
    only at the eps the objectives name (all of them when none does), minimal radii only when an
    objective needs them."""
    from hebbrobust.evaluate import eps_label  # torch: imported where trials run

    images = min(spec.scheduler.rung_images, config.attack.n_images)
    names = [o.metric for o in spec.objectives]
    radii = any(m.split("_", 1)[-1] in ("eps50", "auc", "R", "r2", "unbroken_frac") for m in names)
    wanted = tuple(e for e in config.attack.eps if any(m.endswith(f"@{eps_label(e)}") for m in names))
    return config.attack.model_copy(
        update={
            "n_images": images,
            "eps": wanted or config.attack.eps,
            "radius_images": min(images, config.attack.radius_images) if radii else 0,
            "min_radius_images": min(config.attack.min_radius_images, images),
        }
    )


def rung_report(
    index: int, fraction: float, metrics: Mapping[str, Any], objectives: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """What a trial tells Tune at a rung (see the module doc)."""
    from hebbrobust.study.moasha import FRACTION_KEY, RUNG_KEY

    out: dict[str, Any] = {RUNG_KEY: index, FRACTION_KEY: fraction}
    for name, _ in objectives:
        out[VAL_PREFIX + name] = _number(metrics.get(name))
        out[name] = float("nan")
    return out


def stopped_reason(rung: int) -> str:
    return f"stopped by the scheduler (MOASHA) at rung {rung}: dominated there"


def _trial_name(params: Mapping[str, Any], trial_id: str) -> str:
    """The MLflow run name: model kind, then the searched parameters by their last key part, then
    the trial id, e.g. `local p=3 k=2 delta=0.4 (5ac3_00001)`."""
    shown = [f"{k.rsplit('.', 1)[-1]}={f'{v:.3g}' if isinstance(v, float) else v}" for k, v in params.items()
             if k != "model.kind"]  # fmt: skip
    return " ".join([str(params.get("model.kind") or "trial"), *shown, f"({trial_id})"])


def run_study_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune function trainable (wrapped with `tune.with_parameters(run_study_trial, ctx=...)`)."""
    import ray
    import torch
    from ray import tune

    from hebbrobust.trial import RungPlan, run_trial, save_trial

    torch.set_num_threads(max(1, int(ctx.cpus)))
    params = dict(config)
    tune_ctx = tune.get_context()
    trial_id = tune_ctx.get_trial_id() or "trial"
    spec = ctx.spec
    objectives = [(o.metric, o.mode) for o in spec.objectives]
    out_dir = Path(ctx.study_dir) / "trials" / trial_id
    done = finished_trial_run(ctx.tracking, ctx.parent_run_id, trial_id)
    if done is not None:  # an earlier attempt finished; its worker died before Tune had the result
        tune.report(finished_report(done, objectives, out_dir))
        return
    first = trial_config(spec, params)
    run = TrialRun.start(
        ctx.tracking,
        parent_run_id=ctx.parent_run_id,
        study=spec.name,
        trial_id=trial_id,
        name=_trial_name(params, trial_id),
        params=flatten(first.model_dump(mode="json")),
        searched=params,
        tags={
            "hebbrobust.seeds": str(spec.seeds) if isinstance(spec.seeds, int) else json.dumps(spec.seeds.model_dump()),
            "hebbrobust.trial_dir": str(Path(ctx.study_dir) / "trials" / trial_id),
            NODE_TAG: ray.get_runtime_context().get_node_id(),
            HOST_TAG: f"{socket.gethostname()}:{os.getpid()}",
        },
    )
    try:
        per_seed: list[dict[str, Any]] = []
        groups: dict[int, list[dict[str, Any]]] = {}
        gated: str | None = None
        stopped_at: list[int] = []  # the rung while the trial waits on the scheduler's word
        for i, j, name in _seed_runs(spec):
            prefix = f"{name}/" if name else ""

            def on_epoch(stage: str, epoch: int, total: int, metrics: dict[str, float], prefix: str = prefix) -> None:
                for name, value in metrics.items():
                    run.epoch(f"{prefix}{stage}/{name}", epoch, value)

            seed_dir = out_dir / name if name else out_dir
            checkpoints = seed_dir / "checkpoints"  # a retried or resumed trial continues from its last epoch
            config_i = trial_config(spec, params, i, j)
            rungs = None
            if spec.scheduler.name == "moasha" and i == 0 and j == 0:

                def on_rung(index: int, fraction: float, values: dict[str, Any]) -> None:
                    report = rung_report(index, fraction, values, objectives)
                    for name, value in report.items():
                        if name.startswith(VAL_PREFIX) and value is not None:
                            run.epoch(f"rung/{name}", index, value)
                    run.flush()
                    stopped_at[:] = [index]
                    tune.report(report)  # returns only if the scheduler lets the trial go on (else SystemExit)
                    stopped_at.clear()

                rungs = RungPlan(spec.scheduler.rungs, rung_attack(spec, config_i), on_rung)
            result = run_trial(
                config_i,
                on_epoch=on_epoch,
                filter_cache=Path(ctx.filter_cache) if ctx.filter_cache else None,
                checkpoint_dir=checkpoints,
                feature_cache_gb=spec.feature_cache_gb,
                rungs=rungs,
            )
            for key, values in result.curves.items():  # epochs the callback did not stream (resumed, cached)
                for step, value in enumerate(values, start=1):  # epochs count from 1, as on_epoch's
                    if (f"{prefix}{key}", step) not in run.seen:
                        run.epoch(f"{prefix}{key}", step, value)
            files = save_trial(result, seed_dir)
            shutil.rmtree(checkpoints, ignore_errors=True)
            run.artifacts(files, subdir=name or None)
            if prefix:
                run.final(result.metrics, prefix=prefix)
            per_seed.append(dict(result.metrics))
            groups.setdefault(i, []).append(dict(result.metrics))
            if result.metrics.get(GATED):
                gated = str(result.metrics.get(GATED_REASON) or "gated")
                break  # no head on filters below the gate, for this seed or any other
        metrics = aggregate(per_seed)
        if gated is None and not isinstance(spec.seeds, int):
            metrics.update(nested_spread(list(groups.values())))
        if gated:
            metrics[GATED] = 1
        run.final(metrics)
        problem = objective_problem(metrics, objectives) if gated is None else None
        if problem:
            raise TrialError(problem)
    except BaseException as e:  # recorded, then re-raised: Tune errors the trial, Optuna gets FAIL
        if stopped_at and not isinstance(e, Exception):  # the scheduler stopped it (the driver tags it too)
            try:
                run.stopped(stopped_at[0], stopped_reason(stopped_at[0]))
            except Exception:
                pass
            raise
        reason = failure_reason(e)
        status = "FAILED" if isinstance(e, Exception) else "KILLED"
        try:
            run.fail(reason, traceback.format_exc(), status=status)
        except Exception:  # the store is unreachable: the trial's own error matters more
            pass
        raise
    if gated is not None:
        run.finish(tags={GATED_TAG: gated})
        report: dict[str, Any] = {k: n for k, v in metrics.items() if (n := _number(v)) is not None}
        # objectives as NaN: Tune insists on them, and the searcher tells Optuna PRUNED for `gated` = 1
        report.update({m: math.nan for m, _ in objectives}, **{GATED: 1})
        report.update(mlflow_run_id=run.run_id, trial_dir=str(out_dir))
        tune.report(report)
        return
    run.finish()
    report = {k: n for k, v in metrics.items() if (n := _number(v)) is not None}
    report.update(mlflow_run_id=run.run_id, trial_dir=str(out_dir))
    tune.report(report)
