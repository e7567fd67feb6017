"""Adversarial attacks as pure functions on any classifier.

Every function takes `model(x) -> (B, classes)` logits or log-probabilities (the loss is cross-entropy
on that output; log-softmax of log-probs is the identity, so both work), images x (B, ...) in [0, 1]
and integer labels y (B,). All of them
- run the model in eval mode (plasticity and dropout off) and restore every module's previous mode,
- take gradients with `torch.autograd.grad` with respect to the input only: no parameter changes and
  no `.grad` left on parameters,
- work on whole batches on x's device (the model must live there too); no loop over images.
The caller batches large sets (see evaluate.py).

Fixed-ε attacks: fgsm(), pgd() (L∞ or L2, random start, restarts).
Minimal radii (docs/science.md §4): fgsm_min_radius() (line search along one gradient sign),
pgd_min_radius() (fixed signed steps until the first flip). Both return inf where no flip was found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Model = Callable[[Tensor], Tensor] | nn.Module
Norm = Literal["linf", "l2"]


@contextmanager
def eval_mode(model: Model) -> Iterator[None]:
    """Puts every submodule of `model` in eval mode and freezes its parameters (attacks need input
    gradients only, so no weight gradient is computed); restores each flag afterwards."""
    if not isinstance(model, nn.Module):
        yield
        return
    flags = [(m, m.training) for m in model.modules()]
    grads = [(q, q.requires_grad) for q in model.parameters()]
    model.eval()
    model.requires_grad_(False)
    try:
        yield
    finally:
        for m, was_training in flags:
            m.training = was_training
        for q, required in grads:
            q.requires_grad_(required)


def _per_image(v: Tensor, like: Tensor) -> Tensor:
    """A (B,) tensor shaped to broadcast against images `like` (B, ...)."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def _loss_and_grad(model: Model, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image cross-entropy (B,), its gradient w.r.t. x (B, ...) and the model output (B, classes).

    The summed loss is differentiated, so each image's gradient is its own (independent of the batch)."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = model(xg)
        loss = F.cross_entropy(out, y, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), xg)
    return loss.detach(), grad.detach(), out.detach()


def input_gradient(model: Model, x: Tensor, y: Tensor) -> Tensor:
    """Gradient of the per-image cross-entropy w.r.t. the input, in eval mode: (B, ...) like x."""
    with eval_mode(model):
        return _loss_and_grad(model, x, y)[1]


def fgsm(model: Model, x: Tensor, y: Tensor, *, eps: float) -> Tensor:
    """Fast gradient sign method: clip(x + ε·sign(∇ₓ CE), 0, 1), L∞ radius ε."""
    with eval_mode(model):
        grad = _loss_and_grad(model, x, y)[1]
    return (x.detach() + eps * grad.sign()).clamp(0.0, 1.0)


def _project(x_adv: Tensor, x: Tensor, eps: float, norm: Norm) -> Tensor:
    """x_adv projected onto the ε-ball around x, then clipped to [0, 1].

    Clipping after projecting keeps the radius: every coordinate moves towards x, which lies in [0, 1]."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        size = delta.flatten(1).norm(dim=1)
        delta = delta * _per_image((eps / size.clamp_min(1e-12)).clamp(max=1.0), x)
    return (x + delta).clamp(0.0, 1.0)


def _random_start(x: Tensor, eps: float, norm: Norm, generator: torch.Generator | None) -> Tensor:
    """A uniform random point of the ε-ball around x (clipped to [0, 1])."""
    gen_device = generator.device if generator is not None else x.device

    def draw(kind: Callable[..., Tensor], shape: tuple[int, ...]) -> Tensor:
        return kind(shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)

    if norm == "linf":
        delta = (2 * draw(torch.rand, tuple(x.shape)) - 1) * eps
    else:
        direction = draw(torch.randn, tuple(x.shape))
        direction = direction / _per_image(direction.flatten(1).norm(dim=1).clamp_min(1e-12), x)
        dims = x[0].numel()
        radius = eps * draw(torch.rand, (x.shape[0],)) ** (1.0 / dims)  # uniform in the ball's volume
        delta = direction * _per_image(radius, x)
    return (x + delta).clamp(0.0, 1.0)


def _pgd_run(
    model: Model, x: Tensor, y: Tensor, eps: float, alpha: float, steps: int, norm: Norm, start: Tensor
) -> Tensor:
    x_adv = start
    for _ in range(steps):
        grad = _loss_and_grad(model, x_adv, y)[1]
        if norm == "linf":
            step = grad.sign()
        else:
            step = grad / _per_image(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)
        x_adv = _project(x_adv + alpha * step, x, eps, norm)
    return x_adv


def pgd(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    random_start: bool = False,
    restarts: int = 1,
    norm: Norm = "linf",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient ascent on the cross-entropy within the ε-ball (L∞: signed steps of size
    alpha; L2: normalised-gradient steps of length alpha), clipped to [0, 1] after every step.

    With restarts > 1 (and random_start) each image keeps the first restart that fools the model,
    or, while none has, the one with the highest loss. Without random_start every restart would be
    identical, so one run is made. `generator` seeds the random starts (any device)."""
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if eps < 0 or alpha < 0 or steps < 0 or restarts < 1:
        raise ValueError(
            f"need eps, alpha, steps >= 0 and restarts >= 1, got {eps}, {alpha}, {steps}, {restarts}"
        )
    x = x.detach()
    runs = restarts if random_start else 1
    with eval_mode(model):
        best = x.clone()
        best_loss = torch.full((x.shape[0],), -torch.inf, device=x.device)
        best_fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(runs):
            start = _random_start(x, eps, norm, generator) if random_start else x.clone()
            x_adv = _pgd_run(model, x, y, eps, alpha, steps, norm, start)
            if runs == 1:
                return x_adv
            with torch.no_grad():
                out = model(x_adv)
                loss = F.cross_entropy(out, y, reduction="none")
                fooled = out.argmax(1) != y
            take = ~best_fooled & (fooled | (loss > best_loss))
            best = torch.where(_per_image(take, x), x_adv, best)
            best_loss = torch.where(take, loss, best_loss)
            best_fooled |= fooled
    return best


