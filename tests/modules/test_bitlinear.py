"""BitLinear: y = scale * (x @ codes^T) (+ bias) with straight-through gradients.

STE derivation: codes = w / scale + (Q(w) - w / scale).detach() with scale detached, so
y = scale * F.linear(x, codes) has dy/dw = scale * (1 / scale) * dy/dW_eff: the gradient on the
master weight equals the gradient a float linear layer would give its weight W_eff =
scale * Q(w). Activation quantization (act_bits = b) changes each input by at most
max|x| / (2 (2^(b-1) - 1)) per token, so each output moves by at most
scale * (number of non-zero codes in its row) * that amount.
"""
import math

import pytest
import torch

from neurobit.errors import ParameterError, ShapeError
from neurobit.modules import BitLinear

F64 = torch.float64


def gaussian_layer(n_in, n_out, gen, quant="absmean", banks=None, **kw):
    bl = BitLinear(n_in, n_out, quant=quant, banks=banks, dtype=F64, **kw)
    with torch.no_grad():
        bl.weight.normal_(0, 0.1, generator=gen)
    return bl


@pytest.mark.parametrize("quant,kw", [("absmean", {}), ("fixed", {"fixed_scale": 0.1}),
                                      ("threshold", {"tau": 0.08})])
def test_forward_is_scaled_integer_product(quant, kw, gen):
    bl = gaussian_layer(19, 11, gen, quant, **kw)
    codes, scale = bl.ternary()
    codes = codes.detach()
    assert set(codes.unique().tolist()) == {-1.0, 0.0, 1.0}
    x = (torch.rand(5, 3, 19, generator=gen) < 0.4).to(F64)  # binary spikes
    y = bl(x)
    assert y.shape == (5, 3, 11)
    pre = y / scale
    torch.testing.assert_close(pre, pre.round(), rtol=0, atol=1e-9)  # integer synaptic counts
    assert torch.equal(pre.round(), x @ codes.T)
    torch.testing.assert_close(y, x @ bl.effective_weight().T, rtol=1e-12, atol=1e-12)


def test_absmean_scale_is_mean_abs_weight(gen):
    bl = gaussian_layer(30, 20, gen)
    assert bl.ternary().scale.item() == pytest.approx(bl.weight.abs().mean().item() + 1e-5,
                                                      rel=1e-12)


def test_bias_is_added(gen):
    bl = BitLinear(4, 3, bias=True, dtype=F64)
    with torch.no_grad():
        bl.bias.copy_(torch.tensor([1.0, -2.0, 0.5]))
    x = torch.randn(2, 4, generator=gen, dtype=F64)
    torch.testing.assert_close(bl(x), x @ bl.effective_weight().T + bl.bias.detach())


@pytest.mark.parametrize("banks", [None, 3])
@pytest.mark.parametrize("quant,kw", [("absmean", {}), ("fixed", {"fixed_scale": 0.1}),
                                      ("float", {})])
def test_ste_gradient_equals_float_linear_on_effective_weight(banks, quant, kw, gen):
    bl = gaussian_layer(9, 6, gen, quant, banks=banks, **kw)
    xs = (4, 3, 9) if banks else (4, 9)
    x = torch.randn(xs, generator=gen, dtype=F64, requires_grad=True)
    g = torch.randn((*xs[:-1], 6), generator=gen, dtype=F64)
    (bl(x) * g).sum().backward()
    w_eff = bl.effective_weight().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y_ref = (torch.einsum("bmi,moi->bmo", x2, w_eff) if banks
             else torch.nn.functional.linear(x2, w_eff))
    (y_ref * g).sum().backward()
    assert bl.weight.grad.abs().sum() > 0
    torch.testing.assert_close(bl.weight.grad, w_eff.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-12, atol=1e-12)


def test_sum_output_gradient_closed_form(gen):
    """d sum(y) / dw[o, i] = sum over tokens of x[:, i] (same for every output row)."""
    bl = gaussian_layer(7, 5, gen)
    x = torch.randn(10, 7, generator=gen, dtype=F64)
    bl(x).sum().backward()
    torch.testing.assert_close(bl.weight.grad, x.sum(0).expand(5, 7), rtol=1e-12, atol=1e-12)


def test_quantized_output_error_for_gaussian_weights(gen):
    """Relative output error of absmean ternary vs the float layer: 0.513 expected (see
    tests/functional/test_ternary.py for the integral); 256 x 256 weights, 512 tokens."""
    q = gaussian_layer(256, 256, gen)
    f = BitLinear(256, 256, quant="float", dtype=F64)
    with torch.no_grad():
        f.weight.copy_(q.weight)
    x = torch.randn(512, 256, generator=gen, dtype=F64)
    with torch.no_grad():
        err = float((q(x) - f(x)).norm() / f(x).norm())
    assert 0.49 < err < 0.54


def test_activation_quantization_error_bound(gen):
    bl = gaussian_layer(64, 16, gen, act_bits=8)
    ref = gaussian_layer(64, 16, gen)
    with torch.no_grad():
        ref.weight.copy_(bl.weight)
    x = torch.randn(20, 64, generator=gen, dtype=F64) * 3
    codes, scale = ref.ternary()
    nnz = codes.detach().abs().sum(1)  # [16]
    bound = scale * nnz[None, :] * x.abs().amax(-1, keepdim=True) / 254
    with torch.no_grad():
        diff = (bl(x) - ref(x)).abs()
    assert bool((diff <= bound * (1 + 1e-9)).all())
    assert float(diff.max()) > 0


