"""BrainLM: shapes, causality, recurrent equivalence (step == sequence), flat generation state,
every ablation switch builds and learns, parameter matching with the GPT baseline."""
import pydantic
import pytest
import torch
from torch.nn import functional as F

from neurobit.errors import ParameterError
from neurobit.models.brain_lm import (BrainLM, brain_parameter_count, build_model,
                                      state_numel)
from neurobit.models.gpt import GPT, count_parameters, gpt_matching, gpt_parameter_count
from neurobit.models.lm_config import BrainLMConfig, LMRunConfig

V = 23
SMALL = dict(vocab_size=V, n_word_buckets=16, d_model=32, n_layers=2, n_circuits=4,
             n_units=16, d_circuit=8, d_key=8, n_heads=2, spike_steps=2, max_pos=64)
VARIANTS = {
    "default": {},
    "relu": dict(neuron="relu"),
    "gelu": dict(neuron="gelu"),
    "float": dict(weights="float"),
    "attention": dict(mixer="attention"),
    "mlp": dict(ffn="mlp"),
    "feedback": dict(hub_feedback=True),
    "sinusoidal": dict(position="sinusoidal"),
    "heterogeneous": dict(alpha_min=0.5, alpha=0.97),
    "all_standard": dict(neuron="gelu", weights="float", mixer="attention", ffn="mlp"),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    return BrainLM(BrainLMConfig(**{**SMALL, **kw})).to(dtype)


def tokens(B, T, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, V, (B, T), generator=g),
            torch.randint(0, 1000, (B, T), generator=g))


def test_shapes_and_word_ids_matter():
    m = make()
    x, w = tokens(3, 10)
    out = m(x, w)
    assert out.shape == (3, 10, V) and out.dtype == torch.float64
    assert torch.isfinite(out).all()
    assert (m(x, None) - out).abs().max() > 1e-6  # the word embedding enters


@pytest.mark.parametrize("name", ["default", "attention", "feedback", "mlp", "relu"])
def test_causal(name):
    m = make(**VARIANTS[name])
    x, w = tokens(2, 12)
    x2 = x.clone()
    x2[:, 6] = (x2[:, 6] + 5) % V
    a, b = m(x, w), m(x2, w)
    assert torch.equal(a[:, :6], b[:, :6])          # the past is untouched, exactly
    later = (a[:, 6:] - b[:, 6:]).abs().amax(-1)    # [B, 6]
    assert later[:, 0].min() > 1e-3
    if name == "mlp":  # only the hub's fast weights carry the past: weak at initialisation
        assert later[:, 1:].max() > 0
    else:              # circuits' state / attention: every later position sees the change
        assert later[:, 1:].min() > 1e-6


@pytest.mark.parametrize("name", ["default", "relu", "attention", "feedback", "mlp",
                                  "sinusoidal", "heterogeneous"])
def test_step_equals_sequence(name):
    """The recurrent equivalence: feeding tokens one at a time with the carried state gives the
    logits of the whole-sequence pass; so does splitting the sequence in two chunks."""
    m = make(**VARIANTS[name])
    x, w = tokens(2, 14)
    full = m(x, w)
    state = m.initial_state(2)
    steps = []
    for t in range(14):
        lg, state = m.step(x[:, t], w[:, t], state)
        steps.append(lg)
    assert (torch.stack(steps, 1) - full).abs().max() < 1e-5
    a, st = m.run(x[:, :5], w[:, :5])
    b, _ = m.run(x[:, 5:], w[:, 5:], st)
    assert (torch.cat([a, b], 1) - full).abs().max() < 1e-5


def test_generation_state_is_flat_while_gpt_cache_grows():
    m = make()
    gpt = GPT(gpt_matching(count_parameters(m), V, n_word_buckets=16, n_heads=2)).double()
    sizes_b, sizes_g = [], []
    sb, sg = m.initial_state(2), gpt.initial_state(2)
    x, _ = tokens(2, 64)
    for t in range(64):
        _, sb = m.step(x[:, t], None, sb)
        _, sg = gpt.step(x[:, t], None, sg)
        sizes_b.append(state_numel(sb))
        sizes_g.append(state_numel(sg))
    assert len(set(sizes_b)) == 1 and sizes_b[0] > 0
    per_token = 2 * gpt.cfg.n_layers * 2 * gpt.cfg.d_model     # k and v, per layer, B = 2
    assert [b - a for a, b in zip(sizes_g, sizes_g[1:])] == [per_token] * 63
    assert sizes_g[-1] == 64 * per_token


