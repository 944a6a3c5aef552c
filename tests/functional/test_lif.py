"""The discrete LIF update (neurobit.functional.lif) against closed forms derived by hand.

Update (t = 1, 2, ...; v_0, s_0 given)::

    v_t = alpha v_{t-1} + u_t - beta s_{t-1},   s_t = 1[v_t > theta]

Derivations used below (constant input u, v_0 = s_0 = 0):

* Before any spike, v_t = u (1 - alpha^t) / (1 - alpha) = c (1 - alpha^t), c = u / (1 - alpha).
* Between spikes: if the last spike was at step t1 with membrane V, then for k >= 1 (until the
  next spike) v_{t1+k} = alpha^k V + c (1 - alpha^k) - beta alpha^(k-1)
  = alpha^k A + c with A = V - beta / alpha - c. In the firing regime (c > theta, A < 0)
  v_{t1+k} > theta  <=>  alpha^k |A| < c - theta  <=>  k > x = ln((c - theta) / |A|) / ln(alpha),
  so the interval is k* = max(1, floor(x) + 1). The first spike is the same formula with
  t1 = 0, V = 0, beta = 0 (A = -c): t* = floor(ln(1 - theta / c) / ln(alpha)) + 1.
  (``floor(x) + 1``, not ``ceil(x)``: the threshold is strict, so an exact tie x in Z does not
  fire at k = x. The tests keep x at least 1e-6 away from an integer.)
* Balance (sum the update over t = 1..T): (1 - alpha) sum_t v_t + alpha (v_T - v_0)
  = sum_t u_t - beta sum_{t=1..T} s_{t-1}; and unrolled, v_T = alpha^T v_0
  + sum_{k=1..T} alpha^(T-k) (u_k - beta s_{k-1}).
* Rate bound for beta = theta, constant (1 - alpha) theta < u <= theta: the membrane stays in
  [0, alpha theta + u] (lower: a step after a spike gives v > alpha theta + u - theta > 0, a step
  without one keeps v >= 0; upper: without a spike v_{t-1} <= theta, after one
  v_t <= alpha (alpha theta + u) + u - theta <= alpha theta + u because alpha u <= theta). With
  the balance, the spike count N over steps 1..T-1 satisfies
  T u - (1 - alpha) T M - alpha M <= theta N <= T u,  M = alpha theta + u.
"""
import math

import pytest
import torch

from neurobit.errors import ParameterError, ShapeError
from neurobit.functional.lif import (LIFParameters, LIFState, alpha_from_tau, alpha_spread,
                                     initial_state, lif_loop, lif_step, tau_from_alpha)

F64 = torch.float64


def run_constant(u: float, T: int, p: LIFParameters, n: int = 1):
    """lif_loop on a constant input ``u`` for T steps from rest, float64; returns (s, v) [T]."""
    u_seq = torch.full((T, n), u, dtype=F64)
    v_trace = []
    state = initial_state((n,), F64)
    s_out = []
    for ut in u_seq.unbind(0):  # lif_step, so the membrane trace is visible
        s, state = lif_step(ut, state, p)
        s_out.append(s)
        v_trace.append(state.v)
    s_loop, _ = lif_loop(u_seq, initial_state((n,), F64), p)
    s_steps = torch.stack(s_out)
    assert torch.equal(s_loop, s_steps)  # lif_loop is lif_step repeated
    return s_steps[:, 0], torch.stack(v_trace)[:, 0]


def analytic_spike_steps(alpha, u, theta, beta, T):
    """Spike steps (1-based) of the constant-input LIF from rest, event by event (module doc)."""
    c = u / (1 - alpha)
    assert c > theta, "use a firing regime"
    times, t1, V, reset = [], 0, 0.0, 0.0
    while True:
        A = V - reset / alpha - c
        assert A < 0
        x = math.log((c - theta) / -A) / math.log(alpha)
        assert abs(x - round(x)) > 1e-6, f"near-tie x={x}; choose other parameters"
        k = max(1, math.floor(x) + 1)
        t1 += k
        if t1 > T:
            return times
        times.append(t1)
        V = alpha ** k * A + c
        reset = beta


@pytest.mark.parametrize("alpha,u,theta", [
    (0.9, 0.15, 1.0), (0.95, 0.07, 1.0), (0.5, 0.6, 1.0), (0.8, 0.5, 2.0),
    (0.99, 0.013, 1.0), (0.7, 1.3, 1.0), (0.6, 0.45, 0.7)])
def test_membrane_before_first_spike_and_first_spike_step(alpha, u, theta):
    T = 400
    s, v = run_constant(u, T, LIFParameters(alpha=alpha, theta=theta))
    c = u / (1 - alpha)
    x = math.log(1 - theta / c) / math.log(alpha)
    assert abs(x - round(x)) > 1e-6
    t_star = math.floor(x) + 1
    fired = torch.nonzero(s).flatten()
    assert fired.numel() > 0 and int(fired[0]) + 1 == t_star
    t = torch.arange(1, t_star + 1, dtype=F64)
    closed = u * (1 - alpha ** t) / (1 - alpha)
    torch.testing.assert_close(v[:t_star], closed, rtol=1e-12, atol=1e-12)


