"""Reliability, scaling and security (issue 7), with real parts only: trials that raise or whose
worker is SIGKILLed, a study driver SIGKILLed and resumed, a table of malformed specs through the
CLI, a real two-node Ray cluster started with `ray start`, a real `mlflow server` on 127.0.0.1.

Every process a test starts gets its own process group (start_new_session) and is ended by that
group id (plus, by pid, anything that left the group) in a `finally`; never `ray stop`, which kills
every Ray process on the machine by name, other people's included.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from test_study import TINY_BASE
from typer.testing import CliRunner

from hebbrobust import tracking
from hebbrobust.cli import app
from hebbrobust.config import Objective, StudySpec, TrialConfig
from hebbrobust.study.record import CUT_OFF_ATTR, TUNE_TRIAL_ATTR
from hebbrobust.study.space import check_objectives, trial_metric_names

BIN = Path(sys.executable).parent
ENV = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
ENV.update(RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1")
# a trial that lasts a second or two on one core: long enough to be seen RUNNING and killed
SLOW_BASE = {
    **TINY_BASE,
    "rule": {**TINY_BASE["rule"], "epochs": 400},
    "backprop": {**TINY_BASE["backprop"], "epochs": 300},
}


# --------------------------------------------------------------------------- processes, by id


def _proc_table() -> dict[int, tuple[int, int, str, str]]:
    """pid -> (ppid, pgid, state, start time) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0], fields[19])
    return table


def _family(pid: int) -> dict[int, str]:
    """The live processes in `pid`'s process group or below it: pid -> start time."""
    table = _proc_table()
    found = {p for p, (_, pgid, state, _) in table.items() if pgid == pid and state != "Z"}
    todo = [pid, *found]
    while todo:
        parent = todo.pop()
        for p, (ppid, _, state, _) in table.items():
            if ppid == parent and p not in found and state != "Z":
                found.add(p)
                todo.append(p)
    return {p: table[p][3] for p in found}


def _alive(pids: dict[int, str]) -> dict[int, str]:
    table = _proc_table()
    return {p: t for p, t in pids.items() if p in table and table[p][2] != "Z" and table[p][3] == t}


