"""A compiled CPU kernel for the Krotov–Hopfield update: rank every patch's currents and add the
patch to the Hebbian term (numba).

For a block of c patches with currents I (c, F) = V·(Wᵖ)ᵀ, `rank_and_add` finds per patch b the top
unit and the k-th ranked unit (a running top-k by insertion: one compare per current, and an insertion
only when a current beats the running k-th, about k·ln(F/k) times per patch), then adds V_b to row
`top` and -Δ·V_b to row `kth` of H (F, N), i.e. H += gᵀV. Both passes run in parallel: the ranking over
patches, the sums over rows of H (each thread owns a range of units and adds, in patch order, the patches
that chose them). Every row of H is thus summed in patch order whatever the number of threads, so
results do not depend on it (a study's trials get the same filters on 1 or 16 cores).

Ties rank the lower unit index first (as a stable descending sort). A NaN current is never ranked
(units 0..k-1 fill what is left); only diverged weights make one, and their update is NaN anyway,
which training reports as divergence. Without numba krotov.py ranks with torch.topk.

Why compiled: at N = 48 inputs a current costs 48 multiply-adds, so ranking with whole-array torch ops
(topk, or max-reductions that each read the currents again) costs as much as the current GEMM, and the
index_add of the Hebbian term runs scalar code per element. One pass over currents still in cache does
the ranking for a fraction of the GEMM's time (scripts/bench_rule.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

numba: Any
try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; krotov.py falls back to torch.topk
    numba = None

__all__ = ["AVAILABLE", "rank_and_add", "set_threads"]

AVAILABLE = numba is not None


def _rank_and_add(I, V, k, delta, H, T):  # type: ignore[no-untyped-def]
    """I (c, F) float32 currents, V (c, N) float32 patches, H (F, N) float32, added to; T threads."""
    c, F = I.shape
    N = V.shape[1]
    top = np.empty(c, np.int64)
    kth = np.empty(c, np.int64)
    per = (c + T - 1) // T
    for t in numba.prange(T):  # rank: threads take contiguous runs of patches
        vals = np.empty(k, np.float32)  # the running top k currents, best first
        ids = np.empty(k, np.int64)
        for b in range(t * per, min(c, t * per + per)):
            row = I[b]
            for j in range(k):
                vals[j] = -np.inf
                ids[j] = j
            least = np.float32(-np.inf)
            for f in range(F):
                x = row[f]
                if x > least:  # strict: an equal current does not displace a lower index
                    j = k - 1
                    while j > 0 and vals[j - 1] < x:
                        vals[j] = vals[j - 1]
                        ids[j] = ids[j - 1]
                        j -= 1
                    vals[j] = x
                    ids[j] = f
                    least = vals[k - 1]
            top[b] = ids[0]
            kth[b] = ids[k - 1]
    units = (F + T - 1) // T
    for t in numba.prange(T):  # add: threads own contiguous runs of units, patches go in order
        lo, hi = t * units, min(F, t * units + units)
        for b in range(c):
            u, q = top[b], kth[b]
            if lo <= u < hi:
                v, h = V[b], H[u]
                for n in range(N):
                    h[n] += v[n]
            if lo <= q < hi:
                v, h = V[b], H[q]
                for n in range(N):
                    h[n] -= delta * v[n]


if numba is not None:
    # compiled on first use and cached on disk (__pycache__, or numba's user cache dir when that is
    # read-only); no fastmath: the sums stay IEEE, and a NaN would not be silently reordered
    _compiled = numba.njit(parallel=True, cache=True, boundscheck=False, nogil=True)(_rank_and_add)


def rank_and_add(I: np.ndarray, V: np.ndarray, k: int, delta: float, H: np.ndarray) -> None:
    """H += gᵀV for the patches V with currents I; see the module docstring. Arrays are float32,
    C-contiguous; I and V have the same rows; 1 <= k <= F."""
    _compiled(I, V, k, np.float32(delta), H, numba.get_num_threads())


def set_threads(n: int) -> None:
    """Use at most n threads (and at most numba's pool) in the calling thread."""
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
