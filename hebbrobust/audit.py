"""Robustness audit with the field's standard attacks (Croce & Hein 2020, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks"), from
adversarial-robustness-toolbox (ART), beside our own fixed-step PGD.

Attacks (names in config.AuditName), all L∞ on images in [0, 1]:
- apgd-ce: Auto-PGD on the cross-entropy (step 2ε, halved by APGD's own schedule, momentum 0.75);
- apgd-dlr: Auto-PGD on the difference-of-logits ratio, *untargeted*. AutoAttack's standard suite runs
  the targeted version once per target class (9 runs on 10 classes); the untargeted one keeps the
  audit's budget at one run per ε and still brings what matters for σⁿ heads: DLR is invariant to
  shifting and scaling the logits, so saturated (exploding n) or flat outputs that stall the
  cross-entropy's gradient do not stall it;
- square: Square attack (Andriushchenko et al. 2020), random search without gradients, seeded.

The models here return log-probabilities; ART gets them as they are: the cross-entropy of log-probs
equals that of the logits (log-softmax is idempotent) and DLR and Square's margin loss only use
differences of outputs, unchanged by log-softmax's per-image shift. The model runs in eval mode with
its parameters frozen (plasticity off: no rule runs in forward, no weight gradient is taken).
ART draws its randomness from numpy's global generator; each attack runs under a seeded state that
is restored afterwards.

`audit_per_image()` gives per-image robust/broken arrays per attack per ε; `audit()` adds our PGD's
per-image results from the grid and turns them into metrics (names in evaluate.py): <attack>_acc@<e>,
worst_acc@<e> and the masking checks. With `partial` (a .npz path), `audit()` saves its per-image
results after every chunk of attacked images and a rerun on the same model, images and settings
(audit_fingerprint) picks up where a killed one stopped: a CIFAR audit takes about an hour on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hebbrobust.attacks import Model, eval_mode
from hebbrobust.config import AttackConfig, AuditName
from hebbrobust.evaluate import MASK_PGD_WORST_MAX_GAP, grid_metric, predict, robust_accuracy_grid
from hebbrobust.fileio import atomic_savez
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

SQUARE_P_INIT = 0.8  # Square's initial fraction of pixels per square (AutoAttack's L∞ value)
SQUARE_CHUNK = 50  # images per Square run (each chunk seeded seed + its index): a chunk stops when all are broken


@contextmanager
def numpy_seed(seed: int) -> Iterator[None]:
    """numpy's global generator seeded for the block, its previous state restored afterwards."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


