"""Grouped attention and lateral inhibition.

Checked: the batched grouped attention equals full attention with a -inf block mask (equal
and unequal groups, with and without memory, scaled or not); the scores equal a hand loop over
pairs of q_i . k_j + q_i . (M k_j); weights sum to 1 inside a group and vanish across groups;
layout validation; kWTA keeps exactly k (largest, ties to the lower index); divisive
normalisation matches the closed form on a hand-sized case; group-wise inhibition in the hub
layout matches a loop over groups.
"""
import math

import pytest
import torch

from neurobit.errors import ParameterError
from neurobit.functional.attention import (block_mask, expand_group_weights, group_layout,
                                           grouped_attention, masked_attention)
from neurobit.functional.inhibition import divisive_normalization, inhibit_groups, kwta, kwta_mask

F64 = torch.float64
LAYOUTS = [(6, 2), (6, 3), (6, 1), (6, 6), (7, [[0, 3, 5], [1, 2], [4, 6]]),
           (5, [[4], [0, 1, 2, 3]])]


def qkvm(B, C, d, gen, dtype=F64):
    q, k, v = (torch.randn(B, C, d, generator=gen, dtype=dtype) for _ in range(3))
    M = (torch.rand(B, d, d, generator=gen, dtype=dtype) * 2 - 1) * 0.5
    return q, k, v, M


@pytest.mark.parametrize("C,groups", LAYOUTS)
@pytest.mark.parametrize("use_m", [False, True])
@pytest.mark.parametrize("scale", [None, 1.0])
def test_grouped_equals_block_masked_full_attention(C, groups, use_m, scale, gen):
    lay = group_layout(groups, C)
    for dtype, tol in ((F64, 1e-12), (torch.float32, 1e-6)):
        q, k, v, M = qkvm(3, C, 4, gen, dtype)
        M = M if use_m else None
        out, w = grouped_attention(q, k, v, lay, M, scale)
        ref_out, ref_w = masked_attention(q, k, v, block_mask(lay), M, scale)
        torch.testing.assert_close(out, ref_out, rtol=0, atol=tol)
        torch.testing.assert_close(expand_group_weights(w, lay), ref_w, rtol=0, atol=tol)


def test_scores_follow_the_equation_pair_by_pair(gen):
    C, d = 5, 3
    lay = group_layout([[0, 2, 4], [1, 3]], C)
    q, k, v, M = qkvm(2, C, d, gen)
    _, w = grouped_attention(q, k, v, lay, M)
    full = expand_group_weights(w, lay)
    for b in range(2):
        for grp in lay.as_lists():
            for i in grp:
                s = torch.stack([(q[b, i] @ k[b, j] + q[b, i] @ (M[b] @ k[b, j])) / math.sqrt(d)
                                 for j in grp])
                torch.testing.assert_close(full[b, i, grp], torch.softmax(s, 0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("C,groups", LAYOUTS)
def test_weights_sum_to_one_in_group_and_vanish_across(C, groups, gen):
    lay = group_layout(groups, C)
    q, k, v, M = qkvm(4, C, 3, gen)
    q = q * 5  # sharp softmax: still exact masking
    _, w = grouped_attention(q, k, v, lay, M)
    assert w.shape == (4, C, lay.group_size)
    full = expand_group_weights(w, lay)
    same = block_mask(lay)
    torch.testing.assert_close(full.sum(-1), torch.ones(4, C, dtype=F64), rtol=0, atol=1e-12)
    assert torch.equal(full[:, ~same], torch.zeros_like(full[:, ~same]))
    assert (full[:, same] > 0).all()
    pad = ~lay.valid[lay.group_of]
    assert torch.equal(w[:, pad], torch.zeros_like(w[:, pad]))


def test_layout_from_int_is_contiguous():
    lay = group_layout(3, 6)
    assert lay.as_lists() == [[0, 1], [2, 3], [4, 5]]
    assert lay.group_of.tolist() == [0, 0, 1, 1, 2, 2]
    assert group_layout([[2, 0], [1]], 3).position.tolist() == [1, 0, 0]


@pytest.mark.parametrize("groups", [4, 0, [[0, 1], [1, 2, 3, 4, 5]], [[0, 1, 2], [3, 4]],
                                    [[0, 1, 2, 3, 4, 5], []], [[0, 1, 2, 3, 4, 6]], True])
def test_bad_layouts_raise(groups):
    with pytest.raises(ParameterError, match="groups"):
        group_layout(groups, 6)


def test_kwta_keeps_exactly_k_largest(gen):
    x = torch.randn(50, 7, generator=gen)
    for k in (1, 3, 7):
        y = kwta(x, k)
        assert ((y != 0).sum(-1) == k).all()
        kept_min = torch.where(y != 0, x, torch.full_like(x, float("inf"))).min(-1).values
        dropped_max = torch.where(y == 0, x, torch.full_like(x, -float("inf"))).max(-1).values
        assert (kept_min > dropped_max).all()
        torch.testing.assert_close(y[y != 0], x[y != 0], rtol=0, atol=0)
    y = kwta(x, 2, dim=0)
    assert ((y != 0).sum(0) == 2).all()


def test_kwta_ties_go_to_the_lower_index():
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 2.0, 2.0], [5.0, 5.0, 0.0, 5.0]])
    m = kwta_mask(x, 2)
    assert m.tolist() == [[True, True, False, False], [False, True, True, False],
                          [True, True, False, False]]
    masked = kwta_mask(x, 2, mask=torch.tensor([False, True, True, True]))
    assert masked.tolist() == [[False, True, True, False], [False, True, True, False],
                               [False, True, False, True]]