def test_subthreshold_input_never_fires():
    # c = u / (1 - alpha) = 0.999 theta: v_t -> c from below, never above theta.
    s, v = run_constant(0.0999, 2000, LIFParameters(alpha=0.9, theta=1.0))
    assert s.sum() == 0
    assert float(v.max()) < 0.999 and float(v[-1]) > 0.998


def test_threshold_is_strict():
    p = LIFParameters(alpha=0.5, theta=1.0)
    s, st = lif_step(torch.tensor([1.0, 1.0 + 2 ** -20]), initial_state((2,)), p)
    assert s.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("alpha,u,theta,beta", [
    (0.9, 0.15, 1.0, 1.0), (0.8, 0.35, 1.0, 1.0), (0.95, 0.12, 0.8, 0.8),
    (0.9, 0.15, 1.0, 0.5), (0.85, 0.4, 1.2, 2.5), (0.9, 0.3, 1.0, 0.0),
    (0.5, 1.7, 1.0, 1.0)])
def test_spike_train_matches_event_by_event_closed_form(alpha, u, theta, beta):
    T = 300
    s, _ = run_constant(u, T, LIFParameters(alpha=alpha, theta=theta, beta=beta))
    expected = analytic_spike_steps(alpha, u, theta, beta, T)
    got = (torch.nonzero(s).flatten() + 1).tolist()
    assert len(expected) >= 5
    assert got == expected


@pytest.mark.parametrize("alpha,u", [(0.999, 0.3), (0.99, 0.05), (0.8, 0.45)])
def test_rate_bounds_for_subtractive_reset(alpha, u):
    theta, T = 1.0, 5000
    s, v = run_constant(u, T, LIFParameters(alpha=alpha, theta=theta))
    M = alpha * theta + u
    assert float(v.min()) >= 0.0 and float(v.max()) <= M + 1e-12
    n = float(s[:-1].sum())  # spikes in steps 1..T-1
    assert theta * n <= T * u + 1e-9
    assert theta * n >= T * u - (1 - alpha) * T * M - alpha * M - 1e-9
    if alpha >= 0.99:  # the bound is tight: rate within (1 - alpha) M / theta of u / theta
        assert abs(n / T - u / theta) <= (1 - alpha) * M / theta + 1e-3


def test_balance_and_unrolled_identities(gen):
    T, N = 250, 17
    alpha = torch.rand(N, generator=gen, dtype=F64) * 0.5 + 0.45
    theta = torch.rand(N, generator=gen, dtype=F64) + 0.5
    beta = torch.rand(N, generator=gen, dtype=F64) * 2
    p = LIFParameters(alpha=alpha, theta=theta, beta=beta)
    u = torch.randn(T, N, generator=gen, dtype=F64) * 0.8 + 0.3
    v0 = torch.randn(N, generator=gen, dtype=F64)
    s0 = (torch.rand(N, generator=gen) < 0.5).to(F64)
    state, vs, ss = LIFState(v0, s0), [], []
    for ut in u.unbind(0):
        _, state = lif_step(ut, state, p)
        vs.append(state.v)
        ss.append(state.s)
    v, s = torch.stack(vs), torch.stack(ss)
    assert 0.05 < float(s.mean()) < 0.95
    s_prev = torch.cat([s0[None], s[:-1]])
    lhs = (1 - alpha) * v.sum(0) + alpha * (v[-1] - v0)
    rhs = u.sum(0) - beta * s_prev.sum(0)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)
    k = torch.arange(1, T + 1, dtype=F64)[:, None]
    unrolled = alpha ** T * v0 + (alpha ** (T - k) * (u - beta * s_prev)).sum(0)
    torch.testing.assert_close(v[-1], unrolled, rtol=1e-10, atol=1e-10)
    # the spikes are the threshold of that membrane
    assert torch.equal(s, (v > theta).to(F64))


def test_lif_step_single_update_values():
    p = LIFParameters(alpha=0.75, theta=1.0, beta=0.5)
    state = LIFState(torch.tensor([2.0, 0.4, -1.0], dtype=F64),
                     torch.tensor([1.0, 0.0, 1.0], dtype=F64))
    s, new = lif_step(torch.tensor([0.25, 0.8, 3.0], dtype=F64), state, p)
    assert new.v.tolist() == [0.75 * 2.0 + 0.25 - 0.5, 0.75 * 0.4 + 0.8, -0.75 + 3.0 - 0.5]
    assert s.tolist() == [1.0, 1.0, 1.0] and torch.equal(new.s, s)


