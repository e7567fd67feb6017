"""Max-pooling with argmax indices for channels-last float32 CPU tensors, compiled (numba).

`max_pool2d_with_indices(h, pool, stride)` returns what torch.nn.functional.max_pool2d_with_indices
returns (values, and the flat row·W + column index of each maximum; no padding, no dilation), bit for bit:
the first maximum in row-major window order wins, and a NaN wins over numbers (the last NaN). It is
separable: a pass over each row's `pool` columns, then a pass over the window's `pool` row maxima, both
elementwise over the contiguous channels (vectorised), so a 9×9 window costs 18 compares per output
instead of 81. At the thesis shape (F=400, 29×29 conv output, pool 9, stride 2) it is 2.6–2.7× faster than
torch's channels-last pool (scripts/bench_attacks.py), which was the largest op of HebbCNN's CPU forward: a
backprop train step and an attack's input-gradient step got 1.21× and 1.12× faster (same process, A/B).
Other dtypes, layouts and devices, or a Python without numba, use torch's own pool.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hebbrobust.numeric import jit_pair, set_threads

numba: Any
try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None

__all__ = ["max_pool2d_with_indices"]


def _pool(h, pool, stride, out, idx, T):  # type: ignore[no-untyped-def]
    """h (B, H, W, C) float32 -> out (B, OH, OW, C) window maxima, idx (B, OH, OW, C) int32."""
    B, H, W, C = h.shape
    OH, OW = out.shape[1], out.shape[2]
    per = (B + T - 1) // T
    for t in numba.prange(T):  # threads take contiguous runs of images
        row_max = np.empty((H, OW, C), np.float32)  # per row: the max over each window's columns
        row_arg = np.empty((H, OW, C), np.int32)  # and its column
        for b in range(t * per, min(B, t * per + per)):
            for r in range(H):
                for oc in range(OW):
                    c0 = oc * stride
                    mv, mi, src = row_max[r, oc], row_arg[r, oc], h[b, r, c0]
                    for c in range(C):
                        mv[c] = src[c]
                        mi[c] = c0
                    for d in range(1, pool):
                        src = h[b, r, c0 + d]
                        for c in range(C):
                            v = src[c]
                            take = v > mv[c] or v != v  # strictly greater, or NaN: as torch's pool
                            mv[c] = v if take else mv[c]
                            mi[c] = c0 + d if take else mi[c]
            for orow in range(OH):
                r0 = orow * stride
                for oc in range(OW):
                    ov, oi, sv, si = out[b, orow, oc], idx[b, orow, oc], row_max[r0, oc], row_arg[r0, oc]
                    for c in range(C):
                        ov[c] = sv[c]
                        oi[c] = r0 * W + si[c]
                    for d in range(1, pool):
                        sv, si = row_max[r0 + d, oc], row_arg[r0 + d, oc]
                        base = (r0 + d) * W
                        for c in range(C):
                            v = sv[c]
                            take = v > ov[c] or v != v
                            ov[c] = v if take else ov[c]
                            oi[c] = base + si[c] if take else oi[c]


if numba is not None:
    _compiled, _serial = jit_pair(_pool, boundscheck=False, nogil=True)  # _serial: one thread, no pool (_kernel)


def max_pool2d_with_indices(h: torch.Tensor, pool: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of a pool×pool max-pool with `stride` over h (B, C, H, W), as torch's; indices
    int32 on the compiled path (int64 from torch). Compiled for channels-last float32 CPU tensors that
    need no gradient."""
    fast = (
        numba is not None
        and h.device.type == "cpu"
        and h.dtype == torch.float32
        and not h.requires_grad
        and h.dim() == 4
        and h.is_contiguous(memory_format=torch.channels_last)
    )
    if not fast:
        return F.max_pool2d_with_indices(h, (pool, pool), (stride, stride))
    B, C, H, W = h.shape
    OH, OW = (H - pool) // stride + 1, (W - pool) // stride + 1
    if OH < 1 or OW < 1:
        raise ValueError(f"pool {pool} is larger than the {H}x{W} input")
    out = torch.empty(B, OH, OW, C)
    idx = torch.empty(B, OH, OW, C, dtype=torch.int32)
    args = (h.permute(0, 2, 3, 1).numpy(), pool, stride, out.numpy(), idx.numpy())
    if torch.get_num_threads() == 1:
        _serial(*args, 1)
    else:
        set_threads(torch.get_num_threads())
        _compiled(*args, numba.get_num_threads())
    return out.permute(0, 3, 1, 2), idx.permute(0, 3, 1, 2)  # (B, C, OH, OW) views, channels-last
