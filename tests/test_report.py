"""Study reports: the trials table, correlations and importances on hand-made frames and studies, the
figures on hand-made frames, and (slow) a whole report from a real small study on a real local Ray
with a real MLflow sqlite store. The Pareto front itself is tested in test_study.py."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from matplotlib.figure import Figure
from test_study import TINY_BASE, local_ray  # noqa: F401  (local_ray: the module's Ray fixture)
from typer.testing import CliRunner

from hebbrobust import numeric, plots, report, tracking
from hebbrobust.cli import app
from hebbrobust.config import StudySpec
from hebbrobust.errors import HebbrobustError
from hebbrobust.study import record

OBJ = [("acc", "max"), ("rob", "max")]
runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- the trials table


def runs_frame() -> pd.DataFrame:
    """MLflow child runs as tracking.read_trials gives them: a retried trial, a failed one that would
    dominate everything, a running one, a finished one missing an objective."""
    return pd.DataFrame(
        {
            "run_id": ["r1", "r2", "r3", "r4", "r5", "r6", "r7"],
            "trial_id": ["a", "b", "b", "c", "d", "e", "f"],
            "status": ["FINISHED", "FAILED", "FINISHED", "FAILED", "RUNNING", "FINISHED", "FINISHED"],
            "reason": [None, "diverged", None, "NaN", None, None, None],
            "model.kind": ["local", "local", "local", "backprop", "backprop", "backprop", "local"],
            "rule.p": [2, 3, 3, 4, 5, 6, 2],
            "acc": [0.7, 0.1, 0.9, 0.99, np.nan, 0.8, np.nan],
            "rob": [0.5, 0.1, 0.2, 0.99, np.nan, 0.1, 0.9],
            "acc_std": [0.01, np.nan, 0.02, np.nan, np.nan, 0.0, np.nan],
            "unconverged_frac": [0.1, 0.5, 0.3, 1.0, np.nan, 1.0, 0.2],
            "train_seconds": [1.0, 2.0, 3.0, 4.0, np.nan, 5.0, 6.0],
        }
    )


def test_trials_table_has_one_row_per_finished_trial_front_first() -> None:
    table = report.trials_table(runs_frame(), OBJ, ["rule.p"])
    # b's last attempt finished (its failed first attempt is gone); c failed, d runs: left out
    assert table["trial_id"].tolist() == ["b", "a", "e", "f"]
    assert table["run_id"].tolist() == ["r3", "r1", "r6", "r7"]
    assert table["pareto"].tolist() == [True, True, False, False]
    assert table["pareto_rank"].tolist()[:3] == [0, 0, 1] and pd.isna(table["pareto_rank"].iloc[3])  # f: no acc
    assert table.columns.tolist()[:8] == [
        "trial_id", "model.kind", "acc", "rob", "acc_std", "pareto", "pareto_rank", "rule.p",
    ]
    assert table.columns[8] == report.UNCONVERGED and table.columns[-1] == "run_id"
    assert not {"status", "reason", "on_front"} & set(table.columns)


def test_trials_table_with_min_objective_and_no_finished_trials() -> None:
    frame = runs_frame()
    table = report.trials_table(frame, [("acc", "max"), ("train_seconds", "min")])
    assert table[table["pareto"]]["trial_id"].tolist() == ["b", "a"]  # e: less acc and slower than b
    empty = report.trials_table(frame[frame["status"] == "RUNNING"], OBJ)
    assert empty.empty and {"pareto", "pareto_rank"} <= set(empty.columns)


def test_study_counts_count_a_retried_trial_once() -> None:
    counts = record.study_counts(runs_frame(), total=8)
    assert counts == {"total": 8, "finished": 4, "gated": 0, "failed": 1, "stopped": 0, "unfinished": 3, "runs": 7}
    assert record.study_counts(pd.DataFrame(), total=2)["unfinished"] == 2


# --------------------------------------------------------------------------- correlations


def test_correlations_per_model_kind_and_when_undefined() -> None:
    df = pd.DataFrame(
        {
            "model.kind": ["local"] * 5 + ["backprop"] * 3 + ["other"] * 2,
            "acc": [0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.8, 0.9, 0.5, 0.6],
            "rob": [1.0, 0.5, 0.2, 0.1, np.nan, 0.3, 0.3, 0.3, 0.1, 0.2],
        }
    )
    corr = report.correlations(df, "acc", "rob").set_index("kind")
    assert corr.index.tolist() == ["local", "backprop", "other", "all"]
    assert corr.loc["local", "n"] == 4  # the NaN row drops out
    assert corr.loc["local", "spearman"] == pytest.approx(-1.0)  # monotone, not linear
    assert -1.0 < corr.loc["local", "pearson"] < -0.85
    assert np.isnan(corr.loc["backprop", "pearson"]) and corr.loc["backprop", "note"] == "rob is constant"
    assert corr.loc["other", "note"] == "2 trials: needs 3"
    assert corr.loc["all", "n"] == 9 and not corr.loc["all", "note"]
    expected = df.dropna()[["acc", "rob"]].corr().iloc[0, 1]
    assert corr.loc["all", "pearson"] == pytest.approx(expected)
    one_kind = report.correlations(df[df["model.kind"] == "local"], "acc", "rob")
    assert one_kind["kind"].tolist() == ["local"]  # no "all" row when it would repeat the group


# --------------------------------------------------------------------------- importance


def optuna_study(rows: list[tuple[dict, list[float]]]) -> optuna.Study:
    dists = {
        "x": optuna.distributions.FloatDistribution(0, 1),
        "noise": optuna.distributions.FloatDistribution(0, 1),
        "kind": optuna.distributions.CategoricalDistribution(["local", "backprop"]),
    }
    study = optuna.create_study(directions=["maximize", "maximize"])
    for params, values in rows:
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, values=values))
    return study


def test_importance_rates_what_matters_and_says_what_it_cannot_rate() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(30):
        x, noise = float(rng.random()), float(rng.random())
        rows.append(({"x": x, "noise": noise, "kind": "local"}, [x, 1.0]))  # objective 2 never varies
    table = report.importance_table(optuna_study(rows), OBJ, ["x", "noise", "kind"]).set_index(["objective", "param"])
    assert table.loc[("acc", "x"), "importance"] > 0.8 > table.loc[("acc", "noise"), "importance"]
    assert np.isnan(table.loc[("acc", "kind"), "importance"])
    assert table.loc[("acc", "kind"), "note"] == "took one value only"
    assert table["importance"].xs("rob").isna().all()
    assert set(table["note"].xs("rob")) == {"not computed: the objective never varied"}
    assert set(table["evaluator"]) == {report.EVALUATOR} and "fANOVA" in report.EVALUATOR
    assert set(table["trials"]) == {30}


def test_importance_with_too_few_trials_or_no_study() -> None:
    few = report.importance_table(optuna_study([({"x": 0.1, "noise": 0.2, "kind": "local"}, [1, 2])] * 2), OBJ, ["x"])
    assert few["importance"].isna().all()
    assert set(few["note"]) == {"2 finished trials: importance needs at least 3"}
    none = report.importance_table(None, OBJ, ["x"])
    assert none["objective"].tolist() == ["acc", "rob"] and set(none["note"]) == {"no Optuna study"}


def test_missing_optuna_storage_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(HebbrobustError, match="no Optuna storage"):
        record.load_optuna_study(f"sqlite:///{tmp_path}/optuna.db", "s")
    assert not (tmp_path / "optuna.db").exists()


def test_mlflow_links_only_for_servers() -> None:
    assert tracking.mlflow_run_url("http://host:5000/", "3", "abc") == "http://host:5000/#/experiments/3/runs/abc"
    assert tracking.mlflow_run_url("sqlite:////x/mlflow.db", "3", "abc") is None


# --------------------------------------------------------------------------- figures (hand-made frames)


def _saved(fig: Figure, path: Path) -> bytes:
    fig.savefig(path)
    return path.read_bytes()


def test_report_figures_draw_hand_made_frames(tmp_path: Path) -> None:
    df = report.trials_table(runs_frame(), OBJ, ["rule.p"])
    df["act"] = ["relu", "gelu", "relu", None]
    fig = plots.pareto_scatter(df, y="acc", x="rob", front="pareto")
    front_line = [line for line in fig.axes[0].lines if line.get_drawstyle().startswith("steps")]
    assert len(front_line) == 1 and front_line[0].get_drawstyle() == "steps-pre"  # larger rob is better
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["a", "b"]
    assert _saved(fig, tmp_path / "p.png").startswith(PNG)
    minimised = plots.pareto_scatter(df, y="acc", x="rob", x_mode="min", front="pareto")
    assert [ln.get_drawstyle() for ln in minimised.axes[0].lines] == ["steps-post"]
    grid = plots.effects_grid(df, ["rule.p", "act"], ["acc", "rob"], categorical={"act"}, log_scale={"rule.p"})
    assert len(grid.axes) == 4 and grid.axes[0].get_xscale() == "log"
    assert [t.get_text() for t in grid.axes[2].get_xticklabels()] == ["relu", "gelu"]
    imp = pd.DataFrame(
        {"objective": ["acc", "acc", "rob"], "param": ["p", "q", "p"], "importance": [0.7, np.nan, np.nan],
         "note": ["", "took one value only", "2 finished trials: importance needs at least 3"]}
    )
    bars = plots.importance_bars(imp, ["acc", "rob"])
    assert "importance needs at least 3" in bars.axes[1].texts[0].get_text()
    uc = plots.scatter_by_kind(df, report.UNCONVERGED, ["acc", "rob"], notes={"acc": "local n=2"})
    assert uc.axes[0].texts[0].get_text() == "local n=2"
    panels = plots.image_panels([np.zeros((4, 4, 3)), np.ones((4, 4))], ["one", "two"])
    assert [ax.get_title() for ax in panels.axes] == ["one", "two"]
    for i, f in enumerate((grid, bars, uc, panels)):
        assert _saved(f, tmp_path / f"{i}.png").startswith(PNG)


# --------------------------------------------------------------------------- errors


def test_report_on_a_missing_study_is_one_line_exit_1(tmp_path: Path) -> None:
    result = runner.invoke(app, ["study", "report", "nope", "--storage", str(tmp_path)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no study 'nope'" in lines[0], result.stderr
    with pytest.raises(HebbrobustError, match="not a study directory"):
        report.build_report(tmp_path)


# --------------------------------------------------------------------------- a real study (slow)


@pytest.fixture(scope="module")
def small_study(local_ray, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    """A finished 8-trial grid study on digits: local and backprop at p 2 and 3 with kernel 3, and the
    four with a 9x9 kernel, larger than the images (they fail at once)."""
    from hebbrobust.study import run_study

    root = tmp_path_factory.mktemp("report-study")
    spec = StudySpec.model_validate(
        {
            "name": "rep",
            "base": TINY_BASE,
            "space": {"model.kind": ["local", "backprop"], "rule.p": [2, 3], "model.kernel": [3, 9]},
            "objectives": [{"metric": "clean_acc", "mode": "max"}, {"metric": "pgd_acc@2", "mode": "max"}],
            "sampler": {"name": "grid", "seed": 0},
            "max_concurrent": 2,
        }
    )
    outcome = run_study(spec, storage=root / "studies", tracking_uri=f"sqlite:///{root}/mlflow.db")
    assert outcome.counts["finished"] == 4 and outcome.counts["failed"] == 4
    return outcome


def _img_sources(page: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_html_report_of_a_real_study(small_study) -> None:
    study_dir = small_study.study_dir
    result = runner.invoke(app, ["study", "report", str(study_dir)])
    assert result.exit_code == 0, result.output
    out = study_dir / "report"
    for name in ("trials.csv", "correlations.csv", "importance.csv", "pareto.png", "importance.png",
                 "effects.png", "unconverged.png", "report.html", "filters/front_filters.png"):
        assert (out / name).stat().st_size > 0, name
    for png in out.rglob("*.png"):
        assert png.read_bytes().startswith(PNG), png

    # trials.csv: exactly the finished trials, the front recomputed among them
    target = tracking.TrackingTarget(small_study.tracking_uri, small_study.experiment, small_study.experiment_id)
    runs = tracking.read_trials(target, small_study.parent_run_id)
    csv = pd.read_csv(out / "trials.csv")
    assert sorted(csv["run_id"]) == sorted(runs[runs["status"] == "FINISHED"]["run_id"])
    assert len(csv) == 4 and set(csv["model.kernel"]) == {3} and set(csv["model.kind"]) == {"local", "backprop"}
    assert csv["pareto"].tolist() == numeric.pareto_front(csv, small_study.objectives).tolist()
    for col in ("clean_acc", "pgd_acc@2", "pareto_rank", "rule.p", report.UNCONVERGED):
        assert csv[col].notna().all(), col
    front = csv[csv["pareto"]]
    copies = sorted(p.name for p in (out / "filters").glob("*.png") if p.name != "front_filters.png")
    assert len(copies) == len(front) and all(any(t in c for c in copies) for t in front["trial_id"])

    # importance per model kind: 2 complete trials each, too few to rate
    imp = pd.read_csv(out / "importance.csv")
    assert set(imp["evaluator"]) == {report.EVALUATOR} and set(imp["trials"]) == {2}
    assert set(imp["kind"]) == {"local", "backprop"} and "model.kind" not in set(imp["param"])
    assert imp["note"].str.contains("importance needs at least 3").all()
    corr = pd.read_csv(out / "correlations.csv")
    assert {"local", "backprop", "all"} <= set(corr["kind"]) and set(corr["x"]) == {"clean_acc", report.UNCONVERGED}

    # one self-contained page: every image inline, decodable, and every figure shown
    page = (out / "report.html").read_text()
    sources = _img_sources(page)
    shown = ["pareto.png", "hypervolume.png", "importance.png", "effects.png", "unconverged.png",
             "filters/front_filters.png", "converged.png"]
    shown += ["accuracy_vs_R.png"] if (out / "accuracy_vs_R.png").exists() else []
    assert len(sources) == len(shown)  # + hypervolume and the population figures: converged fraction, accuracy vs R
    values = pd.read_csv(out / "values.csv")  # per searched value and kind: the 4 finished trials
    assert values[values["param"] == "rule.p"]["n"].sum() == 4
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:40]
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    for name in shown:
        assert f"({name})" in page, name
    assert small_study.parent_run_id in page and all(run in page for run in csv["run_id"])
    assert "mlflow ui --backend-store-uri" in page and "optuna-dashboard sqlite:///" in page
    assert "src=\"http" not in page and "src=\"file" not in page

    # the files went to the study's parent run under report/
    client = target.client()
    logged = {a.path for a in client.list_artifacts(small_study.parent_run_id, "report")}
    assert {"report/report.html", "report/trials.csv", "report/pareto.png", "report/filters"} <= logged
    assert "report/filters/front_filters.png" in {
        a.path for a in client.list_artifacts(small_study.parent_run_id, "report/filters")
    }


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_markdown_report_elsewhere_reading_runs_from_a_given_store(small_study, tmp_path: Path) -> None:
    out = tmp_path / "md"
    uri = small_study.tracking_uri
    rep = report.build_report(small_study.study_dir, out_dir=out, fmt="md", tracking_uri=uri, log=False)
    assert rep.out_dir == out and rep.artifact_uri is None and "report.html" not in rep.files
    page = (out / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    shown = ["pareto.png", "hypervolume.png", "importance.png", "effects.png", "unconverged.png",
             "filters/front_filters.png", "converged.png"]
    shown += ["accuracy_vs_R.png"] if (out / "accuracy_vs_R.png").exists() else []
    assert sorted(linked) == sorted(shown)
    assert all((out / name).read_bytes().startswith(PNG) for name in linked)
    assert "| trial_id |" in page and small_study.parent_run_id in page
    with pytest.raises(HebbrobustError, match="no experiment 'rep'"):
        report.build_report(small_study.study_dir, tracking_uri=f"sqlite:///{tmp_path}/other.db", log=False)
