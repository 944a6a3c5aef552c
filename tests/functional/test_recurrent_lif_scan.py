"""recurrent_lif_scan (numba kernels, hand-written backward) against the module loop.

The oracle is the loop BrainBlock used before the kernel existed: K calls of
``MicroCircuitBank.step_from_current`` per token, spikes averaged. Forward: identical rates,
membrane and spikes (torch.equal), and the end-of-token membranes ``m`` (``membrane=True``).
Backward: gradients of a random linear loss on the rates, the end-of-token membranes and the
final state with respect to the input current, the recurrent master weights (through the
straight-through estimator), the initial state agree with autograd through the loop:
float64 to 1e-10 relative, float32 to 1e-4 (sums over many steps in another order).
"""
import pytest
import torch

from neurobit.errors import ParameterError, ShapeError
from neurobit.functional.lif import LIFParameters, LIFState
from neurobit.functional.recurrent_lif_scan import fused_ok, recurrent_lif_scan
from neurobit.modules.microcircuit import MicroCircuitState
from neurobit.modules.microcircuit_bank import MicroCircuitBank


def loop_oracle(bank, x, state, K, membrane=False):
    q = bank.w_rec.ternary()
    st, rates, membranes = MicroCircuitState(state), [], []
    for x_t in x.unbind(1):
        acc = None
        for _ in range(K):
            _, s, st = bank.step_from_current(x_t, st, None, q)
            acc = s if acc is None else acc + s
        rates.append(acc / K)
        membranes.append(st.lif.v)
    if membrane:
        return torch.stack(rates, 1), torch.stack(membranes, 1), st.lif
    return torch.stack(rates, 1), st.lif


def fused(bank, x, state, K, membrane=False):
    q = bank.w_rec.ternary()
    return recurrent_lif_scan(x, q.codes, q.scale, state, bank.lif.params, K,
                              membrane=membrane)


def make(dtype, detach_reset=True, C=3, N=16, B=4, T=12, seed=0, per_unit=False):
    torch.manual_seed(seed)
    lif = dict(alpha=0.85, theta=1.0, surrogate="fast_sigmoid", slope=4.0,
               detach_reset=detach_reset)
    if per_unit:
        lif.update(alpha=torch.rand(N, dtype=dtype) * 0.4 + 0.5,
                   theta=torch.rand(N, dtype=dtype) * 0.5 + 0.75)
    bank = MicroCircuitBank(C, 8, N, None, recurrent=True, **lif).to(dtype)
    with torch.no_grad():
        bank.w_rec.weight.mul_(3.0)  # strong recurrence: spikes depend on the recurrent input
    x = (torch.rand(B, T, C, N, dtype=dtype) * 1.6 - 0.2)
    v0 = torch.rand(B, C, N, dtype=dtype) * 0.5
    s0 = (torch.rand(B, C, N) < 0.3).to(dtype)
    return bank, x, LIFState(v0, s0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("per_unit", [False, True])
def test_forward_identical(dtype, K, per_unit):
    bank, x, st = make(dtype, per_unit=per_unit)
    with torch.no_grad():
        r_ref, m_ref, end_ref = loop_oracle(bank, x, st, K, membrane=True)
        r, m, end = fused(bank, x, st, K, membrane=True)
    assert torch.equal(r, r_ref) and torch.equal(m, m_ref)
    assert torch.equal(m[:, -1], end.v)
    assert torch.equal(end.v, end_ref.v) and torch.equal(end.s, end_ref.s)
    assert 0.05 < r.mean() < 0.9          # the test exercises spiking, not silence
    # the recurrence matters: without it the rates differ
    with torch.no_grad():
        r0, _ = recurrent_lif_scan(x, torch.zeros_like(bank.w_rec.weight), torch.tensor(1.0, dtype=dtype), st,
                                   bank.lif.params, K)
    assert not torch.equal(r0, r)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("detach_reset", [True, False])
def test_gradients_match_autograd_loop(dtype, rtol, detach_reset):
    bank, x, st = make(dtype, detach_reset=detach_reset, seed=1)
    g = torch.Generator().manual_seed(2)
    grads, w = [], None
    for fn in (loop_oracle, fused):
        bank.zero_grad()
        xx, vv, ss = (t.clone().requires_grad_() for t in (x, st.v, st.s))
        r, m, end = fn(bank, xx, LIFState(vv, ss), 2, membrane=True)
        if w is None:
            w = [torch.randn(t.shape, generator=g, dtype=dtype) for t in (r, m, end.v, end.s)]
        loss = ((w[0] * r).sum() + (w[1] * m).sum() + (w[2] * end.v).sum()
                + (w[3] * end.s).sum())
        loss.backward()
        grads.append([xx.grad, vv.grad, ss.grad, bank.w_rec.weight.grad.clone()])
    names = ["x", "v0", "s0", "w_rec"]
    for name, a, b in zip(names, *grads):
        err = (a - b).abs().max() / b.abs().max()
        assert err < rtol, f"{name}: relative error {err:.2e}"
        assert b.abs().max() > 0, name


def test_checks():
    bank, x, st = make(torch.float32)
    q = bank.w_rec.ternary()
    with pytest.raises(ShapeError, match="codes"):
        recurrent_lif_scan(x, q.codes[:, :-1], q.scale, st, bank.lif.params, 1)
    with pytest.raises(ShapeError, match="x: expected"):
        recurrent_lif_scan(x[0], q.codes, q.scale, st, bank.lif.params, 1)
    learnable = LIFParameters(alpha=torch.tensor(0.9, requires_grad=True))
    assert not fused_ok(x, learnable)
    with pytest.raises(ParameterError, match="fused scan"):
        recurrent_lif_scan(x, q.codes, q.scale, st, learnable, 1)
