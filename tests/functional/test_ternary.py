"""Ternary weight quantization and 8-bit activation quantization (neurobit.functional.ternary).

Reference numbers derived here:

* absmean on W ~ N(0, sigma^2): gamma = E|w| = sigma sqrt(2/pi); a weight is zeroed when
  |w| < gamma / 2, i.e. a fraction 2 Phi(sqrt(2/pi)/2) - 1 = 0.3101; the relative Frobenius
  error ||gamma Q(W) - W|| / ||W|| tends to sqrt(E[(w - q(w))^2]) / sigma = 0.5132 (the integral
  is evaluated below with scipy). For a 512 x 512 matrix the sampling error of that ratio is
  ~1e-3, so the test allows 0.01. For i.i.d. Gaussian inputs the relative output error of
  x W^T has the same expectation, asserted within 0.02 (256 tokens).
* absmax b-bit activations: step = max|x| / (2^(b-1) - 1); rounding error <= step / 2, i.e.
  max|x| / 254 per token for 8 bits.
"""
import math

import pytest
import torch
from scipy import integrate, stats

from neurobit.errors import ParameterError
from neurobit.functional.ternary import (EPS, quantize_activations_absmax, ste,
                                         ternarize_absmean, ternarize_threshold, ternary_ste)

F64 = torch.float64


def gaussian_absmean_error():
    g = math.sqrt(2 / math.pi)
    c = g / 2
    zero = integrate.quad(lambda w: w * w * stats.norm.pdf(w), 0, c)[0]
    kept = integrate.quad(lambda w: (w - g) ** 2 * stats.norm.pdf(w), c, math.inf)[0]
    return math.sqrt(2 * zero + 2 * kept), 2 * stats.norm.cdf(c) - 1


def test_absmean_codes_and_scale(gen):
    w = torch.randn(33, 17, generator=gen, dtype=F64) * 0.3
    q = ternarize_absmean(w)
    assert set(q.codes.unique().tolist()) == {-1.0, 0.0, 1.0}
    assert q.scale.item() == pytest.approx(w.abs().mean().item() + EPS, rel=1e-14)
    # each code is the nearest of {-1, 0, 1} to w / gamma
    r = w / q.scale
    expect = torch.where(r.abs() < 0.5, 0.0, torch.sign(r)).to(F64)
    assert torch.equal(q.codes, expect)


def test_absmean_per_leading_scale(gen):
    w = torch.randn(4, 6, 5, generator=gen, dtype=F64) * torch.tensor([0.1, 1.0, 3.0, 0.5],
                                                                     dtype=F64)[:, None, None]
    q = ternarize_absmean(w, per_leading=True)
    assert q.scale.shape == (4, 1, 1)
    for m in range(4):
        assert q.scale[m].item() == pytest.approx(w[m].abs().mean().item() + EPS, rel=1e-14)
        assert torch.equal(q.codes[m], ternarize_absmean(w[m]).codes)


def test_absmean_error_on_gaussian_weights_matches_analytic_value(gen):
    expected, zero_frac = gaussian_absmean_error()
    assert expected == pytest.approx(0.5132, abs=1e-3)  # the integral itself
    w = torch.randn(512, 512, generator=gen, dtype=F64) * 0.05
    q = ternarize_absmean(w)
    w_eff = q.codes * q.scale
    assert abs(float((w_eff - w).norm() / w.norm()) - expected) < 0.01
    assert abs(float((q.codes == 0).double().mean()) - zero_frac) < 0.01
    x = torch.randn(256, 512, generator=gen, dtype=F64)
    out_err = float((x @ w_eff.T - x @ w.T).norm() / (x @ w.T).norm())
    assert abs(out_err - expected) < 0.02


def test_threshold_form(gen):
    w = torch.randn(40, 30, generator=gen, dtype=F64)
    tau = 0.7
    q = ternarize_threshold(w, tau)
    small = w.abs() < tau
    assert not q.codes[small].any()
    assert torch.equal(q.codes[~small], torch.sign(w[~small]))
    assert q.scale.item() == pytest.approx(w.abs()[~small].mean().item() + EPS, rel=1e-12)
    # tau = 0 keeps every (non-zero) weight: scale = mean |W|
    q0 = ternarize_threshold(w, 0.0)
    assert torch.equal(q0.codes, torch.sign(w))
    assert q0.scale.item() == pytest.approx(w.abs().mean().item() + EPS, rel=1e-12)
    with pytest.raises(ParameterError, match="^tau:"):
        ternarize_threshold(w, -0.1)


def test_threshold_form_per_leading(gen):
    w = torch.randn(3, 8, 8, generator=gen, dtype=F64)
    q = ternarize_threshold(w, 0.5, per_leading=True)
    for m in range(3):
        kept = w[m].abs()[w[m].abs() >= 0.5]
        assert q.scale[m].item() == pytest.approx(kept.mean().item() + EPS, rel=1e-12)


