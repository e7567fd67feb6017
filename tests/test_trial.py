from pathlib import Path

import pytest
import torch

from hebbrobust.config import TrialConfig, load_trial, with_params
from hebbrobust.errors import TrialError
from hebbrobust.train import check_filters
from hebbrobust.trial import run_trial

ROOT = Path(__file__).resolve().parents[1]
TINY = TrialConfig.model_validate({
    "data": {"name": "digits", "train_size": 300, "test_size": 100},
    "model": {"filters": 16, "kernel": 3},
    "rule": {"epochs": 2, "batch_size": 50},
    "head": {"epochs": 3, "batch_size": 100},
    "backprop": {"epochs": 3, "batch_size": 100},
    "attack": {"enabled": False},
})


@pytest.mark.parametrize("kind", ["local", "backprop"])
def test_same_seed_same_metrics(kind: str) -> None:
    cfg = with_params(TINY, {"model.kind": kind})
    a, b = run_trial(cfg), run_trial(cfg)
    assert a.metrics["clean_acc"] == b.metrics["clean_acc"]
    assert a.filters is not None and b.filters is not None and torch.equal(a.filters, b.filters)
    assert a.curves == b.curves
    c = run_trial(with_params(cfg, {"seed": 1}))
    assert c.filters is not None and not torch.equal(a.filters, c.filters)


def test_curves_and_callback() -> None:
    seen: list[tuple[str, int, int]] = []
    result = run_trial(TINY, on_epoch=lambda stage, e, t, m: seen.append((stage, e, t)))
    assert seen == [("filters", 1, 2), ("filters", 2, 2), ("head", 1, 3), ("head", 2, 3), ("head", 3, 3)]
    assert len(result.curves["filters/unconverged_frac"]) == 2 and len(result.curves["head/loss"]) == 3


def test_divergence_is_a_trial_error_with_reason() -> None:
    with pytest.raises(TrialError, match="NaN or infinite"):
        run_trial(with_params(TINY, {"rule.init_std": 1e20, "rule.p": 4}))
    blue_wall = -torch.rand(10, 9)
    blue_wall[0] = 1.0
    with pytest.raises(TrialError, match="Blue Wall of Death"):
        check_filters(blue_wall)
    check_filters(torch.rand(10, 9))


class _Cut(Exception):
    pass


def test_checkpoint_resumes_a_cut_off_run_to_the_same_result(tmp_path: Path) -> None:
    full = run_trial(TINY)

    def cut(stage: str, epoch: int, total: int, metrics: dict[str, float]) -> None:
        if stage == "head" and epoch == 2:
            raise _Cut  # dies in epoch 2, before its checkpoint: epoch 1 is the last saved

    with pytest.raises(_Cut):
        run_trial(TINY, on_epoch=cut, checkpoint_dir=tmp_path)
    assert (tmp_path / "filters.pt").exists() and (tmp_path / "head.pt").exists()
    seen: list[tuple[str, int]] = []
    # other attack settings do not invalidate the training checkpoints
    attacked = with_params(TINY, {"attack.enabled": True, "attack.n_images": 20, "attack.radius_images": 0})
    resumed = run_trial(attacked, on_epoch=lambda s, e, t, m: seen.append((s, e)), checkpoint_dir=tmp_path)
    assert [x for x in seen if x[0] != "attacks"] == [("head", 2), ("head", 3)]  # the rest came from checkpoints
    # attacks report progress too: 1 batch x 4 eps of the grid, then the masking checks (no radii asked)
    assert [x for x in seen if x[0] == "attacks"] == [("attacks", i) for i in range(1, 6)]
    assert "pgd_acc@2" in resumed.metrics
    assert resumed.metrics["clean_acc"] == full.metrics["clean_acc"] and resumed.curves == full.curves
    assert resumed.filters is not None and full.filters is not None and torch.equal(resumed.filters, full.filters)


def test_a_run_cut_in_filter_training_resumes_from_its_float64_master(tmp_path: Path) -> None:
    """The filters' updates add up in float64 (rule.accumulate): the checkpoint holds that master, so a
    resumed run ends bit for bit where an uncut one does; float32 accumulation gives other filters."""
    cfg = with_params(TINY, {"rule.epochs": 3})
    full = run_trial(cfg)

    def cut(stage: str, epoch: int, total: int, metrics: dict[str, float]) -> None:
        if stage == "filters" and epoch == 2:
            raise _Cut  # epoch 1 is the last saved

    with pytest.raises(_Cut):
        run_trial(cfg, on_epoch=cut, checkpoint_dir=tmp_path)
    saved = torch.load(tmp_path / "filters.pt")
    assert saved["epoch"] == 1 and saved["weights"].dtype == torch.float64
    resumed = run_trial(cfg, checkpoint_dir=tmp_path)
    assert resumed.filters is not None and full.filters is not None and torch.equal(resumed.filters, full.filters)
    single = run_trial(with_params(cfg, {"rule.accumulate": "float32"}))
    assert single.filters is not None and not torch.equal(single.filters, full.filters)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "backprop"])
def test_quickstart_base_trial_reaches_90_percent(kind: str) -> None:
    cfg = load_trial(ROOT / "studies" / "quickstart.yaml", [f"model.kind={kind}", "attack.enabled=false"])
    result = run_trial(cfg)
    assert result.metrics["clean_acc"] >= 0.90, result.metrics


def test_a_finished_head_resumes_without_recomputing_pool_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hebbrobust.trial as train  # run_trial's reference to train.pool_features

    calls: list[int] = []
    original = train.pool_features

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "pool_features", counting)
    first = run_trial(TINY, checkpoint_dir=tmp_path)
    assert calls == [1]
    again = run_trial(TINY, checkpoint_dir=tmp_path)  # every stage is checkpointed as finished
    assert calls == [1] and again.metrics["clean_acc"] == first.metrics["clean_acc"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("activation", "power"), [("elu", 16), ("relu", 6), ("gelu", 3), ("relu", 1), ("rexp", 1)])
def test_head_on_activations_computed_once_equals_sigma_per_batch(
    monkeypatch: pytest.MonkeyPatch, activation: str, power: int, dtype: torch.dtype
) -> None:
    """sigma^n applied once to all pool outputs (activated_features) trains the same head, bit for bit,
    as sigma^n applied to each batch (the path when they do not fit memory)."""
    import hebbrobust.train as train

    cfg = with_params(TINY, {"model.activation": activation, "model.power": power, "head.batch_size": 64})
    monkeypatch.setattr(train, "feature_dtype", lambda model, n: dtype)  # the pool outputs as held at this size
    held: list[torch.Tensor | None] = []
    activated = train.activated_features
    monkeypatch.setattr(train, "activated_features", lambda *a, **k: held.append(activated(*a, **k)) or held[-1])
    once = run_trial(cfg)
    monkeypatch.setattr(train, "ACTIVATED_BYTES", 0)  # sigma^n never fits: applied per batch
    per_batch = run_trial(cfg)
    assert held[0] is not None and held[0].dtype == torch.float32 and held[1] is None  # both paths ran
    assert once.model is not None and per_batch.model is not None
    assert torch.equal(once.model.head.weight, per_batch.model.head.weight)
    assert once.curves == per_batch.curves and once.metrics["clean_acc"] == per_batch.metrics["clean_acc"]
