"""Sparse Bayesian Layer, MoIE, DynSIHA and their losses: hand-computed values and invariants."""
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence
from torch.nn import functional as F

from neurobit.errors import ParameterError, ShapeError
from neurobit.models.gpt import KVCache
from neurobit.models.sparse_bayesian import (DynSIHA, MoIE, SparseBayesianLinear,
                                             activation_rate, kl_dynamic_prior, surprise,
                                             surprise_gate_loss)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _hand_layer():
    """mu = [[1, 2], [-1, 1]], std = [[1, .5], [2, 1]], g = [.5, 0] -> keys [[1, 1], [-2, 1]]."""
    sbl = SparseBayesianLinear(2, 2)
    std = torch.tensor([[1.0, 0.5], [2.0, 1.0]])
    with torch.no_grad():
        sbl.mu.copy_(torch.tensor([[1.0, 2.0], [-1.0, 1.0]]))
        sbl.sigma.copy_(torch.log(torch.expm1(std)))
        sbl.g.copy_(torch.tensor([0.5, 0.0]))
    return sbl


def test_sbl_output_equals_hand_computed_case():
    sbl = _hand_layer()
    x = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
    out = sbl(x)
    r2 = math.sqrt(2.0)
    # token 1: scores = [2+1, -4+1]/sqrt2; gate = [3/sqrt2 - .5, 0]; x mu^T = [4, -1]
    # token 2: scores = [1, 1]/sqrt2;      gate = [1/sqrt2 - .5, 1/sqrt2]; x mu^T = [2, 1]
    gate = torch.tensor([[3 / r2 - 0.5, 0.0], [1 / r2 - 0.5, 1 / r2]])
    y = torch.tensor([[(3 / r2 - 0.5) * 4, 0.0], [(1 / r2 - 0.5) * 2, 1 / r2]])
    torch.testing.assert_close(out.gate, gate, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.y, y, rtol=1e-6, atol=1e-6)
    assert float(activation_rate(out.gate)) == pytest.approx(0.75)


def test_activation_rate_follows_the_threshold():
    torch.manual_seed(0)
    sbl = SparseBayesianLinear(64, 128)
    x = F.rms_norm(torch.randn(8, 16, 64), (64,))
    rate0 = float(activation_rate(sbl(x).gate))
    assert 0.35 < rate0 < 0.65           # g = 0, symmetric scores: about half the gates open
    with torch.no_grad():
        sbl.g.fill_(0.1)
    rate1 = float(activation_rate(sbl(x).gate))
    assert 0.05 < rate1 < rate0 - 0.1    # a higher threshold closes gates
    with torch.no_grad():
        sbl.g.fill_(10.0)
    assert float(activation_rate(sbl(x).gate)) == 0.0
    assert float(sbl(x).y.detach().abs().max()) == 0.0


@pytest.mark.parametrize("kind", ["moie", "dynsiha"])
def test_checkpointed_bf16_run_matches_plain_run(kind):
    torch.manual_seed(1)
    block = MoIE(32, 64) if kind == "moie" else DynSIHA(32, 4)
    x0 = torch.randn(2, 12, 32)

    def run(ckpt):
        x = x0.clone().requires_grad_(True)
        block.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = block(x, checkpoint=ckpt)
            y = out[0]
        (y.float() ** 2).mean().backward()
        grads = [p.grad.clone() for p in block.parameters()]
        gates = [o.gate for o in out[-1]]
        return y.detach(), x.grad.clone(), grads, gates

    y0, gx0, g0, gate0 = run(False)
    y1, gx1, g1, gate1 = run(True)
    with torch.no_grad():
        y32 = block(x0)[0]
    # autocast really ran in bfloat16 (the float32 result differs), and the two bf16 runs agree
    assert 1e-5 < float((y32 - y0.float()).abs().max()) < 0.1 * float(y32.abs().max())
    assert torch.equal(y0, y1)
    for a, b in zip(gate0, gate1):
        assert torch.equal(a, b)
    torch.testing.assert_close(gx1, gx0, rtol=1e-2, atol=1e-4)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=1e-2, atol=1e-4)
    assert all(float(g.abs().sum()) > 0 for g in g1)


