"""The Krotov–Hopfield local learning rule, for conv filters.

D. Krotov and J. J. Hopfield, "Unsupervised learning by competing hidden units",
PNAS 116(16):7723-7731 (2019). Restated in the design notes (SCIENCE.md §2); symbols as in the paper:

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
the same update without forming g: g has two non-zeros per patch, so gᵀV is two index_adds.

Finding the top and the k-th unit of every patch is the cost next to the current GEMM. torch.topk on
CPU sorts every row in scalar code and costs more than the GEMM, so on CPU `_rank_grouped` ranks with
vectorised max-reductions over keys that carry a unit id in their low mantissa bits: first over group
maxima, then over the members of the k+1 best groups. Rows whose order the packing could have changed
are re-ranked with topk, so the result is exact. On a GPU topk is fast and is used directly; so it is on
a CPU for updates from few patches (`position` semantics: one update per B patches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hebbrobust.config import RuleConfig

NORM_FLOOR = 1e-7  # a patch with ‖x‖_p below this is divided by 1 instead (SCIENCE.md §1)
DW_FLOOR = 1e-30  # the smallest max|ΔW| an update is divided by (Krotov's `prec`)
CHUNK_CURRENTS = 1 << 21  # currents per block of patches and CPU thread (F=400: 5120 patches per thread):
# big enough to amortise the per-op cost of the ranking, small enough to stay in cache (measured, 2 cores)
CUDA_CHUNK = 65536  # on a GPU bigger blocks only help
PACK_MAX_BITS = 12  # ranking keys give at most 12 of float32's 23 mantissa bits to an id
GATHER_BLOCK = 256  # columns per block when gathering candidates: 256·F floats stay in L2
GROUPED_MIN_PATCHES = 6144  # updates from fewer patches rank with topk: below this the packed-key passes
# fixed cost loses to it (measured, 2 cores: topk is 1.5x faster at 1000 patches, 0.8x at 8192)
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
    """Σ_i |v_i|^p over the last axis, keepdim. Integer p by repeated squaring: vectorised multiplies
    are several times faster than a general pow on CPU."""
    a = v.abs()  # a fresh tensor: squared in place below
    n = int(p)
    if n != p or not 1 <= n <= 64:
        return a.pow_(p).sum(-1, keepdim=True)
    result: Tensor | None = None
    while n:
        if n & 1:
            result = (a if n == 1 else a.clone()) if result is None else result.mul_(a)
        n >>= 1
        if n:
            a.mul_(a)
    assert result is not None
    return result.sum(-1, keepdim=True)


def extract_patches(images: Tensor, kernel: int, p: float) -> Tensor:
    """images (B, C, H, W) -> patches (B, P, N), each scaled to unit p-norm.

    Stride 1, no padding: P = (H-w+1)(W-w+1) positions in row-major order, N = C·w·w ordered like
    F.unfold, i.e. like a conv weight (F, C, w, w).reshape(F, -1). Unfolds a few images at a time so
    the peak memory is the output plus one block.
    """
    B, C, H, Wd = images.shape
    w = kernel
    if w > H or w > Wd:
        raise ValueError(f"kernel {w} is larger than the images ({H}x{Wd})")
    P, N = (H - w + 1) * (Wd - w + 1), C * w * w
    patches = torch.empty(B, P, N, dtype=images.dtype, device=images.device)  # (B, P, N)
    step = max(1, _PATCH_BLOCK // (P * N))
    for start in range(0, B, step):
        block = patches[start : start + step]  # (b, P, N)
        block.copy_(F.unfold(images[start : start + step], w).transpose(1, 2))  # unfold: (b, N, P)
        _normalize_(block, p)
    return patches


# --------------------------------------------------------------------------- the rule, as written


def _check_rank(k: int, filters: int) -> None:
    if not 2 <= k <= filters:
        raise ValueError(f"rule.k must be between 2 and the number of filters F={filters}, got {k}")


def krotov_delta(weights: Tensor, patches: Tensor, *, p: float, k: int, delta: float) -> Tensor:
    """ΔW (F, N) of one update from weights W (F, N) and normalised patches V (B, N), computed densely
    as written: ΔW = gᵀV - diag(Σ_b g_bμ I_bμ) W (SCIENCE.md §2 steps 1-3)."""
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
    """W += lr·dW/max|dW|, overwriting dW; the max never leaves the device (no host sync)."""
    if normalize == "global":
        nc = dW.abs().amax()
    elif normalize == "per_filter":
        nc = dW.abs().amax(1, keepdim=True)  # (F, 1)
    else:
        raise ValueError(f"rule.normalize must be 'global' or 'per_filter', got {normalize!r}")
    W.add_(dW.div_(nc.clamp_min_(DW_FLOOR)), alpha=lr)


# --------------------------------------------------------------------------- the rule, fast


@dataclass
class _Layout:
    """Buffers and index tables for ranking blocks of c patches (_rank_grouped)."""

    IT: Tensor  # (G·s, c) transposed currents; rows F.. hold -FLT_MAX
    cols: Tensor  # (c,) int64 0..c-1: flat offset of column b in a (rows, c) block is row·c + b
    cand_base: Tensor  # (nb, 1, s, blk) int32 flat offset into IT of unit-in-group j, column b
    cand_cols: Tensor  # (c,) int64 flat offset of column b in the (nb, R, blk) candidates, less row·blk
    at: Tensor  # (nb, k+1, s, blk) int32 buffer: flat offsets into IT of the candidates
    blk: int  # columns per gather block: the gather reads IT one cache-sized column block at a time

    @classmethod
    def make(cls, F_: int, G: int, s: int, k: int, c: int, like: Tensor) -> _Layout:
        IT = like.new_empty(G * s, c)
        IT[F_:] = torch.finfo(like.dtype).min  # finite, so packing ids into it cannot make a NaN
        blk = GATHER_BLOCK if c % GATHER_BLOCK == 0 else c
        b = torch.arange(c, device=like.device)
        j = torch.arange(s, device=like.device)
        base = (j.view(1, s, 1) * c + b.view(-1, 1, blk)).unsqueeze(1)  # (nb, 1, s, blk)
        cand_cols = b // blk * ((k + 1) * s * blk) + b % blk
        at = torch.empty(c // blk, k + 1, s, blk, dtype=torch.int32, device=like.device)
        return cls(IT, b, base.to(torch.int32), cand_cols, at, blk)


@dataclass
class _Workspace:
    """What every update of one update_batch/update_positions call shares: buffers, ranking plan."""

    Wp: Tensor  # (F, N) sign(W)|W|^(p-1)
    H: Tensor  # (F, N) Hebbian term gᵀV
    dW: Tensor  # (F, N)
    p: float
    k: int
    chunk: int  # patches per block of currents
    grouped: bool  # rank with _rank_grouped (CPU float32) rather than topk
    s: int  # units per group, a power of two
    groups: int  # G = ceil(F/s)
    group_ids: Tensor  # (G, 1) int32
    slot_ids: Tensor  # (1, (k+1)·s, 1) int32
    layouts: dict[int, _Layout]  # by block width c

    @classmethod
    def make(cls, W: Tensor, rows: int, p: float, k: int) -> _Workspace:
        F_ = W.shape[0]
        on_cpu = W.device.type == "cpu"
        currents = CHUNK_CURRENTS * min(torch.get_num_threads(), 4)
        chunk = min(rows, max(GATHER_BLOCK, currents // F_ // GATHER_BLOCK * GATHER_BLOCK))
        if not on_cpu:
            chunk = min(rows, CUDA_CHUNK)
        # groups of s = 2^j units; s ≈ sqrt(F/(k+1)) balances the group maxima against the candidates;
        # at least the k+1 groups that are popped
        s = 1 << max(0, round(math.log2(max(1.0, math.sqrt(F_ / (k + 1))))))
        while s > 1 and -(-F_ // s) < k + 1:
            s //= 2
        G = -(-F_ // s)
        grouped = (
            on_cpu
            and rows >= GROUPED_MIN_PATCHES
            and W.dtype == torch.float32
            and F_ >= k + 1
            and max((G - 1).bit_length(), ((k + 1) * s - 1).bit_length()) <= PACK_MAX_BITS
        )
        group_ids = torch.arange(G, dtype=torch.int32, device=W.device).unsqueeze(1)
        slot_ids = torch.arange((k + 1) * s, dtype=torch.int32, device=W.device).view(1, -1, 1)
        e = torch.empty_like
        return cls(e(W), e(W), e(W), p, k, chunk, grouped, s, G, group_ids, slot_ids, {})

    def layout(self, c: int) -> _Layout:
        if c not in self.layouts:
            self.layouts[c] = _Layout.make(self.Wp.shape[0], self.groups, self.s, self.k, c, self.Wp)
        return self.layouts[c]


def _rank_topk(I: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top and the k-th ranked unit of every row of currents I (c, F): two (c,) int64."""
    ranked = I.topk(k, dim=1).indices  # (c, k)
    return ranked[:, 0], ranked[:, k - 1]


