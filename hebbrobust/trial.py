"""One trial end to end, plain Python: data -> train -> measure -> TrialResult. No Ray, MLflow or Optuna."""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hebbrobust import plots
from hebbrobust.audit import audit
from hebbrobust.cache import FEATURE_CACHE_GB, cached_features, cached_filters, feature_key, filter_key, key_hash
from hebbrobust.config import AttackConfig, TrialConfig
from hebbrobust.data import Dataset, load_dataset
from hebbrobust.errors import SpecError, TrialError
from hebbrobust.evaluate import AUDIT_ATTACKS, clean_accuracy, evaluate_robustness, filter_convergence
from hebbrobust.fileio import atomic_savez, atomic_write
from hebbrobust.metrics import (
    CLEAN_ACC,
    FEATURE_SECONDS,
    FEATURES_CACHE_HIT,
    FILTER_SECONDS,
    FILTER_SECONDS_SAVED,
    FILTERS_CACHE_HIT,
    GATED,
    GATED_REASON,
    MASK_ALL_OK,
    N_TEST,
    N_TRAIN,
    TRAIN_SECONDS,
)
from hebbrobust.models import HebbCNN
from hebbrobust.rules import krotov
from hebbrobust.train import EpochCallback, feature_dtype, fit_backprop, fit_filters_local, fit_head, pool_features

CONVERGED_FRAC = "converged_frac"  # 1 - unconverged_frac of the filters, where rule.min_converged is set

# on_epoch(stage, epoch, total_epochs, metrics): stage is "filters", "head" or "backprop";
# metrics hold that epoch's numbers (e.g. loss, unconverged_frac, lr). Attacks report as stage
# "attacks" with empty metrics: (batch, eps) steps of the grid, the masking checks, radius batches.
# on_rung(index, fraction, metrics): rung `index` (at `fraction` of the trial's epochs) measured on the
# validation split; the study's scheduler may stop the trial there (the call then never returns)
RungCallback = Callable[[int, float, dict[str, Any]], None]


@dataclass(frozen=True)
class RungPlan:
    """Where a trial reports cheaply on its way (multi-fidelity scheduling, e.g. MOASHA).

    Rung r (a fraction in (0, 1)) is reached after ceil(r * E) of a stage's E epochs: the filter
    epochs of a local trial (rule.epochs; the head, not trained yet, is then a probe head trained
    for ceil(r * head.epochs) epochs on the current filters and thrown away), its head epochs when it
    trains no filters, a backprop trial's epochs. There it measures clean accuracy, unconverged_frac
    and `attack` (a few images) on the validation split (data.val_fraction), never on the test set."""

    fractions: tuple[float, ...]
    attack: AttackConfig
    report: RungCallback


def rung_epochs(fractions: tuple[float, ...], epochs: int) -> dict[int, list[tuple[int, float]]]:
    """Epoch (1-based) -> the rungs (index, fraction) reached at its end, for a stage of `epochs` epochs."""
    out: dict[int, list[tuple[int, float]]] = {}
    for i, r in enumerate(fractions):
        out.setdefault(max(1, math.ceil(r * epochs - 1e-9)), []).append((i, r))
    return out


@dataclass
class TrialResult:
    config: TrialConfig
    metrics: dict[str, Any]  # final numbers: clean_acc, unconverged_frac, train_seconds, robustness ...
    curves: dict[str, list[float]] = field(default_factory=dict)  # "<stage>/<name>" -> one value per epoch
    model: torch.nn.Module | None = None
    filters: torch.Tensor | None = None  # (F, C, w, w) conv weights as trained
    extras: dict[str, Any] = field(default_factory=dict)  # arrays for plots (radii, per-filter norms ...)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrialError("device: cuda was asked for but torch sees no GPU")
    return torch.device(name)


def build_model(config: TrialConfig, in_shape: tuple[int, int, int], classes: int) -> HebbCNN:
    try:
        return HebbCNN(config.model, in_shape, classes, p=config.rule.p)
    except ValueError as e:
        raise TrialError(str(e)) from None


