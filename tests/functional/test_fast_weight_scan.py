"""fast_weight_scan (numba backward) against autograd through a loop of fast_weight_update.

Forward values are identical (the same functions step by step). Gradients of a random linear
loss on every M_t agree with autograd: float64 to 1e-12 relative, float32 to 1e-5; the inputs
are large enough that the clip saturates (so the clamp mask matters, checked).
"""
import pytest
import torch

from neurobit.errors import ShapeError
from neurobit.functional.fast_weight_scan import fast_weight_scan
from neurobit.functional.fast_weights import fast_weight_update


def loop(M0, K, V, lam, eta, clip):
    Ms = [M0]
    for k, v in zip(K.unbind(0), V.unbind(0)):
        Ms.append(fast_weight_update(Ms[-1], k, v, lam, eta, clip))
    return torch.stack(Ms, 0)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_scan_matches_autograd_loop(dtype, rtol):
    g = torch.Generator().manual_seed(0)
    T, B, C, d = 20, 3, 4, 6
    M0 = torch.randn(B, d, d, generator=g, dtype=dtype) * 0.3
    K = torch.randn(T, B, C, d, generator=g, dtype=dtype)
    V = torch.randn(T, B, C, d, generator=g, dtype=dtype)
    W = torch.randn(T + 1, B, d, d, generator=g, dtype=dtype)
    out = []
    for fn in (loop, fast_weight_scan):
        m, k, v = (t.clone().requires_grad_() for t in (M0, K, V))
        Ms = fn(m, k, v, 0.9, 0.3, 1.0)
        (W * Ms).sum().backward()
        out.append((Ms.detach(), m.grad, k.grad, v.grad))
    ref, new = out
    assert torch.equal(new[0], ref[0])
    saturated = (ref[0][1:].abs() == 1.0).float().mean()
    assert 0.05 < saturated < 0.95            # the clamp mask is exercised
    for name, a, b in zip(["M0", "K", "V"], new[1:], ref[1:]):
        assert ((a - b).abs().max() / b.abs().max()) < rtol, name


def test_shape_errors():
    with pytest.raises(ShapeError, match="K, V"):
        fast_weight_scan(torch.zeros(2, 4, 4), torch.zeros(3, 2, 5, 4), torch.zeros(3, 2, 5, 3),
                         0.9, 0.1, 1.0)
