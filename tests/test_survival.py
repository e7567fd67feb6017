"""Long studies survive (issue 21): studies that move, damaged stores, a full disk, two studies on
one filter cache. Real stores, real files damaged, a real size-limited tmpfs (mounted by the test;
skipped with the reason where mount is not allowed), real processes for the two-studies case."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from test_reliability import children, finish, hebbrobust, study_runs, write_spec
from test_study import TINY_BASE
from typer.testing import CliRunner

from hebbrobust import cache, tracking
from hebbrobust.cli import app
from hebbrobust.fileio import atomic_write, sqlite_problem
from hebbrobust.study import directory as sd
from hebbrobust.train import _load_checkpoint, _save_checkpoint

# --------------------------------------------------------------------------- helpers


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs the test mounts itself (root only); unmounted at the end."""
    where = tmp_path / "small"
    where.mkdir()
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {got.stderr.strip() or got.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(where: Path, leave: int) -> Path:
    """A filler file that leaves about `leave` bytes free on `where`'s file system."""
    filler = where / "filler"
    free = shutil.disk_usage(where).free
    with open(filler, "wb") as out:
        out.write(b"\0" * max(0, free - leave))
    return filler


def one_line(result: Any) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


# --------------------------------------------------------------------------- study.json paths (fast)


def test_study_json_stores_paths_relative_and_still_reads_old_absolute_files(tmp_path: Path) -> None:
    study_dir = tmp_path / "work" / "studies" / "s"
    study_dir.mkdir(parents=True)
    db = tmp_path / "work" / "mlflow.db"
    db.write_bytes(b"")
    meta = {
        "name": "s", "tracking_uri": f"sqlite:///{db}", "experiment": "s", "experiment_id": "1", "parent_run_id": "p",
        "optuna_storage": f"sqlite:///{study_dir}/optuna.db", "tune_path": str(study_dir / "tune"), "num_trials": 2,
    }  # fmt: skip
    sd.write_meta(study_dir, meta)
    stored = json.loads((study_dir / "study.json").read_text())
    assert (stored["optuna_storage"], stored["tune_path"]) == ("optuna.db", "tune")
    assert stored["tracking_db"] == "../../mlflow.db"
    assert sd.read_meta(study_dir) == meta
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "work", moved)
    new_dir = moved / "studies" / "s"
    got = sd.read_meta(new_dir)
    assert got["optuna_storage"] == f"sqlite:///{new_dir}/optuna.db" and got["tune_path"] == str(new_dir / "tune")
    assert got["tracking_uri"] == f"sqlite:///{moved}/mlflow.db"
    (moved / "mlflow.db").unlink()  # moved without its store: the store where it was recorded
    assert sd.read_meta(new_dir)["tracking_uri"] == meta["tracking_uri"]
    far = {**meta, "tracking_uri": "sqlite:////somewhere/else/mlflow.db"}
    (new_dir / "study.json").write_text(json.dumps(far))  # an old study.json: absolute paths, read as they are
    assert sd.read_meta(new_dir) == far
    sd.write_meta(new_dir, far)
    assert "tracking_db" not in json.loads((new_dir / "study.json").read_text())
    (new_dir / "study.json").write_text(json.dumps({"name": "s"}))
    with pytest.raises(Exception, match=r"study.json: damaged \(missing tracking_uri.*hebbrobust study repair"):
        sd.read_meta(new_dir)


# --------------------------------------------------------------------------- damaged files (fast)


