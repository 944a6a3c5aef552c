"""CorticalHub: shapes, equations, gradients, fast-weight state handling.

Checked: output shapes (equal and unequal groups); one step equals the functional pipeline
(BitLinear projections -> grouped attention with M_t -> inhibition -> readout -> feedback,
M_{t+1} from the fast-weight update); the sequence forward equals the step loop; gradients reach
every BitLinear master weight and the feedback gains; fast weights off keeps M at zero and the
scores equal those without memory (with them on the scores differ from step 1); M is cleared
at the start of each sequence; kWTA keeps k circuits per group; with ``memory_read`` the
attention output gains exactly ``s M_t^T q_i`` (zero at step 0), the sequence forward still
equals the step loop and the read carries gradient to the key and value weights through M;
bad arguments raise.
"""
import pytest
import torch

from neurobit.errors import ParameterError, ShapeError
from neurobit.functional.attention import grouped_attention
from neurobit.functional.fast_weights import fast_weight_retrieve, fast_weight_update
from neurobit.functional.inhibition import inhibit_groups
from neurobit.modules.cortical_hub import CorticalHub, HubState

F64 = torch.float64
GROUPS = [[0, 3, 5], [1, 2], [4]]


def make_hub(**kw):
    torch.manual_seed(0)
    args = dict(groups=GROUPS, dtype=F64, eta=0.5, lam=0.9, clip=0.7)
    args.update(kw)
    return CorticalHub(6, 5, 4, 3, 2, **args)


def inputs(T, B, gen):
    return torch.randn(T, B, 6, 5, generator=gen, dtype=F64)


@pytest.mark.parametrize("groups,S", [(GROUPS, 3), (2, 3), (6, 1)])
def test_step_shapes(groups, S, gen):
    hub = make_hub(groups=groups)
    st = hub.initial_state(2)
    assert st.M.shape == (2, 4, 4) and st.g.shape == (2, 3) and not st.M.any()
    out = hub.forward_step(inputs(1, 2, gen)[0], st)
    assert out.h_prime.shape == (2, 6, 4)
    assert out.g.shape == (2, 3)
    assert out.feedback.shape == (2, 6, 2)
    assert out.attn.shape == (2, 6, S)
    assert out.state.M.shape == (2, 4, 4)
    torch.testing.assert_close(out.attn.sum(-1), torch.ones(2, 6, dtype=F64))


@pytest.mark.parametrize("inhibition", ["none", "kwta", "divisive"])
def test_step_equals_the_functional_pipeline(inhibition, gen):
    hub = make_hub(inhibition=inhibition, k=1)
    with torch.no_grad():
        hub.feedback_gain.copy_(torch.arange(1.0, 7.0, dtype=F64))
    h_seq = inputs(2, 3, gen)
    st = hub.initial_state(3)
    for h in h_seq:
        out = hub.forward_step(h, st)
        q, k, v = hub.w_q(h), hub.w_k(h), hub.w_v(h)
        att, w = grouped_attention(q, k, v, hub.layout, st.M)
        hp = inhibit_groups(att, hub.layout, inhibition, k=1)
        g = hp.reshape(3, -1) @ hub.w_g.effective_weight().T
        fb = hub.w_f.effective_weight() @ g.T  # [n_feedback, B]
        torch.testing.assert_close(out.h_prime, hp, rtol=0, atol=1e-12)
        torch.testing.assert_close(out.attn, w, rtol=0, atol=1e-12)
        torch.testing.assert_close(out.g, g, rtol=0, atol=1e-12)
        for i in range(6):  # every circuit receives the same signal times its own gain
            torch.testing.assert_close(out.feedback[:, i], (i + 1) * fb.T, rtol=0, atol=1e-12)
        torch.testing.assert_close(out.state.M, fast_weight_update(st.M, k, v, 0.9, 0.5, 0.7),
                                   rtol=0, atol=1e-12)
        st = out.state
    assert st.M.abs().max() > 0


def test_sequence_forward_equals_step_loop(gen):
    hub = make_hub(inhibition="divisive")
    h_seq = inputs(6, 2, gen)
    seq = hub(h_seq)
    st = hub.initial_state(2)
    for t, h in enumerate(h_seq):
        out = hub.forward_step(h, st)
        st = out.state
        for name in ("h_prime", "g", "feedback", "attn"):
            torch.testing.assert_close(getattr(seq, name)[t], getattr(out, name),
                                       rtol=0, atol=1e-12)
    torch.testing.assert_close(seq.state.M, st.M, rtol=0, atol=1e-12)
    torch.testing.assert_close(seq.state.g, st.g, rtol=0, atol=1e-12)


def test_gradient_reaches_every_master_weight(gen):
    hub = make_hub(dtype=torch.float32, groups=2)
    h = inputs(4, 2, gen).float()
    out = hub(h)
    (out.h_prime.pow(2).sum() + out.g.pow(2).sum() + out.feedback.pow(2).sum()).backward()
    for name in ("w_q", "w_k", "w_v", "w_g", "w_f"):
        grad = getattr(hub, name).weight.grad
        assert grad is not None and torch.isfinite(grad).all()
        assert grad.abs().sum() > 0, name
    assert hub.feedback_gain.grad.abs().min() > 0


