"""A study's directory on disk, Ray-free: its paths, study.json, the driver lock, finding studies.

A study directory (`<storage>/<name>/`) holds:
    study.json   where everything is: MLflow URI, experiment, parent run, Optuna storage, Tune state;
                 paths inside the study directory are stored relative to it, and so is a sqlite MLflow
                 store up to two levels above it (the default ./mlflow.db beside ./hebbrobust-studies/),
                 so a study moved or copied elsewhere (with that store) reads and writes its new place
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


NEEDED = ("name", "tracking_uri", "experiment", "experiment_id", "parent_run_id", "optuna_storage", "num_trials")
TRACKING_DB = "tracking_db"  # study.json: the sqlite MLflow store relative to the study dir, when it is near
_SQLITE = "sqlite:///"
_NEAR = 2  # a sqlite MLflow store this many levels above the study dir (or below it) is stored relative


def read_meta(study_dir: Path) -> dict[str, Any]:
    """study.json of `study_dir`, its relative paths made absolute against `study_dir` (old
    study.json files with absolute paths read as they are), or a one-line error with the way on."""
    path = study_dir / STUDY_FILE
    try:
        meta: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise HebbrobustError(f"{study_dir}: not a study directory (no {STUDY_FILE})") from None
    except (OSError, ValueError) as e:
        raise HebbrobustError(
            f"{path}: unreadable ({e.__class__.__name__}: {str(e)[:120]}); "
            f"`hebbrobust study repair {study_dir}` rebuilds it from spec.yaml and MLflow"
        ) from None
    missing = [k for k in NEEDED if k not in meta] if isinstance(meta, dict) else list(NEEDED)
    if missing:
        raise HebbrobustError(
            f"{path}: damaged (missing {', '.join(missing)}); "
            f"`hebbrobust study repair {study_dir}` rebuilds it from spec.yaml and MLflow"
        )
    return absolute_meta(study_dir, meta)


def write_meta(study_dir: Path, meta: dict[str, Any]) -> None:
    write_json(study_dir / STUDY_FILE, relative_meta(study_dir, meta))


def relative_near(path: Path, root: Path) -> str | None:
    """`path` relative to `root` (with .. for up to _NEAR levels above it), or None when farther."""
    root, path = root.resolve(), path.resolve()
    for up, base in enumerate([root, *list(root.parents)[:_NEAR]]):
        if path.is_relative_to(base) and base != Path(base.anchor):
            return str(Path(*[".."] * up, path.relative_to(base)))
    return None


def relative_meta(study_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """study.json as stored: the Optuna storage and Tune path relative to `study_dir`; a sqlite MLflow
    store near it also as `tracking_db` (relative), beside the absolute `tracking_uri` it was made with."""
    out = dict(meta)
    storage = str(meta.get("optuna_storage", ""))
    if storage.startswith(_SQLITE) and (rel := relative_near(Path(storage[len(_SQLITE) :]), study_dir)) is not None:
        out["optuna_storage"] = rel
    if meta.get("tune_path") and (rel := relative_near(Path(meta["tune_path"]), study_dir)) is not None:
        out["tune_path"] = rel
    uri = str(meta.get("tracking_uri", ""))
    out.pop(TRACKING_DB, None)
    if uri.startswith(_SQLITE) and (rel := relative_near(Path(uri[len(_SQLITE) :]), study_dir)) is not None:
        out[TRACKING_DB] = rel
    return out


def absolute_meta(study_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """study.json as used: relative paths joined to `study_dir`; `tracking_db` (when that file is
    there) wins over the recorded `tracking_uri`, else the recorded one is used (a study moved
    without its store still finds it where it was)."""
    out = dict(meta)
    storage = str(meta["optuna_storage"])
    if "://" not in storage:
        out["optuna_storage"] = f"{_SQLITE}{(study_dir / storage).resolve()}"
    if meta.get("tune_path") and not Path(meta["tune_path"]).is_absolute():
        out["tune_path"] = str((study_dir / meta["tune_path"]).resolve())
    db = out.pop(TRACKING_DB, None)
    if db and (study_dir / db).resolve().is_file():
        out["tracking_uri"] = f"{_SQLITE}{(study_dir / db).resolve()}"
    return out


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
