"""The Ray side of a study: joining or starting Ray, the resources each trial asks for, and Tune
kept quiet while the driver renders progress itself. Choices that avoid the traps in docs/platform.md: the GPU
request follows `ray.cluster_resources()`; a local Ray gets a small object store and no dashboard; a trial
whose worker Ray's memory monitor kills fails (and is retried) like one whose worker was SIGKILLed
(`lost_workers_fail_trials`), instead of ending the study."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from hebbrobust.config import StudySpec
from hebbrobust.errors import HebbrobustError

OBJECT_STORE_BYTES = 200 * 1024**2

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

    lost_workers_fail_trials()
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


def _worker_lost(cause: BaseException) -> Exception:
    """`cause` (a Ray error that says a trial's worker process is gone) as a RayActorError, which
    Tune's actor manager treats as a dead actor: the trial fails and is retried (max_failures)."""
    from ray.exceptions import RayActorError

    first = next((line.strip() for line in str(cause).splitlines() if line.strip()), type(cause).__name__)
    return RayActorError(error_msg=f"the trial's worker was lost ({type(cause).__name__}): {first[:400]}")


def lost_workers_fail_trials() -> None:
    """Makes Tune treat a Ray error that means "the trial's worker is gone" as a dead actor.

    Ray's memory monitor kills workers when the node runs low on memory (95% by default, counting
    every process on the machine). A worker killed while it runs a trial's `train` task reaches the
    driver as a bare `ray.exceptions.OutOfMemoryError` (likewise WorkerCrashedError, NodeDiedError),
    which is neither a RayActorError nor a RayTaskError; Tune's `RayActorManager._actor_task_failed`
    (ray 2.60, air/execution/_internal/actor_manager.py) then raises `RuntimeError("Caught unexpected
    exception: ...")` in the driver and the whole study ends. A SIGKILLed worker, by contrast, gives
    ActorDiedError (a RayActorError): the trial fails, is retried up to max_failures, and the study
    goes on. This wraps that method once per process so that every other Ray error of a trial's task
    takes the same path (whatever it is, failing the one trial beats ending the study; Tune drops the
    actor's handle, which ends it if it still lives). Idempotent; does nothing when the installed Ray
    lacks the method (a newer layout)."""
    try:
        from ray.air.execution._internal.actor_manager import RayActorManager
    except ImportError:  # pragma: no cover - a Ray without the module
        return
    from ray.exceptions import RayActorError, RayError, RayTaskError

    original = getattr(RayActorManager, "_actor_task_failed", None)
    if original is None or getattr(original, "_hebbrobust_lost_workers", False):
        return

    def _actor_task_failed(self: Any, tracked_actor_task: Any, exception: Exception) -> None:
        if isinstance(exception, RayError) and not isinstance(exception, RayActorError | RayTaskError):
            exception = _worker_lost(exception)
        original(self, tracked_actor_task, exception)

    _actor_task_failed._hebbrobust_lost_workers = True  # type: ignore[attr-defined]
    RayActorManager._actor_task_failed = _actor_task_failed  # type: ignore[method-assign]


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
def quiet_tune() -> Iterator[None]:
    """Tune's console output off while a study runs (the caller renders `on_progress`): its new
    output engine prints tables even at verbose=0, the legacy one with verbose=0 prints nothing.
    Trial failures still reach the `ray.tune` logger, and MLflow has their tracebacks; the driver's own
    interrupt messages (which point at Tuner.restore) do not."""
    import optuna

    saved = os.environ.get("RAY_AIR_NEW_OUTPUT")
    optuna_level = optuna.logging.get_verbosity()
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # On Ctrl+C these print "Stop signal received ...", "Resume experiment with: Tuner.restore(...)"
    # (the wrong way on: `study resume` is) and "Failed to fetch metrics" for the trials cut off
    chatty = [logging.getLogger(n) for n in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis")]
    levels = [c.level for c in chatty]
    for c in chatty:
        c.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for c, level in zip(chatty, levels, strict=True):
            c.setLevel(level)
        optuna.logging.set_verbosity(optuna_level)
        if saved is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved
