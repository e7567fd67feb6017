"""Population studies (issue 17): conditional spaces, by-kind base values, the converged-fraction gate,
nested seeds and the thesis's confident-image radii. Real Optuna, real torch on digits; (slow) one
real Ray + MLflow study end to end."""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml

from hebbrobust import report
from hebbrobust.config import AttackConfig, StudySpec, TrialConfig, load_study, load_trial, study_trial
from hebbrobust.errors import SpecError
from hebbrobust.evaluate import evaluate_robustness, predict
from hebbrobust.study import space
from hebbrobust.study.trainable import aggregate, nested_spread, trial_config
from hebbrobust.trial import run_trial

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parents[1]

CONDITIONAL = {
    "model.kind": ["local", "backprop"],
    "rule.p": {"type": "int", "low": 2, "high": 4, "when": {"model.kind": "local"}},
    "rule.delta": {"type": "float", "low": 0.0, "high": 0.4, "when": {"model.kind": ["local"]}},
    "model.power": {"type": "int", "low": 1, "high": 3, "when": {"model.activation": ["relu", "elu"]}},
}


def write_spec(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))  # the order of space matters
    return path


# --------------------------------------------------------------------------- conditional spaces


def test_conditional_space_gives_backprop_trials_no_rule_parameters(tmp_path: Path) -> None:
    spec = load_study(write_spec(tmp_path, {"name": "c", "space": CONDITIONAL}))
    define = space.SearchSpace(spec)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize"], sampler=optuna.samplers.RandomSampler(seed=1))
    kinds = set()
    for _ in range(30):
        trial = study.ask()
        define(trial)
        kind = trial.params["model.kind"]
        kinds.add(kind)
        rule = {k for k in trial.params if k.startswith("rule.")}
        assert rule == ({"rule.p", "rule.delta"} if kind == "local" else set()), trial.params
        assert "model.power" in trial.params  # base activation relu: its `when` holds
        study.tell(trial, [1.0])
    assert kinds == {"local", "backprop"}
    # Optuna's own record: backprop trials have no rule.* distributions (importance sees them apart)
    for t in study.trials:
        assert ("rule.p" in t.distributions) == (t.params["model.kind"] == "local")


def test_conditional_grid_enumerates_only_valid_combinations(tmp_path: Path) -> None:
    doc = {
        "name": "g",
        "space": {
            "model.kind": ["local", "backprop"],
            "rule.p": {"type": "categorical", "choices": [2, 4], "when": {"model.kind": "local"}},
            "rule.k": {"type": "int", "low": 2, "high": 3, "when": {"model.kind": "local"}},
            "model.activation": ["relu", "elu"],
        },
        "sampler": {"name": "grid"},
        "num_trials": 100,
    }
    spec = load_study(write_spec(tmp_path, doc))
    points = space.grid_points(spec)
    assert len(points) == 2 * 2 * 2 + 2  # local: p x k x activation; backprop: activation only
    assert space.grid_size(spec) == space.num_samples(spec) == 10
    assert {tuple(sorted(p)) for p in points if p["model.kind"] == "backprop"} == {("model.activation", "model.kind")}
    assert len({json.dumps(p, sort_keys=True) for p in points}) == len(points)
    # enqueued points come back through the define-by-run space unchanged
    study = optuna.create_study(sampler=space.make_sampler(spec))
    for p in points:
        study.enqueue_trial(p)
    define = space.SearchSpace(spec)
    for p in points:
        trial = study.ask()
        define(trial)
        assert trial.params == p
        study.tell(trial, 0.0)


