"""A compiled CPU kernel for the Krotov–Hopfield update: rank every patch's currents and add the
patch to the Hebbian term (numba).

For a block of c patches with currents I = V·(Wᵖ)ᵀ, `rank_and_add` finds per patch b the top unit and
the k-th ranked unit, then adds V_b to row `top` and -Δ·V_b to row `kth` of H (F, N), i.e. H += gᵀV.
Ties rank the lower unit index first (a stable descending sort). A NaN or -inf current is never ranked
(units 0..k-1 fill what is left, in order); only diverged weights make one, and their update is NaN
anyway, which training reports as divergence. It ranks in one of two ways, whichever is faster for F
(`unit_major`, measured on 2 cores with scripts/bench_rule.py):

- patch-major, I (c, F), for many units: per patch, a running top k by insertion, one compare per
  current and an insertion only when a current beats the running k-th (about k·ln(F/k) times per
  patch). Cheap per current, but scalar, and every insertion is a mispredicted branch.
- unit-major, I (F, c), for few units (F ≤ LANES_MAX_UNITS): LANES patches side by side, so the
  compiler vectorises across patches (AVX2/512). Each patch keeps its running top k (values and units)
  in k rows of LANES, and each unit's currents go through them as an insertion network, one
  compare-and-swap per rank, without branches. Ranks compare (value, then lower unit first), so the
  tie order holds even after a swap carries an earlier unit down. The top k starts as k placeholders
  of -inf with units -k..-1, which no current displaces unless it is above -inf.
  At F=100, k=5 this ranks 3.5× faster than the insertion scan; at F=400 it is no faster, and the GEMM
  that writes I (F, c) is then slower than the one that writes I (c, F).

Both rankings run in parallel over patches, the sums over rows of H (each thread owns a range of units
and adds, in patch order, the patches that chose them). Every row of H is thus summed in patch order
whatever the number of threads, so results do not depend on it (a study's trials get the same filters
on 1 or 16 cores). Without numba krotov.py ranks with torch.topk.

Why compiled: at N = 48 inputs a current costs 48 multiply-adds, so ranking with whole-array torch ops
(topk, or max-reductions that each read the currents again) costs more than the current GEMM, and the
index_add of the Hebbian term runs scalar code per element.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hebbrobust.numeric import jit_pair, set_threads

numba: Any
try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; krotov.py falls back to torch.topk
    numba = None

__all__ = ["AVAILABLE", "rank_and_add", "set_threads", "unfold_into", "unit_major"]

AVAILABLE = numba is not None
LANES = 512  # unit-major: patches ranked side by side; their top k (k·LANES·8 bytes) stays in L1
LANES_MAX_UNITS = 200  # unit-major ranking up to this many units (break-even near F=200 at k=2..10)


def _rank_and_add(I, V, k, delta, H, T, lanes, L):  # type: ignore[no-untyped-def]
    """I float32 currents, (F, c) if lanes else (c, F); V (c, N) float32 patches; H (F, N) float32,
    added to; T threads; L lanes."""
    c, N = V.shape
    F = H.shape[0]
    top = np.empty(c, np.int32)
    kth = np.empty(c, np.int32)
    if not lanes:
        per = (c + T - 1) // T
        for t in numba.prange(T):  # rank, patch-major: threads take contiguous runs of patches
            vals = np.empty(k, np.float32)  # the running top k currents, best first
            ids = np.empty(k, np.int32)
            for b in range(t * per, min(c, t * per + per)):
                row = I[b]  # one view per F currents: its refcount is cheap here
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
    else:
        blocks = (c + L - 1) // L
        per = (blocks + T - 1) // T
        for t in numba.prange(T):  # rank, unit-major: threads take contiguous runs of blocks of L patches
            vals = np.empty((k, L), np.float32)  # per patch, the running top k currents, best first,
            ids = np.empty((k, L), np.int32)  # and their units (placeholders j-k < 0)
            carry = np.empty(L, np.float32)  # the current pushed down one rank, and its unit
            carry_id = np.empty(L, np.int32)
            for block in range(t * per, min(blocks, t * per + per)):
                b0 = block * L
                n = min(L, c - b0)
                for j in range(k):
                    vj, ij = vals[j], ids[j]
                    for b in range(n):
                        vj[b] = -np.inf
                        ij[b] = j - k
                for f in range(F):
                    row = I[f, b0 : b0 + n]
                    unit = np.int32(f)
                    v0, i0 = vals[0], ids[0]
                    for b in range(n):  # rank 0: f is the highest unit so far, so it wins on value only
                        x, a, ai = row[b], v0[b], i0[b]
                        win = x > a
                        v0[b] = x if win else a
                        i0[b] = unit if win else ai
                        carry[b] = a if win else x
                        carry_id[b] = ai if win else unit
                    for j in range(1, k):
                        vj, ij = vals[j], ids[j]
                        for b in range(n):
                            x, xi, a, ai = carry[b], carry_id[b], vj[b], ij[b]
                            win = (x > a) | ((x == a) & (xi < ai))
                            vj[b] = x if win else a
                            ij[b] = xi if win else ai
                            carry[b] = a if win else x
                            carry_id[b] = ai if win else xi
                first, last = ids[0], ids[k - 1]
                for b in range(n):
                    q = first[b]
                    top[b0 + b] = q + k if q < 0 else q
                    q = last[b]
                    kth[b0 + b] = q + k if q < 0 else q
    units = (F + T - 1) // T
    for t in numba.prange(T):  # add: threads own contiguous runs of units, patches go in order
        lo, hi = t * units, min(F, t * units + units)
        for b in range(c):
            u, q = top[b], kth[b]
            if lo <= u < hi:  # 2-D indexing, not row views: a view per patch costs an atomic refcount
                for n in range(N):
                    H[u, n] += V[b, n]
            if lo <= q < hi:
                for n in range(N):
                    H[q, n] -= delta * V[b, n]


def _unfold_into(img, w, out, T):  # type: ignore[no-untyped-def]
    """out (B, P, N), any strides: the w x w patches of img (B, C, H, W) at stride 1, positions row-major,
    each patch ordered like F.unfold (channel, row, column). A copy: the values are img's, bit for bit."""
    B, C, H, W = img.shape
    Wo = W - w + 1
    per = (B + T - 1) // T
    for t in numba.prange(T):  # threads take contiguous runs of images
        for b in range(t * per, min(B, t * per + per)):
            for i in range(H - w + 1):
                for j in range(Wo):
                    row = out[b, i * Wo + j]
                    n = 0
                    for c in range(C):
                        for ki in range(w):
                            for kj in range(w):
                                row[n] = img[b, c, i + ki, j + kj]
                                n += 1