def _pack(x: Tensor, ids: Tensor, bits: int) -> Tensor:
    """In place: replace the low `bits` mantissa bits of float32 x by the int32 ids (broadcast)."""
    x.view(torch.int32).bitwise_and_(-(1 << bits)).bitwise_or_(ids)
    return x


def _pop_max(keys: Tensor, bits: int, col_offsets: Tensor) -> tuple[Tensor, Tensor]:
    """keys (nb, R, blk) packed with ids = row numbers; per column b = block·blk + i: the row of the max
    (c,) int64 and the max's bit pattern (c,) int32. The max is then removed (set to -inf)."""
    best = keys.amax(1).view(-1).view(torch.int32)  # (c,)
    row = (best & ((1 << bits) - 1)).long()  # < R: every key carries a row id (NaN ones too)
    keys.view(-1).index_fill_(0, torch.add(col_offsets, row, alpha=keys.shape[2]), -math.inf)
    return row, best


def _truncated(best: Tensor, bits: int) -> Tensor:
    """The float32 value a packed key was made from, its low `bits` mantissa bits zeroed."""
    return (best & -(1 << bits)).view(torch.float32)


def _rank_grouped(IT: Tensor, V: Tensor, ws: _Workspace, lay: _Layout) -> tuple[Tensor, Tensor]:
    """The top and the k-th ranked unit of every column of transposed currents IT (G·s, c), exactly as
    topk would find them, with a few vectorised passes (float32, CPU). IT is overwritten.

    Keys: a float32 current whose low b mantissa bits are replaced by an id (the same b at both levels
    below). Keys are distinct, ordered like the currents truncated to 23 - b mantissa bits, t(I), and
    the max of a set of keys names its element; truncation is monotone.
    1. Maxima of groups of s consecutive units (G, c), keyed by group; pop the k+1 best groups.
    2. Gather their (k+1)·s currents (the candidates), keyed by slot = rank of group·s + unit in group;
       pop the k+1 best: the top is rank 1, the k-th rank k.
    A unit outside the candidates has t(I) <= t(the smallest chosen group max) <= t_(k+1) (the k+1
    chosen maxima are candidates), so where t_1 > t_2 and t_(k-1) > t_k > t_(k+1), ranks 1 and k are
    exact. Other columns (near-ties within ~2^-16 relative, all-zero patches) are re-ranked by topk on
    exact currents recomputed from V.
    """
    k, s, G = ws.k, ws.s, ws.groups
    c = IT.shape[1]
    R, blk = (k + 1) * s, lay.blk
    bits = max(1, (G - 1).bit_length(), (R - 1).bit_length())  # id bits, the same at both levels
    unit_bits = s.bit_length() - 1

    gmax = _pack(IT.view(G, s, c).amax(1), ws.group_ids, bits).unsqueeze(0)  # (1, G, c) keys
    chosen = torch.empty(k + 1, c, dtype=torch.int32, device=IT.device)  # best groups, best first
    for r in range(k + 1):
        chosen[r] = _pop_max(gmax, bits, lay.cols)[0]

    by_block = chosen.view(k + 1, -1, 1, blk).transpose(0, 1)  # (nb, k+1, 1, blk)
    at = torch.add(lay.cand_base, by_block, alpha=s * c, out=lay.at)  # (nb, k+1, s, blk) offsets into IT
    cand = IT.view(-1).index_select(0, at.view(-1)).view(-1, R, blk)  # (nb, R, blk) candidate currents
    keys = _pack(cand, ws.slot_ids, bits)
    slots, t = [], {}
    for r in range(k + 1):
        slot, best = _pop_max(keys, bits, lay.cand_cols)
        slots.append(slot)
        if r in (0, 1, k - 2, k - 1, k):
            t[r] = _truncated(best, bits)

    def unit(slot: Tensor) -> Tensor:  # the unit in a slot: chosen group·s + unit in group
        group = chosen.gather(0, (slot >> unit_bits).unsqueeze(0)).squeeze(0).long()
        return (group << unit_bits) | (slot & (s - 1))

    top, kth = unit(slots[0]), unit(slots[k - 1])
    margin = torch.minimum(torch.minimum(t[0] - t[1], t[k - 2] - t[k - 1]), t[k - 1] - t[k])
    redo = (margin <= 0).nonzero().squeeze(1)  # exact where all three gaps are > 0
    if redo.numel():
        Vr = V[redo]  # (r, N)
        keep = Vr.abs().amax(1) > 0  # an all-zero patch adds nothing to ΔW, whatever its ranking
        redo, Vr = redo[keep], Vr[keep]
        if redo.numel():
            top_r, kth_r = _rank_topk(Vr @ ws.Wp.T, k)
            top = top.index_copy(0, redo, top_r)
            kth = kth.index_copy(0, redo, kth_r)
    return top, kth


