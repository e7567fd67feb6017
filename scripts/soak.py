"""A chaos soak: a digits study while its trial workers and its driver are SIGKILLed, then checked.

    python scripts/soak.py [--short] [--trials 50] [--concurrent 2] [--out DIR] [--keep]

A side thread SIGKILLs the worker process of a random running trial every 15-40 s (found by the
MLflow tag hebbrobust.host = host:pid); the driver (`hebbrobust study run`, its local Ray and the
workers: its whole process group) is SIGKILLed twice, at about 1/3 and 2/3 of the trials, and each
time followed by `hebbrobust study resume`. `--short` (the suite's slow test): 8 trials, one driver
kill, a worker kill every 15-30 s. Pass: exactly num_trials COMPLETE/PRUNED Optuna trials, one
FINISHED MLflow child run per finished trial, no run left RUNNING, and a sample of finished trials
run again alone (same parameters and seed, in this process, no cache, no checkpoint) give the same
metrics. Prints the table; exit code 1 when any check fails. Every process it starts has its own
process group and is ended by that group (and by pid, any descendant that left it); never by name.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

BIN = Path(sys.executable).parent
BASE = {  # a trial of a few seconds on one core: long enough to be killed mid-way
    "data": {"name": "digits", "train_size": 300, "test_size": 120},
    "model": {"filters": 8, "kernel": 3, "pool": 2},
    "rule": {"epochs": 25, "batch_size": 100},
    "head": {"epochs": 15, "batch_size": 100},
    "backprop": {"epochs": 20, "batch_size": 100},
    "attack": {"eps": [2], "n_images": 60, "radius_images": 0, "pgd_steps": 5, "batch_size": 60},
}
OBJECTIVES = [("clean_acc", "clean_acc"), ("pgd_acc@2", "pgd_acc_eps2")]  # trial name, MLflow name


# --------------------------------------------------------------------------- processes, by id


def _table() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, pgid, state) from /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return out


def _family(pid: int) -> set[int]:
    table = _table()
    found = {p for p, (_, pgid, state) in table.items() if pgid == pid and state != "Z"}
    todo = [pid, *found]
    while todo:
        parent = todo.pop()
        for p, (ppid, _, state) in table.items():
            if ppid == parent and p not in found and state != "Z":
                found.add(p)
                todo.append(p)
    return found


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL `proc`'s process group and every descendant that left it; waits for them to go."""
    family = _family(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(p in _table() and _table()[p][2] != "Z" for p in family):
        time.sleep(0.2)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


# --------------------------------------------------------------------------- the study


def mlflow_children(uri: str, experiment: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    from hebbrobust import tracking

    if not Path(uri.removeprefix("sqlite:///")).is_file():  # the driver creates it; polling must not
        return []
    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return []
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.ROLE_TAG}` = 'trial'",
                                  max_results=5000)  # fmt: skip
        return list(runs)
    except Exception:  # noqa: BLE001 - the store is being created or written
        return []


class Chaos:
    """The side process: SIGKILLs a random running trial's worker every `low`-`high` seconds."""

    def __init__(self, uri: str, experiment: str, low: float, high: float, rng: random.Random) -> None:
        self.uri, self.experiment, self.low, self.high, self.rng = uri, experiment, low, high, rng
        self.kills = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        from hebbrobust import tracking

        while not self.stop.wait(self.rng.uniform(self.low, self.high)):
            running = [r for r in mlflow_children(self.uri, self.experiment) if r.info.status == "RUNNING"]
            self.rng.shuffle(running)
            for run in running:
                host, _, pid = run.data.tags.get(tracking.HOST_TAG, "").rpartition(":")
                if host != socket.gethostname() or not pid.isdigit():
                    continue
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if b"ray" not in cmdline:  # a reused pid, not a Ray worker
                        continue
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ProcessLookupError):
                    continue
                self.kills += 1
                break


def run(args: argparse.Namespace) -> int:
    import optuna
    import yaml

    from hebbrobust.config import load_study
    from hebbrobust.study.record import CUT_OFF_ATTR

    rng = random.Random(args.seed)
    work = Path(args.out or tempfile.mkdtemp(prefix="hebbrobust-soak-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    name = "soak"
    spec_doc = {
        "name": name, "base": BASE,
        "space": {"model.kind": ["local", "backprop"], "rule.p": {"type": "int", "low": 2, "high": 4},
                  "rule.delta": {"type": "float", "low": 0.1, "high": 0.4}, "head.lr": [0.01, 0.03]},
        "objectives": [{"metric": m, "mode": "max"} for m, _ in OBJECTIVES],
        "sampler": {"name": "tpe", "seed": args.seed}, "num_trials": args.trials,
        "max_concurrent": args.concurrent, "max_failures": 20,
    }  # fmt: skip
    spec_file = work / "soak.yaml"
    spec_file.write_text(yaml.safe_dump(spec_doc, sort_keys=False))
    uri = f"sqlite:///{work}/mlflow.db"
    study_dir = work / "studies" / name
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1")
    log = open(work / "drivers.log", "ab")  # noqa: SIM115 - open for the whole soak

    def start(*cmd: str) -> subprocess.Popen[Any]:
        log.write(f"\n==== {' '.join(cmd)}\n".encode())
        log.flush()
        return subprocess.Popen([str(BIN / "hebbrobust"), *cmd], cwd=work, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    kill_at = [round(args.trials * (i + 1) / (args.driver_kills + 1)) for i in range(args.driver_kills)]
    chaos = Chaos(uri, name, args.worker_low, args.worker_high, rng)
    started = time.monotonic()
    driver = start("study", "run", str(spec_file), "--storage", "studies", "--tracking-uri", uri)
    chaos.thread.start()
    driver_kills = resumes = crashes = 0
    try:
        while True:
            if driver.poll() is not None:
                if driver.returncode == 0:
                    break
                # a driver death the soak did not cause (e.g. Tune raising on Ray's OOM-monitor kills):
                # counted apart, and resumed like the planned ones, at most --crash-resumes times
                crashes += 1
                print(f"driver exited {driver.returncode} (crash {crashes})", file=sys.stderr)
                if crashes > args.crash_resumes:
                    return 1
                kill_group(driver)
                driver = start("study", "resume", str(study_dir))
                resumes += 1
                continue
            finished = sum(r.info.status == "FINISHED" for r in mlflow_children(uri, name))
            running = sum(r.info.status == "RUNNING" for r in mlflow_children(uri, name))
            if kill_at and finished >= kill_at[0] and running:
                kill_at.pop(0)
                kill_group(driver)
                driver_kills += 1
                time.sleep(1)
                driver = start("study", "resume", str(study_dir))
                resumes += 1
            if time.monotonic() - started > args.timeout:
                print(f"soak: not done within {args.timeout} s", file=sys.stderr)
                return 1
            time.sleep(1.0)
    finally:
        chaos.stop.set()
        chaos.thread.join(timeout=5)
        if driver.poll() is None:
            kill_group(driver)
        log.close()
    wall = time.monotonic() - started

    # ------------------------------------------------------------------ checks
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir}/optuna.db")
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    other = [t for t in study.trials if t.state.name not in ("COMPLETE", "PRUNED")]
    cut_off = [t for t in other if t.state.name == "FAIL" and CUT_OFF_ATTR in t.user_attrs]
    runs = mlflow_children(uri, name)
    finished_runs: dict[str, list[Any]] = {}
    for r in runs:
        if r.info.status == "FINISHED":
            finished_runs.setdefault(r.data.tags["hebbrobust.trial_id"], []).append(r)
    still_running = sum(r.info.status == "RUNNING" for r in runs)
    lost = args.trials - len(done)
    doubled = sum(len(v) - 1 for v in finished_runs.values())
    by_tune = {t.user_attrs.get("tune_trial_id"): t for t in done}
    unmatched = len(set(by_tune) ^ set(finished_runs))
    spec = load_study(study_dir / "spec.yaml")
    sample = rng.sample(done, min(args.check, len(done)))
    mismatches, compared = 0, []
    for t in sample:
        alone = alone_metrics(spec, t.params)
        got = finished_runs.get(t.user_attrs.get("tune_trial_id"), [])
        mlflow_values = [got[0].data.metrics.get(mf) for _, mf in OBJECTIVES] if got else []
        want = [alone[m] for m, _ in OBJECTIVES]
        same = list(t.values) == want and mlflow_values == want
        mismatches += not same
        compared.append((t.number, list(t.values), want, same))
    table = {
        "trials": args.trials, "concurrent": args.concurrent, "worker kills": chaos.kills,
        "driver kills": driver_kills, "driver crashes (not ours)": crashes, "resumes": resumes,
        "wall s": round(wall),
        "COMPLETE/PRUNED": len(done), "cut off (rerun)": len(cut_off), "other non-complete": len(other) - len(cut_off),
        "FINISHED runs": sum(len(v) for v in finished_runs.values()), "RUNNING leftovers": still_running,
        "trials lost": lost, "trials doubled": doubled, "Optuna/MLflow unmatched": unmatched,
        "metrics compared alone": len(compared), "metric mismatches": mismatches,
    }  # fmt: skip
    width = max(len(k) for k in table)
    print("\nsoak" + (" (short)" if args.short else ""))
    for key, value in table.items():
        print(f"  {key:<{width}}  {value}")
    for number, values, want, same in compared:
        if not same:
            print(f"  mismatch: trial {number}: study {values} vs alone {want}")
    print(f"  (work dir {work}; MLflow {uri})")
    ok = lost == 0 and doubled == 0 and still_running == 0 and unmatched == 0 and mismatches == 0
    ok = ok and len(other) == len(cut_off) and driver_kills == args.driver_kills
    if not args.keep and ok and not args.out:
        shutil.rmtree(work, ignore_errors=True)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def alone_metrics(spec: Any, params: dict[str, Any]) -> dict[str, float]:
    """The trial with these parameters run alone, in this process: no cache, no checkpoint."""
    from hebbrobust.study.trainable import trial_config
    from hebbrobust.trial import run_trial

    result = run_trial(trial_config(spec, params))
    return {m: float(result.metrics[m]) for m, _ in OBJECTIVES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="8 trials, one driver kill, a worker kill every 15-30 s")
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--driver-kills", type=int, default=2)
    ap.add_argument("--worker-low", type=float, default=15.0, help="seconds between worker kills, at least")
    ap.add_argument("--worker-high", type=float, default=40.0, help="... at most")
    ap.add_argument("--check", type=int, default=6, help="finished trials run again alone and compared")
    ap.add_argument("--crash-resumes", type=int, default=3, help="driver crashes not caused by the soak resumed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3 * 3600.0)
    ap.add_argument("--out", type=Path, default=None, help="work directory (kept); default a temp dir, removed on PASS")
    ap.add_argument("--keep", action="store_true", help="keep the temp work directory")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally blocks end what this started
    if args.short:
        args.trials, args.driver_kills, args.worker_low, args.worker_high, args.check = 8, 1, 15.0, 30.0, 2
        args.timeout = min(args.timeout, 600.0)
    sys.exit(run(args))


if __name__ == "__main__":
    main()
