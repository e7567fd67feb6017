"""The one-hidden-layer CNN of docs/science.md §1, shared by the local and the backprop model.

    x (B, C, H, W) in [0, 1]
    -> conv F x w x w, stride 1, no padding, no bias       (B, F, H-w+1, W-w+1)
         local:    currents I = conv(x, sign(W)|W|^(p-1)) / ||patch||_p   (divisor 1 where norm < 1e-7)
         backprop: plain conv(x, W)
    -> max-pool(pool, stride)                               (B, F, H', W')   = features()
    -> sigma(x)^n  (relu, elu, gelu; rexp = max(0, e^x - 1) without power)
    -> flatten -> linear (no bias) -> log-softmax           (B, classes)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hebbrobust import _maxpool
from hebbrobust.config import ModelConfig
from hebbrobust.numeric import int_power_

NORM_FLOOR = 1e-7  # patches with a smaller p-norm are not rescaled (divisor 1)


def activation_power(x: torch.Tensor, activation: str, n: float, *, inplace: bool = False) -> torch.Tensor:
    """sigma(x)^n; integer n is a plain power (ELU^16 is even), other n keep the sign: sign(s)|s|^n.
    inplace: x may be overwritten (a buffer no gradient flows through)."""
    if activation == "rexp":
        return torch.relu_(torch.expm1_(x)) if inplace else torch.relu(torch.expm1(x))
    if inplace and activation in ("relu", "elu"):
        s = torch.relu_(x) if activation == "relu" else F.elu(x, inplace=True)
    else:
        s = {"relu": torch.relu, "elu": F.elu, "gelu": F.gelu}[activation](x)
    if n == 1:
        return s
    if float(n).is_integer():
        # without autograd s is a fresh tensor or the caller's buffer (inplace): square it in place,
        # several times faster than pow on CPU
        return s.pow(int(n)) if s.requires_grad or int(n) < 1 else int_power_(s, int(n))
    return s.sign() * s.abs().pow(n)


def _power_kernel(weight: torch.Tensor, p: float) -> torch.Tensor:
    return weight.sign() * weight.abs().pow(p - 1)


def _window_norm(x: torch.Tensor, weight_shape: torch.Size, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, norm), both (B, 1, H', W'): s = window sum of |x|^p, norm = s^(1/p) (1 where norm < 1e-7)."""
    ones = torch.ones((1, *weight_shape[1:]), dtype=x.dtype, device=x.device)
    s = F.conv2d(x.abs().pow(p), ones)  # sum over the w x w x C window
    floor = NORM_FLOOR**p
    norm = torch.where(s <= floor, torch.ones_like(s), s.clamp_min(max(floor, 1e-38)).pow(1.0 / p))
    return s, norm


def local_currents(x: torch.Tensor, weight: torch.Tensor, p: float) -> torch.Tensor:
    """Currents of normalised patches: conv(x, sign(W)|W|^(p-1)) / (window sum of |x|^p)^(1/p)."""
    return F.conv2d(x, _power_kernel(weight, p)) / _window_norm(x, weight.shape, p)[1]


CPU_BLOCK_CURRENTS = 1 << 22  # conv outputs per block on CPU (16 MB, 12 CIFAR images at F=400): stays in cache


