"""Measurements: clean accuracy, filter convergence, the robustness summaries (against a known
logistic), the fixed-ε grid, the gradient-masking checks on a normal and a masked model, the figure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from test_attacks import Quantised, fit_tiny  # a masked model (zero input gradients); tiny training
from torch import Tensor, nn

from hebbrobust import plots
from hebbrobust.config import AttackConfig
from hebbrobust.evaluate import (
    MASK_ALL_OK,
    MASK_LARGE_EPS_OK,
    MASK_PGD_LE_FGSM,
    MASK_ZERO_GRAD_FRAC,
    MASK_ZERO_GRAD_OK,
    accuracy_curve,
    clean_accuracy,
    eps_label,
    evaluate_robustness,
    filter_convergence,
    genlog_inflection,
    grid_metric,
    masking_checks,
    predict,
    robust_accuracy_grid,
    robustness_summary,
)

# --------------------------------------------------------------------------- tiny seeded problem


def make_problem(n: int = 300, steps: int = 80) -> tuple[nn.Module, Tensor, Tensor]:
    """3 classes of 1x6x6 images (±1 pattern at contrast 0.15 around grey plus noise), a small CNN."""
    g = torch.Generator().manual_seed(0)
    protos = torch.randint(0, 2, (3, 1, 6, 6), generator=g).float() * 2 - 1
    y = torch.arange(n) % 3
    x = (0.5 + 0.15 * protos[y] + 0.1 * torch.randn(n, 1, 6, 6, generator=g)).clamp(0, 1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, bias=False), nn.MaxPool2d(2, 2), nn.ReLU(), nn.Dropout(0.3), nn.Flatten(),
        nn.Linear(32, 3),
    )
    return fit_tiny(model, x, y, steps).eval(), x, y


@pytest.fixture(scope="module")
def problem() -> tuple[nn.Module, Tensor, Tensor]:
    return make_problem()


def small_cfg(**changes: object) -> AttackConfig:
    base = dict(eps=(4.0, 16.0, 32.0), pgd_steps=10, n_images=150, radius_images=90, min_radius_images=20,
                confidence=0.5, radius_pgd_max_steps=200, batch_size=64)
    base.update(changes)
    return AttackConfig.model_validate(base)


# --------------------------------------------------------------------------- names, clean accuracy


def test_metric_names() -> None:
    assert eps_label(2.0) == "2" and eps_label(8) == "8" and eps_label(0.5) == "0.5"
    assert grid_metric("pgd", 2.0) == "pgd_acc@2"
    assert grid_metric("fgsm", 0.5, relative=True) == "fgsm_racc@0.5"


def test_predict_and_clean_accuracy(problem: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = problem
    model.train()
    pred, conf = predict(model, x, batch_size=7)
    assert all(m.training for m in model.modules()), "mode not restored"
    model.eval()
    with torch.no_grad():
        prob = F.softmax(model(x), dim=1)
    assert torch.equal(pred, prob.argmax(1))
    torch.testing.assert_close(conf, prob.max(1).values)
    acc = clean_accuracy(model, x, y, batch_size=1000)
    assert acc == pytest.approx((prob.argmax(1) == y).float().mean().item())
    assert clean_accuracy(model, x, y, batch_size=13) == acc
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- filter convergence


def test_filter_convergence_both_definitions() -> None:
    p = 2.0
    w = torch.tensor(
        [
            [0.6, 0.8, 0.0 + 1e-9, 0.0 + 1e-9],  # unit norm, all > 0: converged both ways
            [0.6, -0.8, 0.0, 0.0],  # unit norm, a negative weight: thesis-unconverged only
            [0.6, 0.8, 0.1, 0.0 + 1e-9],  # norm 1.005, positive: thesis-unconverged, norm-only converged
            [1.2, 1.6, 0.1, 0.1],  # norm ~2: unconverged both ways
            [0.0, 0.0, 0.0, 0.0],  # dead filter
        ],
        dtype=torch.float64,
    )
    got = filter_convergence(w, p)
    assert got["unconverged"] == [1, 2, 3, 4]
    assert got["unconverged_norm_only"] == [3, 4]
    assert got["unconverged_frac"] == pytest.approx(4 / 5)
    assert got["unconverged_frac_norm_only"] == pytest.approx(2 / 5)
    assert got["norms"][2] == pytest.approx(math.sqrt(1.01))
    # (F, C, w, w) weights and another p: the same filters, reshaped
    conv = torch.rand(6, 3, 2, 2) + 0.1
    conv = conv / conv.flatten(1).pow(3).sum(1).pow(1 / 3).view(-1, 1, 1, 1)
    conv[4, 0, 0, 0] *= -1
    conv[5] *= 1.5
    got4 = filter_convergence(conv, 3.0, tol=1e-4)
    assert got4["unconverged"] == [4, 5] and got4["unconverged_norm_only"] == [5]
    assert got4["norms"][0] == pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------------------------- summaries of radii


def logistic_radii(M: float, D: float, Q: float, B: float, nu: float, n: int, seed: int) -> np.ndarray:
    """Radii whose survival curve A(ε) = P(ρ > ε) is the thesis's generalised logistic:
    solve 1 − (1 + Q e^(−B(ε/D − M)))^(−1/ν) = u for u ~ U(0, 1)."""
    u = np.random.default_rng(seed).random(n)
    t = -np.log(((1 - u) ** (-nu) - 1) / Q)
    return np.maximum(D * (t / B + M), 0.0)


@pytest.mark.parametrize(
    "params",
    [(-0.26, 0.24, 1.38, 30.0, 7e-5), (-0.2, 0.3, 1.0, 20.0, 1e-3), (-0.1, 0.3, 1.0, 25.0, 0.01)],
)
def test_summary_recovers_the_inflection_point(params: tuple[float, ...]) -> None:
    radii = logistic_radii(*params, n=3000, seed=1)
    R_true = genlog_inflection(*params)
    assert 0.01 < R_true < 0.05
    s = robustness_summary(radii, eps_max=0.12)
    assert s["R_reason"] is None and s["R"] is not None
    assert s["R"] == pytest.approx(R_true, rel=0.05)
    assert s["r2"] > 0.99 and s["n_images"] == 3000 and len(s["fit_params"]) == 5


def test_summary_median_auc_and_infinities() -> None:
    radii = np.array([0.03, 0.01, np.inf, 0.2, 0.02, np.inf, 0.05])
    s = robustness_summary(radii, eps_max=0.1, min_images=2)
    # exact median of all 7, the 2 unbroken counted beyond every radius
    assert s["eps50"] == np.median([0.01, 0.02, 0.03, 0.05, 0.2, np.inf, np.inf]) == 0.05
    most_unbroken = robustness_summary(np.array([0.01, np.inf, np.inf]), eps_max=0.1, min_images=2)
    assert most_unbroken["eps50"] == 0.1  # half or more unbroken: eps_max, a lower bound
    assert s["auc"] == pytest.approx(np.mean([0.3, 0.1, 1, 1, 0.2, 1, 0.5]))
    assert s["unbroken_frac"] == pytest.approx(2 / 7)
    even = robustness_summary(torch.tensor([0.4, 0.1, 0.3, 0.2], dtype=torch.float64), eps_max=1.0)
    assert even["eps50"] == 0.25


def test_summary_refuses_R_with_too_few_images() -> None:
    s = robustness_summary(np.array([0.01, 0.02, 0.03]), eps_max=0.12, min_images=20)
    assert s["R"] is None and "too few" in s["R_reason"]
    assert s["eps50"] == 0.02
    empty = robustness_summary(np.array([]), eps_max=0.12)
    assert empty["R"] is None and empty["eps50"] is None and empty["auc"] is None


def test_summary_rejects_a_bad_fit() -> None:
    radii = np.concatenate([np.full(50, 0.01), np.full(50, 0.1)])  # two cliffs: no single logistic
    s = robustness_summary(radii, eps_max=0.12)
    assert s["R"] is None and s["R_reason"]


def test_accuracy_curve() -> None:
    curve = accuracy_curve(np.array([0.1, 0.2, np.inf, 0.3]), np.array([0.0, 0.1, 0.15, 0.3, 10.0]))
    assert curve.tolist() == [1.0, 0.75, 0.75, 0.25, 0.25]


# --------------------------------------------------------------------------- grid and masking checks


def test_grid_metrics(problem: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = problem
    cfg = small_cfg()
    grid = robust_accuracy_grid(model, x, y, cfg)
    assert grid["grid_images"] == 150
    for e in cfg.eps:
        for attack in ("fgsm", "pgd"):
            acc, racc = grid[grid_metric(attack, e)], grid[grid_metric(attack, e, relative=True)]
            assert 0 <= acc <= grid["grid_clean_acc"] + 1e-9 and 0 <= racc <= 1
        assert grid[grid_metric("pgd", e)] <= grid[grid_metric("fgsm", e)] + 1 / 150
    accs = [grid[grid_metric("pgd", e)] for e in cfg.eps]
    assert accs == sorted(accs, reverse=True) and accs[-1] < 0.5
    assert robust_accuracy_grid(model, x, y, cfg) == grid  # seeded random starts


def test_masking_checks_flag_pgd_weaker_than_fgsm() -> None:
    grid = {"grid_images": 100, "fgsm_acc@2": 0.50, "pgd_acc@2": 0.51, "fgsm_acc@4": 0.30, "pgd_acc@4": 0.33}
    flags = masking_checks(grid, (2.0, 4.0), large_eps_acc=0.0, zero_grad_frac=0.0)
    assert flags[MASK_PGD_LE_FGSM] == 0 and flags[MASK_ALL_OK] == 0
    assert flags["mask_pgd_minus_fgsm_max"] == pytest.approx(0.03)
    grid["pgd_acc@4"] = 0.3
    assert masking_checks(grid, (2.0, 4.0), 0.0, 0.0)[MASK_ALL_OK] == 1  # one image is tolerated


def test_evaluate_robustness_on_a_normal_model(problem: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = problem
    cfg = small_cfg()
    metrics, extras = evaluate_robustness(model, x, y, cfg)
    for name in ("fgsm_acc@4", "pgd_acc@32", "fgsm_racc@16", "fgsm_eps50", "pgd_eps50", "fgsm_auc", "pgd_auc",
                 "fgsm_R", "pgd_R", "fgsm_r2", "pgd_r2", "fgsm_R_reason", "radius_images", "attack_seconds",
                 "mask_pgd_le_fgsm", "mask_pgd_minus_fgsm_max", "mask_large_eps_ok", "mask_large_eps_acc",
                 "mask_zero_grad_ok", "mask_zero_grad_frac", "mask_all_ok"):
        assert name in metrics, name
    assert metrics["mask_all_ok"] == 1, metrics
    assert metrics["radius_images"] == 90
    assert 0 < metrics["pgd_eps50"] <= metrics["fgsm_eps50"]  # type: ignore[operator]
    assert 0 < metrics["pgd_auc"] <= metrics["fgsm_auc"] <= 1  # type: ignore[operator]
    for a in ("fgsm", "pgd"):
        assert metrics[f"{a}_R"] is not None or metrics[f"{a}_R_reason"]
        assert extras[f"radii_{a}"].shape == (90,)
        assert extras[f"curve_{a}"].shape == extras["curve_eps"].shape and extras[f"curve_{a}"][0] == 1.0
        assert extras[f"grid_{a}_acc"].shape == (3,)
    assert extras["eps_max"] == cfg.radius_pgd_ball
    assert evaluate_robustness(model, x, y, small_cfg(enabled=False)) == ({}, {})


def test_evaluate_robustness_flags_a_masked_model(problem: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = problem
    masked = Quantised(model)
    metrics, _ = evaluate_robustness(masked, x, y, small_cfg(radius_images=30, radius_pgd_max_steps=30))
    assert metrics[MASK_ZERO_GRAD_OK] == 0 and metrics[MASK_ZERO_GRAD_FRAC] == 1.0
    assert metrics[MASK_LARGE_EPS_OK] == 0 and metrics["mask_large_eps_acc"] > 0.5  # type: ignore[operator]
    assert metrics[MASK_ALL_OK] == 0
    assert metrics["pgd_unbroken_frac"] == 1.0 and metrics["pgd_eps50"] == 0.12  # the ball: a lower bound
    assert metrics["pgd_R"] is None and "too few" in str(metrics["pgd_R_reason"])


def test_too_few_confident_images_gives_no_R(problem: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = problem
    metrics, _ = evaluate_robustness(model, x, y, small_cfg(radius_images=10, min_radius_images=20))
    assert metrics["radius_images"] == 10
    assert metrics["fgsm_R"] is None and "too few" in str(metrics["fgsm_R_reason"])
    assert metrics["fgsm_eps50"] is not None
    skipped, extras = evaluate_robustness(model, x, y, small_cfg(radius_images=0))
    assert skipped["radius_images"] == 0 and skipped["pgd_eps50"] is None and skipped["pgd_auc"] is None
    assert extras["radii_pgd"].shape == (0,) and "pgd_acc@4" in skipped


# --------------------------------------------------------------------------- the figure


def test_robustness_figure(problem: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = problem
    _, extras = evaluate_robustness(model, x, y, small_cfg(radius_images=40))
    fig = plots.robustness_figure(extras, title="tiny")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("FGSM: A(ε)" in s for s in labels) and any("PGD: grid" in s for s in labels)
    plots.plt.close(fig)
    empty = plots.robustness_figure({}, title="nothing")  # a model that was not attacked still draws
    plots.plt.close(empty)