def test_kl_dynamic_prior_matches_torch_distributions():
    torch.manual_seed(2)
    sbl = SparseBayesianLinear(5, 4)
    with torch.no_grad():
        sbl.sigma.copy_(torch.randn(4, 5))
    s = sbl.std()
    sp = torch.sqrt((sbl.mu ** 2 + s ** 2).mean())
    ref = kl_divergence(Normal(sbl.mu, s), Normal(torch.zeros(()), sp)).mean()
    kl = kl_dynamic_prior(sbl)
    torch.testing.assert_close(kl, ref, rtol=1e-5, atol=1e-6)
    assert float(kl.detach()) > 0.01
    # zero means and one spread: the prior equals every posterior, KL = 0
    with torch.no_grad():
        sbl.mu.zero_()
        sbl.sigma.fill_(0.3)
    assert abs(float(kl_dynamic_prior(sbl).detach())) < 1e-6


def test_surprise_is_the_gradient_norm_of_the_summed_loss():
    sbl = _hand_layer()
    x = torch.tensor([[[2.0, 1.0], [0.0, 1.0], [1.0, 1.0]]])        # [1, 3, 2]
    target = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]]])
    y = sbl(x).y
    loss = ((y - target) ** 2).sum(-1).mean()                        # mean over 3 tokens
    s = surprise(loss, [y], n_tokens=3)[0]
    hand = 2 * (y - target).norm(dim=-1)                             # d/dy sum ||y - t||^2
    torch.testing.assert_close(s, hand.detach(), rtol=1e-6, atol=1e-6)
    gl = surprise_gate_loss(loss, [y], n_tokens=3)
    torch.testing.assert_close(gl, (hand ** 2).mean(), rtol=1e-6, atol=1e-6)
    gl.backward()
    assert float(sbl.g.grad.abs().sum()) > 0 and float(sbl.sigma.grad.abs().sum()) > 0


def test_minimising_the_gate_loss_lowers_surprise():
    torch.manual_seed(3)
    teacher = SparseBayesianLinear(8, 8, g_init=-0.5)
    sbl = SparseBayesianLinear(8, 8)
    x = torch.randn(32, 8)
    with torch.no_grad():
        target = 3 * teacher(x).y                  # reachable by an SBL
    opt = torch.optim.Adam(sbl.parameters(), lr=0.02)
    first = None
    for _ in range(40):
        y = sbl(x).y
        gl = surprise_gate_loss(((y - target) ** 2).sum(-1).mean(), [y], 32)
        first = float(gl.detach()) if first is None else first
        opt.zero_grad()
        gl.backward()
        opt.step()
    assert float(gl.detach()) < 0.3 * first


def test_dynsiha_kv_cache_matches_full_pass():
    torch.manual_seed(4)
    attn = DynSIHA(16, 2)
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        full, cache, _ = attn(x)
        y, c, _ = attn(x[:, :5])
        parts = [y]
        for t in range(5, 9):
            y, c, _ = attn(x[:, t:t + 1], c, pos0=t)
            parts.append(y)
    assert isinstance(c, KVCache) and c.k.shape == (2, 2, 9, 8)
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c.v, cache.v, rtol=1e-6, atol=1e-6)
    # a wrong position (no pos0) changes the rotary keys, so the check above is not vacuous
    with torch.no_grad():
        y_bad, _, _ = attn(x[:, 5:6], attn(x[:, :5])[1], pos0=0)
    assert float((y_bad - full[:, 5:6]).abs().max()) > 1e-3


def test_bad_input_names_the_parameter():
    with pytest.raises(ParameterError, match="d_in"):
        SparseBayesianLinear(0, 3)
    with pytest.raises(ParameterError, match="sigma_init"):
        SparseBayesianLinear(2, 3, sigma_init=0.0)
    with pytest.raises(ShapeError, match="x"):
        SparseBayesianLinear(4, 3)(torch.zeros(2, 5))
    with pytest.raises(ParameterError, match="n_heads"):
        DynSIHA(12, 4)   # head size 3 is odd
    with pytest.raises(ShapeError, match="main_loss"):
        surprise_gate_loss(torch.zeros(3), [], 3)
