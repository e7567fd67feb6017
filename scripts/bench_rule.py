"""Speed of the Krotov–Hopfield update on the thesis's CIFAR-10 shapes, against the machine's matmul.

    python scripts/bench_rule.py [--device cpu|cuda] [--quick]
    python scripts/bench_rule.py --trial-epoch [--filters 400 --kernel 4 --images 2000 --threads 1]

For F ∈ {400, 100} filters and w ∈ {4, 8} (C = 3, batches of 1000 random 32×32 images in [0, 1]) it
times hebbrobust's `batch` update (one update from all B·P patches) and `position` update (one per
patch position, the thesis's semantics) and prints, side by side and measured in the same run:

- GFLOP/s of the update, counting 4·B·N·F FLOPs per update from B patches (the two GEMMs of the dense
  formula), and the same machine's dense fp32 torch.mm rate on those two GEMMs, twice: on a few blocks of
  patches that stay in cache (the peak, "mm GF/s"), and over all of the batch's patches in the blocks the
  update uses, read from memory as the update reads them ("stream"); a ratio against each;
- the speed-up over (a) Krotov's rule restated in float64 numpy (dense: the full g matrix, two GEMMs)
  and (b) a straightforward per-position loop (dense torch krotov_delta + apply_update per position),
  all on identical tensors; "err" is the largest difference of our step from (a)'s, relative to the step.

--trial-epoch: a trial's filter epoch (train.fit_filters_local, position semantics, float64 accumulation as a
trial runs it) next to this bench's figure for the same shape (position updates x positions + patch extraction,
per batch), measured alternately in one run, as process CPU seconds (robust on a shared machine) and wall.

An epoch is 50 batches (CIFAR-10's 50 000 images). Position updates and the references are timed on a
few positions or patches and extrapolated; the table says which.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from hebbrobust.rules import krotov
from hebbrobust.rules.krotov import (
    apply_update,
    extract_patches,
    init_weights,
    krotov_delta,
    update_batch,
    update_positions,
)

BATCHES_PER_EPOCH = 50  # CIFAR-10: 50 000 training images in batches of 1000
CHECK_LR = 0.25  # agreement checks use a step that float32 weights of size ~3 resolve to ~1e-6


def numpy_reference(W: np.ndarray, V: np.ndarray, p: float, k: int, delta: float) -> np.ndarray:
    """ΔW of docs/science.md §2 in float64 numpy, as Krotov's notebook computes it: full g, two GEMMs."""
    Wp = np.sign(W) * np.abs(W) ** (p - 1)  # (F, N)
    I = V @ Wp.T  # (B, F)
    order = np.argsort(-I, axis=1)
    g = np.zeros_like(I)
    rows = np.arange(len(V))
    g[rows, order[:, 0]] = 1.0
    g[rows, order[:, k - 1]] = -delta
    return g.T @ V - (g * I).sum(0)[:, None] * W


def numpy_step(W: np.ndarray, V: np.ndarray, p: float, k: int, delta: float, lr: float) -> np.ndarray:
    dW = numpy_reference(W, V, p, k, delta)
    return W + lr * dW / max(np.abs(dW).max(), 1e-30)


def timed(fn: Callable[[], object], reps: int, device: torch.device) -> float:
    """The fastest of `reps` runs, in seconds (the machine may be shared)."""
    best = float("inf")
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_rate(V: torch.Tensor, W: torch.Tensor, block: int, reps: int) -> float:
    """GFLOP/s of the dense formula's two fp32 GEMMs, I = V·Wᵀ (block, F) and gᵀV (F, N), on blocks."""
    blocks = [V[i : i + block] for i in range(0, min(len(V), 8 * block), block)]
    blocks = [b for b in blocks if len(b) == block]
    g = torch.randn(block, W.shape[0], device=W.device)

    def run() -> None:
        for b in blocks:
            torch.mm(b, W.T)
            torch.mm(g.T, b)

    return 4 * block * len(blocks) * V.shape[1] * W.shape[0] / timed(run, reps, W.device) / 1e9


