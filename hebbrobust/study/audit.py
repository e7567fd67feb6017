"""After a study: the audit suite and the transfer matrix on chosen members, Ray-free.

`audit_study` re-attacks each member's saved trial (hebbrobust.trial.reevaluate with the audit
attacks), which rewrites metrics.json, robustness.png, adversarial.png and audit.npz in its trial
directory, logs the audit metrics and figures to the member's MLflow child run and a summary
(audit/audit.csv: ours vs worst case per ε) to the parent run. `transfer_study` writes
transfer/transfer_eps<E>.csv and .png in the study directory and logs them to the parent run under
transfer/. The report (`study report`) shows both. Members are read through the study record."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hebbrobust import tracking
from hebbrobust.errors import HebbrobustError
from hebbrobust.evaluate import AUDIT_ATTACKS, MASK_PGD_WORST_MAX_GAP, grid_metric
from hebbrobust.metrics import (
    AUDIT_IMAGES,
    AUDIT_SECONDS,
    MASK_ALL_OK,
    MASK_PGD_LE_SQUARE,
    MASK_PGD_MINUS_SQUARE_MAX,
    MASK_PGD_MINUS_WORST_MAX,
    MASK_PGD_WORST_OK,
    WORST,
)
from hebbrobust.study.directory import find_study_dir
from hebbrobust.study.record import KIND, StudyRecord, read_study
from hebbrobust.train import EpochCallback

AUDIT_DIR = "audit"  # in the study directory and on the parent run
TRANSFER_DIR = "transfer"
_AUDIT_FLAGS = (AUDIT_IMAGES, AUDIT_SECONDS, MASK_ALL_OK, MASK_PGD_LE_SQUARE, MASK_PGD_MINUS_SQUARE_MAX,
                MASK_PGD_MINUS_WORST_MAX, MASK_PGD_WORST_OK)  # fmt: skip


def transfer_file(eps: float, suffix: str) -> str:
    return f"transfer_eps{eps:g}.{suffix}"


def finished(record: StudyRecord) -> pd.DataFrame:
    """The study's finished trials (a retried trial's last attempt), best first objective first."""
    trials = record.trials
    if trials.empty:
        return trials
    latest = trials.drop_duplicates("trial_id", keep="last")
    done = latest[latest["status"] == "FINISHED"]
    name, mode = record.objectives[0]
    return done.sort_values(name, ascending=mode == "min", kind="stable") if name in done else done


def select_members(record: StudyRecord, members: str) -> pd.DataFrame:
    """The rows of the finished trials that `members` names: `front`, `all`, `top-N` (best first
    objective first) or trial ids separated by commas; a one-line error for anything else."""
    done = finished(record)
    if members == "front":
        chosen = done[done["trial_id"].isin(set(record.front["trial_id"]))]
    elif members == "all":
        chosen = done
    elif members.startswith("top-") and members[4:].isdigit() and int(members[4:]) > 0:
        chosen = done.head(int(members[4:]))
    else:
        ids = [i.strip() for i in members.split(",") if i.strip()]
        missing = [i for i in ids if i not in set(done["trial_id"])]
        if missing or not ids:
            raise HebbrobustError(
                f"--members: front, all, top-N or finished trial ids of {record.name!r}, got {members!r}"
                + (f" ({missing[0]} is not a finished trial)" if missing else "")
            )
        chosen = done.set_index("trial_id").loc[ids].reset_index()
    if chosen.empty:
        raise HebbrobustError(f"study {record.name!r}: --members {members} names no finished trial")
    return chosen


def member_dir(record: StudyRecord, trial_id: str) -> Path:
    """A member's saved trial (its first seed's when the study ran several)."""
    trial_dir = record.study_dir / "trials" / trial_id
    if (trial_dir / "metrics.json").exists():
        return trial_dir
    return next(iter(sorted(d.parent for d in trial_dir.glob("*/metrics.json"))), trial_dir)


def audit_metrics_only(metrics: dict[str, Any]) -> dict[str, Any]:
    """The audit's own metrics among a re-evaluation's: per-attack and worst-case accuracies, checks."""
    heads = tuple(f"{a}_acc@" for a in (*AUDIT_ATTACKS, WORST))
    return {k: v for k, v in metrics.items() if k.startswith(heads) or k in _AUDIT_FLAGS}


def summary_row(trial_id: str, kind: Any, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per ε of a member's audit: ours (pgd) vs worst case, each attack, the gap, masked."""
    eps = sorted(float(k.split("@")[1]) for k in metrics if k.startswith(f"{WORST}_acc@"))
    rows = []
    for e in eps:
        pgd, worst = metrics.get(grid_metric("pgd", e)), metrics[grid_metric(WORST, e)]
        row = {"trial_id": trial_id, KIND: kind, "eps": e, "pgd_acc": pgd, "worst_acc": worst}
        row.update({f"{a}_acc": metrics[grid_metric(a, e)] for a in AUDIT_ATTACKS if grid_metric(a, e) in metrics})
        row["gap"] = pgd - worst if pgd is not None else None
        row["masked"] = bool(row["gap"] is not None and row["gap"] > MASK_PGD_WORST_MAX_GAP + 1e-12)
        rows.append(row)
    return rows


