"""Conflict / uncertainty / divergence measures and running z-score calibration.

Checked: identical circuits give conflict exactly 0, opposing circuits 1, random ones in
between, and conflict grows monotonically as circuits rotate apart; the cosine form matches
torch's cosine similarity and the variance form its closed form; normalised entropy is 0 for a
one-hot and 1 for a uniform distribution and matches scipy; JS is 0 for identical candidates,
1 for disjoint one-hots and matches scipy's Jensen-Shannon distance squared; the running
z-score equals numpy mean/std of the stream.
"""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as sp_entropy

from neurobit.errors import ShapeError
from neurobit.functional.monitoring import (calibrate, circuit_conflict, js_divergence,
                                            normalized_entropy, pairwise_cosine_dissimilarity,
                                            variance_conflict, zscore_init, zscore_normalize,
                                            zscore_std, zscore_update)

F64 = torch.float64
MEASURES = ["cosine", "variance", "mean"]


@pytest.mark.parametrize("measure", MEASURES)
def test_identical_circuits_have_zero_conflict_exactly(measure, gen):
    base = torch.randn(3, 1, 17, generator=gen) * 3.3
    h = base.expand(3, 5, 17)
    assert torch.equal(circuit_conflict(h, measure), torch.zeros(3))


@pytest.mark.parametrize("measure", MEASURES)
def test_two_opposing_circuits_have_conflict_one(measure, gen):
    a = torch.randn(4, 1, 9, generator=gen)
    h = torch.cat([a, -a], 1)
    torch.testing.assert_close(circuit_conflict(h, measure), torch.ones(4), rtol=0, atol=1e-6)


def test_half_against_half(gen):
    a = torch.randn(2, 1, 9, generator=gen, dtype=F64)
    h = torch.cat([a, a, -a, -a], 1)
    # pairs across the split (4 of 6) have cosine -1: (4 * 1 + 2 * 0) / 6 = 2/3
    torch.testing.assert_close(pairwise_cosine_dissimilarity(h), torch.full((2,), 2 / 3, dtype=F64))
    torch.testing.assert_close(variance_conflict(h), torch.ones(2, dtype=F64))  # mean is 0


def test_random_circuits_lie_in_between(gen):
    h = torch.randn(64, 8, 64, generator=gen, dtype=F64)
    cos = pairwise_cosine_dissimilarity(h)
    var = variance_conflict(h)
    assert 0.45 < float(cos.mean()) < 0.55          # independent directions: cos ~ 0
    assert 0.80 < float(var.mean()) < 0.95          # 1 - 1/C = 0.875 for C = 8
    assert (cos > 0.3).all() and (cos < 0.7).all() and (var < 1).all()


def test_conflict_grows_monotonically_as_circuits_rotate_apart(gen):
    C, D = 5, 12
    basis, _ = torch.linalg.qr(torch.randn(D, 2, generator=gen, dtype=F64))
    angles = torch.linspace(0, math.pi, C, dtype=F64)  # circuit i heads at a * angle_i
    values = {m: [] for m in MEASURES}
    for a in torch.linspace(0, 1, 21, dtype=F64):
        th = a * angles
        h = (torch.cos(th)[:, None] * basis[:, 0] + torch.sin(th)[:, None] * basis[:, 1])[None]
        for m in MEASURES:
            values[m].append(float(circuit_conflict(h, m)))
    for m in MEASURES:
        v = np.array(values[m])
        assert v[0] == pytest.approx(0, abs=1e-12)
        assert (np.diff(v) > 0).all(), m
        assert v[-1] > 0.45  # cosine: mean (1 - cos(delta))/2 over the spread = 0.479


def test_cosine_and_variance_forms_match_their_definitions(gen):
    h = torch.randn(6, 4, 7, generator=gen, dtype=F64)
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    cos = torch.stack([torch.nn.functional.cosine_similarity(h[:, i], h[:, j], dim=-1)
                       for i, j in pairs], -1).mean(-1)
    torch.testing.assert_close(pairwise_cosine_dissimilarity(h), (1 - cos) / 2, rtol=0, atol=1e-12)
    ratio = (h.mean(1) ** 2).sum(-1) / (h ** 2).sum(-1).mean(1)
    torch.testing.assert_close(variance_conflict(h), 1 - ratio, rtol=0, atol=1e-12)
    with pytest.raises(ShapeError, match="h"):
        pairwise_cosine_dissimilarity(h[:, :1])


