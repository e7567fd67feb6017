import pytest
import torch
import torch.nn.functional as F

from hebbrobust import models
from hebbrobust.config import ModelConfig
from hebbrobust.models import HebbCNN, activation_power, local_currents


def _reference_currents(x: torch.Tensor, w: torch.Tensor, p: float) -> torch.Tensor:
    """Unfold, normalise each patch to unit p-norm (divisor 1 below 1e-7), dot with sign(W)|W|^(p-1)."""
    b, c, h, ww = x.shape
    f, _, k, _ = w.shape
    v = F.unfold(x.double(), k).transpose(1, 2)  # (B, P, N)
    norm = v.abs().pow(p).sum(-1, keepdim=True).pow(1 / p)
    norm = torch.where(norm < 1e-7, torch.ones_like(norm), norm)
    kern = (w.sign() * w.abs().pow(p - 1)).double().reshape(f, -1)
    cur = (v / norm) @ kern.T  # (B, P, F)
    return cur.transpose(1, 2).reshape(b, f, h - k + 1, ww - k + 1)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 4.5])
def test_local_currents_equal_unfold_reference(p: float) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 9, 7, generator=g)
    x[0, :, :4, :4] = 0  # a blank region: divisor 1
    w = torch.randn(5, 2, 3, 3, generator=g)
    got = local_currents(x, w, p).double()
    assert torch.allclose(got, _reference_currents(x, w, p), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["local", "backprop"])
def test_model_shapes_and_log_probs(kind: str) -> None:
    cfg = ModelConfig(kind=kind, filters=6, kernel=4, pool=3, activation="elu", power=3)
    model = HebbCNN(cfg, (3, 16, 16), classes=10, p=3)
    assert model.feature_shape == (6, 6, 6)  # conv 13x13, pool 3 stride 2 -> 6x6
    out = model(torch.rand(4, 3, 16, 16))
    assert out.shape == (4, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(4), atol=1e-5)
    assert model.conv_weight.requires_grad == (kind == "backprop")


def test_input_gradients_are_finite_on_blank_images() -> None:
    model = HebbCNN(ModelConfig(filters=4, kernel=3), (1, 8, 8), classes=3, p=4)
    torch.nn.init.normal_(model.conv_weight)
    x = torch.zeros(2, 1, 8, 8, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_activation_power() -> None:
    x = torch.tensor([-1.0, 0.5, 2.0])
    assert torch.allclose(activation_power(x, "relu", 2), torch.tensor([0.0, 0.25, 4.0]))
    elu = F.elu(x)
    assert torch.allclose(activation_power(x, "elu", 2), elu**2)  # integer power: plain (even) power
    assert torch.allclose(activation_power(x, "elu", 1.5), elu.sign() * elu.abs() ** 1.5)
    assert torch.allclose(activation_power(x, "rexp", 7), torch.relu(torch.expm1(x)))


@pytest.mark.parametrize("activation", ["relu", "elu", "gelu", "rexp"])
@pytest.mark.parametrize("n", [1, 4, 1.5])
def test_activation_power_in_place_equals_out_of_place(activation: str, n: float) -> None:
    x = torch.linspace(-1.5, 1.2, 101)
    want = activation_power(x, activation, n)
    buffer = x.clone()
    got = activation_power(buffer, activation, n, inplace=True)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("n", [1, 2, 3, 12, 16, 30])
def test_integer_powers_by_squaring_equal_pow_with_and_without_autograd(n: int) -> None:
    x = torch.linspace(-1.5, 1.2, 101)
    want = F.elu(x.double()) ** n
    fast = activation_power(x, "elu", n)  # no autograd: squared in place
    xg = x.clone().requires_grad_(True)
    slow = activation_power(xg, "elu", n)  # autograd: pow
    torch.testing.assert_close(fast.double(), want, rtol=1e-5, atol=1e-30)
    torch.testing.assert_close(slow.detach(), fast, rtol=1e-5, atol=1e-30)
    slow.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    y = x.clone()
    assert models.int_power_(y, n).data_ptr() == y.data_ptr() or n & (n - 1)  # powers of two reuse x


def test_too_large_pool_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="model.pool"):
        HebbCNN(ModelConfig(kernel=3, pool=9), (1, 8, 8), classes=10, p=3)