def _rung_hook(
    config: TrialConfig,
    data: Dataset,
    model: HebbCNN,
    train: tuple[torch.Tensor, torch.Tensor],
    rungs: RungPlan,
    on_epoch: EpochCallback | None,
    filters_now: Callable[[], torch.Tensor],
) -> EpochCallback:
    """`on_epoch` that also measures the trial on the validation split at each rung and reports it."""
    if len(data.x_val) == 0:
        raise TrialError("rungs are measured on the validation split: data.val_fraction must be > 0")
    device = train[0].device
    x_val, y_val = data.x_val.to(device), data.y_val.to(device)
    if config.model.kind == "local" and config.rule.epochs > 0:
        stage, stage_epochs = "filters", config.rule.epochs
    elif config.model.kind == "local":
        stage, stage_epochs = "head", config.head.epochs
    else:
        stage, stage_epochs = "backprop", config.backprop.epochs
    at = rung_epochs(rungs.fractions, stage_epochs)

    def measure(fraction: float) -> dict[str, Any]:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            probe = model
            if stage == "filters":  # a probe head on the filters as they are now
                probe = build_model(config, data.shape, len(data.classes)).to(device)
                with torch.no_grad():
                    probe.conv_weight.copy_(filters_now().view_as(probe.conv_weight))
                head = config.head.model_copy(update={"epochs": max(1, math.ceil(fraction * config.head.epochs))})
                fit_head(probe, *train, head, seed=config.seed)
            was_training = probe.training
            probe.eval()
            out: dict[str, Any] = {CLEAN_ACC: clean_accuracy(probe, x_val, y_val)}
            conv = filter_convergence(probe.conv_weight.detach().cpu(), config.rule.p, config.converge_tol)
            out["unconverged_frac"] = conv["unconverged_frac"]
            if rungs.attack.enabled:
                out.update(evaluate_robustness(probe, x_val, y_val, rungs.attack, seed=config.seed)[0])
            probe.train(was_training)
        return out

    def on_epoch_rungs(name: str, epoch: int, total: int, row: dict[str, float]) -> None:
        if on_epoch is not None:
            on_epoch(name, epoch, total, row)
        if name == stage and epoch in at:
            measured = measure(at[epoch][-1][1])  # rungs that share an epoch share its measurement
            for index, fraction in at[epoch]:
                rungs.report(index, fraction, measured)

    return on_epoch_rungs


