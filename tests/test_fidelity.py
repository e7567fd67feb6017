"""Hypervolume, MOASHA's promotions, the validation split and rung reports (issue 20)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from hebbrobust import hypervolume as hv
from hebbrobust.config import AttackConfig, DataConfig, StudySpec, TrialConfig, with_params
from hebbrobust.data import load_dataset, split_validation
from hebbrobust.errors import TrialError
from hebbrobust.trial import RungPlan, run_trial, rung_epochs

# --------------------------------------------------------------------------- hypervolume


def brute_hypervolume(points: np.ndarray, maximise: list[bool], ref: np.ndarray) -> float:
    """Exact inclusion-exclusion over every subset of the points' boxes (for a handful of points):
    each point dominates the box between it and the reference; the union's volume is
    sum over non-empty subsets S of (-1)^(|S|+1) * volume(intersection of S's boxes)."""
    sign = np.where(maximise, 1.0, -1.0)
    pts, r = points * sign, ref * sign  # all maximised: box of p is [r, p] where p > r
    pts = pts[np.all(pts > r, axis=1)]
    total = 0.0
    for size in range(1, len(pts) + 1):
        for subset in itertools.combinations(range(len(pts)), size):
            corner = pts[list(subset)].min(axis=0)  # the intersection of boxes [r, p]
            total += (-1) ** (size + 1) * float(np.prod(corner - r))
    return total


@pytest.mark.parametrize("seed", range(12))
def test_hypervolume_equals_inclusion_exclusion(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = 2 + seed % 2  # 2 and 3 objectives
    n = 1 + seed % 6  # 1..6 points
    modes = ["max", "min", "max"][:m]
    objectives = [(f"o{j}", modes[j]) for j in range(m)]
    points = rng.uniform(0, 1, size=(n, m)).round(2)  # rounding makes ties and dominated points
    ref = hv.reference_point(objectives)  # 0 for max, 1 for min
    got = hv.hypervolume(points, objectives, ref)
    want = brute_hypervolume(points, [md == "max" for md in modes], ref)
    assert got == pytest.approx(want, abs=1e-12)


def test_hypervolume_of_known_fronts_and_refs() -> None:
    acc_rob = [("clean_acc", "max"), ("pgd_acc@2", "max")]
    ref = hv.reference_point(acc_rob)
    assert list(ref) == [0.0, 0.0]
    assert hv.hypervolume(np.array([[0.9, 0.5]]), acc_rob, ref) == pytest.approx(0.45)
    # two points: 0.9*0.5 + 0.5*0.8 - 0.5*0.5
    assert hv.hypervolume(np.array([[0.9, 0.5], [0.5, 0.8]]), acc_rob, ref) == pytest.approx(0.6)
    # a dominated point and a NaN row add nothing; a point below the reference adds nothing
    pts = np.array([[0.9, 0.5], [0.5, 0.8], [0.4, 0.4], [np.nan, 0.9], [-0.1, 0.99]])
    assert hv.hypervolume(pts, acc_rob, ref) == pytest.approx(0.6)
    mixed = [("clean_acc", "max"), ("train_seconds", "min")]
    ref2 = hv.reference_point(mixed, [None, 100.0])
    assert list(ref2) == [0.0, 100.0]
    assert hv.hypervolume(np.array([[0.8, 60.0]]), mixed, ref2) == pytest.approx(0.8 * 40)
    with pytest.raises(ValueError, match="reference values"):
        hv.reference_point(mixed, [1.0])


def test_history_against_trials_and_hours() -> None:
    t0 = pd.Timestamp("2026-01-01")
    trials = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d"],
            "status": ["FINISHED", "FAILED", "KILLED", "FINISHED"],
            "clean_acc": [0.5, np.nan, 0.99, 0.9],
            "rob": [0.5, np.nan, 0.99, 0.2],
            "start_time": [t0, t0, t0, t0],
            # d ends before c: the history follows end times
            "end_time": [t0 + pd.Timedelta(hours=1), t0 + pd.Timedelta(hours=2),
                         t0 + pd.Timedelta(hours=4), t0 + pd.Timedelta(hours=3)],
        }
    )  # fmt: skip
    objectives = [("clean_acc", "max"), ("rob", "max")]
    ref = hv.reference_point(objectives)
    hist = hv.history(trials, objectives, ref)
    assert list(hist["trial_id"]) == ["a", "b", "d", "c"]
    assert list(hist["trial"]) == [1, 2, 3, 4]
    assert list(hist["hours"]) == pytest.approx([1, 3, 6, 10])  # every run's hours count, stopped ones too
    # the KILLED (stopped) row is never on the front, whatever its values
    assert list(hist["hypervolume"]) == pytest.approx([0.25, 0.25, 0.25 + 0.4 * 0.2, 0.25 + 0.4 * 0.2])
    assert hv.front_hypervolume(trials, objectives, ref) == pytest.approx(0.33)
    hours = hv.trial_hours(pd.DataFrame({"train_seconds": [3600.0, 1800.0], "attack_seconds": [0.0, 1800.0]}))
    assert list(hours) == pytest.approx([1.0, 1.0])


