"""All configuration schemas: frozen pydantic models, every field says its unit and why.

A spec file is YAML holding a `StudySpec`; `hebbrobust trial run` uses its `base` (a `TrialConfig`).
`load_trial()` / `load_study()` read a file and turn every validation problem into one `SpecError`
line that names the file, the field, the rule and what was given.
"""

from __future__ import annotations

import copy
import hashlib
import json
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hebbrobust.errors import SpecError


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------- trial


class DataConfig(_Frozen):
    name: Literal["digits", "cifar10", "mnist", "fashion_mnist", "image_folder"] = Field(
        "digits", description="data set; digits ships with scikit-learn and works offline"
    )
    path: Path | None = Field(
        None,
        description="image_folder: directory holding train/ and test/ (one folder per class); "
        "torchvision sets: download/root directory (default ~/.cache/hebbrobust/torchvision)",
    )
    train_size: int | None = Field(None, ge=1, description="use a seeded subset of this many training images")
    test_size: int | None = Field(None, ge=1, description="use a seeded subset of this many test images")
    val_fraction: float = Field(
        0.0, ge=0, lt=1,
        description="share of the training images held out as a fixed seeded validation split, never "
        "trained on and disjoint from the test set; MOASHA's rungs are measured on it. 0: none",
    )  # fmt: skip
    cache_dir: Path | None = Field(
        None, description="where decoded arrays are cached (default ~/.cache/hebbrobust/data)"
    )


class ModelConfig(_Frozen):
    kind: Literal["local", "backprop"] = Field(
        "local", description="local: Krotov-Hopfield filters + trained head; backprop: end to end"
    )
    filters: int = Field(64, ge=1, le=100_000, description="number of conv filters F")
    kernel: int = Field(3, ge=1, le=64, description="conv kernel width w (pixels)")
    pool: int = Field(2, ge=1, le=64, description="max-pool window (stride 2)")
    pool_stride: int = Field(2, ge=1, le=64, description="max-pool stride (thesis: 2)")
    activation: Literal["relu", "elu", "gelu", "rexp"] = Field(
        "relu", description="sigma in sigma(x)^n; rexp = max(0, e^x - 1) and ignores n"
    )
    power: float = Field(1.0, ge=1, le=100, description="activation power n in sigma(x)^n")


class RuleConfig(_Frozen):
    """The Krotov-Hopfield local rule and how the filters are trained with it."""

    name: Literal["krotov"] = Field("krotov", description="the local learning rule")
    p: float = Field(3.0, ge=1, le=32, description="Lebesgue power p of the patch/weight norm")
    k: int = Field(2, ge=2, le=100_000, description="ranking index k that gets the anti-Hebbian push")
    delta: float = Field(0.4, ge=0, le=10, description="anti-Hebbian strength Delta given to the k-th unit")
    semantics: Literal["position", "batch"] = Field(
        "batch", description="position: one update per patch position (thesis); batch: one per minibatch"
    )
    normalize: Literal["global", "per_filter"] = Field(
        "global", description="divide dW by its global max (Krotov) or each filter's own max"
    )
    lr: float = Field(0.02, gt=0, le=10, description="initial learning rate eta0")
    schedule: Literal["const", "linear", "cosine", "exp", "step"] = Field(
        "cosine", description="learning-rate schedule over epochs, u = t/T"
    )
    tau: float = Field(3.0, gt=0, description="exp schedule: eta0 * exp(-tau u)")
    gamma: float = Field(0.5, gt=0, le=1, description="step schedule: eta0 * gamma^floor(t/step_size)")
    step_size: int = Field(10, ge=1, description="step schedule: epochs per decay")
    epochs: int = Field(10, ge=0, le=100_000, description="filter-training epochs")
    batch_size: int = Field(100, ge=1, le=1_000_000, description="images per filter update batch")
    init_std: float = Field(1.0, gt=0, description="filters start as N(0, init_std^2) (thesis: 1)")
    accumulate: Literal["float64", "float32"] = Field(
        "float64",
        description="precision the filters' updates add up in; currents are float32 either way. float32 (the "
        "thesis) loses steps below half a float32 ulp of the weights, which late small-lr epochs are made of",
    )
    min_converged: float | None = Field(
        None,
        ge=0,
        le=1,
        description="gate (thesis: 0.8): filters whose converged fraction (1 - unconverged_frac) ends below this "
        "get no head; the trial stops there and is recorded as gated. None: every filter set gets a head",
    )


