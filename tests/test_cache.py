import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_study import TINY_BASE, local_ray  # noqa: F401  (the study tests' tiny trial and real local Ray)

from hebbrobust.cache import (
    cached_features,
    cached_filters,
    clear,
    feature_key,
    filter_key,
    key_hash,
    list_entries,
    list_feature_entries,
)
from hebbrobust.config import TrialConfig, with_params
from hebbrobust.data import load_dataset
from hebbrobust.trial import run_trial

SHAPE = (1, 8, 8)


def _trainer(calls: list[int], value: float = 1.0):  # type: ignore[no-untyped-def]
    def train() -> tuple[torch.Tensor, dict[str, list[float]]]:
        calls.append(1)
        return torch.full((4, 9), value), {"unconverged_frac": [0.5, 0.25]}

    return train


def test_key_covers_filter_settings_not_head_settings() -> None:
    base = TrialConfig()
    k = key_hash(filter_key(base, SHAPE))
    for head_only in ({"model.power": 4}, {"model.activation": "gelu"}, {"model.pool": 3}, {"head.lr": 0.1}):
        assert key_hash(filter_key(with_params(base, head_only), SHAPE)) == k, head_only
    for filt in ({"rule.p": 4}, {"rule.k": 3}, {"rule.delta": 0.1}, {"model.filters": 32}, {"model.kernel": 4},
                 {"rule.epochs": 3}, {"seed": 1}, {"data.train_size": 100}, {"rule.semantics": "position"}):
        assert key_hash(filter_key(with_params(base, filt), SHAPE)) != k, filt


def test_miss_then_hit(tmp_path: Path) -> None:
    calls: list[int] = []
    content = filter_key(TrialConfig(), SHAPE)
    first = cached_filters(tmp_path, content, _trainer(calls))
    second = cached_filters(tmp_path, content, _trainer(calls, 2.0))
    assert (first.hit, second.hit) == (False, True) and len(calls) == 1
    assert torch.equal(first.weights, second.weights) and second.curves == first.curves
    entry = tmp_path / first.key
    assert json.loads((entry / "key.json").read_text())["filters"] == TrialConfig().model.filters
    rows = list_entries(tmp_path)
    assert len(rows) == 1 and rows[0]["key"] == first.key and rows[0]["bytes"] > 0
    assert clear(tmp_path, older_than_s=3600) == 0 and clear(tmp_path) == 1 and list_entries(tmp_path) == []


_WRITER = textwrap.dedent(
    """
    import sys, time, torch
    import hebbrobust.cache as cache
    from hebbrobust.config import TrialConfig
    root, mode = sys.argv[1], sys.argv[2]
    real_save = torch.save
    def slow_save(obj, path):
        real_save(obj, path)
        print("writing", flush=True)
        time.sleep(60 if mode == "hang" else 0.5)
    cache.torch.save = slow_save
    def train():
        time.sleep(1.0 if mode == "slow" else 0)
        return torch.ones(4, 9), {}
    out = cache.cached_filters(root, cache.filter_key(TrialConfig(), (1, 8, 8)), train)
    print("hit" if out.hit else "miss", flush=True)
    """
)


def _writer(root: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(root), mode], stdout=subprocess.PIPE, text=True)


def test_concurrent_trials_train_once(tmp_path: Path) -> None:
    procs = [_writer(tmp_path, "slow") for _ in range(3)]
    outs = [p.communicate(timeout=120)[0].split()[-1] for p in procs]
    assert sorted(outs) == ["hit", "hit", "miss"]


def test_killed_writer_leaves_cache_consistent(tmp_path: Path) -> None:
    proc = _writer(tmp_path, "hang")
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)  # killed mid-write: weights.pt written, meta.json not
    proc.wait(timeout=30)
    assert list_entries(tmp_path) == []  # nothing half-written is visible
    start = time.perf_counter()
    calls: list[int] = []
    got = cached_filters(tmp_path, filter_key(TrialConfig(), SHAPE), _trainer(calls))
    assert not got.hit and len(calls) == 1 and time.perf_counter() - start < 30  # lock was released
    assert len(list_entries(tmp_path)) == 1
    assert cached_filters(tmp_path, filter_key(TrialConfig(), SHAPE), _trainer(calls)).hit
    assert clear(tmp_path) >= 1  # also removes the killed writer's leftover
    assert not any(tmp_path.glob(".tmp-*"))


