"""The Krotov–Hopfield local learning rule, for conv filters.

D. Krotov and J. J. Hopfield, "Unsupervised learning by competing hidden units",
PNAS 116(16):7723-7731 (2019). Restated in docs/science.md §2; symbols as in the paper:

    W (F, N)   synapses, one hidden unit (conv filter) per row, N = C·w·w
    v (N,)     an input patch scaled to unit p-norm, v = x / ‖x‖_p
    p          the Lebesgue power of the norm the units live on
    I_μ        the current of unit μ: I_μ = Σ_i sign(W_μi)|W_μi|^(p-1) v_i
    g          g_μ = 1 for the top unit, -Δ for the k-th ranked one (k = 1 is the top), 0 else
    ΔW         = gᵀV - diag(Σ_b g_bμ I_bμ) W  over a batch V (B, N) of patches,
    W         += η ΔW / max(max|ΔW|, 1e-30)

Since I_bμ = ⟨Wᵖ_μ, v_b⟩ with Wᵖ = sign(W)|W|^(p-1), the decay term is Σ_b g_bμ I_bμ = ⟨Wᵖ_μ, (gᵀV)_μ⟩:
the fast updates compute it from the Hebbian term once per update instead of per patch.

Two ways to apply it to a minibatch of images (RuleConfig.semantics, see rules/_base.py): `batch`
(one update from all patches, Krotov's notebook) and `position` (one update per patch position, the
2023 UiO thesis). `krotov_delta` is the plain dense formula; `update_batch`/`update_positions` compute
the same update without forming g: g has two non-zeros per patch, so gᵀV is a sum of two rows per patch.

Finding the top and the k-th unit of every patch is the cost next to the current GEMM. On CPU a
compiled kernel (rules/_kernel.py, numba) ranks each block of currents while it is still in cache and
adds the patches to gᵀV in the same pass; torch.topk + index_add is the path on a GPU (where both are
fast) and without numba.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hebbrobust.config import RuleConfig
from hebbrobust.numeric import int_power_
from hebbrobust.rules import _kernel

NORM_FLOOR = 1e-7  # a patch with ‖x‖_p below this is divided by 1 instead (docs/science.md §1)
DW_FLOOR = 1e-30  # the smallest max|ΔW| an update is divided by (Krotov's `prec`)
CHUNK_CURRENTS = 1 << 21  # CPU: currents per block of patches (F=400: 5242 patches, 8 MB), so the kernel
# reads them from cache right after the GEMM wrote them (measured, 2 cores; scripts/bench_rule.py)
CUDA_CHUNK = 65536  # on a GPU bigger blocks only help
_PATCH_BLOCK = 1 << 22  # unfold this many patch elements at a time in extract_patches

__all__ = [
    "apply_update",
    "delta",
    "extract_patches",
    "init_weights",
    "krotov_delta",
    "lr_at",
    "normalize_patches",
    "power_weights",
    "train_step",
    "update_batch",
    "update_positions",
]


# --------------------------------------------------------------------------- weights and patches


def init_weights(
    filters: int, n_inputs: int, *, seed: int, std: float = 1.0, device: torch.device | str = "cpu"
) -> Tensor:
    """W (F, N) float32 drawn from N(0, std²) by its own seeded generator (the global RNG is untouched);
    drawn on the CPU and then moved, so the values do not depend on the device."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(filters, n_inputs, generator=gen, dtype=torch.float32)  # (F, N)
    return W.mul_(std).to(device)


def power_weights(W: Tensor, p: float) -> Tensor:
    """Wᵖ = sign(W)|W|^(p-1), (F, N): the kernel whose dot product with a patch is the current."""
    return _power_weights_into(W, p, torch.empty_like(W))


def _power_weights_into(W: Tensor, p: float, out: Tensor) -> Tensor:
    if p == 2:
        return out.copy_(W)
    torch.abs(W, out=out)
    if p == 3:
        return out.mul_(W)  # |W|·W
    out.pow_(p - 1)
    return out.mul_(W.sign())


def normalize_patches(v: Tensor, p: float) -> Tensor:
    """v (..., N) with every row scaled to unit p-norm; rows whose norm is < 1e-7 are divided by 1."""
    return _normalize_(v.clone(), p)