@pytest.mark.parametrize(
    ("when", "needle"),
    [
        ({"model.knd": "local"}, "space.rule.p.when.model.knd: not a trial setting"),
        ({"model.kind": "locl"}, "space.rule.p.when.model.kind: never sampled: space.model.kind takes local, backprop"),
        ({"model.power": 2}, "space.rule.p.when.model.power: a `when` may only refer to keys listed before it"),
        ({"model.pool": 0}, "space.rule.p.when.model.pool: value 0 is not a valid setting"),
        ({"model.kind": []}, "space.rule.p.when.model.kind: must name at least one value"),
    ],
)
def test_bad_when_is_one_line(tmp_path: Path, when: dict[str, Any], needle: str) -> None:
    doc = {
        "name": "w",
        "space": {
            "model.kind": ["local", "backprop"],
            "rule.p": {"type": "int", "low": 2, "high": 4, "when": when},
            "model.power": [1, 2],
        },
    }
    path = write_spec(tmp_path, doc)
    with pytest.raises(SpecError) as info:
        load_study(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    assert needle in msg, msg


def test_when_on_a_base_value_and_by_kind(tmp_path: Path) -> None:
    doc = {
        "name": "b",
        "base": {"model": {"power": 16, "activation": "elu"}},
        "by_kind": {"backprop": {"model.power": 1}},
        "space": {
            "model.kind": ["local", "backprop"],
            "rule.k": {"type": "int", "low": 2, "high": 3, "when": {"model.activation": "gelu"}},  # never
        },
        "sampler": {"name": "grid"},
    }
    spec = load_study(write_spec(tmp_path, doc))
    assert space.grid_points(spec) == [{"model.kind": "local"}, {"model.kind": "backprop"}]
    assert study_trial(spec, {"model.kind": "backprop"}).model.power == 1
    assert study_trial(spec, {"model.kind": "local"}).model.power == 16
    assert study_trial(spec, {"model.kind": "backprop", "model.power": 3}).model.power == 3  # sampled wins
    bad = {**doc, "by_kind": {"backprop": {"model.powr": 1}}}
    with pytest.raises(SpecError, match=r"by_kind\.backprop\.model\.powr: not a trial setting"):
        load_study(write_spec(tmp_path, bad))


def test_shipped_specs_are_conditional_and_thesis_best_trains_elu1_backprop() -> None:
    for name in ("quickstart", "thesis-best", "thesis-cifar10", "cifar10-heads", "thesis-tradeoff"):
        spec = load_study(ROOT / "studies" / f"{name}.yaml")
        assert space.is_conditional(spec) or spec.by_kind, name
        space.make_sampler(spec)
        space.check_objectives(spec)
    best = load_study(ROOT / "studies" / "thesis-best.yaml")
    backprop = study_trial(best, {"model.kind": "backprop"})
    assert (backprop.model.activation, backprop.model.power) == ("elu", 1)
    assert study_trial(best, {"model.kind": "local"}).model.power == 16
    # `trial run ... --set model.kind=backprop` gets the same, unless --set names the power
    assert load_trial(ROOT / "studies" / "thesis-best.yaml", ["model.kind=backprop"]).model.power == 1
    assert load_trial(ROOT / "studies" / "thesis-best.yaml", ["model.kind=backprop", "model.power=2"]).model.power == 2
    tradeoff = load_study(ROOT / "studies" / "thesis-tradeoff.yaml")
    points = space.grid_points(tradeoff)
    local = [p for p in points if p["model.kind"] == "local"]
    filter_sets = {(p["rule.p"], p["rule.k"], p.get("rule.delta")) for p in local}
    assert len(local) >= 24 and len(filter_sets) >= 6 and len(points) - len(local) >= 8
    assert space.num_samples(tradeoff) == len(points)


# --------------------------------------------------------------------------- nested seeds


def test_nested_spread_arithmetic_on_hand_made_numbers() -> None:
    # 2 filter seeds x 3 head seeds
    groups = [
        [{"acc": 0.70, "R": 0.010}, {"acc": 0.72, "R": 0.012}, {"acc": 0.74, "R": None}],
        [{"acc": 0.60, "R": 0.020}, {"acc": 0.61, "R": 0.024}, {"acc": 0.65, "R": 0.022}],
    ]
    out = nested_spread(groups)
    means = [0.72, 0.62]
    assert out["acc_std_filters"] == pytest.approx(statistics.stdev(means))  # = 0.0707...
    assert out["acc_std_filters"] == pytest.approx(0.1 / math.sqrt(2))
    within = [statistics.stdev([0.70, 0.72, 0.74]), statistics.stdev([0.60, 0.61, 0.65])]
    assert out["acc_std_heads"] == pytest.approx((0.02 + within[1]) / 2)
    assert out["R_std_filters"] == pytest.approx(statistics.stdev([0.011, 0.022]))  # None left out
    assert out["R_std_heads"] == pytest.approx((statistics.stdev([0.010, 0.012]) + 0.002) / 2)
    flat = aggregate([r for g in groups for r in g])
    assert flat["acc"] == pytest.approx(statistics.fmean([0.70, 0.72, 0.74, 0.60, 0.61, 0.65]))
    assert set(nested_spread([groups[0]])) == {"acc_std_heads", "R_std_heads"}  # one filter seed
    assert set(nested_spread([[r] for r in groups[1]])) == {"acc_std_filters", "R_std_filters"}  # one head seed


DIGITS = {
    "data": {"name": "digits", "train_size": 300, "test_size": 200},
    "model": {"filters": 8, "kernel": 3, "pool": 2},
    "rule": {"epochs": 2, "batch_size": 100},
    "head": {"epochs": 3, "batch_size": 100},
    "attack": {"enabled": False},
}


def test_nested_seeds_cross_and_head_seeds_share_filters_through_the_cache(tmp_path: Path) -> None:
    spec = StudySpec.model_validate(
        {"name": "n", "base": {**DIGITS, "seed": 5}, "space": {"model.power": [1, 2]},
         "seeds": {"filters": 2, "heads": 2}}  # fmt: skip
    )
    configs = {(i, j): trial_config(spec, {"model.power": 2}, i, j) for i in range(2) for j in range(2)}
    assert {k: (c.seed, c.training_seed) for k, c in configs.items()} == {
        (0, 0): (5, 5), (0, 1): (5, 6), (1, 0): (6, 5), (1, 1): (6, 6),
    }  # fmt: skip
    names = space.trial_metric_names(configs[0, 0], seeds=spec.seeds)
    assert {"clean_acc_std", "clean_acc_std_filters", "clean_acc_std_heads"} <= names
    first = run_trial(configs[0, 0], filter_cache=tmp_path)
    second = run_trial(configs[0, 1], filter_cache=tmp_path)
    other = run_trial(configs[1, 0], filter_cache=tmp_path)
    assert (first.metrics["filters_cache_hit"], second.metrics["filters_cache_hit"]) == (0, 1)
    assert other.metrics["filters_cache_hit"] == 0  # another filter seed trains its own
    assert torch.equal(first.filters, second.filters)
    assert not torch.equal(first.model.head.weight, second.model.head.weight)  # the head seed differs


# --------------------------------------------------------------------------- the gate


def test_filters_below_min_converged_get_no_head() -> None:
    base = {**DIGITS, "rule": {"epochs": 1, "batch_size": 100, "lr": 1e-4, "min_converged": 0.9}}
    result = run_trial(TrialConfig.model_validate(base))
    m = result.metrics
    assert m["gated"] == 1 and m["converged_frac"] < 0.9 and "clean_acc" not in m and result.model is None
    assert "converged fraction" in m["gated_reason"] and "rule.min_converged 0.9" in m["gated_reason"]
    passed = run_trial(TrialConfig.model_validate({**base, "rule": {**base["rule"], "min_converged": 0.0}}))
    assert passed.metrics["gated"] == 0 and 0 < passed.metrics["clean_acc"] <= 1


# --------------------------------------------------------------------------- confident radii


@pytest.mark.slow
def test_confident_radii_count_every_confident_correct_image() -> None:
    small = {
        "model": {"kind": "backprop", "filters": 8, "kernel": 3},
        "backprop": {"epochs": 15, "batch_size": 50, "lr": 0.01},
    }
    result = run_trial(TrialConfig.model_validate({**DIGITS, **small}))
    model = result.model.eval()
    from hebbrobust.data import load_dataset

    data = load_dataset(result.config.data)
    x, y = data.x_test, data.y_test
    pred, conf = predict(model, x)
    expected = int(((pred == y) & (conf > 0.8)).sum())
    assert 20 < expected < len(y)
    cfg = AttackConfig(eps=(8.0,), n_images=20, radius_images="confident", min_confident=10, batch_size=500,
                       radius_pgd_max_steps=50)  # fmt: skip
    metrics, extras = evaluate_robustness(model, x, y, cfg)
    assert metrics["confident_images"] == metrics["radius_images"] == expected == len(extras["radii_fgsm"])
    skipped, _ = evaluate_robustness(model, x, y, cfg.model_copy(update={"min_confident": expected + 1}))
    assert skipped["confident_images"] == expected and skipped["radius_images"] == 0
    assert skipped["fgsm_R"] is None and skipped["fgsm_eps50"] is None
    assert f"{expected} confident correct test images < attack.min_confident {expected + 1}" in skipped["fgsm_R_reason"]


# --------------------------------------------------------------------------- one real study


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_conditional_study_with_gated_trials_end_to_end(local_ray, tmp_path: Path) -> None:
    from hebbrobust import tracking
    from hebbrobust.report import build_report
    from hebbrobust.study import resume_study, run_study

    spec = StudySpec.model_validate(
        {
            "name": "pop",
            "base": {
                **DIGITS,
                "model": {**DIGITS["model"], "power": 2},
                "rule": {"epochs": 1, "batch_size": 100, "lr": 1e-4, "min_converged": 0.9},  # never converges
                "backprop": {"epochs": 2, "batch_size": 100},
            },
            "by_kind": {"backprop": {"model.power": 1}},
            "space": {
                "model.kind": ["local", "backprop"],
                "rule.p": {"type": "categorical", "choices": [2, 3], "when": {"model.kind": "local"}},
            },
            "objectives": [{"metric": "clean_acc", "mode": "max"}],
            "sampler": {"name": "grid"},
            "num_trials": 10,
            "max_concurrent": 2,
        }
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    events: list[Any] = []
    outcome = run_study(spec, storage=tmp_path / "studies", tracking_uri=uri, on_progress=events.append)

    assert outcome.counts == {"total": 3, "finished": 1, "gated": 2, "failed": 0, "stopped": 0, "unfinished": 0,
                              "runs": 3}  # fmt: skip
    assert events[-1].gated == 2 and events[-1].done == 3 and events[-1].failed == 0
    study = optuna.load_study(study_name="pop", storage=outcome.optuna_storage)
    by_state = {t.state.name: [] for t in study.trials}
    for t in study.trials:
        by_state[t.state.name].append(t.params)
    assert by_state["COMPLETE"] == [{"model.kind": "backprop"}]  # no rule.p for the backprop model
    assert sorted(p["rule.p"] for p in by_state["PRUNED"]) == [2, 3]
    trials = outcome.trials
    local = trials[trials["model.kind"] == "local"]
    assert set(local["status"]) == {"FINISHED"} and local["gated_reason"].str.contains("converged fraction").all()
    assert outcome.front["model.kind"].tolist() == ["backprop"]  # a gated trial is never on the front
    client = tracking.TrackingTarget(uri, "pop", outcome.experiment_id).client()
    for run_id in local["run_id"]:
        assert "hebbrobust.gated" in client.get_run(run_id).data.tags
    backprop = trials[trials["model.kind"] == "backprop"].iloc[0]
    assert client.get_run(backprop["run_id"]).data.params["model.power"] == "1.0"  # by_kind
    # a resume counts the PRUNED trials as done: nothing runs again
    again = resume_study(outcome.study_dir)
    assert again.counts == outcome.counts and again.resumed["gated"] == 2 and again.resumed["remaining"] == 0
    assert len(optuna.load_study(study_name="pop", storage=outcome.optuna_storage).trials) == 3
    rep = build_report(outcome.study_dir, fmt="md", log=False)  # the report counts gated trials apart
    assert rep.counts["gated"] == 2 and len(rep.trials) == 1 and len(rep.population) == 3
    assert "| 3 | 1 | 2 | 0 | 0 |" in (rep.out_dir / "report.md").read_text()
    assert "converged.png" in rep.files and "values.csv" in rep.files


# --------------------------------------------------------------------------- population statistics


def population_frame() -> pd.DataFrame:
    """A hand-made population: local trials trade accuracy for R, backprop ones do not; backprop
    rows have no rule.p (a conditional space)."""
    rng = np.random.default_rng(3)
    acc_l = rng.uniform(0.3, 0.6, 30)
    acc_b = rng.uniform(0.4, 0.7, 12)
    return pd.DataFrame(
        {
            "trial_id": [f"t{i}" for i in range(42)],
            "status": "FINISHED",
            "model.kind": ["local"] * 30 + ["backprop"] * 12,
            "clean_acc": np.r_[acc_l, acc_b],
            "fgsm_R": np.r_[0.05 - 0.06 * acc_l + rng.normal(0, 0.001, 30), 0.01 + rng.normal(0, 0.003, 12)],
            "pgd_R": np.r_[0.04 - 0.05 * acc_l + rng.normal(0, 0.004, 30), 0.01 + rng.normal(0, 0.003, 12)],
            "rule.p": [2, 4, 6] * 10 + [np.nan] * 12,
            "model.pool": [5, 9] * 21,
        }
    )


def test_report_correlations_equal_a_pandas_recomputation_from_trials_csv(tmp_path: Path) -> None:
    objectives = [("clean_acc", "max"), ("fgsm_R", "max")]
    table = report.trials_table(population_frame(), objectives, ["rule.p", "model.pool"])
    table.to_csv(tmp_path / "trials.csv", index=False)
    corr = report.correlation_table(table, ["clean_acc", "fgsm_R"])
    assert list(dict.fromkeys(zip(corr["x"], corr["y"], strict=True))) == [
        ("clean_acc", "fgsm_R"), ("clean_acc", "pgd_R")
    ]  # fmt: skip  (the objective pair is the first R pair: not repeated)
    csv = pd.read_csv(tmp_path / "trials.csv")
    for _, row in corr.iterrows():
        part = csv if row["kind"] == "all" else csv[csv["model.kind"] == row["kind"]]
        assert row["n"] == len(part)
        for method in ("pearson", "spearman"):
            assert row[method] == pytest.approx(part[row["x"]].corr(part[row["y"]], method=method), abs=1e-12)
            assert row[f"{method}_lo"] <= row[method] <= row[f"{method}_hi"]
    local = corr[(corr["kind"] == "local") & (corr["y"] == "fgsm_R")].iloc[0]
    backprop = corr[(corr["kind"] == "backprop") & (corr["y"] == "fgsm_R")].iloc[0]
    assert local["pearson_hi"] < -0.9  # a clear trade-off: the whole interval far below 0
    assert backprop["pearson_lo"] < 0 < backprop["pearson_hi"]  # no relation: the interval spans 0
    again = report.correlation_table(table, ["clean_acc", "fgsm_R"])
    pd.testing.assert_frame_equal(corr, again)  # seeded bootstrap: the same intervals every time


def test_value_table_per_kind_shows_nothing_for_parameters_that_do_not_apply() -> None:
    df = population_frame()
    values = report.value_table(df, ["rule.p", "model.pool"])
    p = values[values["param"] == "rule.p"]
    assert set(p["kind"]) == {"local"} and sorted(p["value"]) == [2, 4, 6]  # backprop has no rule.p
    row = p[p["value"] == 4].iloc[0]
    local = df[(df["model.kind"] == "local") & (df["rule.p"] == 4)]
    assert row["n"] == len(local) == 10
    assert row["clean_acc_mean"] == pytest.approx(local["clean_acc"].mean())
    assert row["clean_acc_max"] == pytest.approx(local["clean_acc"].max())
    assert row["fgsm_R_mean"] == pytest.approx(local["fgsm_R"].mean())
    assert row["pgd_R_mean"] == pytest.approx(local["pgd_R"].mean())
    pool = values[values["param"] == "model.pool"]
    assert set(pool["kind"]) == {"local", "backprop"} and pool["n"].sum() == len(df)


def test_sampler_note_says_an_optimiser_population_is_not_a_random_sample() -> None:
    assert "not a random sample" in report.sampler_note("tpe")
    assert "not a random sample" in report.sampler_note("nsga2")
    assert "random sample of it" in report.sampler_note("random")
    assert "grid" in report.sampler_note("grid") and "not a random" not in report.sampler_note("grid")


def test_study_counts_count_gated_runs_apart_from_finished_and_failed() -> None:
    from hebbrobust.study.record import study_counts

    runs = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d", "d"],
            "status": ["FINISHED", "FINISHED", "FAILED", "FAILED", "FINISHED"],
            "gated_reason": [None, "gated: converged fraction 0.1 < rule.min_converged 0.8", None, None, None],
        }
    )
    assert study_counts(runs, 6) == {"total": 6, "finished": 2, "gated": 1, "failed": 1, "stopped": 0, "unfinished": 2,
                                     "runs": 5}  # fmt: skip