def test_spiking_circuits_fire_sparsely():
    """The default circuits are in a working regime: neither silent nor saturated."""
    m = make()
    x, w = tokens(4, 16)
    rates = []
    blk = m.blocks[0]
    a = blk.norm(m.embed(x, w).double())
    u = blk.bank.w_in(a.unsqueeze(-2).expand(4, 16, 4, 32))
    st = blk.bank.initial_state(4, torch.float64)
    q = blk.bank.w_rec.ternary()
    for u_t in u.unbind(1):
        r, st = blk._token(u_t, st, q, None)
        rates.append(r)
    rate = torch.stack(rates).mean().item()
    assert 0.01 < rate < 0.6


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_switch_learns(name):
    """40 AdamW steps on a repeated sentence: the loss must fall below half its start."""
    text = "the cat sat on the mat and the dog ran to the log. " * 20
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    m = make(dtype=torch.float32, n_layers=1, **{**VARIANTS[name], "vocab_size": len(chars)})
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        i = torch.randint(0, len(ids) - 17, (8,), generator=g)[:, None] + torch.arange(16)
        logits = m(ids[i])
        loss = F.cross_entropy(logits.reshape(-1, len(chars)), ids[i + 1].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    start, end = losses[0], sum(losses[-5:]) / 5
    assert start > 2.5          # ~ln(vocab) at init
    assert end < 0.5 * start, (name, start, end)


def test_switches_change_the_computation():
    x, w = tokens(2, 8)
    ref = make()(x, w)
    for name in ("relu", "gelu", "float"):
        assert (make(**VARIANTS[name])(x, w) - ref).abs().max() > 1e-4, name


def test_parameter_counts_and_gpt_matching():
    for kw in ({}, dict(mixer="attention"), dict(ffn="mlp")):
        cfg = BrainLMConfig(vocab_size=65, **kw)
        n = brain_parameter_count(cfg)
        assert n == count_parameters(build_model(cfg))
        g = gpt_matching(n, 65)
        assert abs(gpt_parameter_count(g) - n) / n <= 0.05
        assert gpt_parameter_count(g) == count_parameters(GPT(g))


def test_position_limits():
    m = make(position="learned", max_pos=8)
    x, _ = tokens(1, 8)
    m(x)
    with pytest.raises(ParameterError, match="max_pos"):
        m(tokens(1, 9)[0])
    # no position table: generation runs past any training length
    m = make()
    st = m.initial_state(1)
    st = st._replace(pos=100_000)
    lg, st = m.step(x[:, 0], None, st)
    assert torch.isfinite(lg).all() and st.pos == 100_001


def test_config_errors_name_the_key():
    with pytest.raises(pydantic.ValidationError, match="n_circuts"):
        BrainLMConfig(vocab_size=5, n_circuts=3)
    with pytest.raises(pydantic.ValidationError, match="hub_groups"):
        BrainLMConfig(vocab_size=5, n_circuits=4, hub_groups=3)
    with pytest.raises(pydantic.ValidationError, match="neuron"):
        BrainLMConfig(vocab_size=5, neuron="tanh")
    with pytest.raises(pydantic.ValidationError, match="alpha_min"):
        BrainLMConfig(vocab_size=5, alpha=0.8, alpha_min=0.9)
    run = LMRunConfig.model_validate({"model": {"kind": "gpt", "vocab_size": 7}})
    assert run.model.kind == "gpt" and run.train.steps == 1000


@pytest.mark.parametrize("name", ["default", "heterogeneous"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_fused_circuit_scan_equals_module_loop(dtype, tol, name):
    """The fused numba scan of the circuits (+ the hub's fused memory backward) against the
    per-token module loop: identical spikes, hence logits equal to rounding, and the gradients
    of every parameter agree (float64 1e-10, float32 2e-4 relative to the largest entry);
    also with a different decay per unit (``alpha_min``)."""
    m = make(dtype=dtype, **VARIANTS[name])
    x, w = tokens(3, 20)
    results = []
    for fused in (False, True):
        for blk in m.blocks:
            blk.fused_scan = fused
        m.zero_grad()
        logits = m(x, w)
        F.cross_entropy(logits.flatten(0, 1), x.flatten()).backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters()
                                          if p.grad is not None}))
    (ref, g_ref), (new, g_new) = results
    assert (new - ref).abs().max() <= tol * ref.abs().max()
    assert g_ref.keys() == g_new.keys() and len(g_ref) > 10
    for name in g_ref:
        scale = g_ref[name].abs().max()
        assert (g_new[name] - g_ref[name]).abs().max() <= tol * scale, name
