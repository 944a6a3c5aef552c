"""BrainLM ablation switches ``neuron: silu``, ``mixer: mean``, ``hub_inhibition: kwta |
divisive`` (``hub_k``) and the options ``hub_residual``, ``memory_read``, ``membrane_readout:
gain | bank``: each learns, runs token by token exactly as over the sequence, computes
what its docstring says, rejects bad configs by key name, and leaves the defaults untouched."""
import pydantic
import pytest
import torch
from torch.nn import functional as F

from neurobit.compile.brain_lm import check_compilable
from neurobit.errors import ParameterError
from neurobit.models.brain_lm import BrainLM, state_numel
from neurobit.models.lm_config import BrainLMConfig

V = 13
TINY = dict(vocab_size=V, n_word_buckets=8, d_model=16, n_layers=1, n_circuits=2, n_units=8,
            d_circuit=4, d_key=4, n_heads=2, spike_steps=2, max_pos=32)
SWITCHES = {
    "silu": dict(neuron="silu"),
    "silu_mlp": dict(neuron="silu", ffn="mlp"),
    "mean": dict(mixer="mean"),
    "kwta": dict(hub_inhibition="kwta", hub_k=1),
    "divisive": dict(hub_inhibition="divisive"),
    "hub_residual": dict(hub_residual=True),
    "memory_read": dict(memory_read=True),
    "membrane_gain": dict(membrane_readout="gain"),
    "membrane_bank": dict(membrane_readout="bank"),
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    return BrainLM(BrainLMConfig(**{**TINY, **kw})).to(dtype)


def tokens(B, T, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, V, (B, T), generator=g),
            torch.randint(0, 1000, (B, T), generator=g))


