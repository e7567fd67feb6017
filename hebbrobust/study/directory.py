"""A study's directory on disk, Ray-free: its paths, study.json, the driver lock, finding studies.

A study directory (`<storage>/<name>/`, every path in it absolute) holds:
    study.json   where everything is: MLflow URI, experiment, parent run, Optuna storage, Tune state
    spec.yaml    the spec as run (paths absolute), so resume and report need nothing else
    optuna.db    the Optuna RDB study (optuna-dashboard sqlite:///<dir>/optuna.db)
    tune/        Ray Tune's experiment state (tune-resume-<n>/ for each resumed session; not needed to resume)
    driver.lock  held (flock) by the driver running the study: a second driver is refused
    trials/<id>/ each trial's metrics.json, filters.png, robustness.png, model.pt (seed<i>/ per seed)
    front.csv, front.png, trials.csv   written when the study ends (also on the MLflow parent run)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hebbrobust.config import StudySpec
from hebbrobust.errors import HebbrobustError
from hebbrobust.fileio import write_json

STUDY_FILE = "study.json"
SPEC_FILE = "spec.yaml"
OPTUNA_FILE = "optuna.db"
TUNE_DIR = "tune"
LOCK_FILE = "driver.lock"
DEFAULT_STORAGE = "hebbrobust-studies"


def read_meta(study_dir: Path) -> dict[str, Any]:
    """study.json of `study_dir`, or a one-line error."""
    path = study_dir / STUDY_FILE
    try:
        meta: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise HebbrobustError(f"{study_dir}: not a study directory (no {STUDY_FILE})") from None
    except (OSError, ValueError) as e:
        raise HebbrobustError(f"{path}: unreadable ({e.__class__.__name__}: {e})") from None
    return meta


def write_meta(study_dir: Path, meta: dict[str, Any]) -> None:
    write_json(study_dir / STUDY_FILE, meta)


def storage_root(storage: Path | str | None, spec: StudySpec | None = None) -> Path:
    """Where studies live: `storage`, else spec.storage, else ./hebbrobust-studies (absolute)."""
    root = Path(storage) if storage is not None else (spec.storage if spec and spec.storage else Path(DEFAULT_STORAGE))
    return root.expanduser().resolve()


def study_dirs(storage: Path | str | None = None) -> list[Path]:
    """The study directories directly under the storage root, by name."""
    root = storage_root(storage)
    return [f.parent for f in sorted(root.glob(f"*/{STUDY_FILE}"))] if root.is_dir() else []


def find_study_dir(name_or_dir: str | Path | None, storage: Path | str | None = None) -> Path:
    """A study directory given itself, the study's name (looked up under `storage`), or a storage
    root that holds exactly one study (None: the storage root)."""
    if name_or_dir is None:
        name_or_dir = storage_root(storage)
    candidate = Path(name_or_dir).expanduser()
    if (candidate / STUDY_FILE).exists():
        return candidate.resolve()
    by_name = storage_root(storage) / str(name_or_dir)
    if (by_name / STUDY_FILE).exists():
        return by_name
    inside = study_dirs(candidate) if candidate.is_dir() else []
    if len(inside) == 1:
        return inside[0]
    names = ", ".join(d.name for d in inside)
    held = f"; {candidate} holds {len(inside)} studies ({names}): name one" if inside else ""
    raise HebbrobustError(
        f"no study {str(name_or_dir)!r}: neither a study directory nor a study under {by_name.parent}{held}"
    )


def filter_cache_dir(spec: StudySpec, study_dir: Path) -> Path:
    """Where a study's trials share filters: spec.filter_cache_dir (shared storage on a cluster),
    else <study dir>/filter-cache."""
    return Path(spec.filter_cache_dir).absolute() if spec.filter_cache_dir else Path(study_dir) / "filter-cache"


@contextmanager
def driver_lock(study_dir: Path) -> Iterator[None]:
    """One driver per study: `study run`/`resume` hold <study dir>/driver.lock (an flock, so a killed
    driver releases it), and a second driver, e.g. a resume while the study still runs, is refused."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(study_dir / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise HebbrobustError(
            f"{study_dir}: study is being run by another driver (it holds {study_dir / LOCK_FILE}); "
            "wait for it or stop it first"
        ) from None
    try:
        yield
    finally:
        lock.release()
