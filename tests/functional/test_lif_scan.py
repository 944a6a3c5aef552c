"""lif_scan (numba kernels + hand-written backward) against the reference lif_loop.

Forward: identical spikes and membrane (torch.equal), since both compute
``(alpha * v + u) - beta * s`` in the same order. Backward: gradients of a random linear loss
on the spikes and on the final state (v_T, s_T) with respect to u_seq, v_0 and s_0 agree with
autograd through lif_loop to 1e-6 relative in float32 (a few float32 roundings over the
reverse recursion; measured <= 5e-7) and 1e-12 in float64 (measured ~1e-16).
"""
import pytest
import torch

from neurobit.errors import ParameterError, ShapeError
from neurobit.functional.lif import LIFParameters, LIFState, initial_state, lif_loop
from neurobit.functional.lif_scan import lif_scan
from neurobit.functional.surrogate import SURROGATES

RTOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def make_params(kind, n, dtype, gen, surrogate="fast_sigmoid", detach_reset=True):
    if kind == "scalar":
        return LIFParameters(alpha=0.87, theta=0.8, beta=0.6, surrogate=surrogate, slope=5.0,
                             detach_reset=detach_reset)
    return LIFParameters(
        alpha=torch.rand(n, generator=gen, dtype=dtype) * 0.5 + 0.45,
        theta=torch.rand(n, generator=gen, dtype=dtype) + 0.5,
        beta=torch.rand(n, generator=gen, dtype=dtype) * 1.5,
        surrogate=surrogate, slope=5.0, detach_reset=detach_reset)


def run_both(u, v0, s0, p, gen):
    """Forward both paths and backprop the same random linear loss; return both results."""
    w = None
    results = []
    for fn in (lif_loop, lif_scan):
        uu, vv, ss = (x.clone().requires_grad_() for x in (u, v0, s0))
        s, st = fn(uu, LIFState(vv, ss), p)
        if w is None:
            w = [torch.randn(x.shape, generator=gen, dtype=u.dtype) for x in (s, st.v, st.s)]
        loss = (w[0] * s).sum() + (w[1] * st.v).sum() + (w[2] * st.s).sum()
        loss.backward()
        grads = [x.grad if x.grad is not None else torch.zeros_like(x) for x in (uu, vv, ss)]
        results.append((s.detach(), st.v.detach(), st.s.detach(), grads))
    return results


def rel_err(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["scalar", "per_unit"])
@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize("shape", [(37, 3, 13), (29, 11), (41, 2, 130)])
def test_scan_equals_loop(dtype, kind, detach_reset, shape, gen):
    n = shape[-1]
    p = make_params(kind, n, dtype, gen, detach_reset=detach_reset)
    u = torch.randn(shape, generator=gen, dtype=dtype) * 0.6 + 0.3
    v0 = torch.randn(shape[1:], generator=gen, dtype=dtype)
    s0 = (torch.rand(shape[1:], generator=gen) < 0.3).to(dtype)
    (s_a, v_a, sT_a, g_a), (s_b, v_b, sT_b, g_b) = run_both(u, v0, s0, p, gen)
    assert 0.05 < float(s_a.mean()) < 0.8  # a regime with plenty of spikes and silences
    assert s_b.dtype == dtype and s_b.shape == shape
    assert torch.equal(s_a, s_b)
    assert torch.equal(v_a, v_b) and torch.equal(sT_a, sT_b)
    for name, ga, gb in zip(("u_seq", "v0", "s0"), g_a, g_b):
        if name == "s0" and detach_reset:
            assert not gb.any() and not ga.any()  # the reset carries no gradient
            continue
        assert ga.norm() > 0, name
        assert rel_err(gb, ga) <= RTOL[dtype], name


