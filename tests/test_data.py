from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hebbrobust.config import DataConfig
from hebbrobust.data import load_dataset
from hebbrobust.errors import DataError


def test_digits_split_is_fixed_and_in_unit_range() -> None:
    a = load_dataset(DataConfig(name="digits"))
    b = load_dataset(DataConfig(name="digits"))
    assert a.x_train.shape == (1437, 1, 8, 8) and a.x_test.shape == (360, 1, 8, 8)
    assert a.x_train.min() >= 0 and a.x_train.max() <= 1
    assert (a.x_test == b.x_test).all() and (a.y_train == b.y_train).all()
    assert len(a.classes) == 10


def test_digits_subset() -> None:
    d = load_dataset(DataConfig(name="digits", train_size=100, test_size=50))
    assert len(d.x_train) == 100 and len(d.x_test) == 50


def _make_folder(root: Path, n: int = 3) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("cat", "ant"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / cls / f"{i}.png")


def test_image_folder_decodes_caches_and_orders_classes(tmp_path: Path) -> None:
    _make_folder(tmp_path / "imgs")
    cfg = DataConfig(name="image_folder", path=tmp_path / "imgs", cache_dir=tmp_path / "cache")
    d = load_dataset(cfg)
    assert d.classes == ("ant", "cat")
    assert d.x_train.shape == (6, 3, 6, 5) and d.x_test.shape == (6, 3, 6, 5)
    assert sorted(d.y_train.tolist()) == [0, 0, 0, 1, 1, 1]
    first = Image.open(tmp_path / "imgs/train/ant/0.png")
    assert np.allclose(d.x_train[0].numpy().transpose(1, 2, 0), np.asarray(first) / 255.0)
    assert len(list((tmp_path / "cache").glob("folder-*.npz"))) == 1
    again = load_dataset(cfg)  # from the cache
    assert (again.x_train == d.x_train).all()


def test_image_folder_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(DataConfig(name="image_folder", path=tmp_path / "nope"))
    with pytest.raises(DataError, match="data.path is required"):
        load_dataset(DataConfig(name="image_folder"))


def test_torchvision_without_network_names_the_local_option(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.path"):
        load_dataset(DataConfig(name="mnist", path=tmp_path / "empty"))
