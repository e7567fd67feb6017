"""MOASHA against full fidelity, and TPE vs NSGA-II vs random, on the quickstart's digits space.

    python scripts/bench_fidelity.py [--trials 48] [--seeds 3] [--compare-trials 48] [--rungs 0.111,0.333]
        [--reduction 3] [--out DIR] [--set k=v]

Part 1: the same space (studies/quickstart.yaml) run `--seeds` times (sampler seeds 0, 1, ...) with
FIFO scheduling (every trial to the end) and with MOASHA (`scheduler: {name: moasha, rungs: [1/9, 1/3],
reduction: 3}` unless --rungs/--reduction say otherwise); both arms hold out the same validation
split (data.val_fraction 0.2, so they train on the same images) and train their own filters
(filter_cache off: the cache would help FIFO alone).
Prints each study's final hypervolume (of its finished trials' front, on the test set; reference point
0, 0) and summed trial seconds (its MLflow runs' wall times, stopped trials included), then MOASHA's
share of FIFO's hypervolume and of its seconds (goal: >= 95% of the hypervolume for <= 40% of the seconds).

Part 2: `study compare` of the quickstart space under TPE, NSGA-II and random sampling (FIFO,
`--compare-trials` trials each, sampler seed 0), written to DIR/compare-samplers (and MOASHA vs FIFO
of seed 0 to DIR/compare-moasha). Without --out, DIR is a temporary directory, removed at the end.

A reduced run that checks it all works in a few minutes:
    python scripts/bench_fidelity.py --trials 6 --seeds 1 --compare-trials 3 \
        --set base.rule.epochs=3 --set base.head.epochs=6 --set base.backprop.epochs=6 \
        --set base.attack.n_images=60 --set base.attack.radius_images=0 --set 'base.attack.eps=[2, 16]'

Timings share the machine with whatever else runs: compare the two arms of one run, not runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=ROOT / "studies" / "quickstart.yaml")
    ap.add_argument("--trials", type=int, default=48, help="trials per study in part 1")
    ap.add_argument("--seeds", type=int, default=3, help="sampler seeds per arm in part 1")
    ap.add_argument("--first-seed", type=int, default=0, help="part 1's sampler seeds start here")
    ap.add_argument("--compare-trials", type=int, default=48, help="trials per sampler in part 2 (0: skip)")
    ap.add_argument("--rungs", default="0.1111111,0.3333333", help="MOASHA's rungs (fractions of the epochs)")
    ap.add_argument("--reduction", type=float, default=3.0, help="MOASHA keeps the best 1/reduction at a rung")
    ap.add_argument("--out", type=Path, default=None, help="keep the studies and comparisons here")
    ap.add_argument("--set", action="append", default=[], help="spec override dotted.key=value (repeatable)")
    args = ap.parse_args()
    moasha = ["scheduler.name=moasha", f"scheduler.rungs=[{args.rungs}]", f"scheduler.reduction={args.reduction}"]

    import ray

    from hebbrobust import hypervolume as hv
    from hebbrobust.compare import compare_studies
    from hebbrobust.config import load_study
    from hebbrobust.study import run_study

    with tempfile.TemporaryDirectory() as tmp:
        root = (args.out or Path(tmp)).resolve()
        uri = f"sqlite:///{root}/mlflow.db"
        ray.init(num_cpus=os.cpu_count(), object_store_memory=200 * 1024**2, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING)  # fmt: skip
        rows, dirs = [], {}
        try:
            common = [*args.set, f"num_trials={args.trials}", "base.data.val_fraction=0.2", "filter_cache=false"]
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                for arm, extra in (("fifo", []), ("moasha", moasha)):
                    name = f"{arm}-s{seed}"
                    spec = load_study(args.spec, [*common, *extra, f"name={name}", f"sampler.seed={seed}"])
                    t0 = time.perf_counter()
                    outcome = run_study(spec, storage=root / "studies", tracking_uri=uri)
                    wall = time.perf_counter() - t0
                    seconds = float(hv.trial_hours(outcome.trials).sum() * 3600)
                    c = outcome.counts
                    h = outcome.hypervolume
                    rows.append((arm, seed, h, seconds, wall, c["finished"], c["stopped"], c["failed"]))
                    dirs[name] = outcome.study_dir
                    print(f"{name}: hypervolume {h:.4f}, trial seconds {seconds:.0f}, wall {wall:.0f} s, "
                          f"{c['finished']} finished, {c['stopped']} stopped, {c['failed']} failed", flush=True)
            sampler_dirs = []
            if args.compare_trials:
                for sampler in ("tpe", "nsga2", "random"):
                    spec = load_study(args.spec, [*args.set, f"num_trials={args.compare_trials}", f"name={sampler}",
                                                  f"sampler.name={sampler}", "sampler.seed=0"])  # fmt: skip
                    outcome = run_study(spec, storage=root / "studies", tracking_uri=uri)
                    sampler_dirs.append(outcome.study_dir)
                    print(f"{sampler}: hypervolume {outcome.hypervolume:.4f}", flush=True)
        finally:
            ray.shutdown()

        print(f"\nPart 1: {args.trials} trials per study, {os.cpu_count()} cores (shared: timings are noisy)")
        print(f"{'arm':8s} {'seed':>4s} {'hypervolume':>11s} {'trial s':>9s} {'wall s':>7s} {'fin':>4s} {'stop':>4s} "
              f"{'fail':>4s}")  # fmt: skip
        for arm, seed, h, sec, wall, fin, stop, fail in rows:
            print(f"{arm:8s} {seed:4d} {h:11.4f} {sec:9.0f} {wall:7.0f} {fin:4d} {stop:4d} {fail:4d}")
        mean = lambda arm, i: statistics.fmean(r[i] for r in rows if r[0] == arm)  # noqa: E731
        hv_share, sec_share = mean("moasha", 2) / mean("fifo", 2), mean("moasha", 3) / mean("fifo", 3)
        met = "met" if hv_share >= 0.95 and sec_share <= 0.40 else "not met"
        print(f"MOASHA / FIFO, means over {args.seeds} seeds: hypervolume {hv_share:.1%}, summed trial seconds "
              f"{sec_share:.1%}  (goal: >= 95% for <= 40%: {met})")

        s0 = args.first_seed
        cmp_moasha = compare_studies([dirs[f"fifo-s{s0}"], dirs[f"moasha-s{s0}"]], root / "compare-moasha")
        print(f"\nstudy compare fifo-s{s0} vs moasha-s{s0} -> {cmp_moasha.out_dir / 'compare.html'}")
        print(cmp_moasha.table.drop(columns=["planned"]).to_string(index=False))
        if sampler_dirs:
            cmp = compare_studies(sampler_dirs, root / "compare-samplers")
            print(f"\nPart 2: study compare tpe vs nsga2 vs random ({args.compare_trials} trials each) -> "
                  f"{cmp.out_dir / 'compare.html'}")  # fmt: skip
            print(cmp.table.drop(columns=["planned"]).to_string(index=False))


if __name__ == "__main__":
    main()