@pytest.mark.parametrize("name", SWITCHES)
def test_switch_learns(name):
    """30 AdamW steps on a repeated string: the mean of the last 5 losses < 0.8 x the first."""
    text = "the cat sat on the mat and the dog ran to the log. " * 8
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    m = make(dtype=torch.float32, **{**SWITCHES[name], "vocab_size": len(chars)})
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        i = torch.randint(0, len(ids) - 13, (8,), generator=g)[:, None] + torch.arange(12)
        loss = F.cross_entropy(m(ids[i]).reshape(-1, len(chars)), ids[i + 1].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    start, end = losses[0], sum(losses[-5:]) / 5
    assert end < 0.8 * start, (name, start, end)


@pytest.mark.parametrize("name", list(SWITCHES))
def test_step_equals_run(name):
    """Token-by-token ``step`` with the carried state gives the logits of ``run``; the state
    keeps a constant size (``state_numel``) and ``mixer: mean`` carries no hub / KV state."""
    m = make(**SWITCHES[name], n_circuits=4, hub_groups=2)
    x, w = tokens(2, 10)
    full, _ = m.run(x, w)
    state, steps, sizes = m.initial_state(2), [], []
    for t in range(10):
        lg, state = m.step(x[:, t], w[:, t], state)
        steps.append(lg)
        sizes.append(state_numel(state))
    assert torch.allclose(torch.stack(steps, 1), full, rtol=0, atol=1e-10)
    assert len(set(sizes)) == 1
    blk_state = state.blocks[0]
    if name == "mean":
        assert blk_state.hub is None and blk_state.kv is None and blk_state.feedback is None
        assert sizes[0] == 2 * 2 * 4 * 8                  # v, s of [B=2, C=4, N=8] only
    if name in ("kwta", "divisive"):
        assert blk_state.hub is not None


def _hub_outputs(m, x, w):
    """Capture the HubOutput of block 0's hub during a forward pass (the batched [T, B, C, D]
    path BrainLM trains with) and the hub's input."""
    seen = {}
    hook = m.blocks[0].hub.register_forward_hook(
        lambda mod, args, out: seen.update(h=args[0], out=out))
    m(x, w)
    hook.remove()
    return seen["h"], seen["out"]


@pytest.mark.parametrize("k", [1, 2])
def test_kwta_keeps_exactly_k_circuits_per_group(k):
    """In the model's hub (C=6, 2 groups of 3): after kwta exactly k circuits per group are
    non-zero at every token, they are the k of largest ||h'_i|| before inhibition, and they
    carry the uninhibited values unchanged."""
    m = make(n_circuits=6, hub_groups=2, hub_inhibition="kwta", hub_k=k)
    hub = m.blocks[0].hub
    assert hub.inhibition == "kwta" and hub.k == k
    x, w = tokens(3, 7)
    h, out = _hub_outputs(m, x, w)
    T, B, C, d = out.h_prime.shape
    assert (T, B, C) == (7, 3, 6)
    alive = out.h_prime.norm(dim=-1) > 0                         # [T, B, C]
    assert torch.equal(alive.view(T, B, 2, 3).sum(-1), torch.full((T, B, 2), k))
    hub.inhibition = "none"
    free = hub(h).h_prime                                        # the same hub, no inhibition
    hub.inhibition = "kwta"
    assert (free.norm(dim=-1) > 0).all()                         # inhibition did the zeroing
    top = free.norm(dim=-1).view(T, B, 2, 3).topk(k, dim=-1).indices
    want = torch.zeros(T, B, 2, 3, dtype=torch.bool).scatter(-1, top, True).view(T, B, C)
    assert torch.equal(alive, want)
    assert torch.equal(out.h_prime[alive], free[alive])


def test_divisive_inhibition_in_the_model_hub():
    """h'_i = h_i / (1 + sqrt(mean_group h^2)) per feature (sigma = 1, p = 2), and g reads it."""
    m = make(n_circuits=4, hub_groups=2, hub_inhibition="divisive")
    hub = m.blocks[0].hub
    x, w = tokens(2, 6)
    h, out = _hub_outputs(m, x, w)
    hub.inhibition = "none"
    free = hub(h)
    hub.inhibition = "divisive"
    fg = free.h_prime.view(6, 2, 2, 2, -1)                       # [T, B, G, S, d]
    want = (fg / (1.0 + fg.pow(2).mean(3, keepdim=True).sqrt())).view_as(free.h_prime)
    assert torch.allclose(out.h_prime, want, rtol=0, atol=1e-12)
    assert (out.h_prime - free.h_prime).abs().max() > 1e-3      # it is not the identity
    assert (out.g - free.g).abs().max() > 1e-4                   # and the global state sees it


def test_silu_circuits_match_manual_rate_units():
    """``neuron: silu``, ``mixer: mean``: block output written out by hand with the effective
    weights, v_k = alpha v_{k-1} + u + W_rec r_{k-1} - theta r_{k-1}, r_k = silu(v_k - theta),
    over 3 tokens x 2 steps, rate = mean_k r_k, out = x + W_p mean_C(W_out rate)."""
    m = make(neuron="silu", mixer="mean", alpha=0.8, theta=0.5)
    blk = m.blocks[0]
    B, T, d, C, N = 2, 3, 16, 2, 8
    x = torch.randn(B, T, d, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    got, _ = blk(x)
    W_in = blk.bank.w_in.effective_weight()                      # [C, N, d]
    W_rec = blk.bank.w_rec.effective_weight()                    # [C, N, N]
    W_out = blk.readout.effective_weight()                       # [C, D, N]
    W_p = blk.pool.effective_weight()                            # [d, D]
    assert W_in.shape == (C, N, d) and W_rec.shape == (C, N, N) and W_p.shape == (d, 4)
    lif = blk.bank.lif.params          # 0.8, 0.5 as stored (built in float32, then float64)
    al, th, be = float(lif.alpha), float(lif.theta), float(lif.reset)
    assert abs(al - 0.8) < 1e-7 and th == be == 0.5
    a = blk.norm(x)
    v = torch.zeros(B, C, N, dtype=torch.float64)
    r = torch.zeros_like(v)
    outs = []
    for t in range(T):
        u = torch.einsum("bi,cni->bcn", a[:, t], W_in)
        acc = torch.zeros_like(v)
        for _ in range(2):
            v = al * v + u + torch.einsum("bcm,cnm->bcn", r, W_rec) - be * r
            r = (v - th) * torch.sigmoid(v - th)                 # silu, written out
            acc = acc + r
        h = torch.einsum("bcn,cdn->bcd", acc / 2, W_out)
        outs.append(x[:, t] + h.mean(1) @ W_p.T)
    want = torch.stack(outs, 1)
    assert torch.allclose(got, want, rtol=0, atol=1e-10)
    # silu's negative lobe reaches the output: relu would zero those rates
    relu = make(neuron="relu", mixer="mean", alpha=0.8, theta=0.5)
    assert (relu.blocks[0](x)[0] - got).abs().max() > 1e-4


def test_silu_mlp_hidden_activation():
    m = make(neuron="silu", ffn="mlp")
    mlp = m.blocks[0].mlp
    a = torch.randn(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    hid = a @ mlp.fc.effective_weight().T
    want = (hid * torch.sigmoid(hid)) @ mlp.out.effective_weight().T
    assert torch.allclose(mlp(a), want, rtol=0, atol=1e-12)


def test_config_errors_name_the_key():
    with pytest.raises(pydantic.ValidationError, match="hub_k"):
        BrainLMConfig(**{**TINY, "n_circuits": 4, "hub_groups": 2}, hub_inhibition="kwta",
                      hub_k=3)
    BrainLMConfig(**{**TINY, "n_circuits": 4, "hub_groups": 2}, hub_inhibition="kwta", hub_k=2)
    with pytest.raises(pydantic.ValidationError, match="hub_inhibition"):
        BrainLMConfig(**TINY, mixer="mean", hub_inhibition="divisive")
    with pytest.raises(pydantic.ValidationError, match="hub_inhibition"):
        BrainLMConfig(**TINY, hub_inhibition="softmax")
    with pytest.raises(pydantic.ValidationError, match="mixer"):
        BrainLMConfig(**TINY, mixer="max")
    with pytest.raises(pydantic.ValidationError, match="hub_k"):
        BrainLMConfig(**TINY, hub_k=0)
    for bad, key in ((dict(mixer="mean", hub_residual=True), "hub_residual"),
                     (dict(ffn="mlp", membrane_readout="gain"), "membrane_readout"),
                     (dict(membrane_readout="spikes"), "membrane_readout"),
                     (dict(fast_weights=False, memory_read=True), "memory_read"),
                     (dict(mixer="attention", memory_read=True), "memory_read")):
        with pytest.raises(pydantic.ValidationError, match=key):
            BrainLMConfig(**TINY, **bad)


def test_membrane_gain_readout_matches_manual_lif():
    """``membrane_readout: gain``, ``mixer: mean``: the block written out by hand, LIF units,
    2 steps per token: v_k = alpha v_{k-1} + u + W_rec s_{k-1} - theta s_{k-1},
    s_k = H(v_k - theta), out = x + W_p mean_C(W_out (mean_k s_k + gamma * v_2))."""
    m = make(membrane_readout="gain", mixer="mean", alpha=0.8, theta=0.5)
    blk = m.blocks[0]
    with torch.no_grad():
        blk.membrane_gain.copy_(torch.linspace(-0.5, 0.5, 16, dtype=torch.float64).view(2, 8))
    B, T = 2, 4
    x = torch.randn(B, T, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    got, _ = blk(x)
    W_in, W_rec = blk.bank.w_in.effective_weight(), blk.bank.w_rec.effective_weight()
    W_out, W_p = blk.readout.effective_weight(), blk.pool.effective_weight()
    al, th = float(blk.bank.lif.params.alpha), 0.5
    a = blk.norm(x)
    v = torch.zeros(B, 2, 8, dtype=torch.float64)
    s = torch.zeros_like(v)
    outs, spikes = [], 0.0
    for t in range(T):
        u = torch.einsum("bi,cni->bcn", a[:, t], W_in)
        acc = torch.zeros_like(v)
        for _ in range(2):
            v = al * v + u + torch.einsum("bcm,cnm->bcn", s, W_rec) - th * s
            s = (v > th).double()
            acc = acc + s
        spikes += float(acc.sum())
        h = torch.einsum("bcn,cdn->bcd", acc / 2 + blk.membrane_gain * v, W_out)
        outs.append(x[:, t] + h.mean(1) @ W_p.T)
    assert torch.allclose(got, torch.stack(outs, 1), rtol=0, atol=1e-10)
    assert spikes > 0
    # the membrane term reaches the output: without it the block differs
    with torch.no_grad():
        blk.membrane_gain.zero_()
    assert (blk(x)[0] - got).abs().max() > 1e-4


@pytest.mark.parametrize("kw,key", [(dict(neuron="silu"), "neuron"),
                                    (dict(mixer="mean"), "mixer"),
                                    (dict(hub_inhibition="kwta"), "hub_inhibition")])
def test_compile_rejects_new_switches_by_name(kw, key):
    with pytest.raises(ParameterError, match=f"model.{key}"):
        check_compilable(make(**kw))


def test_defaults_unchanged():
    """A config without the new keys (as in existing checkpoints) resolves to the defaults, and
    builds, from the same seed, exactly the model of the explicit defaults: same parameter
    names, values and logits."""
    old = BrainLMConfig.model_validate({k: v for k, v in TINY.items()})
    explicit = BrainLMConfig(**TINY, neuron="lif", mixer="hub", hub_inhibition="none", hub_k=1,
                             hub_residual=False, memory_read=False, membrane_readout="none")
    assert old == explicit
    a, b = make(), make(neuron="lif", mixer="hub", hub_inhibition="none", hub_k=1)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.blocks[0].hub.inhibition == "none" and not hasattr(a.blocks[0], "pool")
    assert not a.blocks[0].hub.residual and not hasattr(a.blocks[0], "membrane_gain")
    x, w = tokens(2, 9)
    assert torch.equal(a(x, w), b(x, w))
    c = make(hub_inhibition="divisive")                          # same weights, other switch
    c.load_state_dict(sa)
    assert (c(x, w) - a(x, w)).abs().max() > 1e-6
