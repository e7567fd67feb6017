"""Content-addressed caches of locally trained filters and of their pooled features, shared by trials that
differ only in the head.

An entry is a directory `<root>/<key>/` holding weights.pt (F, N), curves.json, key.json (the readable
content the key hashes) and meta.json (training seconds, created). The key covers everything that
determines the filters: data identity and subset, every filter-training setting of the rule, F, w, the
input shape, the seed, and RULE_VERSION.

Concurrency: one file lock per key; the first trial trains while the others wait, then load.
Atomicity: an entry is written into a temporary directory and renamed into place, so a trial killed
mid-write leaves no entry a later trial could load half-written.

Features: `<root>/features/<key>/` holds features.npy (the pool outputs a head trains on, a numpy array
memory-mapped copy-on-write by every trial that uses it, so concurrent trials share one copy in the page
cache), key.json and meta.json. The key is the filter key plus what shapes the pool outputs (pool, stride,
dtype, the batch they are computed in, device), not the head's sigma^n, which is applied after the pool.
The entries together stay under a byte bound: after a write the least recently used others are removed
(meta.json's mtime is the last use; an entry locked by a writer is skipped; removing a file a trial has
mapped is safe on POSIX, its mapping lives until it is closed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout

from hebbrobust.config import TrialConfig
from hebbrobust.fileio import as_disk_full

log = logging.getLogger(__name__)

RULE_VERSION = 2  # bump when the rule's code changes what it computes (2: float64 accumulation)
FEATURES_DIR = "features"  # the feature cache's subdirectory of a filter cache
FEATURE_CACHE_GB = 20.0  # default bound on the feature cache's size (GB = 1e9 bytes)


@dataclass(frozen=True)
class CacheOutcome:
    weights: torch.Tensor  # (F, N)
    curves: dict[str, list[float]]
    key: str
    hit: bool
    seconds: float  # filter-training seconds spent (miss) or saved (hit)


def filter_key(config: TrialConfig, in_shape: tuple[int, int, int]) -> dict[str, Any]:
    """The readable content that determines a trial's local filters."""
    data = config.data.model_dump(mode="json", exclude={"cache_dir"})
    if not data.get("val_fraction"):  # no validation split: the key of every entry cached before it existed
        data.pop("val_fraction", None)
    if data.get("path"):
        data["path"] = str(Path(data["path"]).expanduser().resolve())
    return {
        "rule_version": RULE_VERSION,
        "data": data,
        "in_shape": list(in_shape),
        "filters": config.model.filters,
        "kernel": config.model.kernel,
        "rule": config.rule.model_dump(mode="json", exclude={"min_converged"}),  # the gate acts after training
        "seed": config.seed,
    }


def key_hash(content: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:20]


def _load(entry: Path) -> tuple[torch.Tensor, dict[str, list[float]], dict[str, Any]]:
    weights = torch.load(entry / "weights.pt", weights_only=True, map_location="cpu")
    curves = json.loads((entry / "curves.json").read_text())
    meta = json.loads((entry / "meta.json").read_text())
    return weights, curves, meta


