"""Correlation (binned Pearson, STTC) and van Rossum distance against Elephant 1.1.1.

Tolerance 1e-9 relative: same formulas, different summation order (observed ~1e-15).
"""
import warnings

import numpy as np
import pytest

neo = pytest.importorskip("neo")
pq = pytest.importorskip("quantities")
sc = pytest.importorskip("elephant.spike_train_correlation")
from elephant import spike_train_dissimilarity as sd  # noqa: E402
from elephant.conversion import BinnedSpikeTrain  # noqa: E402

from neurobit.analysis import correlation, distance  # noqa: E402
from neurobit.errors import ParameterError  # noqa: E402

RTOL = 1e-9
T0, T1 = 0.0, 2000.0


def correlated_population(rng, n, rate_hz, shared_frac, t0, t1, grid_ms=None):
    """Poisson trains that copy a fraction of a common mother train (jittered by 1 ms).

    Pairs share ~shared_frac^2 of their spikes, so binned correlations are clearly positive.
    With ``grid_ms`` all times are rounded to that grid (as a simulation with that dt records).
    """
    dur_s = (t1 - t0) / 1000.0
    mother = rng.uniform(t0, t1, rng.poisson(rate_hz * dur_s))
    out = []
    for _ in range(n):
        own = rng.uniform(t0, t1, rng.poisson(rate_hz * (1 - shared_frac) * dur_s))
        copied = mother[rng.random(mother.size) < shared_frac]
        copied = np.clip(copied + rng.normal(0.0, 1.0, copied.size), t0, t1)
        t = np.sort(np.concatenate([own, copied]))
        if grid_ms is not None:
            t = np.round(t / grid_ms) * grid_ms
        out.append(t)
    return out


def to_neo(trains, t0=T0, t1=T1):
    return [neo.SpikeTrain(t, units="ms", t_start=t0, t_stop=t1) for t in trains]


@pytest.fixture(scope="module")
def trains():
    rng = np.random.default_rng(1234)
    tr = correlated_population(rng, 24, 20.0, 0.4, T0, T1)
    tr.append(np.zeros(0))  # silent neuron: NaN row/column in Elephant too
    return tr


@pytest.mark.parametrize("bin_ms,binary", [(5.0, False), (20.0, False), (5.0, True)])
def test_correlation_matrix_matches_elephant(trains, bin_ms, binary):
    ours = correlation.correlation_matrix(trains, bin_ms, T0, T1, binary=binary)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bst = BinnedSpikeTrain(to_neo(trains), bin_size=bin_ms * pq.ms)
        ref_fast = sc.correlation_coefficient(bst, binary=binary, fast=True)
        ref_sparse = sc.correlation_coefficient(bst, binary=binary, fast=False)
    assert ours.shape == (len(trains), len(trains))
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref_sparse))
    np.testing.assert_allclose(ours, ref_sparse, rtol=RTOL, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(ours, ref_fast, rtol=RTOL, atol=1e-12, equal_nan=True)
    off = ours[:-1, :-1][~np.eye(len(trains) - 1, dtype=bool)]
    assert off.mean() > 0.05  # shared spikes give positive correlations
    assert np.all(np.isnan(ours[-1])) and np.all(np.isnan(ours[:, -1]))
    np.testing.assert_allclose(np.diag(ours)[:-1], 1.0, rtol=1e-12)


def test_correlation_of_independent_trains_is_small():
    # independent Poisson: C_ij ~ N(0, 1 / L) with L = 400 bins; 5 sd = 0.25
    rng = np.random.default_rng(5)
    tr = [np.sort(rng.uniform(T0, T1, rng.poisson(40.0))) for _ in range(10)]
    c = correlation.correlation_matrix(tr, 5.0, T0, T1)
    off = c[~np.eye(10, dtype=bool)]
    assert np.max(np.abs(off)) < 5.0 / np.sqrt(400)


@pytest.fixture(scope="module")
def grid_trains():
    # 0.1 ms simulation grid and dt = 5.05 ms between grid points: no spike pair lies within
    # Elephant's isclose sliver (dt, dt + 1e-5 * t] (<= 0.02 ms at 2 s), so the exact window
    # and Elephant's window agree.
    rng = np.random.default_rng(99)
    return correlated_population(rng, 12, 15.0, 0.5, T0, T1, grid_ms=0.1)


def test_sttc_matches_elephant(grid_trains):
    dt = 5.05
    ours = correlation.sttc_matrix(grid_trains, dt, T0, T1)
    sts = to_neo(grid_trains)
    ref = np.array([[sc.spike_time_tiling_coefficient(a, b, dt * pq.ms) for b in sts]
                    for a in sts])
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=1e-12)
    off = ours[~np.eye(len(sts), dtype=bool)]
    assert 0.1 < off.mean() < 0.9  # correlated but not identical
    np.testing.assert_array_equal(np.diag(ours), 1.0)  # STTC of a train with itself