def run_trial(
    config: TrialConfig,
    on_epoch: EpochCallback | None = None,
    *,
    filter_cache: Path | None = None,
    checkpoint_dir: Path | None = None,
    feature_cache_gb: float = FEATURE_CACHE_GB,
    rungs: RungPlan | None = None,
) -> TrialResult:
    """Train and measure one model. Raises TrialError (with the reason) when it diverges.

    With `rule.min_converged` set, local filters whose converged fraction ends below it get no head:
    the result then has metrics `gated` = 1 and `gated_reason`, no model and no clean accuracy.

    With `filter_cache` (a directory), local filters come from / go to the shared filter cache, so
    trials that differ only in head settings train their filters once, and those that also share the pool
    compute its outputs once (`<filter_cache>/features`, at most feature_cache_gb; 0: off). With `checkpoint_dir`, every
    training stage saves its state each epoch there, and a rerun of the same config resumes. With
    `rungs`, the trial reports at each rung (see RungPlan); a local trial then trains its own filters
    (the cache holds finished filters only, and a rung needs them half-trained)."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    data = load_dataset(config.data)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    model = build_model(config, data.shape, len(data.classes)).to(device)
    if config.training_seed != config.seed:  # the head's init follows the head seed, the conv's the (filter) seed
        torch.manual_seed(config.training_seed)
        model.head.reset_parameters()
    seed = config.training_seed
    # checkpoints are reusable across changes that do not touch what they hold: the filters' by their
    # cache key, the head's and the backprop model's by everything but the attack settings
    filters_tag = key_hash(filter_key(config, data.shape))
    tag = config.model_copy(update={"attack": AttackConfig(), "device": "auto"}).digest()

    def ckpt_file(name: str) -> Path | None:
        return None if checkpoint_dir is None else Path(checkpoint_dir) / name

    def ckpt(stage: str) -> Path | None:
        return ckpt_file(f"{stage}.pt")

    curves: dict[str, list[float]] = {}
    metrics: dict[str, Any] = {N_TRAIN: len(x_train), N_TEST: len(x_test), "device": device.type}
    live: dict[str, torch.Tensor] = {}  # the filters as they are being trained, for a rung's probe head
    if rungs is not None:
        on_epoch = _rung_hook(config, data, model, (x_train, y_train), rungs, on_epoch, lambda: live["filters"])
        metrics["n_val"] = len(data.x_val)
        filter_cache = None
    start = time.perf_counter()
    if config.model.kind == "local":
        f, c, w, _ = model.conv_weight.shape

        def train_filters() -> tuple[torch.Tensor, dict[str, list[float]]]:
            weights = krotov.init_weights(f, c * w * w, seed=config.seed, std=config.rule.init_std).to(device)
            live["filters"] = weights  # trained in place: what a rung's probe head sees
            curves = fit_filters_local(
                weights, x_train, config.rule, kernel=w, tol=config.converge_tol, seed=config.seed,
                on_epoch=on_epoch, checkpoint=ckpt("filters"), tag=filters_tag,
            )
            return weights, curves

        if filter_cache is None:
            weights, filter_curves = train_filters()
            metrics[FILTER_SECONDS] = time.perf_counter() - start
        else:
            got = cached_filters(filter_cache, filter_key(config, data.shape), train_filters)
            weights, filter_curves = got.weights, got.curves
            metrics.update({FILTERS_CACHE_HIT: int(got.hit), "filters_cache_key": got.key})
            metrics[FILTER_SECONDS] = 0.0 if got.hit else got.seconds
            metrics[FILTER_SECONDS_SAVED] = got.seconds if got.hit else 0.0
        with torch.no_grad():
            model.conv_weight.copy_(weights.view_as(model.conv_weight))
        curves.update({f"filters/{k}": v for k, v in filter_curves.items()})
        metrics[FEATURE_SECONDS] = 0.0  # a resumed finished head (or a gated trial) never fetches its features
        if filter_cache is not None:
            metrics[FEATURES_CACHE_HIT] = 0
        gate = config.rule.min_converged
        if gate is not None:
            conv = filter_convergence(weights.detach().cpu(), config.rule.p, config.converge_tol)
            metrics[CONVERGED_FRAC] = 1.0 - conv["unconverged_frac"]
            if metrics[CONVERGED_FRAC] < gate:
                metrics[GATED] = 1
                metrics[GATED_REASON] = (
                    f"gated: converged fraction {metrics[CONVERGED_FRAC]:.3f} < rule.min_converged {gate:g}"
                )
                metrics["unconverged_frac"] = conv["unconverged_frac"]
                metrics["train_seconds"] = time.perf_counter() - start
                filters = weights.detach().cpu().view_as(model.conv_weight)
                extra = {"convergence": conv, "input_shape": data.shape}
                return TrialResult(config, metrics, curves, None, filters, extra)
            metrics[GATED] = 0
        features: Callable[[], torch.Tensor | None]
        if filter_cache is None or feature_cache_gb <= 0:
            features = functools.partial(pool_features, model, x_train, config.head.batch_size)
        else:
            features = _shared_features(model, x_train, config, data.shape, filter_cache, feature_cache_gb, metrics)
        head_curves = fit_head(
            model, x_train, y_train, config.head, seed=seed, on_epoch=on_epoch, checkpoint=ckpt("head"), tag=tag,
            features=_timed(features, metrics),
        )
        curves.update({f"head/{k}": v for k, v in head_curves.items()})
    else:
        bp_curves = fit_backprop(
            model, x_train, y_train, config.backprop, seed=seed, on_epoch=on_epoch,
            checkpoint=ckpt("backprop"), tag=tag,
        )
        curves.update({f"backprop/{k}": v for k, v in bp_curves.items()})
    metrics[TRAIN_SECONDS] = time.perf_counter() - start
    model.eval()
    metrics[CLEAN_ACC] = clean_accuracy(model, x_test, y_test)
    if not math.isfinite(metrics[CLEAN_ACC]):
        raise TrialError("model output is not finite on the test set")
    filters = model.conv_weight.detach().cpu()
    conv = filter_convergence(filters, config.rule.p, config.converge_tol)
    metrics["unconverged_frac"] = conv["unconverged_frac"]
    metrics["unconverged_frac_norm_only"] = conv["unconverged_frac_norm_only"]
    extras: dict[str, Any] = {"convergence": conv, "input_shape": data.shape, "classes": list(data.classes)}
    if config.attack.enabled:
        rob, rob_extras = evaluate_robustness(
            model, x_test, y_test, config.attack, seed=seed, on_step=on_epoch
        )
        metrics.update(rob)
        extras["robustness"] = rob_extras
        if config.attack.audit:
            aud, extras["audit"] = audit(
                model, x_test, y_test, config.attack, seed=seed, pgd_robust=rob_extras["grid_robust"],
                prior_mask_ok=rob.get(MASK_ALL_OK), on_step=on_epoch, partial=ckpt_file("audit.npz"),
            )
            extras["audit_x"] = x_test[: config.attack.n_images]
            metrics.update(aud)
    return TrialResult(config, metrics, curves, model.cpu(), filters, extras)


def _timed(features: Callable[[], torch.Tensor | None], metrics: dict[str, Any]) -> Callable[[], torch.Tensor | None]:
    """features() that records its seconds (computing or loading the pool outputs) as feature_seconds."""

    def fetch() -> torch.Tensor | None:
        start = time.perf_counter()
        out = features()
        metrics[FEATURE_SECONDS] = time.perf_counter() - start
        return out

    return fetch


def _shared_features(
    model: HebbCNN, x: torch.Tensor, config: TrialConfig, in_shape: tuple[int, int, int], root: Path, max_gb: float,
    metrics: dict[str, Any],
) -> Callable[[], torch.Tensor | None]:
    """The head's pool outputs through the feature cache under `root`, fetched when the head first
    needs them (a resumed finished head never does); records features_cache_hit in metrics."""

    def fetch() -> torch.Tensor | None:
        dtype = feature_dtype(model, len(x))
        if dtype is None:  # over the memory budget: the head pools batch by batch
            return None
        content = feature_key(
            filter_key(config, in_shape), pool=config.model.pool, stride=config.model.pool_stride, dtype=dtype,
            batch_size=config.head.batch_size, device=x.device.type,
        )
        nbytes = len(x) * math.prod(model.feature_shape) * dtype.itemsize
        got = cached_features(
            root, content, lambda: pool_features(model, x, config.head.batch_size), nbytes=nbytes, max_gb=max_gb
        )
        metrics.update({FEATURES_CACHE_HIT: int(got.hit), "features_cache_key": got.key})
        return None if got.features is None else got.features.to(x.device)

    return fetch


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    return value


def _save_figure(path: Path, fig: Any) -> None:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plots.plt.close(fig)


def _robustness_figures(out_dir: Path, extras: dict[str, Any], kind: str, classes: list[str] | None) -> list[Path]:
    """robustness.png, and adversarial.png when the radius search broke an image."""
    _save_figure(out_dir / "robustness.png", plots.robustness_figure(extras, title=f"{kind} model"))
    if not extras.get("examples"):
        return [out_dir / "robustness.png"]
    fig = plots.adversarial_examples(extras["examples"], classes, title=f"{kind} model: minimal-radius PGD twins")
    _save_figure(out_dir / "adversarial.png", fig)
    return [out_dir / "robustness.png", out_dir / "adversarial.png"]


AUDIT_PARTIAL = "audit.partial.npz"  # a re-evaluation's audit so far: a killed `evaluate --audit` resumes from it
MASKED_IMAGES = 16  # images kept in audit.npz where our PGD failed but another attack broke the image


def save_audit(path: Path, robust: dict[tuple[str, float], Any], x: Any = None) -> None:
    """The audit's per-image robust bools as audit.npz: one array per '<attack>@<e>' (attack pgd,
    apgd-ce, apgd-dlr, square, worst; e in 1/255), in the order of the grid's test images; with `x`
    (those images), also `masked_index` (images our PGD left correct but some audit attack broke, at
    any ε) and `masked_images` (the first MASKED_IMAGES of them, float16 (N, C, H, W)): the report's
    masking warning shows them."""
    arrays: dict[str, Any] = {f"{a}@{e:g}": v for (a, e), v in robust.items()}
    if x is not None:
        eps = sorted({e for a, e in robust if a == "worst"})
        masked = np.logical_or.reduce([robust["pgd", e] & ~robust["worst", e] for e in eps]) if eps else []
        index = np.flatnonzero(masked)
        arrays["masked_index"] = index
        arrays["masked_images"] = np.asarray(x[index[:MASKED_IMAGES]].cpu().numpy(), dtype=np.float16)

    atomic_savez(path, arrays, compressed=True)


def save_trial(result: TrialResult, out_dir: Path) -> dict[str, Path]:
    """Writes metrics.json, filters.png, robustness.png and adversarial.png (when attacked), audit.npz
    (when audited), model.pt; returns name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in ("metrics.json", "filters.png", "model.pt")}
    conv = result.extras.get("convergence", {})
    doc = {
        **result.metrics,
        "input_shape": list(result.extras.get("input_shape", [])),
        "unconverged_filters": conv.get("unconverged", []),
        "filter_norms": conv.get("norms", []),
        "config": result.config.model_dump(mode="json"),
        "curves": result.curves,
    }
    atomic_write(paths["metrics.json"], lambda p: p.write_text(json.dumps(_jsonable(doc), indent=2)))
    if result.model is not None:
        atomic_write(paths["model.pt"], lambda p: torch.save(result.model.state_dict(), p))  # type: ignore[union-attr]
    if result.filters is not None:
        kind = result.config.model.kind
        title = f"{kind} filters, acc {result.metrics.get(CLEAN_ACC, float('nan')):.3f}"
        fig = plots.filter_grid(result.filters.numpy(), title=title)
        atomic_write(paths["filters.png"], lambda p: fig.savefig(p, format="png", dpi=100))
        plots.plt.close(fig)
    if "robustness" in result.extras:
        for path in _robustness_figures(
            out_dir, result.extras["robustness"], result.config.model.kind, result.extras.get("classes")
        ):
            paths[path.name] = path
    if result.extras.get("audit"):
        paths["audit.npz"] = out_dir / "audit.npz"
        save_audit(paths["audit.npz"], result.extras["audit"], result.extras.get("audit_x"))
    return paths