# --------------------------------------------------------------------------- minimal radii


@torch.no_grad()
def _wrong(model: Model, x: Tensor, y: Tensor) -> Tensor:
    return model(x).argmax(1) != y


def fgsm_min_radius(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    step: float = 0.01,
    min_step: float = 1e-6,
    max_radius: float = 1.0,
    max_iter: int = 10_000,
) -> Tensor:
    """Per-image smallest ε with clip(x + ε·sign(∇ₓ CE(x)), 0, 1) misclassified (thesis line search).

    One gradient sign at x; ε starts at 0 and moves by `step`; each time the prediction flips
    (correct <-> wrong) the step is halved and reversed; an image is done once the step is below
    `min_step` and it is misclassified. ε > max_radius (never flipped) gives inf; so does running out
    of `max_iter`. Images already misclassified at x get 0. Returns (B,) float64 on x's device."""
    x = x.detach()
    with eval_mode(model):
        direction = _loss_and_grad(model, x, y)[1].sign()
        n = x.shape[0]
        rho = torch.full((n,), torch.inf, dtype=torch.float64, device=x.device)
        eps = torch.zeros(n, dtype=torch.float64, device=x.device)
        delta = torch.full((n,), step, dtype=torch.float64, device=x.device)  # signed step
        wrong = _wrong(model, x, y)
        rho[wrong] = 0.0
        active = (~wrong).nonzero().squeeze(1)
        prev_wrong = torch.zeros(n, dtype=torch.bool, device=x.device)
        for _ in range(max_iter):
            if active.numel() == 0:
                break
            eps[active] += delta[active]
            e = _per_image(eps[active].to(x.dtype), x)
            now_wrong = _wrong(model, (x[active] + e * direction[active]).clamp(0.0, 1.0), y[active])
            flipped = now_wrong != prev_wrong[active]
            delta[active] = torch.where(flipped, -0.5 * delta[active], delta[active])
            prev_wrong[active] = now_wrong
            done = now_wrong & (delta[active].abs() < min_step)
            rho[active[done]] = eps[active[done]]
            gave_up = (eps[active] > max_radius) & ~now_wrong
            active = active[~(done | gave_up)]
    rho[rho > max_radius] = torch.inf
    return rho


def pgd_min_radius(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    step: float = 1e-3,
    ball: float = 0.12,
    max_steps: int = 700,
    adv_out: Tensor | None = None,
) -> Tensor:
    """Per-image L∞ distance ‖x′ − x‖∞ at the first misclassified iterate of signed-gradient steps
    (size `step`, projected on the L∞ ball of radius `ball`, clipped to [0, 1], no random start).

    Stops per image at the first flip; inf where no flip happened within `max_steps` steps; 0 where x
    itself is misclassified. One forward per step serves both the flip check and the gradient. The
    steps are a deterministic map of the iterate, so an image whose next iterate equals the one before
    its current (both correct) cycles between two correct points for good: it stops there with inf
    (in the quickstart most never-broken images cycle after 150-600 of the 700 steps).
    `adv_out` (like x), when given, gets each broken image's first misclassified iterate (its
    minimal-radius twin); rows of unbroken images are left as they were. Returns (B,) float64 on x's device."""
    x = x.detach()
    n = x.shape[0]
    rho = torch.full((n,), torch.inf, dtype=torch.float64, device=x.device)
    with eval_mode(model):
        idx = torch.arange(n, device=x.device)
        x0, ys, xs = x, y, x.clone()
        before: Tensor | None = None  # the iterate before xs (checked, correct), per remaining image
        for t in range(max_steps + 1):
            xg = xs.requires_grad_(True)
            with torch.enable_grad():
                out = model(xg)
                loss = F.cross_entropy(out, ys, reduction="sum")
            wrong = out.detach().argmax(1) != ys
            if wrong.any():
                rho[idx[wrong]] = (xs.detach()[wrong] - x0[wrong]).flatten(1).abs().amax(1).double()
                if adv_out is not None:
                    adv_out[idx[wrong]] = xs.detach()[wrong]
            keep = ~wrong
            if t == max_steps or not keep.any():
                break
            (grad,) = torch.autograd.grad(loss, xg)
            idx, x0, ys, now = idx[keep], x0[keep], ys[keep], xs.detach()[keep]
            xs = _project(now + step * grad[keep].sign(), x0, ball, "linf")
            if before is not None:
                going = ~(xs == before[keep]).flatten(1).all(1)  # a two-cycle: never flips, inf
                if not going.all():
                    idx, x0, ys, xs, now = idx[going], x0[going], ys[going], xs[going], now[going]
                    if idx.numel() == 0:
                        break
            before = now
    return rho