def test_dominated_share() -> None:
    objectives = [("a", "max"), ("b", "min")]
    front = np.array([[0.5, 0.5], [0.9, 0.9], [0.1, 0.1]])
    other = np.array([[0.6, 0.4]])  # dominates only (0.5, 0.5)
    assert hv.dominated_share(front, other, objectives) == pytest.approx(1 / 3)
    assert hv.dominated_share(front, front, objectives) == 0.0  # equal points do not dominate
    assert hv.dominated_share(front, np.zeros((0, 2)), objectives) == 0.0
    assert math.isnan(hv.dominated_share(np.zeros((0, 2)), other, objectives))


# --------------------------------------------------------------------------- MOASHA


MAXMAX = [("val_clean_acc", "max"), ("val_pgd_acc@2", "max")]


def test_rank_for_promotion_is_rank_then_crowding() -> None:
    # front: (0.9, 0.1), (0.5, 0.5), (0.1, 0.9), (0.45, 0.55); second rank: (0.4, 0.4), (0.2, 0.2) is third
    pts = np.array([[0.4, 0.4], [0.9, 0.1], [0.2, 0.2], [0.5, 0.5], [0.1, 0.9], [0.45, 0.55]])
    order = list(hv.rank_for_promotion(pts, MAXMAX))
    assert set(order[:4]) == {1, 3, 4, 5} and order[4:] == [0, 2]
    assert set(order[:2]) == {1, 4}  # a rank's ends (infinite crowding distance) first
    # crowding: (0.5, 0.5) has neighbours (0.9, 0.1) and (0.45, 0.55) -> 0.45/0.8 + 0.45/0.8;
    # (0.45, 0.55) has (0.5, 0.5) and (0.1, 0.9) -> 0.4/0.8 + 0.4/0.8: (0.5, 0.5) goes first
    assert order[2:4] == [3, 5]


def hand_made_rung(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, 2)).round(3)


@pytest.mark.parametrize("seed", range(5))
def test_moasha_promotes_exactly_the_best_share_at_a_rung(seed: int) -> None:
    from hebbrobust.numeric import pareto_rank
    from hebbrobust.study.moasha import MOASHA, promoted

    points = hand_made_rung(9, seed)
    mask = promoted(points, MAXMAX, reduction=3)
    assert mask.sum() == 3  # ceil(9 / 3)
    # the promoted ones are at least as well ranked (non-dominated sorting) as any other
    ranks = pareto_rank(pd.DataFrame(points, columns=[m for m, _ in MAXMAX]), MAXMAX).to_numpy(dtype=int)
    assert ranks[mask].max() <= ranks[~mask].min()
    # a rung whose front is exactly the share (3 of 9 with reduction 3): the trial that reports last,
    # whichever it is, goes on iff it is on that front
    front = np.array([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]])
    dominated = np.array([[0.8, 0.05], [0.4, 0.4], [0.05, 0.8], [0.3, 0.3], [0.2, 0.2], [0.1, 0.1]])
    rung = np.vstack([front, dominated])
    assert promoted(rung, MAXMAX, 3).tolist() == [True] * 3 + [False] * 6
    order = np.random.default_rng(seed).permutation(9)
    for last in range(9):
        sched = MOASHA(MAXMAX, reduction=3)
        for i in order:
            if i != last:
                sched.decide(f"t{i}", 0, rung[i])
        assert sched.decide(f"t{last}", 0, rung[last]) == (last < 3)
        assert (f"t{last}" in sched.stopped) == (last >= 3)
    # fed front first, every dominated trial that arrives once the whole front is there is stopped
    sched = MOASHA(MAXMAX, reduction=3)
    for i in range(9):
        sched.decide(f"t{i}", 0, rung[i])
    assert set(sched.stopped) >= {f"t{i}" for i in range(3, 9)}


