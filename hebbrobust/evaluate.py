"""Measurements of a trained model: clean accuracy, filter convergence, robustness. Metric names live here.

Metric names (used everywhere else; MLflow rejects '@', so tracking maps names at its boundary):
- clean_acc, unconverged_frac (thesis definition), unconverged_frac_norm_only (LocalLearning)
- fixed-ε grid, ε in units of 1/255 written like `2` or `0.5`: fgsm_acc@<e>, pgd_acc@<e> (absolute
  accuracy on the attacked images), fgsm_racc@<e>, pgd_racc@<e> (among the clean-correct ones),
  grid_clean_acc, grid_images
- minimal radii: <attack>_eps50, _auc, _R, _r2, _R_reason, _unbroken_frac for attack in fgsm, pgd;
  radius_images (how many confident correct images were attacked); with radius_images: confident also
  confident_images (all correct test images with softmax > C; below attack.min_confident no radii are
  measured and every radius metric is None with <attack>_R_reason saying so)
- gradient-masking checks (0/1 flag + the number behind it): mask_pgd_le_fgsm +
  mask_pgd_minus_fgsm_max, mask_large_eps_ok + mask_large_eps_acc, mask_zero_grad_ok +
  mask_zero_grad_frac, mask_all_ok
- attack_seconds
- audit (hebbrobust.audit, when attack.audit names attacks), on the grid's images: <attack>_acc@<e> for
  attack in AUDIT_ATTACKS (apgd-ce, apgd-dlr, square) and worst_acc@<e> (an image counts as robust only
  if every attack run, our PGD included, failed on it), audit_images, audit_seconds; masking checks
  mask_pgd_le_square + mask_pgd_minus_square_max (a gradient-free attack beating PGD by more than one
  image at some ε), mask_pgd_worst_ok + mask_pgd_minus_worst_max (PGD overestimates the worst-case
  accuracy by more than MASK_PGD_WORST_MAX_GAP); mask_all_ok then covers these too
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any, get_args

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import OptimizeWarning, curve_fit
from torch import Tensor

from hebbrobust.attacks import Model, eval_mode, fgsm, fgsm_min_radius, input_gradient, pgd, pgd_min_radius
from hebbrobust.config import AttackConfig, AuditName
from hebbrobust.metrics import (  # noqa: F401 - re-exported: evaluate names what it reports
    ATTACK_SECONDS,
    AUDIT_IMAGES,
    AUDIT_SECONDS,
    CLEAN_ACC,
    CONFIDENT_IMAGES,
    GRID_CLEAN_ACC,
    GRID_IMAGES,
    MASK_ALL_OK,
    MASK_LARGE_EPS_ACC,
    MASK_LARGE_EPS_OK,
    MASK_PGD_LE_FGSM,
    MASK_PGD_LE_SQUARE,
    MASK_PGD_MINUS_FGSM_MAX,
    MASK_PGD_MINUS_SQUARE_MAX,
    MASK_PGD_MINUS_WORST_MAX,
    MASK_PGD_WORST_OK,
    MASK_ZERO_GRAD_FRAC,
    MASK_ZERO_GRAD_OK,
    RADIUS_IMAGES,
    TRAIN_SECONDS,
    UNCONVERGED_FRAC,
    UNCONVERGED_FRAC_NORM_ONLY,
    WORST,
)

ATTACKS = ("fgsm", "pgd")
AUDIT_ATTACKS: tuple[AuditName, ...] = get_args(AuditName)
# Our PGD's accuracy more than 2 points above the per-image worst case over the audit: PGD is fooled
# by the model's gradients (Croce & Hein 2020 treat gaps of this size as a sign of masking).
MASK_PGD_WORST_MAX_GAP = 0.02

# Masking check "accuracy goes to 0 as ε grows": PGD without random start (a pure gradient attack, so
# zero or useless gradients cannot be rescued by noise) at L∞ 64/255 ≈ 0.25, far beyond any robustness
# of these models (RobustBench's CIFAR-10 budget is 8/255), on the first MASK_IMAGES grid images.
MASK_LARGE_EPS = 64 / 255
MASK_LARGE_EPS_STEPS = 20
MASK_LARGE_EPS_MAX_ACC = 0.05
MASK_IMAGES = 200
# Masking check "gradients exist": fraction of grid images whose input gradient of the cross-entropy
# is exactly zero in every pixel (a saturated softmax, a step function, dead units).
MASK_ZERO_GRAD_MAX_FRAC = 0.01
# Adversarial-examples figure (thesis Fig. 9.1): this many radius-search images with their first-flip twin.
EXAMPLE_IMAGES = 6

# The thesis's generalised-logistic fit of A(ε) (docs/science.md §4): start values, acceptance, tail, padding.
FIT_START = {"M": -0.26, "D": 0.24, "Q": 1.38, "B": 30.0, "nu": 7e-5}
FIT_MIN_R2 = 0.95
FIT_TAIL_CUT = 0.01
FIT_PAD_FRAC = 0.1
FIT_MAX_EVALS = 5000  # scipy's default (500 for 5 parameters) stops short: D, B, M and Q are redundant


def eps_label(eps: float) -> str:
    """ε (units of 1/255) as written in metric names: 2.0 -> '2', 0.5 -> '0.5'."""
    return f"{eps:g}"


def grid_metric(attack: str, eps: float, *, relative: bool = False) -> str:
    """'pgd_acc@2', or 'pgd_racc@2' for the accuracy among clean-correct images."""
    return f"{attack}_{'racc' if relative else 'acc'}@{eps_label(eps)}"


# --------------------------------------------------------------------------- clean accuracy


@torch.no_grad()
def predict(model: Model, x: Tensor, *, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """Predicted class (B,) and its softmax probability (B,), in eval mode, batched."""
    preds, confs = [], []
    with eval_mode(model):
        for i in range(0, x.shape[0], batch_size):
            prob = F.softmax(model(x[i : i + batch_size]), dim=1)
            conf, pred = prob.max(1)
            preds.append(pred)
            confs.append(conf)
    if not preds:
        return torch.empty(0, dtype=torch.long, device=x.device), torch.empty(0, device=x.device)
    return torch.cat(preds), torch.cat(confs)


def clean_accuracy(model: Model, x: Tensor, y: Tensor, *, batch_size: int = 1000) -> float:
    """Fraction of x classified as y (eval mode, no grad)."""
    if x.shape[0] == 0:
        return float("nan")
    pred, _ = predict(model, x, batch_size=batch_size)
    return (pred == y).float().mean().item()


# --------------------------------------------------------------------------- filter convergence


def filter_convergence(weights: Tensor | np.ndarray, p: float, tol: float = 1e-5) -> dict[str, Any]:
    """Per-filter p-norms of weights (F, N) or (F, C, w, w) and which filters are unconverged.

    Thesis: converged iff all weights > 0 and |‖W_μ‖_p − 1| < tol. LocalLearning ("norm only"):
    converged iff |‖W_μ‖_p − 1| <= 0.01."""
    w = torch.as_tensor(weights).detach().double().flatten(1).cpu()
    norms = w.abs().pow(p).sum(1).pow(1.0 / p)
    off = (norms - 1).abs()
    bad = ~((w > 0).all(1) & (off < tol))
    bad_norm = ~(off <= 0.01)
    n = max(w.shape[0], 1)
    return {
        "norms": norms.tolist(),
        "unconverged_frac": bad.sum().item() / n,
        "unconverged_frac_norm_only": bad_norm.sum().item() / n,
        "unconverged": bad.nonzero().squeeze(1).tolist(),
        "unconverged_norm_only": bad_norm.nonzero().squeeze(1).tolist(),
    }


# --------------------------------------------------------------------------- fixed-ε grid


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def robust_accuracy_grid(
    model: Model,
    x: Tensor,
    y: Tensor,
    cfg: AttackConfig,
    *,
    seed: int = 0,
    tick: Callable[[], None] = lambda: None,
    per_image: dict[tuple[str, float], np.ndarray] | None = None,
) -> dict[str, Any]:
    """FGSM and PGD (random start, cfg.pgd_restarts, step cfg.pgd_alpha·ε, cfg.pgd_steps) accuracy at
    every L∞ ε of cfg.eps (units of 1/255) on the first cfg.n_images images; `seed` seeds the starts,
    one generator per ε, so the starts at an ε depend on (seed, ε's batches) only, not on which other
    ε are on the grid: `transfer.transfer_matrix` at that ε draws the same ones (its diagonal equals
    pgd_acc@ε). `tick` is called after each (batch, ε). `per_image`, when given, is filled with (attack, ε) -> (n,)
    bool array: image still classified correctly after the attack (the audit's worst case uses it)."""
    x, y = x[: cfg.n_images], y[: cfg.n_images]
    gens = {e: _generator(x.device, seed) for e in cfg.eps}
    n = x.shape[0]
    correct = {(a, e): 0 for a in ATTACKS for e in cfg.eps}
    correct_rel = dict(correct)
    robust: dict[tuple[str, float], list[Tensor]] = {k: [] for k in correct}
    n_clean = 0
    for i in range(0, n, cfg.batch_size):
        xb, yb = x[i : i + cfg.batch_size], y[i : i + cfg.batch_size]
        clean_ok = predict(model, xb, batch_size=cfg.batch_size)[0] == yb
        n_clean += int(clean_ok.sum())
        for e in cfg.eps:
            eps = e / 255
            advs = {
                "fgsm": fgsm(model, xb, yb, eps=eps),
                "pgd": pgd(model, xb, yb, eps=eps, alpha=cfg.pgd_alpha * eps, steps=cfg.pgd_steps,
                           random_start=True, restarts=cfg.pgd_restarts, generator=gens[e]),
            }
            for a, x_adv in advs.items():
                ok = predict(model, x_adv, batch_size=cfg.batch_size)[0] == yb
                correct[a, e] += int(ok.sum())
                correct_rel[a, e] += int((ok & clean_ok).sum())
                robust[a, e].append(ok.cpu())
            tick()
    if per_image is not None:
        per_image.update({k: torch.cat(v).numpy() if v else np.zeros(0, bool) for k, v in robust.items()})
    out: dict[str, Any] = {GRID_IMAGES: n, GRID_CLEAN_ACC: n_clean / n if n else float("nan")}
    for (a, e), c in correct.items():
        out[grid_metric(a, e)] = c / n if n else float("nan")
        out[grid_metric(a, e, relative=True)] = correct_rel[a, e] / n_clean if n_clean else float("nan")
    return out


# --------------------------------------------------------------------------- minimal-radius summaries


def _genlog(eps: np.ndarray, M: float, D: float, Q: float, B: float, nu: float) -> np.ndarray:
    """Thesis's generalised logistic A(ε) = 1 − (1 + Q·e^(−B(ε/D − M)))^(−1/|ν|)."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        log_base = np.log1p(Q * np.exp(-B * (eps / D - M)))
        return 1.0 - np.exp(-log_base / abs(nu))


def genlog_inflection(M: float, D: float, Q: float, B: float, nu: float) -> float:
    """Where A''(ε) = 0: Q·e^(−B(ε/D − M)) = ν, i.e. R = D·(M·B + ln(Q/ν))/B."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(D * (M * B + np.log(Q / nu)) / B)


def accuracy_curve(radii: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """A(ε) = fraction of images with ρ > ε (inf counts as never broken)."""
    r = np.sort(np.asarray(radii, dtype=float))
    if r.size == 0:
        return np.full(np.shape(eps), np.nan)
    return 1.0 - np.searchsorted(r, np.asarray(eps, dtype=float), side="right") / r.size


def _fit_points(rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thesis points: (sorted ρ_i, fraction still correct after it), the tail below 1% cut, then
    10% padding points from 0 to min ρ at 1 and from max ρ on (same spacing) at 0."""
    rho = np.sort(rho)
    n = rho.size
    frac = (n - 1 - np.arange(n)) / n
    keep = frac > FIT_TAIL_CUT
    rho, frac = rho[keep], frac[keep]
    pad = int(rho.size * FIT_PAD_FRAC)
    left = np.linspace(0.0, rho[0], pad)
    xs = np.concatenate([left, rho, rho[-1] + left])
    ys = np.concatenate([np.ones(pad), frac, np.zeros(pad)])
    return xs, ys


def fit_logistic(rho: np.ndarray) -> dict[str, Any]:
    """Least-squares fit of the thesis's generalised logistic to the A(ε) points of finite radii.

    Returns {"R", "r2", "params" (M, D, Q, B, ν) or None, "reason" (None when the fit succeeded)}."""
    xs, ys = _fit_points(np.asarray(rho, dtype=float))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(
                _genlog, xs, ys, p0=list(FIT_START.values()),
                bounds=([-np.inf] * 4 + [0.0], [np.inf] * 5), max_nfev=FIT_MAX_EVALS,
            )
    except (RuntimeError, ValueError) as e:
        return {"R": None, "r2": None, "params": None, "reason": f"logistic fit failed: {e}"}
    fit = _genlog(xs, *params)
    r2 = float(1.0 - np.mean((fit - ys) ** 2) / np.var(ys)) if np.var(ys) > 0 else float("nan")
    R = genlog_inflection(*params)
    result: dict[str, Any] = {"R": R, "r2": r2, "params": [float(v) for v in params], "reason": None}
    if not math.isfinite(r2) or r2 < FIT_MIN_R2:
        result.update(R=None, reason=f"logistic fit R² {r2:.3f} < {FIT_MIN_R2}")
    elif not math.isfinite(R):
        result.update(R=None, reason=f"inflection not finite (params {result['params']})")
    return result


def _median_with_unbroken(rho: np.ndarray, eps_max: float) -> float:
    med = float(np.median(np.where(np.isfinite(rho), rho, np.inf)))
    return med if math.isfinite(med) else float(eps_max)


def robustness_summary(radii: Tensor | np.ndarray, eps_max: float, *, min_images: int = 20) -> dict[str, Any]:
    """Summaries of per-image minimal radii (inf = never broken):
    eps50 = median over all images, never-broken ones counted as beyond every radius (exact when
    fewer than half are unbroken; eps_max, a lower bound, when half or more are);
    auc = E[min(ρ, eps_max)]/eps_max over all images;
    R = inflection of the thesis's logistic fit to the finite radii, None (with R_reason) when there
    are fewer than `min_images` images or R² < 0.95; unbroken_frac = fraction of infinite radii."""
    rho = np.asarray(torch.as_tensor(radii).double().cpu())
    finite = rho[np.isfinite(rho)]
    n = int(rho.size)
    out: dict[str, Any] = {
        "n_images": n,
        "eps50": _median_with_unbroken(rho, eps_max) if n else None,
        "auc": float(np.mean(np.minimum(rho, eps_max)) / eps_max) if n else None,
        "unbroken_frac": (n - finite.size) / n if n else None,
        "R": None, "r2": None, "R_reason": None, "fit_params": None,
    }
    if finite.size < max(min_images, 2):
        out["R_reason"] = f"too few broken images for a fit: {finite.size} < {max(min_images, 2)}"
        return out
    fit = fit_logistic(finite)
    out.update(R=fit["R"], r2=fit["r2"], R_reason=fit["reason"], fit_params=fit["params"])
    return out


# --------------------------------------------------------------------------- masking checks


def masking_checks(
    grid: dict[str, Any], eps_grid: tuple[float, ...], large_eps_acc: float, zero_grad_frac: float
) -> dict[str, int | float]:
    """0/1 flags and their numbers: PGD never weaker than FGSM (within one image), accuracy near 0 at
    MASK_LARGE_EPS, almost no images with an all-zero input gradient."""
    n = grid[GRID_IMAGES]
    gap = max(grid[grid_metric("pgd", e)] - grid[grid_metric("fgsm", e)] for e in eps_grid)
    flags = {
        MASK_PGD_LE_FGSM: int(gap <= 1.0 / max(n, 1) + 1e-12),
        MASK_LARGE_EPS_OK: int(large_eps_acc <= MASK_LARGE_EPS_MAX_ACC),
        MASK_ZERO_GRAD_OK: int(zero_grad_frac <= MASK_ZERO_GRAD_MAX_FRAC),
    }
    return {
        MASK_PGD_LE_FGSM: flags[MASK_PGD_LE_FGSM],
        MASK_PGD_MINUS_FGSM_MAX: float(gap),
        MASK_LARGE_EPS_OK: flags[MASK_LARGE_EPS_OK],
        MASK_LARGE_EPS_ACC: float(large_eps_acc),
        MASK_ZERO_GRAD_OK: flags[MASK_ZERO_GRAD_OK],
        MASK_ZERO_GRAD_FRAC: float(zero_grad_frac),
        MASK_ALL_OK: int(all(flags.values())),
    }


def large_eps_accuracy(model: Model, x: Tensor, y: Tensor, *, batch_size: int) -> float:
    """Accuracy under PGD at L∞ MASK_LARGE_EPS without random start (step 2.5·ε/steps)."""
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        x_adv = pgd(model, xb, yb, eps=MASK_LARGE_EPS, alpha=2.5 * MASK_LARGE_EPS / MASK_LARGE_EPS_STEPS,
                    steps=MASK_LARGE_EPS_STEPS)
        correct += int((predict(model, x_adv, batch_size=batch_size)[0] == yb).sum())
    return correct / x.shape[0] if x.shape[0] else float("nan")


def zero_gradient_fraction(model: Model, x: Tensor, y: Tensor, *, batch_size: int) -> float:
    """Fraction of images whose cross-entropy input gradient is exactly zero everywhere."""
    zero = 0
    for i in range(0, x.shape[0], batch_size):
        g = input_gradient(model, x[i : i + batch_size], y[i : i + batch_size])
        zero += int((g.flatten(1).abs().amax(1) == 0).sum())
    return zero / x.shape[0] if x.shape[0] else float("nan")


# --------------------------------------------------------------------------- everything on one model


def _confident_correct(
    model: Model, x: Tensor, y: Tensor, *, n: int, confidence: float, batch_size: int
) -> Tensor:
    """Indices of the first n images classified correctly with softmax > confidence."""
    found: list[Tensor] = []
    count = 0
    for i in range(0, x.shape[0], batch_size):
        if count >= n:
            break
        pred, conf = predict(model, x[i : i + batch_size], batch_size=batch_size)
        ok = ((pred == y[i : i + batch_size]) & (conf > confidence)).nonzero().squeeze(1) + i
        found.append(ok)
        count += ok.numel()
    if not found:
        return torch.empty(0, dtype=torch.long, device=x.device)
    return torch.cat(found)[:n]


def _batched_radii(
    model: Model, x: Tensor, y: Tensor, cfg: AttackConfig, tick: Callable[[], None]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-image minimal radii of both attacks, and the PGD first-flip twins of up to EXAMPLE_IMAGES
    images of the first batch that it broke (for the adversarial-examples figure)."""
    radii: dict[str, list[Tensor]] = {"fgsm": [], "pgd": []}
    examples: dict[str, np.ndarray] = {}
    for i in range(0, x.shape[0], cfg.batch_size):
        xb, yb = x[i : i + cfg.batch_size], y[i : i + cfg.batch_size]
        radii["fgsm"].append(fgsm_min_radius(model, xb, yb))
        twins = xb.clone() if i == 0 else None
        radii["pgd"].append(pgd_min_radius(model, xb, yb, step=cfg.radius_pgd_step, ball=cfg.radius_pgd_ball,
                                           max_steps=cfg.radius_pgd_max_steps, adv_out=twins))
        if twins is not None:
            examples = _examples(model, xb, yb, twins, radii["pgd"][0], cfg.batch_size)
        tick()
    return {a: (torch.cat(r).cpu().numpy() if r else np.empty(0)) for a, r in radii.items()}, examples


def _examples(model: Model, x: Tensor, y: Tensor, twins: Tensor, rho: Tensor, batch_size: int) -> dict[str, np.ndarray]:
    """The first EXAMPLE_IMAGES images with a finite radius: clean x, its twin, labels, both predictions."""
    pick = torch.isfinite(rho).nonzero().squeeze(1)[:EXAMPLE_IMAGES]
    if pick.numel() == 0:
        return {}
    xs, advs = x[pick], twins[pick]
    return {
        "x": xs.cpu().numpy(), "x_adv": advs.cpu().numpy(), "y": y[pick].cpu().numpy(),
        "pred": predict(model, xs, batch_size=batch_size)[0].cpu().numpy(),
        "pred_adv": predict(model, advs, batch_size=batch_size)[0].cpu().numpy(),
        "radius": rho[pick].cpu().numpy(),
    }


def evaluate_robustness(
    model: Model,
    x_test: Tensor,
    y_test: Tensor,
    cfg: AttackConfig,
    *,
    seed: int = 0,
    on_step: Callable[[str, int, int, dict[str, float]], None] | None = None,
) -> tuple[dict[str, float | int | None | str], dict[str, Any]]:
    """Every robustness measurement of one model (on x_test's device): the fixed-ε grid, minimal radii
    and their summaries, the masking checks. Returns (metrics, extras); extras hold arrays for plots:
    radii_<attack> (inf = never broken), grid_eps (1/255 units), grid_<attack>_acc/_racc, curve_eps
    (absolute units, 0..radius_pgd_ball), curve_<attack> = A(ε) from the radii, fit_<attack>
    (logistic parameters M, D, Q, B, ν, or empty), fitcurve_<attack> (the fit on curve_eps, or
    empty), R_<attack> (nan when rejected), eps_max, grid_robust ((attack, ε) -> per-image robust
    bools on the grid's images), examples (clean/twin images of the PGD radius search, or empty).
    on_step("attacks", done, total, {}) reports progress, in the shape of training's on_epoch."""
    if not cfg.enabled:
        return {}, {}
    start = time.perf_counter()
    batches = lambda n: -(-n // cfg.batch_size)  # noqa: E731
    confident_mode = cfg.radius_images == "confident"
    wanted = len(x_test) if confident_mode else int(cfg.radius_images)
    total = batches(min(cfg.n_images, len(x_test))) * len(cfg.eps) + 1 + batches(wanted)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if on_step is not None:
            on_step("attacks", done, total, {})

    metrics: dict[str, float | int | None | str] = {}
    per_image: dict[tuple[str, float], np.ndarray] = {}
    grid = robust_accuracy_grid(model, x_test, y_test, cfg, seed=seed, tick=tick, per_image=per_image)
    metrics.update(grid)

    x_grid, y_grid = x_test[: cfg.n_images], y_test[: cfg.n_images]
    x_mask, y_mask = x_grid[:MASK_IMAGES], y_grid[:MASK_IMAGES]
    large_acc = large_eps_accuracy(model, x_mask, y_mask, batch_size=cfg.batch_size)
    zero_frac = zero_gradient_fraction(model, x_grid, y_grid, batch_size=cfg.batch_size)
    metrics.update(masking_checks(grid, cfg.eps, large_acc, zero_frac))
    tick()

    idx = _confident_correct(model, x_test, y_test, n=wanted, confidence=cfg.confidence, batch_size=cfg.batch_size)
    if confident_mode:
        metrics[CONFIDENT_IMAGES] = int(idx.numel())
    skip = None
    if confident_mode and idx.numel() < cfg.min_confident:  # the thesis skips such models for R
        skip = f"{idx.numel()} confident correct test images < attack.min_confident {cfg.min_confident}"
        idx = idx[:0]
    radii, examples = _batched_radii(model, x_test[idx], y_test[idx], cfg, tick)
    if done < total:  # fewer confident images than asked for: fewer radius batches
        done = total - 1
        tick()
    metrics[RADIUS_IMAGES] = int(idx.numel())
    eps_max = cfg.radius_pgd_ball
    curve_eps = np.linspace(0.0, eps_max, 241)
    extras: dict[str, Any] = {
        "eps_max": eps_max,
        "grid_eps": np.asarray(cfg.eps, dtype=float),
        "curve_eps": curve_eps,
        "grid_robust": per_image,
        "examples": examples,
    }
    for a in ATTACKS:
        s = robustness_summary(radii[a], eps_max, min_images=cfg.min_radius_images)
        if skip is not None:
            s.update(R_reason=skip)
        for key in ("eps50", "auc", "R", "r2", "R_reason", "unbroken_frac"):
            metrics[f"{a}_{key}"] = s[key]
        extras[f"radii_{a}"] = radii[a]
        extras[f"curve_{a}"] = accuracy_curve(radii[a], curve_eps)
        extras[f"fit_{a}"] = np.asarray(s["fit_params"] or [], dtype=float)
        extras[f"fitcurve_{a}"] = _genlog(curve_eps, *s["fit_params"]) if s["fit_params"] else np.empty(0)
        extras[f"R_{a}"] = s["R"] if s["R"] is not None else float("nan")
        extras[f"grid_{a}_acc"] = np.asarray([grid[grid_metric(a, e)] for e in cfg.eps])
        extras[f"grid_{a}_racc"] = np.asarray([grid[grid_metric(a, e, relative=True)] for e in cfg.eps])
    metrics[ATTACK_SECONDS] = time.perf_counter() - start
    return metrics, extras
