"""A study spec's search space and sampler as Optuna objects.

Parameter names are the spec's dotted trial keys (`rule.p`); Optuna stores them as they are, and
the Ray trial gets them back as a flat dict that `config.with_params()` applies to the base trial.
"""

from __future__ import annotations

import difflib
import itertools
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from hebbrobust.config import (
    CategoricalDist,
    FloatDist,
    IntDist,
    StudySpec,
    TrialConfig,
    check_data_path,
    with_params,
)
from hebbrobust.errors import SpecError

GRID_LIMIT = 1_000_000
_PATH_KEYS = ("data.path", "data.cache_dir")


def optuna_space(spec: StudySpec, path: Path | str | None = None) -> dict[str, BaseDistribution]:
    """Dotted trial key -> Optuna distribution."""
    out: dict[str, BaseDistribution] = {}
    for key, dist in spec.space.items():
        field = f"space.{key}"
        if isinstance(dist, FloatDist):
            out[key] = FloatDistribution(dist.low, dist.high, log=dist.log)
        elif isinstance(dist, IntDist):
            if dist.log and dist.step != 1:
                raise SpecError(path, field, "log scale needs step 1", dist.step)
            out[key] = IntDistribution(dist.low, dist.high, log=dist.log, step=dist.step)
        elif isinstance(dist, CategoricalDist):
            for choice in dist.choices:
                if choice is not None and not isinstance(choice, str | int | float | bool):
                    raise SpecError(path, field, "choices must be numbers, strings, booleans or null", choice)
            if len({repr(c) for c in dist.choices}) != len(dist.choices):
                raise SpecError(path, field, "choices must not repeat", dist.choices)
            out[key] = CategoricalDistribution(list(dist.choices))
        else:  # pragma: no cover - the schema admits no other kind
            raise SpecError(path, field, f"unknown distribution {type(dist).__name__}")
    return out


def grid_values(spec: StudySpec, path: Path | str | None = None) -> dict[str, list[Any]]:
    """The grid sampler's values per key: categorical choices, and int ranges expanded by `step`.
    A float range has no grid: make it categorical (a list) to search it on a grid."""
    out: dict[str, list[Any]] = {}
    for key, dist in spec.space.items():
        if isinstance(dist, CategoricalDist):
            out[key] = list(dist.choices)
        elif isinstance(dist, IntDist):
            out[key] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise SpecError(
                path,
                f"space.{key}",
                "the grid sampler needs a list of values or an int range, not a float range",
            )
    return out


def grid_size(spec: StudySpec) -> int:
    return math.prod(len(v) for v in grid_values(spec).values())


class StudyGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler without its `study.stop()` on the last grid point: that call is only
    allowed inside `study.optimize`, and here Ray Tune decides how many trials run."""

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


def make_sampler(spec: StudySpec, path: Path | str | None = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler the spec names, with its seed and options (options checked here)."""
    cfg = spec.sampler
    opts = dict(cfg.options)
    kinds: dict[str, Any] = {
        "tpe": optuna.samplers.TPESampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "nsga3": optuna.samplers.NSGAIIISampler,
        "gp": optuna.samplers.GPSampler,
        "random": optuna.samplers.RandomSampler,
    }
    try:
        if cfg.name == "grid":
            values = grid_values(spec, path)
            size = math.prod(len(v) for v in values.values())
            if size > GRID_LIMIT:
                raise SpecError(path, "space", f"the grid has {size} points; at most {GRID_LIMIT}")
            return StudyGridSampler(values, seed=cfg.seed, **opts)
        return kinds[cfg.name](seed=cfg.seed, **opts)
    except TypeError as e:
        raise SpecError(path, "sampler.options", f"not accepted by the {cfg.name} sampler: {e}") from None
    except ValueError as e:
        raise SpecError(path, "sampler.options", str(e)) from None


def num_samples(spec: StudySpec) -> int:
    """Trials to run: `num_trials`, capped at the grid's size for the grid sampler."""
    if spec.sampler.name == "grid":
        return min(spec.num_trials, grid_size(spec))
    return spec.num_trials


def absolute_paths(spec: StudySpec, cwd: Path | None = None) -> StudySpec:
    """The spec with the trial's file paths (data.path, data.cache_dir, in the base and in
    categorical choices) made absolute against `cwd`: Ray runs trials in another directory."""
    base_dir = Path(cwd) if cwd is not None else Path.cwd()

    def absolute(value: Any) -> Any:
        if value is None:
            return None
        p = Path(str(value)).expanduser()
        return str(p if p.is_absolute() else (base_dir / p).resolve())

    data = spec.model_dump(mode="json")
    for key in ("path", "cache_dir"):
        data["base"]["data"][key] = absolute(data["base"]["data"].get(key))
    for key in _PATH_KEYS:
        dist = data["space"].get(key)
        if dist is not None and dist.get("type") == "categorical":
            dist["choices"] = [absolute(c) for c in dist["choices"]]
    if data.get("storage") is not None:
        data["storage"] = absolute(data["storage"])
    return StudySpec.model_validate(data)