if numba is not None:
    # compiled on first use and cached on disk (__pycache__, or numba's user cache dir when that is
    # read-only); no fastmath: the sums stay IEEE, and a NaN would not be silently reordered; numpy's
    # error model: no Python-style checks around integer division
    # One thread: the same code compiled without the OpenMP pool (prange runs as range: same sums), and
    # numba's thread API left alone. Every numba.get/set_num_threads call wakes the pool, whose workers
    # then spin: a one-CPU trial's spinning worker took a core from its own torch ops and from the
    # concurrent trial's (quickstart attacks 2-10x slower after the rule or the pool had run).
    # numeric.jit_pair compiles the two from differently named copies: numba's disk cache does not tell
    # builds of one function apart by their flags, and the serial one had run the cached parallel code.
    _compiled, _serial = jit_pair(_rank_and_add, boundscheck=False, nogil=True, error_model="numpy")
    _unfold_parallel, _unfold_serial = jit_pair(_unfold_into, boundscheck=False, nogil=True, error_model="numpy")


def unit_major(units: int) -> bool:
    """Whether rank_and_add wants the currents of `units` units unit-major, (F, c)."""
    return units <= LANES_MAX_UNITS


def rank_and_add(
    I: np.ndarray, V: np.ndarray, k: int, delta: float, H: np.ndarray, threads: int | None = None
) -> None:
    """H += gᵀV for the patches V (c, N) with currents I, (F, c) if unit_major(F) else (c, F); see the
    module docstring. Arrays are float32, C-contiguous; 1 <= k <= F. threads: 1 runs the serial build
    (numba's pool untouched); None uses numba.get_num_threads() (see set_threads)."""
    lanes = unit_major(H.shape[0])
    want = (H.shape[0], V.shape[0]) if lanes else (V.shape[0], H.shape[0])
    if I.shape != want:  # the kernel does not check its indices
        raise ValueError(f"currents have shape {I.shape}, the kernel wants {want}")
    if threads == 1:
        _serial(I, V, k, np.float32(delta), H, 1, lanes, LANES)
    else:
        _compiled(I, V, k, np.float32(delta), H, numba.get_num_threads(), lanes, LANES)


def unfold_into(img: np.ndarray, kernel: int, out: np.ndarray, threads: int) -> None:
    """out (B, P, N) float32, any strides (krotov.extract_patches' position-major view too) = the patches
    of img (B, C, H, W) float32, as F.unfold(img, kernel).transpose(1, 2) has them, without normalising.
    About 4x faster than that unfold and its strided copy on CPU. threads: 1 runs the serial build (numba's
    pool untouched), more split the images into that many runs, whatever numba's thread count is then."""
    B, C, H, W = img.shape
    want = (B, (H - kernel + 1) * (W - kernel + 1), C * kernel * kernel)
    if out.shape != want:  # the kernel does not check its indices
        raise ValueError(f"patches have shape {out.shape}, the kernel wants {want}")
    (_unfold_serial if threads == 1 else _unfold_parallel)(img, kernel, out, max(1, threads))
