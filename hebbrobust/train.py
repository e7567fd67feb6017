"""Training: local filters by the rule, the head on frozen filters, and the backprop model end to end.

Progress goes through `on_epoch(stage, epoch, total, metrics)`; nothing here prints.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hebbrobust.config import OptimConfig, RuleConfig
from hebbrobust.errors import TrialError
from hebbrobust.evaluate import filter_convergence
from hebbrobust.fileio import atomic_write
from hebbrobust.models import HebbCNN, activation_power
from hebbrobust.numeric import available_memory
from hebbrobust.rules import krotov

EpochCallback = Callable[[str, int, int, dict[str, float]], None]
FEATURE_CACHE_BYTES = 6 * 1024**3  # cache pool outputs for head training up to this size (fp32, else fp16)
ACTIVATED_BYTES = 12 * 1024**3  # sigma^n of the pool outputs held in fp32 up to this size (and 75% of available memory)
BLUE_WALL_FRAC = 0.85  # more than this share of all-negative filters: one unit won every ranking


def _noop(stage: str, epoch: int, total: int, metrics: dict[str, float]) -> None:
    return None


def _load_checkpoint(path: Path | None, tag: str) -> dict[str, Any] | None:
    """A checkpoint written by _save_checkpoint for the same `tag` (config digest), else None."""
    if path is None or not path.exists():
        return None
    state = torch.load(path, weights_only=True, map_location="cpu")
    return state if state.get("tag") == tag else None


def _save_checkpoint(path: Path | None, state: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # atomic: a run killed mid-save, or out of disk space, keeps the previous epoch's checkpoint
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    return list(torch.randperm(n, generator=generator).split(batch_size))


def check_filters(weights: torch.Tensor) -> None:
    """Raise TrialError when the filters diverged: non-finite weights or the Blue Wall of Death."""
    if not torch.isfinite(weights).all():
        raise TrialError("filters diverged: NaN or infinite weights (lower rule.lr or rule.delta)")
    negative = (weights.flatten(1) <= 0).all(dim=1).float().mean().item()
    if negative > BLUE_WALL_FRAC:
        raise TrialError(
            f"Blue Wall of Death: {negative:.0%} of filters have only negative weights "
            "(one unit wins every ranking; lower rule.delta or rule.lr)"
        )


def fit_filters_local(
    weights: torch.Tensor,
    x: torch.Tensor,
    cfg: RuleConfig,
    *,
    kernel: int,
    tol: float,
    seed: int,
    on_epoch: EpochCallback | None = None,
    checkpoint: Path | None = None,
    tag: str = "",
) -> dict[str, list[float]]:
    """Train weights (F, N) in place on images x (B, C, H, W) by the local rule; returns per-epoch curves.
    With `checkpoint`, state is saved after every epoch and a matching checkpoint (same `tag`) resumes.
    cfg.accumulate = "float64" (and float32 weights): the updates add up in a float64 copy of the weights,
    which the checkpoint holds, and `weights` follows its rounding."""
    on_epoch = on_epoch or _noop
    gen = torch.Generator().manual_seed(seed + 1)
    curves: dict[str, list[float]] = {"lr": [], "unconverged_frac": [], "norm_dev": []}
    master = weights.double() if cfg.accumulate == "float64" and weights.dtype != torch.float64 else None
    state_of = weights if master is None else master  # what the checkpoint saves and restores
    first = 0
    if (state := _load_checkpoint(checkpoint, tag)) is not None:
        state_of.copy_(state["weights"])
        weights.copy_(state_of)
        gen.set_state(state["generator"])
        curves, first = state["curves"], state["epoch"]
    for epoch in range(first, cfg.epochs):
        lr = krotov.lr_at(epoch, cfg.epochs, cfg)
        for idx in _batches(len(x), cfg.batch_size, gen):
            krotov.train_step(weights, x[idx.to(x.device)], cfg, lr, master=master)
        check_filters(weights)
        conv = filter_convergence(weights, cfg.p, tol)
        norms = torch.as_tensor(conv["norms"])
        row = {
            "lr": lr,
            "unconverged_frac": float(conv["unconverged_frac"]),
            "norm_dev": float((norms - 1).abs().mean()),  # mean |‖W_mu‖_p - 1|: the rule's drift to unit norm
        }
        for name, value in row.items():
            curves[name].append(value)
        on_epoch("filters", epoch + 1, cfg.epochs, row)
        _save_checkpoint(checkpoint, {
            "tag": tag, "epoch": epoch + 1, "weights": state_of.cpu(), "generator": gen.get_state(), "curves": curves,
        })
    return curves


def feature_dtype(model: HebbCNN, n: int) -> torch.dtype | None:
    """The dtype pool outputs of n images are held in (fp32, fp16 when large), or None when they would
    not fit the memory budget (the head then computes them batch by batch)."""
    total = int(torch.tensor(model.feature_shape).prod()) * 4 * n  # fp32 bytes
    if total > 2 * FEATURE_CACHE_BYTES:
        return None
    return torch.float16 if total > FEATURE_CACHE_BYTES else torch.float32


def pool_features(model: HebbCNN, x: torch.Tensor, batch_size: int) -> torch.Tensor | None:
    """Pool outputs of all of x in batches of batch_size, or None when they would not fit the budget."""
    dtype = feature_dtype(model, len(x))
    if dtype is None:
        return None
    with torch.no_grad():
        return torch.cat([model.features(xb).to(dtype) for xb in x.split(batch_size)])


def _gather(cache: torch.Tensor, idx: torch.Tensor, buffers: dict[str, torch.Tensor]) -> torch.Tensor:
    """cache[idx] as float32 in buffers reused from batch to batch: a fresh batch-sized tensor per step
    (230 MB for CIFAR at F=400) cost page faults, 40% of a head step."""
    n = len(idx)
    if "rows" not in buffers or len(buffers["rows"]) < n:
        buffers["rows"] = cache.new_empty((n, *cache.shape[1:]))
        if cache.dtype != torch.float32:
            buffers["float"] = torch.empty(buffers["rows"].shape, dtype=torch.float32, device=cache.device)
    rows = torch.index_select(cache, 0, idx, out=buffers["rows"][:n])
    return rows if rows.dtype == torch.float32 else buffers["float"][:n].copy_(rows)


def _optimise(
    params: list[torch.nn.Parameter],
    loss_of: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    n: int,
    cfg: OptimConfig,
    *,
    stage: str,
    seed: int,
    on_epoch: EpochCallback,
    device: torch.device,
    module: torch.nn.Module,
    checkpoint: Path | None,
    tag: str,
) -> dict[str, list[float]]:
    """AdamW + cosine schedule over index batches; loss_of(idx) -> (loss, correct count).
    With `checkpoint`, module/optimiser state is saved every epoch and a matching one resumes."""
    gen = torch.Generator().manual_seed(seed + 2)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, cfg.epochs * ((n + cfg.batch_size - 1) // cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    curves: dict[str, list[float]] = {"loss": [], "train_acc": [], "lr": []}
    first = 0
    if (state := _load_checkpoint(checkpoint, tag)) is not None:
        module.load_state_dict(state["module"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["generator"])
        curves, first = state["curves"], state["epoch"]
    for epoch in range(first, cfg.epochs):
        total_loss, correct = 0.0, 0
        lr = float(sched.get_last_lr()[0])
        for idx in _batches(n, cfg.batch_size, gen):
            idx = idx.to(device)
            loss, hits = loss_of(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
            correct += int(hits)
        row = {"loss": total_loss / n, "train_acc": correct / n, "lr": lr}
        if not torch.isfinite(torch.tensor(row["loss"])):
            raise TrialError(f"{stage} training diverged: loss is {row['loss']} at epoch {epoch + 1}")
        for name, value in row.items():
            curves[name].append(value)
        on_epoch(stage, epoch + 1, cfg.epochs, row)
        _save_checkpoint(checkpoint, {
            "tag": tag, "epoch": epoch + 1, "module": module.state_dict(), "opt": opt.state_dict(),
            "sched": sched.state_dict(), "generator": gen.get_state(), "curves": curves,
        })
    return curves


def activated_features(model: HebbCNN, features: torch.Tensor | None, batch_size: int = 1000) -> torch.Tensor | None:
    """sigma^n of all pool outputs in fp32, computed once, or None when they do not fit ACTIVATED_BYTES and
    75% of the memory available now on their device (the head then applies sigma^n batch by batch). Either
    way the head sees the same numbers: the same elementwise ops on the same fp32 values (tests compare them
    bit for bit). The thesis-best head: 2.4 s per epoch instead of 7.2 (docs/performance.md)."""
    if features is None:
        return None
    nbytes = features.numel() * 4
    free = torch.cuda.mem_get_info(features.device)[0] if features.device.type == "cuda" else available_memory()
    if nbytes > min(ACTIVATED_BYTES, 0.75 * free):
        return None
    out = torch.empty(features.shape, dtype=torch.float32, device=features.device)
    for first in range(0, len(out), batch_size):
        rows = out[first : first + batch_size].copy_(features[first : first + batch_size])
        a = activation_power(rows, model.activation, model.power, inplace=True)
        if a.data_ptr() != rows.data_ptr():
            rows.copy_(a)
    return out


def fit_head(
    model: HebbCNN,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: OptimConfig,
    *,
    seed: int,
    on_epoch: EpochCallback | None = None,
    checkpoint: Path | None = None,
    tag: str = "",
    features: Callable[[], torch.Tensor | None] | None = None,
) -> dict[str, list[float]]:
    """Train the linear head on frozen filters. Pool outputs are computed once and cached
    (memory-bounded) on the first batch, so a resumed finished head skips them; sigma^n is applied once
    to all of them where memory allows (activated_features), else to each batch. `features` (called once,
    on the first batch) may supply the pool outputs instead: pool_features(model, x, cfg.batch_size) or an
    equal copy (the shared feature cache)."""
    fetch = features or (lambda: pool_features(model, x, cfg.batch_size))
    held: dict[str, torch.Tensor | None] = {}
    buffers: dict[str, torch.Tensor] = {}

    def loss_of(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not held:
            raw = fetch()
            held["activated"] = activated_features(model, raw, cfg.batch_size)
            held["raw"] = raw if held["activated"] is None else None  # the raw copy is not kept beside it
        if (a := held["activated"]) is not None:
            out = model.classify_activated(_gather(a, idx, buffers))
        elif (raw := held["raw"]) is not None:
            out = model.classify(_gather(raw, idx, buffers), inplace=True)  # a buffer: no gradient flows to it
        else:
            out = model.classify(model.features(x[idx]).detach(), inplace=True)
        return F.nll_loss(out, y[idx]), (out.argmax(1) == y[idx]).sum()

    return _optimise(
        list(model.head.parameters()), loss_of, len(x), cfg,
        stage="head", seed=seed, on_epoch=on_epoch or _noop, device=x.device,
        module=model.head, checkpoint=checkpoint, tag=tag,
    )


def fit_backprop(
    model: HebbCNN,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: OptimConfig,
    *,
    seed: int,
    on_epoch: EpochCallback | None = None,
    checkpoint: Path | None = None,
    tag: str = "",
) -> dict[str, list[float]]:
    """Train conv and head end to end by backpropagation."""

    def loss_of(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(x[idx])
        return F.nll_loss(out, y[idx]), (out.argmax(1) == y[idx]).sum()

    model.train()
    return _optimise(
        list(model.parameters()), loss_of, len(x), cfg,
        stage="backprop", seed=seed, on_epoch=on_epoch or _noop, device=x.device,
        module=model, checkpoint=checkpoint, tag=tag,
    )