@pytest.mark.parametrize("kind, p", [("backprop", 1.0), ("local", 1.0), ("local", 2.0), ("local", 4.5)])
@pytest.mark.parametrize("pool, stride", [(3, 2), (4, 1), (5, 5)])
def test_blockwise_conv_pool_equals_dense_values_and_gradients(
    kind: str, p: float, pool: int, stride: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CPU, features() pools the conv output block by block, keeps only argmax indices and has a
    hand-written backward; output and gradients (input, and the conv weights of the backprop model)
    must equal the dense conv -> max_pool2d composition under autograd."""
    monkeypatch.setattr(models, "CPU_BLOCK_CURRENTS", 6 * 10 * 9 * 8)  # blocks of 8 images: 8, 8, 3
    g = torch.Generator().manual_seed(1)
    model = HebbCNN(ModelConfig(kind=kind, filters=6, kernel=3, pool=pool, pool_stride=stride),
                    (2, 12, 11), 4, p=p)
    x = torch.rand(19, 2, 12, 11, generator=g)  # 19: the last block is a partial one
    x[3] = 0.5  # a constant image: ties inside every window, broken the same way
    x[5, :, :6, :6] = 0  # a blank corner: local divisor 1, no gradient through the norm there
    upstream = torch.randn(19, *model.feature_shape, generator=g)

    def dense_features(xr: torch.Tensor) -> torch.Tensor:
        w, xr = model.conv_weight, xr.contiguous(memory_format=torch.channels_last)  # the layout features() uses
        return F.max_pool2d(F.conv2d(xr, w) if kind == "backprop" else local_currents(xr, w, p), pool, stride)

    def grads(feature_fn):
        xr = x.clone().requires_grad_(True)
        model.zero_grad()
        out = feature_fn(xr)
        (out * upstream).sum().backward()
        w_grad = model.conv_weight.grad
        return out.detach(), xr.grad, torch.zeros(1) if w_grad is None else w_grad.clone()

    dense = grads(dense_features)
    blocks = grads(model.features)
    assert (blocks[0] - dense[0]).abs().max() <= 1e-6 * dense[0].abs().max()  # conv on a block: other rounding
    for got, want in zip(blocks[1:], dense[1:], strict=True):
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()  # sums in another order
    assert dense[1].abs().sum() > 0 and (dense[2].abs().sum() > 0) == (kind == "backprop")


@pytest.mark.parametrize("pool, stride", [(9, 2), (3, 1), (4, 3), (5, 5), (1, 1)])
@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_max_pool_equals_torch_bit_for_bit(pool: int, stride: int, threads: int) -> None:
    """The compiled channels-last pool returns torch's values and argmax indices exactly, ties (the first
    maximum in row-major order), NaN (the last NaN wins) and infinities included, on 1 or 2 threads."""
    from hebbrobust import _maxpool

    g = torch.Generator().manual_seed(pool * 10 + stride)
    h = torch.randn(5, 7, 13, 11, generator=g)
    h[0] = torch.round(h[0])  # many ties in every window
    h[1] = 0.25  # a constant image: all ties
    h[2, 3, 4, 5] = float("nan")
    h[2, 3, 6, 2] = float("nan")
    h[3, 0, 2, 2] = float("inf")
    h[3, 1] = float("-inf")
    h = h.contiguous(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        values, idx = _maxpool.max_pool2d_with_indices(h, pool, stride)
    finally:
        torch.set_num_threads(before)
    want_values, want_idx = F.max_pool2d_with_indices(h, pool, stride)
    assert idx.dtype == torch.int32  # the compiled path ran
    assert torch.equal(values.isnan(), want_values.isnan())
    assert torch.equal(values.nan_to_num(), want_values.nan_to_num())
    assert torch.equal(idx.long(), want_idx)


def test_max_pool_falls_back_to_torch_off_the_compiled_path() -> None:
    """Contiguous (not channels-last), float64 or gradient-tracking inputs go to torch's pool."""
    from hebbrobust import _maxpool

    h = torch.randn(2, 3, 8, 8)
    for x in (h, h.double().contiguous(memory_format=torch.channels_last),
              h.contiguous(memory_format=torch.channels_last).requires_grad_(True)):
        values, idx = _maxpool.max_pool2d_with_indices(x, 3, 2)
        assert idx.dtype == torch.int64
        assert torch.equal(values, F.max_pool2d(x, 3, 2))