def _update(W: Tensor, V: Tensor, ws: _Workspace, delta: float, lr: float, normalize: str) -> None:
    """One update of W (F, N) from normalised patches V (M, N), M any size, in chunks."""
    F_ = W.shape[0]
    Wp = _power_weights_into(W, ws.p, ws.Wp)  # (F, N)
    H = ws.H.zero_()  # (F, N) accumulates gᵀV
    # the packed-key ranking assumes finite currents; diverged weights take topk and yield NaN weights,
    # which training reports as divergence
    grouped = ws.grouped and bool(torch.isfinite(Wp).all())
    for start in range(0, V.shape[0], ws.chunk):
        Vc = V[start : start + ws.chunk]  # (c, N)
        c = Vc.shape[0]
        if grouped:
            lay = ws.layout(c)
            torch.mm(Wp, Vc.T, out=lay.IT[:F_])  # (F, c) currents
            top, kth = _rank_grouped(lay.IT, Vc, ws, lay)
        else:
            top, kth = _rank_topk(Vc @ Wp.T, ws.k)  # currents (c, F)
        H.index_add_(0, top, Vc)
        if delta:
            H.index_add_(0, kth, Vc, alpha=-delta)
    decay = (Wp * H).sum(1, keepdim=True)  # (F, 1) Σ_b g_bμ I_bμ = ⟨Wᵖ_μ, (gᵀV)_μ⟩
    dW = torch.sub(H, torch.mul(W, decay, out=ws.dW), out=ws.dW)  # (F, N)
    _scaled_add_(W, dW, lr, normalize)