def _normalize_(v: Tensor, p: float) -> Tensor:
    """In place: v (..., N) rows to unit p-norm (divisor 1 below NORM_FLOOR)."""
    if p > 8:  # |x|^p under/overflows float32 for ordinary pixel values: scale each row by its max first
        scale = v.abs().amax(-1, keepdim=True).clamp_min_(torch.finfo(v.dtype).tiny)
        norm = _abs_pow_sum(v / scale, p).pow_(1.0 / p).mul_(scale)
    else:
        norm = _abs_pow_sum(v, p).pow_(1.0 / p)  # (..., 1)
    norm.masked_fill_(norm < NORM_FLOOR, 1.0)
    return v.div_(norm)


def _abs_pow_sum(v: Tensor, p: float) -> Tensor:
    """Σ_i |v_i|^p over the last axis, keepdim; integer p by repeated squaring."""
    n = int(p)
    if n != p or not 1 <= n <= 64:
        return v.abs().pow_(p).sum(-1, keepdim=True)
    return int_power_(v.abs(), n).sum(-1, keepdim=True)


def extract_patches(images: Tensor, kernel: int, p: float, *, position_major: bool = False) -> Tensor:
    """images (B, C, H, W) -> patches (B, P, N), each scaled to unit p-norm.

    Stride 1, no padding: P = (H-w+1)(W-w+1) positions in row-major order, N = C·w·w ordered like
    F.unfold, i.e. like a conv weight (F, C, w, w).reshape(F, -1). Unfolds a few images at a time so
    the peak memory is the output plus one block. position_major: stored as (P, B, N) (the result is
    its transposed view), so the B patches at one position are contiguous (`position` updates).
    """
    B, C, H, Wd = images.shape
    w = kernel
    if w > H or w > Wd:
        raise ValueError(f"kernel {w} is larger than the images ({H}x{Wd})")
    P, N = (H - w + 1) * (Wd - w + 1), C * w * w
    shape = (P, B, N) if position_major else (B, P, N)
    patches = torch.empty(shape, dtype=images.dtype, device=images.device)
    if position_major:
        patches = patches.transpose(0, 1)  # (B, P, N) view
    compiled = images.device.type == "cpu" and images.dtype == torch.float32 and _kernel.AVAILABLE
    if compiled:  # the same values as the unfold below, copied in one pass
        _kernel.unfold_into(images.detach().contiguous().numpy(), w, patches.numpy(), torch.get_num_threads())
    step = max(1, _PATCH_BLOCK // (P * N))
    for start in range(0, B, step):
        block = patches[start : start + step]  # (b, P, N)
        if not compiled:
            block.copy_(F.unfold(images[start : start + step], w).transpose(1, 2))  # unfold: (b, N, P)
        _normalize_(block, p)
    return patches


# --------------------------------------------------------------------------- the rule, as written


def _check_rank(k: int, filters: int) -> None:
    if not 2 <= k <= filters:
        raise ValueError(f"rule.k must be between 2 and the number of filters F={filters}, got {k}")


def krotov_delta(weights: Tensor, patches: Tensor, *, p: float, k: int, delta: float) -> Tensor:
    """ΔW (F, N) of one update from weights W (F, N) and normalised patches V (B, N), computed densely
    as written: ΔW = gᵀV - diag(Σ_b g_bμ I_bμ) W (docs/science.md §2 steps 1-3)."""
    W, V = weights, patches  # (F, N), (B, N)
    _check_rank(k, W.shape[0])
    I = V @ power_weights(W, p).T  # (B, F) currents
    ranked = I.topk(k, dim=1).indices  # (B, k), best first
    g = torch.zeros_like(I)  # (B, F)
    g.scatter_(1, ranked[:, k - 1 : k], -delta)
    g.scatter_(1, ranked[:, :1], 1.0)
    return g.T @ V - (g * I).sum(0).unsqueeze(1) * W  # (F, N)


def delta(weights: Tensor, patches: Tensor, cfg: RuleConfig) -> Tensor:
    """The LocalRule entry point: krotov_delta with cfg's p, k and Δ."""
    return krotov_delta(weights, patches, p=cfg.p, k=cfg.k, delta=cfg.delta)


def apply_update(weights: Tensor, dw: Tensor, lr: float, normalize: str = "global") -> None:
    """In place: W += lr·ΔW / max(max|ΔW|, 1e-30), the max over the whole matrix ("global", Krotov) or
    over each filter's row ("per_filter"). dw is left unchanged."""
    _scaled_add_(weights, dw.clone(), lr, normalize)


def _scaled_add_(W: Tensor, dW: Tensor, lr: float, normalize: str) -> None:
    """W += lr·dW/max|dW|, overwriting dW; the max never leaves the device (no host sync). W may be
    float64 with dW float32: the sum is then float64."""
    if normalize == "global":
        nc = dW.abs().amax()
    elif normalize == "per_filter":
        nc = dW.abs().amax(1, keepdim=True)  # (F, 1)
    else:
        raise ValueError(f"rule.normalize must be 'global' or 'per_filter', got {normalize!r}")
    W.add_(dW.div_(nc.clamp_min_(DW_FLOOR)), alpha=lr)


# --------------------------------------------------------------------------- the rule, fast


@dataclass
class _Workspace:
    """What every update of one update_batch/update_positions call shares: buffers, ranking plan."""

    Wp: Tensor  # (F, N) sign(W)|W|^(p-1)
    H: Tensor  # (F, N) Hebbian term gᵀV
    dW: Tensor  # (F, N)
    I: Tensor  # (chunk, F) currents of one block of patches ((F, chunk) for the compiled kernel)
    p: float
    k: int
    chunk: int  # patches per block of currents
    compiled: bool  # rank and add with the compiled kernel (CPU float32, numba), else topk + index_add
    unit_major: bool  # currents (F, c): the compiled kernel ranks patches side by side (few units)
    master: Tensor | None  # (F, N) float64: the weights the updates add up in, W its rounding
    threads: int  # torch's thread count: 1 runs the compiled kernel's serial build

    @classmethod
    def make(cls, W: Tensor, rows: int, p: float, k: int, master: Tensor | None) -> _Workspace:
        F_ = W.shape[0]
        on_cpu = W.device.type == "cpu"
        chunk = min(rows, max(256, CHUNK_CURRENTS // F_) if on_cpu else CUDA_CHUNK)
        compiled = on_cpu and W.dtype == torch.float32 and _kernel.AVAILABLE
        threads = torch.get_num_threads()
        if compiled and threads > 1:  # one thread: the serial kernel, numba's pool untouched (_kernel)
            _kernel.set_threads(threads)
        if master is not None and (master.shape != W.shape or master.dtype != torch.float64):
            want, got = tuple(W.shape), (master.dtype, tuple(master.shape))
            raise ValueError(f"master weights must be float64 {want}, got {got}")
        e = torch.empty_like
        unit_major = compiled and _kernel.unit_major(F_)
        return cls(e(W), e(W), e(W), W.new_empty(chunk, F_), p, k, chunk, compiled, unit_major, master, threads)


def _rank_topk(I: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top and the k-th ranked unit of every row of currents I (c, F): two (c,) int64."""
    ranked = I.topk(k, dim=1).indices  # (c, k)
    return ranked[:, 0], ranked[:, k - 1]


def _update(W: Tensor, V: Tensor, ws: _Workspace, delta: float, lr: float, normalize: str) -> None:
    """One update of W (F, N) from normalised patches V (M, N), M any size, in blocks of patches."""
    V = V.contiguous()
    Wp = _power_weights_into(W, ws.p, ws.Wp)  # (F, N)
    H = ws.H.zero_()  # (F, N) accumulates gᵀV
    for start in range(0, V.shape[0], ws.chunk):
        Vc = V[start : start + ws.chunk]  # (c, N)
        c = Vc.shape[0]
        if ws.unit_major:
            I = torch.mm(Wp, Vc.T, out=ws.I.view(-1)[: W.shape[0] * c].view(-1, c))  # (F, c) currents
        else:
            I = torch.mm(Vc, Wp.T, out=ws.I[:c])  # (c, F) currents
        if ws.compiled:
            _kernel.rank_and_add(I.numpy(), Vc.detach().numpy(), ws.k, delta, H.numpy(), ws.threads)
            continue
        top, kth = _rank_topk(I, ws.k)
        H.index_add_(0, top, Vc)
        if delta:
            H.index_add_(0, kth, Vc, alpha=-delta)
    decay = (Wp * H).sum(1, keepdim=True)  # (F, 1) Σ_b g_bμ I_bμ = ⟨Wᵖ_μ, (gᵀV)_μ⟩
    dW = torch.sub(H, torch.mul(W, decay, out=ws.dW), out=ws.dW)  # (F, N)
    if ws.master is None:
        _scaled_add_(W, dW, lr, normalize)
    else:  # the step is float32, the sum float64; the next currents come from its float32 rounding
        _scaled_add_(ws.master, dW, lr, normalize)
        W.copy_(ws.master)


def _workspace(W: Tensor, rows: int, p: float, k: int, normalize: str, master: Tensor | None) -> _Workspace:
    _check_rank(k, W.shape[0])
    if normalize not in ("global", "per_filter"):
        raise ValueError(f"rule.normalize must be 'global' or 'per_filter', got {normalize!r}")
    return _Workspace.make(W, max(rows, 1), p, k, master)


@torch.no_grad()
def update_batch(
    weights: Tensor, patches: Tensor, *, p: float, k: int, delta: float, lr: float, normalize: str = "global",
    master: Tensor | None = None,
) -> None:
    """`batch` semantics: one update of W (F, N), in place, from all normalised patches (M, N).

    Equal to apply_update(W, krotov_delta(W, patches, ...), lr, normalize) up to float rounding. With
    `master`, a float64 copy of W, the update is added to master and W set to its rounding: steps smaller
    than half an ulp of W then add up instead of vanishing."""
    ws = _workspace(weights, patches.shape[0], p, k, normalize, master)
    _update(weights, patches, ws, delta, lr, normalize)


@torch.no_grad()
def update_positions(
    weights: Tensor, patches: Tensor, *, p: float, k: int, delta: float, lr: float, normalize: str = "global",
    master: Tensor | None = None,
) -> None:
    """`position` semantics (thesis): patches (B, P, N); for each position j in order, one update of
    W (F, N), in place, from the B patches at j. Sequential by definition; buffers are shared. Fastest
    with extract_patches(..., position_major=True), whose patches at one position are contiguous.
    `master` as in update_batch."""
    ws = _workspace(weights, patches.shape[0], p, k, normalize, master)
    for j in range(patches.shape[1]):
        _update(weights, patches[:, j], ws, delta, lr, normalize)  # (B, N), copied unless position-major


def train_step(weights: Tensor, images: Tensor, cfg: RuleConfig, lr: float, master: Tensor | None = None) -> None:
    """Train W (F, N) in place on one minibatch of images (B, C, H, W) at learning rate lr: the patches
    are extracted once, then used as cfg.semantics says (one update, or one per position). With `master`
    (float64 (F, N), see update_batch) the updates add up there and W follows its rounding."""
    F_, N = weights.shape
    C = images.shape[1]
    w = math.isqrt(N // C)
    if C * w * w != N:
        raise ValueError(f"weights have N={N} inputs, not C·w·w for the images' C={C} channels")
    images = images.to(weights.device, weights.dtype)
    patches = extract_patches(images, w, cfg.p, position_major=cfg.semantics != "batch")  # (B, P, N)
    update = update_batch if cfg.semantics == "batch" else update_positions
    if cfg.semantics == "batch":
        patches = patches.view(-1, N)
    update(weights, patches, p=cfg.p, k=cfg.k, delta=cfg.delta, lr=lr, normalize=cfg.normalize, master=master)


# --------------------------------------------------------------------------- schedule


def lr_at(epoch: int, epochs: int, cfg: RuleConfig) -> float:
    """η at `epoch` (0-based) of `epochs`, u = epoch/epochs: const η0, linear η0(1-u),
    cosine η0·½(1+cos πu), exp η0·e^(-τu), step η0·γ^⌊epoch/step_size⌋."""
    u = epoch / epochs if epochs > 0 else 0.0
    eta0 = cfg.lr
    if cfg.schedule == "const":
        return eta0
    if cfg.schedule == "linear":
        return eta0 * (1.0 - u)
    if cfg.schedule == "cosine":
        return eta0 * 0.5 * (1.0 + math.cos(math.pi * u))
    if cfg.schedule == "exp":
        return eta0 * math.exp(-cfg.tau * u)
    if cfg.schedule == "step":
        return eta0 * cfg.gamma ** (epoch // cfg.step_size)
    raise ValueError(f"rule.schedule: unknown schedule {cfg.schedule!r}")