def matmul_rate_streamed(V: torch.Tensor, W: torch.Tensor, reps: int) -> float:
    """The same two GEMMs over all of V (every patch of the batch, read from memory as the update reads
    them), in the blocks the update uses; g is one block reused, so only V streams."""
    F_ = W.shape[0]
    block = min(len(V), krotov.CUDA_CHUNK if W.device.type == "cuda" else max(256, krotov.CHUNK_CURRENTS // F_))
    g = torch.randn(block, F_, device=W.device)
    I, H = W.new_empty(block, F_), torch.empty_like(W)

    def run() -> None:
        for start in range(0, len(V), block):
            b = V[start : start + block]
            torch.mm(b, W.T, out=I[: len(b)])
            torch.mm(g[: len(b)].T, b, out=H)

    return 4 * len(V) * V.shape[1] * F_ / timed(run, reps, W.device) / 1e9


def blas_note() -> str:
    parts = [f"torch {torch.__version__}, {torch.get_num_threads()} threads"]
    try:
        from threadpoolctl import threadpool_info

        for info in threadpool_info():
            if info.get("user_api") == "blas":
                lib = os.path.basename(info.get("filepath", ""))
                if "numpy" in info.get("filepath", "") or "scipy_openblas" in lib or "openblas" in lib:
                    arch = info.get("architecture", "?")
                    parts.append(
                        f"numpy BLAS {info.get('internal_api')} {info.get('version')} "
                        f"({arch}, {info.get('num_threads')} threads)"
                    )
                    break
    except ImportError:
        parts.append("numpy BLAS: see numpy.show_config()")
    core = os.environ.get("OPENBLAS_CORETYPE")
    if core:
        parts.append(f"OPENBLAS_CORETYPE={core}")
    return "; ".join(parts)


def bench_shape(
    F_: int, w: int, images: torch.Tensor, args: argparse.Namespace, device: torch.device
) -> list[dict[str, object]]:
    p, k, delta, lr = args.p, args.k, args.delta, 1e-3
    reps = 1 if args.quick else 5  # fastest of 5: this shared machine varies by ±30% run to run
    B = images.shape[0]
    N = 3 * w * w
    W0 = init_weights(F_, N, seed=0, device=device)

    t_extract = timed(lambda: extract_patches(images, w, p), reps, device)
    V = extract_patches(images, w, p).view(-1, N)  # (B·P, N), for `batch`
    patches = extract_patches(images, w, p, position_major=True)  # (B, P, N) stored (P, B, N), for `position`
    P = patches.shape[1]
    mm = matmul_rate(V, W0, 4096, reps)
    mm_stream = matmul_rate_streamed(V, W0, reps)
    rows: list[dict[str, object]] = []

    # ---- batch: one update from all B·P patches
    t_batch = timed(lambda: update_batch(W0.clone(), V, p=p, k=k, delta=delta, lr=lr), reps, device)
    S = min(len(V), args.ref_patches)  # the numpy reference runs on the first S patches
    Vs = V[:S]
    Wn, Vn = W0.double().cpu().numpy(), Vs.double().cpu().numpy()
    t_ref = timed(lambda: numpy_step(Wn, Vn, p, k, delta, lr), 1, torch.device("cpu"))
    ours_S = W0.clone()
    t_ours_S = timed(lambda: update_batch(ours_S.copy_(W0), Vs, p=p, k=k, delta=delta, lr=lr), reps, device)
    update_batch(ours_S.copy_(W0), Vs, p=p, k=k, delta=delta, lr=CHECK_LR)  # a step float32 W resolves
    err = np.abs(ours_S.double().cpu().numpy() - numpy_step(Wn, Vn, p, k, delta, CHECK_LR)).max() / CHECK_LR
    flops = 4 * len(V) * N * F_
    rows.append(
        dict(
            shape=f"F={F_} w={w} N={N}",
            sem="batch",
            update=f"{t_batch:.3f} s",
            epoch=BATCHES_PER_EPOCH * (t_batch + t_extract),
            gflops=flops / t_batch / 1e9,
            mm=mm,
            mm_stream=mm_stream,
            vs_numpy=t_ref / t_ours_S,
            ref_note=f"{S} patches",
            err=err,
        )
    )

    # ---- position: one update per position from the B patches there, sequential
    J = min(P, args.positions)
    W = W0.clone()
    t_pos = timed(lambda: update_positions(W.copy_(W0), patches[:, :J], p=p, k=k, delta=delta, lr=lr), reps, device)
    per_pos = t_pos / J
    Jn = min(P, args.loop_positions)

    def naive_loop() -> None:
        Wl = W0.clone()
        for j in range(Jn):
            apply_update(Wl, krotov_delta(Wl, patches[:, j], p=p, k=k, delta=delta), lr)

    per_pos_loop = timed(naive_loop, 1, device) / Jn
    Wn_pos = W0.double().cpu().numpy()
    Vj = [patches[:, j].double().cpu().numpy() for j in range(Jn)]

    def numpy_positions() -> None:
        Wr = Wn_pos
        for j in range(Jn):
            Wr = numpy_step(Wr, Vj[j], p, k, delta, lr)

    per_pos_ref = timed(numpy_positions, 1, torch.device("cpu")) / Jn
    Wr, Wo = Wn_pos, W0.clone()
    for j in range(Jn):  # agreement over the same positions
        Wr = numpy_step(Wr, Vj[j], p, k, delta, CHECK_LR)
    update_positions(Wo, patches[:, :Jn], p=p, k=k, delta=delta, lr=CHECK_LR)
    err_pos = np.abs(Wo.double().cpu().numpy() - Wr).max() / (CHECK_LR * Jn)
    rows.append(
        dict(
            shape="",
            sem="position",
            update=f"{per_pos * 1e3:.2f} ms",
            epoch=BATCHES_PER_EPOCH * (P * per_pos + t_extract),
            gflops=4 * B * N * F_ / per_pos / 1e9,
            mm=mm,
            mm_stream=mm_stream,
            vs_numpy=per_pos_ref / per_pos,
            vs_loop=per_pos_loop / per_pos,
            loop_epoch=BATCHES_PER_EPOCH * (P * per_pos_loop + t_extract),
            ref_note=f"{J}/{Jn} of {P} pos",
            err=err_pos,
        )
    )
    rows[0]["vs_loop"] = rows[1]["loop_epoch"] / rows[0]["epoch"]  # type: ignore[operator]
    rows[0]["loop_epoch"] = rows[1]["loop_epoch"]
    return rows


def _cpu_and_wall(fn: Callable[[], object]) -> tuple[float, float]:
    c, t = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c, time.perf_counter() - t


def trial_epoch(args: argparse.Namespace) -> None:
    """A trial's filter epoch against the kernel's figure for the same shape, alternately, best of reps."""
    from hebbrobust.config import RuleConfig
    from hebbrobust.train import fit_filters_local

    F_, w, B = args.filters, args.kernel, 1000
    cfg = RuleConfig(p=args.p, k=args.k, delta=args.delta, semantics="position", lr=1e-3, epochs=1, batch_size=B)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.images, 3, 32, 32, generator=gen)
    W0 = init_weights(F_, 3 * w * w, seed=0)
    batches = args.images // B
    patches = extract_patches(x[:B], w, args.p, position_major=True)
    P = patches.shape[1]
    kw = dict(p=args.p, k=args.k, delta=args.delta, lr=1e-3)
    J = min(P, args.positions)
    update_positions(W0.clone(), patches[:, :3], **kw)  # compile and warm
    rows: dict[str, list[tuple[float, float]]] = {k: [] for k in ("extract", "pos32", "pos64", "trial")}
    for _ in range(args.reps):
        rows["extract"].append(_cpu_and_wall(lambda: extract_patches(x[:B], w, args.p, position_major=True)))
        cw = _cpu_and_wall(lambda: update_positions(W0.clone(), patches[:, :J], **kw))
        rows["pos32"].append((cw[0] / J, cw[1] / J))
        cw = _cpu_and_wall(lambda: update_positions(W0.clone(), patches[:, :J], **kw, master=W0.double()))
        rows["pos64"].append((cw[0] / J, cw[1] / J))
        cw = _cpu_and_wall(lambda: fit_filters_local(W0.clone(), x, cfg, kernel=w, tol=1e-5, seed=0))
        rows["trial"].append((cw[0] / batches, cw[1] / batches))
    best = {k: (min(c for c, _ in v), min(t for _, t in v)) for k, v in rows.items()}
    print(f"trial filter epoch vs the kernel, F={F_} w={w} p={args.p} k={args.k}, {args.images} random images in "
          f"batches of {B} ({P} positions), {torch.get_num_threads()} threads, best of {args.reps}; "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'per batch':<44}{'CPU s':>9}{'wall s':>9}")
    for name, label, scale in [
        ("extract", "patch extraction", 1), ("pos32", f"position updates float32 (x{P}, {J} timed)", P),
        ("pos64", f"position updates float64 accumulation (x{P})", P),
    ]:
        print(f"{label:<44}{best[name][0] * scale:>9.3f}{best[name][1] * scale:>9.3f}")
    bench = [best["extract"][i] + P * best["pos32"][i] for i in (0, 1)]
    same = [best["extract"][i] + P * best["pos64"][i] for i in (0, 1)]
    print(f"{'bench figure (extract + float32 updates)':<44}{bench[0]:>9.3f}{bench[1]:>9.3f}")
    print(f"{'same, float64 accumulation':<44}{same[0]:>9.3f}{same[1]:>9.3f}")
    print(f"{'trial: fit_filters_local, one epoch':<44}{best['trial'][0]:>9.3f}{best['trial'][1]:>9.3f}")
    print(f"trial / bench figure: CPU {best['trial'][0] / bench[0]:.3f}, wall {best['trial'][1] / bench[1]:.3f}; "
          f"trial / float64 kernel: CPU {best['trial'][0] / same[0]:.3f}, wall {best['trial'][1] / same[1]:.3f}  "
          f"(x{BATCHES_PER_EPOCH} batches for a CIFAR-10 epoch)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trial-epoch", action="store_true", help="a trial's filter epoch next to the kernel's figure")
    ap.add_argument("--filters", type=int, default=400, help="--trial-epoch: F")
    ap.add_argument("--kernel", type=int, default=4, help="--trial-epoch: w")
    ap.add_argument("--images", type=int, default=2000, help="--trial-epoch: images per epoch (batches of 1000)")
    ap.add_argument("--reps", type=int, default=3, help="--trial-epoch: alternating repetitions")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--quick", action="store_true", help="one repetition, fewer positions and reference patches")
    ap.add_argument("--p", type=float, default=4.0, help="Lebesgue power (thesis best: 4)")
    ap.add_argument("--k", type=int, default=5, help="ranking index (thesis best: 5)")
    ap.add_argument("--delta", type=float, default=0.1, help="anti-Hebbian strength (thesis: 0.1)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    args = ap.parse_args()
    if args.trial_epoch:
        torch.set_num_threads(args.threads)
        args.positions = 200
        trial_epoch(args)
        return
    args.positions = 20 if args.quick else 60
    args.loop_positions = 5 if args.quick else 15
    args.ref_patches = 30_000 if args.quick else 100_000
    batch = 1000

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, 32, 32, generator=gen).to(device)  # (B, C, H, W) in [0, 1]

    print(f"Krotov-Hopfield update, p={args.p} k={args.k} Δ={args.delta}, batch {batch} random 32x32x3 images")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    print(f"device {device}; {blas_note()}; load {load:.1f} on {cores} cores")
    if device.type == "cpu" and load > 0.5 and args.threads > 1:
        print(
            f"warning: the machine is busy; with {args.threads} torch threads every op waits for a descheduled "
            "thread, so times can be many times too long (--threads 1 is robust to that)"
        )
    rows: list[dict[str, object]] = []
    for F_, w in [(400, 4), (400, 8), (100, 4), (100, 8)]:
        rows += bench_shape(F_, w, images, args, device)

    head = (
        f"{'shape':<18}{'semantics':<10}{'update':>10}{'s/epoch':>9}{'GFLOP/s':>9}{'mm GF/s':>9}"
        f"{'ratio':>7}{'stream':>9}{'ratio':>7}{'x numpy':>9}{'x loop':>8}{'loop s/ep':>10}{'err':>9}  reference on"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['shape']:<18}{r['sem']:<10}{r['update']:>10}{r['epoch']:>9.1f}{r['gflops']:>9.1f}"
            f"{r['mm']:>9.1f}{r['gflops'] / r['mm']:>7.2f}{r['mm_stream']:>9.1f}{r['gflops'] / r['mm_stream']:>7.2f}"  # type: ignore[operator]
        f"{r['vs_numpy']:>9.1f}{r['vs_loop']:>8.1f}"
            f"{r['loop_epoch']:>10.0f}{r['err']:>9.1e}  {r['ref_note']}"
        )
    print(
        f"update: one batch update, or one position update (timed on the first positions of a batch).\n"
        f"s/epoch: {BATCHES_PER_EPOCH} batches incl. patch extraction; position and loop epochs are "
        f"extrapolated from the timed positions. ratio: GFLOP/s / mm GF/s (the peak: dense fp32 GEMMs on 8\n"
        f"cache-resident blocks of 4096 patches); stream, ratio: the same GEMMs over all the batch's patches in\n"
        f"the update's blocks, V read from memory as the update reads it. x numpy: vs float64 numpy, timed on the\n"
        f"patches in the last column (batch) or the "
        f"same positions; x loop: vs dense torch krotov_delta + apply_update per position (for `batch`: its\n"
        f"epoch over ours, different semantics). err: max |our step - numpy step| / step, at lr {CHECK_LR}. "
        f"load {os.getloadavg()[0]:.1f} at the end."
    )


if __name__ == "__main__":
    main()
