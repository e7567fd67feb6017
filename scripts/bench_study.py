"""Runs the quickstart study and prints where its wall time goes.

    python scripts/bench_study.py [--spec studies/quickstart.yaml] [--num-trials N] [--no-filter-cache] [--set k=v]

A head-only quickstart (the filter cache's best case):
    python scripts/bench_study.py --set 'space={model.power: [1, 2, 3, 4], model.activation: [relu, gelu]}' \
        --set sampler.name=grid [--no-filter-cache]

Prints: Ray start-up, the study's wall time, and summed over trials the training, attack and
bookkeeping (MLflow tracking, data loading, saving, Tune) seconds, and the trial throughput.
Everything runs in a temporary directory (MLflow sqlite store and study storage), removed at the end.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=ROOT / "studies" / "quickstart.yaml")
    ap.add_argument("--num-trials", type=int, default=None)
    ap.add_argument("--no-filter-cache", action="store_true", help="every trial trains its own filters")
    ap.add_argument("--set", action="append", default=[], help="spec override dotted.key=value (repeatable)")
    args = ap.parse_args()

    import mlflow
    import ray

    from hebbrobust.config import load_study
    from hebbrobust.study import run_study

    sets = list(args.set) + ([f"num_trials={args.num_trials}"] if args.num_trials else [])
    sets += ["filter_cache=false"] if args.no_filter_cache else []
    spec = load_study(args.spec, sets)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), object_store_memory=200 * 1024**2, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING)
        ray_start = time.perf_counter() - t0
        try:
            t1 = time.perf_counter()
            outcome = run_study(spec, storage=Path(tmp) / "studies", tracking_uri=f"sqlite:///{tmp}/mlflow.db")
            study_wall = time.perf_counter() - t1
        finally:
            ray.shutdown()
        trials = outcome.trials
        runs = mlflow.MlflowClient(outcome.tracking_uri)
        trial_wall = sum(
            (r.info.end_time - r.info.start_time) / 1000
            for r in (runs.get_run(i) for i in trials["run_id"])
            if r.info.end_time
        )
    train = float(trials["train_seconds"].sum())
    attack = float(trials["attack_seconds"].sum())
    hits = int(trials.get("filters_cache_hit", trials["train_seconds"] * 0).fillna(0).sum())
    n = len(trials)
    total = ray_start + study_wall
    print(f"study {spec.name}: {n} trials ({outcome.counts.get('failed', 0)} failed), "
          f"{spec.max_concurrent} at a time, {os.cpu_count()} cores, filter cache "
          f"{'off' if args.no_filter_cache else f'on ({hits} hits)'}")
    print(f"{'part':34s} {'seconds':>8s} {'share':>6s}")
    rows = [
        ("Ray start-up", ray_start, total),
        ("study wall (Tune + trials + tracking)", study_wall, total),
        ("  trials: training (sum)", train, trial_wall),
        ("  trials: attacks (sum)", attack, trial_wall),
        ("  trials: data, saving, MLflow (sum)", trial_wall - train - attack, trial_wall),
        ("  trials: wall (sum of MLflow runs)", trial_wall, trial_wall),
    ]
    for name, sec, of in rows:
        print(f"{name:34s} {sec:8.1f} {sec / of:6.0%}")
    print(f"{'total wall':34s} {total:8.1f}")
    print(f"throughput: {n / total * 60:.1f} trials/min overall, {n / study_wall * 60:.1f} trials/min after start-up")


if __name__ == "__main__":
    main()