def test_divisive_normalization_closed_form():
    x = torch.tensor([3.0, -4.0], dtype=F64)
    # p = 2: rms = sqrt((9 + 16) / 2) = sqrt(12.5); p = 1: mean |x| = 3.5
    torch.testing.assert_close(divisive_normalization(x, 1.0, power=2.0),
                               x / (1 + math.sqrt(12.5)), rtol=0, atol=1e-15)
    torch.testing.assert_close(divisive_normalization(x, 0.5, power=1.0),
                               torch.tensor([3 / 4.0, -4 / 4.0], dtype=F64), rtol=0, atol=1e-15)
    # a pool mask leaves padding out of the mean: [3, -4, pad] with p = 1 still divides by 4
    xp = torch.tensor([3.0, -4.0, 100.0], dtype=F64)
    out = divisive_normalization(xp, 0.5, power=1.0, mask=torch.tensor([True, True, False]))
    torch.testing.assert_close(out[:2], torch.tensor([0.75, -1.0], dtype=F64), rtol=0, atol=1e-15)
    with pytest.raises(ParameterError, match="sigma"):
        divisive_normalization(x, 0.0)
    with pytest.raises(ParameterError, match="power"):
        divisive_normalization(x, 1.0, power=-1.0)


def test_group_kwta_keeps_k_circuits_of_largest_norm(gen):
    lay = group_layout([[0, 3, 5], [1, 2], [4, 6]], 7)
    h = torch.randn(4, 7, 3, generator=gen, dtype=F64)
    out = inhibit_groups(h, lay, "kwta", k=2)
    alive = out.norm(dim=-1) > 0
    norms = h.norm(dim=-1)
    for grp in lay.as_lists():
        assert (alive[:, grp].sum(-1) == 2).all()
        top = norms[:, grp].argsort(-1, descending=True)[:, :2]
        for b in range(4):
            assert sorted(top[b].tolist()) == sorted(i for i, a in enumerate(alive[b, grp]) if a)
    torch.testing.assert_close(out[alive], h[alive], rtol=0, atol=0)


def test_group_divisive_matches_loop_over_groups(gen):
    lay = group_layout([[0, 3, 5], [1, 2], [4, 6]], 7)
    h = torch.randn(2, 7, 3, generator=gen, dtype=F64)
    out = inhibit_groups(h, lay, "divisive", sigma=0.3, power=2.0)
    for grp in lay.as_lists():
        pool = (h[:, grp].abs() ** 2).mean(1, keepdim=True).sqrt()      # per feature
        torch.testing.assert_close(out[:, grp], h[:, grp] / (0.3 + pool), rtol=0, atol=1e-14)
    assert torch.equal(inhibit_groups(h, lay, "none"), h)
    with pytest.raises(ParameterError, match="inhibition"):
        inhibit_groups(h, lay, "wta")


def test_divisive_gradient_finite_where_a_feature_is_silent():
    """A feature that is 0 in every member has pooled = 0, where d pooled^(1/p) is infinite:
    the gradient must stay finite (0 through the root) and equal x/sigma's elsewhere."""
    x = torch.tensor([[0.0, 1.0], [0.0, -2.0], [0.0, 0.5]], requires_grad=True)  # feature 0 silent
    y = divisive_normalization(x, sigma=1.0, dim=0)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[:, 0].tolist() == [1.0, 1.0, 1.0]  # d(x / (1 + 0))/dx
    assert y[:, 0].tolist() == [0.0, 0.0, 0.0]
