"""A content-addressed cache of locally trained filters, shared by trials that differ only in the head.

An entry is a directory `<root>/<key>/` holding weights.pt (F, N), curves.json, key.json (the readable
content the key hashes) and meta.json (training seconds, created). The key covers everything that
determines the filters: data identity and subset, every filter-training setting of the rule, F, w, the
input shape, the seed, and RULE_VERSION.

Concurrency: one file lock per key; the first trial trains while the others wait, then load.
Atomicity: an entry is written into a temporary directory and renamed into place, so a trial killed
mid-write leaves no entry a later trial could load half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from hebbrobust.config import TrialConfig
from hebbrobust.fileio import as_disk_full

log = logging.getLogger(__name__)

RULE_VERSION = 2  # bump when the rule's code changes what it computes (2: float64 accumulation)


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
    if data.get("path"):
        data["path"] = str(Path(data["path"]).expanduser().resolve())
    return {
        "rule_version": RULE_VERSION,
        "data": data,
        "in_shape": list(in_shape),
        "filters": config.model.filters,
        "kernel": config.model.kernel,
        "rule": config.rule.model_dump(mode="json"),
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


def list_entries(root: Path) -> list[dict[str, Any]]:
    """One row per complete entry: key, size in bytes, age, training seconds and the key's content
    (a damaged entry is left out with a warning; the next trial that needs it trains it again)."""
    rows = []
    for entry in sorted(Path(root).glob("*/meta.json")):
        d = entry.parent
        try:
            meta = json.loads(entry.read_text())
            content = json.loads((d / "key.json").read_text())
        except (OSError, ValueError) as e:
            log.warning("%s: damaged cache entry (%s); the next trial that needs it trains it again", d, e)
            continue
        size = sum(f.stat().st_size for f in d.iterdir())
        rows.append({
            "key": d.name, "bytes": size, "created": meta["created"], "train_seconds": meta["train_seconds"],
            "data": content["data"]["name"], "filters": content["filters"], "kernel": content["kernel"],
            "p": content["rule"]["p"], "k": content["rule"]["k"], "delta": content["rule"]["delta"],
            "epochs": content["rule"]["epochs"], "seed": content["seed"],
        })
    return rows


def clear(root: Path, older_than_s: float | None = None) -> int:
    """Remove entries (and leftovers of killed writes) older than `older_than_s` (all when None)."""
    root = Path(root)
    if not root.exists():
        return 0
    now, removed = time.time(), 0
    for d in root.iterdir():
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
