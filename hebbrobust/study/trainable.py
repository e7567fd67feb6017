"""What runs inside one Ray Tune trial: the base trial with the sampled parameters, `seeds` times,
averaged, logged to its MLflow child run, reported to Tune once at the end.

A trial that fails (TrialError from the science code, or any other exception) is closed FAILED in
MLflow with the reason as a tag and the traceback as an artifact, then re-raised so that Tune
marks it errored and OptunaSearch tells Optuna FAIL; the study goes on.
"""

from __future__ import annotations

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

from hebbrobust.config import StudySpec, TrialConfig, with_params
from hebbrobust.errors import TrialError
from hebbrobust.fileio import disk_full
from hebbrobust.study.record import DISK_FULL
from hebbrobust.tracking import HOST_TAG, NODE_TAG, TrackingTarget, TrialRun


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


def trial_config(spec: StudySpec, params: Mapping[str, Any], seed_index: int = 0) -> TrialConfig:
    base = with_params(spec.base, dict(params))
    if seed_index:
        base = base.model_copy(update={"seed": base.seed + seed_index})
    return base


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

    from hebbrobust.trial import run_trial, save_trial

    torch.set_num_threads(max(1, int(ctx.cpus)))
    params = dict(config)
    tune_ctx = tune.get_context()
    trial_id = tune_ctx.get_trial_id() or "trial"
    spec = ctx.spec
    objectives = [(o.metric, o.mode) for o in spec.objectives]
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
            "hebbrobust.seeds": str(spec.seeds),
            "hebbrobust.trial_dir": str(Path(ctx.study_dir) / "trials" / trial_id),
            NODE_TAG: ray.get_runtime_context().get_node_id(),
            HOST_TAG: f"{socket.gethostname()}:{os.getpid()}",
        },
    )
    out_dir = Path(ctx.study_dir) / "trials" / trial_id
    try:
        per_seed: list[dict[str, Any]] = []
        for i in range(spec.seeds):
            prefix = f"seed{i}/" if spec.seeds > 1 else ""

            def on_epoch(stage: str, epoch: int, total: int, metrics: dict[str, float], prefix: str = prefix) -> None:
                for name, value in metrics.items():
                    run.epoch(f"{prefix}{stage}/{name}", epoch, value)

            seed_dir = out_dir / f"seed{i}" if spec.seeds > 1 else out_dir
            checkpoints = seed_dir / "checkpoints"  # a retried or resumed trial continues from its last epoch
            result = run_trial(
                trial_config(spec, params, i),
                on_epoch=on_epoch,
                filter_cache=Path(ctx.filter_cache) if ctx.filter_cache else None,
                checkpoint_dir=checkpoints,
            )
            for key, values in result.curves.items():  # epochs the callback did not stream (resumed, cached)
                for step, value in enumerate(values, start=1):  # epochs count from 1, as on_epoch's
                    if (f"{prefix}{key}", step) not in run.seen:
                        run.epoch(f"{prefix}{key}", step, value)
            files = save_trial(result, seed_dir)
            shutil.rmtree(checkpoints, ignore_errors=True)
            run.artifacts(files, subdir=f"seed{i}" if spec.seeds > 1 else None)
            if spec.seeds > 1:
                run.final(result.metrics, prefix=prefix)
            per_seed.append(dict(result.metrics))
        metrics = aggregate(per_seed)
        run.final(metrics)
        problem = objective_problem(metrics, objectives)
        if problem:
            raise TrialError(problem)
    except BaseException as e:  # recorded, then re-raised: Tune errors the trial, Optuna gets FAIL
        reason = failure_reason(e)
        status = "FAILED" if isinstance(e, Exception) else "KILLED"
        try:
            run.fail(reason, traceback.format_exc(), status=status)
        except Exception:  # the store is unreachable: the trial's own error matters more
            pass
        raise
    run.finish()
    report: dict[str, Any] = {k: n for k, v in metrics.items() if (n := _number(v)) is not None}
    report.update(mlflow_run_id=run.run_id, trial_dir=str(out_dir))
    tune.report(report)