class OptimConfig(_Frozen):
    """AdamW with a cosine schedule, for the head on frozen filters or the whole backprop model."""

    lr: float = Field(2e-3, gt=0, le=10, description="AdamW learning rate")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay")
    epochs: int = Field(100, ge=0, le=100_000, description="training epochs (cosine to 0)")
    batch_size: int = Field(1000, ge=1, le=1_000_000, description="images per step")


AuditName = Literal["apgd-ce", "apgd-dlr", "square"]
"""The audit suite (hebbrobust.audit): APGD on the cross-entropy, APGD on the difference-of-logits ratio
(untargeted), Square (L-inf, gradient-free)."""


class AttackConfig(_Frozen):
    """Robustness measurement, sized so the quickstart stays quick."""

    enabled: bool = Field(True, description="run attacks after training")
    eps: tuple[float, ...] = Field((1.0, 2.0, 4.0, 8.0), description="L-inf grid, in units of 1/255")
    pgd_steps: int = Field(20, ge=1, le=10_000, description="PGD iterations per restart")
    pgd_alpha: float = Field(0.25, gt=0, le=1, description="PGD step as a fraction of eps")
    pgd_restarts: int = Field(1, ge=1, le=100, description="PGD random restarts")
    n_images: int = Field(500, ge=1, description="test images attacked on the fixed-eps grid")
    radius_images: Annotated[int, Field(ge=0)] | Literal["confident"] = Field(
        500,
        description="test images for minimal radii: the first N correct ones with softmax > C (0 = skip), or "
        "confident: all of them (the thesis's rule; then fewer than min_confident of them means no radii)",
    )
    confidence: float = Field(0.8, ge=0, lt=1, description="minimal radii only on images with softmax > C")
    min_confident: int = Field(
        500, ge=1, description="radius_images: confident only: fewer confident correct images: no radii, R None"
    )
    min_radius_images: int = Field(20, ge=1, description="fewer broken images than this: no logistic fit, R None")
    radius_pgd_step: float = Field(1e-3, gt=0, description="PGD first-flip: signed step size")
    radius_pgd_max_steps: int = Field(700, ge=1, description="PGD first-flip: step budget")
    radius_pgd_ball: float = Field(0.12, gt=0, le=1, description="PGD first-flip: L-inf ball radius")
    batch_size: int = Field(500, ge=1, description="images per attack batch")
    audit: tuple[AuditName, ...] = Field(
        (),
        description="extra attacks on the fixed-eps grid's images (apgd-ce, apgd-dlr, square; Croce & Hein 2020) "
        "for a worst case over them and our PGD; empty: the thesis's FGSM/PGD only",
    )
    apgd_steps: int = Field(
        100, ge=1, le=10_000, description="APGD iterations per restart (AutoAttack's standard: 100)"
    )
    apgd_restarts: int = Field(1, ge=1, le=100, description="APGD random restarts (AutoAttack's standard: 1)")
    square_queries: int = Field(
        1000, ge=1, le=100_000,
        description="Square iterations, one model query each (AutoAttack: 5000; 1000 keeps a CPU audit in minutes)",
    )
    square_restarts: int = Field(1, ge=1, le=100, description="Square restarts")

    @field_validator("audit")
    @classmethod
    def _unique_audit(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v))  # a name given twice runs once

    @field_validator("eps")
    @classmethod
    def _positive_eps(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(e <= 0 or e > 255 for e in v):
            raise ValueError("must be a non-empty list of numbers in (0, 255]")
        return tuple(sorted(v))


class TrialConfig(_Frozen):
    """One model trained and measured end to end."""

    seed: int = Field(
        0, ge=0, le=2**31 - 1, description="seeds the conv layer's init and local filter training (head_seed's default)"
    )
    head_seed: int | None = Field(
        None, ge=0, le=2**31 - 1,
        description="seeds the head's init, the gradient training (head or backprop) and the attacks; None: seed",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    rule: RuleConfig = RuleConfig()
    head: OptimConfig = Field(OptimConfig(), description="classifier on frozen local filters")
    backprop: OptimConfig = Field(
        OptimConfig(lr=1e-3, epochs=70), description="end-to-end training of the backprop model"
    )
    attack: AttackConfig = AttackConfig()
    converge_tol: float = Field(1e-5, gt=0, description="thesis: converged iff |‖W‖_p - 1| < tol")

    @model_validator(mode="after")
    def _k_at_most_filters(self) -> TrialConfig:
        if self.model.kind == "local" and self.rule.k > self.model.filters:
            raise ValueError(f"rule.k ({self.rule.k}) must be <= model.filters ({self.model.filters})")
        return self

    @property
    def training_seed(self) -> int:
        """The seed of the head / backprop training and the attacks."""
        return self.seed if self.head_seed is None else self.head_seed

    def digest(self) -> str:
        """A short stable hash of the whole config."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# --------------------------------------------------------------------------- study


class _Dist(_Frozen):
    when: dict[str, list[Any]] | None = Field(
        None,
        description="sample this key only where these settings hold ({dotted key: value or list of values}); "
        "a key must be listed earlier in space or be a base value",
    )

    @field_validator("when", mode="before")
    @classmethod
    def _listed(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: (list(x) if isinstance(x, list | tuple) else [x]) for k, x in v.items()}
        return v


class FloatDist(_Dist):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> FloatDist:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got low={self.low}")
        return self


class IntDist(_Dist):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> IntDist:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got low={self.low}")
        return self


class CategoricalDist(_Dist):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


Distribution = Annotated[FloatDist | IntDist | CategoricalDist, Field(discriminator="type")]


class Objective(_Frozen):
    metric: str = Field(description="a metric name from the trial's metrics.json")
    mode: Literal["max", "min"] = "max"
    ref: float | None = Field(
        None,
        description="hypervolume reference value, in the metric's units (default: 0 when maximised, "
        "every maximised metric being >= 0; 1 when minimised, for fractions); see hebbrobust/hypervolume.py",
    )


class SamplerConfig(_Frozen):
    name: Literal["tpe", "nsga2", "nsga3", "gp", "random", "grid"] = "tpe"
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="sampler seed (None: random; numpy needs < 2^32)")
    options: dict[str, Any] = Field(default_factory=dict, description="passed to the Optuna sampler")


class SchedulerConfig(_Frozen):
    """How Ray Tune schedules trials: fifo runs each to the end; moasha (multi-objective asynchronous
    successive halving, hebbrobust/study/moasha.py) stops trials dominated at a rung."""

    name: Literal["fifo", "moasha"] = Field("fifo", description="fifo: every trial runs to the end")
    rungs: tuple[float, ...] = Field(
        (1 / 9, 1 / 3),
        description="moasha: fractions of a trial's epochs (filter and head epochs of a local trial, epochs "
        "of a backprop one) at which it reports its objectives on the validation split and may be stopped",
    )
    reduction: float = Field(3.0, gt=1, le=100, description="moasha: a rung keeps the best 1/reduction of its trials")
    rung_images: int = Field(
        100, ge=1, le=100_000, description="moasha: validation images attacked at a rung (a small fixed subset)"
    )

    @field_validator("rungs")
    @classmethod
    def _rungs(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not 0 < r < 1 for r in v) or list(v) != sorted(set(v)):
            raise ValueError("must be a non-empty increasing list of fractions in (0, 1)")
        return v


class Resources(_Frozen):
    cpu: float = Field(1.0, gt=0, le=4096, description="CPUs per trial")
    gpu: Literal["auto"] | float = Field(
        "auto", description="GPUs per trial; auto: 1 when the cluster has GPUs, else 0"
    )

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: Any) -> Any:
        if v != "auto" and not 0 <= float(v) <= 64:
            raise ValueError("must be 'auto' or a number of GPUs in [0, 64]")
        return v


class NestedSeeds(_Frozen):
    """The thesis's ensembles: `filters` filter seeds x `heads` head seeds per configuration."""

    filters: int = Field(1, ge=1, le=100, description="filter seeds (TrialConfig.seed, seed + i)")
    heads: int = Field(1, ge=1, le=100, description="head seeds per filter seed (TrialConfig.head_seed, + j)")


class StudySpec(_Frozen):
    name: str = Field("study", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="study name")
    base: TrialConfig = TrialConfig()
    space: dict[str, Distribution] = Field(default_factory=dict, description="dotted trial key -> dist")
    objectives: list[Objective] = Field(
        default_factory=lambda: [Objective(metric="clean_acc"), Objective(metric="pgd_acc@2")],
        min_length=1,
    )
    sampler: SamplerConfig = SamplerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    num_trials: int = Field(8, ge=1, le=1_000_000)
    max_concurrent: int = Field(2, ge=1, le=10_000)
    by_kind: dict[Literal["local", "backprop"], dict[str, Any]] = Field(
        default_factory=dict,
        description="base values per model kind ({backprop: {model.power: 1}}); a sampled value wins over them",
    )
    seeds: Annotated[int, Field(ge=1, le=100)] | NestedSeeds = Field(
        1,
        description="repeats per configuration, averaged: N (seeds seed..seed+N-1), or {filters: A, heads: B} "
        "(A filter seeds x B head seeds; spreads split into <m>_std_filters and <m>_std_heads)",
    )
    max_failures: int = Field(0, ge=0, le=100, description="retries of a failed trial (a crashed worker, a lost node)")
    resources: Resources = Resources()
    tracking_uri: str | None = Field(None, description="MLflow URI (default: sqlite ./mlflow.db)")
    experiment: str | None = Field(None, description="MLflow experiment (default: the study name)")
    storage: Path | None = Field(None, description="study directory root (default ./hebbrobust-studies)")
    filter_cache: bool = Field(
        True, description="local trials that differ only in head settings share trained filters"
    )
    filter_cache_dir: Path | None = Field(
        None, description="filter cache directory (default <study dir>/filter-cache; shared storage on a cluster)"
    )
    feature_cache_gb: float = Field(
        20.0, ge=0, le=1e6, description="GB (1e9 bytes) of pooled head features kept in <filter cache>/features for "
        "trials that share filters and pool, least recently used evicted; 0: off (only with filter_cache)",
    )

    @property
    def seed_grid(self) -> tuple[int, int]:
        """(filter seeds, head seeds); an int N is (N, 1)."""
        return (self.seeds, 1) if isinstance(self.seeds, int) else (self.seeds.filters, self.seeds.heads)

    @property
    def n_seeds(self) -> int:
        a, b = self.seed_grid
        return a * b
    @model_validator(mode="after")
    def _moasha_needs_validation(self) -> StudySpec:
        if self.scheduler.name == "moasha" and self.base.data.val_fraction <= 0:
            raise ValueError(
                "scheduler moasha measures rungs on a validation split of the training data: "
                "set base.data.val_fraction (e.g. 0.2)"
            )
        return self

    @field_validator("space", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        # a plain list is shorthand for a categorical choice
        if isinstance(v, dict):
            return {
                k: ({"type": "categorical", "choices": d} if isinstance(d, list) else d) for k, d in v.items()
            }
        return v


# --------------------------------------------------------------------------- loading


def _union_tag(part: Any) -> bool:
    """A location part pydantic adds for a union's branch (space kinds, constrained-int, NestedSeeds)."""
    return isinstance(part, str) and (part in ("float", "int", "categorical") or "-" in part or part[:1].isupper())


def _format_loc(loc: tuple[Any, ...], prefix: str) -> str:
    parts = [str(p) for p in loc if not _union_tag(p)]
    dotted = ".".join(parts)
    return f"{prefix}{dotted}" if dotted else prefix.rstrip(".") or "(root)"


def _allowed_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed where `loc` (minus its last part) points inside `model`."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return []
        ann = fields[part].annotation
        current = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if current is None:
            return []
    return sorted(getattr(current, "model_fields", {}).keys())


def spec_error(path: Path | str | None, err: ValidationError, model: type[BaseModel], prefix: str = "") -> SpecError:
    """The first problem of a ValidationError as one SpecError line."""
    first = err.errors()[0]
    loc = tuple(first["loc"])
    field = _format_loc(loc, prefix)
    if first["type"] == "extra_forbidden":
        kinds: dict[str, type[BaseModel]] = {"float": FloatDist, "int": IntDist, "categorical": CategoricalDist}
        tagged = [kinds[p] for p in loc if isinstance(p, str) and p in kinds]  # inside a space distribution
        allowed = sorted(tagged[-1].model_fields) if tagged else _allowed_fields(model, loc)
        return SpecError(path, field, "unknown field; allowed: " + ", ".join(allowed))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        return SpecError(path, field, "required field is missing")
    given = first.get("input")
    if isinstance(given, dict):  # a rule across fields: the message names them, the whole section would be noise
        return SpecError(path, field, msg)
    return SpecError(path, field, msg, _Abridged(given))


class _Abridged:
    """A value as an error line shows it: its repr cut short (huge numbers, long lists, deep nesting)."""

    def __init__(self, value: Any) -> None:
        short = reprlib.Repr()  # keyword arguments only from Python 3.12
        short.maxlevel, short.maxlist, short.maxdict, short.maxstring, short.maxlong = 3, 6, 6, 80, 40
        self.value, self.text = value, short.repr(value)

    def __repr__(self) -> str:
        return self.text


MAX_SPEC_BYTES = 1_000_000  # a spec is a page of YAML; anything bigger is a mistake
MAX_SPEC_VALUES = 100_000  # values after expanding YAML aliases (a "billion laughs" file stops here)


def _count_values(data: Any, limit: int) -> int:
    """Values in a parsed YAML document, counting aliased nodes every time they appear; stops past `limit`."""
    count, todo = 0, [data]
    while todo and count <= limit:
        node = todo.pop()
        count += 1
        if isinstance(node, dict):
            todo.extend(node.keys())
            todo.extend(node.values())
        elif isinstance(node, list | tuple):
            todo.extend(node)
    return count


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from `path` (safe_load: no Python objects), or a SpecError naming the file."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError(path, "(file)", f"{size} bytes; a spec is at most {MAX_SPEC_BYTES} bytes")
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(path, "(file)", f"cannot read: {e.__class__.__name__}: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise SpecError(path, where, f"not valid YAML: {problem}") from None
    except (ValueError, RecursionError) as e:  # a 5000-digit number, nesting thousands deep
        raise SpecError(path, "(file)", f"not a usable spec: {' '.join(str(e).split())[:200]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(path, "(root)", "must be a YAML mapping", type(data).__name__)
    if _count_values(data, MAX_SPEC_VALUES) > MAX_SPEC_VALUES:
        raise SpecError(path, "(file)", f"more than {MAX_SPEC_VALUES} values once YAML aliases are expanded")
    return data


def check_data_path(path: Path | str | None, field: str, data: DataConfig) -> None:
    """Data that must exist before a trial or study starts: an image_folder's train/ and test/.
    `field` names the data section in the spec (e.g. `base.data`)."""
    if data.name != "image_folder":
        return
    if data.path is None:
        raise SpecError(path, f"{field}.path", "image_folder needs data.path, a folder holding train/ and test/")
    root = Path(data.path).expanduser()
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise SpecError(
                path, f"{field}.path", f"{root / split} is not a directory (data.path must hold train/ and test/)"
            )


def apply_overrides(data: dict[str, Any], overrides: list[str], path: Path | str | None = None) -> dict[str, Any]:
    """`a.b.c=value` strings applied to a nested dict; values are parsed as YAML."""
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise SpecError(path, f"--set {item}", "must look like dotted.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except (yaml.YAMLError, ValueError, RecursionError):
            value = raw
        try:
            set_dotted(out, key, value, create=True)
        except TypeError as e:
            raise SpecError(path, f"--set {key}", f"{e} is not a mapping") from None
    return out


def _absolute_data_path(trial: dict[str, Any]) -> dict[str, Any]:
    """Relative data paths are taken from the working directory and made absolute (trials run elsewhere)."""
    data = trial.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str) and not Path(data["path"]).is_absolute():
        data["path"] = str(Path(data["path"]).expanduser().absolute())
    return trial


def load_trial(path: Path, overrides: list[str] | None = None) -> TrialConfig:
    """The base trial of a spec file, with `--set` overrides relative to the base."""
    data = read_yaml(path)
    base = data.get("base", {}) if "base" in data or "space" in data or "name" in data else data
    if not isinstance(base, dict):
        raise SpecError(path, "base", "must be a mapping", type(base).__name__)
    sets = [o.removeprefix("base.") for o in overrides or []]
    base = _absolute_data_path(apply_overrides(base, sets, path))
    by_kind = data.get("by_kind") if base is not data else None
    if isinstance(by_kind, dict):  # the spec's values for this kind, unless --set names them
        kind = base.get("model", {}).get("kind", "local") if isinstance(base.get("model"), dict) else "local"
        given = {o.split("=", 1)[0].strip() for o in sets}
        values = by_kind.get(kind) or {}
        if not isinstance(values, dict):
            raise SpecError(path, f"by_kind.{kind}", "must be a mapping of dotted trial keys to values", values)
        base = copy.deepcopy(base)
        for k, v in values.items():
            if k not in given:
                set_dotted(base, k, v, create=True)
    try:
        return TrialConfig.model_validate(base)
    except ValidationError as e:
        raise spec_error(path, e, TrialConfig, "base.") from None


def get_dotted(data: dict[str, Any], key: str) -> Any:
    """`data[a][b][c]` for the dotted key `a.b.c` (KeyError when a level is missing)."""
    node: Any = data
    for part in key.split("."):
        node = node[part]
    return node


def set_dotted(data: dict[str, Any], key: str, value: Any, *, create: bool = False) -> None:
    """Sets `data[a][b][c] = value` for the dotted key `a.b.c`; with `create`, missing levels become
    {} (a level that is not a mapping raises TypeError naming it)."""
    node = data
    *parents, last = key.strip().split(".")
    for part in parents:
        if create and node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise TypeError(part)
        node = node[part]
    node[last] = value


def _check_space_key(path: Path | str | None, key: str, field: str | None = None) -> None:
    field = field or f"space.{key}"
    current: Any = TrialConfig
    for part in key.split("."):
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            allowed = ", ".join(sorted(fields)) if fields else "(none: not a mapping)"
            raise SpecError(path, field, f"not a trial setting; allowed at '{part}': {allowed}")
        ann = fields[part].annotation
        current = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    if current is not None:
        raise SpecError(path, field, "names a whole section; search a setting inside it")


def study_trial(spec: StudySpec, params: dict[str, Any]) -> TrialConfig:
    """The trial a study runs for sampled `params`: the base, then `by_kind` for the trial's model kind,
    then the sampled values (they win)."""
    kind = params.get("model.kind", spec.base.model.kind)
    extra = spec.by_kind.get(kind, {}) if kind in ("local", "backprop") else {}  # else validation says so
    return with_params(spec.base, {**extra, **params})


def _dist_values(dist: FloatDist | IntDist | CategoricalDist) -> list[Any]:
    return list(dist.choices) if isinstance(dist, CategoricalDist) else [dist.low, dist.high]


def _takes(dist: FloatDist | IntDist | CategoricalDist, value: Any) -> bool:
    """Whether `dist` can sample `value`."""
    if isinstance(dist, CategoricalDist):
        return any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in dist.choices)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(dist, IntDist):
        return float(value).is_integer() and dist.low <= value <= dist.high and (value - dist.low) % dist.step == 0
    return dist.low <= value <= dist.high


def _check_by_kind(path: Path | str | None, spec: StudySpec) -> None:
    for kind, values in spec.by_kind.items():
        for key in values:
            _check_space_key(path, key, f"by_kind.{kind}.{key}")
            if key == "model.kind":
                raise SpecError(path, f"by_kind.{kind}.{key}", "a kind's values cannot change the kind", values[key])
        try:
            with_params(spec.base, {**values, "model.kind": kind})
        except ValidationError as e:
            inner = spec_error(None, e, TrialConfig)
            raise SpecError(path, f"by_kind.{kind}", f"gives an invalid trial: {inner}") from None


def _check_when(path: Path | str | None, spec: StudySpec, key: str, earlier: list[str]) -> dict[str, Any]:
    """The `when` of space entry `key` checked; returns one setting that makes it apply (for range checks)."""
    dist = spec.space[key]
    example: dict[str, Any] = {}
    for cond, values in (dist.when or {}).items():
        field = f"space.{key}.when.{cond}"
        _check_space_key(path, cond, field)
        if not values:
            raise SpecError(path, field, "must name at least one value", values)
        if cond in spec.space and cond not in earlier:
            raise SpecError(
                path, field, "a `when` may only refer to keys listed before it in space (sampled first) or to "
                "base values; move this entry below it", cond,
            )  # fmt: skip
        if cond in spec.space:
            bad = [v for v in values if not _takes(spec.space[cond], v)]
            if bad:
                shown = ", ".join(map(str, _dist_values(spec.space[cond])))
                raise SpecError(path, field, f"never sampled: space.{cond} takes {shown}", bad[0])
        else:
            for value in values:
                try:
                    study_trial(spec, {**example, cond: value})
                except ValidationError as e:
                    inner = spec_error(None, e, TrialConfig)
                    raise SpecError(path, field, f"value {value!r} is not a valid setting: {inner}") from None
        example[cond] = values[0]
    return example


def load_study(path: Path, overrides: list[str] | None = None) -> StudySpec:
    """A study spec with `--set` overrides relative to the spec root, fully checked:
    every space key names a trial setting, and every end of every range gives a valid trial."""
    data = apply_overrides(read_yaml(path), overrides or [], path)
    if isinstance(data.get("base"), dict):
        _absolute_data_path(data["base"])
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as e:
        raise spec_error(path, e, StudySpec) from None
    if not spec.space:
        raise SpecError(path, "space", "must name at least one setting to search")
    _check_by_kind(path, spec)
    for i, (key, dist) in enumerate(spec.space.items()):
        _check_space_key(path, key)
        condition = _check_when(path, spec, key, list(spec.space)[:i])
        for value in _dist_values(dist):
            try:
                study_trial(spec, {**condition, key: value})
            except ValidationError as e:
                inner = spec_error(None, e, TrialConfig)
                raise SpecError(path, f"space.{key}", f"value {value!r} gives an invalid trial: {inner}") from None
    return spec


def with_params(base: TrialConfig, params: dict[str, Any]) -> TrialConfig:
    """`base` with dotted-key parameters set (as a study trial gets them)."""
    data = base.model_dump(mode="json")
    for key, value in params.items():
        set_dotted(data, key, value)
    return TrialConfig.model_validate(data)
