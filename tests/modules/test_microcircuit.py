"""MicroCircuit and MicroCircuitBank against a reference composed from neurobit.functional.

Per step: u_t = W_in x_t + W_rec s_{t-1} + feedback_t; v_t = alpha v_{t-1} + u_t - beta s_{t-1};
s_t = 1[v_t > theta]; y_t = W_out s_t, with W = scale * codes (BitLinear.effective_weight()).
"""
import pytest
import torch

from neurobit.errors import ParameterError, ShapeError
from neurobit.functional.lif import initial_state, lif_step
from neurobit.modules import MicroCircuit, MicroCircuitBank

F64 = torch.float64
LIF = dict(alpha=0.85, theta=1.0)


def make_circuit(gen, n_in=12, n_units=20, n_out=5, recurrent=True, **kw):
    c = MicroCircuit(n_in, n_units, n_out, recurrent=recurrent, **{**LIF, **kw}).double()
    with torch.no_grad():
        for layer, std in ((c.w_in, 0.6), (c.w_rec, 0.3), (c.w_out, 1.0)):
            if layer is not None:
                layer.weight.normal_(0, std, generator=gen)
    return c


def spikes_in(gen, T=40, B=3, n_in=12, p=0.3):
    return (torch.rand(T, B, n_in, generator=gen) < p).to(F64)


def reference(c, x_seq, feedback=None):
    """The documented update, from the effective weights and lif_step."""
    w_in, w_out = c.w_in.effective_weight(), c.w_out.effective_weight()
    w_rec = c.w_rec.effective_weight() if c.w_rec is not None else None
    state = initial_state((x_seq.shape[1], c.n_units), F64)
    out = []
    for t, x in enumerate(x_seq.unbind(0)):
        u = x @ w_in.T
        if w_rec is not None:
            u = u + state.s @ w_rec.T
        if feedback is not None:
            u = u + feedback[t]
        s, state = lif_step(u, state, c.lif.params)
        out.append(s)
    s = torch.stack(out)
    return s @ w_out.T, s, state


@pytest.mark.parametrize("recurrent", [True, False])
@pytest.mark.parametrize("quant,kw", [("absmean", {}), ("fixed", {"fixed_scale": 0.5}),
                                      ("threshold", {}), ("float", {})])
