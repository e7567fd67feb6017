import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hebbrobust.cli import app

runner = CliRunner()
TINY = {
    "name": "tiny",
    "base": {
        "data": {"name": "digits", "train_size": 300, "test_size": 100},
        "model": {"filters": 16, "kernel": 3, "pool": 2},
        "rule": {"epochs": 2, "batch_size": 50},
        "head": {"epochs": 5, "batch_size": 100, "lr": 0.01},
        "backprop": {"epochs": 5, "batch_size": 100, "lr": 0.01},
        "attack": {"n_images": 40, "radius_images": 40, "pgd_steps": 5, "eps": [2, 8]},
    },
    "space": {"rule.p": [2, 3]},
}


def _spec(tmp_path: Path, doc: object = TINY) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("doc", "sets", "needle"),
    [
        ({"base": {"rule": {"pwer": 1}}}, [], "base.rule.pwer: unknown field; allowed:"),
        (TINY, ["model.kind=hebb"], "base.model.kind: Input should be 'local' or 'backprop'"),
        (TINY, ["rule.k=99"], "must be <= model.filters"),
        (TINY, ["rule.p"], "--set rule.p: must look like dotted.key=value"),
        ("x: [", [], "not valid YAML"),
        (TINY, ["data.name=image_folder", "data.path=/nonexistent/dir"], "is not a directory"),
        (TINY, ["model.pool=20"], "model.pool 20 is larger"),
    ],
)
def test_trial_run_bad_input_is_one_line_exit_1_nothing_written(
    tmp_path: Path, doc: object, sets: list[str], needle: str
) -> None:
    out = tmp_path / "out"
    args = ["trial", "run", str(_spec(tmp_path, doc)), "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--debug", "trial", "run", str(_spec(tmp_path, "x: [")), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and result.exception is not None


def test_trial_run_writes_metrics_filters_model_and_evaluate_rereads(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["trial", "run", str(_spec(tmp_path)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "metrics.json").read_text())
    assert 0 <= doc["clean_acc"] <= 1 and doc["clean_acc"] > 0.3
    assert 0 <= doc["unconverged_frac"] <= 1 and 0 <= doc["unconverged_frac_norm_only"] <= 1
    assert doc["train_seconds"] > 0 and doc["config"]["model"]["filters"] == 16
    for key in ("pgd_acc@2", "fgsm_acc@8", "pgd_eps50", "fgsm_auc", "mask_all_ok"):
        assert key in doc, key
    for name in ("filters.png", "robustness.png", "model.pt"):
        assert (out / name).stat().st_size > 0, name
    again = runner.invoke(app, ["evaluate", str(out), "--eps", "4", "--attack", "pgd"])
    assert again.exit_code == 0, again.output
    assert "attacks 1/" in again.output  # long attacks show progress (plain lines when not a terminal)
    doc2 = json.loads((out / "metrics.json").read_text())
    assert "pgd_acc@4" in doc2 and doc2["clean_acc"] == doc["clean_acc"]