def _as_module(model: Model) -> nn.Module:
    if isinstance(model, nn.Module):
        return model

    class _Wrapped(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return model(x)

    return _Wrapped()


def art_classifier(model: Model, x: Tensor, classes: int) -> Any:
    """An ART PyTorchClassifier around `model` for images shaped like x[0] in [0, 1], on x's device."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=_as_module(model), loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=classes,
        clip_values=(0.0, 1.0), channels_first=True, device_type="gpu" if x.device.type == "cuda" else "cpu",
    )


def run_attack(
    model: Model, x: Tensor, y: Tensor, name: AuditName, eps: float, cfg: AttackConfig, *, seed: int = 0,
    classes: int | None = None,
) -> Tensor:
    """Adversarial images (like x, on x's device) of one audit attack at L∞ radius `eps` (absolute units)."""
    from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack

    classes = classes or _classes(model, x)
    xs, ys = x.detach().cpu().numpy().astype(np.float32), y.detach().cpu().numpy()
    with eval_mode(model), numpy_seed(seed):
        clf = art_classifier(model, x, classes)
        attack: Any
        if name in ("apgd-ce", "apgd-dlr"):
            attack = AutoProjectedGradientDescent(
                clf, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=cfg.apgd_steps, targeted=False,
                nb_random_init=cfg.apgd_restarts, batch_size=cfg.batch_size, verbose=False,
                loss_type="cross_entropy" if name == "apgd-ce" else "difference_logits_ratio",
            )
        elif name == "square":
            attack = SquareAttack(
                clf, norm=np.inf, eps=eps, max_iter=cfg.square_queries, p_init=SQUARE_P_INIT,
                nb_restarts=cfg.square_restarts, batch_size=cfg.batch_size, verbose=False,
            )
        else:
            raise ValueError(f"unknown audit attack {name!r}")
        x_adv = attack.generate(xs, ys)
    return torch.as_tensor(x_adv, dtype=x.dtype).to(x.device)


@torch.no_grad()
def _classes(model: Model, x: Tensor) -> int:
    with eval_mode(model):
        return int(model(x[:1]).shape[1])


def audit_per_image(
    model: Model,
    x: Tensor,
    y: Tensor,
    cfg: AttackConfig,
    *,
    attacks: tuple[AuditName, ...] | None = None,
    seed: int = 0,
    tick: Callable[[], None] = lambda: None,
    progress: dict[str, np.ndarray] | None = None,
    on_chunk: Callable[[], None] = lambda: None,
) -> dict[tuple[str, float], np.ndarray]:
    """(attack, ε in 1/255) -> (n,) bool: image still classified correctly after the attack, for every
    attack of `attacks` (default cfg.audit) and ε of cfg.eps, on all of x (a clean mistake is never
    robust, so only the images classified correctly are attacked). Square runs on SQUARE_CHUNK images at
    a time: ART's Square predicts its whole input every iteration until every image is broken, so one
    robust image kept 500 in play for all its queries. `tick` is called after each (attack, ε).

    `progress` ('<attack>@<e>' -> robust bools, '<attack>@<e>:done' -> attacked bools) holds results
    so far: chunks whose images are all done are not attacked again; it is filled as chunks finish and
    `on_chunk` is called after each (audit() saves it there)."""
    classes = _classes(model, x)
    correct = (predict(model, x, batch_size=cfg.batch_size)[0] == y).cpu().numpy()
    index = np.flatnonzero(correct)
    progress = {} if progress is None else progress
    out: dict[tuple[str, float], np.ndarray] = {}
    for name in cfg.audit if attacks is None else attacks:
        chunk = SQUARE_CHUNK if name == "square" else max(len(index), 1)
        for e in cfg.eps:
            key = f"{name}@{e:g}"
            robust = progress.setdefault(key, np.zeros(len(x), dtype=bool))
            done = progress.setdefault(f"{key}:done", np.zeros(len(x), dtype=bool))
            for i, start in enumerate(range(0, len(index), chunk)):
                rows = index[start : start + chunk]
                if done[rows].all():
                    continue
                at = torch.as_tensor(rows, device=x.device)
                xs, ys = x[at], y[at]
                x_adv = run_attack(model, xs, ys, name, e / 255, cfg, seed=seed + i, classes=classes)
                robust[rows] = (predict(model, x_adv, batch_size=cfg.batch_size)[0] == ys).cpu().numpy()
                done[rows] = True
                on_chunk()
            out[name, e] = robust.copy()
            tick()
    return out


def audit_fingerprint(model: Model, x: Tensor, y: Tensor, cfg: AttackConfig, seed: int) -> str:
    """What an audit's per-image results depend on: the model's parameters and buffers, the images, the
    labels, the attack settings (all but the list of audit attacks: each runs on its own) and the seed."""
    h = hashlib.sha256()
    tensors = list(model.state_dict().values()) if isinstance(model, nn.Module) else []
    for t in [*tensors, x, y]:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps({**cfg.model_dump(mode="json", exclude={"audit"}), "seed": seed}, sort_keys=True).encode())
    return h.hexdigest()[:20]


def load_progress(path: Path, tag: str) -> dict[str, np.ndarray]:
    """An audit's saved progress when `path` holds one for the same fingerprint, else nothing."""
    try:
        with np.load(path) as z:
            if str(z["tag"]) != tag:
                return {}
            return {k: z[k].copy() for k in z.files if k != "tag"}
    except (OSError, ValueError, KeyError):
        return {}


def save_progress(path: Path, tag: str, progress: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_savez(path, {"tag": np.asarray(tag), **progress})


def worst_case(robust: dict[tuple[str, float], np.ndarray], eps: tuple[float, ...]) -> dict[float, np.ndarray]:
    """ε -> (n,) bool: robust only where every attack run at that ε failed."""
    out = {}
    for e in eps:
        runs = [v for (a, ee), v in robust.items() if ee == e and a != WORST]
        out[e] = np.logical_and.reduce(runs) if runs else np.zeros(0, bool)
    return out


def audit_metrics(
    robust: dict[tuple[str, float], np.ndarray], eps: tuple[float, ...], prior_mask_ok: object = None
) -> dict[str, float | int]:
    """Accuracies per attack and ε, worst_acc@<e>, and the two masking checks from per-image results
    that include ("pgd", ε). `prior_mask_ok` (the grid's mask_all_ok) is combined into mask_all_ok."""
    worst = worst_case(robust, eps)
    n = len(next(iter(worst.values()))) if worst else 0
    acc = {k: float(v.mean()) if v.size else float("nan") for k, v in robust.items()}
    metrics: dict[str, float | int] = {AUDIT_IMAGES: n}
    for (a, e), v in acc.items():
        if a not in ("pgd", "fgsm"):
            metrics[grid_metric(a, e)] = v
    for e, w in worst.items():
        metrics[grid_metric(WORST, e)] = float(w.mean()) if w.size else float("nan")
    one = 1.0 / max(n, 1) + 1e-12
    flags = []
    if any(a == "square" for a, _ in robust):
        gap = max(acc["pgd", e] - acc["square", e] for e in eps)
        metrics[MASK_PGD_LE_SQUARE] = int(gap <= one)
        metrics[MASK_PGD_MINUS_SQUARE_MAX] = float(gap)
        flags.append(metrics[MASK_PGD_LE_SQUARE])
    over = max(acc["pgd", e] - metrics[grid_metric(WORST, e)] for e in eps)
    metrics[MASK_PGD_WORST_OK] = int(over <= MASK_PGD_WORST_MAX_GAP + 1e-12)
    metrics[MASK_PGD_MINUS_WORST_MAX] = float(over)
    flags.append(metrics[MASK_PGD_WORST_OK])
    if prior_mask_ok is not None:
        flags.append(int(bool(prior_mask_ok)))
    metrics[MASK_ALL_OK] = int(all(flags))
    return metrics


def audit(
    model: Model,
    x_test: Tensor,
    y_test: Tensor,
    cfg: AttackConfig,
    *,
    seed: int = 0,
    pgd_robust: dict[tuple[str, float], np.ndarray] | None = None,
    prior_mask_ok: object = None,
    on_step: Callable[[str, int, int, dict[str, float]], None] | None = None,
    partial: Path | None = None,
) -> tuple[dict[str, float | int], dict[tuple[str, float], np.ndarray]]:
    """The audit of cfg.audit on the fixed-ε grid's images (the first cfg.n_images of x_test): metrics
    and the per-image arrays ((attack, ε) -> robust bools, ours as "pgd", the worst case as "worst").

    `pgd_robust` is the grid's per-image results (evaluate_robustness's extras["grid_robust"]); without
    it our grid runs here first. on_step("audit", done, total, {}) reports progress. With `partial`, the
    per-image results are saved there after every chunk, a matching file is resumed, and it is removed
    when the audit is complete."""
    if not cfg.audit:
        return {}, {}
    start = time.perf_counter()
    x, y = x_test[: cfg.n_images], y_test[: cfg.n_images]
    total = len(cfg.audit) * len(cfg.eps) + (pgd_robust is None)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if on_step is not None:
            on_step("audit", done, total, {})

    if pgd_robust is None:
        pgd_robust = {}
        robust_accuracy_grid(model, x, y, cfg, seed=seed, per_image=pgd_robust)
        tick()
    robust = {k: v for k, v in pgd_robust.items() if k[0] == "pgd"}
    progress: dict[str, np.ndarray] = {}
    save: Callable[[], None] = lambda: None  # noqa: E731
    if partial is not None:
        path, tag = partial, audit_fingerprint(model, x, y, cfg, seed)
        progress = load_progress(path, tag)
        save = lambda: save_progress(path, tag, progress)  # noqa: E731
    robust.update(audit_per_image(model, x, y, cfg, seed=seed, tick=tick, progress=progress, on_chunk=save))
    if partial is not None:
        partial.unlink(missing_ok=True)
    metrics = audit_metrics(robust, cfg.eps, prior_mask_ok)
    robust.update({(WORST, e): w for e, w in worst_case(robust, cfg.eps).items()})
    metrics[AUDIT_SECONDS] = time.perf_counter() - start
    return metrics, robust