@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
@pytest.mark.parametrize("detach_reset", [True, False])
def test_scan_gradients_for_each_surrogate(surrogate, detach_reset, gen):
    dtype = torch.float64
    shape = (60, 4, 9)
    p = make_params("per_unit", shape[-1], dtype, gen, surrogate, detach_reset)
    u = torch.randn(shape, generator=gen, dtype=dtype) * 0.6 + 0.3
    v0 = torch.randn(shape[1:], generator=gen, dtype=dtype)
    s0 = (torch.rand(shape[1:], generator=gen) < 0.3).to(dtype)
    (s_a, _, _, g_a), (s_b, _, _, g_b) = run_both(u, v0, s0, p, gen)
    assert torch.equal(s_a, s_b)
    for ga, gb in zip(g_a, g_b):
        assert rel_err(gb, ga) <= RTOL[dtype] or (not ga.any() and not gb.any())
    assert g_a[0].norm() > 0


def test_scan_loss_on_spikes_only_and_state_only(gen):
    """Each loss term alone (the others' gradients are None inside the backward)."""
    dtype = torch.float64
    p = make_params("per_unit", 7, dtype, gen, detach_reset=False)
    u = torch.randn(30, 7, generator=gen, dtype=dtype) * 0.6 + 0.3
    for pick in (0, 1, 2):
        grads = []
        for fn in (lif_loop, lif_scan):
            uu = u.clone().requires_grad_()
            s, st = fn(uu, initial_state((7,), dtype), p)
            (s, st.v, st.s)[pick].pow(2).sum().backward()
            grads.append(uu.grad)
        assert grads[0].norm() > 0
        assert rel_err(grads[1], grads[0]) <= 1e-12


def test_scan_empty_sequence():
    st = LIFState(torch.tensor([0.5, 2.0]), torch.tensor([0.0, 1.0]))
    s, out = lif_scan(torch.zeros(0, 2), st, LIFParameters())
    assert s.shape == (0, 2)
    assert torch.equal(out.v, st.v) and torch.equal(out.s, st.s)
    s_ref, out_ref = lif_loop(torch.zeros(0, 2), st, LIFParameters())
    assert torch.equal(s, s_ref) and torch.equal(out.v, out_ref.v)


def test_scan_with_parameter_requiring_grad_matches_loop(gen):
    """Parameters that require grad route to lif_loop: same spikes, gradient on alpha exists."""
    alpha = torch.full((5,), 0.8, requires_grad=True)
    p = LIFParameters(alpha=alpha, theta=1.0)
    u = torch.rand(20, 5, generator=gen)
    s, st = lif_scan(u, initial_state((5,)), p)
    s_ref, _ = lif_loop(u, initial_state((5,)), p)
    assert torch.equal(s, s_ref)
    st.v.sum().backward()
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0


@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.5, -0.1])
def test_scan_rejects_alpha_outside_unit_interval(alpha):
    with pytest.raises(ParameterError, match="^alpha:"):
        lif_scan(torch.zeros(3, 2), initial_state((2,)), LIFParameters(alpha=alpha))


def test_scan_rejects_bad_per_unit_alpha():
    with pytest.raises(ParameterError, match="^alpha:"):
        lif_scan(torch.zeros(3, 2), initial_state((2,)),
                 LIFParameters(alpha=torch.tensor([0.5, 1.0])))


@pytest.mark.parametrize("field,value", [("theta", 0.0), ("theta", -1.0), ("beta", -0.5),
                                         ("slope", 0.0), ("surrogate", "sigmoidish")])
def test_scan_rejects_bad_parameters(field, value):
    p = LIFParameters()._replace(**{field: value})
    with pytest.raises(ParameterError, match=f"^{field}:"):
        lif_scan(torch.zeros(3, 2), initial_state((2,)), p)


@pytest.mark.parametrize("shape", [(3, 4), (3, 2, 3), (2,)])
def test_scan_rejects_wrong_input_shape(shape):
    with pytest.raises(ShapeError, match="^u_seq:"):
        lif_scan(torch.zeros(shape), initial_state((2, 2)), LIFParameters())