def test_moasha_is_asynchronous_and_rungs_apart() -> None:
    from ray.tune.schedulers import TrialScheduler

    from hebbrobust.study.moasha import MOASHA, RUNG_KEY

    class FakeTrial:  # what the scheduler reads of a Tune trial
        def __init__(self, trial_id: str) -> None:
            self.trial_id = trial_id

    sched = MOASHA(MAXMAX, reduction=3)
    assert isinstance(sched, TrialScheduler)
    report = lambda rung, a, b: {RUNG_KEY: rung, "val_clean_acc": a, "val_pgd_acc@2": b}  # noqa: E731
    # the first trial at a rung always goes on; the second only if it is better (ceil(2/3) = 1)
    assert sched.on_trial_result(None, FakeTrial("a"), report(0, 0.5, 0.5)) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, FakeTrial("b"), report(0, 0.4, 0.4)) == TrialScheduler.STOP
    assert sched.on_trial_result(None, FakeTrial("c"), report(0, 0.6, 0.6)) == TrialScheduler.CONTINUE
    # four at the rung: ceil(4/3) = 2 go on; d is on the front with c (a is dominated now)
    assert sched.on_trial_result(None, FakeTrial("d"), report(0, 0.9, 0.1)) == TrialScheduler.CONTINUE
    # rung 1 is its own comparison; a missing objective counts as worst
    assert sched.on_trial_result(None, FakeTrial("c"), report(1, 0.6, 0.6)) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, FakeTrial("d"), {RUNG_KEY: 1, "val_clean_acc": 0.9}) == TrialScheduler.STOP
    # the final report (no rung) passes
    assert sched.on_trial_result(None, FakeTrial("c"), {"clean_acc": 0.9}) == TrialScheduler.CONTINUE
    assert sched.stopped == {"b": 0, "d": 1}
    assert "rung 0: 4" in sched.debug_string()


def test_moasha_ranks_each_model_kind_apart_at_a_rung() -> None:
    """Hand-made rung reports of two kinds, every local one dominated by every backprop one: each kind
    keeps exactly its own non-dominated share (ceil(n_kind / 3)); pooled, no local trial would."""
    from ray.tune.schedulers import TrialScheduler

    from hebbrobust.study.moasha import MOASHA, RUNG_KEY, promoted

    class FakeTrial:
        def __init__(self, trial_id: str, config: dict) -> None:
            self.trial_id, self.config = trial_id, config

    local = np.array([[0.6, 0.1], [0.3, 0.4], [0.5, 0.05], [0.2, 0.3], [0.1, 0.1], [0.25, 0.2]])  # front: 0, 1
    backprop = np.array([[0.95, 0.6], [0.9, 0.5], [0.8, 0.45]])  # front: 0
    reports = [("local", f"l{i}", p) for i, p in enumerate(local)] + [("backprop", f"b{i}", p) for i, p in
                                                                        enumerate(backprop)]  # fmt: skip
    keeps = {"l0", "l1", "b0"}
    assert promoted(local, MAXMAX, 3).tolist() == [True, True] + [False] * 4
    assert not promoted(np.vstack([local, backprop]), MAXMAX, 3)[: len(local)].any()  # pooled: every local stops
    order = np.random.default_rng(0).permutation(len(reports))
    for last in range(len(reports)):
        for searched in (True, False):
            sched = MOASHA(MAXMAX, reduction=3)
            decisions = {}
            for i in [*(i for i in order if i != last), last]:  # the trial `last` reports when all others have
                kind, trial_id, (a, b) = reports[i]
                config = {"model.kind": kind, "head.lr": 0.01} if searched else {"head.lr": 0.01}
                result = {RUNG_KEY: 0, "val_clean_acc": a, "val_pgd_acc@2": b}
                decisions[trial_id] = sched.on_trial_result(None, FakeTrial(trial_id, config), result)
            trial_id = reports[last][1]
            if searched:
                assert (decisions[trial_id] == TrialScheduler.CONTINUE) == (trial_id in keeps), trial_id
            else:  # one kind (not searched): today's pooled ranking, where the best 3 of 9 are backprop's
                assert (decisions[trial_id] == TrialScheduler.CONTINUE) == trial_id.startswith("b"), trial_id