def end_group(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """End `proc` (started with start_new_session=True) and everything it started: `sig` to its
    process group, then SIGKILL to the group and, by pid, to any descendant that left it."""
    family = _family(proc.pid)
    for signum in (sig, signal.SIGKILL):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass
        if signum == signal.SIGKILL:
            for pid in _alive(family):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        while _alive(family) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _alive(family):
            break
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    assert not _alive(family), f"processes left running: {_alive(family)}"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(what: str, check: Callable[[], Any], timeout: float, *procs: subprocess.Popen[Any]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{what}: {proc.args[:3]} exited with {proc.returncode} first")
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def hebbrobust(*args: str, cwd: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[Any]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [str(BIN / "hebbrobust"), *args], cwd=cwd, env=env or ENV, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def finish(proc: subprocess.Popen[Any], timeout: float, log: Path) -> str:
    """Waits for `proc` to exit 0 and returns its output; ends its process group either way."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        end_group(proc)
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    return text


# --------------------------------------------------------------------------- studies


def write_spec(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def study_runs(uri: str, experiment: str, *, polling: bool = False) -> list[Any]:
    """Every MLflow run of `experiment` (parents and children), oldest first; while polling a store
    that is being created or written, [] when it cannot be read yet."""
    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return []
        return list(client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000))
    except Exception:
        if polling:
            return []
        raise


def children(runs: list[Any]) -> list[Any]:
    return [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "trial"]


def statuses(runs: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in children(runs):
        out[r.info.status] = out.get(r.info.status, 0) + 1
    return out


# --------------------------------------------------------------------------- 1: failing trials stay local


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_raising_and_killed_trials_are_recorded_retried_and_the_study_goes_on(tmp_path: Path) -> None:
    """init_std 1e30 raises (the rule diverges) twice; the worker of init_std 1.0 is SIGKILLed once
    (the retry finishes); the worker of init_std 0.5 is SIGKILLed on both attempts (it fails)."""
    from hebbrobust.study import run_study

    spec = StudySpec.model_validate(
        {
            "name": "faults",
            "base": {**SLOW_BASE, "attack": {**TINY_BASE["attack"], "enabled": False}},
            "space": {"rule.init_std": [0.5, 1.0, 1.0e30]},
            "objectives": [{"metric": "clean_acc"}],
            "sampler": {"name": "grid", "seed": 0},
            "num_trials": 3,
            "max_concurrent": 2,
            "max_failures": 1,
            "filter_cache": False,
        }
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    kills_left = {0.5: 2, 1.0: 1}
    killed: list[tuple[float, str]] = []
    done = threading.Event()

    def killer() -> None:  # SIGKILLs the worker process of a running trial, found by its MLflow tags
        seen: set[str] = set()
        while not done.is_set() and any(kills_left.values()):
            runs = [r for r in children(study_runs(uri, "faults", polling=True)) if r.info.status == "RUNNING"]
            for run in runs:
                std = json.loads(run.data.tags[tracking.SEARCHED_TAG])["rule.init_std"]
                if run.info.run_id in seen or kills_left.get(std, 0) == 0:
                    continue
                host, pid = run.data.tags[tracking.HOST_TAG].rsplit(":", 1)
                assert host == socket.gethostname()
                os.kill(int(pid), signal.SIGKILL)
                seen.add(run.info.run_id)
                kills_left[std] -= 1
                killed.append((std, run.info.run_id))
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    events: list[Any] = []
    try:
        outcome = run_study(spec, storage=tmp_path / "studies", tracking_uri=uri, on_progress=events.append)
    finally:
        done.set()
        thread.join(timeout=10)
    assert kills_left == {0.5: 0, 1.0: 0}, kills_left

    # Optuna: one COMPLETE, two FAIL; the progress counted the same
    states = sorted(t.state.name for t in optuna.load_study(study_name="faults", storage=outcome.optuna_storage).trials)
    assert states == ["COMPLETE", "FAIL", "FAIL"]
    assert (events[-1].done, events[-1].failed, events[-1].running) == (1, 2, 0)
    assert outcome.counts == {"total": 3, "finished": 1, "gated": 0, "failed": 2, "stopped": 0, "unfinished": 0,
                              "runs": 6}  # fmt: skip

    # MLflow: one run per attempt, none left RUNNING, exactly one FINISHED (the retry of init_std 1.0)
    runs = children(study_runs(uri, "faults"))
    by_std: dict[float, list[Any]] = {}
    for run in runs:
        by_std.setdefault(json.loads(run.data.tags[tracking.SEARCHED_TAG])["rule.init_std"], []).append(run)
    assert {k: [r.info.status for r in v] for k, v in by_std.items()} == {
        0.5: ["FAILED", "FAILED"],
        1.0: ["FAILED", "FINISHED"],
        1.0e30: ["FAILED", "FAILED"],
    }
    client = MlflowClient(tracking_uri=uri)
    for run in by_std[1.0e30]:  # raised inside the trial (TrialError): its own reason and traceback
        assert "diverged" in run.data.tags[tracking.REASON_TAG]
        assert "traceback.txt" in {a.path for a in client.list_artifacts(run.info.run_id)}
        text = Path(client.download_artifacts(run.info.run_id, "traceback.txt", str(tmp_path))).read_text()
        assert "Traceback" in text and "TrialError" in text
    killed_ids = {run_id for _, run_id in killed}
    for run in by_std[0.5] + by_std[1.0][:1]:  # SIGKILLed: closed by the driver with Tune's error
        assert run.info.run_id in killed_ids
        assert "worker ended without closing its run" in run.data.tags[tracking.REASON_TAG]
    assert "retried" in by_std[1.0][0].data.tags[tracking.REASON_TAG]
    assert len({r.data.tags[tracking.TRIAL_ID_TAG] for r in by_std[1.0]}) == 1  # one trial, two attempts
    assert outcome.front["rule.init_std"].tolist() == [1.0]


def _node_memory() -> tuple[int, int]:
    """(total, used) bytes of this machine, as /proc/meminfo counts them (used = total - available)."""
    info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()}
    return info["MemTotal"], info["MemTotal"] - info["MemAvailable"]


def _running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (a SIGKILLed worker stays one until reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_worker_killed_by_rays_memory_monitor_fails_its_trial_not_the_study(tmp_path: Path) -> None:
    """Ray's memory monitor, started here with its threshold 2 GiB above this machine's use, kills the
    running trial's worker when this process takes up to 3.5 GiB more (as another program on a shared
    machine would). Before the fix Tune raised RuntimeError("Caught unexpected exception: ...") in
    the driver and the study ended; now the attempt fails with one line and the retry finishes."""
    import numpy as np
    import ray

    from hebbrobust.study import run_study

    if ray.is_initialized():
        ray.shutdown()
    total, used = _node_memory()
    ray.init(
        address="local", num_cpus=2, object_store_memory=100 * 1024**2, include_dashboard=False,
        _system_config={"memory_usage_threshold": (used + 2 * 2**30) / total, "memory_monitor_refresh_ms": 100},
    )  # fmt: skip
    spec = StudySpec.model_validate(
        {
            "name": "oom",
            "base": {**SLOW_BASE, "rule": {**SLOW_BASE["rule"], "epochs": 1500},
                     "attack": {**TINY_BASE["attack"], "enabled": False}},
            "space": {"rule.init_std": [1.0]},
            "objectives": [{"metric": "clean_acc"}],
            "sampler": {"name": "grid", "seed": 0},
            "num_trials": 1,
            "max_concurrent": 1,
            "max_failures": 1,
            "filter_cache": False,
        }
    )  # fmt: skip
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done, hogged = threading.Event(), threading.Event()

    def hog() -> None:  # takes 3.5 GiB while the first attempt runs, gives it back once its worker is gone
        pid = None
        while not done.is_set() and pid is None:
            running = [r for r in children(study_runs(uri, "oom", polling=True)) if r.info.status == "RUNNING"]
            pid = int(running[0].data.tags[tracking.HOST_TAG].rsplit(":", 1)[1]) if running else None
            time.sleep(0.05)
        if pid is None:
            return
        blocks = []  # 64 MiB at a time, up to 3.5 GiB, given back as soon as the worker is gone
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline and _running(pid):
            if len(blocks) < 56:
                blocks.append(np.ones(2**23))
            else:
                time.sleep(0.01)
        hogged.set()
        blocks.clear()

    thread = threading.Thread(target=hog, daemon=True)
    thread.start()
    try:
        outcome = run_study(spec, storage=tmp_path / "studies", tracking_uri=uri)
    finally:
        done.set()
        thread.join(timeout=30)
        ray.shutdown()
    assert hogged.is_set()
    runs = children(study_runs(uri, "oom"))
    assert [r.info.status for r in runs] == ["FAILED", "FINISHED"], [r.data.tags.get(tracking.REASON_TAG) for r in runs]
    reason = runs[0].data.tags[tracking.REASON_TAG]
    assert "OutOfMemoryError" in reason and "running low on memory" in reason and "retried" in reason, reason
    assert "\n" not in reason
    assert outcome.counts["finished"] == 1 and outcome.counts["failed"] == 0
    states = [t.state.name for t in optuna.load_study(study_name="oom", storage=outcome.optuna_storage).trials]
    assert states == ["COMPLETE"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_while_every_trial_runs_prints_one_line_and_the_study_resumes(tmp_path: Path) -> None:
    """SIGINT to the driver's process group (what Ctrl+C in a terminal sends) while both trials of a
    2-trial study run. Before: KeyError 'clean_acc' (fixed by fecf8d7), then: Tune's handler ended
    fit() normally with both trials TERMINATED, so the study counted them failed (FAILED runs, parent
    FINISHED: lost) and printed Tune's "Resume experiment with: Tuner.restore". Now: one line, exit
    130, runs cut off, and `study resume` finishes the study."""
    spec = write_spec(
        tmp_path / "int.yaml",
        {
            "name": "int",
            "base": {**TINY_BASE, "rule": {**TINY_BASE["rule"], "epochs": 1500},
                     "backprop": {**TINY_BASE["backprop"], "epochs": 1000}},
            "space": {"model.kind": ["local", "backprop"]},
            "objectives": [{"metric": "clean_acc", "mode": "max"}, {"metric": "pgd_acc@2", "mode": "max"}],
            "sampler": {"name": "grid"},
            "num_trials": 2,
            "max_concurrent": 2,
        },
    )  # fmt: skip
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    log = tmp_path / "run.log"
    driver = hebbrobust("study", "run", str(spec), "--storage", "studies", "--tracking-uri", uri, cwd=tmp_path, log=log)
    try:
        wait_for("both trials running", lambda: statuses(study_runs(uri, "int", polling=True)).get("RUNNING", 0) == 2,
                 300, driver)  # fmt: skip
        os.killpg(driver.pid, signal.SIGINT)
        driver.wait(timeout=120)
    finally:
        end_group(driver)
    text = log.read_text(errors="replace")
    assert driver.returncode == 130, text[-3000:]
    study_dir = tmp_path / "studies" / "int"
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[-1] == f"interrupted: continue with `hebbrobust study resume {study_dir}`", text[-3000:]
    for noise in ("Traceback", "KeyError", "Tuner.restore", "Pareto front"):
        assert noise not in text, noise
    runs = study_runs(uri, "int")
    parent = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) != "trial"]
    assert [r.info.status for r in parent] == ["KILLED"]
    assert "RUNNING" not in statuses(runs) and "FAILED" not in statuses(runs), statuses(runs)

    resume = hebbrobust("study", "resume", str(study_dir), cwd=tmp_path, log=tmp_path / "resume.log")
    finish(resume, 480, tmp_path / "resume.log")
    trials = optuna.load_study(study_name="int", storage=f"sqlite:///{study_dir}/optuna.db").trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["model.kind"] for t in complete) == ["backprop", "local"]
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in trials)
    finished = [r for r in children(study_runs(uri, "int")) if r.info.status == "FINISHED"]
    assert len(finished) == 2 and len({r.data.tags[tracking.TRIAL_ID_TAG] for r in finished}) == 2


# --------------------------------------------------------------------------- 2: kill the driver, resume


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_the_driver_mid_study_then_resume_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    started = time.monotonic()
    spec = write_spec(
        tmp_path / "kill.yaml",
        {
            "name": "kill",
            "base": SLOW_BASE,
            "space": {"model.kind": ["local", "backprop"], "rule.p": {"type": "int", "low": 2, "high": 4}},
            "objectives": [{"metric": "clean_acc", "mode": "max"}, {"metric": "pgd_acc@2", "mode": "max"}],
            "sampler": {"name": "random", "seed": 0},
            "num_trials": 6,
            "max_concurrent": 2,
        },
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    log = tmp_path / "run.log"
    driver = hebbrobust("study", "run", str(spec), "--storage", "studies", "--tracking-uri", uri, cwd=tmp_path, log=log)
    try:
        # two running once one has finished: the newer of them has just started, so it is still running when
        # the kill lands (with one running, it could finish between this poll and the kill)
        wait_for(
            "a finished and two running trials",
            lambda: (s := statuses(study_runs(uri, "kill", polling=True))).get("FINISHED", 0) >= 1
            and s.get("RUNNING", 0) >= 2,
            300,
            driver,
        )
    finally:
        end_group(driver, sig=signal.SIGKILL)  # the driver, its local Ray and the trial workers
    killed_at = time.monotonic() - started

    before = children(study_runs(uri, "kill"))
    finished_before = {r.info.run_id for r in before if r.info.status == "FINISHED"}
    running_before = {r.info.run_id for r in before if r.info.status == "RUNNING"}
    assert finished_before and running_before
    study_dir = tmp_path / "studies" / "kill"
    # Ray Tune's own state is not needed: truncate tuner.pkl (ray issue 58179), drop the experiment state
    tune_dir = study_dir / "tune"
    if (tune_dir / "tuner.pkl").exists():
        data = (tune_dir / "tuner.pkl").read_bytes()
        (tune_dir / "tuner.pkl").write_bytes(data[: len(data) // 2])
    for state in tune_dir.glob("experiment_state-*.json"):
        state.unlink()

    log2 = tmp_path / "resume.log"
    text = finish(hebbrobust("study", "resume", str(study_dir), cwd=tmp_path, log=log2), 400, log2)
    assert "resumed:" in text and "Traceback" not in text

    study = optuna.load_study(study_name="kill", storage=f"sqlite:///{study_dir}/optuna.db")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    others = [t for t in study.trials if t.state.name != "COMPLETE"]
    assert len(complete) == 6
    assert all(t.state.name == "FAIL" and CUT_OFF_ATTR in t.user_attrs for t in others), others

    after = children(study_runs(uri, "kill"))
    assert statuses(study_runs(uri, "kill")).get("RUNNING", 0) == 0
    finished = [r for r in after if r.info.status == "FINISHED"]
    trial_ids = [r.data.tags[tracking.TRIAL_ID_TAG] for r in finished]
    assert len(finished) == 6 and len(set(trial_ids)) == 6  # one FINISHED run per trial, no duplicate
    assert finished_before <= {r.info.run_id for r in finished}  # nothing finished before the kill was lost
    killed = {r.info.run_id for r in after if r.info.status == "KILLED"}
    assert killed == running_before  # the runs the kill left RUNNING, closed KILLED, not counted
    assert all("cut off" in r.data.tags[tracking.REASON_TAG] for r in after if r.info.run_id in killed)
    # Optuna and MLflow agree trial by trial, values included
    by_trial = {t.user_attrs[TUNE_TRIAL_ATTR]: t for t in complete}
    assert set(by_trial) == set(trial_ids)
    for run in finished:
        values = by_trial[run.data.tags[tracking.TRIAL_ID_TAG]].values
        assert values == pytest.approx([run.data.metrics["clean_acc"], run.data.metrics["pgd_acc_eps2"]])
    parent = [r for r in study_runs(uri, "kill") if r.data.tags.get(tracking.ROLE_TAG) == "study"]
    assert [r.info.status for r in parent] == ["FINISHED"]
    assert len(json.loads((study_dir / "study.json").read_text())["tune_sessions"]) == 2
    print(f"\nkill-and-resume: killed at {killed_at:.0f} s, whole test {time.monotonic() - started:.0f} s")


def test_a_retried_attempt_of_a_finished_trial_reports_its_run_instead_of_training_again(tmp_path: Path) -> None:
    """The full soak's one double: a worker SIGKILLed after its trial closed its run FINISHED but
    before Tune had the result; Tune retried the trial and a second FINISHED run appeared. A retried
    attempt now finds the first run (real MLflow store) and reports its values (metric names with
    '@' read back under the trial's own names); other trials' runs and unfinished attempts do not count."""
    from hebbrobust.metrics import GATED
    from hebbrobust.study.trainable import finished_report

    target = tracking.ensure_experiment(f"sqlite:///{tmp_path}/mlflow.db", "retry")
    parent = tracking.start_parent_run(target, "retry", params={}, tags={})
    other = tracking.start_parent_run(target, "retry", params={}, tags={})

    def attempt(trial_id: str, under: str = parent) -> Any:
        return tracking.TrialRun.start(target, parent_run_id=under, study="retry", trial_id=trial_id, name=trial_id,
                                       params={}, searched={"rule.p": 3})  # fmt: skip

    attempt("done").fail("the trial's worker ended without closing its run (...)")
    run = attempt("done")
    run.final({"clean_acc": 0.9, "pgd_acc@2": 0.5, "pgd_R_reason": "no fit"})
    run.finish()
    attempt("killed").fail("the trial's worker ended without closing its run (...)")
    attempt("running")
    in_other = attempt("elsewhere", other)
    in_other.final({"clean_acc": 0.1})
    in_other.finish()
    gated = attempt("gated")
    gated.final({"unconverged_frac": 0.9})
    gated.finish(tags={tracking.GATED_TAG: "unconverged_frac 0.9 > 0.5"})

    done = tracking.finished_trial_run(target, parent, "done")
    assert done is not None and done["run_id"] == run.run_id
    objectives = [("clean_acc", "max"), ("pgd_acc@2", "max")]
    report = finished_report(done, objectives, tmp_path / "trials" / "done")
    assert {k: report[k] for k in ("clean_acc", "pgd_acc@2", "mlflow_run_id")} == {
        "clean_acc": pytest.approx(0.9), "pgd_acc@2": pytest.approx(0.5), "mlflow_run_id": run.run_id}
    assert GATED not in report
    for trial_id in ("killed", "running", "elsewhere", "never"):
        assert tracking.finished_trial_run(target, parent, trial_id) is None, trial_id
    gated_report = finished_report(tracking.finished_trial_run(target, parent, "gated"), objectives, tmp_path)
    assert gated_report[GATED] == 1 and math.isnan(gated_report["clean_acc"])


def test_reconcile_recovers_untold_trials_cuts_off_unfinished_ones_and_is_idempotent(tmp_path: Path) -> None:
    """The three states a SIGKILL can leave a trial in, built in real Optuna and MLflow stores
    (no Ray): finished and told; finished in MLflow but never told to Optuna (the driver died in
    between); running. Plus one that really failed (it counts; it is not run again)."""
    from optuna.trial import TrialState

    from hebbrobust.study.record import RERUN_ATTR
    from hebbrobust.study.resume import reconcile

    spec = StudySpec.model_validate({**GOOD, "objectives": [{"metric": "clean_acc"}, {"metric": "pgd_acc@2"}]})
    target = tracking.ensure_experiment(f"sqlite:///{tmp_path}/mlflow.db", "bad")
    parent = tracking.start_parent_run(target, "bad", params={}, tags={})
    meta = {"optuna_storage": f"sqlite:///{tmp_path}/optuna.db", "parent_run_id": parent, "num_trials": 6,
            "tracking_uri": target.uri, "experiment": "bad"}  # fmt: skip
    study = optuna.create_study(study_name="bad", storage=meta["optuna_storage"], directions=["maximize"] * 2)
    trials = {}
    for name, p in [("told", 2), ("untold", 3), ("running", 2), ("failed", 3)]:
        trial = study.ask({"rule.p": optuna.distributions.CategoricalDistribution([2, 3])})
        trial.set_user_attr(TUNE_TRIAL_ATTR, name)
        run = tracking.TrialRun.start(target, parent_run_id=parent, study="bad", trial_id=name, name=name,
                                      params={}, searched={"rule.p": p})  # fmt: skip
        trials[name] = (trial, run)
    for name in ("told", "untold"):
        trials[name][1].final({"clean_acc": 0.9, "pgd_acc@2": 0.5})
        trials[name][1].finish()
    study.tell(trials["told"][0], [0.9, 0.5])
    trials["failed"][1].fail("diverged", "Traceback ...")
    study.tell(trials["failed"][0], state=TrialState.FAIL)

    first, again = reconcile(spec, meta, target), reconcile(spec, meta, target)  # again: nothing more to do
    assert first.counts() == {"finished": 2, "failed": 1, "closed_runs": 1, "recovered": 1, "cut_off": 1,
                              "gated": 0, "stopped": 0, "disk_full": 0, "remaining": 3}  # fmt: skip
    assert again.counts() == {**first.counts(), "closed_runs": 0, "recovered": 0, "cut_off": 0}
    assert first.best == {"clean_acc": 0.9, "pgd_acc@2": 0.5}
    by_name = {t.user_attrs.get(TUNE_TRIAL_ATTR): t for t in study.get_trials()}
    assert by_name["untold"].state == TrialState.COMPLETE and by_name["untold"].values == [0.9, 0.5]
    assert by_name["running"].state == TrialState.FAIL and CUT_OFF_ATTR in by_name["running"].user_attrs
    rerun = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert [(t.system_attrs["fixed_params"], t.user_attrs[RERUN_ATTR]) for t in rerun] == [
        (by_name["running"].params, by_name["running"].number)
    ]  # run again with the same parameters
    runs = tracking.read_trials(target, parent).set_index("trial_id")
    assert runs["status"].to_dict() == {"told": "FINISHED", "untold": "FINISHED", "running": "KILLED",
                                        "failed": "FAILED"}  # fmt: skip
    assert runs.loc["running", "reason"].startswith("cut off")


def test_resume_of_a_broken_study_dir_is_one_line_with_a_way_on(tmp_path: Path) -> None:
    runner = CliRunner()
    spec = write_spec(tmp_path / "s" / "spec.yaml", {"name": "gone", "base": TINY_BASE, "space": {"rule.p": [2, 3]}})
    study_dir = tmp_path / "s"
    meta = {
        "name": "gone", "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "gone", "experiment_id": "1",
        "parent_run_id": "abc", "optuna_storage": f"sqlite:///{study_dir}/optuna.db", "num_trials": 2,
        "spec_source": str(spec),
    }  # fmt: skip
    cases = [
        (None, "neither a study directory nor a study under"),
        ("{trunc", "study.json: unreadable"),
        (json.dumps(meta), "optuna.db: the study's Optuna record is missing"),
    ]
    for content, needle in cases:
        if content is not None:
            (study_dir / "study.json").write_text(content)
        result = runner.invoke(app, ["study", "resume", str(study_dir)])
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 1 and len(lines) == 1 and needle in lines[0], result.output
    assert f"hebbrobust study repair {study_dir}" in lines[0] and "from the trial runs in MLflow" in lines[0]
    holder = subprocess.Popen(  # another driver still runs this study: a resume now would cut its trials off
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); "
         "lock.acquire(); print('held', flush=True); time.sleep(120)", str(study_dir / "driver.lock")],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = runner.invoke(app, ["study", "resume", str(study_dir)])
        assert result.exit_code == 1 and "study is being run by another driver" in result.stderr, result.output
    finally:
        end_group(holder, grace=2.0)
    (study_dir / "optuna.db").write_bytes(b"not a database at all" * 100)
    result = runner.invoke(app, ["study", "resume", str(study_dir)])
    assert result.exit_code == 1 and "Optuna record is damaged (DatabaseError" in result.stderr, result.output
    assert not (tmp_path / "mlflow.db").exists()


# --------------------------------------------------------------------------- 3: bad input


GOOD: dict[str, Any] = {
    "name": "bad",
    "base": TINY_BASE,
    "space": {"rule.p": [2, 3]},
    "objectives": [{"metric": "clean_acc"}, {"metric": "pgd_acc@2"}],
    "num_trials": 2,
}


def _with(path: str, value: Any) -> dict[str, Any]:
    """GOOD with the dotted `path` set to `value` (or removed when value is ...)."""
    doc = json.loads(json.dumps(GOOD))
    node = doc
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if value is ...:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
    return doc


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdef", "bcdefg", strict=True)
)

# (id, spec: a dict, YAML text, or a special "<dir>" / "<missing>" / "<binary>", extra args, needle, names_file)
BAD_STUDY: list[tuple[str, Any, list[str], str, bool]] = [
    ("unknown-top-key", {**GOOD, "nmae": "x"}, [], "nmae: unknown field; allowed: base,", True),
    ("unknown-nested-key", _with("base.rule.pwer", 2), [], "base.rule.pwer: unknown field; allowed:", True),
    ("unknown-dist-key", _with("space", {"rule.p": {"type": "int", "low": 2, "high": 4, "stepp": 1}}), [],
     "space.rule.p.stepp: unknown field", True),
    ("wrong-type-int", _with("base.model.filters", "many"), [], "base.model.filters: Input should be a valid integer",
     True),
    ("wrong-type-num-trials", _with("num_trials", "lots"), [], "num_trials: Input should be a valid integer", True),
    ("wrong-type-space", _with("space", "rule.p"), [], "space: Input should be a valid dictionary", True),
    ("wrong-type-objectives", _with("objectives", "clean_acc"), [], "objectives: Input should be a valid list", True),
    ("empty-space", _with("space", {}), [], "space: must name at least one setting", True),
    ("no-space", _with("space", ...), [], "space: must name at least one setting", True),
    ("low-gt-high-float", _with("space", {"rule.delta": {"type": "float", "low": 0.5, "high": 0.1}}), [],
     "space.rule.delta: low (0.5) must be <= high (0.1)", True),
    ("low-gt-high-int", _with("space", {"rule.k": {"type": "int", "low": 6, "high": 2}}), [],
     "space.rule.k: low (6) must be <= high (2)", True),
    ("negative-delta", _with("base.rule.delta", -0.1), [], "base.rule.delta: Input should be greater than", True),
    ("negative-delta-space", _with("space", {"rule.delta": {"type": "float", "low": -1, "high": 0.5}}), [],
     "space.rule.delta: value -1.0 gives an invalid trial", True),
    ("k-gt-filters", _with("base.rule.k", 70), [], "rule.k (70) must be <= model.filters (8)", True),
    ("k-gt-filters-space", _with("space", {"rule.k": {"type": "int", "low": 2, "high": 20}}), [],
     "space.rule.k: value 20 gives an invalid trial", True),
    ("missing-data-path", _with("base.data", {"name": "image_folder", "path": "/nonexistent/hebbrobust-data"}), [],
     "base.data.path: /nonexistent/hebbrobust-data/train is not a directory", True),
    ("no-data-path", _with("base.data", {"name": "image_folder"}), [], "base.data.path: image_folder needs data.path",
     True),
    ("missing-data-path-space", {**_with("base.data", {"name": "image_folder", "path": "/nonexistent/a"}),
                                 "space": {"data.path": ["/nonexistent/a", "/nonexistent/b"]}}, [],
     "space.data.path: /nonexistent/a/train is not a directory", True),
    ("unreadable-dir", "<dir>", [], "(file): cannot read: IsADirectoryError", True),
    ("unreadable-missing", "<missing>", [], "(file): cannot read: FileNotFoundError", True),
    ("unreadable-binary", "<binary>", [], "(file): cannot read: UnicodeDecodeError", True),
    ("non-yaml", "name: [x\nspace: {", [], "not valid YAML", True),
    ("yaml-list", "- 1\n- 2\n", [], "(root): must be a YAML mapping, got 'list'", True),
    ("yaml-python-tag", "!!python/object/apply:os.system ['touch pwned']\n", [], "not valid YAML: could not determine",
     True),
    ("yaml-billion-laughs", LAUGHS, [], "(file): more than 100000 values once YAML aliases are expanded", True),
    ("yaml-deep", "name: x\nspace: " + "[" * 5000 + "]" * 5000 + "\n", [], "(file): not a usable spec", True),
    ("huge-int", _with("num_trials", 10**400), [], "num_trials: Input should be less than or equal to 1000000, got 1",
     True),
    ("huge-int-digits", "name: x\nnum_trials: " + "9" * 5000 + "\n", [], "(file): not a usable spec: Exceeds the limit",
     True),
    ("huge-float-inf", _with("base.rule.p", float("inf")), [], "base.rule.p: Input should be", True),
    ("huge-filters", _with("base.model.filters", 10**12), [], "base.model.filters: Input should be less than", True),
    ("huge-max-failures", _with("max_failures", 10**9), [], "max_failures: Input should be less than or equal to 100",
     True),
    ("huge-sampler-seed", _with("sampler", {"name": "tpe", "seed": 2**40}), [], "sampler.seed: Input should be less",
     True),
    ("huge-cpu", _with("resources", {"cpu": 1e9}), [], "resources.cpu: Input should be less than", True),
    ("negative-gpu", _with("resources", {"gpu": -1}), [], "resources.gpu", True),
    ("unknown-sampler", _with("sampler", {"name": "cmaes"}), [], "sampler.name: Input should be 'tpe'", True),
    ("bad-sampler-option", _with("sampler", {"name": "tpe", "options": {"bogus": 1}}), [],
     "sampler.options: not accepted by the tpe sampler", True),
    ("grid-float-range", {**_with("sampler", {"name": "grid"}),
                          "space": {"rule.delta": {"type": "float", "low": 0.1, "high": 0.5}}}, [],
     "space.rule.delta: the grid sampler needs", True),
    ("log-low-zero", _with("space", {"rule.lr": {"type": "float", "low": 0, "high": 1, "log": True}}), [],
     "log scale needs low > 0", True),
    ("choices-repeat", _with("space", {"rule.p": [2, 2]}), [], "space.rule.p: choices must not repeat", True),
    ("choice-not-scalar", _with("space", {"model.kind": [["local"]]}), [], "space.model.kind", True),
    ("space-key-unknown", _with("space", {"rule.pp": [1, 2]}), [], "space.rule.pp: not a trial setting", True),
    ("objective-eps-not-in-grid", _with("objectives", [{"metric": "pgd_acc@3"}]), [],
     "objectives.0.metric: not a metric every trial of this study reports (attack.eps is [2.0]", True),
    ("objective-unknown", _with("objectives", [{"metric": "accuracy"}]), [], "objectives.0.metric: not a metric", True),
    ("objective-typo", _with("objectives", [{"metric": "clean_accc"}]), [], "did you mean clean_acc", True),
    ("objective-attack-off", {**GOOD, "base": {**TINY_BASE, "attack": {"enabled": False}}}, [],
     "objectives.1.metric: not a metric every trial of this study reports (attack.enabled is false", True),
    ("objective-twice", _with("objectives", [{"metric": "clean_acc"}, {"metric": "clean_acc"}]), [],
     "objectives.1.metric: listed twice", True),
    ("objective-mode", _with("objectives", [{"metric": "clean_acc", "mode": "maximize"}]), [],
     "objectives.0.mode: Input should be 'max' or 'min'", True),
    ("objectives-empty", _with("objectives", []), [], "objectives: List should have at least 1 item", True),
    ("num-trials-0", _with("num_trials", 0), [], "num_trials: Input should be greater than or equal to 1", True),
    ("num-trials-0-option", GOOD, ["--num-trials", "0"], "num_trials: Input should be greater than or equal", True),
    ("seeds-0", _with("seeds", 0), [], "seeds: Input should be greater than or equal to 1", True),
    ("bad-name", _with("name", "a b/c"), [], "name: String should match pattern", True),
    ("eps-zero", _with("base.attack.eps", [0]), [], "base.attack.eps: must be a non-empty list", True),
    ("set-no-equals", GOOD, ["--set", "rule.p"], "--set rule.p: must look like dotted.key=value", True),
    ("set-into-scalar", GOOD, ["--set", "name.x=1"], "--set name.x: name is not a mapping", True),
    ("set-wrong-type", GOOD, ["--set", "num_trials=many"], "num_trials: Input should be a valid integer", True),
    ("set-python-tag", GOOD, ["--set", "name=!!python/object/apply:os.system [touch pwned]"], "name: String should",
     True),
    ("address-format", GOOD, ["--address", "not an address"], "--address 'not an address': must be host:port", False),
    ("address-port", GOOD, ["--address", "10.0.0.1:99999"], "--address '10.0.0.1:99999': must be host:port", False),
    ("tracking-scheme", GOOD, ["--tracking-uri", "foo://bar"], "tracking URI 'foo://bar': unknown scheme 'foo'", False),
    ("tracking-sqlite", GOOD, ["--tracking-uri", "sqlite:rel.db"], "a sqlite URI looks like sqlite:///", False),
    ("storage-is-file", GOOD, ["--storage", "<file>"], "--storage: ", False),
]  # fmt: skip

BAD_TRIAL: list[tuple[str, Any, list[str], str, bool]] = [
    ("unknown-key", _with("base.rule.pwer", 2), [], "base.rule.pwer: unknown field; allowed:", True),
    ("wrong-type", _with("base.model.kind", "hebb"), [], "base.model.kind: Input should be 'local' or", True),
    ("negative-delta", GOOD, ["--set", "rule.delta=-1"], "base.rule.delta: Input should be greater than", True),
    ("k-gt-filters", GOOD, ["--set", "rule.k=99"], "rule.k (99) must be <= model.filters (8)", True),
    ("missing-data-path", GOOD, ["--set", "data.name=image_folder", "--set", "data.path=/nonexistent/x"],
     "base.data.path: /nonexistent/x/train is not a directory", True),
    ("huge", GOOD, ["--set", "model.filters=1000000000000"], "base.model.filters: Input should be less than", True),
    ("huge-seed", GOOD, ["--set", "seed=99999999999999999999"], "base.seed: Input should be less than", True),
    ("non-yaml", "base: {rule: [", [], "not valid YAML", True),
    ("python-tag", "base: !!python/object/apply:os.system ['touch pwned']\n", [], "not valid YAML", True),
    ("missing-file", "<missing>", [], "(file): cannot read: FileNotFoundError", True),
    ("set-no-equals", GOOD, ["--set", "rule.p"], "--set rule.p: must look like dotted.key=value", True),
]  # fmt: skip


def _materialize(tmp_path: Path, spec: Any, args: list[str]) -> tuple[Path, list[str]]:
    specs = tmp_path / "specs"
    specs.mkdir()
    path = specs / "bad.yaml"
    if spec == "<dir>":
        path.mkdir()
    elif spec == "<binary>":
        path.write_bytes(b"\xff\xfe\x00\x81 not text")
    elif spec == "<missing>":
        pass
    elif isinstance(spec, str):
        path.write_text(spec)
    else:
        write_spec(path, spec)
    if "<file>" in args:
        (specs / "afile").write_text("x")
        args = [str(specs / "afile") if a == "<file>" else a for a in args]
    return path, args


def _assert_one_line_nothing_written(result: Any, cwd: Path, path: Path, needle: str, names_file: bool) -> None:
    import ray

    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    line = lines[0]
    assert line.startswith("error: "), line
    if names_file:
        assert line.startswith(f"error: {path}: "), line
    assert needle in line, line
    assert sorted(p.name for p in cwd.iterdir()) == [], "written: " + ", ".join(p.name for p in cwd.iterdir())
    assert not (cwd.parent / "pwned").exists() and not (cwd / "pwned").exists()
    assert not ray.is_initialized()


@pytest.mark.parametrize(("spec", "args", "needle", "names_file"), [c[1:] for c in BAD_STUDY],
                         ids=[c[0] for c in BAD_STUDY])
def test_study_run_rejects_bad_input_in_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: Any, args: list[str], needle: str, names_file: bool
) -> None:
    path, args = _materialize(tmp_path, spec, args)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    result = CliRunner().invoke(app, ["study", "run", str(path), *args])
    _assert_one_line_nothing_written(result, cwd, path, needle, names_file)


@pytest.mark.parametrize(("spec", "args", "needle", "names_file"), [c[1:] for c in BAD_TRIAL],
                         ids=[c[0] for c in BAD_TRIAL])
def test_trial_run_rejects_bad_input_in_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: Any, args: list[str], needle: str, names_file: bool
) -> None:
    path, args = _materialize(tmp_path, spec, args)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(app, ["trial", "run", str(path), "--out", "out", *args])
    _assert_one_line_nothing_written(result, cwd, path, needle, names_file)


def test_the_bad_input_table_is_big_enough_and_loading_is_safe() -> None:
    assert len(BAD_STUDY) + len(BAD_TRIAL) >= 30 and len(BAD_STUDY) >= 30
    root = Path(__file__).resolve().parents[1]
    code = "\n".join(p.read_text() for d in ("hebbrobust", "scripts") for p in sorted((root / d).rglob("*.py")))
    assert "yaml.load(" not in code and "yaml.unsafe_load" not in code and "yaml.full_load" not in code
    loads = re.findall(r"torch\.load\((.*)\)", code)
    assert loads and all("weights_only=True" in call for call in loads), loads
    assert "pickle.load" not in code


def test_objective_names_match_what_a_real_trial_reports() -> None:
    """The objective check's metric names are the ones run_trial really reports (a contract:
    a metric renamed in evaluate.py or trial.py breaks this test, not a user's study)."""
    from hebbrobust.trial import run_trial

    for kind in ("local", "backprop"):
        config = TrialConfig.model_validate(
            {**TINY_BASE, "model": {**TINY_BASE["model"], "kind": kind}, "attack": {**TINY_BASE["attack"],
             "radius_images": 30, "min_radius_images": 5, "radius_pgd_max_steps": 30}}
        )  # fmt: skip
        result = run_trial(config)
        numeric = {
            k for k, v in result.metrics.items()
            if isinstance(v, int | float) or (v is None and not k.endswith("_reason"))
        }  # fmt: skip
        assert trial_metric_names(config, filter_cache=False) == numeric
    spec = StudySpec.model_validate({**GOOD, "space": {"model.kind": ["local", "backprop"]}, "seeds": 2,
                                     "objectives": [{"metric": "filter_seconds"}]})  # fmt: skip
    with pytest.raises(Exception, match="objectives.0.metric: not a metric every trial"):
        check_objectives(spec)  # backprop trials have no filters
    check_objectives(spec.model_copy(update={"objectives": [Objective(metric="clean_acc_std", mode="min")]}))


# --------------------------------------------------------------------------- 4: a two-node Ray cluster


@pytest.fixture
def ray_cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """A real two-node Ray cluster on this machine (`ray start --head` + `ray start --address`),
    token auth with a token of its own, each node in its own short temp dir (unix socket paths)
    and on free ports. Yields (address, env for its clients); ends both nodes by process group."""
    short = Path(tempfile.mkdtemp(prefix="hbr", dir="/tmp"))
    token = short / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    nodes: list[subprocess.Popen[Any]] = []

    def start(name: str, *extra: str) -> subprocess.Popen[Any]:
        ports = free_ports(6)
        with open(short / f"{name}.log", "wb") as out:
            node = subprocess.Popen(
                [str(BIN / "ray"), "start", "--block", "--num-cpus=1", "--object-store-memory=100000000",
                 "--disable-usage-stats", f"--temp-dir={short / name}", f"--node-manager-port={ports[0]}",
                 f"--object-manager-port={ports[1]}", f"--dashboard-agent-listen-port={ports[2]}",
                 f"--dashboard-agent-grpc-port={ports[3]}", f"--runtime-env-agent-port={ports[4]}",
                 f"--metrics-export-port={ports[5]}", *extra],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        nodes.append(node)
        wait_for(f"ray node {name}", lambda: "Ray runtime started" in (short / f"{name}.log").read_text(), 120, node)
        return node

    try:
        head_port, dashboard_port = free_ports(2)
        start("head", "--head", f"--port={head_port}",
              "--include-dashboard=false", f"--dashboard-port={dashboard_port}")
        found = re.search(r"ray start --address='([^']+)'", (short / "head.log").read_text())
        assert found, (short / "head.log").read_text()
        address = found.group(1)
        start("worker", f"--address={address}")
        yield address, env
    finally:
        for node in reversed(nodes):
            end_group(node, grace=3.0)  # `ray start --block` takes SIGTERM slowly; SIGKILL follows
        shutil.rmtree(short, ignore_errors=True)
    assert not Path("/tmp/ray/ray_current_cluster").exists() or address not in Path(
        "/tmp/ray/ray_current_cluster"
    ).read_text()  # this cluster never became other people's default


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_study_runs_on_both_nodes_of_a_two_node_cluster(
    tmp_path: Path, ray_cluster: tuple[str, dict[str, str]]
) -> None:
    started = time.monotonic()
    address, env = ray_cluster
    spec = write_spec(
        tmp_path / "cluster.yaml",
        {
            "name": "cluster",
            "base": SLOW_BASE,
            "space": {"model.kind": ["local", "backprop"], "rule.p": [2, 3]},
            "objectives": [{"metric": "clean_acc"}, {"metric": "pgd_acc@2"}],
            "sampler": {"name": "grid", "seed": 0},
            "num_trials": 4,
            "max_concurrent": 2,
            "filter_cache_dir": str(tmp_path / "shared" / "filter-cache"),
        },
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    log = tmp_path / "cluster.log"
    proc = hebbrobust("study", "run", str(spec), "--address", address, "--storage", "studies", "--tracking-uri", uri,
                      cwd=tmp_path, log=log, env=env)  # fmt: skip
    finish(proc, 300, log)
    runs = children(study_runs(uri, "cluster"))
    assert [r.info.status for r in runs] == ["FINISHED"] * 4
    nodes = {r.data.tags[tracking.NODE_TAG] for r in runs}
    assert len(nodes) == 2, nodes  # both nodes ran trials
    assert all(re.fullmatch(r"[0-9a-f]{56}", n) for n in nodes)
    assert (tmp_path / "shared" / "filter-cache").is_dir()
    print(f"\ntwo-node cluster study: {time.monotonic() - started:.0f} s (+ cluster start/stop in the fixture)")


# --------------------------------------------------------------------------- 5: an MLflow tracking server


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_study_records_into_a_real_mlflow_server_on_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hebbrobust.study import run_study

    started = time.monotonic()
    port = free_ports(1)[0]
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    log = server_dir / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{server_dir}/mlflow.db",
             "--default-artifact-root", str(server_dir / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"],
            cwd=server_dir, env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_for("mlflow server", healthy, 120, server)
        spec = StudySpec.model_validate(
            {
                "name": "served",
                "base": TINY_BASE,
                "space": {"model.kind": ["local", "backprop"]},
                "objectives": [{"metric": "clean_acc"}, {"metric": "pgd_acc@2"}],
                "sampler": {"name": "grid", "seed": 0},
                "num_trials": 2,
                "max_concurrent": 2,
            }
        )
        work = tmp_path / "work"
        work.mkdir()
        monkeypatch.chdir(work)
        outcome = run_study(spec, tracking_uri=url)  # in this process: the CLI path is the other tests'
        assert outcome.tracking_uri == url and outcome.counts["finished"] == 2

        runs = study_runs(url, "served")
        parent = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "study"]
        trials = children(runs)
        assert [r.info.status for r in parent] == ["FINISHED"]
        assert sorted(r.info.status for r in trials) == ["FINISHED", "FINISHED"]
        client = MlflowClient(tracking_uri=url)
        assert {"front.csv", "front.png", "spec.yaml"} <= {a.path for a in client.list_artifacts(parent[0].info.run_id)}
        for run in trials:
            assert run.data.tags[tracking.PARENT_TAG] == parent[0].info.run_id
            assert math.isfinite(run.data.metrics["clean_acc"]) and "pgd_acc_eps2" in run.data.metrics
            assert "filters.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
            assert client.get_metric_history(run.info.run_id, next(k for k in run.data.metrics if "/" in k))
        # everything went to the server: its store and artifact root, nothing beside the study
        assert list((server_dir / "artifacts").rglob("filters.png"))
        assert sorted(p.name for p in work.iterdir()) == ["hebbrobust-studies"]  # no mlflow.db, no mlruns
    finally:
        end_group(server, grace=3.0)
    print(f"\nmlflow server study: {time.monotonic() - started:.0f} s")