@dataclass
class StudyExtra:
    """What `audit_study` / `transfer_study` did: the record, the table, the files written."""

    record: StudyRecord
    table: pd.DataFrame
    files: dict[str, Path] = field(default_factory=dict)


def audit_study(
    name_or_dir: str | Path | None,
    *,
    members: str = "front",
    attacks: list[str] | None = None,
    n_images: int | None = None,
    storage: Path | str | None = None,
    on_step: EpochCallback | None = None,
) -> StudyExtra:
    """Runs the audit suite (default: every attack of AUDIT_ATTACKS) on the chosen members; see module doc."""
    from hebbrobust.trial import reevaluate

    record = read_study(find_study_dir(name_or_dir, storage))
    chosen = select_members(record, members)
    rows: list[dict[str, Any]] = []
    for _, member in chosen.iterrows():
        trial_dir = member_dir(record, str(member["trial_id"]))
        metrics = reevaluate(trial_dir, audit_attacks=list(attacks or AUDIT_ATTACKS), n_images=n_images,
                             on_step=on_step)  # fmt: skip
        figures = {n: trial_dir / n for n in ("adversarial.png", "robustness.png") if (trial_dir / n).exists()}
        tracking.log_to_run(record.target, str(member["run_id"]), audit_metrics_only(metrics), figures,
                            artifact_path=AUDIT_DIR)  # fmt: skip
        rows += summary_row(str(member["trial_id"]), member.get(KIND), metrics)
    table = pd.DataFrame(rows)
    out = record.study_dir / AUDIT_DIR
    out.mkdir(exist_ok=True)
    table.to_csv(out / "audit.csv", index=False)
    masked = table[table["masked"]]["trial_id"].nunique() if len(table) else 0
    summary = {"audit_members": len(chosen), "audit_masked_members": masked}
    tracking.log_to_run(record.target, record.parent_run_id, summary, {"audit.csv": out / "audit.csv"},
                        artifact_path=AUDIT_DIR)  # fmt: skip
    return StudyExtra(record, table, {"audit.csv": out / "audit.csv"})


def transfer_study(
    name_or_dir: str | Path | None,
    *,
    members: str = "front",
    eps: float = 8.0,
    n_images: int | None = None,
    storage: Path | str | None = None,
    on_step: EpochCallback | None = None,
) -> StudyExtra:
    """The PGD transfer matrix of the chosen members at `eps` (1/255); see module doc."""
    import matplotlib.pyplot as plt

    from hebbrobust.trial import transfer_dirs

    record = read_study(find_study_dir(name_or_dir, storage))
    chosen = select_members(record, members)
    if len(chosen) < 2:
        raise HebbrobustError(f"study {record.name!r}: --members {members} names one trial; a transfer needs two")
    dirs = [member_dir(record, str(t)) for t in chosen["trial_id"]]
    matrix, fig = transfer_dirs(dirs, eps=eps, n_images=n_images, on_step=on_step)
    out = record.study_dir / TRANSFER_DIR
    out.mkdir(exist_ok=True)
    files = {transfer_file(eps, "csv"): out / transfer_file(eps, "csv"),
             transfer_file(eps, "png"): out / transfer_file(eps, "png")}  # fmt: skip
    matrix.to_csv(files[transfer_file(eps, "csv")])
    fig.savefig(files[transfer_file(eps, "png")], dpi=110, bbox_inches="tight")
    plt.close(fig)
    tracking.log_to_run(record.target, record.parent_run_id, {}, files, artifact_path=TRANSFER_DIR)
    return StudyExtra(record, matrix, files)
