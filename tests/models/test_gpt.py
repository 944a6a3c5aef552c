"""GPT baseline: causality, KV-cache generation equals the full pass, rotary positions are
relative and unbounded, parameter matching."""
import pytest
import torch

from neurobit.errors import ParameterError
from neurobit.models.gpt import (GPT, CausalSelfAttention, count_parameters, gpt_matching,
                                 gpt_parameter_count, rotary)
from neurobit.models.lm_config import GPTConfig

V = 19


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(**kw):
    torch.manual_seed(0)
    cfg = GPTConfig(**{**dict(vocab_size=V, n_word_buckets=8, d_model=32, n_layers=2,
                              n_heads=4), **kw})
    return GPT(cfg).double()


def data(B, T, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g), torch.randint(0, 100, (B, T), generator=g)


def test_causal_and_shapes():
    m = make()
    x, w = data(2, 10)
    a = m(x, w)
    assert a.shape == (2, 10, V)
    x2 = x.clone()
    x2[:, 4] = (x2[:, 4] + 1) % V
    b = m(x2, w)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-12, rtol=0)
    assert (a[:, 4:] - b[:, 4:]).abs().amax(-1).min() > 1e-6


@pytest.mark.parametrize("weights", ["float", "ternary"])
def test_kv_cache_generation_equals_full_pass(weights):
    m = make(weights=weights)
    x, w = data(2, 12)
    full = m(x, w)
    st = m.initial_state(2)
    out = []
    for t in range(12):
        lg, st = m.step(x[:, t], w[:, t], st)
        out.append(lg)
    assert (torch.stack(out, 1) - full).abs().max() < 1e-10
    assert st.caches[0].k.shape == (2, 4, 12, 8) and st.pos == 12


def test_chunked_attention_with_cache_equals_full():
    torch.manual_seed(0)
    att = CausalSelfAttention(16, 16, 2).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    full, _ = att(x)
    a, c = att(x[:, :4])
    b, _ = att(x[:, 4:], c, pos0=4)
    assert (torch.cat([a, b], 1) - full).abs().max() < 1e-12


def test_rotary_is_relative_and_unbounded():
    """q.k after rotary depends only on the position difference, also at 16k tokens."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1, 8, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 8, generator=g, dtype=torch.float64)
    s0 = (rotary(q, 7, 1e4) * rotary(k, 3, 1e4)).sum()
    s1 = (rotary(q, 16_384 + 7, 1e4) * rotary(k, 16_384 + 3, 1e4)).sum()
    s2 = (rotary(q, 7, 1e4) * rotary(k, 5, 1e4)).sum()
    assert abs(float(s0 - s1)) < 1e-9
    assert abs(float(s0 - s2)) > 1e-3
    assert torch.allclose(rotary(q, 123, 1e4).norm(), q.norm())  # a rotation


def test_generation_past_16k_positions():
    m = make()
    st = m.initial_state(1)._replace(pos=16_384)
    lg, st = m.step(torch.tensor([3]), None, st)
    assert torch.isfinite(lg).all() and st.pos == 16_385


@pytest.mark.parametrize("target", [30_000, 120_000, 400_000, 2_000_000])
def test_gpt_matching_within_5_percent(target):
    cfg = gpt_matching(target, 65)
    n = gpt_parameter_count(cfg)
    assert abs(n - target) / target <= 0.05
    assert n == count_parameters(GPT(cfg))  # meta-device count equals the real model's


def test_gpt_matching_impossible_target():
    with pytest.raises(ParameterError, match="n_params_target"):
        gpt_matching(100, 65)


def test_kv_cache_preallocated_appends_and_branches():
    """Generation appends into a doubling buffer: step-by-step logits equal the full pass, the
    buffer is reused (O(1) appends), and a state branched twice gives each branch its own data."""
    torch.manual_seed(0)
    from neurobit.models.gpt import GPT
    from neurobit.models.lm_config import GPTConfig
    m = GPT(GPTConfig(vocab_size=11, n_word_buckets=0, d_model=16, n_layers=2, n_heads=2)).double()
    x = torch.randint(0, 11, (2, 40))
    with torch.no_grad():
        full = m(x)
        lg, st = m.run(x[:, :7])
        outs = [lg]
        for t in range(7, 40):
            lg, st = m.step(x[:, t], None, st)
            outs.append(lg[:, None])
        assert (torch.cat(outs, 1) - full).abs().max() < 1e-10
        store = st.caches[0].store
        assert store is not None and store.k.shape[2] >= 40 and store.filled == 40
        # branching: two continuations of one state do not see each other's tokens
        _, base = m.run(x[:, :10])
        a, _ = m.step(x[:, 10], None, base)
        b, _ = m.step((x[:, 10] + 1) % 11, None, base)
        a2, _ = m.step(x[:, 10], None, base)
    assert torch.equal(a, a2) and not torch.equal(a, b)