def _block(x: torch.Tensor, weight: torch.Tensor) -> int:
    """Images per block: as many as CPU_BLOCK_CURRENTS conv outputs hold (at least 1)."""
    per_image = weight.shape[0] * (x.shape[2] - weight.shape[2] + 1) * (x.shape[3] - weight.shape[3] + 1)
    return max(1, CPU_BLOCK_CURRENTS // per_image)


class _ConvMaxPool(torch.autograd.Function):
    """max_pool2d(h(x)) in blocks of images, h = conv2d(x, W) (p None) or local_currents(x, W, p),
    keeping only the pool's argmax indices.

    On CPU the dense way writes, re-reads, zero-fills and converts the full conv output and its
    gradient (1.35 GB for 1000 CIFAR images at F=400) several times; block by block they stay in
    cache (backprop train step 2x, local input gradient 3x faster). Values equal the dense
    composition's up to float rounding (a block's conv may sum in another order): the pool
    (hebbrobust._maxpool on CPU, torch's max_pool2d bit for bit) picks the argmax, the backward
    scatters the gradient to it as max_pool2d's backward does, then the conv's gradients are GEMMs
    on the block's patches. Local filters get no gradient (the rule sets them)."""

    @staticmethod
    def forward(ctx, x, weight, p, pool, stride):  # type: ignore[override]
        outs, idxs = [], []
        for xb in x.split(_block(x, weight)):
            h = F.conv2d(xb, weight) if p is None else local_currents(xb, weight, p)
            out, idx = _maxpool.max_pool2d_with_indices(h, pool, stride)
            outs.append(out)
            idxs.append(idx.to(torch.int32))
        out = torch.cat(outs)
        ctx.save_for_backward(x, weight, torch.cat(idxs), out)
        ctx.p = p
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight, idx, out = ctx.saved_tensors
        p = ctx.p
        need_x, need_w = ctx.needs_input_grad[:2]
        if need_w and p is not None:
            raise RuntimeError("local filters are set by the rule and get no gradient")
        f, _, k, _ = weight.shape
        oh, ow = x.shape[2] - k + 1, x.shape[3] - k + 1
        kernel = (weight if p is None else _power_kernel(weight, p)).reshape(f, -1)
        grad_x, grad_w = [], torch.zeros_like(kernel)  # (F, N), small: allocated even when not needed
        ones = torch.ones((1, *weight.shape[1:]), dtype=x.dtype, device=x.device)  # spreads d/ds over windows
        blocks = (t.split(_block(x, weight)) for t in (x, idx, grad, out))
        for xb, ib, gb, ob in zip(*blocks, strict=True):
            b, at = len(xb), ib.flatten(2).long()  # argmax positions (b, F, pooled)
            dense = gb.new_zeros(b, oh * ow, f)  # d loss / d h, (b, positions, F)
            dense.scatter_add_(1, at.transpose(1, 2), gb.flatten(2).transpose(1, 2))
            if p is not None:  # h = a / n: d/da = G / n, d/dn = -sum_f G h / n (h = pool output at the argmax)
                s, norm = (t.view(b, oh * ow) for t in _window_norm(xb, weight.shape, p))
                dense /= norm.unsqueeze(-1)
                d_norm = gb.new_zeros(b, oh * ow).scatter_add_(1, at.flatten(1), (gb * ob).flatten(1))
                d_s = torch.where(s <= NORM_FLOOR**p, 0.0, -d_norm / (p * s.clamp_min(1e-38)))  # dn/ds = n/(p s)
            if need_w:
                grad_w += torch.einsum("bnp,bpf->fn", F.unfold(xb, k), dense)
            if need_x:
                gx = F.fold((dense @ kernel).transpose(1, 2), x.shape[2:], k)
                if p is not None:  # ds/dx = p sign(x) |x|^(p-1), summed over the windows holding x
                    spread = F.conv_transpose2d(d_s.view(b, 1, oh, ow), ones)
                    gx += spread * p * xb.sign() * xb.abs().pow(p - 1)
                grad_x.append(gx)
        return (torch.cat(grad_x) if need_x else None,
                grad_w.view_as(weight) if need_w else None, None, None, None)


class HebbCNN(nn.Module):
    def __init__(self, cfg: ModelConfig, in_shape: tuple[int, int, int], classes: int, p: float) -> None:
        super().__init__()
        c, h, w = in_shape
        k = cfg.kernel
        if k > h or k > w:
            raise ValueError(f"model.kernel {k} is larger than the {h}x{w} images")
        oh, ow = h - k + 1, w - k + 1
        if cfg.pool > oh or cfg.pool > ow:
            raise ValueError(f"model.pool {cfg.pool} is larger than the {oh}x{ow} conv output")
        ph, pw = (oh - cfg.pool) // cfg.pool_stride + 1, (ow - cfg.pool) // cfg.pool_stride + 1
        self.kind, self.p = cfg.kind, float(p)
        self.activation, self.power = cfg.activation, float(cfg.power)
        self.pool, self.pool_stride = cfg.pool, cfg.pool_stride
        self.feature_shape = (cfg.filters, ph, pw)
        weight = torch.empty(cfg.filters, c, k, k)
        if cfg.kind == "backprop":
            nn.init.kaiming_uniform_(weight, a=5**0.5)  # what nn.Conv2d does by default
        else:
            nn.init.normal_(weight)  # the rule's N(0, 1) start; training replaces it
        # local filters are set by the rule; they never get gradients (plasticity is off in forward)
        self.conv_weight = nn.Parameter(weight, requires_grad=cfg.kind == "backprop")
        self.head = nn.Linear(cfg.filters * ph * pw, classes, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pool output (B, F, H', W'): what a head on frozen local filters trains on."""
        # channels-last makes the conv emit channels-last, where CPU max-pool is 3-5x faster (same values)
        x = x.contiguous(memory_format=torch.channels_last)
        p = self.p if self.kind == "local" else None
        if x.device.type == "cpu":
            return _ConvMaxPool.apply(x, self.conv_weight, p, self.pool, self.pool_stride)
        h = F.conv2d(x, self.conv_weight) if p is None else local_currents(x, self.conv_weight, p)
        return F.max_pool2d(h, self.pool, self.pool_stride)

    def classify(self, h: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
        """Log-probabilities from pool output h (overwritten when inplace)."""
        return self.classify_activated(activation_power(h, self.activation, self.power, inplace=inplace))

    def classify_activated(self, a: torch.Tensor) -> torch.Tensor:
        """Log-probabilities from sigma^n of the pool output."""
        return F.log_softmax(self.head(a.flatten(1)), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))
