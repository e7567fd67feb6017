"""The study platform: spec -> Optuna space, the Pareto front, MLflow tracking against a real sqlite
store in a temp dir, and (slow) a whole study on a real local Ray."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from hebbrobust import numeric, tracking
from hebbrobust.config import StudySpec
from hebbrobust.errors import HebbrobustError, SpecError
from hebbrobust.study import record, space
from hebbrobust.study.session import trial_resources
from hebbrobust.study.trainable import aggregate, flatten, objective_problem, trial_config

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

MAXMAX = [("acc", "max"), ("rob", "max")]


def spec_of(**fields: object) -> StudySpec:
    data: dict[str, object] = {
        "name": "t",
        "space": {
            "rule.p": {"type": "int", "low": 2, "high": 6},
            "rule.delta": {"type": "float", "low": 0.01, "high": 0.5, "log": True},
            "model.kind": ["local", "backprop"],
        },
    }
    data.update(fields)
    return StudySpec.model_validate(data)


# --------------------------------------------------------------------------- pareto


def brute_front(values: np.ndarray) -> np.ndarray:
    """Reference: row i is on the front iff no row j is >= everywhere and > somewhere (maximised)."""
    out = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if np.isnan(v).any():
            continue
        others = values[~np.isnan(values).any(axis=1)]
        out[i] = not np.any(np.all(others >= v, axis=1) & np.any(others > v, axis=1))
    return out


def test_front_of_a_known_frame() -> None:
    df = pd.DataFrame(
        {"acc": [0.9, 0.8, 0.7, 0.85, 0.6], "rob": [0.1, 0.3, 0.5, 0.05, 0.4]},
        index=list("abcde"),
    )
    front = numeric.pareto_front(df, MAXMAX)
    assert front.index.tolist() == list("abcde")
    assert front.tolist() == [True, True, True, False, False]  # d < a on both, e < c on both


def test_min_and_max_mixed() -> None:
    df = pd.DataFrame({"acc": [0.9, 0.9, 0.8], "seconds": [10.0, 5.0, 1.0]})
    assert numeric.pareto_front(df, [("acc", "max"), ("seconds", "min")]).tolist() == [False, True, True]
    assert numeric.pareto_front(df, [("acc", "min"), ("seconds", "max")]).tolist() == [True, False, True]


def test_ties_share_the_front_and_equal_dominated_points_share_a_rank() -> None:
    df = pd.DataFrame({"acc": [0.9, 0.9, 0.5, 0.5, 0.95], "rob": [0.5, 0.5, 0.2, 0.2, 0.1]})
    assert numeric.pareto_front(df, MAXMAX).tolist() == [True, True, False, False, True]
    assert numeric.pareto_rank(df, MAXMAX).tolist() == [0, 0, 1, 1, 0]


def test_nan_rows_are_never_on_the_front_and_get_no_rank() -> None:
    df = pd.DataFrame({"acc": [0.9, np.nan, 0.99, 0.5], "rob": [0.5, 0.99, None, 0.4]})
    assert numeric.pareto_front(df, MAXMAX).tolist() == [True, False, False, False]
    ranks = numeric.pareto_rank(df, MAXMAX)
    assert str(ranks.dtype) == "Int64"
    assert ranks.isna().tolist() == [False, True, True, False]
    assert ranks.dropna().tolist() == [0, 1]


def test_ranks_peel_layers_in_three_objectives() -> None:
    df = pd.DataFrame({"a": [3, 2, 1, 3], "b": [3, 2, 1, 1], "c": [3, 2, 1, 4]})
    obj = [("a", "max"), ("b", "max"), ("c", "max")]
    assert numeric.pareto_rank(df, obj).tolist() == [0, 1, 2, 0]
    assert numeric.pareto_front(df, obj).tolist() == [True, False, False, True]


def test_single_objective_front_is_the_best_rows() -> None:
    df = pd.DataFrame({"loss": [0.3, 0.1, 0.1, 0.2]})
    assert numeric.pareto_front(df, [("loss", "min")]).tolist() == [False, True, True, False]


def test_front_matches_brute_force_across_chunks() -> None:
    rng = np.random.default_rng(0)
    values = rng.random((1300, 3)).round(2)  # rounding makes ties; 1300 > one chunk
    values[::97, 1] = np.nan
    df = pd.DataFrame(values, columns=["x", "y", "z"])
    got = numeric.pareto_front(df, [("x", "max"), ("y", "max"), ("z", "max")]).to_numpy()
    assert got.sum() > 0
    assert (got == brute_front(values)).all()
    ranks = numeric.pareto_rank(df, [("x", "max"), ("y", "max"), ("z", "max")])
    assert ((ranks == 0).fillna(False).to_numpy() == got).all()


def test_empty_frame_and_bad_objectives() -> None:
    empty = pd.DataFrame({"acc": [], "rob": []})
    assert numeric.pareto_front(empty, MAXMAX).tolist() == []
    assert numeric.pareto_rank(empty, MAXMAX).tolist() == []
    with pytest.raises(KeyError, match="no column 'nope'"):
        numeric.pareto_front(empty, [("nope", "max")])
    with pytest.raises(ValueError, match="'max' or 'min'"):
        numeric.pareto_front(empty, [("acc", "up")])


def test_with_front_only_counts_finished_trials(tmp_path: Path) -> None:
    trials = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c"],
            "status": ["FINISHED", "FAILED", "FINISHED"],
            "model.kind": ["local", "backprop", "backprop"],
            "acc": [0.8, 0.99, 0.9],
            "rob": [0.5, 0.99, 0.1],
        }
    )
    marked = numeric.with_front(trials, MAXMAX)
    assert marked["on_front"].tolist() == [True, False, True]
    assert numeric.front_table(marked, MAXMAX)["trial_id"].tolist() == ["c", "a"]
    files = record.write_front(marked, MAXMAX, tmp_path)
    assert pd.read_csv(files["front.csv"])["trial_id"].tolist() == ["c", "a"]
    assert files["front.png"].read_bytes()[:4] == b"\x89PNG"
    # no trial reported the objectives yet: no front, no error
    assert not numeric.with_front(trials.drop(columns=["rob"]), MAXMAX)["on_front"].any()


# --------------------------------------------------------------------------- spec -> space


def test_space_becomes_optuna_distributions() -> None:
    dists = space.optuna_space(spec_of())
    assert dists["rule.p"] == optuna.distributions.IntDistribution(2, 6)
    assert dists["rule.delta"] == optuna.distributions.FloatDistribution(0.01, 0.5, log=True)
    assert dists["model.kind"] == optuna.distributions.CategoricalDistribution(["local", "backprop"])


def test_int_step_and_log_rules() -> None:
    spec = spec_of(space={"model.filters": {"type": "int", "low": 16, "high": 64, "step": 16}})
    assert space.optuna_space(spec)["model.filters"] == optuna.distributions.IntDistribution(16, 64, step=16)
    bad = spec_of(space={"model.filters": {"type": "int", "low": 16, "high": 64, "step": 16, "log": True}})
    with pytest.raises(SpecError, match=r"x.yaml: space.model.filters: log scale needs step 1"):
        space.optuna_space(bad, "x.yaml")


def test_categorical_choices_must_be_scalars() -> None:
    bad = spec_of(space={"attack.eps": [[1, 2], [4]]})
    with pytest.raises(SpecError, match="space.attack.eps: choices must be numbers"):
        space.optuna_space(bad)


def test_grid_sampler_expands_ints_and_refuses_float_ranges() -> None:
    spec = spec_of(
        space={
            "rule.p": {"type": "int", "low": 2, "high": 6, "step": 2},
            "model.kind": ["local", "backprop"],
        },
        sampler={"name": "grid"},
        num_trials=100,
    )
    assert space.grid_values(spec) == {"rule.p": [2, 4, 6], "model.kind": ["local", "backprop"]}
    assert space.num_samples(spec) == 6
    assert isinstance(space.make_sampler(spec), optuna.samplers.GridSampler)
    with pytest.raises(SpecError, match="space.rule.delta: the grid sampler needs"):
        space.make_sampler(spec_of(sampler={"name": "grid"}), "s.yaml")


def test_grid_sampler_runs_ask_and_tell_past_its_last_point() -> None:
    spec = spec_of(space={"rule.p": [2, 3]}, sampler={"name": "grid", "seed": 0})
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=space.make_sampler(spec))
    dists = space.optuna_space(spec)
    seen = []
    for _ in range(2):  # the stock GridSampler raises from study.stop() here
        trial = study.ask(fixed_distributions=dists)
        seen.append(trial.params["rule.p"])
        study.tell(trial, [1.0, 2.0])
    assert sorted(seen) == [2, 3]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("nsga2", optuna.samplers.NSGAIISampler),
        ("nsga3", optuna.samplers.NSGAIIISampler),
        ("gp", optuna.samplers.GPSampler),
        ("random", optuna.samplers.RandomSampler),
    ],
)
def test_every_sampler_builds(name: str, cls: type) -> None:
    assert isinstance(space.make_sampler(spec_of(sampler={"name": name, "seed": 1})), cls)


def test_sampler_options_are_checked() -> None:
    ok = space.make_sampler(spec_of(sampler={"name": "nsga2", "options": {"population_size": 4}}))
    assert isinstance(ok, optuna.samplers.NSGAIISampler)
    with pytest.raises(SpecError, match=r"s.yaml: sampler.options: not accepted by the tpe sampler"):
        space.make_sampler(spec_of(sampler={"name": "tpe", "options": {"bogus": 1}}), "s.yaml")


def test_paths_inside_trials_are_absolute(tmp_path: Path) -> None:
    spec = spec_of(
        base={"data": {"name": "image_folder", "path": "data/imgs"}},
        space={"data.path": ["a", "/abs/b"], "rule.p": [2, 3]},
        storage="studies-out",
    )
    out = space.absolute_paths(spec, cwd=tmp_path)
    assert out.base.data.path == tmp_path / "data/imgs"
    assert out.space["data.path"].choices == [str(tmp_path / "a"), "/abs/b"]
    assert out.storage == tmp_path / "studies-out"


def test_gpu_requested_only_when_the_cluster_has_one() -> None:
    spec = spec_of()
    assert trial_resources(spec, {"CPU": 2.0}) == {"cpu": 1.0, "gpu": 0.0}
    assert trial_resources(spec, {"CPU": 16.0, "GPU": 1.0}) == {"cpu": 1.0, "gpu": 1.0}
    with pytest.raises(HebbrobustError, match="resources.gpu: each trial asks for 1 GPUs but the Ray cluster has 0"):
        trial_resources(spec_of(resources={"gpu": 1}), {"CPU": 2.0})
    with pytest.raises(HebbrobustError, match="resources.cpu"):
        trial_resources(spec_of(resources={"cpu": 4}), {"CPU": 2.0})


def test_trial_config_applies_params_and_seed_repeats() -> None:
    spec = spec_of(base={"seed": 7})
    cfg = trial_config(spec, {"rule.p": 4, "model.kind": "backprop"}, seed_index=2)
    assert (cfg.rule.p, cfg.model.kind, cfg.seed) == (4, "backprop", 9)
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": [1]}) == {"a.b": 1, "a.c.d": "x", "e": [1]}


def test_seed_repeats_are_averaged_with_their_spread() -> None:
    runs = [
        {"clean_acc": 0.8, "pgd_R": None, "pgd_R_reason": "too few", "ok": True, "device": "cpu"},
        {"clean_acc": 0.9, "pgd_R": 0.04, "pgd_R_reason": None, "ok": False, "device": "cpu"},
    ]
    out = aggregate(runs)
    assert out["clean_acc"] == pytest.approx(0.85)
    assert out["clean_acc_std"] == pytest.approx(math.sqrt(0.005))
    assert out["pgd_R"] == pytest.approx(0.04) and out["pgd_R_std"] == 0.0
    assert out["ok"] == 0.5
    assert out["device"] == "cpu" and out["pgd_R_reason"] == "too few"
    assert aggregate(runs[:1]) == runs[0]  # one seed: unchanged, no _std


def test_objective_problems_are_named() -> None:
    objectives = [("clean_acc", "max"), ("pgd_R", "max")]
    assert objective_problem({"clean_acc": 0.9, "pgd_R": 0.1}, objectives) is None
    assert "'pgd_R' is None: too few" in str(
        objective_problem({"clean_acc": 0.9, "pgd_R": None, "pgd_R_reason": "too few"}, objectives)
    )
    assert "not among the trial's metrics (clean_acc)" in str(objective_problem({"clean_acc": 0.9}, objectives))
    assert "is nan" in str(objective_problem({"clean_acc": float("nan"), "pgd_R": 1.0}, objectives))


# --------------------------------------------------------------------------- tracking (real MLflow store)


def test_mlflow_names_and_uris(tmp_path: Path) -> None:
    assert tracking.mlflow_name("pgd_acc@2") == "pgd_acc_eps2"
    assert tracking.mlflow_name("fgsm_acc@0.5") == "fgsm_acc_eps0.5"
    assert tracking.mlflow_name("filters/loss") == "filters/loss"
    assert tracking.mlflow_name("r²") == "r_"
    assert tracking.resolve_tracking_uri("sqlite:///m.db", cwd=tmp_path) == f"sqlite:///{tmp_path}/m.db"
    assert tracking.resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert tracking.resolve_tracking_uri("x.db", cwd=tmp_path) == f"sqlite:///{tmp_path}/x.db"
    assert tracking.resolve_tracking_uri("file:./mlruns", cwd=tmp_path) == (tmp_path / "mlruns").as_uri()
    assert tracking.resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        assert tracking.resolve_tracking_uri(None, cwd=tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    assert tracking.artifact_root(f"sqlite:///{tmp_path}/m.db") == str(tmp_path / "mlruns")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tracking.TrackingTarget:
    root = tmp_path_factory.mktemp("mlflow")
    return tracking.ensure_experiment(f"sqlite:///{root}/mlflow.db", "unit")


def test_trial_runs_nest_under_the_parent_and_read_back(store: tracking.TrackingTarget, tmp_path: Path) -> None:
    assert tracking.ensure_experiment(store.uri, "unit") == store  # idempotent
    parent = tracking.start_parent_run(store, "unit", params={"num_trials": 2}, tags={})
    png = tmp_path / "filters.png"
    png.write_bytes(b"\x89PNG fake")
    ok = tracking.TrialRun.start(
        store,
        parent_run_id=parent,
        study="unit",
        trial_id="t1",
        name="local-t1",
        params={"rule.p": 3.0, "model.kind": "local", "attack.eps": [1.0, 2.0]},
        searched={"rule.p": 3.0, "model.kind": "local"},
    )
    for epoch in range(3):
        ok.epoch("filters/unconverged_frac", epoch, 1.0 - epoch / 3)
    ok.epoch("head/loss", 0, float("nan"))  # skipped, not fatal
    ok.final(
        {
            "clean_acc": 0.9,
            "pgd_acc@2": 0.4,
            "unconverged_frac": 0.0,
            "pgd_R": None,
            "pgd_R_reason": "fit R2 0.5 < 0.95",
            "pgd_eps50": None,
            "fgsm_R": 0.01,
            "fgsm_R_reason": None,
            "mask_ok": True,
            "device": "cpu",
        }
    )
    ok.artifacts({"filters.png": png, "missing": tmp_path / "nope.png"})
    ok.finish()
    bad = tracking.TrialRun.start(
        store,
        parent_run_id=parent,
        study="unit",
        trial_id="t2",
        name="t2",
        params={},
        searched={"rule.p": 9.0},
    )
    bad.fail("diverged: NaN weights", "Traceback (most recent call last): ...")
    stale = tracking.TrialRun.start(
        store, parent_run_id=parent, study="unit", trial_id="t3", name="t3", params={}, searched={}
    )

    assert tracking.close_stale_runs(store, parent, status="KILLED", reason="driver gone") == [stale.run_id]
    df = tracking.read_trials(store, parent).set_index("trial_id")
    assert df.loc[["t1", "t2", "t3"], "status"].tolist() == ["FINISHED", "FAILED", "KILLED"]
    assert df.loc["t1", "pgd_acc@2"] == 0.4 and df.loc["t1", "clean_acc"] == 0.9
    assert df.loc["t1", "mask_ok"] == 1.0
    assert df.loc["t1", "rule.p"] == 3.0 and df.loc["t1", "model.kind"] == "local"
    assert "filters/unconverged_frac" not in df.columns
    assert df.loc["t2", "reason"] == "diverged: NaN weights"

    client = store.client()
    run = client.get_run(ok.run_id)
    assert run.data.tags[tracking.PARENT_TAG] == parent
    assert run.data.tags["hebbrobust.none.pgd_R"] == "fit R2 0.5 < 0.95"
    assert run.data.tags["hebbrobust.none.pgd_eps50"] == "pgd_R_reason: fit R2 0.5 < 0.95"
    assert "hebbrobust.none.fgsm_R_reason" not in run.data.tags
    assert run.data.tags["hebbrobust.text.device"] == "cpu"
    assert json.loads(run.data.tags[tracking.NAMES_TAG]) == {"pgd_acc_eps2": "pgd_acc@2"}
    assert run.data.params["attack.eps"] == "[1.0, 2.0]"
    curve = client.get_metric_history(ok.run_id, "filters/unconverged_frac")
    assert [m.step for m in curve] == [0, 1, 2]
    assert [a.path for a in client.list_artifacts(ok.run_id)] == ["filters.png"]
    assert [a.path for a in client.list_artifacts(bad.run_id)] == ["traceback.txt"]
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(Path(store.uri[10:]).parent)

    front = record.write_front(
        numeric.with_front(df.reset_index(), [("clean_acc", "max")]), [("clean_acc", "max")], tmp_path
    )
    tracking.log_front(store, parent, front, {"front_size": 1})
    tracking.set_run_status(store, parent, "FINISHED")
    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED" and parent_run.data.metrics["front_size"] == 1
    assert {a.path for a in client.list_artifacts(parent)} == {"front.csv", "front.png", "trials.csv"}


# --------------------------------------------------------------------------- end to end (real Ray + MLflow)

TINY_BASE = {
    "data": {"name": "digits", "train_size": 300, "test_size": 120},
    "model": {"filters": 8, "kernel": 3, "pool": 2},
    "rule": {"epochs": 2, "batch_size": 100},
    "head": {"epochs": 3, "batch_size": 100},
    "backprop": {"epochs": 3, "batch_size": 100},
    "attack": {"eps": [2], "n_images": 60, "radius_images": 0, "pgd_steps": 5, "batch_size": 60},
}


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def dominated(row: pd.Series, others: pd.DataFrame, objectives: list[tuple[str, str]]) -> bool:
    sign = np.array([1.0 if mode == "max" else -1.0 for _, mode in objectives])
    names = [m for m, _ in objectives]
    v = row[names].to_numpy(dtype=float) * sign
    o = others[names].to_numpy(dtype=float) * sign
    return bool(np.any(np.all(o >= v, axis=1) & np.any(o > v, axis=1)))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_four_trial_study_end_to_end(local_ray, tmp_path: Path) -> None:
    from hebbrobust.study import list_studies, resume_study, run_study, show_study

    spec = StudySpec.model_validate(
        {
            "name": "e2e",
            "base": TINY_BASE,
            "space": {"model.kind": ["local", "backprop"], "rule.p": {"type": "int", "low": 2, "high": 4}},
            "objectives": [{"metric": "clean_acc", "mode": "max"}, {"metric": "pgd_acc@2", "mode": "max"}],
            "sampler": {"name": "random", "seed": 0},
            "num_trials": 4,
            "max_concurrent": 2,
        }
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    events = []
    outcome = run_study(spec, storage=tmp_path / "studies", tracking_uri=uri, on_progress=events.append)

    assert outcome.study_dir == tmp_path / "studies" / "e2e"
    assert outcome.counts == {"total": 4, "finished": 4, "gated": 0, "failed": 0, "stopped": 0, "unfinished": 0,
                              "runs": 4}  # fmt: skip
    assert not outcome.interrupted and outcome.wall_seconds is not None
    assert events and events[-1].done == 4 and events[-1].failed == 0
    assert events[-1].best["clean_acc"] == pytest.approx(outcome.trials["clean_acc"].max())

    study = optuna.load_study(study_name="e2e", storage=outcome.optuna_storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    assert study.metric_names == ["clean_acc", "pgd_acc@2"]  # optuna-dashboard labels the objectives
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4

    client = tracking.TrackingTarget(uri, "e2e", outcome.experiment_id).client()
    parents = client.search_runs([outcome.experiment_id], filter_string="tags.`hebbrobust.role` = 'study'")
    assert [r.info.run_id for r in parents] == [outcome.parent_run_id]
    assert parents[0].info.status == "FINISHED"
    assert "study `e2e`" in parents[0].data.tags[tracking.NOTE_TAG]  # the run's description in the UI
    assert client.get_experiment(outcome.experiment_id).tags[tracking.KIND_TAG] == tracking.TRAINING_KIND
    assert {a.path for a in client.list_artifacts(outcome.parent_run_id)} >= {
        "front.csv",
        "front.png",
        "spec.yaml",
    }
    children = outcome.trials
    assert len(children) == 4 and set(children["status"]) == {"FINISHED"}
    for column in ("clean_acc", "pgd_acc@2", "unconverged_frac"):
        assert children[column].notna().all(), column
    for run_id in children["run_id"]:
        run = client.get_run(run_id)
        assert run.data.tags[tracking.PARENT_TAG] == outcome.parent_run_id
        name = run.info.run_name  # kind, searched params, trial id: `local p=3 (5ac3_00001)`
        assert name.startswith(f"{run.data.params['model.kind']} p=") and run.data.tags[tracking.TRIAL_ID_TAG] in name
        assert "pgd_acc_eps2" in run.data.metrics
        assert "filters.png" in {a.path for a in client.list_artifacts(run_id)}
        assert run.data.params["data.train_size"] == "300"

    front = outcome.front
    assert len(front) >= 1
    finished = children[children["status"] == "FINISHED"]
    assert not any(dominated(row, finished, outcome.objectives) for _, row in front.iterrows())
    assert (outcome.study_dir / "front.csv").exists() and (outcome.study_dir / "spec.yaml").exists()
    assert all((outcome.study_dir / "trials" / t / "metrics.json").exists() for t in children["trial_id"])
    assert not any((outcome.study_dir / "trials" / t / "checkpoints").exists() for t in children["trial_id"])

    # the same study again is refused; resuming a finished one runs nothing and duplicates nothing
    with pytest.raises(HebbrobustError, match="already holds study 'e2e'"):
        run_study(spec, storage=tmp_path / "studies", tracking_uri=uri)
    again = resume_study(outcome.study_dir)
    assert again.counts == outcome.counts
    assert len(optuna.load_study(study_name="e2e", storage=outcome.optuna_storage).trials) == 4

    listed = list_studies(tmp_path / "studies")
    assert listed[["name", "num_trials", "complete", "failed"]].values.tolist() == [["e2e", 4, 4, 0]]
    shown = show_study("e2e", storage=tmp_path / "studies")
    assert shown.front["run_id"].tolist() == front["run_id"].tolist()
    for root in (tmp_path / "studies", None):  # a storage root holding one study stands for it
        assert show_study(root, storage=tmp_path / "studies").study_dir == outcome.study_dir


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_failing_trial_is_recorded_and_the_study_goes_on(local_ray, tmp_path: Path) -> None:
    from hebbrobust.study import run_study

    spec = StudySpec.model_validate(
        {
            "name": "fails",
            "base": {**TINY_BASE, "attack": {**TINY_BASE["attack"], "enabled": False}},
            "space": {"model.kernel": [3, 9]},  # 9 > the 8x8 digits: that trial raises
            "objectives": [{"metric": "clean_acc", "mode": "max"}],
            "sampler": {"name": "grid", "seed": 0},
            "num_trials": 2,
            "max_concurrent": 2,
            "seeds": 2,
        }
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    outcome = run_study(spec, storage=tmp_path, tracking_uri=uri)
    assert outcome.counts["finished"] == 1 and outcome.counts["failed"] == 1
    states = sorted(t.state.name for t in optuna.load_study(study_name="fails", storage=outcome.optuna_storage).trials)
    assert states == ["COMPLETE", "FAIL"]
    failed = outcome.trials[outcome.trials["status"] == "FAILED"].iloc[0]
    assert "larger than the 8x8 images" in failed["reason"]
    client = tracking.TrackingTarget(uri, "fails", outcome.experiment_id).client()
    assert "traceback.txt" in {a.path for a in client.list_artifacts(failed["run_id"])}
    assert outcome.front["model.kernel"].tolist() == [3]
    # two seeds: the mean is the objective, the spread is recorded, each seed keeps its files
    done = outcome.trials[outcome.trials["status"] == "FINISHED"].iloc[0]
    assert done["clean_acc_std"] >= 0 and 0 < done["clean_acc"] <= 1
    seeds = json.loads((outcome.study_dir / "trials" / done["trial_id"] / "seed1" / "metrics.json").read_text())
    assert seeds["config"]["seed"] == 1
    paths = {a.path for a in client.list_artifacts(done["run_id"], "seed1")}
    assert "seed1/filters.png" in paths
    assert "seed1/clean_acc" in client.get_run(done["run_id"]).data.metrics