def test_normalized_entropy(gen):
    inf = float("inf")
    one_hot = torch.tensor([[0.0, -inf, -inf], [-inf, 3.0, -inf]])
    assert torch.equal(normalized_entropy(one_hot), torch.zeros(2))
    torch.testing.assert_close(normalized_entropy(torch.full((3, 11), 2.5)), torch.ones(3),
                               rtol=0, atol=1e-6)
    logits = torch.randn(5, 6, generator=gen, dtype=F64)
    ref = sp_entropy(torch.softmax(logits, -1).numpy(), axis=-1) / math.log(6)
    np.testing.assert_allclose(normalized_entropy(logits).numpy(), ref, rtol=1e-12)
    assert float(normalized_entropy(torch.tensor([[40.0, 0.0, 0.0]]))) < 1e-15


def test_js_divergence(gen):
    p = torch.softmax(torch.randn(4, 7, generator=gen, dtype=F64), -1)
    same = p[:, None].expand(4, 3, 7)
    torch.testing.assert_close(js_divergence(same), torch.zeros(4, dtype=F64), rtol=0, atol=1e-12)
    for n in (2, 3, 5):
        disjoint = torch.eye(n, dtype=F64)[None]            # n one-hots on different outcomes
        torch.testing.assert_close(js_divergence(disjoint), torch.ones(1, dtype=F64))
    q = torch.softmax(torch.randn(4, 7, generator=gen, dtype=F64), -1)
    ref = [jensenshannon(p[b].numpy(), q[b].numpy(), base=2) ** 2 for b in range(4)]
    np.testing.assert_allclose(js_divergence([p, q]).numpy(), ref, rtol=1e-9)
    # candidates along another axis: [n, B, K] with dim=0
    torch.testing.assert_close(js_divergence(torch.stack([p, q]), dim=0), js_divergence([p, q]))


def test_running_zscore_equals_numpy_over_a_stream():
    rng = np.random.default_rng(0)
    stream = rng.normal(3.0, 2.5, size=(1000, 3)) * np.array([1, 10, 0.01])
    st = zscore_init((3,))
    i = 0
    while i < len(stream):
        n = int(rng.integers(1, 18))
        st = zscore_update(st, torch.from_numpy(stream[i:i + n]))
        i += n
        seen = stream[:i]
        np.testing.assert_allclose(st.mean.numpy(), seen.mean(0), rtol=1e-10)
        np.testing.assert_allclose(zscore_std(st).numpy(), seen.std(0), rtol=1e-9, atol=1e-15)
    assert st.count.tolist() == [1000.0] * 3
    np.testing.assert_allclose(zscore_std(st, ddof=1).numpy(), stream.std(0, ddof=1), rtol=1e-9)
    x = torch.tensor([[0.0, 5.0, -1.0]], dtype=F64)
    z = zscore_normalize(st, x, eps=0.0)
    np.testing.assert_allclose(z.numpy(), (x.numpy() - stream.mean(0)) / stream.std(0), rtol=1e-9)


def test_zscore_scalar_stream_skips_nonfinite_and_is_causal():
    st = zscore_init()
    st = zscore_update(st, torch.tensor(2.0))                # a single value
    st = zscore_update(st, torch.tensor([4.0, float("nan"), float("inf")]))
    assert float(st.count) == 2 and float(st.mean) == 3.0 and float(zscore_std(st)) == 1.0
    fresh = zscore_init()
    assert torch.equal(zscore_normalize(fresh, torch.tensor([7.0])), torch.zeros(1))
    cn, st2 = calibrate(st, torch.tensor([3.0, 4.0, 100.0]))
    torch.testing.assert_close(cn, torch.sigmoid(torch.tensor([0.0, 1.0, 97.0])), atol=1e-6,
                               rtol=0)  # scored against the state before the batch
    assert float(st2.count) == 5
    _, same = calibrate(st, torch.tensor([1.0]), update=False)
    assert same is st
