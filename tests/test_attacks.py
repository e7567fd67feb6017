"""Contract suite every attack passes, cross-checks against plain per-step restatements, and the
minimal-radius searches on a linear model whose radii are known in closed form."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hebbrobust.attacks import fgsm, fgsm_min_radius, input_gradient, pgd, pgd_min_radius

# --------------------------------------------------------------------------- tiny seeded problem


def make_data(n: int = 300, seed: int = 0) -> tuple[Tensor, Tensor]:
    """3 classes of 1x6x6 images: a ±1 class pattern at contrast 0.15 around grey, plus noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randint(0, 2, (3, 1, 6, 6), generator=g).float() * 2 - 1
    y = torch.arange(n) % 3
    x = 0.5 + 0.15 * protos[y] + 0.1 * torch.randn(n, 1, 6, 6, generator=g)
    return x.clamp(0, 1), y


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, bias=False),  # (B, 8, 4, 4)
        nn.MaxPool2d(2, 2),  # (B, 8, 2, 2)
        nn.ReLU(),
        nn.Dropout(0.3),  # makes train vs eval mode observable
        nn.Flatten(),
        nn.Linear(32, 3),
    )


def fit_tiny(model: nn.Module, x: Tensor, y: Tensor, steps: int) -> nn.Module:
    """Full-batch Adam on a tiny problem; leaves no .grad behind."""
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model


def trained_model(steps: int = 80) -> tuple[nn.Module, Tensor, Tensor]:
    x, y = make_data()
    return fit_tiny(make_model(), x, y, steps), x, y


@pytest.fixture(scope="module")
def problem() -> tuple[nn.Module, Tensor, Tensor]:
    return trained_model()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    model.train(was)
    return acc