def test_fixed_mode():
    w = torch.tensor([0.1, 0.13, -0.2, 0.9, -5.0, 0.0, 0.24], dtype=F64)
    q = ternary_ste(w, "fixed", fixed_scale=0.25)
    # w / 0.25 = [0.4, 0.52, -0.8, 3.6, -20, 0, 0.96] -> round, clip
    assert q.codes.tolist() == [0.0, 1.0, -1.0, 1.0, -1.0, 0.0, 1.0]
    assert q.scale.item() == 0.25
    with pytest.raises(ParameterError, match="^fixed_scale:"):
        ternary_ste(w, "fixed")
    with pytest.raises(ParameterError, match="^fixed_scale:"):
        ternary_ste(w, "fixed", fixed_scale=0.0)


def test_float_mode_is_identity(gen):
    w = torch.randn(5, 4, generator=gen, requires_grad=True)
    q = ternary_ste(w, "float")
    assert q.codes is w and q.scale.item() == 1.0


@pytest.mark.parametrize("mode,kw", [("absmean", {}), ("threshold", {"tau": 0.4}),
                                     ("fixed", {"fixed_scale": 0.3})])
def test_ste_gradient_is_identity_on_effective_weight(mode, kw, gen):
    """codes = w / scale + (Q - w / scale).detach(): d(scale * codes)/dw = identity."""
    w = torch.randn(6, 7, generator=gen, dtype=F64, requires_grad=True)
    q = ternary_ste(w, mode, **kw)
    eff = q.codes * q.scale
    assert set(q.codes.detach().unique().tolist()) <= {-1.0, 0.0, 1.0}
    g = torch.randn(6, 7, generator=gen, dtype=F64)
    (eff * g).sum().backward()
    torch.testing.assert_close(w.grad, g, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("mode,kw", [("absmean", {}), ("threshold", {"tau": 0.3}),
                                     ("fixed", {"fixed_scale": 0.1})])
def test_ste_codes_are_exactly_ternary(mode, kw, dtype, gen):
    """The STE must not perturb the forward value: codes exactly in {-1, 0, +1} (BitLinear
    relies on integer pre-scale sums), also for weights far beyond the scale."""
    w = torch.randn(128, 128, generator=gen, dtype=dtype) * 2
    q = ternary_ste(w.requires_grad_(), mode, **kw)
    c = q.codes.detach()
    assert bool(((c == -1) | (c == 0) | (c == 1)).all())


def test_learned_tau_gets_a_gradient_and_keeps_exact_codes(gen):
    w = torch.randn(64, 64, generator=gen, dtype=F64)
    tau = torch.tensor(0.5, dtype=F64, requires_grad=True)
    q = ternary_ste(w, "threshold", tau=tau)
    # forward value unchanged by the sigmoid relaxation: exactly the threshold codes
    assert torch.equal(q.codes.detach(), ternarize_threshold(w, 0.5).codes)
    (q.codes * w.sign()).sum().backward()  # more kept weights -> larger; d/dtau < 0
    assert tau.grad is not None and tau.grad.item() < 0


def test_unknown_mode_and_missing_tau():
    w = torch.zeros(2, 2)
    with pytest.raises(ParameterError, match="^quant:"):
        ternary_ste(w, "binary")
    with pytest.raises(ParameterError, match="^tau:"):
        ternary_ste(w, "threshold")


def test_ste_helper(gen):
    x = torch.randn(5, generator=gen, requires_grad=True)
    xq = torch.round(x.detach())
    y = ste(x, xq)
    assert torch.equal(y.detach(), xq)
    (y * torch.arange(5.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(5.0))


@pytest.mark.parametrize("bits", [8, 4])
def test_activation_quantization_error_bound(bits, gen):
    x = torch.randn(64, 96, generator=gen, dtype=F64) * torch.rand(64, 1, generator=gen,
                                                                   dtype=F64) * 10
    xq = quantize_activations_absmax(x, bits)
    qmax = 2 ** (bits - 1) - 1
    amax = x.abs().amax(-1, keepdim=True)
    err = (xq - x).abs()
    assert bool((err <= amax / (2 * qmax) * (1 + 1e-12)).all())
    assert float(err.max()) > 0.5 * float((amax / (2 * qmax)).min())  # the bound is nearly met
    levels = xq * qmax / amax  # integers in [-qmax, qmax] per token
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-9)
    assert int((levels.round().unique()).numel()) <= 2 * qmax + 1
    if bits == 8:  # the documented number
        assert bool((err <= amax / 254 * (1 + 1e-12)).all())


def test_activation_quantization_ste_and_zero_token(gen):
    x = torch.randn(3, 8, generator=gen, requires_grad=True)
    xq = quantize_activations_absmax(torch.cat([x, torch.zeros(1, 8)]))
    assert torch.isfinite(xq).all() and not xq[-1].any()
    xq.sum().backward()
    assert torch.equal(x.grad, torch.ones(3, 8))


@pytest.mark.parametrize("bits", [1, 17])
def test_activation_quantization_rejects_bits(bits):
    with pytest.raises(ParameterError, match="^bits:"):
        quantize_activations_absmax(torch.ones(2, 2), bits)