# --------------------------------------------------------------------------- checks before a study starts


def trial_metric_names(config: TrialConfig, *, filter_cache: bool = True, seeds: int = 1) -> set[str]:
    """The numeric metrics a trial of `config` reports (evaluate.py names them; the trainable
    averages seeds and adds `<name>_std` when seeds > 1). tests/test_reliability.py checks this
    against a real trial, so a metric added there without being added here is caught."""
    from hebbrobust import evaluate as ev

    names = {ev.CLEAN_ACC, ev.UNCONVERGED_FRAC, ev.UNCONVERGED_FRAC_NORM_ONLY, ev.TRAIN_SECONDS, "n_train", "n_test"}
    if config.model.kind == "local":
        names |= {"filter_seconds"} | ({"filters_cache_hit", "filter_seconds_saved"} if filter_cache else set())
    if config.attack.enabled:
        for attack in ev.ATTACKS:
            for eps in config.attack.eps:
                names |= {ev.grid_metric(attack, eps), ev.grid_metric(attack, eps, relative=True)}
            if config.attack.radius_images > 0:
                names |= {f"{attack}_{key}" for key in ("eps50", "auc", "R", "r2", "unbroken_frac")}
        names |= {ev.GRID_CLEAN_ACC, ev.GRID_IMAGES, ev.RADIUS_IMAGES, ev.ATTACK_SECONDS}
        names |= {
            ev.MASK_PGD_LE_FGSM, ev.MASK_PGD_MINUS_FGSM_MAX, ev.MASK_LARGE_EPS_OK, ev.MASK_LARGE_EPS_ACC,
            ev.MASK_ZERO_GRAD_OK, ev.MASK_ZERO_GRAD_FRAC, ev.MASK_ALL_OK,
        }  # fmt: skip
    if seeds > 1:
        names |= {f"{name}_std" for name in names}
    return names


_NAME_KEYS = ("model.kind", "attack.enabled")  # searched settings that change which metrics a trial reports


def check_objectives(spec: StudySpec, path: Path | str | None = None) -> None:
    """Every objective must be a metric every trial of the study reports (else each trial would
    fail at its end); no objective twice."""
    choices = [
        [(key, c) for c in dist.choices]
        for key, dist in spec.space.items()
        if key in _NAME_KEYS and isinstance(dist, CategoricalDist)
    ]
    known: set[str] | None = None
    for combo in itertools.product(*choices):
        names = trial_metric_names(
            with_params(spec.base, dict(combo)), filter_cache=spec.filter_cache, seeds=spec.seeds
        )
        known = names if known is None else known & names
    assert known is not None
    seen: set[str] = set()
    for i, objective in enumerate(spec.objectives):
        field = f"objectives.{i}.metric"
        if objective.metric in seen:
            raise SpecError(path, field, "listed twice", objective.metric)
        seen.add(objective.metric)
        if objective.metric in known:
            continue
        close = difflib.get_close_matches(objective.metric, sorted(known), n=3, cutoff=0.6)
        attack = spec.base.attack
        context = (
            "attack.enabled is false"
            if not attack.enabled
            else f"attack.eps is {[float(e) for e in attack.eps]}, attack.radius_images {attack.radius_images}"
        )
        raise SpecError(
            path,
            field,
            f"not a metric every trial of this study reports ({context}"
            + (f"; did you mean {', '.join(close)}?" if close else "; see README, Metric names")
            + ")",
            objective.metric,
        )


def check_data_paths(spec: StudySpec, path: Path | str | None = None) -> None:
    """image_folder data must exist before a study starts: the base trial's and every searched choice's."""
    names = spec.space.get("data.name")
    paths = spec.space.get("data.path")
    name_choices = names.choices if isinstance(names, CategoricalDist) else [spec.base.data.name]
    path_choices = paths.choices if isinstance(paths, CategoricalDist) else [spec.base.data.path]
    field = "space.data" if isinstance(paths, CategoricalDist) else "base.data"
    for name, data_path in itertools.product(name_choices, path_choices):
        data = spec.base.data.model_copy(update={"name": name, "path": Path(data_path) if data_path else None})
        check_data_path(path, field, data)
