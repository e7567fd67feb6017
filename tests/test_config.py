from pathlib import Path

import pytest
import yaml

from hebbrobust.config import StudySpec, TrialConfig, apply_overrides, load_study, load_trial, with_params
from hebbrobust.errors import SpecError

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


def test_shipped_specs_load() -> None:
    for spec in sorted((ROOT / "studies").glob("*.yaml")):
        study = load_study(spec)
        assert study.space, spec
        assert isinstance(load_trial(spec), TrialConfig)


def test_overrides_are_yaml_typed() -> None:
    out = apply_overrides({"model": {"kind": "local"}}, ["model.kind=backprop", "rule.p=4", "attack.eps=[1, 2]"])
    assert out == {"model": {"kind": "backprop"}, "rule": {"p": 4}, "attack": {"eps": [1, 2]}}


def test_load_trial_with_set(tmp_path: Path) -> None:
    path = _write(tmp_path, {"name": "x", "base": {"rule": {"p": 2}}})
    cfg = load_trial(path, ["model.kind=backprop", "base.rule.k=3"])
    assert cfg.model.kind == "backprop" and cfg.rule.p == 2 and cfg.rule.k == 3


def test_with_params_sets_dotted_keys() -> None:
    cfg = with_params(TrialConfig(), {"rule.p": 5, "model.activation": "gelu"})
    assert cfg.rule.p == 5 and cfg.model.activation == "gelu"


def test_space_list_shorthand_is_categorical(tmp_path: Path) -> None:
    spec = load_study(_write(tmp_path, {"space": {"model.kind": ["local", "backprop"]}}))
    assert spec.space["model.kind"].type == "categorical"  # type: ignore[union-attr]
    assert spec.objectives[0].metric == "clean_acc" and isinstance(spec, StudySpec)


BAD = [
    ({"bas": {}}, "bas: unknown field; allowed: base, by_kind, experiment"),  # allowed list shown
    ({"base": {"rule": {"pwer": 2}}}, "base.rule.pwer: unknown field; allowed: accumulate, batch_size"),
    ({"base": {"rule": {"p": 0.5}}}, "base.rule.p: Input should be greater than or equal to 1"),
    ({"base": {"rule": {"delta": -0.1}}}, "base.rule.delta"),
    ({"base": {"rule": {"k": 70}, "model": {"filters": 64}}}, "must be <= model.filters"),
    ({"base": {"model": {"kind": "hebb"}}}, "base.model.kind: Input should be 'local' or 'backprop'"),
    ({"base": {"model": {"filters": "many"}}}, "base.model.filters"),
    ({"base": {"attack": {"eps": [0, 2]}}}, "base.attack.eps"),
    ({"space": {}}, "space: must name at least one setting"),
    ({"space": {"rule.p": {"type": "float", "low": 5, "high": 2}}}, "space.rule.p: low (5.0) must be <= high"),
    ({"space": {"rule.pp": {"type": "float", "low": 1, "high": 2}}}, "space.rule.pp: not a trial setting"),
    ({"space": {"rule": {"type": "float", "low": 1, "high": 2}}}, "space.rule: names a whole section"),
    ({"space": {"rule.delta": {"type": "float", "low": -1, "high": 2}}}, "space.rule.delta: value -1"),
    ({"space": {"rule.p": {"type": "normal", "low": 1, "high": 2}}}, "space.rule.p"),
    ({"space": {"rule.p": {"type": "float", "low": 0, "high": 2, "log": True}}}, "log scale needs low > 0"),
    ({"space": {"model.kind": []}}, "space.model.kind.choices"),
    ({"space": {"model.kind": ["local", "hebb"]}}, "space.model.kind: value 'hebb' gives an invalid trial"),
    ({"space": {"rule.p": [2]}, "num_trials": 0}, "num_trials"),
    ({"space": {"rule.p": [2]}, "name": "a b"}, "name"),
    ({"space": {"rule.p": [2]}, "sampler": {"name": "cmaes"}}, "sampler.name"),
    ({"space": {"rule.p": [2]}, "resources": {"gpu": -1}}, "resources.gpu"),
    ({"space": {"rule.p": [2]}, "objectives": []}, "objectives"),
    ("a: [1, 2", "line"),
    ("- 1\n- 2\n", "(root): must be a YAML mapping"),
    ({"space": {"rule.p": [2]}, "base": {"rule": {"p": 1e300}}}, "base.rule.p"),
    ({"space": {"rule.p": [2]}, "base": {"model": {"filters": 10**12}}}, "base.model.filters"),
]


@pytest.mark.parametrize(("doc", "needle"), BAD)
def test_bad_specs_give_one_line_naming_file_and_field(tmp_path: Path, doc: object, needle: str) -> None:
    path = _write(tmp_path, doc)
    with pytest.raises(SpecError) as info:
        load_study(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: ")
    assert needle in msg, msg


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_study(tmp_path / "missing.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SpecError, match="bin.yaml"):
        load_study(tmp_path / "bin.yaml")