def test_problem_is_learnt(problem: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = problem
    assert accuracy(model, x, y) > 0.9


# --------------------------------------------------------------------------- the contract

Attack = Callable[[nn.Module, Tensor, Tensor], Tensor]
LINF, L2 = 0.1, 0.5


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(1)


ATTACKS: dict[str, tuple[Attack, str, float]] = {
    "fgsm": (lambda m, x, y: fgsm(m, x, y, eps=LINF), "linf", LINF),
    "pgd_linf": (lambda m, x, y: pgd(m, x, y, eps=LINF, alpha=LINF / 4, steps=10), "linf", LINF),
    "pgd_linf_rs_restarts": (
        lambda m, x, y: pgd(m, x, y, eps=LINF, alpha=LINF / 4, steps=10, random_start=True, restarts=3,
                            generator=_gen()),
        "linf", LINF,
    ),
    "pgd_l2": (lambda m, x, y: pgd(m, x, y, eps=L2, alpha=L2 / 4, steps=10, norm="l2"), "l2", L2),
    "pgd_l2_rs_restarts": (
        lambda m, x, y: pgd(m, x, y, eps=L2, alpha=L2 / 4, steps=10, norm="l2", random_start=True,
                            restarts=3, generator=_gen()),
        "l2", L2,
    ),
}


def _norm(d: Tensor, norm: str) -> Tensor:
    return d.flatten(1).abs().amax(1) if norm == "linf" else d.flatten(1).norm(dim=1)


@pytest.mark.parametrize("name", list(ATTACKS))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_attack_contract(problem: tuple[nn.Module, Tensor, Tensor], name: str, mode: str) -> None:
    model, x, y = problem
    attack, norm, eps = ATTACKS[name]
    model.train(mode == "train")
    next(model.parameters()).requires_grad_(False)  # a mix of frozen and trainable parameters
    required = [q.requires_grad for q in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_in = x.clone()

    x_adv = attack(model, x, y)

    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert torch.equal(x, x_in), "the input was modified in place"
    assert x.grad is None and not x_adv.requires_grad
    assert (_norm(x_adv - x, norm) <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.2  # it really attacks
    # eval mode restored to what it was, for the model and every submodule
    assert all(m.training == (mode == "train") for m in model.modules())
    # plasticity off: no weight moved, no gradient left behind
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert [q.requires_grad for q in model.parameters()] == required  # parameters unfrozen again


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_runs_in_eval_mode(problem: tuple[nn.Module, Tensor, Tensor], name: str) -> None:
    """Dropout is active in train mode: the same attack must give the same result from either mode."""
    model, x, y = problem
    attack = ATTACKS[name][0]
    model.eval()
    a = attack(model, x, y)
    model.train()
    b = attack(model, x, y)
    model.eval()
    assert torch.equal(a, b)


def test_log_probs_and_logits_give_the_same_attack(problem: tuple[nn.Module, Tensor, Tensor]) -> None:
    """Signed steps agree exactly. L2 steps use the gradient's size, where float32 rounding of
    p_y − 1 on confident images shows (~1e-3 relative), so they are compared in float64."""
    model, x, y = problem
    log_probs = nn.Sequential(model, nn.LogSoftmax(dim=1))
    for name in ("fgsm", "pgd_linf", "pgd_linf_rs_restarts"):
        attack = ATTACKS[name][0]
        torch.testing.assert_close(attack(model, x, y), attack(log_probs, x, y), atol=1e-6, rtol=0)
    model64 = copy.deepcopy(model).double()
    l2 = [pgd(m, x.double(), y, eps=L2, alpha=L2 / 4, steps=10, norm="l2")
          for m in (model64, nn.Sequential(model64, nn.LogSoftmax(dim=1)))]
    torch.testing.assert_close(l2[0], l2[1], atol=1e-6, rtol=0)


def test_pgd_is_at_least_as_strong_as_fgsm(problem: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = problem
    for eps in (0.03, 0.06, 0.1):
        acc_fgsm = accuracy(model, fgsm(model, x, y, eps=eps), y)
        acc_pgd = accuracy(model, pgd(model, x, y, eps=eps, alpha=eps / 4, steps=20, random_start=True,
                                      generator=_gen()), y)
        assert acc_pgd <= acc_fgsm + 1 / len(y)


def test_restarts_keep_the_first_success_or_the_strongest(problem: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = problem
    kw = dict(eps=0.05, alpha=0.0125, steps=3, random_start=True, generator=torch.Generator().manual_seed(5))
    one = pgd(model, x, y, restarts=1, **kw)  # type: ignore[arg-type]
    kw["generator"] = torch.Generator().manual_seed(5)
    many = pgd(model, x, y, restarts=4, **kw)  # type: ignore[arg-type]
    model.eval()
    with torch.no_grad():
        fooled_one = model(one).argmax(1) != y
        fooled_many = model(many).argmax(1) != y
        loss_one = F.cross_entropy(model(one), y, reduction="none")
        loss_many = F.cross_entropy(model(many), y, reduction="none")
    assert (fooled_many | ~fooled_one).all(), "a restart lost an image the first run had fooled"
    torch.testing.assert_close(many[fooled_one], one[fooled_one])  # the first success is kept
    still = ~fooled_many
    assert (loss_many[still] >= loss_one[still] - 1e-6).all()


def test_random_start_is_seeded(problem: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = problem
    kw = dict(eps=0.05, alpha=0.01, steps=2, random_start=True)
    a = pgd(model, x, y, generator=torch.Generator().manual_seed(3), **kw)  # type: ignore[arg-type]
    b = pgd(model, x, y, generator=torch.Generator().manual_seed(3), **kw)  # type: ignore[arg-type]
    c = pgd(model, x, y, generator=torch.Generator().manual_seed(4), **kw)  # type: ignore[arg-type]
    assert torch.equal(a, b) and not torch.equal(a, c)


# --------------------------------------------------------------------------- independent restatements


def _grad(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    x = x.clone().requires_grad_(True)
    loss = F.nll_loss(F.log_softmax(model(x), dim=1), y, reduction="sum")
    loss.backward()
    model.zero_grad(set_to_none=True)
    assert x.grad is not None
    return x.grad


def reference_fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    model.eval()
    return torch.clamp(x + eps * torch.sign(_grad(model, x, y)), 0, 1)


def reference_pgd(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float, steps: int, norm: str
) -> Tensor:
    model.eval()
    adv = x.clone()
    for _ in range(steps):
        g = _grad(model, adv, y)
        if norm == "linf":
            adv = adv + alpha * torch.sign(g)
            adv = torch.min(torch.max(adv, x - eps), x + eps)
        else:
            g_norm = g.reshape(len(g), -1).norm(dim=1).reshape(-1, 1, 1, 1)
            adv = adv + alpha * g / g_norm
            d = adv - x
            d_norm = d.reshape(len(d), -1).norm(dim=1).reshape(-1, 1, 1, 1)
            adv = x + d * torch.where(d_norm > eps, eps / d_norm, torch.ones_like(d_norm))
        adv = torch.clamp(adv, 0, 1)
    return adv


def test_fgsm_matches_reference(problem: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = problem
    for eps in (0.01, 0.1):
        ours, ref = fgsm(model, x, y, eps=eps), reference_fgsm(model, x, y, eps)
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("norm,eps", [("linf", 0.07), ("l2", 0.6)])
def test_pgd_matches_reference(problem: tuple[nn.Module, Tensor, Tensor], norm: str, eps: float) -> None:
    model, x, y = problem
    ours = pgd(model, x, y, eps=eps, alpha=eps / 5, steps=12, norm=norm)  # type: ignore[arg-type]
    ref = reference_pgd(model, x, y, eps, eps / 5, 12, norm)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_bad_arguments_are_refused(problem: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = problem
    with pytest.raises(ValueError, match="norm"):
        pgd(model, x, y, eps=0.1, alpha=0.01, steps=1, norm="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="restarts"):
        pgd(model, x, y, eps=0.1, alpha=0.01, steps=1, restarts=0)


# --------------------------------------------------------------------------- minimal radii


def linear_problem(rho_true: list[float], d: int = 20) -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    """Two classes, logits (v·x, 0) with v = (a, −a), a in [0.5, 1.5]; images of class 0 at
    x = 0.5 + ρ·sign(v) + noise ⟂ v, so v·x = ρ‖v‖₁: the boundary lies at L∞ distance exactly ρ along
    −sign(v), which is where every signed-gradient step points (the gradient sign is constant)."""
    g = torch.Generator().manual_seed(0)
    a = 0.5 + torch.rand(d // 2, generator=g, dtype=torch.float64)
    v = torch.cat([a, -a])
    rho = torch.tensor(rho_true, dtype=torch.float64)
    noise = 0.05 * torch.randn(len(rho_true), d, generator=g, dtype=torch.float64)
    noise = noise - (noise @ v / v.dot(v)).unsqueeze(1) * v
    x = 0.5 + rho.unsqueeze(1) * v.sign() + noise
    assert x.min() > 0.05 and x.max() < 0.95
    model = nn.Linear(d, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.stack([v, torch.zeros(d, dtype=torch.float64)]))
        model.bias.zero_()
    return model, x, torch.zeros(len(rho_true), dtype=torch.long), rho


def test_fgsm_min_radius_finds_the_boundary() -> None:
    rhos = [0.0123, 0.05, 0.1567, 0.2]
    model, x, y, rho = linear_problem(rhos)
    found = fgsm_min_radius(model, x, y)
    assert found.dtype == torch.float64 and found.shape == (4,)
    assert ((found - rho).abs() < 2e-6).all(), (found, rho)
    assert (found >= rho - 1e-12).all(), "the returned radius must be misclassified"


def test_pgd_min_radius_stops_at_first_flip() -> None:
    step = 1e-3
    rhos = [0.0234, 0.0519, 0.1004, 0.1304]  # the last lies beyond the ball
    model, x, y, rho = linear_problem(rhos)
    found = pgd_min_radius(model, x, y, step=step, ball=0.12, max_steps=700)
    expect = torch.ceil(rho / step) * step
    assert ((found[:3] - expect[:3]).abs() < 1e-9).all(), (found, expect)
    assert math.isinf(found[3].item())


def plain_pgd_min_radius(model: nn.Module, x: Tensor, y: Tensor, *, step: float, ball: float, max_steps: int) -> Tensor:
    """pgd_min_radius restated: every image alone, every step until its first flip or the budget."""
    rho = torch.full((len(x),), math.inf, dtype=torch.float64)
    was_training = model.training
    model.eval()
    for i in range(len(x)):
        xi, yi, x0 = x[i : i + 1].clone(), y[i : i + 1], x[i : i + 1]
        for t in range(max_steps + 1):
            if model(xi).argmax(1).item() != yi.item():
                rho[i] = (xi - x0).abs().max().double()
                break
            if t < max_steps:
                xi = (xi + step * input_gradient(model, xi, yi).sign()).clamp(x0 - ball, x0 + ball).clamp(0, 1)
    model.train(was_training)
    return rho


def test_pgd_min_radius_equals_its_plain_restatement_and_stops_cycling_images(
    problem: tuple[nn.Module, Tensor, Tensor],
) -> None:
    """Images whose iterates cycle between two correct points stop early with inf; the radii equal the
    plain per-image loop's (a small ball leaves many unbroken: they cycle on its boundary)."""
    model, x, y = problem
    x, y = x[:24], y[:24]
    kw = {"step": 5e-3, "ball": 0.08, "max_steps": 40}
    rows: list[int] = []

    class Counted(nn.Module):  # a module, so the attack puts the inner model in eval mode
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, v: Tensor) -> Tensor:
            rows.append(len(v))
            return self.inner(v)

    got = pgd_min_radius(Counted(), x, y, **kw)  # type: ignore[arg-type]
    want = plain_pgd_min_radius(model, x, y, **kw)  # type: ignore[arg-type]
    assert torch.isinf(want).sum() >= 4 and torch.isfinite(want).sum() >= 4, want
    assert len(rows) < kw["max_steps"] + 1 or rows[-1] < int(torch.isinf(want).sum())  # some cycled, stopped
    assert torch.equal(got.isinf(), want.isinf())
    assert ((got - want).abs()[want.isfinite()] < 1e-6).all()


def test_min_radius_edge_cases() -> None:
    model, x, y, _ = linear_problem([0.02, 0.03])
    y_wrong = torch.tensor([1, 0])  # the first image is already misclassified
    assert fgsm_min_radius(model, x, y_wrong)[0].item() == 0.0
    assert pgd_min_radius(model, x, y_wrong)[0].item() == 0.0
    # a step budget too small to reach the boundary: inf
    assert math.isinf(pgd_min_radius(model, x, y, step=1e-3, max_steps=10)[1].item())


class Quantised(nn.Module):
    """Output is a step function of the input: the input gradient is exactly zero (masked)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(torch.round(x * 4) / 4)


def test_masked_model_gives_no_radius_and_zero_gradient(problem: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = problem
    masked = Quantised(model)
    x, y = x[:30], y[:30]
    assert (input_gradient(masked, x, y) == 0).all()
    assert torch.equal(fgsm(masked, x, y, eps=0.2), x)
    correct = masked(x).argmax(1) == y
    assert torch.isinf(fgsm_min_radius(masked, x, y)[correct]).all()
    assert torch.isinf(pgd_min_radius(masked, x, y, max_steps=20)[correct]).all()


def test_min_radii_on_trained_model(problem: tuple[nn.Module, Tensor, Tensor]) -> None:
    """Every radius found really is adversarial: re-applying it flips the prediction."""
    model, x, y = problem
    model.eval()
    ok = model(x).argmax(1) == y
    x, y = x[ok][:40], y[ok][:40]
    rho = fgsm_min_radius(model, x, y)
    finite = torch.isfinite(rho)
    assert finite.float().mean() > 0.9
    direction = input_gradient(model, x, y).sign()
    adv = (x + rho.float().clamp(max=1).view(-1, 1, 1, 1) * direction).clamp(0, 1)
    with torch.no_grad():
        assert (model(adv[finite]).argmax(1) != y[finite]).all()
        below = (x + (rho.float() - 1e-5).clamp(min=0).view(-1, 1, 1, 1) * direction).clamp(0, 1)
        # just below the radius the image is (in all but rare non-monotone cases) still correct
        assert (model(below[finite]).argmax(1) == y[finite]).float().mean() > 0.9
    rho_pgd = pgd_min_radius(model, x, y, step=1e-3, ball=0.3, max_steps=400)
    both = finite & torch.isfinite(rho_pgd)
    assert (rho_pgd[both] <= rho[both] + 1e-3).float().mean() > 0.8  # iterating beats one line search
    assert (rho_pgd[torch.isfinite(rho_pgd)] <= 0.3 + 1e-6).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_attacks_on_cuda_match_cpu(problem: tuple[nn.Module, Tensor, Tensor]) -> None:
    """Device-agnostic: same results on the GPU (a CPU generator may seed GPU random starts)."""
    model, x, y = problem
    gpu = copy.deepcopy(model).cuda()
    xc, yc = x.cuda(), y.cuda()
    differ = (fgsm(gpu, xc, yc, eps=0.1).cpu() - fgsm(model, x, y, eps=0.1)).abs() > 1e-5
    assert differ.float().mean() < 0.01  # TF32 convolutions may flip the sign of tiny gradients
    adv = pgd(gpu, xc, yc, eps=0.1, alpha=0.025, steps=5, random_start=True, restarts=2, generator=_gen())
    assert adv.device == xc.device and ((adv - xc).abs().amax() <= 0.1 + 1e-6)
    adv = pgd(gpu, xc, yc, eps=0.1, alpha=0.025, steps=5, random_start=True,
              generator=torch.Generator(device="cuda").manual_seed(0))
    assert adv.device == xc.device
    rho = pgd_min_radius(gpu, xc[:20], yc[:20], max_steps=50)
    assert rho.device == xc.device
    assert fgsm_min_radius(gpu, xc[:20], yc[:20]).device == xc.device