def test_forward_matches_reference(recurrent, quant, kw, gen):
    c = make_circuit(gen, recurrent=recurrent, quant=quant, **kw)
    x = spikes_in(gen)
    out = c(x)
    y_ref, s_ref, st_ref = reference(c, x)
    assert out.spikes.shape == (40, 3, 20) and out.y.shape == (40, 3, 5)
    assert 0.02 < float(s_ref.detach().mean()) < 0.7
    assert torch.equal(out.spikes, s_ref)
    torch.testing.assert_close(out.y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.state.lif.v, st_ref.v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("recurrent", [True, False])
def test_forward_matches_step_loop_with_feedback(recurrent, gen):
    c = make_circuit(gen, recurrent=recurrent)
    x = spikes_in(gen)
    fb = torch.randn(40, 3, 20, generator=gen, dtype=F64) * 0.3
    out = c(x, feedback=fb)
    state = c.initial_state(3, F64)
    ys, ss = [], []
    for t in range(40):
        y, s, state = c.step(x[t], state, fb[t])
        ys.append(y)
        ss.append(s)
    assert torch.equal(out.spikes, torch.stack(ss))
    torch.testing.assert_close(out.y, torch.stack(ys), rtol=1e-12, atol=1e-12)
    y_ref, s_ref, _ = reference(c, x, fb)
    assert torch.equal(out.spikes, s_ref)
    assert not torch.equal(c(x).spikes, out.spikes)  # the feedback mattered


def test_state_carries_across_calls(gen):
    c = make_circuit(gen)
    x = spikes_in(gen)
    full = c(x)
    a = c(x[:17])
    b = c(x[17:], a.state)
    assert torch.equal(torch.cat([a.spikes, b.spikes]), full.spikes)
    torch.testing.assert_close(b.state.lif.v, full.state.lif.v, rtol=0, atol=0)


def test_no_readout(gen):
    c = MicroCircuit(4, 6, None, alpha=0.9)
    out = c(torch.ones(5, 2, 4))
    assert out.y is None and out.spikes.shape == (5, 2, 6) and c.w_out is None


@pytest.mark.parametrize("recurrent", [True, False])
def test_snntorch_backend_equals_native(recurrent, gen):
    nat = make_circuit(gen, recurrent=recurrent)
    snn = MicroCircuit(12, 20, 5, recurrent=recurrent, backend="snntorch", **LIF).double()
    snn.load_state_dict(nat.state_dict())
    x = torch.rand(60, 3, 12, generator=gen, dtype=F64)  # float (not binary) input
    a, b = nat(x), snn(x)
    assert 0.02 < float(a.spikes.detach().mean()) < 0.7
    assert torch.equal(a.spikes, b.spikes)
    torch.testing.assert_close(a.y, b.y, rtol=0, atol=0)


def test_gradients_reach_all_synapses(gen):
    c = make_circuit(gen)
    out = c(spikes_in(gen))
    out.y.sum().backward()
    for layer in (c.w_in, c.w_rec, c.w_out):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------- MicroCircuitBank
def make_bank_and_circuits(gen, M=3, n_in=12, n_units=20, n_out=5, **kw):
    bank = MicroCircuitBank(M, n_in, n_units, n_out, **{**LIF, **kw}).double()
    with torch.no_grad():
        for layer, std in ((bank.w_in, 0.6), (bank.w_rec, 0.3), (bank.w_out, 1.0)):
            scale = torch.tensor([1.0, 0.5, 2.0], dtype=F64)[:M, None, None]  # per-circuit scales
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen, dtype=F64) * std
                               * scale)
    circuits = []
    for m in range(M):
        c = MicroCircuit(n_in, n_units, n_out, **{**LIF, **kw}).double()
        with torch.no_grad():
            for mine, banked in ((c.w_in, bank.w_in), (c.w_rec, bank.w_rec),
                                 (c.w_out, bank.w_out)):
                mine.weight.copy_(banked.weight[m])
        circuits.append(c)
    return bank, circuits


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("quant,kw", [("absmean", {}), ("fixed", {"fixed_scale": 0.5})])
def test_bank_equals_separate_circuits(binary, quant, kw, gen):
    bank, circuits = make_bank_and_circuits(gen, quant=quant, **kw)
    x = (torch.rand(40, 2, 3, 12, generator=gen) < 0.3).to(F64)  # [T, B, M, n_in]
    if not binary:
        x = x * torch.rand(x.shape, generator=gen, dtype=F64) * 2
    out = bank(x)
    assert out.spikes.shape == (40, 2, 3, 20) and out.y.shape == (40, 2, 3, 5)
    for m, c in enumerate(circuits):
        ref = c(x[:, :, m])
        assert 0.02 < float(ref.spikes.detach().mean()) < 0.7
        assert torch.equal(out.spikes[:, :, m], ref.spikes)
        torch.testing.assert_close(out.y[:, :, m], ref.y, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(out.state.lif.v[:, m], ref.state.lif.v, rtol=1e-6, atol=1e-6)


def test_bank_shared_input_equals_expanded(gen):
    bank, _ = make_bank_and_circuits(gen)
    x = spikes_in(gen)  # [T, B, n_in]
    shared = bank(x)
    banked = bank(x.unsqueeze(2).expand(40, 3, 3, 12).contiguous())
    assert torch.equal(shared.spikes, banked.spikes)
    torch.testing.assert_close(shared.y, banked.y, rtol=0, atol=0)
    # and the per-circuit dynamics differ (different weights)
    assert not torch.equal(shared.spikes[:, :, 0], shared.spikes[:, :, 1])


def test_bank_step_matches_forward(gen):
    bank, _ = make_bank_and_circuits(gen)
    x = spikes_in(gen, T=25)
    out = bank(x)
    state = bank.initial_state(3, F64)
    assert state.lif.v.shape == (3, 3, 20)
    ss = []
    for t in range(25):
        _, s, state = bank.step(x[t], state)  # shared [B, n_in] per step
        ss.append(s)
    assert torch.equal(torch.stack(ss), out.spikes)


# ----------------------------------------------------------------------- errors
@pytest.mark.parametrize("args,name", [
    ((0, 5, 2), "n_in"), ((-1, 5, 2), "n_in"), ((3, 0, 2), "n_units"), ((3, -4, 2), "n_units"),
    ((3, 5, 0), "n_out"), ((3, 5, -1), "n_out")])
def test_circuit_sizes(args, name):
    with pytest.raises(ParameterError, match=f"^{name}:"):
        MicroCircuit(*args, alpha=0.9)
    with pytest.raises(ParameterError, match=f"^{name}:"):
        MicroCircuitBank(2, *args, alpha=0.9)


@pytest.mark.parametrize("m", [0, -2])
def test_bank_size(m):
    with pytest.raises(ParameterError, match="^n_circuits:"):
        MicroCircuitBank(m, 3, 5, 2, alpha=0.9)


@pytest.mark.parametrize("kw,name", [
    (dict(quant="binary"), "quant"), (dict(backend="loihi"), "backend"),
    (dict(surrogate="nope"), "surrogate"), (dict(alpha=1.0), "alpha"),
    (dict(alpha=0.0), "alpha"), (dict(theta=0.0), "theta"), (dict(quant="fixed"), "fixed_scale")])
def test_circuit_parameters(kw, name):
    with pytest.raises(ParameterError, match=f"^{name}:"):
        MicroCircuit(3, 5, 2, **{"alpha": 0.9, **kw})


def test_circuit_input_shapes():
    c = MicroCircuit(3, 5, 2, alpha=0.9)
    for bad in (torch.zeros(4, 3), torch.zeros(4, 2, 4), torch.zeros(4, 2, 1, 3)):
        with pytest.raises(ShapeError, match="^x_seq:"):
            c(bad)
    with pytest.raises(ShapeError, match="^feedback:"):
        c(torch.zeros(4, 2, 3), feedback=torch.zeros(4, 2, 4))
    bank = MicroCircuitBank(2, 3, 5, 2, alpha=0.9)
    for bad in (torch.zeros(4, 2, 3, 3), torch.zeros(4, 2, 2, 4), torch.zeros(4, 3)):
        with pytest.raises(ShapeError, match="^x_seq:"):
            bank(bad)
