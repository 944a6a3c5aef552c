"""neurobit.analysis.spike_stats against Elephant 1.1.1 and closed forms.

Reference: Elephant on neo.SpikeTrain objects in ms. Tolerance: 1e-9 relative (the formulas are
the same; observed differences are a few ulps, ~1e-15, from a different summation order).
"""
import subprocess
import sys
import warnings

import numpy as np
import pytest

neo = pytest.importorskip("neo")
pq = pytest.importorskip("quantities")
es = pytest.importorskip("elephant.statistics")
from elephant.conversion import BinnedSpikeTrain  # noqa: E402

from neurobit.analysis import spike_stats as ss  # noqa: E402
from neurobit.errors import ParameterError, ShapeError  # noqa: E402

RTOL = 1e-9
T0, T1 = 250.0, 3250.0  # 3 s window that does not start at 0


def poisson_trains(rng, n, rates_hz, t0, t1):
    """Homogeneous Poisson trains: count ~ Poisson(rate * T), times uniform, sorted."""
    rates = np.broadcast_to(np.asarray(rates_hz, dtype=float), (n,))
    dur_s = (t1 - t0) / 1000.0
    return [np.sort(rng.uniform(t0, t1, rng.poisson(r * dur_s))) for r in rates]


def regular_train(period_ms, t0, t1, phase_ms=0.0):
    return t0 + phase_ms + period_ms * np.arange(int((t1 - t0 - phase_ms) // period_ms))


@pytest.fixture(scope="module")
def trains():
    rng = np.random.default_rng(20240611)
    tr = poisson_trains(rng, 40, rng.uniform(1.0, 40.0, 40), T0, T1)
    tr += [regular_train(p, T0, T1, phase_ms=0.3) for p in (7.0, 25.0, 100.0)]
    # edge cases: silent, one spike, two spikes (one interval), spikes on t_start / t_stop,
    # spikes on a 0.1 ms grid (exactly on 5 ms bin edges up to float rounding)
    tr += [np.zeros(0), np.array([1000.0]), np.array([400.0, 900.0]), np.array([T0, 1000.0, T1])]
    tr += [np.round(np.sort(rng.uniform(T0, T1, 80)) * 10.0) / 10.0]
    tr += [T0 + 5.0 * np.arange(1, 600) + 1e-12]  # on edges, nudged by float noise
    return tr


@pytest.fixture(scope="module")
def neo_trains(trains):
    return [neo.SpikeTrain(t, units="ms", t_start=T0, t_stop=T1) for t in trains]


def test_firing_rates_match_elephant(trains, neo_trains):
    ours = ss.firing_rates(trains, T0, T1)
    ref = np.array([es.mean_firing_rate(st).rescale("Hz").item() for st in neo_trains])
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=0)
    assert ss.mean_rate(trains, T0, T1) == pytest.approx(ref.mean(), rel=RTOL)
    assert ours.max() > 10.0  # the data set is not trivially silent


def test_fano_factor_matches_elephant(trains, neo_trains):
    ours = ss.fano_factor(trains, T0, T1)
    assert ours == pytest.approx(es.fanofactor(neo_trains), rel=RTOL)
    # Poisson trials of one neuron: F ~ 1. Counts of 400 trials at mean 60:
    # sd of the sample Fano factor ~ sqrt(2 / (n - 1)) = 0.071; allow 5 sd.
    rng = np.random.default_rng(7)
    trials = poisson_trains(rng, 400, 20.0, T0, T1)
    f = ss.fano_factor(trials, T0, T1)
    assert f == pytest.approx(es.fanofactor(
        [neo.SpikeTrain(t, units="ms", t_start=T0, t_stop=T1) for t in trials]), rel=RTOL)
    assert abs(f - 1.0) < 5 * np.sqrt(2.0 / 399)
    assert np.isnan(ss.fano_factor([np.zeros(0), np.zeros(0)], T0, T1))


def test_isi_matches_elephant(trains, neo_trains):
    for t, st in zip(trains, neo_trains):
        np.testing.assert_allclose(ss.isi(t), es.isi(st).magnitude, rtol=RTOL, atol=0)


def test_cv_matches_elephant_where_defined(trains, neo_trains):
    ours = ss.cv_isi(trains, T0, T1)
    n_int = np.array([max(len(t) - 1, 0) for t in trains])
    defined = n_int >= 2
    ref = np.array([es.cv(es.isi(st).magnitude) for st, ok in zip(neo_trains, defined) if ok])
    np.testing.assert_allclose(ours[defined], ref, rtol=RTOL, atol=1e-15)
    # fewer than two intervals: NaN (Elephant gives 0.0 for a single interval, documented)
    assert np.all(np.isnan(ours[~defined]))
    assert (~defined).sum() == 3  # silent, one spike, two spikes


def test_cv2_matches_elephant(trains, neo_trains):
    ours = ss.cv2_isi(trains, T0, T1)
    for k, st in enumerate(neo_trains):
        d = es.isi(st).magnitude
        if d.size >= 2:
            assert ours[k] == pytest.approx(es.cv2(d), rel=RTOL, abs=1e-15)
        else:
            assert np.isnan(ours[k])


def test_regular_train_has_cv_zero_and_poisson_cv_one():
    reg = [regular_train(p, 0.0, 5000.0) for p in (3.0, 10.0, 33.3)]
    np.testing.assert_allclose(ss.cv_isi(reg, 0.0, 5000.0), 0.0, atol=1e-12)
    np.testing.assert_allclose(ss.cv2_isi(reg, 0.0, 5000.0), 0.0, atol=1e-12)
    # Poisson: ISIs are exponential; by the delta method the sample CV of n exponential
    # intervals has variance 1/n (moments mu2 = m^2, mu3 = 2 m^3, mu4 = 9 m^4 give
    # 1 - 2 + 2 = 1). 50 Hz for 200 s: n ~ 10000 intervals, allow 5 sd = 5 / sqrt(n).
    rng = np.random.default_rng(3)
    (p,) = poisson_trains(rng, 1, 50.0, 0.0, 200_000.0)
    n = p.size - 1
    cv = ss.cv_isi([p], 0.0, 200_000.0)[0]
    assert abs(cv - 1.0) < 5.0 / np.sqrt(n)
    # CV2 of a Poisson train is also 1 in expectation; its terms are bounded in [0, 2] and
    # consecutive terms share one interval, so sd(mean) < 2 * sqrt(2 / n). Allow 5 of those.
    assert abs(ss.cv2_isi([p], 0.0, 200_000.0)[0] - 1.0) < 5 * 2 * np.sqrt(2.0 / n)


@pytest.mark.parametrize("bin_ms", [5.0, 7.0, 1.0, 100.0])
def test_psth_and_binning_match_elephant(trains, neo_trains, bin_ms):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bst = BinnedSpikeTrain(neo_trains, bin_size=bin_ms * pq.ms)
        hist = es.time_histogram(neo_trains, bin_ms * pq.ms, output="rate")
    edges, counts = ss.bin_spikes(trains, bin_ms, T0, T1)
    np.testing.assert_array_equal(counts, bst.to_array())
    np.testing.assert_allclose(edges, bst.bin_edges.magnitude, rtol=RTOL)
    e2, rate = ss.psth(trains, bin_ms, T0, T1)
    np.testing.assert_array_equal(e2, edges)
    np.testing.assert_allclose(rate, hist.rescale("Hz").magnitude.ravel(), rtol=RTOL, atol=1e-12)
    assert hist.t_start.rescale("ms").item() == pytest.approx(edges[0])
    # the partial bin (7 ms does not divide 3000 ms) is dropped, as in Elephant
    assert counts.shape[1] == int((T1 - T0) // bin_ms)


def test_bin_edge_spikes_counted_in_next_bin():
    # A simulation on a 0.1 ms grid starting at 250 ms: spike k at 250 + 0.1 k. With 0.3 ms bins
    # spike k belongs to bin k // 3 exactly, but float rounding puts (t - t0) / bin just below an
    # integer for ~1 in 8 spikes; the 1e-8-bin tolerance (Elephant's convention) fixes them all.
    k = np.arange(1000)
    t0, t1 = 250.0, 350.0
    t = t0 + 0.1 * k
    x = (t - t0) * (1 / 0.3)
    assert np.sum(np.floor(x) != k // 3) > 50  # the naive floor really is wrong here
    _, c = ss.bin_spikes([t], 0.3, t0, t1)
    n_bins = 333  # floor(100 / 0.3); spike 999 (at 349.9 ms) falls in the dropped partial bin
    np.testing.assert_array_equal(c[0], np.bincount(k // 3)[:n_bins])
    st = neo.SpikeTrain(t, units="ms", t_start=t0, t_stop=t1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(c, BinnedSpikeTrain(st, bin_size=0.3 * pq.ms).to_array())
    # a spike exactly at t_stop lies outside the last bin [t_stop - bin, t_stop)
    _, c2 = ss.bin_spikes([np.array([0.0, 5.0, 10.0])], 5.0, 0.0, 10.0)
    np.testing.assert_array_equal(c2, [[1, 1]])


def test_population_activity(trains, neo_trains):
    edges, act = ss.population_activity(trains, 10.0, T0, T1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = BinnedSpikeTrain(neo_trains, bin_size=10 * pq.ms).to_array()
    np.testing.assert_allclose(act, (b > 0).sum(axis=0) / len(trains), rtol=RTOL)
    assert len(edges) == act.size + 1
    # closed form: neuron i fires only in bin i (of 4) -> 1/4 of the neurons active in each bin
    diag = [np.array([5.0 + 10.0 * i]) for i in range(4)]
    np.testing.assert_allclose(ss.population_activity(diag, 10.0, 0.0, 40.0)[1], 0.25)


def test_sparsity_closed_forms(trains):
    n = 8
    dense = [np.arange(0.5, 100.0, 10.0) for _ in range(n)]  # every neuron 1 spike per bin
    one = [np.arange(0.5, 100.0, 10.0)] + [np.zeros(0)] * (n - 1)
    _, a_dense = ss.population_sparsity(dense, 10.0, 0.0, 100.0)
    _, a_one = ss.population_sparsity(one, 10.0, 0.0, 100.0)
    np.testing.assert_allclose(a_dense, 1.0)
    np.testing.assert_allclose(a_one, 1.0 / n)
    vg_one = ss.population_sparsity(one, 10.0, 0.0, 100.0, "vinje_gallant")[1]
    vg_dense = ss.population_sparsity(dense, 10.0, 0.0, 100.0, "vinje_gallant")[1]
    np.testing.assert_allclose(vg_one, 1.0)
    np.testing.assert_allclose(vg_dense, 0.0, atol=1e-15)
    # lifetime: a neuron firing in 1 of K = 10 bins -> 1/K; a regular one -> 1; silent -> NaN
    life = ss.lifetime_sparsity([np.array([3.0]), np.arange(0.5, 100.0, 10.0), np.zeros(0)],
                                10.0, 0.0, 100.0)
    np.testing.assert_allclose(life[:2], [0.1, 1.0])
    assert np.isnan(life[2])
    # general case against the formula on the counts
    _, counts = ss.bin_spikes(trains, 20.0, T0, T1)
    c = counts.astype(float)
    with np.errstate(invalid="ignore"):
        ref = c.mean(0) ** 2 / (c ** 2).mean(0)
    np.testing.assert_allclose(ss.population_sparsity(trains, 20.0, T0, T1)[1], ref, rtol=RTOL)
    with pytest.raises(ParameterError, match="measure"):
        ss.population_sparsity(trains, 20.0, T0, T1, measure="gini")


def test_sonata_round_trip(trains):
    ts, ids = ss.trains_to_sonata(trains)
    assert ts.dtype == np.float64 and ids.dtype == np.uint64
    assert np.all(np.diff(ts) >= 0)  # sorted by time
    assert ts.size == sum(t.size for t in trains)
    rng = np.random.default_rng(0)
    perm = rng.permutation(ts.size)
    back = ss.trains_from_sonata(ts[perm], ids[perm], len(trains))
    assert len(back) == len(trains)
    for a, b in zip(back, trains):
        np.testing.assert_array_equal(a, b)
    # trailing silent nodes get empty trains
    assert [t.size for t in ss.trains_from_sonata([1.0, 2.0], [1, 1], 4)] == [0, 2, 0, 0]


def test_bad_input_raises_naming_the_parameter():
    with pytest.raises(ParameterError, match="t_stop_ms"):
        ss.firing_rates([np.array([1.0])], 10.0, 5.0)
    with pytest.raises(ParameterError, match=r"trains\[1\].*sorted"):
        ss.firing_rates([np.array([1.0]), np.array([3.0, 2.0])], 0.0, 5.0)
    with pytest.raises(ParameterError, match=r"trains\[0\].*outside"):
        ss.cv_isi([np.array([1.0, 7.0])], 0.0, 5.0)
    with pytest.raises(ShapeError, match=r"trains\[0\]"):
        ss.firing_rates([np.ones((2, 2))], 0.0, 5.0)
    with pytest.raises(ParameterError, match="bin_ms"):
        ss.psth([np.array([1.0])], 0.0, 0.0, 5.0)
    with pytest.raises(ParameterError, match="node_ids"):
        ss.trains_from_sonata([1.0, 2.0], [0, 3], 3)
    with pytest.raises(ShapeError, match="node_ids"):
        ss.trains_from_sonata([1.0, 2.0], [0], 3)


def test_import_is_numpy_only():
    code = ("import sys, neurobit.analysis; "
            "bad = [m for m in ('torch', 'matplotlib', 'scipy', 'elephant') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