def test_fast_weights_off_keeps_memory_zero_and_drops_the_term(gen):
    h_seq = inputs(5, 2, gen)
    off = make_hub(use_fast_weights=False)
    on = make_hub(use_fast_weights=True)
    assert torch.equal(off.w_q.weight, on.w_q.weight)  # same seed: same projections
    out_off, out_on = off(h_seq), on(h_seq)
    assert torch.equal(out_off.state.M, torch.zeros(2, 4, 4, dtype=F64))
    for t, h in enumerate(h_seq):
        _, w_plain = grouped_attention(off.w_q(h), off.w_k(h), off.w_v(h), off.layout, None)
        torch.testing.assert_close(out_off.attn[t], w_plain, rtol=0, atol=1e-12)
    # with memory on, step 0 reads M_0 = 0 (same scores), later steps differ
    torch.testing.assert_close(out_on.attn[0], out_off.attn[0], rtol=0, atol=1e-12)
    assert (out_on.attn[1:] - out_off.attn[1:]).abs().max() > 1e-3
    assert out_on.state.M.abs().max() > 0


def test_memory_read_adds_the_values_of_the_memory(gen):
    h_seq = inputs(5, 2, gen)
    plain, reading = make_hub(), make_hub(memory_read=True)
    out_p, out_r = plain(h_seq), reading(h_seq)
    torch.testing.assert_close(out_r.state.M, out_p.state.M, rtol=0, atol=0)  # same writes
    torch.testing.assert_close(out_r.attn, out_p.attn, rtol=0, atol=0)        # same scores
    st = reading.initial_state(2)
    for t, h in enumerate(h_seq):
        read = 0.5 * fast_weight_retrieve(st.M, reading.w_q(h))               # s = 1/sqrt(4)
        torch.testing.assert_close(out_r.h_prime[t], out_p.h_prime[t] + read, rtol=0, atol=1e-12)
        assert (t == 0) == (read.abs().max() == 0)                             # M_0 = 0
        out = reading.forward_step(h, st)
        torch.testing.assert_close(out.g, out_r.g[t], rtol=0, atol=1e-12)      # step == sequence
        st = out.state
    # gradients through the read: the sequence pass (fast-weight scan, hand-written backward)
    # equals autograd through the step loop
    def loss_seq():
        return reading(h_seq).g.pow(2).sum()

    def loss_loop():
        st, tot = reading.initial_state(2), 0.0
        for h in h_seq:
            out = reading.forward_step(h, st)
            st, tot = out.state, tot + out.g.pow(2).sum()
        return tot

    grads = []
    for fn in (loss_seq, loss_loop):
        reading.zero_grad()
        fn().backward()
        grads.append([getattr(reading, n).weight.grad.clone() for n in ("w_q", "w_k", "w_v")])
    for a, b in zip(*grads):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_memory_cleared_at_sequence_start_and_bounded(gen):
    hub = make_hub(eta=5.0, clip=0.3)
    a, b = inputs(6, 2, gen), inputs(6, 2, gen) * 3
    out_a = hub(a)
    out_b_after_a = hub(b)
    out_b_alone = make_hub(eta=5.0, clip=0.3)(b)
    torch.testing.assert_close(out_b_after_a.h_prime, out_b_alone.h_prime, rtol=0, atol=0)
    continued = hub(b, out_a.state)  # passing the state continues the session: differs
    assert (continued.h_prime - out_b_alone.h_prime).abs().max() > 1e-3
    assert continued.state.M.abs().max() <= 0.3
    assert float(out_a.state.M.detach().abs().max()) == pytest.approx(0.3)


def test_kwta_in_the_hub_keeps_k_circuits_per_group(gen):
    hub = make_hub(groups=[[0, 1, 2], [3, 4, 5]], inhibition="kwta", k=2)
    out = hub(inputs(3, 4, gen))
    alive = out.h_prime.norm(dim=-1) > 0
    assert (alive[..., :3].sum(-1) == 2).all() and (alive[..., 3:].sum(-1) == 2).all()


def test_unscaled_scores_are_sharper(gen):
    h = inputs(1, 2, gen)[0] * 3
    scaled = make_hub().forward_step(h, make_hub().initial_state(2)).attn
    raw = make_hub(scale_scores=False).forward_step(h, make_hub().initial_state(2)).attn
    # 1/sqrt(d) = 0.5 flattens the softmax: the largest weight per row is larger without it
    big = raw.max(-1).values >= scaled.max(-1).values - 1e-12
    assert big.all() and (raw - scaled).abs().max() > 1e-3


@pytest.mark.parametrize("kw,name", [(dict(groups=4), "groups"), (dict(groups=[[0, 1]]), "groups"),
                                     (dict(inhibition="wta"), "inhibition"),
                                     (dict(inhibition="kwta", k=2), "k"),
                                     (dict(lam=1.5), "lam"), (dict(clip=-1.0), "clip"),
                                     (dict(memory_read=True, use_fast_weights=False),
                                      "memory_read")])
def test_bad_arguments_raise(kw, name):
    with pytest.raises(ParameterError, match=name):
        make_hub(**kw)


def test_shape_errors(gen):
    hub = make_hub()
    with pytest.raises(ShapeError, match="h"):
        hub.forward_step(torch.zeros(2, 5, 5, dtype=F64), hub.initial_state(2))
    with pytest.raises(ShapeError, match="state.M"):
        hub.forward_step(torch.zeros(2, 6, 5, dtype=F64), hub.initial_state(3))
    with pytest.raises(ShapeError, match="h"):
        hub(torch.zeros(2, 6, 5, dtype=F64))
    assert isinstance(hub.initial_state(1), HubState)