def test_sttc_closed_forms():
    # one spike each, far apart: P_A = P_B = 0, T_A = T_B = 2 dt / T = 0.02 -> STTC = -0.02
    a, b = np.array([100.0]), np.array([900.0])
    assert correlation.sttc(a, b, 10.0, 0.0, 1000.0) == pytest.approx(-0.02, rel=1e-12)
    # a spike 2 ms from t_start tiles only [0, 12]: T = 0.012; other term as before
    assert correlation.sttc(np.array([2.0]), b, 10.0, 0.0, 1000.0) == pytest.approx(
        0.5 * (0 - 0.02) + 0.5 * (0 - 0.012), rel=1e-12)
    assert np.isnan(correlation.sttc(a, np.zeros(0), 10.0, 0.0, 1000.0))
    with pytest.raises(ParameterError, match="dt_ms"):
        correlation.sttc(a, b, 0.0, 0.0, 1000.0)


def test_sttc_documented_difference_from_elephant():
    # spikes 5.01 ms apart near t = 1900 ms, dt = 5 ms: not within dt, but within Elephant's
    # np.isclose tolerance (dt + 1e-5 * 1900 ms = 5.019 ms). Ours excludes, Elephant includes.
    a, b = np.array([1900.0]), np.array([1905.01])
    ours = correlation.sttc(a, b, 5.0, T0, T1)
    ref = sc.spike_time_tiling_coefficient(*to_neo([a, b]), 5.0 * pq.ms)
    t = 10.0 / 2000.0
    assert ours == pytest.approx(-t, rel=1e-9)  # P = 0 on both sides
    assert ref == pytest.approx(1.0, rel=1e-9)  # P = 1 on both sides in Elephant


@pytest.mark.parametrize("tau_ms", [1.0, 5.0, 20.0, 200.0])
def test_van_rossum_matches_elephant(trains, tau_ms):
    # tau = 1 ms over a 2000 ms window spans more than one 600-tau segment of the markage
    ours = distance.van_rossum_matrix(trains, tau_ms)
    ref = sd.van_rossum_distance(to_neo(trains), time_constant=tau_ms * pq.ms)
    off = ~np.eye(len(trains), dtype=bool)
    np.testing.assert_allclose(ours[off], ref[off], rtol=RTOL)
    np.testing.assert_array_equal(np.diag(ours), 0.0)
    assert ours[0, 1] == pytest.approx(distance.van_rossum_distance(trains[0], trains[1], tau_ms),
                                       rel=1e-15)
    # against the silent train: d^2 = K(a, a), at least the spike count
    assert np.all(ours[:-1, -1] ** 2 >= np.array([t.size for t in trains[:-1]]) * (1 - 1e-12))


def test_van_rossum_closed_forms():
    rng = np.random.default_rng(2)
    a = np.sort(rng.uniform(0.0, 1000.0, 50))
    assert distance.van_rossum_distance(a, a.copy(), 10.0) == 0.0  # identical trains
    assert distance.van_rossum_distance(np.array([3.0]), np.zeros(0), 10.0) == pytest.approx(1.0)
    # two single spikes Delta apart: d^2 = 2 - 2 exp(-Delta / tau)
    for delta in (0.5, 10.0, 80.0):
        d = distance.van_rossum_distance(np.array([100.0]), np.array([100.0 + delta]), 10.0)
        assert d == pytest.approx(np.sqrt(2 - 2 * np.exp(-delta / 10.0)), rel=1e-12)
    # limits: tau = inf counts spikes only; tau = 0 counts non-coincident spikes
    assert distance.van_rossum_distance(a, a[:30] + 1.0, np.inf) == 20.0
    assert distance.van_rossum_distance(a, np.r_[a[:30], 2000.0], 0.0) == pytest.approx(
        np.sqrt(20 + 1))
    with pytest.raises(ParameterError, match="tau_ms"):
        distance.van_rossum_distance(a, a, -1.0)
    with pytest.raises(ParameterError, match="sorted"):
        distance.van_rossum_distance(a[::-1], a, 5.0)


def test_markage_against_brute_force():
    rng = np.random.default_rng(4)
    x = np.sort(rng.uniform(0.0, 2000.0, 300))  # spans > 600: several segments
    brute = np.array([np.exp(x[:k] - x[k]).sum() for k in range(x.size)])
    np.testing.assert_allclose(distance.markage(x), brute, rtol=1e-12, atol=1e-300)
