"""Data sets: a registry of loaders, each giving float32 images in [0, 1], channels first.

- digits: scikit-learn's bundled 8x8 digits (1797 images), a fixed seeded 80/20 split; works offline.
- cifar10, mnist, fashion_mnist: torchvision, downloaded on first use into `path`
  (default ~/.cache/hebbrobust/torchvision).
- image_folder: `path/train/<class>/*` and `path/test/<class>/*`, classes in sorted order
  (e.g. ../shared/datasets/cifar10-jpeg). Decoded once, cached as uint8 .npz keyed by path and size.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hebbrobust.config import DataConfig
from hebbrobust.errors import DataError

SUBSET_SEED = 0  # subsets are fixed across trial seeds, so seeds vary only the training
VAL_SEED = 1  # the validation split is fixed too (and drawn apart from the subset's permutation)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    # the validation split: training images held out (data.val_fraction), never trained on; empty without
    x_val: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    y_val: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)


# Each loader returns uint8 or float arrays: x (N, C, H, W), y (N,), for train and test, and class names.
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]


def default_cache_dir() -> Path:
    return Path(os.environ.get("HEBBROBUST_CACHE", Path.home() / ".cache" / "hebbrobust"))


def _digits(cfg: DataConfig) -> Arrays:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(SUBSET_SEED).permutation(len(x))
    cut = int(0.8 * len(x))
    tr, te = order[:cut], order[cut:]
    return x[tr], y[tr], x[te], y[te], tuple(str(c) for c in bunch.target_names)


def _torchvision(cls_name: str) -> Callable[[DataConfig], Arrays]:
    def load(cfg: DataConfig) -> Arrays:
        import torchvision

        root = Path(cfg.path) if cfg.path else default_cache_dir() / "torchvision"
        cls = getattr(torchvision.datasets, cls_name)
        try:
            train, test = cls(str(root), train=True, download=True), cls(str(root), train=False, download=True)
        except Exception as e:  # noqa: BLE001 - any download/parse failure becomes one line
            raise DataError(
                f"{cls_name}: could not load or download into {root} ({e.__class__.__name__}: {e}); "
                "without internet set data.path to a folder holding the torchvision files, "
                "or use data.name=image_folder with data.path=DIR (DIR/train/<class>/*.jpg)"
            ) from None

        def arrays(ds: object) -> tuple[np.ndarray, np.ndarray]:
            x = np.asarray(ds.data)  # type: ignore[attr-defined]
            x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
            return np.ascontiguousarray(x), np.asarray(ds.targets, dtype=np.int64)  # type: ignore[attr-defined]

        xtr, ytr = arrays(train)
        xte, yte = arrays(test)
        return xtr, ytr, xte, yte, tuple(train.classes)

    return load


def _folder_signature(root: Path) -> tuple[list[tuple[Path, int]], str]:
    files: list[tuple[Path, int]] = []
    for split in ("train", "test"):
        for f in sorted((root / split).rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append((f, f.stat().st_size))
    h = hashlib.sha256(str(root.resolve()).encode())
    h.update(str(len(files)).encode())
    h.update(str(sum(s for _, s in files)).encode())
    return files, h.hexdigest()[:16]


def _image_folder(cfg: DataConfig) -> Arrays:
    from PIL import Image

    if cfg.path is None:
        raise DataError("image_folder: data.path is required (a folder with train/ and test/ inside)")
    root = Path(cfg.path).expanduser()
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(f"image_folder: {root / split} is not a directory (data.path must hold train/ and test/)")
    classes = tuple(sorted(d.name for d in (root / "train").iterdir() if d.is_dir()))
    if not classes:
        raise DataError(f"image_folder: {root / 'train'} has no class folders")
    files, key = _folder_signature(root)
    cache = (Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir() / "data") / f"folder-{key}.npz"
    if cache.exists():
        with np.load(cache) as z:
            return z["xtr"], z["ytr"], z["xte"], z["yte"], classes
    index = {c: i for i, c in enumerate(classes)}
    out: dict[str, tuple[list[np.ndarray], list[int]]] = {"train": ([], []), "test": ([], [])}
    for f, _ in files:
        split, cls = f.relative_to(root).parts[:2]
        if cls not in index:
            raise DataError(f"image_folder: {f} is in class folder {cls!r} that train/ does not have")
        with Image.open(f) as im:
            arr = np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im)
        out[split][0].append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
        out[split][1].append(index[cls])
    try:
        xtr, xte = np.stack(out["train"][0]), np.stack(out["test"][0])
    except ValueError:
        raise DataError(f"image_folder: images under {root} differ in size or channels") from None
    ytr, yte = np.asarray(out["train"][1], np.int64), np.asarray(out["test"][1], np.int64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".npz")
    os.close(fd)
    np.savez(tmp, xtr=xtr, ytr=ytr, xte=xte, yte=yte)
    os.replace(tmp, cache)  # atomic: a killed decode leaves no half-written cache
    return xtr, ytr, xte, yte, classes


LOADERS: dict[str, Callable[[DataConfig], Arrays]] = {
    "digits": _digits,
    "cifar10": _torchvision("CIFAR10"),
    "mnist": _torchvision("MNIST"),
    "fashion_mnist": _torchvision("FashionMNIST"),
    "image_folder": _image_folder,
}


def _to_float(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()


def _subset(n: int, size: int | None) -> np.ndarray:
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(SUBSET_SEED).permutation(n)[:size])


def load_dataset(cfg: DataConfig) -> Dataset:
    """The data set `cfg` names, as float32 tensors in [0, 1], optionally a fixed seeded subset.
    With `cfg.val_fraction`, that share of the (subset of the) training images becomes the validation
    split, drawn from the training images only (so disjoint from the test set) and left out of training."""
    xtr, ytr, xte, yte, classes = LOADERS[cfg.name](cfg)
    tr, te = _subset(len(xtr), cfg.train_size), _subset(len(xte), cfg.test_size)
    tr, va = split_validation(tr, cfg.val_fraction)
    return Dataset(
        name=cfg.name,
        x_train=_to_float(xtr[tr]),
        y_train=torch.from_numpy(ytr[tr]),
        x_test=_to_float(xte[te]),
        y_test=torch.from_numpy(yte[te]),
        classes=classes,
        x_val=_to_float(xtr[va]),
        y_val=torch.from_numpy(ytr[va]),
    )


def split_validation(train: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, validation indices) from the training indices `train`: a fixed seeded
    `fraction` of them (at least one when fraction > 0) held out; both sorted, disjoint."""
    n_val = min(len(train) - 1, max(1, round(fraction * len(train)))) if fraction > 0 else 0
    if n_val <= 0:
        return train, train[:0]
    order = np.random.default_rng(VAL_SEED).permutation(len(train))
    return np.sort(train[order[n_val:]]), np.sort(train[order[:n_val]])