def test_sqlite_problem_finds_truncated_and_overwritten_databases(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    study = optuna.create_study(storage=url, study_name="x")
    for i in range(30):
        study.add_trial(optuna.trial.create_trial(params={"a": float(i)}, distributions={
            "a": optuna.distributions.FloatDistribution(0, 100)}, value=float(i)))  # fmt: skip
    db = tmp_path / "o.db"
    assert sqlite_problem(db) is None
    data = db.read_bytes()
    (tmp_path / "t.db").write_bytes(data[: len(data) // 3])
    (tmp_path / "g.db").write_bytes(b"garbage" * 1000)
    (tmp_path / "e.db").write_bytes(b"")
    assert sqlite_problem(tmp_path / "t.db") and sqlite_problem(tmp_path / "g.db") and sqlite_problem(tmp_path / "e.db")
    assert sqlite_problem(tmp_path / "none.db") == "missing"
    assert not (tmp_path / "none.db").exists()  # a check never creates one


def test_a_damaged_cache_entry_is_trained_again_and_left_out_of_the_list(tmp_path: Path) -> None:
    trained = []

    def train() -> tuple[torch.Tensor, dict[str, list[float]]]:
        trained.append(1)
        return torch.ones(4, 9), {"loss": [1.0]}

    content = {"seed": 0, "filters": 4, "kernel": 3, "data": {"name": "digits"}, "rule": {}}
    first = cache.cached_filters(tmp_path, content, train)
    entry = tmp_path / first.key
    (entry / "meta.json").write_text('{"train_seco')  # truncated
    assert cache.list_entries(tmp_path) == []
    again = cache.cached_filters(tmp_path, content, train)
    assert (again.hit, len(trained)) == (False, 2) and torch.equal(again.weights, first.weights)
    (entry / "weights.pt").write_bytes(b"\0" * 10)  # weights overwritten
    assert cache.cached_filters(tmp_path, content, train).hit is False and len(trained) == 3
    assert cache.cached_filters(tmp_path, content, train).hit is True


# --------------------------------------------------------------------------- full disk (fast, real tmpfs)


def test_on_a_full_disk_writes_fail_naming_the_file_and_keep_what_was_there(small_fs: Path) -> None:
    ckpt = small_fs / "ckpt" / "head.pt"
    _save_checkpoint(ckpt, {"tag": "t", "epoch": 3, "w": torch.arange(10.0)})
    fill(small_fs, leave=4096)
    with pytest.raises(OSError) as caught:
        _save_checkpoint(ckpt, {"tag": "t", "epoch": 4, "w": torch.zeros(200_000)})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(ckpt)
    kept = _load_checkpoint(ckpt, "t")
    assert kept is not None and kept["epoch"] == 3  # the previous checkpoint stays loadable
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["head.pt"]  # no temp file left

    with pytest.raises(OSError) as caught:
        atomic_write(small_fs / "metrics.json", lambda p: p.write_text("x" * 100_000))
    assert caught.value.errno == errno.ENOSPC and not (small_fs / "metrics.json").exists()

    root = small_fs / "cache"
    with pytest.raises(OSError) as caught:
        cache.cached_filters(root, {"seed": 1}, lambda: (torch.zeros(200, 500), {"loss": [0.0]}))
    assert caught.value.errno == errno.ENOSPC
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []  # no half entry


# --------------------------------------------------------------------------- one tiny real study, many damages


MOVE_SPEC = {
    "name": "mv",
    "base": TINY_BASE,
    # conditional: the backprop trial has no rule.p, which `study repair` must not take for a lost value
    "space": {"model.kind": ["local", "backprop"],
              "rule.p": {"type": "categorical", "choices": [3], "when": {"model.kind": "local"}}},
    "objectives": [{"metric": "clean_acc"}, {"metric": "pgd_acc@2"}],
    "sampler": {"name": "grid", "seed": 0},
    "num_trials": 2,
    "max_concurrent": 2,
}


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-trial study under <tree>/studies/mv with its MLflow store at <tree>/mlflow.db."""
    tree = tmp_path_factory.mktemp("tree") / "work"
    tree.mkdir()
    spec = write_spec(tree / "mv.yaml", MOVE_SPEC)
    log = tree / "run.log"
    uri = f"sqlite:///{tree}/mlflow.db"
    finish(hebbrobust("study", "run", str(spec), "--storage", "studies", "--tracking-uri", uri, cwd=tree, log=log),
           400, log)  # fmt: skip
    return tree


def copy_of(tree: Path, where: Path) -> Path:
    shutil.copytree(tree, where, ignore=shutil.ignore_patterns("driver.lock"))
    return where / "studies" / "mv"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_moved_study_resumes_shows_and_reports_from_its_new_place(finished_study: Path, tmp_path: Path) -> None:
    from hebbrobust.report import build_report
    from hebbrobust.study import resume_study, show_study

    src = tmp_path / "src"
    copy_of(finished_study, src)
    moved = tmp_path / "mnt" / "shared"
    moved.parent.mkdir()
    shutil.move(src, moved)
    study_dir = moved / "studies" / "mv"
    assert not src.exists()
    shown = show_study(study_dir)
    assert shown.tracking_uri == f"sqlite:///{moved}/mlflow.db"
    assert shown.optuna_storage == f"sqlite:///{study_dir}/optuna.db"
    assert shown.counts["finished"] == 2
    again = resume_study(study_dir)  # reconciles and concludes against the moved stores
    assert again.counts["finished"] == 2 and again.study_dir == study_dir
    assert len(optuna.load_study(study_name="mv", storage=f"sqlite:///{study_dir}/optuna.db").trials) == 2
    rep = build_report(study_dir, log=False)
    assert (study_dir / "report" / "report.html").exists() and rep.study.counts["finished"] == 2
    assert not (src / "studies").exists()  # nothing of the study went back to the old place


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_damaged_stores_are_one_line_at_start_and_repair_rebuilds_them(finished_study: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    printed: dict[str, str] = {}

    # optuna.db lost: one line with the way on; repair rebuilds it from the MLflow runs
    study_dir = copy_of(finished_study, tmp_path / "lost")
    before = optuna.load_study(study_name="mv", storage=f"sqlite:///{study_dir}/optuna.db")
    want = sorted((sorted(t.params.items()), tuple(t.values)) for t in before.trials)
    assert sorted(len(p) for p, _ in want) == [1, 2]  # backprop: model.kind; local: model.kind and rule.p
    (study_dir / "optuna.db").unlink()
    printed["optuna.db lost"] = line = one_line(runner.invoke(app, ["study", "resume", str(study_dir)]))
    assert "optuna.db: the study's Optuna record is missing" in line and f"study repair {study_dir}" in line
    result = runner.invoke(app, ["study", "repair", str(study_dir)])
    assert result.exit_code == 0 and "2 complete, 0 failed" in result.output, result.output
    printed["repair (optuna.db lost)"] = " | ".join(result.output.split("\n")[:2])
    rebuilt = optuna.load_study(study_name="mv", storage=f"sqlite:///{study_dir}/optuna.db")
    assert sorted((sorted(t.params.items()), tuple(t.values)) for t in rebuilt.trials) == want
    assert rebuilt.metric_names == ["clean_acc", "pgd_acc@2"]
    result = runner.invoke(app, ["study", "resume", str(study_dir)])
    assert result.exit_code == 0 and "trials: 2 finished" in result.output, result.output
    assert len(optuna.load_study(study_name="mv", storage=f"sqlite:///{study_dir}/optuna.db").trials) == 2

    # optuna.db truncated: one line; repair moves it aside and rebuilds
    study_dir = copy_of(finished_study, tmp_path / "trunc")
    data = (study_dir / "optuna.db").read_bytes()
    (study_dir / "optuna.db").write_bytes(data[: len(data) // 2])
    printed["optuna.db truncated"] = line = one_line(runner.invoke(app, ["study", "show", str(study_dir)]))
    assert line.startswith(f"error: {study_dir}/optuna.db: the study's Optuna record is") and "study repair" in line
    assert runner.invoke(app, ["study", "repair", str(study_dir)]).exit_code == 0
    assert list(study_dir.glob("optuna.db.damaged-*"))
    assert runner.invoke(app, ["study", "show", str(study_dir)]).exit_code == 0

    # study.json overwritten: one line; repair rebuilds it from spec.yaml and the parent run in MLflow
    study_dir = copy_of(finished_study, tmp_path / "meta")
    old = sd.read_meta(study_dir)
    (study_dir / "study.json").write_bytes(b"\0\0\0garbage")
    printed["study.json damaged"] = line = one_line(runner.invoke(app, ["study", "resume", str(study_dir)]))
    assert "study.json: unreadable" in line and f"study repair {study_dir}" in line
    result = runner.invoke(app, ["study", "repair", str(study_dir)])
    assert result.exit_code == 0 and "rebuilt study.json" in result.output, result.output
    new = sd.read_meta(study_dir)
    assert {k: new[k] for k in sd.NEEDED} == {k: old[k] for k in sd.NEEDED}
    assert runner.invoke(app, ["study", "resume", str(study_dir)]).exit_code == 0

    # the MLflow store truncated: one line naming it; nothing rebuilt, nothing written
    study_dir = copy_of(finished_study, tmp_path / "mlflow")
    db = study_dir.parent.parent / "mlflow.db"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])
    printed["mlflow.db truncated"] = line = one_line(runner.invoke(app, ["study", "resume", str(study_dir)]))
    assert line.startswith(f"error: {db}: the MLflow store is") and "restore it from a backup" in line
    assert db.read_bytes() == data[: len(data) // 3]
    for what, text in printed.items():
        print(f"\n{what}: {text}")


# --------------------------------------------------------------------------- a full disk in a real study


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_full_disk_fails_trials_in_one_line_and_resume_finishes_after_space_is_freed(
    small_fs: Path, tmp_path: Path
) -> None:
    """The trials' directory and the filter cache on a 2 MiB tmpfs (mounted at <study>/trials), filled
    so that no checkpoint fits; Optuna and MLflow elsewhere. Both trials fail `disk full: ...`; after
    the filler goes, `study resume` runs them again and the study ends with 2 COMPLETE."""
    study_dir = tmp_path / "studies" / "full"
    study_dir.mkdir(parents=True)
    (study_dir / "trials").symlink_to(small_fs)
    spec = write_spec(tmp_path / "full.yaml", {**MOVE_SPEC, "name": "full",
                                               "filter_cache_dir": str(small_fs / "cache")})  # fmt: skip
    filler = fill(small_fs, leave=2048)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    log = tmp_path / "run.log"
    finish(hebbrobust("study", "run", str(spec), "--storage", "studies", "--tracking-uri", uri, cwd=tmp_path, log=log),
           300, log)  # fmt: skip
    runs = children(study_runs(uri, "full"))
    reasons = [r.data.tags.get(tracking.REASON_TAG, "") for r in runs]
    assert [r.info.status for r in runs] == ["FAILED", "FAILED"], reasons
    assert all(r.startswith("disk full: no space left on device writing ") and "\n" not in r for r in reasons), reasons
    print(f"\ndisk full, trial failure reason: {reasons[0]}")
    cache_dir = small_fs / "cache"
    if cache_dir.exists():  # no half entry: every entry there is complete
        assert all((d / "meta.json").exists() for d in cache_dir.iterdir() if d.is_dir()), list(cache_dir.iterdir())
    states = [t.state.name for t in optuna.load_study(study_name="full", storage=f"sqlite:///{study_dir}/optuna.db").trials]
    assert states == ["FAIL", "FAIL"]
    filler.unlink()
    log2 = tmp_path / "resume.log"
    text = finish(hebbrobust("study", "resume", str(study_dir), cwd=tmp_path, log=log2), 300, log2)
    assert "2 failed on a full disk run again" in text, text
    study = optuna.load_study(study_name="full", storage=f"sqlite:///{study_dir}/optuna.db")
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 2
    after = children(study_runs(uri, "full"))
    assert sorted(r.info.status for r in after) == ["FINISHED", "FINISHED", "KILLED", "KILLED"]  # no FAILED left
    assert "trials: 2 finished, 0 gated, 0 failed" in text


# --------------------------------------------------------------------------- two studies, one cache


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_studies_at_once_on_one_cache_train_each_filter_set_once(tmp_path: Path) -> None:
    shared = tmp_path / "shared-cache"
    procs, logs = [], []
    uri = f"sqlite:///{tmp_path}/mlflow-%s.db"
    for name in ("one", "two"):
        spec = write_spec(tmp_path / f"{name}.yaml", {
            **MOVE_SPEC, "name": name, "space": {"rule.p": [2, 3], "head.epochs": [2, 3]}, "num_trials": 4,
            "objectives": [{"metric": "clean_acc"}], "filter_cache_dir": str(shared),
            "max_failures": 2,  # a worker killed by Ray's memory monitor on a crowded machine is retried
        })  # fmt: skip
        logs.append(tmp_path / f"{name}.log")
        procs.append(hebbrobust("study", "run", str(spec), "--storage", "studies", "--tracking-uri", uri % name,
                                cwd=tmp_path, log=logs[-1]))  # fmt: skip
    started = time.monotonic()
    for proc, log in zip(procs, logs, strict=True):
        finish(proc, max(30.0, 500 - (time.monotonic() - started)), log)
    runs = children(study_runs(uri % "one", "one")) + children(study_runs(uri % "two", "two"))
    assert [r.info.status for r in runs] == ["FINISHED"] * 8
    trainings = sum(r.data.metrics["filters_cache_hit"] == 0 for r in runs)
    entries = [d for d in shared.iterdir() if d.is_dir() and d.name != "features"]  # the pooled-feature cache
    assert all((d / "meta.json").exists() for d in entries) and not [d for d in entries if d.name.startswith(".tmp")]
    assert len(entries) == 2 and trainings == 2, (len(entries), trainings)
    print(f"\ntwo studies, one cache: {len(runs)} trials, {len(entries)} distinct filter sets, {trainings} trainings")