def load_trial_dir(trial_dir: Path) -> tuple[TrialConfig, HebbCNN, dict[str, Any]]:
    """The config, model (eval mode, weights_only load) and metrics.json of a saved trial directory."""
    trial_dir = Path(trial_dir)
    try:
        doc = json.loads((trial_dir / "metrics.json").read_text())
        state = torch.load(trial_dir / "model.pt", weights_only=True, map_location="cpu")
    except (OSError, ValueError, RuntimeError) as e:
        raise TrialError(f"{trial_dir}: not a readable trial directory ({e.__class__.__name__}: {e})") from None
    config = TrialConfig.model_validate(doc["config"])
    c, h, w = state["conv_weight"].shape[1], 0, 0
    data_shape = doc.get("input_shape")
    if data_shape:
        c, h, w = data_shape
    model = build_model(config, (c, h, w), state["head.weight"].shape[0])
    model.load_state_dict(state)
    return config, model.eval(), doc


def reevaluate(
    trial_dir: Path,
    *,
    eps: list[float] | None = None,
    attack: str | None = None,
    n_images: int | None = None,
    audit_attacks: list[str] | None = None,
    on_step: EpochCallback | None = None,
) -> dict[str, Any]:
    """Attack a saved trial again (optionally another eps grid, one attack, more images, the audit
    suite `audit_attacks` instead of the spec's attack.audit); updates its metrics.json,
    robustness.png, adversarial.png and audit.npz and returns the new robustness metrics. The audit
    saves its progress in AUDIT_PARTIAL as it goes: run again after a kill, it picks up there."""
    config, model, doc = load_trial_dir(trial_dir)
    changes: dict[str, Any] = {"enabled": True}
    if eps:
        changes["eps"] = tuple(eps)
    if n_images:
        changes["n_images"] = n_images
    if audit_attacks:
        bad = [a for a in audit_attacks if a not in AUDIT_ATTACKS]
        if bad:
            raise SpecError(None, "--audit", f"must be one of {', '.join(AUDIT_ATTACKS)}", bad[0])
        changes["audit"] = tuple(audit_attacks)
    attack_cfg = config.attack.model_validate({**config.attack.model_dump(), **changes})
    data = load_dataset(config.data)
    rob, extras = evaluate_robustness(
        model, data.x_test, data.y_test, attack_cfg, seed=config.training_seed, on_step=on_step
    )
    if attack_cfg.audit:
        aud, robust = audit(model, data.x_test, data.y_test, attack_cfg, seed=config.training_seed,
                            pgd_robust=extras["grid_robust"], prior_mask_ok=rob.get(MASK_ALL_OK), on_step=on_step,
                            partial=Path(trial_dir) / AUDIT_PARTIAL)
        rob.update(aud)
        save_audit(Path(trial_dir) / "audit.npz", robust, data.x_test[: attack_cfg.n_images])
    if attack is not None:
        other = "pgd" if attack == "fgsm" else "fgsm"
        rob = {k: v for k, v in rob.items() if not k.startswith(other + "_")}
    doc.update(_jsonable(rob))
    atomic_write(Path(trial_dir) / "metrics.json", lambda p: p.write_text(json.dumps(doc, indent=2)))
    _robustness_figures(Path(trial_dir), extras, config.model.kind, list(data.classes))
    return rob


