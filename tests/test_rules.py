"""The Krotov–Hopfield rule against a plain float64 numpy restatement of docs/science.md §2, the fast updates
against the dense formula, and the invariants the rule must keep."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hebbrobust.config import RuleConfig
from hebbrobust.rules import krotov
from hebbrobust.rules._base import LocalRule
from hebbrobust.rules.krotov import (
    apply_update,
    extract_patches,
    init_weights,
    krotov_delta,
    lr_at,
    normalize_patches,
    train_step,
    update_batch,
    update_positions,
)


@pytest.fixture(params=["unit-major", "patch-major", "topk"])
def ranking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every CPU path of the fast updates: the compiled kernel's two rankings, whatever F (production picks
    one by F), and torch.topk (a GPU, or no numba)."""
    if request.param == "topk":
        monkeypatch.setattr(krotov._kernel, "AVAILABLE", False)
    else:
        monkeypatch.setattr(krotov._kernel, "LANES_MAX_UNITS", 1 << 30 if request.param == "unit-major" else 0)
    return str(request.param)


# --------------------------------------------------------------------------- the reference


def reference_delta(W: np.ndarray, V: np.ndarray, p: float, k: int, delta: float) -> np.ndarray:
    """docs/science.md §2 steps 1-3 in float64 numpy, dense, as Krotov's notebook computes it."""
    Wp = np.sign(W) * np.abs(W) ** (p - 1)  # (F, N)
    I = V @ Wp.T  # (B, F) currents
    order = np.argsort(-I, axis=1, kind="stable")  # best first
    g = np.zeros_like(I)
    rows = np.arange(len(V))
    g[rows, order[:, 0]] = 1.0
    g[rows, order[:, k - 1]] = -delta
    return g.T @ V - (g * I).sum(0)[:, None] * W  # (F, N)


def reference_decay(W: np.ndarray, V: np.ndarray, p: float, k: int, delta: float) -> np.ndarray:
    """Σ_b g_bμ I_bμ per unit, (F,)."""
    Wp = np.sign(W) * np.abs(W) ** (p - 1)
    I = V @ Wp.T
    order = np.argsort(-I, axis=1, kind="stable")
    rows = np.arange(len(V))
    d = np.zeros(W.shape[0])
    np.add.at(d, order[:, 0], I[rows, order[:, 0]])
    np.add.at(d, order[:, k - 1], -delta * I[rows, order[:, k - 1]])
    return d


def pnorm(x: torch.Tensor, p: float) -> torch.Tensor:
    return x.double().abs().pow(p).sum(-1).pow(1 / p)


def random_problem(F_: int, N: int, B: int, p: float, seed: int, signed: bool = False):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(F_, N, generator=gen)
    x = torch.rand(B, N, generator=gen)
    if signed:
        x -= 0.3
    return W, normalize_patches(x, p)


def assert_close(got: torch.Tensor, want: np.ndarray | torch.Tensor, rel: float = 1e-5) -> None:
    want = np.asarray(want, dtype=np.float64)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=rel, atol=rel * np.abs(want).max())


CASES = [(2.0, 2, 0.4), (3.0, 2, 0.0), (4.5, 5, 0.1), (6.0, 3, 1.0), (1.5, 7, 0.3)]


# --------------------------------------------------------------------------- the formula


@pytest.mark.parametrize(("p", "k", "delta"), CASES)
def test_krotov_delta_matches_the_numpy_reference(p: float, k: int, delta: float) -> None:
    W, V = random_problem(20, 27, 64, p, seed=k, signed=True)
    got = krotov_delta(W, V, p=p, k=k, delta=delta)
    assert got.shape == W.shape and got.dtype == torch.float32
    assert_close(got, reference_delta(W.double().numpy(), V.double().numpy(), p, k, delta))


def test_rank_must_lie_between_2_and_the_number_of_filters() -> None:
    W, V = random_problem(4, 6, 8, 3.0, seed=0)
    for k in (1, 5):
        with pytest.raises(ValueError, match="rule.k"):
            krotov_delta(W, V, p=3.0, k=k, delta=0.4)
        with pytest.raises(ValueError, match="rule.k"):
            update_batch(W, V, p=3.0, k=k, delta=0.4, lr=0.1)
    with pytest.raises(ValueError, match="rule.normalize"):
        update_batch(W, V, p=3.0, k=2, delta=0.4, lr=0.1, normalize="row")


