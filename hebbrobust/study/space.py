"""A study spec's search space and sampler as Optuna objects.

Parameter names are the spec's dotted trial keys (`rule.p`); Optuna stores them as they are, and
the Ray trial gets them back as a flat dict that `config.study_trial()` applies to the base trial.

Conditional spaces: the space is sampled define-by-run (`SearchSpace`, OptunaSearch's callable
space), key by key in the spec's order, and an entry with `when: {model.kind: local}` is suggested
only where the trial so far (base, by_kind, keys sampled before it) has one of those values. So a
backprop trial carries no `rule.*` parameter in Optuna, and importance and the front are per kind.
The grid sampler on a conditional space enumerates the valid combinations (`grid_points`) and
enqueues them (Optuna's GridSampler would treat a skipped key as a grid axis and repeat points).
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
    NestedSeeds,
    StudySpec,
    TrialConfig,
    check_data_path,
    get_dotted,
    study_trial,
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


def is_conditional(spec: StudySpec) -> bool:
    return any(dist.when for dist in spec.space.values())


def applies(spec: StudySpec, key: str, sampled: dict[str, Any]) -> bool:
    """Whether space entry `key` is sampled in a trial whose earlier keys drew `sampled`."""
    when = spec.space[key].when
    if not when:
        return True
    trial = study_trial(spec, sampled).model_dump(mode="json")
    return all(sampled[k] in v if k in sampled else get_dotted(trial, k) in v for k, v in when.items())


class SearchSpace:
    """OptunaSearch's define-by-run space: suggests, in the spec's order, every key that applies.
    A plain object holding the spec (Tune pickles its searcher)."""

    def __init__(self, spec: StudySpec, path: Path | str | None = None) -> None:
        self.spec = spec
        self.dists = optuna_space(spec, path)

    def __call__(self, trial: optuna.Trial) -> None:
        sampled: dict[str, Any] = {}
        for key, dist in self.dists.items():
            if not applies(self.spec, key, sampled):
                continue
            if isinstance(dist, FloatDistribution):
                sampled[key] = trial.suggest_float(key, dist.low, dist.high, log=dist.log)
            elif isinstance(dist, IntDistribution):
                sampled[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
            else:
                assert isinstance(dist, CategoricalDistribution)
                sampled[key] = trial.suggest_categorical(key, dist.choices)  # type: ignore[arg-type]
        return None  # OptunaSearch takes the suggested values as the trial's parameters


def grid_points(spec: StudySpec, path: Path | str | None = None) -> list[dict[str, Any]]:
    """Every valid combination of a (conditional) grid, in the spec's order (the last key varies
    fastest: list the filter settings before the head settings and trials sharing filters run together)."""
    values = grid_values(spec, path)
    points: list[dict[str, Any]] = [{}]
    for key in spec.space:
        grown: list[dict[str, Any]] = []
        for point in points:
            if applies(spec, key, point):
                grown += [{**point, key: v} for v in values[key]]
            else:
                grown.append(point)
        points = grown
        if len(points) > GRID_LIMIT:
            raise SpecError(path, "space", f"the grid has more than {GRID_LIMIT} points")
    return points


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
    if is_conditional(spec):
        return len(grid_points(spec))
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
        if cfg.name == "grid" and is_conditional(spec):  # every point is enqueued (`grid_points`)
            return optuna.samplers.RandomSampler(seed=cfg.seed)
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


def trial_metric_names(
    config: TrialConfig, *, filter_cache: bool = True, seeds: int | NestedSeeds = 1
) -> set[str]:
    """The numeric metrics a trial of `config` reports (evaluate.py names them; the trainable
    averages seeds and adds `<name>_std` when seeds > 1, and `<name>_std_filters` / `_std_heads` for
    nested seeds). tests/test_reliability.py checks this against a real trial, so a metric added
    there without being added here is caught."""
    from hebbrobust import evaluate as ev
    from hebbrobust import trial as tr

    names = {ev.CLEAN_ACC, ev.UNCONVERGED_FRAC, ev.UNCONVERGED_FRAC_NORM_ONLY, ev.TRAIN_SECONDS, "n_train", "n_test"}
    if config.model.kind == "local":
        cached = {"filters_cache_hit", "filter_seconds_saved", "features_cache_hit"}
        names |= {"filter_seconds", "feature_seconds"} | (cached if filter_cache else set())
        if config.rule.min_converged is not None:
            names |= {tr.GATED, tr.CONVERGED_FRAC}
    if config.attack.enabled:
        for attack in ev.ATTACKS:
            for eps in config.attack.eps:
                names |= {ev.grid_metric(attack, eps), ev.grid_metric(attack, eps, relative=True)}
            if config.attack.radius_images != 0:
                names |= {f"{attack}_{key}" for key in ("eps50", "auc", "R", "r2", "unbroken_frac")}
        if config.attack.radius_images == "confident":
            names.add(ev.CONFIDENT_IMAGES)
        names |= {ev.GRID_CLEAN_ACC, ev.GRID_IMAGES, ev.RADIUS_IMAGES, ev.ATTACK_SECONDS}
        names |= {
            ev.MASK_PGD_LE_FGSM, ev.MASK_PGD_MINUS_FGSM_MAX, ev.MASK_LARGE_EPS_OK, ev.MASK_LARGE_EPS_ACC,
            ev.MASK_ZERO_GRAD_OK, ev.MASK_ZERO_GRAD_FRAC, ev.MASK_ALL_OK,
        }  # fmt: skip
    filter_seeds, head_seeds = (seeds, 1) if isinstance(seeds, int) else (seeds.filters, seeds.heads)
    spread = {f"{name}_std" for name in names} if filter_seeds * head_seeds > 1 else set()
    if isinstance(seeds, NestedSeeds):
        spread |= {f"{name}_std_filters" for name in names} if filter_seeds > 1 else set()
        spread |= {f"{name}_std_heads" for name in names} if head_seeds > 1 else set()
    return names | spread


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
        names = trial_metric_names(study_trial(spec, dict(combo)), filter_cache=spec.filter_cache, seeds=spec.seeds)
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
            else f"attack.eps is {[float(e) for e in attack.eps]}, attack.radius_images {attack.radius_images!r}"
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