def _workspace(W: Tensor, rows: int, p: float, k: int, normalize: str) -> _Workspace:
    _check_rank(k, W.shape[0])
    if normalize not in ("global", "per_filter"):
        raise ValueError(f"rule.normalize must be 'global' or 'per_filter', got {normalize!r}")
    return _Workspace.make(W, max(rows, 1), p, k)


@torch.no_grad()
def update_batch(
    weights: Tensor, patches: Tensor, *, p: float, k: int, delta: float, lr: float, normalize: str = "global"
) -> None:
    """`batch` semantics: one update of W (F, N), in place, from all normalised patches (M, N).

    Equal to apply_update(W, krotov_delta(W, patches, ...), lr, normalize) up to float rounding."""
    ws = _workspace(weights, patches.shape[0], p, k, normalize)
    _update(weights, patches, ws, delta, lr, normalize)


@torch.no_grad()
def update_positions(
    weights: Tensor, patches: Tensor, *, p: float, k: int, delta: float, lr: float, normalize: str = "global"
) -> None:
    """`position` semantics (thesis): patches (B, P, N); for each position j in order, one update of
    W (F, N), in place, from the B patches at j. Sequential by definition; buffers are shared."""
    ws = _workspace(weights, patches.shape[0], p, k, normalize)
    for j in range(patches.shape[1]):
        _update(weights, patches[:, j].contiguous(), ws, delta, lr, normalize)  # (B, N): one small copy


def train_step(weights: Tensor, images: Tensor, cfg: RuleConfig, lr: float) -> None:
    """Train W (F, N) in place on one minibatch of images (B, C, H, W) at learning rate lr: the patches
    are extracted once, then used as cfg.semantics says (one update, or one per position)."""
    F_, N = weights.shape
    C = images.shape[1]
    w = math.isqrt(N // C)
    if C * w * w != N:
        raise ValueError(f"weights have N={N} inputs, not C·w·w for the images' C={C} channels")
    patches = extract_patches(images.to(weights.device, weights.dtype), w, cfg.p)  # (B, P, N)
    if cfg.semantics == "batch":
        update_batch(weights, patches.view(-1, N), p=cfg.p, k=cfg.k, delta=cfg.delta, lr=lr, normalize=cfg.normalize)
    else:
        update_positions(weights, patches, p=cfg.p, k=cfg.k, delta=cfg.delta, lr=lr, normalize=cfg.normalize)


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