@pytest.mark.slow
def test_cached_trial_equals_uncached(tmp_path: Path) -> None:
    cfg = TrialConfig.model_validate({
        "data": {"name": "digits", "train_size": 200, "test_size": 50},
        "model": {"filters": 8, "kernel": 3}, "rule": {"epochs": 2, "batch_size": 50},
        "head": {"epochs": 2, "batch_size": 100}, "attack": {"enabled": False},
    })
    plain = run_trial(cfg)
    miss = run_trial(cfg, filter_cache=tmp_path)
    hit = run_trial(with_params(cfg, {"model.power": 2}), filter_cache=tmp_path)
    assert miss.metrics["filters_cache_hit"] == 0 and hit.metrics["filters_cache_hit"] == 1
    assert plain.filters is not None and hit.filters is not None and miss.filters is not None
    assert torch.equal(plain.filters, miss.filters) and torch.equal(plain.filters, hit.filters)
    assert hit.metrics["filter_seconds_saved"] > 0
    assert miss.metrics["clean_acc"] == plain.metrics["clean_acc"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_head_only_study_trains_filters_once(local_ray, tmp_path: Path) -> None:  # noqa: F811
    from hebbrobust.config import StudySpec
    from hebbrobust.study import run_study

    spec = StudySpec.model_validate({
        "name": "heads",
        "base": TINY_BASE,
        "space": {"model.power": [1, 2, 3, 4]},  # head-only: every trial can share one filter set
        "objectives": [{"metric": "clean_acc", "mode": "max"}, {"metric": "pgd_acc@2", "mode": "max"}],
        "sampler": {"name": "grid"},
        "num_trials": 4,
        "max_concurrent": 2,
    })
    events: list = []
    outcome = run_study(
        spec, storage=tmp_path / "studies", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", on_progress=events.append
    )
    trials = outcome.trials
    assert len(trials) == 4 and set(trials["status"]) == {"FINISHED"}
    assert sorted(trials["filters_cache_hit"].tolist()) == [0, 1, 1, 1]  # 1 miss, 3 hits
    assert events[-1].cache_hits == 3
    cache_dir = outcome.study_dir / "filter-cache"
    assert len(list_entries(cache_dir)) == 1
    plain = run_trial(with_params(spec.base, {"attack.enabled": False}))
    assert plain.filters is not None
    for trial_id in trials["trial_id"]:
        state = torch.load(outcome.study_dir / "trials" / trial_id / "model.pt", weights_only=True)
        assert torch.equal(state["conv_weight"], plain.filters), trial_id
    changed = run_trial(with_params(spec.base, {"rule.p": 4, "attack.enabled": False}), filter_cache=cache_dir)
    assert changed.metrics["filters_cache_hit"] == 0 and len(list_entries(cache_dir)) == 2


def test_cache_list_without_a_directory_finds_the_studies_caches(tmp_path: Path) -> None:
    """`cache list` alone lists the filter caches of the studies in --storage; a storage root that
    holds one study stands for that study in `study show/report/resume`."""
    import yaml
    from typer.testing import CliRunner

    from hebbrobust.cli import app
    from hebbrobust.errors import HebbrobustError
    from hebbrobust.study.directory import find_study_dir

    runner = CliRunner()
    empty = runner.invoke(app, ["cache", "list", "--storage", str(tmp_path)])
    assert empty.exit_code == 1 and "no study there has a filter cache" in empty.stderr, empty.output
    study_dir = tmp_path / "s1"
    (study_dir / "filter-cache").mkdir(parents=True)
    (study_dir / "study.json").write_text("{}")
    spec = {"name": "s1", "base": TINY_BASE, "space": {"rule.p": [2, 3]}, "filter_cache": True}
    (study_dir / "spec.yaml").write_text(yaml.safe_dump(spec))
    cached_filters(study_dir / "filter-cache", filter_key(TrialConfig.model_validate(TINY_BASE), SHAPE), _trainer([]))
    listed = runner.invoke(app, ["cache", "list", "--storage", str(tmp_path)], terminal_width=300)
    assert listed.exit_code == 0 and "1 filter sets" in listed.stdout and str(study_dir) in listed.stdout, listed.output
    assert find_study_dir(tmp_path) == find_study_dir(None, tmp_path) == study_dir
    (tmp_path / "s2").mkdir()
    (tmp_path / "s2" / "study.json").write_text("{}")
    with pytest.raises(HebbrobustError, match="holds 2 studies"):
        find_study_dir(tmp_path)


# --------------------------------------------------------------------------- pooled-feature cache

FEATURE_CFG = TrialConfig.model_validate({
    "data": {"name": "digits", "train_size": 200, "test_size": 50},
    "model": {"filters": 8, "kernel": 3, "pool": 2}, "rule": {"epochs": 1, "batch_size": 50},
    "head": {"epochs": 2, "batch_size": 64}, "attack": {"enabled": False},
})


def _content(pool: int = 2) -> dict:  # type: ignore[type-arg]
    return feature_key(
        filter_key(TrialConfig(), SHAPE), pool=pool, stride=2, dtype=torch.float16, batch_size=64, device="cpu"
    )


def test_feature_key_covers_pool_not_head_activation() -> None:
    base = FEATURE_CFG
    assert key_hash(_content(2)) != key_hash(_content(3))
    for head_only in ({"model.power": 4}, {"model.activation": "gelu"}, {"head.lr": 0.1}):
        changed = with_params(base, head_only)
        assert filter_key(changed, SHAPE) == filter_key(base, SHAPE), head_only  # the pool settings are the rest


def test_cached_features_equal_fresh_ones_bit_for_bit(tmp_path: Path) -> None:
    """A trial on cached features trains the same head as one that pools them itself."""
    plain = run_trial(FEATURE_CFG)
    miss = run_trial(FEATURE_CFG, filter_cache=tmp_path)
    hit = run_trial(FEATURE_CFG, filter_cache=tmp_path)
    other_head = run_trial(with_params(FEATURE_CFG, {"model.power": 3}), filter_cache=tmp_path)
    other_pool = run_trial(with_params(FEATURE_CFG, {"model.pool": 3}), filter_cache=tmp_path)
    assert [r.metrics["features_cache_hit"] for r in (miss, hit, other_head, other_pool)] == [0, 1, 1, 0]
    for r in (miss, hit):
        assert r.model is not None and plain.model is not None
        assert torch.equal(r.model.head.weight, plain.model.head.weight)
        assert r.metrics["clean_acc"] == plain.metrics["clean_acc"]
    assert plain.model is not None
    from hebbrobust.train import pool_features

    entry = tmp_path / "features" / miss.metrics["features_cache_key"]
    cached = torch.from_numpy(np.load(entry / "features.npy"))
    fresh = pool_features(plain.model, load_dataset(FEATURE_CFG.data).x_train, FEATURE_CFG.head.batch_size)
    assert fresh is not None and cached.dtype == fresh.dtype and torch.equal(cached, fresh)
    # `cache list` shows the feature entries next to the filter set they pool
    rows = list_feature_entries(tmp_path)
    (filter_set,) = list_entries(tmp_path)
    assert sorted(r["pool"] for r in rows) == [2, 3] and {r["filter_set"] for r in rows} == {filter_set["key"]}
    assert sum(r["bytes"] for r in rows) == sum(f.stat().st_size for f in (tmp_path / "features").glob("*/*.npy"))
    from typer.testing import CliRunner

    from hebbrobust.cli import app

    listed = CliRunner().invoke(app, ["cache", "list", str(tmp_path)], terminal_width=300)
    assert listed.exit_code == 0 and "2 pooled-feature sets" in listed.stdout, listed.output


def test_eviction_keeps_the_bound(tmp_path: Path) -> None:
    one = torch.arange(250_000, dtype=torch.float32).view(1000, 250)  # 1 MB
    keys = []
    for pool in range(1, 6):
        got = cached_features(tmp_path, _content(pool), lambda: one, nbytes=one.numel() * 4, max_gb=2.5e-3)
        keys.append(got.key)
        assert torch.equal(got.features, one)  # type: ignore[arg-type]
        time.sleep(0.02)  # distinct mtimes
        left = {m.parent.name for m in (tmp_path / "features").glob("*/meta.json")}
        if pool == 2:  # a hit refreshes the first entry's last use: it outlives the second
            assert cached_features(tmp_path, _content(1), lambda: one, nbytes=4_000_000, max_gb=2.5e-3).hit
            time.sleep(0.02)
        if pool == 3:
            assert left == {keys[0], keys[2]}
    total = sum(f.stat().st_size for f in (tmp_path / "features").glob("*/features.npy"))
    assert total <= 2.5e6 and left == {keys[4], keys[3]}
    # too big for the bound alone: computed, not stored
    got = cached_features(tmp_path, _content(7), lambda: one, nbytes=one.numel() * 4, max_gb=1e-4)
    assert not got.hit and not (tmp_path / "features" / got.key).exists()
    assert clear(tmp_path) >= 2 and not list((tmp_path / "features").glob("*/meta.json"))


_FEATURE_WRITER = textwrap.dedent(
    """
    import sys, time, numpy as np, torch
    import hebbrobust.cache as cache
    from hebbrobust.config import TrialConfig
    root = sys.argv[1]
    real_fsync = cache._fsync
    def slow_fsync(path):
        real_fsync(path)
        print("writing", flush=True)
        time.sleep(60)
    cache._fsync = slow_fsync
    content = cache.feature_key(cache.filter_key(TrialConfig(), (1, 8, 8)), pool=2, stride=2,
                                dtype=torch.float16, batch_size=64, device="cpu")
    cache.cached_features(root, content, lambda: torch.ones(100, 4, 3, 3, dtype=torch.float16), nbytes=7200)
    """
)


def test_killed_feature_writer_leaves_cache_loadable(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _FEATURE_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"  # features.npy on disk
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    froot = tmp_path / "features"
    assert list(froot.glob(".tmp-*")) and not list(froot.glob("[!.]*/meta.json"))  # only the temporary directory
    value = torch.full((100, 4, 3, 3), 2.0, dtype=torch.float16)
    start = time.perf_counter()
    got = cached_features(tmp_path, _content(), lambda: value, nbytes=7200)
    assert not got.hit and time.perf_counter() - start < 30  # the killed writer's lock was released
    assert not list(froot.glob(".tmp-*"))  # its leftover is gone
    again = cached_features(tmp_path, _content(), lambda: value * 0, nbytes=7200)
    assert again.hit and again.features is not None and torch.equal(again.features, value)
