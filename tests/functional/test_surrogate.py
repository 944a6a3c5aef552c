"""Spike nonlinearity and surrogate gradients (neurobit.functional.surrogate).

Forward: H(x) = 1[x > 0] (strict). Backward: the documented sigma'(x) for each name, checked
point-wise, against snntorch's own FastSigmoid/ATan (same formulas), and by their integrals
over x, derived by hand: arctan and hard_sigmoid integrate to 1, fast_sigmoid to 2 / slope.
"""
import math

import pytest
import torch

from neurobit.errors import ParameterError
from neurobit.functional.surrogate import SURROGATES, spike, surrogate_grad

F64 = torch.float64


def grad_of_spike(x, name, slope):
    x = x.clone().requires_grad_()
    spike(x, name, slope).sum().backward()
    return x.grad


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_forward_is_strict_heaviside(name):
    x = torch.tensor([-1.0, -1e-7, 0.0, 1e-7, 3.0])
    assert spike(x, name, 4.0).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert spike(x.double(), name).dtype == F64


@pytest.mark.parametrize("slope", [1.0, 5.0, 25.0])
def test_surrogate_formulas(slope):
    x = torch.linspace(-2, 2, 41, dtype=F64)
    torch.testing.assert_close(grad_of_spike(x, "fast_sigmoid", slope),
                               1 / (slope * x.abs() + 1) ** 2, rtol=1e-14, atol=0)
    torch.testing.assert_close(grad_of_spike(x, "arctan", slope),
                               (slope / 2) / (1 + (math.pi / 2 * slope * x) ** 2),
                               rtol=1e-14, atol=0)
    box = (x.abs() < 0.5 / slope).to(F64) * slope
    assert torch.equal(grad_of_spike(x, "hard_sigmoid", slope), box)
    assert grad_of_spike(torch.zeros(1, dtype=F64), "fast_sigmoid", slope).item() == 1.0
    assert grad_of_spike(torch.zeros(1, dtype=F64), "arctan", slope).item() == slope / 2


@pytest.mark.parametrize("slope", [2.0, 25.0])
def test_surrogates_match_snntorch(slope):
    from snntorch import surrogate as sg
    x = torch.linspace(-1.5, 1.5, 301)
    for name, theirs in (("fast_sigmoid", sg.fast_sigmoid(slope)), ("arctan", sg.atan(slope))):
        xa = x.clone().requires_grad_()
        xb = x.clone().requires_grad_()
        sa, sb = spike(xa, name, slope), theirs(xb)
        assert torch.equal(sa, sb)
        sa.sum().backward()
        sb.sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name,slope,integral", [
    ("arctan", 2.0, 1.0), ("arctan", 10.0, 1.0), ("hard_sigmoid", 4.0, 1.0),
    ("hard_sigmoid", 25.0, 1.0), ("fast_sigmoid", 5.0, 2 / 5.0), ("fast_sigmoid", 25.0, 2 / 25.0)])
def test_surrogate_integrals(name, slope, integral):
    # midpoint rule on a fine grid over [-L, L]; the tails beyond L are added analytically
    # (arctan: 1 - 2/pi atan(pi/2 s L); fast_sigmoid: 2 / (s (s L + 1))). The box of
    # hard_sigmoid is resolved to one grid cell at each edge: error <= 2 dx slope.
    L, n = 50.0, 2_000_000
    dx = 2 * L / n
    x = -L + (torch.arange(n, dtype=F64) + 0.5) * dx
    g = torch.as_tensor(surrogate_grad(name)(x, slope)).to(F64)
    area = g.sum().item() * dx
    if name == "arctan":
        area += 1 - 2 / math.pi * math.atan(math.pi / 2 * slope * L)
    elif name == "fast_sigmoid":
        area += 2 / (slope * (slope * L + 1))
    tol = 2 * dx * slope if name == "hard_sigmoid" else 1e-6
    assert abs(area - integral) <= tol


def test_gradient_dtype_follows_input():
    for dt in (torch.float32, F64):
        for name in SURROGATES:
            assert grad_of_spike(torch.zeros(3, dtype=dt), name, 5.0).dtype == dt


def test_unknown_surrogate_and_bad_slope():
    with pytest.raises(ParameterError, match="^surrogate:.*fast_sigmoid"):
        spike(torch.zeros(2), "sigmoid")
    with pytest.raises(ParameterError, match="^surrogate:"):
        surrogate_grad("superspike")
    for slope in (0.0, -1.0):
        with pytest.raises(ParameterError, match="^slope:"):
            spike(torch.zeros(2), "arctan", slope)