def test_update_direction_is_tangent_to_the_unit_sphere() -> None:
    """Σ_i Wᵖ_μi ΔW_μi = d_μ (1 - ‖W_μ‖_p^p) for any W: rows on the unit p-sphere move along it, rows
    off it move towards it when they win (d_μ > 0). The invariant behind the thesis's convergence test."""
    p, k, delta = 3.0, 3, 0.4
    W, V = random_problem(12, 10, 200, p, seed=3)
    dW = krotov_delta(W, V, p=p, k=k, delta=delta).double()
    Wd = W.double()
    lhs = (Wd.sign() * Wd.abs() ** (p - 1) * dW).sum(1)
    d = reference_decay(Wd.numpy(), V.double().numpy(), p, k, delta)
    rhs = d * (1 - Wd.abs().pow(p).sum(1).numpy())
    np.testing.assert_allclose(lhs.numpy(), rhs, rtol=1e-4, atol=1e-4 * np.abs(rhs).max())
    U = W / pnorm(W, p).float().unsqueeze(1)  # the same rows scaled onto the sphere
    dU = krotov_delta(U, V, p=p, k=k, delta=delta).double()
    Ud = U.double()
    along = (Ud.sign() * Ud.abs() ** (p - 1) * dU).sum(1)
    assert along.abs().max() < 1e-5 * dU.abs().max()


def test_a_converged_filter_set_is_a_fixed_point_of_the_hebbian_term() -> None:
    """Rows = distinct non-negative unit-p-norm patches, data = those patches. By Hölder each patch's top
    unit is its own row with current exactly 1, so its Hebbian term v - 1·W_μ vanishes: with Δ = 0,
    ΔW = 0. The anti-Hebbian push (Δ > 0) moves the k-th unit off its patch, but only along the sphere.
    (apply_update divides by max|ΔW|, so a ΔW of rounding noise would still move W by η: the invariant
    is ΔW ≈ 0, not W unchanged.)"""
    p, F_, N = 4.0, 8, 12
    gen = torch.Generator().manual_seed(7)
    W = normalize_patches(torch.rand(F_, N, generator=gen) ** 3, p)  # (F, N) ≥ 0, ‖W_μ‖_p = 1
    V = W[torch.randint(0, F_, (256,), generator=gen)]  # every patch is one of the rows
    hebb = krotov_delta(W, V, p=p, k=2, delta=0.0)
    scale = V.abs().sum(0).max()  # the size of gᵀV before it cancels
    assert hebb.abs().max() < 1e-5 * scale
    anti = krotov_delta(W, V, p=p, k=2, delta=0.4)
    assert anti.abs().max() > 1e-2 * scale  # not a fixed point once Δ > 0 …
    along = (W.double() ** (p - 1) * anti.double()).sum(1)
    assert along.abs().max() < 1e-5 * anti.abs().max()  # … but the norms stay put


def test_winning_units_converge_to_unit_p_norm() -> None:
    """Training on random positive data with a small decaying rate: the units that win the data end on
    the unit p-sphere with positive weights (units that stop winning early keep whatever norm they had:
    with Δ = 0 a unit that never wins is never updated)."""
    p, F_, N = 3.0, 6, 8
    W = init_weights(F_, N, seed=2)
    gen = torch.Generator().manual_seed(2)
    data = normalize_patches(torch.rand(4096, N, generator=gen), p)
    assert (pnorm(W, p) - 1).abs().min() > 0.05  # none starts on the sphere
    steps = 800
    for t in range(steps):
        V = data[torch.randint(0, len(data), (64,), generator=gen)]
        update_batch(W, V, p=p, k=2, delta=0.0, lr=0.02 * (1 - t / steps) + 1e-3)
    wins = torch.bincount((data @ krotov.power_weights(W, p).T).argmax(1), minlength=F_)
    winners = wins > 0.01 * len(data)
    assert winners.sum() >= 3
    assert torch.all((pnorm(W[winners], p) - 1).abs() < 2e-3), pnorm(W, p)
    assert torch.all(W[winners] > 0)  # converged filters are positive (the thesis's criterion)


# --------------------------------------------------------------------------- the fast updates