# --------------------------------------------------------------------------- validation split

TINY = TrialConfig.model_validate({
    "data": {"name": "digits", "train_size": 300, "test_size": 100, "val_fraction": 0.2},
    "model": {"filters": 16, "kernel": 3},
    "rule": {"epochs": 3, "batch_size": 50},
    "head": {"epochs": 3, "batch_size": 100},
    "backprop": {"epochs": 3, "batch_size": 100},
    "attack": {"enabled": False},
})  # fmt: skip


def test_split_validation_is_seeded_and_disjoint() -> None:
    train = np.arange(10, 110)
    tr, va = split_validation(train, 0.25)
    assert len(va) == 25 and len(tr) == 75
    assert set(tr) | set(va) == set(train) and not set(tr) & set(va)
    tr2, va2 = split_validation(train, 0.25)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    tr0, va0 = split_validation(train, 0.0)
    assert np.array_equal(tr0, train) and len(va0) == 0


def test_validation_images_come_from_training_never_test(tmp_path) -> None:
    """An image folder whose every image is unique (its index written in its pixels): the validation
    split holds training images only, none of the test set, none that training keeps."""
    from PIL import Image

    for split, count in (("train", 40), ("test", 20)):
        for i in range(count):
            cls = f"c{i % 2}"
            (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
            code = i + (1000 if split == "test" else 0)
            pixels = np.zeros((4, 4), dtype=np.uint8)
            pixels[0, 0], pixels[0, 1] = code // 256, code % 256
            Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    cfg = DataConfig(name="image_folder", path=tmp_path, val_fraction=0.25, cache_dir=tmp_path / "cache")
    ds = load_dataset(cfg)

    def codes(x: torch.Tensor) -> set[int]:
        raw = (x[:, 0, 0, :2] * 255).round().long()
        return set((raw[:, 0] * 256 + raw[:, 1]).tolist())

    val, train, test = codes(ds.x_val), codes(ds.x_train), codes(ds.x_test)
    assert len(val) == 10 and len(train) == 30 and len(test) == 20
    assert not val & test and not val & train
    assert val | train == set(range(40))
    plain = load_dataset(cfg.model_copy(update={"val_fraction": 0.0}))
    assert len(plain.x_val) == 0 and codes(plain.x_train) == set(range(40))


def test_moasha_spec_needs_a_validation_split() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        StudySpec.model_validate({"scheduler": {"name": "moasha"}, "space": {"head.lr": [0.01]}})
    with pytest.raises(ValueError, match="increasing list of fractions"):
        StudySpec.model_validate({"scheduler": {"name": "moasha", "rungs": [0.5, 0.2]}})
    spec = StudySpec.model_validate(
        {"scheduler": {"name": "moasha", "rungs": [0.25]}, "base": {"data": {"val_fraction": 0.2}}}
    )
    assert spec.scheduler.reduction == 3


# --------------------------------------------------------------------------- rung reports


def test_rung_epochs() -> None:
    assert rung_epochs((1 / 9, 1 / 3), 9) == {1: [(0, 1 / 9)], 3: [(1, 1 / 3)]}
    assert rung_epochs((1 / 9, 1 / 3), 2) == {1: [(0, 1 / 9), (1, 1 / 3)]}
    assert rung_epochs((0.5,), 3) == {2: [(0, 0.5)]}


@pytest.mark.parametrize("kind", ["local", "backprop"])
def test_a_trial_reports_at_its_rungs_on_validation_data(kind: str) -> None:
    cfg = with_params(TINY, {"model.kind": kind, "rule.epochs": 6, "backprop.epochs": 6})
    seen: list[tuple[str, int]] = []
    rungs: list[tuple[int, float, dict]] = []
    attack = AttackConfig(eps=(2.0,), n_images=20, radius_images=0, pgd_steps=3)
    plan = RungPlan((1 / 3, 2 / 3), attack, lambda i, r, m: rungs.append((i, r, m)))
    result = run_trial(cfg, on_epoch=lambda s, e, t, m: seen.append((s, e)), rungs=plan)
    assert [(i, r) for i, r, _ in rungs] == [(0, 1 / 3), (1, 2 / 3)]
    for _, _, metrics in rungs:
        assert 0 <= metrics["clean_acc"] <= 1 and "pgd_acc@2" in metrics
        assert metrics["grid_images"] == 20  # the attack ran on the validation subset's images
    assert result.metrics["n_val"] == 60 and result.metrics["n_train"] == 240
    assert seen.count(("filters" if kind == "local" else "backprop", 6)) == 1  # training went on to the end
    # the probe head / rung measurement leaves the trial's own training as it was
    plain = run_trial(cfg)
    assert plain.metrics["clean_acc"] == result.metrics["clean_acc"]
    assert plain.filters is not None and result.filters is not None and torch.equal(plain.filters, result.filters)


def test_rungs_need_a_validation_split() -> None:
    cfg = with_params(TINY, {"data.val_fraction": 0.0})
    plan = RungPlan((0.5,), AttackConfig(enabled=False), lambda i, r, m: None)
    with pytest.raises(TrialError, match="val_fraction"):
        run_trial(cfg, rungs=plan)


# --------------------------------------------------------------------------- a MOASHA study (real Ray + MLflow)

STUDY_BASE = {
    "data": {"name": "digits", "train_size": 300, "test_size": 120, "val_fraction": 0.2},
    "model": {"filters": 8, "kernel": 3, "pool": 2},
    "rule": {"epochs": 3, "batch_size": 100},
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


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_moasha_study_prunes_stopped_trials_and_keeps_them_off_the_front(local_ray, tmp_path) -> None:
    import optuna

    from hebbrobust import tracking
    from hebbrobust.study import resume_study, run_study
    from hebbrobust.study.record import STOPPED_ATTR, TUNE_TRIAL_ATTR

    spec = StudySpec.model_validate(
        {
            "name": "mo",
            "base": STUDY_BASE,
            "space": {"model.kind": ["local", "backprop"], "head.lr": {"type": "float", "low": 1e-4, "high": 1e-1,
                                                                       "log": True}},
            "objectives": [{"metric": "clean_acc", "mode": "max"}, {"metric": "pgd_acc@2", "mode": "max"}],
            "sampler": {"name": "random", "seed": 3},
            # reduction 100: at the rung only the best so far goes on, so most later trials stop
            "scheduler": {"name": "moasha", "rungs": [1 / 3], "reduction": 100, "rung_images": 30},
            "num_trials": 6,
            "max_concurrent": 2,
            "filter_cache": False,
        }
    )  # fmt: skip
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    events: list = []
    outcome = run_study(spec, storage=tmp_path / "studies", tracking_uri=uri, on_progress=events.append)
    c = outcome.counts
    assert c["finished"] >= 1 and c["stopped"] >= 1, c
    assert c["finished"] + c["stopped"] == 6 and c["failed"] == 0 and c["unfinished"] == 0
    assert events[-1].stopped == c["stopped"] and events[-1].done == c["finished"]

    study = optuna.load_study(study_name="mo", storage=outcome.optuna_storage)
    states = {t.user_attrs[TUNE_TRIAL_ATTR]: t for t in study.trials}
    trials = outcome.trials
    stopped = trials[trials["stopped_at_rung"].notna()]
    assert len(stopped) == c["stopped"] and set(stopped["status"]) == {"KILLED"}
    assert (stopped["stopped_at_rung"] == 0).all()
    for trial_id in stopped["trial_id"]:  # PRUNED in Optuna, never COMPLETE with the rung's values
        assert states[trial_id].state.name == "PRUNED" and states[trial_id].values is None
        assert states[trial_id].user_attrs[STOPPED_ATTR] == 0
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == c["finished"]
    assert not trials.loc[stopped.index, "on_front"].any()
    assert set(outcome.front["status"]) == {"FINISHED"}

    client = tracking.TrackingTarget(uri, "mo", outcome.experiment_id).client()
    for run_id in stopped["run_id"]:
        run = client.get_run(run_id)
        assert run.data.tags[tracking.STOPPED_TAG] == "0" and "MOASHA" in run.data.tags[tracking.REASON_TAG]
        assert "rung/val_clean_acc" in run.data.metrics and "clean_acc" not in run.data.metrics
    for run_id in trials.loc[trials["status"] == "FINISHED", "run_id"]:  # promoted: reported at the rung too
        assert "rung/val_clean_acc" in client.get_run(run_id).data.metrics

    # the front's hypervolume, on the parent run and in the study directory
    from hebbrobust import hypervolume as hv

    ref = hv.reference_point(outcome.objectives)
    assert outcome.hypervolume == pytest.approx(hv.hypervolume(
        outcome.front[["clean_acc", "pgd_acc@2"]].to_numpy(dtype=float), outcome.objectives, ref))  # fmt: skip
    assert outcome.hypervolume > 0
    assert client.get_run(outcome.parent_run_id).data.metrics["hypervolume"] == pytest.approx(outcome.hypervolume)
    history = pd.read_csv(outcome.study_dir / "hypervolume.csv")
    assert len(history) == 6 and history["hypervolume"].iloc[-1] == pytest.approx(outcome.hypervolume)

    # resuming counts the stopped trials as done: nothing runs again
    again = resume_study(outcome.study_dir)
    assert again.resumed["stopped"] == c["stopped"] and again.resumed["remaining"] == 0
    assert len(optuna.load_study(study_name="mo", storage=outcome.optuna_storage).trials) == 6


# --------------------------------------------------------------------------- study compare


def test_compare_table_on_hand_made_trials() -> None:
    from hebbrobust.compare import compare_table, kind_fronts

    objectives = [("acc", "max"), ("rob", "max")]
    a = pd.DataFrame({"trial_id": ["1", "2", "3"], "status": ["FINISHED", "FINISHED", "FAILED"],
                      "acc": [0.9, 0.5, np.nan], "rob": [0.1, 0.5, np.nan],
                      "model.kind": ["local", "backprop", "local"],
                      "train_seconds": [3600.0, 0.0, 0.0]})  # fmt: skip
    b = pd.DataFrame({"trial_id": ["1", "2"], "status": ["FINISHED", "KILLED"], "acc": [0.95, 0.99],
                      "rob": [0.2, 0.99], "stopped_at_rung": [None, 0], "model.kind": ["local", "local"]})  # fmt: skip
    table, dominance, histories = compare_table({"A": a, "B": b}, objectives, hv.reference_point(objectives))
    rows = table.set_index("study")
    assert rows.loc["A", "hypervolume"] == pytest.approx(0.09 + 0.25 - 0.05)
    assert rows.loc["B", "hypervolume"] == pytest.approx(0.95 * 0.2)  # the stopped trial is not on B's front
    assert rows.loc["A", ["finished", "failed", "stopped"]].tolist() == [2, 1, 0]
    assert rows.loc["B", ["finished", "failed", "stopped"]].tolist() == [1, 0, 1]
    assert rows.loc["A", "hours"] == pytest.approx(1.0)
    assert rows.loc["A", "dominated_by_B"] == pytest.approx(0.5)  # (0.95, 0.2) dominates (0.9, 0.1) only
    assert rows.loc["B", "dominated_by_A"] == 0.0
    assert dominance.loc["A", "B"] == pytest.approx(0.5) and set(histories) == {"A", "B"}
    fronts = kind_fronts({"A": a, "B": b}, objectives)
    assert set(fronts) == {"backprop", "local"}
    assert len(fronts["local"]["A"]) == 1 and len(fronts["backprop"]["B"]) == 0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_study_compare_on_two_real_studies(local_ray, tmp_path) -> None:
    import shutil

    import yaml
    from typer.testing import CliRunner

    from hebbrobust import tracking
    from hebbrobust.cli import app
    from hebbrobust.compare import EXPERIMENT, compare_studies
    from hebbrobust.study import run_study

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = {**STUDY_BASE, "data": {**STUDY_BASE["data"], "val_fraction": 0.0}}
    dirs = []
    for name, sampler in (("rand", "random"), ("tpe", "tpe")):
        spec = StudySpec.model_validate({
            "name": name, "base": base,
            "space": {"model.kind": ["local", "backprop"], "head.lr": {"type": "float", "low": 1e-3, "high": 1e-1}},
            "sampler": {"name": sampler, "seed": 1}, "num_trials": 3, "max_concurrent": 2,
        })  # fmt: skip
        dirs.append(run_study(spec, storage=tmp_path / "studies", tracking_uri=uri).study_dir)

    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["study", "compare", "rand", "tpe", "--out", str(out),
                                      "--storage", str(tmp_path / "studies")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "study comparison" in result.output and "logged to MLflow run" in result.output
    for name in ("compare.csv", "compare.md", "compare.html", "fronts.png", "hypervolume.png", "hypervolume.csv",
                 "dominance.csv"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    table = pd.read_csv(out / "compare.csv").set_index("study")
    assert table.loc["rand", "trials"] == 3 and table.loc["tpe", "finished"] == 3
    assert table.loc["rand", "sampler"] == "random" and table.loc["tpe", "sampler"] == "tpe"
    for name, study_dir in zip(("rand", "tpe"), dirs, strict=True):  # the study's own figure agrees
        assert table.loc[name, "hypervolume"] == pytest.approx(pd.read_csv(study_dir / "hypervolume.csv")
                                                               ["hypervolume"].iloc[-1])  # fmt: skip
        assert 0 <= table.loc[name, f"dominated_by_{'tpe' if name == 'rand' else 'rand'}"] <= 1
    assert "fronts.png" in (out / "compare.md").read_text() and "<img" in (out / "compare.html").read_text()
    target = tracking.find_experiment(uri, EXPERIMENT)
    assert target is not None
    runs = target.client().search_runs([target.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["hypervolume.rand"] == pytest.approx(table.loc["rand", "hypervolume"])
    assert {a.path for a in target.client().list_artifacts(runs[0].info.run_id)} >= {"compare.html", "fronts.png"}

    # a study on other objectives is refused in one line
    other = tmp_path / "studies" / "other"
    shutil.copytree(dirs[0], other)
    doc = yaml.safe_load((other / "spec.yaml").read_text())
    doc["objectives"][1]["mode"] = "min"
    (other / "spec.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(Exception, match="differ from rand's"):
        compare_studies([dirs[0], other], tmp_path / "cmp2", log=False)
    result = CliRunner().invoke(app, ["study", "compare", str(dirs[0]), str(other), "--out", str(tmp_path / "c3")])
    assert result.exit_code != 0 and "studies compare only on the same objectives" in result.output
    assert len([line for line in result.output.strip().splitlines() if line.strip()]) <= 3


def test_a_rung_attacks_few_images_at_the_objectives_eps_only() -> None:
    from hebbrobust.study.trainable import rung_attack, rung_report

    spec = StudySpec.model_validate({
        "base": {"data": {"val_fraction": 0.2}, "attack": {"eps": [2, 8, 16], "n_images": 50, "radius_images": 40}},
        "objectives": [{"metric": "clean_acc"}, {"metric": "pgd_acc@8"}],
        "scheduler": {"name": "moasha", "rung_images": 100},
    })  # fmt: skip
    attack = rung_attack(spec, spec.base)
    assert attack.eps == (8.0,) and attack.n_images == 50 and attack.radius_images == 0
    radius = spec.model_copy(update={"objectives": [*spec.objectives[:1], *StudySpec.model_validate(
        {"objectives": [{"metric": "pgd_R"}]}).objectives]})  # fmt: skip
    assert rung_attack(radius, spec.base).radius_images == 40
    report = rung_report(1, 0.5, {"clean_acc": 0.9, "pgd_acc@8": 0.4}, [("clean_acc", "max"), ("pgd_acc@8", "max")])
    assert report["val_clean_acc"] == 0.9 and report["val_pgd_acc@8"] == 0.4
    assert math.isnan(report["clean_acc"]) and math.isnan(report["pgd_acc@8"])  # never values Optuna could take