def test_importance_per_kind_rates_only_the_parameters_a_kind_carries() -> None:
    kind = optuna.distributions.CategoricalDistribution(["local", "backprop"])
    p = optuna.distributions.IntDistribution(2, 6)
    pool = optuna.distributions.CategoricalDistribution([5, 9])
    study = optuna.create_study(directions=["maximize"])
    for i in range(12):
        local = {"model.kind": "local", "rule.p": 2 + i % 5, "model.pool": [5, 9][i % 2]}
        study.add_trial(optuna.trial.create_trial(params=local, distributions={"model.kind": kind, "rule.p": p,
                        "model.pool": pool}, values=[0.1 * local["rule.p"]]))  # fmt: skip
        backprop = {"model.kind": "backprop", "model.pool": [5, 9][i % 2]}
        study.add_trial(optuna.trial.create_trial(params=backprop, distributions={"model.kind": kind,
                        "model.pool": pool}, values=[0.5 + 0.1 * (i % 2)]))  # fmt: skip
    imp = report.importance_by_kind(study, [("clean_acc", "max")], ["model.kind", "rule.p", "model.pool"])
    local, backprop = (imp[imp["kind"] == k].set_index("param") for k in ("local", "backprop"))
    assert set(local.index) == {"rule.p", "model.pool"} and set(backprop.index) == {"model.pool"}
    assert local.loc["rule.p", "importance"] > 0.9 and backprop.loc["model.pool", "importance"] > 0.9
    assert set(imp["trials"]) == {12}