def cached_filters(
    root: Path,
    content: dict[str, Any],
    train: Callable[[], tuple[torch.Tensor, dict[str, list[float]]]],
) -> CacheOutcome:
    """Load the filters `content` names from `root`, or train them (exactly once across processes)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    key = key_hash(content)
    entry = root / key
    with FileLock(str(root / f"{key}.lock")):
        if (entry / "meta.json").exists():
            try:
                weights, curves, meta = _load(entry)
                return CacheOutcome(weights, curves, key, True, float(meta["train_seconds"]))
            except Exception as e:  # noqa: BLE001 - truncated/overwritten files: rebuilt below
                first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
                log.warning("%s: damaged cache entry (%s: %s); training it again", entry, e.__class__.__name__, first)
        start = time.perf_counter()
        weights, curves = train()
        seconds = time.perf_counter() - start
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{key}-"))
        try:
            torch.save(weights.detach().cpu(), tmp / "weights.pt")
            (tmp / "curves.json").write_text(json.dumps(curves))
            (tmp / "key.json").write_text(json.dumps(content, indent=2, sort_keys=True))
            # meta.json last: an entry counts only once it is complete
            (tmp / "meta.json").write_text(json.dumps({"train_seconds": seconds, "created": time.time()}))
            if entry.exists():  # a leftover without meta.json (older crash) or a damaged entry: replace it
                shutil.rmtree(entry)
            os.rename(tmp, entry)
        except Exception as e:
            full = as_disk_full(e, tmp / "weights.pt")  # no half entry either way: tmp goes below
            if full is None or full is e:
                raise
            raise full from e
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return CacheOutcome(weights, curves, key, False, seconds)


@dataclass(frozen=True)
class FeatureOutcome:
    features: torch.Tensor | None  # (n, F, H', W'), memory-mapped when cached; None: over the memory budget
    key: str
    hit: bool
    seconds: float  # seconds spent computing (miss) or saved (hit)


def feature_key(
    filters: dict[str, Any], *, pool: int, stride: int, dtype: torch.dtype, batch_size: int, device: str
) -> dict[str, Any]:
    """The readable content that determines pool outputs: the filters' key and the pool's settings.
    batch_size and device are in it because a conv may round differently for another batch or device."""
    return {
        "filters": filters, "pool": pool, "pool_stride": stride, "dtype": str(dtype).removeprefix("torch."),
        "batch_size": batch_size, "device": device,
    }


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _map(entry: Path) -> torch.Tensor:
    # copy-on-write: torch wants a writable array; nothing writes to it, so the pages stay shared
    return torch.from_numpy(np.load(entry / "features.npy", mmap_mode="c"))


def _publish(froot: Path, key: str, features: torch.Tensor, content: dict[str, Any], seconds: float) -> None:
    """Write an entry into a temporary directory, fsync it, rename it into place (caller holds the key lock)."""
    for leftover in froot.glob(f".tmp-{key}-*"):  # a killed writer's: no live writer holds this key
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=froot, prefix=f".tmp-{key}-"))
    try:
        array = features.detach().cpu().numpy()
        out = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=array.dtype, shape=array.shape)
        out[...] = array
        out.flush()
        del out
        (tmp / "key.json").write_text(json.dumps(content, indent=2, sort_keys=True))
        # meta.json last: an entry counts only once it is complete
        meta = {"seconds": seconds, "created": time.time(), "bytes": array.nbytes, "shape": list(array.shape)}
        (tmp / "meta.json").write_text(json.dumps(meta))
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        entry = froot / key
        if entry.exists():  # a leftover without meta.json: replace it
            shutil.rmtree(entry)
        os.rename(tmp, entry)
        _fsync(froot)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def evict(froot: Path, max_bytes: float, keep: str = "") -> int:
    """Remove least recently used feature entries (not `keep`, not locked) until all fit max_bytes."""
    froot = Path(froot)
    removed = 0
    with FileLock(str(froot / ".evict.lock")):
        # complete entries only: a writer's .tmp- directory holds meta.json just before its rename
        metas = [m for m in froot.glob("*/meta.json") if not m.parent.name.startswith(".")]
        entries = sorted((m.stat().st_mtime, m.parent) for m in metas)
        total = sum((d / "features.npy").stat().st_size for _, d in entries)
        for _, d in entries:
            if total <= max_bytes:
                break
            if d.name == keep:
                continue
            try:
                with FileLock(str(froot / f"{d.name}.lock"), timeout=0):
                    size = (d / "features.npy").stat().st_size
                    shutil.rmtree(d)
            except Timeout:  # being written or read right now
                continue
            total -= size
            removed += 1
    return removed


def cached_features(
    root: Path,
    content: dict[str, Any],
    compute: Callable[[], torch.Tensor | None],
    *,
    nbytes: int,
    max_gb: float = FEATURE_CACHE_GB,
) -> FeatureOutcome:
    """Pool outputs `content` names from `<root>/features`, or computed by `compute` (exactly once across
    processes) and stored when nbytes (their size) fits max_gb; then older entries are evicted to the bound."""
    froot = Path(root) / FEATURES_DIR
    froot.mkdir(parents=True, exist_ok=True)
    key = key_hash(content)
    entry = froot / key
    with FileLock(str(froot / f"{key}.lock")):
        if (entry / "meta.json").exists():
            os.utime(entry / "meta.json")  # last use, for eviction
            meta = json.loads((entry / "meta.json").read_text())
            return FeatureOutcome(_map(entry), key, True, float(meta["seconds"]))
        start = time.perf_counter()
        features = compute()
        seconds = time.perf_counter() - start
        if features is None or nbytes > max_gb * 1e9:
            return FeatureOutcome(features, key, False, seconds)
        _publish(froot, key, features, content, seconds)
        mapped = _map(entry)
    evict(froot, max_gb * 1e9, keep=key)
    return FeatureOutcome(mapped, key, False, seconds)


def _complete_entries(root: Path, what: str) -> Iterator[tuple[Path, dict[str, Any], dict[str, Any]]]:
    """(entry, meta, key content) of every complete entry under root (not a writer's .tmp- directory); a
    damaged entry is left out with a warning: the next trial that needs it makes it again."""
    for meta_file in sorted(Path(root).glob("[!.]*/meta.json")):
        try:
            meta = json.loads(meta_file.read_text())
            content = json.loads((meta_file.parent / "key.json").read_text())
        except (OSError, ValueError) as e:
            log.warning("%s: damaged %s entry (%s); the next trial that needs it makes it again",
                        meta_file.parent, what, e)  # fmt: skip
            continue
        yield meta_file.parent, meta, content


def list_entries(root: Path) -> list[dict[str, Any]]:
    """One row per complete filter set: key, size in bytes, age, training seconds and the key's content."""
    return [
        {
            "key": d.name, "bytes": sum(f.stat().st_size for f in d.iterdir()), "created": meta["created"],
            "train_seconds": meta["train_seconds"], "data": content["data"]["name"], "filters": content["filters"],
            "kernel": content["kernel"], "p": content["rule"]["p"], "k": content["rule"]["k"],
            "delta": content["rule"]["delta"], "epochs": content["rule"]["epochs"], "seed": content["seed"],
        }
        for d, meta, content in _complete_entries(root, "cache")
    ]


def list_feature_entries(root: Path) -> list[dict[str, Any]]:
    """One row per complete pooled-feature entry under `<root>/features`: key, file size, last use, the seconds
    it took to compute, the filter set it pools (that set's cache key) and the pool's settings."""
    return [
        {
            "key": d.name, "bytes": (d / "features.npy").stat().st_size, "last_used": (d / "meta.json").stat().st_mtime,
            "seconds": float(meta["seconds"]), "filter_set": key_hash(content["filters"]), "pool": content["pool"],
            "pool_stride": content["pool_stride"], "dtype": content["dtype"],
            "shape": "x".join(str(n) for n in meta["shape"]),
        }
        for d, meta, content in _complete_entries(Path(root) / FEATURES_DIR, "feature-cache")
    ]


def clear(root: Path, older_than_s: float | None = None) -> int:
    """Remove entries (and leftovers of killed writes) older than `older_than_s` (all when None)."""
    root = Path(root)
    if not root.exists():
        return 0
    now, removed = time.time(), 0
    for d in root.iterdir():
        if d.name == FEATURES_DIR and root.name != FEATURES_DIR:
            removed += clear(d, older_than_s)
            continue
        if not d.is_dir():
            continue
        meta = d / "meta.json"
        try:
            created = float(json.loads(meta.read_text())["created"])
        except (OSError, ValueError, KeyError, TypeError):  # a killed write's leftover, or damaged
            created = d.stat().st_mtime
        if older_than_s is None or now - created > older_than_s:
            key = d.name.split("-")[1] if d.name.startswith(".tmp-") else d.name
            with FileLock(str(root / f"{key}.lock")):
                shutil.rmtree(d, ignore_errors=True)
            removed += 1
    return removed
