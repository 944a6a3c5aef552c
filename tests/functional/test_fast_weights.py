"""Fast weights: M_{t+1} = clamp(lam M_t + eta sum_i k_i v_i^T, -c, c).

Checked: the update against a NumPy loop over circuits and entries; the clip bound over 100k
steps of adversarial input (large aligned keys/values, sign flips, lam = 1) while the memory
really saturates; exact lam^t decay without input; the read-out M k; the value read M^T q
(after writes from an empty memory: the decayed, q.k-weighted sum of the values written);
parameter validation.
"""
import numpy as np
import pytest
import torch

from neurobit.errors import ParameterError, ShapeError
from neurobit.functional.fast_weights import (fast_weight_init, fast_weight_read,
                                              fast_weight_retrieve, fast_weight_update)

F64 = torch.float64


@pytest.fixture
def one_thread():
    """Tiny tensors in a tight loop: one intra-op thread avoids spin contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_update_matches_numpy_outer_products(gen):
    B, C, d = 2, 3, 4
    M = (torch.rand(B, d, d, generator=gen, dtype=F64) - 0.5)
    k = torch.randn(B, C, d, generator=gen, dtype=F64)
    v = torch.randn(B, C, d, generator=gen, dtype=F64)
    lam, eta, c = 0.9, 0.3, 0.8
    out = fast_weight_update(M, k, v, lam, eta, c).numpy()
    Mn, kn, vn = M.numpy(), k.numpy(), v.numpy()
    ref = np.empty_like(Mn)
    for b in range(B):
        acc = lam * Mn[b].copy()
        for i in range(C):
            for x in range(d):
                for y in range(d):
                    acc[x, y] += eta * kn[b, i, x] * vn[b, i, y]
        ref[b] = np.clip(acc, -c, c)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)
    assert (np.abs(ref) == c).any() and (np.abs(ref) < c).any()  # the case exercises the clip


def test_bounded_for_100k_adversarial_steps(gen, one_thread):
    B, C, d, T = 2, 3, 4, 100_000
    lam, eta, c = 1.0, 5.0, 0.5  # no decay, big writes: the worst case for the bound
    direction = torch.randn(B, 1, d, generator=gen)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    # magnitudes up to 1e6, every circuit aligned with the same direction, signs flipping in
    # bursts of random length so the memory is driven to both rails again and again
    mag = 10.0 ** (6 * torch.rand(T, B, C, 1, generator=gen))
    burst = torch.cumsum(torch.rand(T, generator=gen) < 0.01, 0) % 2
    sign = (1 - 2 * burst).view(T, 1, 1, 1).float()
    k_all = mag * direction
    v_all = sign * mag * direction * torch.where(torch.rand(T, 1, 1, 1, generator=gen) < 0.05,
                                                  -1.0, 1.0)
    M = fast_weight_init(B, d)
    worst = torch.zeros(())
    rail_steps = torch.zeros((), dtype=torch.long)
    for k, v in zip(k_all.unbind(0), v_all.unbind(0)):
        M = fast_weight_update(M, k, v, lam, eta, c, check=False)
        peak = M.abs().max()
        worst = torch.maximum(worst, peak)
        rail_steps += peak == c
    assert float(worst) <= c
    assert torch.isfinite(M).all()
    assert int(rail_steps) > T // 2  # the input did push M onto the rail, again and again


def test_decays_as_lambda_power_t_without_input(gen):
    B, C, d, c, lam = 3, 2, 5, 2.0, 0.93
    M0 = (torch.rand(B, d, d, generator=gen, dtype=F64) * 2 - 1) * c * 0.99
    zero = torch.zeros(B, C, d, dtype=F64)
    M = M0
    worst = 0.0
    for t in range(1, 301):
        M = fast_weight_update(M, zero, zero, lam, 0.7, c)
        expected = lam ** t * M0
        worst = max(worst, float(((M - expected).abs() / expected.abs()).max()))
    assert worst < 1e-6
    assert float(M.abs().max()) < 1e-8  # lam^300 ~ 3.5e-10: it really decayed


def test_read_is_matrix_times_key(gen):
    M = torch.randn(2, 3, 3, generator=gen, dtype=F64)
    k = torch.randn(2, 4, 3, generator=gen, dtype=F64)
    out = fast_weight_read(M, k)
    for b in range(2):
        for j in range(4):
            torch.testing.assert_close(out[b, j], M[b] @ k[b, j], rtol=0, atol=1e-12)


def test_retrieve_returns_the_values_weighted_by_key_match(gen):
    # three writes into an empty memory, no clipping: M = sum_t eta lam^(2-t) sum_i k v^T, so
    # M^T q = sum_t eta lam^(2-t) sum_i (k_ti . q) v_ti (linear attention over the past writes)
    lam, eta = 0.8, 0.3
    ks = torch.randn(3, 2, 4, 3, generator=gen, dtype=F64)
    vs = torch.randn(3, 2, 4, 3, generator=gen, dtype=F64)
    q = torch.randn(2, 5, 3, generator=gen, dtype=F64)
    M = fast_weight_init(2, 3, F64)
    for t in range(3):
        M = fast_weight_update(M, ks[t], vs[t], lam, eta, 1e9)
    out = fast_weight_retrieve(M, q)
    for b in range(2):
        for j in range(5):
            want = sum(eta * lam ** (2 - t) * (ks[t, b, i] @ q[b, j]) * vs[t, b, i]
                       for t in range(3) for i in range(4))
            torch.testing.assert_close(out[b, j], want, rtol=0, atol=1e-12)
    # an orthonormal key retrieves exactly its value
    M1 = fast_weight_update(fast_weight_init(1, 3, F64), torch.eye(3, dtype=F64)[None, :1],
                            torch.tensor([[[2.0, -1.0, 0.5]]], dtype=F64), 0.9, 1.0, 1e9)
    torch.testing.assert_close(fast_weight_retrieve(M1, torch.eye(3, dtype=F64)[None]),
                               torch.tensor([[[2.0, -1.0, 0.5], [0, 0, 0], [0, 0, 0]]],
                                            dtype=F64), rtol=0, atol=0)
    with pytest.raises(ShapeError, match="M/q"):
        fast_weight_retrieve(M1, torch.zeros(1, 2, 4, dtype=F64))


@pytest.mark.parametrize("kw,name", [(dict(lam=0.0), "lam"), (dict(lam=1.01), "lam"),
                                     (dict(eta=-0.1), "eta"), (dict(clip=0.0), "clip"),
                                     (dict(clip=float("inf")), "clip")])
def test_bad_parameters_name_themselves(kw, name):
    p = dict(lam=0.9, eta=0.1, clip=1.0) | kw
    M = fast_weight_init(1, 2)
    with pytest.raises(ParameterError, match=name):
        fast_weight_update(M, torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), **p)


def test_shape_errors():
    M = fast_weight_init(2, 3)
    with pytest.raises(ShapeError, match="k"):
        fast_weight_update(M, torch.zeros(2, 1, 4), torch.zeros(2, 1, 4), 0.9, 0.1, 1.0)
    with pytest.raises(ShapeError, match="v"):
        fast_weight_update(M, torch.zeros(2, 1, 3), torch.zeros(2, 2, 3), 0.9, 0.1, 1.0)
    assert fast_weight_init(2, 3).shape == (2, 3, 3) and not fast_weight_init(2, 3).any()