def model_label(config: TrialConfig) -> str:
    """A model as figures name it: kind, activation and power n."""
    m = config.model
    return f"{m.kind} {m.activation} n={m.power:g}"


def transfer_dirs(
    trial_dirs: list[Path], *, eps: float, n_images: int | None = None, on_step: EpochCallback | None = None
) -> tuple[Any, Any]:
    """transfer_matrix of saved trials trained on the same data (their first trial's attack settings:
    PGD steps, step size, restarts, batch size; its n_images unless given; each source's starts
    seeded by its own attack seed, `training_seed`, as its white-box grid was, so the diagonal is
    its pgd_acc@eps); returns (matrix, heatmap figure).
    Labels are model_label(), with the directory name added where two would read the same."""
    from hebbrobust.transfer import transfer_matrix

    loaded = [load_trial_dir(d) for d in trial_dirs]
    first = loaded[0][0]
    for d, (cfg, _, _) in zip(trial_dirs, loaded, strict=True):
        if cfg.data != first.data:
            raise TrialError(f"{d}: trained on other data than {trial_dirs[0]} ({cfg.data} vs {first.data})")
    labels = [model_label(cfg) for cfg, _, _ in loaded]
    labels = [f"{lab} ({Path(d).name})" if labels.count(lab) > 1 else lab
              for lab, d in zip(labels, trial_dirs, strict=True)]
    data = load_dataset(first.data)
    a = first.attack
    n = n_images or a.n_images
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if on_step is not None:
            on_step("transfer", done, len(loaded), {})

    matrix = transfer_matrix(
        {lab: model for lab, (_, model, _) in zip(labels, loaded, strict=True)}, data.x_test[:n], data.y_test[:n],
        eps, alpha=a.pgd_alpha, steps=a.pgd_steps, restarts=a.pgd_restarts,
        seed={lab: cfg.training_seed for lab, (cfg, _, _) in zip(labels, loaded, strict=True)},
        batch_size=a.batch_size, tick=tick,
    )
    return matrix, plots.transfer_heatmap(matrix, eps, title=f"PGD transfer on {first.data.name}, "
                                          f"L∞ ε = {eps:g}/255, {n} test images")
