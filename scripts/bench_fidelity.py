"""MOASHA against full fidelity, and TPE vs NSGA-II vs random, on the quickstart's digits space.

    python scripts/bench_fidelity.py [--trials 48] [--seeds 3] [--compare-trials 48] [--rungs 0.111,0.333]
        [--reduction 3] [--out DIR] [--set k=v]
    python scripts/bench_fidelity.py --tabulate DIR   # the tables again, from a kept --out DIR

Part 1: the same space (studies/quickstart.yaml) run `--seeds` times (sampler seeds 0, 1, ...) with
FIFO scheduling (every trial to the end) and with MOASHA (`scheduler: {name: moasha, rungs: [1/9, 1/3],
reduction: 3}` unless --rungs/--reduction say otherwise); both arms hold out the same validation
split (data.val_fraction 0.2, so they train on the same images) and train their own filters
(filter_cache off: the cache would help FIFO alone).
Prints each study's final hypervolume (of its finished trials' front, on the test set; reference point
0, 0), the hypervolume of each model kind's own front, and summed trial seconds (its MLflow runs' wall
times, stopped trials included), then per seed and over the seeds MOASHA's share of FIFO's hypervolume
and of its seconds (goal: >= 95% of the hypervolume for <= 40% of the seconds).

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
import tempfile
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
    ap.add_argument("--tabulate", type=Path, default=None, help="only print the tables of a kept --out DIR")
    args = ap.parse_args()
    if args.tabulate:
        tabulate(args.tabulate.resolve())
        return
    moasha = ["scheduler.name=moasha", f"scheduler.rungs=[{args.rungs}]", f"scheduler.reduction={args.reduction}"]

    import ray

    from hebbrobust.config import load_study
    from hebbrobust.study import run_study

    with tempfile.TemporaryDirectory() as tmp:
        root = (args.out or Path(tmp)).resolve()
        uri = f"sqlite:///{root}/mlflow.db"
        ray.init(num_cpus=os.cpu_count(), object_store_memory=200 * 1024**2, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING)  # fmt: skip
        try:
            common = [*args.set, f"num_trials={args.trials}", "base.data.val_fraction=0.2", "filter_cache=false"]
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                for arm, extra in (("fifo", []), ("moasha", moasha)):
                    spec = load_study(args.spec, [*common, *extra, f"name={arm}-s{seed}", f"sampler.seed={seed}"])
                    outcome = run_study(spec, storage=root / "studies", tracking_uri=uri)
                    print(f"{spec.name}: hypervolume {outcome.hypervolume:.4f}, counts {outcome.counts}", flush=True)
            if args.compare_trials:
                for sampler in ("tpe", "nsga2", "random"):
                    spec = load_study(args.spec, [*args.set, f"num_trials={args.compare_trials}", f"name={sampler}",
                                                  f"sampler.name={sampler}", "sampler.seed=0"])  # fmt: skip
                    outcome = run_study(spec, storage=root / "studies", tracking_uri=uri)
                    print(f"{sampler}: hypervolume {outcome.hypervolume:.4f}", flush=True)
        finally:
            ray.shutdown()
        tabulate(root)


def tabulate(root: Path) -> None:
    """Part 1's table and ratios, and both comparisons, from the studies under root/studies."""
    import pandas as pd

    from hebbrobust import hypervolume as hv
    from hebbrobust.compare import compare_studies
    from hebbrobust.study.record import read_study

    rows = []
    for d in sorted((root / "studies").glob("*-s*")):
        s = read_study(d)
        t, c = s.trials, s.counts
        kinds = {k: hv.front_hypervolume(t[t["model.kind"] == k], s.objectives, s.reference_point)
                 for k in ("local", "backprop")}  # fmt: skip
        span = (pd.to_datetime(t["end_time"]).max() - pd.to_datetime(t["start_time"]).min()).total_seconds()
        rows.append({"arm": s.spec.scheduler.name, "seed": s.spec.sampler.seed, "hypervolume": s.hypervolume,
                     "hv_local": kinds["local"], "hv_backprop": kinds["backprop"],
                     "trial_s": float(hv.trial_hours(t).sum() * 3600), "wall_s": span, "finished": c["finished"],
                     "stopped": c["stopped"], "failed": c["failed"]})  # fmt: skip
    table = pd.DataFrame(rows).sort_values(["seed", "arm"])
    print(f"\nPart 1: {s.num_trials} trials per study ({os.cpu_count()} cores, shared: seconds are noisy)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}" if v < 10 else f"{v:.0f}"))
    wide = table.pivot(index="seed", columns="arm")
    cols = ["hypervolume", "hv_local", "hv_backprop", "trial_s"]
    ratio = pd.DataFrame({col: wide[(col, "moasha")] / wide[(col, "fifo")] for col in cols})
    means = table.groupby("arm")[cols].mean()
    ratio.loc["mean"] = means.loc["moasha"] / means.loc["fifo"]
    ratio["goal"] = (ratio["hypervolume"] >= 0.95) & (ratio["trial_s"] <= 0.40)
    print("\nMOASHA / FIFO per seed and of the means (goal: hypervolume >= 95% with trial_s <= 40%)")
    print(ratio.to_string(float_format=lambda v: f"{v:.1%}"))

    s0 = int(table["seed"].min())
    cmp_moasha = compare_studies([root / "studies" / f"fifo-s{s0}", root / "studies" / f"moasha-s{s0}"],
                                 root / "compare-moasha")  # fmt: skip
    print(f"\nstudy compare fifo-s{s0} vs moasha-s{s0} -> {cmp_moasha.out_dir / 'compare.html'}")
    print(cmp_moasha.table.drop(columns=["planned"]).to_string(index=False))
    samplers = [root / "studies" / n for n in ("tpe", "nsga2", "random") if (root / "studies" / n).is_dir()]
    if len(samplers) > 1:
        cmp = compare_studies(samplers, root / "compare-samplers")
        print(f"\nPart 2: study compare tpe vs nsga2 vs random -> {cmp.out_dir / 'compare.html'}")
        print(cmp.table.drop(columns=["planned"]).to_string(index=False))


if __name__ == "__main__":
    main()
