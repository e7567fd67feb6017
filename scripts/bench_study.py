"""Runs the quickstart study and prints where its wall time goes.

    python scripts/bench_study.py [--spec studies/quickstart.yaml] [--num-trials N] [--no-filter-cache] [--set k=v]

A slice of the population design of studies/thesis-tradeoff.yaml on CIFAR-10 JPEG (local F=64 w=4, position
semantics, heads pool {5,9} x {relu,gelu} x n {1,12}: 8 trials on one filter set), with and without the caches:
    python scripts/bench_study.py --cifar [--train 2000 --test 200 --rule-epochs 1 --head-epochs 3 --images 50]
    (the design: 10 000 / 1 000 images, 10 position epochs, 15 head epochs, attacks on 100 images; backprop trials
    are not in the slice). Prints, per run, trials per hour and the summed split into filters, features, head,
    attacks and tracking (data loading, saving, MLflow, Tune: trial wall minus the rest).

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
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parents[1]


CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"


def cifar_slice(args: argparse.Namespace) -> list[str]:
    """--set overrides that turn the quickstart spec into the slice of thesis-tradeoff's local design."""
    base = {
        "base.data.name": "image_folder", "base.data.path": str(args.data), "base.data.train_size": args.train,
        "base.data.test_size": args.test, "base.model.kind": "local", "base.model.filters": 64,
        "base.model.kernel": 4, "base.rule.p": 4, "base.rule.k": 5, "base.rule.delta": 0.1,
        "base.rule.semantics": "position", "base.rule.lr": 0.002, "base.rule.epochs": args.rule_epochs,
        "base.rule.batch_size": 1000, "base.head.epochs": args.head_epochs, "base.head.batch_size": 1000,
        "base.attack.eps": "[1, 2, 4, 8]", "base.attack.n_images": args.images, "base.attack.pgd_steps": 10,
        "base.attack.radius_images": 0, "sampler.name": "grid", "num_trials": 8, "name": "tradeoff-slice",
    }
    space = "space={model.pool: [5, 9], model.activation: [relu, gelu], model.power: [1, 12]}"
    objectives = "objectives=[{metric: clean_acc, mode: max}, {metric: pgd_acc@2, mode: max}]"
    return [f"{k}={v}" for k, v in base.items()] + [space, objectives]


def run_once(spec_path: Path, sets: list[str]) -> dict[str, Any]:
    """Runs one study in a temporary directory; its wall time and per-part sums over trials."""
    import mlflow
    import ray

    from hebbrobust.config import load_study
    from hebbrobust.study import run_study

    spec = load_study(spec_path, sets)
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

    def total(name: str) -> float:
        return float(trials[name].fillna(0).sum()) if name in trials else 0.0

    train, attacks = total("train_seconds"), total("attack_seconds")
    filters, features = total("filter_seconds"), total("feature_seconds")
    return {
        "name": spec.name, "max_concurrent": spec.max_concurrent, "train": train,
        "trials": len(trials), "failed": outcome.counts.get("failed", 0), "ray": ray_start, "wall": study_wall,
        "filters": filters, "features": features, "head": train - filters - features, "attacks": attacks,
        "tracking": trial_wall - train - attacks, "trial_wall": trial_wall,
        "filter_hits": total("filters_cache_hit"), "feature_hits": total("features_cache_hit"),
    }


def cifar(args: argparse.Namespace) -> None:
    sets = cifar_slice(args) + list(args.set)
    runs = {"caches on": run_once(args.spec, sets), "caches off": run_once(args.spec, [*sets, "filter_cache=false"])}
    print(f"thesis-tradeoff slice: 8 local trials (F=64 w=4, position, {args.rule_epochs} rule epochs, "
          f"{args.head_epochs} head epochs), CIFAR JPEG {args.train}/{args.test} images, attacks on {args.images}; "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} (a shared machine: upper bounds)")
    parts = ["filters", "features", "head", "attacks", "tracking", "trial_wall"]
    print(f"{'':12s}{'trials/h':>9s}{'wall s':>8s}{'Ray s':>7s}" + "".join(f"{p:>11s}" for p in parts) + "   hits")
    for name, r in runs.items():
        print(f"{name:12s}{r['trials'] / r['wall'] * 3600:9.0f}{r['wall']:8.1f}{r['ray']:7.1f}"
              + "".join(f"{r[p]:11.1f}" for p in parts)
              + f"   filters {r['filter_hits']:.0f}, features {r['feature_hits']:.0f}")
    print("seconds summed over trials; trials/h over the study's wall time after Ray's start-up; tracking: trial "
          "wall (MLflow runs) minus training and attacks (data loading, saving, MLflow)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=ROOT / "studies" / "quickstart.yaml")
    ap.add_argument("--num-trials", type=int, default=None)
    ap.add_argument("--no-filter-cache", action="store_true", help="every trial trains its own filters")
    ap.add_argument("--set", action="append", default=[], help="spec override dotted.key=value (repeatable)")
    ap.add_argument("--cifar", action="store_true", help="a slice of thesis-tradeoff's design, caches on and off")
    ap.add_argument("--data", type=Path, default=CIFAR, help="--cifar: the CIFAR-10 JPEG folders")
    ap.add_argument("--train", type=int, default=2000, help="--cifar: training images (design: 10 000)")
    ap.add_argument("--test", type=int, default=200, help="--cifar: test images (design: 1 000)")
    ap.add_argument("--rule-epochs", type=int, default=1, help="--cifar: position epochs (design: 10)")
    ap.add_argument("--head-epochs", type=int, default=3, help="--cifar: head epochs (design: 15)")
    ap.add_argument("--images", type=int, default=50, help="--cifar: attacked images (design: 100)")
    args = ap.parse_args()
    if args.cifar:
        cifar(args)
        return

    sets = list(args.set) + ([f"num_trials={args.num_trials}"] if args.num_trials else [])
    sets += ["filter_cache=false"] if args.no_filter_cache else []
    r = run_once(args.spec, sets)
    ray_start, study_wall, trial_wall = r["ray"], r["wall"], r["trial_wall"]
    train, attack, n = r["train"], r["attacks"], int(r["trials"])
    total = ray_start + study_wall
    cache = "off" if args.no_filter_cache else f"on ({r['filter_hits']:.0f} hits)"
    print(f"study {r['name']}: {n} trials ({r['failed']:.0f} failed), {r['max_concurrent']:.0f} at a time, "
          f"{os.cpu_count()} cores, filter cache {cache}")
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