def test_default_beta_is_theta():
    p = LIFParameters(alpha=0.5, theta=0.7)
    assert p.reset == 0.7
    s, st = lif_step(torch.zeros(1), LIFState(torch.zeros(1), torch.ones(1)), p)
    assert st.v.item() == pytest.approx(-0.7)


def test_detach_reset_controls_gradient_through_reset():
    for detach, expect_grad in ((True, False), (False, True)):
        u = torch.tensor([0.3], requires_grad=True)
        s0 = torch.ones(1, requires_grad=True)
        _, st = lif_step(u, LIFState(torch.zeros(1), s0), LIFParameters(0.9, 1.0, 0.6,
                                                                           detach_reset=detach))
        st.v.sum().backward()
        assert u.grad.item() == 1.0
        if expect_grad:
            assert s0.grad.item() == pytest.approx(-0.6)
        else:
            assert s0.grad is None


@pytest.mark.parametrize("tau,dt", [(10.0, 1.0), (20.0, 0.1), (5.0, 2.5), (1.0, 1.0)])
def test_alpha_from_tau_values_and_round_trip(tau, dt):
    a = alpha_from_tau(tau, dt)
    assert a == pytest.approx(math.exp(-dt / tau), rel=1e-15)
    assert 0 < a < 1
    assert tau_from_alpha(a, dt) == pytest.approx(tau, rel=1e-12)
    assert alpha_from_tau(tau_from_alpha(0.9, dt), dt) == pytest.approx(0.9, rel=1e-14)


def test_alpha_from_tau_known_numbers():
    assert alpha_from_tau(10.0, 1.0) == pytest.approx(0.9048374180359595, rel=1e-15)
    assert alpha_from_tau(1.0, 1.0) == pytest.approx(1 / math.e, rel=1e-15)
    # decay over tau: alpha ** (tau / dt) = 1 / e
    assert alpha_from_tau(8.0, 0.5) ** 16 == pytest.approx(1 / math.e, rel=1e-12)


@pytest.mark.parametrize("tau,dt,name", [(0.0, 1.0, "tau_mem_ms"), (-3.0, 1.0, "tau_mem_ms"),
                                         (10.0, 0.0, "dt_ms"), (10.0, -1.0, "dt_ms")])
def test_alpha_from_tau_rejects_bad_values(tau, dt, name):
    with pytest.raises(ParameterError, match=f"^{name}:"):
        alpha_from_tau(tau, dt)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.5, -0.1])
def test_tau_from_alpha_rejects_alpha_outside_unit_interval(alpha):
    with pytest.raises(ParameterError, match="^alpha:"):
        tau_from_alpha(alpha, 1.0)


def test_tau_from_alpha_rejects_bad_dt():
    with pytest.raises(ParameterError, match="^dt_ms:"):
        tau_from_alpha(0.9, 0.0)


def test_initial_state_and_shape_errors():
    st = initial_state((2, 3), torch.float64)
    assert st.v.shape == (2, 3) and st.v.dtype == F64 and not st.v.any() and not st.s.any()
    assert st.v.data_ptr() != st.s.data_ptr()
    with pytest.raises(ParameterError, match="^shape:"):
        initial_state((2, -1))
    with pytest.raises(ShapeError, match="^u:"):
        lif_step(torch.zeros(4), initial_state((3,)), LIFParameters())


def test_lif_loop_empty_sequence():
    """T = 0: no spikes ([0, N]) and the state passes through unchanged."""
    st = LIFState(torch.tensor([0.5, 2.0]), torch.tensor([0.0, 1.0]))
    s, out = lif_loop(torch.zeros(0, 2), st, LIFParameters())
    assert s.shape == (0, 2)
    assert torch.equal(out.v, st.v) and torch.equal(out.s, st.s)


def test_alpha_spread_time_constants_are_geometric():
    """alpha_spread: endpoints are the given decays; time constants -1/ln(alpha) have a constant
    ratio between neighbours (tau 1.44 .. 99.5 steps for 0.5 .. 0.99 over 8 units: ratio
    (99.5 / 1.44)^(1/7) = 1.83)."""
    a = alpha_spread(0.5, 0.99, 8)
    assert a.shape == (8,) and a.dtype == torch.float64
    assert math.isclose(a[0].item(), 0.5, rel_tol=1e-12)
    assert math.isclose(a[-1].item(), 0.99, rel_tol=1e-12)
    tau = -1.0 / torch.log(a)
    ratio = tau[1:] / tau[:-1]
    want = (math.log(0.5) / math.log(0.99)) ** (1 / 7)
    assert torch.allclose(ratio, torch.full_like(ratio, want), rtol=1e-12)
    assert math.isclose(want, 1.83, rel_tol=1e-2)
    assert torch.equal(alpha_spread(0.3, 0.9, 1), torch.tensor([0.9], dtype=torch.float64))
    with pytest.raises(ParameterError, match="alpha_min"):
        alpha_spread(0.9, 0.5, 4)
    with pytest.raises(ParameterError, match="alpha_max"):
        alpha_spread(0.5, 1.0, 4)
