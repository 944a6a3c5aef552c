"""LIFPopulation: the native backend against neurobit.functional, and the snntorch and norse
backends against native, spike for spike (float64, T = 200, several seeds).

snntorch's Leaky (subtract reset, reset_delay=True) computes v_t = alpha v_{t-1} + u_t -
theta s_{t-1}: the native update with beta = theta. norse's reset_subtract removes theta in the
spiking step, before the next decay: beta = alpha * theta. Other betas must raise BackendError.
"""
import math

import pytest
import torch

from neurobit.errors import BackendError, ParameterError, ShapeError
from neurobit.functional.lif import LIFParameters, LIFState, initial_state, lif_loop
from neurobit.modules import LIFPopulation

F64 = torch.float64
N = 23


def drive(seed, T=200, batch=(4,), n=N):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((T, *batch, n), generator=g, dtype=F64) * 0.5 + 0.25


def per_unit_alpha(seed, n=N):
    return torch.rand(n, generator=torch.Generator().manual_seed(100 + seed)) * 0.5 + 0.45


def test_native_forward_equals_functional_loop_and_steps(gen):
    pop = LIFPopulation(N, 0.85, theta=0.9, beta=0.7)
    u = drive(0)
    s, st = pop(u)
    s_ref, st_ref = lif_loop(u, initial_state((4, N), F64), pop.params)
    assert torch.equal(s, s_ref) and torch.equal(st.v, st_ref.v)
    state, out = None, []
    for ut in u.unbind(0):
        s_t, state = pop.step(ut, state)
        out.append(s_t)
    assert torch.equal(torch.stack(out), s)
    assert 0.05 < float(s.mean()) < 0.6


def test_state_carries_across_calls():
    pop = LIFPopulation(N, 0.9)
    u = drive(1)
    s, st = pop(u)
    s1, st1 = pop(u[:77])
    s2, st2 = pop(u[77:], st1)
    assert torch.equal(torch.cat([s1, s2]), s) and torch.equal(st2.v, st.v)


def test_tau_mem_ms_sets_alpha():
    pop = LIFPopulation(3, tau_mem_ms=20.0, dt_ms=0.5)
    assert float(pop.alpha) == pytest.approx(math.exp(-0.5 / 20.0), rel=1e-7)


def test_float64_population_uses_float64_alpha():
    """dtype=float64 keeps alpha = exp(-dt/tau) to float64 precision (as lif_loop and the
    Brian2 reference do). Input built so that with the exact alpha v_10 = theta (1 - 1e-12) (no
    spike at step 10, one at step 11); a float32-rounded alpha (1.1e-8 too large) pushes v_10
    above theta, which the default-dtype population shows."""
    alpha = math.exp(-1.0 / 10.0)
    u = (1 - alpha) / (1 - alpha ** 10) * (1 - 1e-12)
    u_seq = torch.full((12, 1), u, dtype=F64)
    s_ref, _ = lif_loop(u_seq, initial_state((1,), F64), LIFParameters(alpha=alpha))
    assert torch.nonzero(s_ref[:, 0]).flatten().tolist() == [10]  # step 11 (0-based 10)
    s, _ = LIFPopulation(1, tau_mem_ms=10.0, dt_ms=1.0, dtype=F64)(u_seq)
    assert torch.equal(s, s_ref)
    assert LIFPopulation(1, tau_mem_ms=10.0, dt_ms=1.0).alpha.dtype == torch.get_default_dtype()
    s32, _ = LIFPopulation(1, tau_mem_ms=10.0, dt_ms=1.0, dtype=torch.float32)(u_seq)
    assert torch.nonzero(s32[:, 0]).flatten().tolist() == [9]  # the test can tell them apart


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("alpha_kind", ["scalar", "per_unit"])
def test_snntorch_backend_matches_native(seed, alpha_kind):
    alpha = 0.9 if alpha_kind == "scalar" else per_unit_alpha(seed)
    u = drive(seed)
    s_n, st_n = LIFPopulation(N, alpha, theta=1.0)(u)
    s_s, st_s = LIFPopulation(N, alpha, theta=1.0, backend="snntorch")(u)
    assert 0.05 < float(s_n.mean()) < 0.6
    assert torch.equal(s_n, s_s)
    torch.testing.assert_close(st_s.v, st_n.v, rtol=0, atol=1e-12)
    assert torch.equal(st_s.s, st_n.s)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("alpha_kind", ["scalar", "per_unit"])
def test_norse_backend_matches_native(seed, alpha_kind):
    alpha = 0.9 if alpha_kind == "scalar" else per_unit_alpha(seed)
    theta = 1.0
    beta = alpha * theta
    u = drive(seed)
    s_n, st_n = LIFPopulation(N, alpha, theta=theta, beta=beta)(u)
    s_o, st_o = LIFPopulation(N, alpha, theta=theta, beta=beta, backend="norse")(u)
    assert 0.05 < float(s_n.mean()) < 0.6
    assert torch.equal(s_n, s_o)
    # norse integrates v + (1 - alpha) (u / (1 - alpha) - v): same value, other roundings
    torch.testing.assert_close(st_o.v, st_n.v, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", ["snntorch", "norse"])
def test_foreign_backend_step_matches_native_step(backend):
    alpha, theta = 0.75, 1.25  # beta = alpha * theta = 0.9375 is exact in any float format
    beta = theta if backend == "snntorch" else alpha * theta
    nat = LIFPopulation(N, alpha, theta=theta, beta=beta)
    other = LIFPopulation(N, alpha, theta=theta, beta=beta, backend=backend)
    u = drive(3, T=60)
    sa = sb = None
    out_a, out_b = [], []
    for ut in u.unbind(0):
        s1, sa = nat.step(ut, sa)
        s2, sb = other.step(ut, sb)
        out_a.append(s1)
        out_b.append(s2)
    assert torch.equal(torch.stack(out_a), torch.stack(out_b))
    assert float(torch.stack(out_a).mean()) > 0.05


def test_snntorch_backend_gradient_matches_native():
    u = drive(4, T=50, batch=(3,))
    grads = []
    w = torch.linspace(-1, 1, N, dtype=F64)
    for backend in ("native", "snntorch"):
        uu = u.clone().requires_grad_()
        s, st = LIFPopulation(N, 0.9, slope=5.0, backend=backend)(uu)
        ((s * w).sum() + st.v.sum()).backward()
        grads.append(uu.grad)
    assert grads[0].norm() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)