def test_fixed_mode_with_sparse_init(gen):
    bl = BitLinear(200, 100, quant="fixed", fixed_scale=0.25, dtype=F64)
    bl.init_sparse_(0.2, generator=gen)
    w = bl.weight.detach()
    assert set(w.unique().tolist()) == {-0.25, 0.0, 0.25}
    # density: 20000 Bernoulli(0.2) draws, std 0.0028
    assert abs(float((w != 0).double().mean()) - 0.2) < 0.015
    assert abs(float((w > 0).double().mean()) - 0.1) < 0.015
    assert torch.equal(bl.effective_weight(), w)
    again = BitLinear(200, 100, quant="fixed", fixed_scale=0.25, dtype=F64)
    again.init_sparse_(0.2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.weight, bl.weight)  # reproducible from the seed
    with pytest.raises(ParameterError, match="^density:"):
        bl.init_sparse_(1.5)


def test_threshold_mode_constructs_with_fixed_tau(gen):
    bl = BitLinear(8, 4, quant="threshold", tau=0.2)
    assert float(bl.tau) == pytest.approx(0.2)
    assert "tau" not in dict(bl.named_parameters())
    x = torch.randn(3, 8, generator=gen)
    assert bl(x).shape == (3, 4)


def test_threshold_mode_with_learned_tau(gen):
    bl = BitLinear(8, 4, quant="threshold", tau=0.2, learn_tau=True, dtype=F64)
    assert "tau" in dict(bl.named_parameters())
    x = (torch.rand(6, 8, generator=gen) < 0.5).to(F64)
    codes = bl.ternary().codes.detach()
    # the sigmoid relaxation of tau must not perturb the forward value: exact codes, so the
    # synaptic sums of binary inputs are exact integers
    assert bool(((codes == -1) | (codes == 0) | (codes == 1)).all())
    pre = x @ codes.T
    assert torch.equal(pre, pre.round())
    bl(x).pow(2).sum().backward()
    assert bl.tau.grad is not None


def test_banked_layer_matches_separate_layers(gen):
    bank = gaussian_layer(6, 4, gen, banks=3)
    x = torch.randn(5, 3, 6, generator=gen, dtype=F64)
    y = bank(x)
    assert y.shape == (5, 3, 4)
    for m in range(3):
        one = BitLinear(6, 4, dtype=F64)
        with torch.no_grad():
            one.weight.copy_(bank.weight[m])
        torch.testing.assert_close(y[:, m], one(x[:, m]), rtol=1e-12, atol=1e-12)
        assert torch.equal(bank.effective_weight()[m], one.effective_weight())


@pytest.mark.parametrize("kwargs,name", [
    (dict(in_features=0, out_features=3), "in_features"),
    (dict(in_features=-2, out_features=3), "in_features"),
    (dict(in_features=3, out_features=0), "out_features"),
    (dict(in_features=3, out_features=2, banks=0), "banks"),
    (dict(in_features=3, out_features=2, quant="binary"), "quant"),
    (dict(in_features=3, out_features=2, quant="threshold"), "tau"),
    (dict(in_features=3, out_features=2, quant="fixed"), "fixed_scale"),
    (dict(in_features=3, out_features=2, quant="fixed", fixed_scale=-1.0), "fixed_scale"),
])
def test_bad_construction_names_the_parameter(kwargs, name):
    with pytest.raises(ParameterError, match=f"^{name}:"):
        BitLinear(**kwargs)


def test_wrong_input_shapes_name_x():
    with pytest.raises(ShapeError, match="^x:"):
        BitLinear(4, 3)(torch.zeros(2, 5))
    with pytest.raises(ShapeError, match="^x:"):
        BitLinear(4, 3, banks=2)(torch.zeros(5, 3, 4))  # bank axis 3 != 2
    with pytest.raises(ShapeError, match="^x:"):
        BitLinear(4, 3, banks=2)(torch.zeros(4))


def test_freeze_reuses_codes_and_unfreeze_restores(gen):
    bl = gaussian_layer(10, 4, gen)
    x = torch.randn(3, 10, generator=gen, dtype=F64)
    y = bl(x).detach()
    bl.freeze()
    torch.testing.assert_close(bl(x), y, rtol=0, atol=0)
    with torch.no_grad():
        bl.weight.mul_(-1)  # frozen: the forward does not see the change
    torch.testing.assert_close(bl(x), y, rtol=0, atol=0)
    bl.unfreeze()
    torch.testing.assert_close(bl(x), -y, rtol=0, atol=0)


def test_default_init_is_kaiming_uniform(gen):
    bl = BitLinear(100, 50)
    bound = 1 / math.sqrt(100)
    assert float(bl.weight.detach().abs().max()) <= bound
    assert float(bl.weight.detach().abs().max()) > 0.9 * bound


def test_forward_shared_equals_expanded_input():
    """One GEMM over [M*out, in] equals the banked layer on the input expanded to M banks."""
    torch.manual_seed(0)
    layer = BitLinear(12, 5, banks=3).double()
    x = torch.randn(4, 7, 12, dtype=torch.float64)
    ref = layer(x.unsqueeze(-2).expand(4, 7, 3, 12))
    out = layer.forward_shared(x)
    assert out.shape == (4, 7, 3, 5)
    assert (out - ref).abs().max() < 1e-12
    with pytest.raises(ShapeError, match="banked"):
        BitLinear(12, 5).forward_shared(x)