@pytest.mark.parametrize(
    ("F_", "N", "p", "k", "delta"),
    [
        (24, 27, 3.0, 2, 0.4),
        (400, 48, 4.0, 5, 0.1),
        (100, 12, 2.0, 2, 0.0),  # Δ = 0: no anti-Hebbian term
        (64, 9, 6.0, 6, 1.0),
        (5, 8, 3.0, 4, 0.4),
        (3, 4, 2.5, 3, 0.4),  # F = k: the k-th ranked unit is the last one
        (5000, 4, 3.0, 3, 0.4),  # more units than patches per block
    ],
)
@pytest.mark.parametrize("normalize", ["global", "per_filter"])
def test_update_batch_equals_the_dense_update(
    F_: int, N: int, p: float, k: int, delta: float, normalize: str, ranking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(krotov, "CHUNK_CURRENTS", 256 * F_)  # blocks of 256 patches
    W, V = random_problem(F_, N, 1000, p, seed=F_ + k)
    want = W.clone()
    apply_update(want, krotov_delta(W, V, p=p, k=k, delta=delta), 0.05, normalize)
    got = W.clone()
    update_batch(got, V, p=p, k=k, delta=delta, lr=0.05, normalize=normalize)
    assert_close(got - W, want - W)


def test_update_batch_is_exact_on_ties_and_near_ties(ranking: str) -> None:
    """All-zero patches tie every unit; unit 0 is a copy of unit 1 with one weight larger by 2^-16, so it
    beats unit 1 by one part in ~10^5. Dyadic values with p = 2 make every current exact in float32, so
    the right order is not in doubt."""
    gen = torch.Generator().manual_seed(11)
    F_, N = 40, 16
    W = torch.randint(0, 1 << 10, (F_, N), generator=gen) / 2.0**10  # (F, N) in [0, 1)
    W[1] = 0.5 + W[1] / 2  # unit 1 (and its copy) win most patches
    W[0] = W[1]
    W[0, 3] += 2.0**-16
    V = torch.randint(1, 16, (600, N), generator=gen) / 16.0  # (B, N) unnormalised: currents stay exact
    V[:20] = 0
    I = V.double() @ W.double().T
    assert torch.equal((V @ W.T).double(), I)  # float32 currents are exact
    assert (I.argmax(1)[20:] == 0).float().mean() > 0.5  # many patches hinge on the near-tie
    for k in (2, 3):
        want = reference_delta(W.double().numpy(), V.double().numpy(), 2.0, k, 0.4)
        assert_close(krotov_delta(W, V, p=2.0, k=k, delta=0.4), want)
        got = W.clone()
        update_batch(got, V, p=2.0, k=k, delta=0.4, lr=0.05)
        assert_close(got - W, 0.05 * want / np.abs(want).max())


def test_kernel_ranks_like_a_stable_descending_sort_and_adds_g_transpose_v(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled kernel alone, both rankings: exact ties (repeated currents) rank the lower unit first,
    as np.argsort(-I, kind="stable") does, NaN and -inf currents are never ranked (units 0..k-1 fill in),
    and H gets gᵀV, bit for bit the same on 1 or 2 threads (serial or parallel build) and for either ranking."""
    assert krotov._kernel.AVAILABLE, "numba is a dependency: CPU updates must use the compiled kernel"
    rng = np.random.default_rng(3)
    c, F_, N, k, delta = 1777, 37, 10, 4, 0.3  # more patches than LANES: several blocks, a partial one
    I = rng.integers(0, 6, (c, F_)).astype(np.float32)  # values 0..5: every row full of ties
    I[:5] = 1.0  # all units tied
    I[5:8] = np.nan  # never ranked: units 0..k-1 fill in
    I[8:11, np.arange(F_) // 2 != 3] = np.nan  # units 6 and 7 ranked, then 0 and 1 fill in
    I[11:14, :30] = -np.inf
    I[14] = -np.inf
    I[15, 1] = np.inf
    V = rng.random((c, N), dtype=np.float32)
    ranked = [[f for f in np.argsort(-row, kind="stable") if row[f] > -np.inf] for row in I]  # NaN sorts last
    ranked = [(r + list(range(k)))[:k] for r in ranked]  # the fillers
    g = np.zeros((c, F_))
    g[np.arange(c), [r[0] for r in ranked]] = 1.0
    g[np.arange(c), [r[k - 1] for r in ranked]] = -delta
    got = []
    for unit_major in (True, False):  # both rankings
        monkeypatch.setattr(krotov._kernel, "LANES_MAX_UNITS", F_ if unit_major else F_ - 1)
        assert krotov._kernel.unit_major(F_) == unit_major
        for threads, serial in ((1, True), (1, False), (2, False)):  # the serial build, the parallel one
            krotov._kernel.set_threads(threads)
            H = np.zeros((F_, N), np.float32)
            krotov._kernel.rank_and_add(
                np.ascontiguousarray(I.T if unit_major else I), V, k, delta, H, threads=1 if serial else None
            )
            np.testing.assert_allclose(H, g.T @ V, rtol=1e-5, atol=1e-5)
            got.append(H)
    krotov._kernel.set_threads(torch.get_num_threads())
    assert all(np.array_equal(got[0], H) for H in got[1:])  # same sums in the same order


@pytest.mark.parametrize("semantics", ["batch", "position"])
def test_a_float64_master_adds_up_steps_below_half_an_ulp(semantics: str, ranking: str) -> None:
    """Weights in [1, 2) have an ulp of 2^-23 ≈ 1.2e-7; at lr 2e-8 no step reaches half of it, so float32
    weights never move. A float64 master adds the 40 steps up (≈ 40 times the first step: the weights move
    by < 1e-6, too little to change the ranking), and W is its float32 rounding throughout."""
    W, V = random_problem(24, 12, 300, 3.0, seed=4)
    W = 1.0 + W.abs().clamp(max=0.99)  # (F, N) in [1, 2)
    lr, steps = 2e-8, 40
    patches = V.view(30, 10, 12)  # (B, P, N) for `position`: 10 updates per call

    def train(w: torch.Tensor, master: torch.Tensor | None) -> None:
        for _ in range(steps if semantics == "batch" else steps // 10):
            if semantics == "batch":
                update_batch(w, V, p=3.0, k=3, delta=0.4, lr=lr, master=master)
            else:
                update_positions(w, patches, p=3.0, k=3, delta=0.4, lr=lr, master=master)

    plain = W.clone()
    train(plain, None)
    assert torch.equal(plain, W)  # every step rounded away
    got, master = W.clone(), W.double()
    train(got, master)
    assert torch.equal(got, master.float()) and not torch.equal(got, W)
    if semantics == "batch":  # the same step 40 times
        dW = krotov_delta(W.double(), V.double(), p=3.0, k=3, delta=0.4)
        assert_close(master - W.double(), steps * lr * dW / dW.abs().max(), rel=1e-4)
    with pytest.raises(ValueError, match="float64"):
        update_batch(W.clone(), V, p=3.0, k=3, delta=0.4, lr=lr, master=W.clone())


def test_update_batch_does_not_depend_on_the_thread_count() -> None:
    W, V = random_problem(64, 27, 3000, 3.0, seed=9)
    steps = []
    for threads in (1, 2):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            got = W.clone()
            update_batch(got, V, p=3.0, k=3, delta=0.4, lr=0.05)
        finally:
            torch.set_num_threads(before)
        steps.append(got)
    assert torch.equal(steps[0], steps[1])


def test_update_positions_equals_one_dense_update_per_position(ranking: str) -> None:
    p, k, delta = 4.0, 3, 0.4
    gen = torch.Generator().manual_seed(5)
    W = torch.randn(30, 12, generator=gen)
    patches = normalize_patches(torch.rand(16, 9, 12, generator=gen), p)  # (B, P, N)
    want = W.clone()
    for j in range(patches.shape[1]):
        apply_update(want, krotov_delta(want, patches[:, j], p=p, k=k, delta=delta), 0.01)
    got = W.clone()
    update_positions(got, patches, p=p, k=k, delta=delta, lr=0.01)
    assert_close(got - W, want - W)


def test_apply_update_normalises_by_the_global_or_per_filter_max() -> None:
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(5, 7, generator=gen)
    dw = torch.randn(5, 7, generator=gen) * torch.tensor([1.0, 10.0, 0.1, 3.0, 0.0]).unsqueeze(1)
    dw_before = dw.clone()
    g = W.clone()
    apply_update(g, dw, 0.25, "global")
    step = (g - W).double()
    assert step.abs().max().item() == pytest.approx(0.25, rel=1e-5)
    assert_close(step, 0.25 * dw.double() / dw.abs().max())
    f = W.clone()
    apply_update(f, dw, 0.25, "per_filter")
    row_max = (f - W).double().abs().amax(1)
    assert row_max[:4] == pytest.approx([0.25] * 4, rel=1e-5)
    assert row_max[4] == 0  # a zero row stays put (divided by 1e-30, not by 0)
    assert torch.equal(dw, dw_before)
    z = W.clone()
    apply_update(z, torch.zeros_like(W), 0.25)
    assert torch.equal(z, W)


def test_train_step_extracts_patches_and_dispatches_on_semantics() -> None:
    gen = torch.Generator().manual_seed(9)
    images = torch.rand(4, 3, 7, 7, generator=gen)
    W = init_weights(10, 3 * 3 * 3, seed=1)
    for semantics in ("batch", "position"):
        cfg = RuleConfig(p=3.0, k=3, delta=0.2, semantics=semantics, normalize="per_filter")
        got = W.clone()
        train_step(got, images, cfg, lr=0.01)
        want = W.clone()
        patches = extract_patches(images, 3, 3.0)
        args = dict(p=3.0, k=3, delta=0.2, lr=0.01, normalize="per_filter")
        if semantics == "batch":
            update_batch(want, patches.view(-1, 27), **args)  # type: ignore[arg-type]
        else:
            update_positions(want, patches, **args)  # type: ignore[arg-type]
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="C·w·w"):
        train_step(init_weights(10, 26, seed=1), images, RuleConfig(), lr=0.01)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_update_batch_on_cuda_matches_cpu() -> None:
    W, V = random_problem(400, 48, 5000, 4.0, seed=0)
    cpu = W.clone()
    update_batch(cpu, V, p=4.0, k=5, delta=0.1, lr=0.05)
    gpu = W.cuda()
    update_batch(gpu, V.cuda(), p=4.0, k=5, delta=0.1, lr=0.05)
    assert_close(gpu.cpu() - W, cpu - W, rel=1e-4)


# --------------------------------------------------------------------------- patches


def test_extract_patches_matches_unfold_and_conv2d_ordering() -> None:
    p, w = 3.0, 3
    gen = torch.Generator().manual_seed(4)
    images = torch.rand(2, 3, 7, 6, generator=gen)
    images[1, :, :4, :4] = 0  # some all-zero patches
    got = extract_patches(images, w, p)
    assert got.shape == (2, 5 * 4, 27) and got.is_contiguous()
    raw = F.unfold(images, w).transpose(1, 2).double()  # (B, P, N)
    norm = raw.abs().pow(p).sum(-1, keepdim=True).pow(1 / p)
    want = raw / torch.where(norm < 1e-7, torch.ones_like(norm), norm)
    assert_close(got, want)
    # N is ordered like a conv weight (F, C, w, w).reshape(F, -1); P row-major over positions:
    # conv2d(x, W) = (patches @ Wᵀ)·‖patch‖_p, the window norm taken from a ones-kernel conv (§1).
    Wk = torch.randn(5, 3, w, w, generator=gen)
    conv = F.conv2d(images, Wk).flatten(2).transpose(1, 2)  # (B, P, F)
    window = F.conv2d(images.abs() ** p, torch.ones(1, 3, w, w)).flatten(2).transpose(1, 2) ** (1 / p)
    window = torch.where(window < 1e-7, torch.ones_like(window), window)
    assert_close(got @ Wk.reshape(5, -1).T * window, conv.double())
    by_position = extract_patches(images, w, p, position_major=True)  # the same values, (P, B, N) storage
    assert torch.equal(by_position, got) and by_position[:, 7].is_contiguous()


@pytest.mark.skipif(not krotov._kernel.AVAILABLE, reason="numba not installed")
@pytest.mark.parametrize("position_major", [False, True])
@pytest.mark.parametrize("p", [3.0, 4.0, 12.0])
def test_compiled_unfold_gives_the_torch_unfolds_patches_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch, p: float, position_major: bool
) -> None:
    gen = torch.Generator().manual_seed(5)
    images = torch.rand(37, 3, 11, 9, generator=gen)
    images[3, :, :5, :5] = 0  # all-zero patches: divided by 1
    monkeypatch.setattr(krotov, "_PATCH_BLOCK", 700)  # several blocks of images
    compiled = extract_patches(images, 4, p, position_major=position_major)
    monkeypatch.setattr(krotov._kernel, "AVAILABLE", False)
    plain = extract_patches(images, 4, p, position_major=position_major)
    assert compiled.stride() == plain.stride() and torch.equal(compiled, plain)


def test_normalize_patches_divides_by_one_below_the_floor() -> None:
    v = torch.tensor([[0.0, 0.0, 0.0], [5e-8, 0.0, 0.0], [2e-7, 0.0, 0.0], [3.0, -4.0, 1.0]])
    before = v.clone()
    out = normalize_patches(v, 2.0)
    assert torch.equal(v, before)  # pure
    assert torch.equal(out[:2], v[:2])
    assert pnorm(out[2:], 2.0).tolist() == pytest.approx([1.0, 1.0], rel=1e-6)
    assert out[3].tolist() == pytest.approx((v[3] / math.sqrt(26)).tolist(), rel=1e-6)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 4.5, 6.0, 12.0, 32.0])
def test_normalize_patches_reaches_unit_norm_for_dark_and_bright_patches(p: float) -> None:
    gen = torch.Generator().manual_seed(0)
    v = torch.rand(6, 48, generator=gen) * torch.tensor([1e-3, 0.01, 0.05, 1.0, 10.0, 300.0]).unsqueeze(1)
    assert pnorm(normalize_patches(v, p), p).tolist() == pytest.approx([1.0] * 6, rel=1e-5)


# --------------------------------------------------------------------------- schedule and init


@pytest.mark.parametrize(
    ("schedule", "half", "end"),
    [
        ("const", 0.1, 0.1),
        ("linear", 0.05, 0.0),
        ("cosine", 0.05, 0.0),
        ("exp", 0.1 * math.exp(-1.0), 0.1 * math.exp(-2.0)),
        ("step", 0.1 * 0.5, 0.1 * 0.5**3),  # ⌊5/3⌋ = 1, ⌊10/3⌋ = 3
    ],
)
def test_lr_schedules(schedule: str, half: float, end: float) -> None:
    cfg = RuleConfig(lr=0.1, schedule=schedule, epochs=10, tau=2.0, gamma=0.5, step_size=3)
    assert lr_at(0, 10, cfg) == pytest.approx(0.1)
    assert lr_at(5, 10, cfg) == pytest.approx(half)
    assert lr_at(10, 10, cfg) == pytest.approx(end, abs=1e-12)
    assert lr_at(0, 0, cfg) == pytest.approx(0.1)


def test_init_weights_is_seeded_and_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    a = init_weights(7, 12, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.shape == (7, 12) and a.dtype == torch.float32
    assert torch.equal(a, init_weights(7, 12, seed=3))
    assert not torch.equal(a, init_weights(7, 12, seed=4))
    assert torch.equal(init_weights(7, 12, seed=3, std=0.5), a * 0.5)
    big = init_weights(400, 48, seed=0, std=2.0)
    assert big.mean().abs() < 0.05 and big.std().item() == pytest.approx(2.0, rel=0.03)


def test_krotov_module_is_a_local_rule() -> None:
    assert isinstance(krotov, LocalRule)
    W, V = random_problem(6, 5, 10, 3.0, seed=0)
    cfg = RuleConfig(p=3.0, k=3, delta=0.2)
    assert torch.equal(krotov.delta(W, V, cfg), krotov_delta(W, V, p=3.0, k=3, delta=0.2))


_SERIAL_PROBE = """
import numpy as np, numba, torch
torch.set_num_threads(1)
from hebbrobust import _maxpool
from hebbrobust.rules import _kernel
I, V = np.random.rand(64, 400).astype(np.float32), np.random.rand(64, 48).astype(np.float32)
H = np.zeros((400, 48), np.float32)
h = torch.rand(2, 8, 10, 10).contiguous(memory_format=torch.channels_last)
if WARM:  # both builds compiled and cached on disk, the parallel one first
    torch.set_num_threads(2)
    _kernel.rank_and_add(I, V, 5, 0.1, H, 2)
    _maxpool.max_pool2d_with_indices(h, 2, 2)
    torch.set_num_threads(1)
_kernel.rank_and_add(I, V, 5, 0.1, H, 1)
_maxpool.max_pool2d_with_indices(h, 2, 2)
try:
    print(numba.threading_layer(), torch.get_num_threads())
except ValueError:  # "Threading layer is not initialized"
    print("no-pool", torch.get_num_threads())
"""


def test_serial_builds_never_start_numbas_pool_even_from_a_warm_cache() -> None:
    """numba's disk cache keys builds by name and bytecode, not flags: a serial build named like the
    parallel one loaded its machine code from the cache, started the OpenMP pool and set torch to all cores."""
    import subprocess
    import sys

    for warm in (True, False):  # the second process finds both builds in the cache
        out = subprocess.run(
            [sys.executable, "-c", f"WARM = {warm}\n" + _SERIAL_PROBE], capture_output=True, text=True, check=True
        ).stdout.split()
        if not warm:
            assert out == ["no-pool", "1"], out
