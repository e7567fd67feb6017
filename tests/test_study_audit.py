"""`study audit` and `study transfer` on a real tiny study (real local Ray, real MLflow sqlite store),
and the report's audit pieces on hand-made frames."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from test_study import TINY_BASE, local_ray  # noqa: F401  (local_ray: the module's Ray fixture)
from typer.testing import CliRunner

from hebbrobust import report, tracking
from hebbrobust.cli import app
from hebbrobust.config import StudySpec
from hebbrobust.errors import HebbrobustError
from hebbrobust.study.audit import select_members, summary_row
from hebbrobust.study.record import read_study

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


def test_audit_table_flags_pgd_above_worst_case_by_more_than_two_points() -> None:
    trials = pd.DataFrame(
        [
            {"trial_id": "a", "model.kind": "local", "pgd_acc@2": 0.50, "worst_acc@2": 0.40, "square_acc@2": 0.41,
             "pgd_acc@8": 0.20, "worst_acc@8": 0.19, "square_acc@8": 0.19},
            {"trial_id": "b", "model.kind": "backprop", "pgd_acc@2": 0.30, "worst_acc@2": 0.29, "square_acc@2": 0.3,
             "pgd_acc@8": 0.10, "worst_acc@8": 0.09, "square_acc@8": 0.1},
            {"trial_id": "c", "model.kind": "backprop", "pgd_acc@2": 0.30},  # not audited
        ]
    )  # fmt: skip
    table = report.audit_table(trials)
    assert len(table) == 4 and set(table["trial_id"]) == {"a", "b"}
    row = table[(table["trial_id"] == "a") & (table["eps"] == 2)].iloc[0]
    assert row["gap"] == pytest.approx(0.10) and row["masked"] and row["square_acc"] == 0.41
    assert not table[table["trial_id"] == "b"]["masked"].any()
    masked = report.masked_trials(table)
    assert masked["trial_id"].tolist() == ["a"] and masked["eps"].tolist() == [2.0]
    assert masked["gap"].iloc[0] == pytest.approx(0.10)
    # exactly 2 points is not a warning
    edge = summary_row("e", "local", {"pgd_acc@2": 0.52, "worst_acc@2": 0.50})
    assert not edge[0]["masked"]


@pytest.fixture(scope="module")
def tiny_study(local_ray, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    """A finished 2-trial grid study on digits: one local, one backprop model, radius search on."""
    from hebbrobust.study import run_study

    root = tmp_path_factory.mktemp("audit-study")
    base = {**TINY_BASE, "attack": {**TINY_BASE["attack"], "radius_images": 10, "confidence": 0.0}}
    spec = StudySpec.model_validate(
        {
            "name": "aud",
            "base": base,
            "space": {"model.kind": ["local", "backprop"]},
            "objectives": [{"metric": "clean_acc", "mode": "max"}, {"metric": "pgd_acc@2", "mode": "max"}],
            "sampler": {"name": "grid", "seed": 0},
            "max_concurrent": 2,
        }
    )
    outcome = run_study(spec, storage=root / "studies", tracking_uri=f"sqlite:///{root}/mlflow.db")
    assert outcome.counts["finished"] == 2
    return outcome


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_study_audit_logs_to_mlflow_and_the_report_shows_ours_vs_worst(tiny_study) -> None:
    study_dir = tiny_study.study_dir
    bad = runner.invoke(app, ["study", "audit", str(study_dir), "--members", "nope"])
    assert bad.exit_code == 1 and "--members" in bad.output
    result = runner.invoke(app, ["study", "audit", str(study_dir), "--members", "all", "--attacks", "apgd-ce",
                                 "--attacks", "square"])  # fmt: skip
    assert result.exit_code == 0, result.output
    csv = pd.read_csv(study_dir / "audit" / "audit.csv")
    assert len(csv) == 2 and set(csv["eps"]) == {2.0}
    assert (csv["worst_acc"] <= csv[["pgd_acc", "apgd-ce_acc", "square_acc"]].min(axis=1) + 1e-12).all()

    # the child runs carry the audit metrics (read back under their own names) and figures
    record = read_study(study_dir)
    trials = record.trials
    for _, row in trials.iterrows():
        assert row["worst_acc@2"] == pytest.approx(csv.set_index("trial_id").loc[row["trial_id"], "worst_acc"])
        assert row["apgd-ce_acc@2"] >= row["worst_acc@2"]
        trial_dir = study_dir / "trials" / row["trial_id"]
        with np.load(trial_dir / "audit.npz") as z:
            assert {"pgd@2", "apgd-ce@2", "square@2", "worst@2", "masked_index"} <= set(z.files)
    client = record.target.client()
    logged = {a.path for a in client.list_artifacts(str(trials["run_id"].iloc[0]), "audit")}
    assert "audit/robustness.png" in logged
    parent = client.get_run(record.parent_run_id)
    assert parent.data.metrics["audit_members"] == 2
    assert "audit/audit.csv" in {a.path for a in client.list_artifacts(record.parent_run_id, "audit")}

    # the report: ours vs worst side by side, adversarial examples of the front's members
    rep = report.build_report(study_dir, fmt="md", log=False)
    page = (rep.out_dir / "report.md").read_text()
    assert "## Audit: our PGD vs the worst case" in page
    header = next(line for line in page.splitlines() if line.startswith("| trial_id | model.kind | eps"))
    assert "pgd_acc | worst_acc | gap" in header and "square_acc" in header
    assert (rep.out_dir / "audit.csv").exists()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    front = rep.trials[rep.trials["pareto"]]["trial_id"]
    assert all((study_dir / "trials" / t / "adversarial.png").exists() for t in front)
    assert len([p for p in linked if p.startswith("adversarial/")]) == len(front) >= 1
    assert all((rep.out_dir / p).read_bytes().startswith(PNG) for p in linked)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_study_transfer_matrix_on_the_parent_run_and_in_the_report(tiny_study) -> None:
    study_dir = tiny_study.study_dir
    result = runner.invoke(app, ["study", "transfer", str(study_dir), "--members", "all", "--eps", "2"])
    assert result.exit_code == 0, result.output
    matrix = pd.read_csv(study_dir / "transfer" / "transfer_eps2.csv", index_col=0)
    assert matrix.shape == (2, 2) and list(matrix.index) == list(matrix.columns)
    assert sorted(label.split()[0] for label in matrix.index) == ["backprop", "local"]
    pgd = read_study(study_dir).trials.set_index("model.kind")["pgd_acc@2"]
    for label in matrix.index:  # the diagonal is white-box PGD: the trial's own pgd_acc, same images and seed
        assert matrix.loc[label, label] == pytest.approx(pgd[label.split()[0]], abs=1 / 60 + 1e-9), matrix
    assert ((matrix.to_numpy() >= 0) & (matrix.to_numpy() <= 1)).all()
    record = read_study(study_dir)
    logged = {a.path for a in record.target.client().list_artifacts(record.parent_run_id, "transfer")}
    assert {"transfer/transfer_eps2.csv", "transfer/transfer_eps2.png"} <= logged
    rep = report.build_report(study_dir, fmt="html", log=False)
    page = (rep.out_dir / "report.html").read_text()
    assert "Transfer matrix at ε = 2/255" in page and "transfer/transfer_eps2.png" in page
    with pytest.raises(HebbrobustError, match="names one trial"):
        from hebbrobust.study.audit import transfer_study

        transfer_study(study_dir, members="top-1", eps=2)
    assert len(select_members(record, "top-1")) == 1
    assert tracking.mlflow_name("apgd-ce_acc@2") == "apgd-ce_acc_eps2"


def test_audit_npz_keeps_the_images_our_pgd_missed_for_the_report(tmp_path) -> None:
    import torch

    from hebbrobust.trial import save_audit

    t, f = True, False
    robust = {("pgd", 2.0): np.array([t, t, f, t]), ("square", 2.0): np.array([f, t, f, t]),
              ("pgd", 8.0): np.array([t, f, f, t]), ("square", 8.0): np.array([t, f, f, f])}  # fmt: skip
    robust.update({("worst", e): robust["pgd", e] & robust["square", e] for e in (2.0, 8.0)})
    x = torch.rand(4, 1, 5, 5)
    save_audit(tmp_path / "audit.npz", robust, x)
    with np.load(tmp_path / "audit.npz") as z:
        assert z["masked_index"].tolist() == [0, 3]  # ε 2 broke image 0, ε 8 image 3; image 2 was never robust
    images = report.masked_images(tmp_path / "audit.npz")
    assert images.shape == (2, 5, 5)
    np.testing.assert_allclose(images, x[[0, 3], 0].numpy(), atol=1e-3)
    assert report.masked_images(tmp_path / "none.npz").shape[0] == 0