def test_backend_errors():
    with pytest.raises(BackendError, match="^backend:"):
        LIFPopulation(N, 0.9, theta=1.0, backend="norse")  # beta = theta
    with pytest.raises(BackendError, match="^backend:"):
        LIFPopulation(N, 0.9, theta=1.0, beta=0.5, backend="snntorch")
    with pytest.raises(BackendError, match="^backend:"):
        LIFPopulation(N, per_unit_alpha(0), theta=1.0, beta=0.9 * 1.0, backend="norse")
    # the expressible configurations construct
    LIFPopulation(N, 0.9, theta=2.0, beta=1.8, backend="norse")
    LIFPopulation(N, 0.9, theta=2.0, beta=2.0, backend="snntorch")


@pytest.mark.parametrize("dtype", [None, F64])
@pytest.mark.parametrize("alpha,theta", [(0.8, 1.2), (0.9, 0.7), (0.95, 1.1)])
def test_norse_accepts_beta_computed_as_alpha_times_theta(alpha, theta, dtype):
    """The recipe in the BackendError message, beta = alpha * theta (a Python float product),
    must construct, also with the default float32 parameter buffers."""
    pop = LIFPopulation(N, alpha, theta=theta, beta=alpha * theta, backend="norse", dtype=dtype)
    u = drive(5, T=50)
    s_n, _ = LIFPopulation(N, alpha, theta=theta, beta=alpha * theta)(u)
    assert torch.equal(pop(u)[0], s_n)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.5, -0.1])
def test_alpha_outside_unit_interval(alpha):
    with pytest.raises(ParameterError, match="^alpha:"):
        LIFPopulation(4, alpha)


@pytest.mark.parametrize("kwargs,err,name", [
    (dict(n=0, alpha=0.9), ParameterError, "n"),
    (dict(n=-3, alpha=0.9), ParameterError, "n"),
    (dict(n=4, alpha=0.9, theta=0.0), ParameterError, "theta"),
    (dict(n=4, alpha=0.9, theta=-1.0), ParameterError, "theta"),
    (dict(n=4, alpha=0.9, theta=torch.tensor([1.0, 1.0, 0.0, 1.0])), ParameterError, "theta"),
    (dict(n=4, alpha=0.9, beta=-0.1), ParameterError, "beta"),
    (dict(n=4, alpha=0.9, backend="loihi"), ParameterError, "backend"),
    (dict(n=4, alpha=0.9, surrogate="sigmoidal"), ParameterError, "surrogate"),
    (dict(n=4, alpha=0.9, slope=0.0), ParameterError, "slope"),
    (dict(n=4), ParameterError, "alpha"),
    (dict(n=4, alpha=0.9, tau_mem_ms=10.0, dt_ms=1.0), ParameterError, "alpha"),
    (dict(n=4, tau_mem_ms=-10.0, dt_ms=1.0), ParameterError, "tau_mem_ms"),
    (dict(n=4, tau_mem_ms=10.0, dt_ms=0.0), ParameterError, "dt_ms"),
    (dict(n=4, alpha=torch.tensor([0.9, 0.9, 1.0, 0.9])), ParameterError, "alpha"),
    (dict(n=4, alpha=torch.full((5,), 0.9)), ShapeError, "alpha"),
    (dict(n=4, alpha=0.9, theta=torch.ones(3)), ShapeError, "theta"),
])
def test_bad_parameters_name_themselves(kwargs, err, name):
    with pytest.raises(err, match=f"^{name}:"):
        LIFPopulation(**kwargs)


def test_wrong_input_shapes():
    pop = LIFPopulation(4, 0.9)
    with pytest.raises(ShapeError, match="^u_seq:"):
        pop(torch.zeros(10, 2, 5))
    with pytest.raises(ShapeError, match="^u_seq:"):
        pop(torch.zeros(4))
    with pytest.raises(ShapeError, match="^u:"):
        pop.step(torch.zeros(2, 3))
    with pytest.raises(ShapeError, match="^u_seq:"):
        pop(torch.zeros(10, 2, 4), LIFState(torch.zeros(3, 4), torch.zeros(3, 4)))


def test_explicit_state_is_not_kept_in_module():
    pop = LIFPopulation(4, 0.9)
    u = torch.full((5, 1, 4), 0.6)
    s1, _ = pop(u)
    s2, _ = pop(u)
    assert torch.equal(s1, s2)
    assert not any(n in ("v", "s", "mem") for n, _ in pop.named_buffers())
