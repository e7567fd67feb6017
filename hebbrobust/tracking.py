"""MLflow, in one place: the only module that imports mlflow.

Layout of a study in MLflow: one experiment per study (named after it unless the spec says
otherwise); one parent run per `study run` (resumed runs reopen it); one child run per Tune trial,
nested with the tag `mlflow.parentRunId`, carrying every trial setting as a param, the per-epoch
curves (`<stage>/<name>`, step = epoch), the final metrics and the trial's files. The parent run
gets the Pareto front (front.csv, front.png, trials.csv) when the study ends.

Metric names: MLflow accepts only alphanumerics, `_ - . : /` and spaces. The trial's names contain
`@` (`pgd_acc@2`), so `mlflow_name()` maps them here and nowhere else: `@` -> `_eps`
(`pgd_acc@2` -> `pgd_acc_eps2`), any other character MLflow rejects -> `_`. Every renamed metric is
listed in the run's `hebbrobust.metric_names` tag (JSON, MLflow name -> trial name), and
`read_trials()` maps the names back, so DataFrames always use the trial's own names.

Values MLflow cannot hold are never dropped silently: a None or non-finite metric becomes the tag
`hebbrobust.none.<name>` holding why (the trial's `<name>_reason` when it gives one), and a text
metric becomes the tag `hebbrobust.text.<name>`.

Every URI handed out here is absolute, because Ray runs trials in another working directory.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hebbrobust.errors import HebbrobustError
from hebbrobust.metrics import GATED_REASON

PARENT_TAG = "mlflow.parentRunId"
TRIAL_ID_TAG = "hebbrobust.trial_id"
STUDY_TAG = "hebbrobust.study"
ROLE_TAG = "hebbrobust.role"  # "study" (parent) or "trial" (child)
SEARCHED_TAG = "hebbrobust.params"  # JSON: the searched parameters with their types
NAMES_TAG = "hebbrobust.metric_names"  # JSON: MLflow metric name -> trial metric name
REASON_TAG = "hebbrobust.failure_reason"
NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI (Markdown)
KIND_TAG = "mlflow.experimentKind"  # MLflow 3 opens an experiment on the page of its kind
TRAINING_KIND = "custom_model_development"  # training runs (not the GenAI overview)
GATED_TAG = "hebbrobust.gated"  # on a FINISHED trial run stopped by rule.min_converged: why (Optuna: PRUNED)
NODE_TAG = "hebbrobust.node_id"  # the Ray node a trial attempt ran on
HOST_TAG = "hebbrobust.host"  # hostname:pid of the worker process
STOPPED_TAG = "hebbrobust.stopped_at_rung"  # a trial the scheduler (MOASHA) stopped: the rung index
NONE_TAG_PREFIX = "hebbrobust.none."
TEXT_TAG_PREFIX = "hebbrobust.text."

_SCHEMES = {"http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc"}
_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-.:/ ]")
_MAX_PARAM = 6000
_MAX_TAG = 8000


def mlflow_name(name: str) -> str:
    """The MLflow-safe form of a metric name: '@' -> '_eps', other rejected characters -> '_'."""
    return _BAD_CHARS.sub("_", name.replace("@", "_eps"))


# --------------------------------------------------------------------------- where


def resolve_tracking_uri(uri: str | None = None, *, cwd: Path | None = None) -> str:
    """An absolute tracking URI: `uri`, else $MLFLOW_TRACKING_URI, else MLflow's own default
    (`sqlite:///<cwd>/mlflow.db`, artifacts in `<cwd>/mlruns`). Relative sqlite/file paths and bare
    paths (`x.db` -> sqlite, a directory -> file store) are made absolute against `cwd`."""
    base = Path(cwd) if cwd is not None else Path.cwd()
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"

    def absolute(p: str) -> Path:
        path = Path(p).expanduser()
        return (path if path.is_absolute() else base / path).resolve()

    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///") :]
        if rest.startswith("/"):  # already sqlite:////abs
            return uri
        return "sqlite:///" + str(absolute(rest))
    if uri.startswith("sqlite:"):
        raise HebbrobustError(f"tracking URI {uri!r}: a sqlite URI looks like sqlite:///path/to/mlflow.db")
    if uri.startswith("file:"):
        rest = uri[len("file:") :]
        rest = rest[2:] if rest.startswith("//") else rest
        return absolute(rest).as_uri()
    if "://" in uri or uri in ("databricks", "databricks-uc"):
        scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
        if scheme not in _SCHEMES:
            raise HebbrobustError(
                f"tracking URI {uri!r}: unknown scheme {scheme!r}; use sqlite:///path/mlflow.db, "
                "http(s)://host:port of an `mlflow server`, or a database URI (postgresql://, mysql://)"
            )
        return uri
    path = absolute(uri)
    return "sqlite:///" + str(path) if path.suffix == ".db" else path.as_uri()


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: `mlruns/` beside a sqlite file (absolute);
    None (the server's or store's choice) otherwise."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///") :]).parent / "mlruns")
    return None


@dataclass(frozen=True)
class TrackingTarget:
    """An MLflow store and experiment; small and picklable, handed to every trial."""

    uri: str
    experiment: str
    experiment_id: str

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri)


def _fail(what: str, uri: str, e: Exception) -> HebbrobustError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
    return HebbrobustError(f"MLflow at {uri}: {what}: {first}")


def experiment_url(server: str, experiment_id: str, sort_metric: str | None = None) -> str:
    """The MLflow UI's table of an experiment's trial runs at `server` (http://host:port): in model
    training mode (MLflow 3.x keeps the GenAI/training mode in the URL or the browser; a new browser
    opens on the GenAI overview), the trials flat (not folded under the study's run), best
    `sort_metric` first."""
    query = {"workflowType": "machine_learning", "searchFilter": f"tags.`{ROLE_TAG}` = 'trial'"}
    if sort_metric:
        query |= {"orderByKey": f"metrics.`{mlflow_name(sort_metric)}`", "orderByAsc": "false"}
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query, quote_via=quote)}"


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The MLflow UI page of a run when the tracking URI is an MLflow server, else None."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return None


def ensure_experiment(uri: str, name: str) -> TrackingTarget:
    """The experiment `name` in the store at `uri` (an absolute URI), created (or restored from
    MLflow's trash) when needed."""
    client = MlflowClient(tracking_uri=uri)
    try:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            exp_id = client.create_experiment(name, artifact_location=artifact_root(uri))
        else:
            exp_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp_id)
        client.set_experiment_tag(exp_id, KIND_TAG, TRAINING_KIND)
    except MlflowException as e:
        raise _fail(f"cannot open experiment {name!r}", uri, e) from None
    return TrackingTarget(uri, name, str(exp_id))


def find_experiment(uri: str, name: str) -> TrackingTarget | None:
    """The existing experiment `name`, or None."""
    try:
        exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(name)
    except MlflowException as e:
        raise _fail(f"cannot read experiment {name!r}", uri, e) from None
    return None if exp is None else TrackingTarget(uri, name, str(exp.experiment_id))


# --------------------------------------------------------------------------- values


def _params(values: Mapping[str, Any]) -> list[Param]:
    out = []
    for key, value in values.items():
        text = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
        out.append(Param(key, text[:_MAX_PARAM]))
    return out


def _tag(key: str, value: Any) -> RunTag:
    return RunTag(key, str(value)[:_MAX_TAG])


def _none_reason(metrics: Mapping[str, Any], name: str) -> str:
    """Why `name` is None: its own `<name>_reason`, else a `<prefix>_..._reason` of the same family
    (`fgsm_eps50` -> `fgsm_R_reason`), else that the trial gave none."""
    own = metrics.get(f"{name}_reason")
    if isinstance(own, str) and own:
        return own
    family = name.split("_")[0] + "_"
    for key, value in metrics.items():
        if key.startswith(family) and key.endswith("_reason") and isinstance(value, str) and value:
            return f"{key}: {value}"
    return "the trial reported None"


def split_metrics(
    metrics: Mapping[str, Any], *, prefix: str = "", step: int = 0, timestamp: int | None = None
) -> tuple[list[Metric], list[RunTag], dict[str, str]]:
    """Trial metrics as (MLflow metrics, tags for values MLflow cannot hold, renamed names).

    Numbers and bools become metrics; None / NaN / inf become `hebbrobust.none.<name>` tags saying
    why; strings become `hebbrobust.text.<name>` tags; lists and dicts are left to metrics.json."""
    ts = timestamp if timestamp is not None else int(time.time() * 1000)
    out: list[Metric] = []
    tags: list[RunTag] = []
    renamed: dict[str, str] = {}
    for raw, value in metrics.items():
        name = prefix + raw
        safe = mlflow_name(name)
        if safe != name:
            renamed[safe] = name
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, int | float):
            if math.isfinite(value):
                out.append(Metric(safe, float(value), ts, step))
            else:
                tags.append(_tag(NONE_TAG_PREFIX + safe, f"not finite: {value}"))
        elif value is None and not raw.endswith("_reason"):  # a None reason: nothing to explain
            tags.append(_tag(NONE_TAG_PREFIX + safe, _none_reason(metrics, raw)))
        elif isinstance(value, str):
            tags.append(_tag(TEXT_TAG_PREFIX + safe, value))
    return out, tags, renamed


# --------------------------------------------------------------------------- runs


def start_parent_run(
    target: TrackingTarget,
    study: str,
    *,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    artifacts: Mapping[str, Path] | None = None,
    description: str = "",
) -> str:
    """A new parent run for one `study run` (`description`: its Markdown note in the UI); returns its id."""
    client = target.client()
    try:
        run = client.create_run(
            target.experiment_id,
            run_name=f"{study} study",
            tags={STUDY_TAG: study, ROLE_TAG: "study", **({NOTE_TAG: description} if description else {}), **tags},
        )
        run_id = run.info.run_id
        client.log_batch(run_id, params=_params(params))
        for path in (artifacts or {}).values():
            client.log_artifact(run_id, str(path))
    except MlflowException as e:
        raise _fail("cannot start the study's parent run", target.uri, e) from None
    return run_id


def log_run(
    target: TrackingTarget,
    name: str,
    *,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    tags: Mapping[str, str],
    files: Mapping[str, Path],
) -> str:
    """A finished run of its own (e.g. a study comparison) with params, metrics, tags and files; its id."""
    client = target.client()
    out, more_tags, _ = split_metrics(metrics)
    try:
        run = client.create_run(target.experiment_id, run_name=name, tags=dict(tags))
        client.log_batch(run.info.run_id, metrics=out, params=_params(params), tags=more_tags)
        for path in files.values():
            client.log_artifact(run.info.run_id, str(path))
        client.set_terminated(run.info.run_id, status="FINISHED")
    except MlflowException as e:
        raise _fail(f"cannot log run {name!r}", target.uri, e) from None
    return str(run.info.run_id)


def find_parent_runs(target: TrackingTarget, study: str) -> list[dict[str, Any]]:
    """The parent runs of study `study` in the experiment, newest first: run_id, start_time (ms),
    num_trials (as logged) and the study directory it was started in."""
    try:
        runs = target.client().search_runs(
            [target.experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = 'study' and tags.`{STUDY_TAG}` = '{study}'",
            order_by=["attributes.start_time DESC"],
            max_results=100,
        )
    except MlflowException as e:
        raise _fail(f"cannot read the parent runs of study {study!r}", target.uri, e) from None
    return [
        {"run_id": r.info.run_id, "start_time": r.info.start_time, "num_trials": r.data.params.get("num_trials"),
         "study_dir": r.data.tags.get("hebbrobust.study_dir")}
        for r in runs
    ]  # fmt: skip


def set_run_status(target: TrackingTarget, run_id: str, status: str) -> None:
    """RUNNING (a resumed study) or a terminal status: FINISHED, FAILED, KILLED."""
    client = target.client()
    try:
        if status == "RUNNING":
            client.update_run(run_id, status="RUNNING")
        else:
            client.set_terminated(run_id, status=status)
    except MlflowException as e:
        raise _fail(f"cannot mark run {run_id} {status}", target.uri, e) from None


def close_stale_runs(
    target: TrackingTarget,
    parent_run_id: str,
    *,
    status: str,
    reason: str,
    trial_id: str | None = None,
    started_before_ms: int | None = None,
    tags: Mapping[str, str] | None = None,
) -> list[str]:
    """Closes the children of `parent_run_id` still marked RUNNING (their driver or worker is gone:
    before a resume, after a worker died, after the scheduler stopped the trial) with `status`, the
    reason tag and `tags`; only trial `trial_id`'s runs, and only runs started before
    `started_before_ms` (epoch ms), when given. Returns their ids."""
    client = target.client()
    closed = []
    where = f"tags.`{PARENT_TAG}` = '{parent_run_id}' and attributes.status = 'RUNNING'"
    if trial_id is not None:
        where += f" and tags.`{TRIAL_ID_TAG}` = '{trial_id}'"
    if started_before_ms is not None:
        where += f" and attributes.start_time < {int(started_before_ms)}"
    try:
        for run in client.search_runs([target.experiment_id], filter_string=where, max_results=10_000):
            client.set_tag(run.info.run_id, REASON_TAG, reason)
            for key, value in (tags or {}).items():
                client.set_tag(run.info.run_id, key, value)
            client.set_terminated(run.info.run_id, status=status)
            closed.append(run.info.run_id)
    except MlflowException as e:
        raise _fail("cannot close stale trial runs", target.uri, e) from None
    return closed


def log_front(target: TrackingTarget, run_id: str, files: Mapping[str, Path], summary: Mapping[str, Any]) -> None:
    """The study's front files (front.csv, front.png, trials.csv) and summary numbers on the parent run."""
    client = target.client()
    metrics, tags, _ = split_metrics(summary)
    try:
        client.log_batch(run_id, metrics=metrics, tags=tags)
        for path in files.values():
            client.log_artifact(run_id, str(path))
    except MlflowException as e:
        raise _fail("cannot log the Pareto front", target.uri, e) from None


class TrialRun:
    """One child run, written from inside a Ray trial (any working directory, any process).

    `epoch()` buffers per-epoch values and writes them in batches (sqlite stays calm with many
    trials); `final()` logs the final metrics; `finish()` / `fail()` close the run."""

    FLUSH_EVERY_S = 5.0
    FLUSH_AT = 200

    def __init__(self, target: TrackingTarget, run_id: str) -> None:
        self.target, self.run_id = target, run_id
        self._client = target.client()
        self._pending: list[Metric] = []
        self._renamed: dict[str, str] = {}
        self._last_flush = time.monotonic()
        self.seen: set[tuple[str, int]] = set()  # (curve, step) pairs logged

    @classmethod
    def start(
        cls,
        target: TrackingTarget,
        *,
        parent_run_id: str,
        study: str,
        trial_id: str,
        name: str,
        params: Mapping[str, Any],
        searched: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
    ) -> TrialRun:
        client = target.client()
        run = client.create_run(
            target.experiment_id,
            run_name=name,
            tags={
                PARENT_TAG: parent_run_id,
                STUDY_TAG: study,
                ROLE_TAG: "trial",
                TRIAL_ID_TAG: trial_id,
                SEARCHED_TAG: json.dumps(dict(searched))[:_MAX_TAG],
                **(tags or {}),
            },
        )
        client.log_batch(run.info.run_id, params=_params(params))
        return cls(target, run.info.run_id)

    def epoch(self, key: str, step: int, value: float) -> None:
        """One per-epoch value of the curve `key` (e.g. `filters/unconverged_frac`)."""
        self.seen.add((key, int(step)))
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, int | float) or not math.isfinite(value):
            return
        safe = mlflow_name(key)
        if safe != key:
            self._renamed[safe] = key
        self._pending.append(Metric(safe, float(value), int(time.time() * 1000), int(step)))
        if len(self._pending) >= self.FLUSH_AT or time.monotonic() - self._last_flush > self.FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._client.log_batch(self.run_id, metrics=self._pending)
            self._pending = []
        self._last_flush = time.monotonic()

    def final(self, metrics: Mapping[str, Any], *, prefix: str = "") -> None:
        """Final metrics (step 0); None/NaN/text values become tags (see module doc)."""
        self.flush()
        out, tags, renamed = split_metrics(metrics, prefix=prefix)
        self._renamed.update(renamed)
        self._client.log_batch(self.run_id, metrics=out, tags=tags)

    def artifacts(self, files: Mapping[str, Path], subdir: str | None = None) -> None:
        for path in files.values():
            if Path(path).exists():
                self._client.log_artifact(self.run_id, str(path), artifact_path=subdir)

    def _close(self, status: str, tags: Mapping[str, str] | None = None) -> None:
        self.flush()
        all_tags = dict(tags or {})
        if self._renamed:
            all_tags[NAMES_TAG] = json.dumps(self._renamed)
        if all_tags:
            self._client.log_batch(self.run_id, tags=[_tag(k, v) for k, v in all_tags.items()])
        self._client.set_terminated(self.run_id, status=status)

    def finish(self, tags: Mapping[str, str] | None = None) -> None:
        self._close("FINISHED", tags)

    def stopped(self, rung: int, reason: str) -> None:
        """KILLED: the scheduler stopped the trial at `rung` (tag STOPPED_TAG); no traceback, it did not fail."""
        try:
            self.flush()
        except MlflowException:
            self._pending = []
        self._close("KILLED", {REASON_TAG: reason, STOPPED_TAG: str(rung)})

    def fail(self, reason: str, traceback_text: str | None = None, *, status: str = "FAILED") -> None:
        """FAILED (or KILLED), with the reason as a tag and the traceback as the artifact traceback.txt."""
        try:
            self.flush()
        except MlflowException:
            self._pending = []
        if traceback_text:
            self._client.log_text(self.run_id, traceback_text, "traceback.txt")
        self._close(status, {REASON_TAG: reason or "failed"})


# --------------------------------------------------------------------------- reading back


def _parse_names(tags: Mapping[str, str]) -> dict[str, str]:
    try:
        return dict(json.loads(tags.get(NAMES_TAG, "{}")))
    except (ValueError, TypeError):
        return {}


def _trial_row(run: Any) -> dict[str, Any]:
    """One child run as a row of `read_trials`."""
    tags = run.data.tags
    names = _parse_names(tags)
    row: dict[str, Any] = {
        "run_id": run.info.run_id,
        "trial_id": tags.get(TRIAL_ID_TAG),
        "run_name": run.info.run_name,
        "status": run.info.status,
        "reason": tags.get(REASON_TAG),
        "node_id": tags.get(NODE_TAG),
        "host": tags.get(HOST_TAG),
        "start_time": pd.to_datetime(run.info.start_time, unit="ms") if run.info.start_time else None,
        "end_time": pd.to_datetime(run.info.end_time, unit="ms") if run.info.end_time else None,
    }
    try:
        row.update(json.loads(tags.get(SEARCHED_TAG, "{}")))
    except ValueError:
        pass
    row.setdefault("model.kind", run.data.params.get("model.kind"))
    if GATED_TAG in tags:
        row[GATED_REASON] = tags[GATED_TAG]
    if tags.get(STOPPED_TAG, "").isdigit():  # the column exists once the scheduler stopped a trial
        row["stopped_at_rung"] = int(tags[STOPPED_TAG])
    for key, value in run.data.metrics.items():
        name = names.get(key, key)
        if "/" not in name:
            row[name] = value
    return row


def finished_trial_run(target: TrackingTarget, parent_run_id: str, trial_id: str) -> dict[str, Any] | None:
    """The FINISHED run of Tune trial `trial_id` in the study of `parent_run_id`, or None: {run_id,
    metrics (final ones, under the trial's own names), gated (the GATED_TAG reason, or None)}. A
    retried attempt asks first: its trial may have finished already, with only the result lost on
    the way to Tune (see study.trainable)."""
    where = (
        f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{TRIAL_ID_TAG}` = '{trial_id}' "
        "and attributes.status = 'FINISHED'"
    )
    try:
        runs = target.client().search_runs([target.experiment_id], filter_string=where, max_results=1)
    except MlflowException as e:
        raise _fail("cannot read the trial runs", target.uri, e) from None
    if not runs:
        return None
    names = _parse_names(runs[0].data.tags)
    metrics = {name: v for k, v in runs[0].data.metrics.items() if "/" not in (name := names.get(k, k))}
    return {"run_id": runs[0].info.run_id, "metrics": metrics, "gated": runs[0].data.tags.get(GATED_TAG)}


def read_trials(target: TrackingTarget, parent_run_id: str) -> pd.DataFrame:
    """The child runs of `parent_run_id`, one row each: run_id, trial_id, run_name, status, reason,
    start/end times, the searched params (dotted keys, their own types), `model.kind`, and every
    final metric under the trial's own name (curves and per-seed values, which hold '/', left out)."""
    client = target.client()
    rows: list[dict[str, Any]] = []
    token = None
    try:
        while True:
            page = client.search_runs(
                [target.experiment_id],
                filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                max_results=1000,
                page_token=token,
                order_by=["attributes.start_time ASC"],
            )
            rows += [_trial_row(run) for run in page]
            token = page.token
            if not token:
                break
    except MlflowException as e:
        raise _fail("cannot read the trial runs", target.uri, e) from None
    return pd.DataFrame(rows)


def log_to_run(
    target: TrackingTarget,
    run_id: str,
    metrics: Mapping[str, Any],
    files: Mapping[str, Path] = {},  # noqa: B006 - read only
    *,
    artifact_path: str | None = None,
) -> None:
    """Metrics (their MLflow names added to the run's name map, so `read_trials` reads them back under
    the trial's own names) and files (under `artifact_path`) on an existing run, finished or not."""
    client = target.client()
    out, tags, renamed = split_metrics(metrics)
    try:
        if renamed:
            names = {**_parse_names(client.get_run(run_id).data.tags), **renamed}
            tags.append(_tag(NAMES_TAG, json.dumps(names)))
        client.log_batch(run_id, metrics=out, tags=tags)
        for path in files.values():
            client.log_artifact(run_id, str(path), artifact_path=artifact_path)
    except MlflowException as e:
        raise _fail(f"cannot log to run {run_id}", target.uri, e) from None


def log_report(
    target: TrackingTarget, run_id: str, files: Mapping[str, Path], *, artifact_path: str = "report"
) -> str:
    """The report's `files` (relative name such as `filters/x.png` -> path) on the run `run_id` under
    `artifact_path`, keeping their folders; returns where MLflow keeps them."""
    client = target.client()
    try:
        for name, path in files.items():
            folder = str(Path(artifact_path) / Path(name).parent)
            client.log_artifact(run_id, str(path), artifact_path=folder)
        return f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    except MlflowException as e:
        raise _fail(f"cannot log the report to run {run_id}", target.uri, e) from None
