"""Spike-train representation and first-order statistics (numpy only).

Representation used throughout ``neurobit.analysis``: a *list of spike trains*, one 1-D float64
array of spike times in **ms** per neuron (sorted, ascending), always together with an explicit
observation window ``[t_start_ms, t_stop_ms]``. Every spike must lie inside the window.
SONATA files store the same thing as two flat arrays (``timestamps`` in ms, ``node_ids``);
:func:`trains_from_sonata` and :func:`trains_to_sonata` convert between the two.

Every statistic here is checked number for number against Elephant 1.1.1 in
``tests/analysis/test_spike_stats.py`` (the Elephant name is given in each docstring).

Binning convention (shared by :func:`bin_spikes`, :func:`psth`, the correlation module), the
same as ``elephant.conversion.BinnedSpikeTrain``:

- ``n_bins = floor((t_stop - t_start) / bin_ms)``; a trailing partial bin is dropped.
- bin of a spike ``k = floor((t - t_start) * (1 / bin_ms))``, except that a value within
  ``BIN_TOLERANCE`` (1e-8, in bins) below an integer is moved up to it (float rounding of spikes
  that sit on a bin edge); spikes with ``k >= n_bins`` (e.g. exactly at ``t_stop``) are dropped.
- edges ``t_start + bin_ms * arange(n_bins + 1)`` (``np.linspace``), bins are ``[e_k, e_{k+1})``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from neurobit.errors import ParameterError, ShapeError

#: Tolerance (in units of one bin) under which a spike just below a bin edge counts in the next bin.
BIN_TOLERANCE = 1e-8


# ---------------------------------------------------------------------------------------------
# representation
# ---------------------------------------------------------------------------------------------
def check_window(t_start_ms: float, t_stop_ms: float) -> tuple[float, float]:
    """``(t_start_ms, t_stop_ms)`` as floats; raise unless both are finite and start < stop."""
    t0, t1 = float(t_start_ms), float(t_stop_ms)
    if not (np.isfinite(t0) and np.isfinite(t1)):
        raise ParameterError(f"t_start_ms and t_stop_ms must be finite, got {t0}, {t1}")
    if not t1 > t0:
        raise ParameterError(f"t_stop_ms ({t1}) must be greater than t_start_ms ({t0})")
    return t0, t1


def as_trains(trains: Sequence, t_start_ms: float, t_stop_ms: float) -> list[np.ndarray]:
    """Validate spike trains and return them as a list of 1-D float64 arrays (ms).

    Args:
        trains: sequence of array-likes of spike times in ms, one per neuron.
        t_start_ms, t_stop_ms: observation window; every spike must satisfy
            ``t_start_ms <= t <= t_stop_ms``.

    Raises:
        ShapeError: a train that is not 1-D.
        ParameterError: NaN/inf spike times, unsorted trains, spikes outside the window.
    """
    t0, t1 = check_window(t_start_ms, t_stop_ms)
    if isinstance(trains, np.ndarray) and trains.dtype != object and trains.ndim != 2:
        raise ShapeError(
            f"trains must be a list of 1-D arrays, got an array of shape {trains.shape}"
        )
    out = []
    for i, tr in enumerate(trains):
        a = np.asarray(tr, dtype=np.float64)
        if a.ndim != 1:
            raise ShapeError(f"trains[{i}] must be 1-D spike times, got shape {a.shape}")
        if a.size:
            if not np.all(np.isfinite(a)):
                raise ParameterError(f"trains[{i}] contains NaN or infinite spike times")
            if np.any(np.diff(a) < 0):
                raise ParameterError(f"trains[{i}] is not sorted ascending (use np.sort)")
            if a[0] < t0 or a[-1] > t1:
                raise ParameterError(
                    f"trains[{i}] has spikes outside [t_start_ms, t_stop_ms] = [{t0}, {t1}] "
                    f"(first {a[0]}, last {a[-1]})"
                )
        out.append(a)
    return out


def trains_from_sonata(timestamps_ms, node_ids, n_nodes: int) -> list[np.ndarray]:
    """Build one sorted spike train per node from SONATA-style flat arrays.

    Args:
        timestamps_ms: ``[n_spikes]`` spike times in ms (any order).
        node_ids: ``[n_spikes]`` integer node id of each spike, ``0 <= id < n_nodes``.
        n_nodes: number of nodes (neurons); nodes without spikes get an empty train.

    Returns:
        list of ``n_nodes`` float64 arrays, each sorted ascending.
    """
    ts = np.asarray(timestamps_ms, dtype=np.float64)
    ids = np.asarray(node_ids)
    if ts.ndim != 1 or ids.ndim != 1 or ts.shape != ids.shape:
        raise ShapeError(
            "timestamps_ms and node_ids must be 1-D of equal length, "
            f"got {ts.shape} and {ids.shape}"
        )
    n_nodes = int(n_nodes)
    if n_nodes < 0:
        raise ParameterError(f"n_nodes must be >= 0, got {n_nodes}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        if not np.all(ids == np.round(ids)):
            raise ParameterError("node_ids must be integers")
    ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= n_nodes):
        raise ParameterError(
            f"node_ids must lie in [0, n_nodes) = [0, {n_nodes}), got [{ids.min()}, {ids.max()}]"
        )
    if not np.all(np.isfinite(ts)):
        raise ParameterError("timestamps_ms contains NaN or infinite values")
    order = np.lexsort((ts, ids))  # by node, then by time
    ts_sorted = ts[order]
    bounds = np.searchsorted(ids[order], np.arange(n_nodes + 1), side="left")
    return [ts_sorted[bounds[k]:bounds[k + 1]].copy() for k in range(n_nodes)]


def trains_to_sonata(trains: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Flatten spike trains into SONATA arrays sorted by time (ties by node id).

    Returns:
        ``(timestamps_ms [n_spikes] float64, node_ids [n_spikes] uint64)``.
    """
    arrays = [np.asarray(t, dtype=np.float64).ravel() for t in trains]
    ts = np.concatenate(arrays) if arrays else np.zeros(0)
    ids = np.repeat(np.arange(len(arrays), dtype=np.uint64), [a.size for a in arrays])
    order = np.lexsort((ids, ts))
    return ts[order], ids[order]


def _flatten(trains: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate trains: ``(times [S], neuron index [S], counts [N])``."""
    counts = np.array([t.size for t in trains], dtype=np.int64)
    times = np.concatenate(trains) if trains else np.zeros(0)
    idx = np.repeat(np.arange(len(trains)), counts)
    return times, idx, counts


# ---------------------------------------------------------------------------------------------
# counts and rates
# ---------------------------------------------------------------------------------------------
def spike_counts(trains: Sequence, t_start_ms: float, t_stop_ms: float) -> np.ndarray:
    """Spikes per neuron in the closed window ``[t_start_ms, t_stop_ms]``: ``[N]`` int64."""
    trains = as_trains(trains, t_start_ms, t_stop_ms)
    return np.array([t.size for t in trains], dtype=np.int64)


def firing_rates(trains: Sequence, t_start_ms: float, t_stop_ms: float) -> np.ndarray:
    """Mean firing rate of each neuron in Hz: ``r_i = 1000 * n_i / (t_stop_ms - t_start_ms)``.

    ``n_i`` counts the spikes of neuron i in ``[t_start_ms, t_stop_ms]``. Returns ``[N]`` float64.
    Elephant: ``elephant.statistics.mean_firing_rate(st)`` rescaled to Hz.
    """
    counts = spike_counts(trains, t_start_ms, t_stop_ms)
    return counts * (1000.0 / (float(t_stop_ms) - float(t_start_ms)))


def mean_rate(trains: Sequence, t_start_ms: float, t_stop_ms: float) -> float:
    """Population mean firing rate in Hz (mean of :func:`firing_rates`; NaN for no neurons)."""
    r = firing_rates(trains, t_start_ms, t_stop_ms)
    return float(r.mean()) if r.size else float("nan")


def fano_factor(trains: Sequence, t_start_ms: float, t_stop_ms: float) -> float:
    """Fano factor of spike counts across trains (trials or neurons): ``F = var(n) / mean(n)``.

    ``var`` is the population variance (ddof = 0). NaN when there are no trains or no spikes.
    Elephant: ``elephant.statistics.fanofactor`` (same definition, same NaN case).
    """
    counts = spike_counts(trains, t_start_ms, t_stop_ms).astype(np.float64)
    if counts.size == 0 or not np.any(counts):
        return float("nan")
    return float(counts.var() / counts.mean())


# ---------------------------------------------------------------------------------------------
# inter-spike intervals
# ---------------------------------------------------------------------------------------------
def isi(train) -> np.ndarray:
    """Inter-spike intervals of one train in ms: ``I_k = t_{k+1} - t_k``, ``[n - 1]``.

    Elephant: ``elephant.statistics.isi``.
    """
    a = np.asarray(train, dtype=np.float64)
    if a.ndim != 1:
        raise ShapeError(f"train must be 1-D spike times, got shape {a.shape}")
    d = np.diff(a)
    if np.any(d < 0):
        raise ParameterError("train is not sorted ascending (negative inter-spike intervals)")
    return d


def _intervals(trains: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All ISIs of all trains at once: ``(intervals [K], neuron index [K], n_intervals [N])``."""
    times, idx, counts = _flatten(trains)
    if times.size < 2:
        return np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(len(trains), dtype=np.int64)
    same = idx[1:] == idx[:-1]
    return np.diff(times)[same], idx[1:][same], np.maximum(counts - 1, 0)


def cv_isi(trains: Sequence, t_start_ms: float, t_stop_ms: float) -> np.ndarray:
    """Coefficient of variation of the ISIs of each neuron: ``CV = std(I) / mean(I)``, ``[N]``.

    ``std`` is the population standard deviation (ddof = 0), as ``elephant.statistics.cv``
    (= ``scipy.stats.variation``) applied to ``elephant.statistics.isi(st)``.
    A regular train has CV 0; a Poisson train has CV 1 (estimate sd ~ 1/sqrt(n_intervals)).

    NaN for neurons with fewer than 2 intervals (fewer than 3 spikes). Elephant returns NaN (with
    a warning) for 0 intervals but 0.0 for a single interval, which is no measurement of
    variability; we return NaN there too. Everywhere else the values agree.
    """
    trains = as_trains(trains, t_start_ms, t_stop_ms)
    d, k, n = _intervals(trains)
    out = np.full(len(trains), np.nan)
    ok = n >= 2
    if not np.any(ok):
        return out
    s = np.bincount(k, weights=d, minlength=len(trains))
    mean = np.divide(s, n, out=np.full(len(trains), np.nan), where=n > 0)
    dev2 = np.bincount(k, weights=(d - mean[k]) ** 2, minlength=len(trains))
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = np.sqrt(dev2 / np.where(n > 0, n, 1)) / mean
    out[ok] = cv[ok]
    return out


def cv2_isi(trains: Sequence, t_start_ms: float, t_stop_ms: float) -> np.ndarray:
    """Local variation CV2 of each neuron (Holt et al. 1996), ``[N]``.

    ``CV2 = mean_k 2 |I_{k+1} - I_k| / (I_{k+1} + I_k)`` over consecutive ISI pairs; 1 for Poisson,
    0 for regular trains, insensitive to slow rate changes. NaN for fewer than 2 intervals
    (Elephant's ``cv2(isi, with_nan=True)``).
    Elephant: ``elephant.statistics.cv2(elephant.statistics.isi(st))``.
    """
    trains = as_trains(trains, t_start_ms, t_stop_ms)
    d, k, n = _intervals(trains)
    out = np.full(len(trains), np.nan)
    if d.size < 2:
        return out
    same = k[1:] == k[:-1]
    a, b, kk = d[:-1][same], d[1:][same], k[1:][same]
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = 2.0 * np.abs(b - a) / (a + b)
    m = n - 1  # number of consecutive pairs per neuron
    ok = m >= 1
    s = np.bincount(kk, weights=terms, minlength=len(trains))
    out[ok] = s[ok] / m[ok]
    return out


# ---------------------------------------------------------------------------------------------
# binned activity
# ---------------------------------------------------------------------------------------------
def n_bins_for(bin_ms: float, t_start_ms: float, t_stop_ms: float) -> int:
    """Number of whole bins of ``bin_ms`` in the window (see the module's binning convention)."""
    t0, t1 = check_window(t_start_ms, t_stop_ms)
    bin_ms = float(bin_ms)
    if not (np.isfinite(bin_ms) and bin_ms > 0):
        raise ParameterError(f"bin_ms must be a positive finite number, got {bin_ms}")
    x = (t1 - t0) / bin_ms
    n = int(x) + (1 if 1 - BIN_TOLERANCE <= x % 1 else 0)
    if n <= 0:
        raise ParameterError(f"bin_ms ({bin_ms}) is longer than the window ({t1 - t0} ms)")
    return n


def bin_spikes(trains: Sequence, bin_ms: float, t_start_ms: float, t_stop_ms: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Spike counts per neuron and bin.

    Returns:
        ``(edges [n_bins + 1] ms, counts [N, n_bins] int64)`` with the binning convention of the
        module docstring (identical to ``elephant.conversion.BinnedSpikeTrain(...).to_array()``).
    """
    trains = as_trains(trains, t_start_ms, t_stop_ms)
    t0 = float(t_start_ms)
    nb = n_bins_for(bin_ms, t_start_ms, t_stop_ms)
    edges = np.linspace(t0, t0 + nb * float(bin_ms), nb + 1)
    times, idx, _ = _flatten(trains)
    x = (times - t0) * (1.0 / float(bin_ms))
    k = np.floor(x).astype(np.int64) + (1 - BIN_TOLERANCE <= x % 1)
    keep = k < nb
    counts = np.bincount(idx[keep] * nb + k[keep], minlength=len(trains) * nb)
    return edges, counts.reshape(len(trains), nb).astype(np.int64)


def psth(trains: Sequence, bin_ms: float, t_start_ms: float, t_stop_ms: float
         ) -> tuple[np.ndarray, np.ndarray]:
    """Peri-stimulus time histogram: population-averaged rate per bin in Hz.

    ``rate_k = 1000 * sum_i c_ik / (N * bin_ms)`` with ``c_ik`` the spike count of neuron i in
    bin k. Returns ``(edges [n_bins + 1] ms, rate [n_bins] Hz)``.
    Elephant: ``elephant.statistics.time_histogram(sts, bin_size, output='rate')`` (in 1/ms there).
    """
    edges, counts = bin_spikes(trains, bin_ms, t_start_ms, t_stop_ms)
    if counts.shape[0] == 0:
        raise ParameterError("trains must contain at least one spike train")
    return edges, counts.sum(axis=0) * (1000.0 / (counts.shape[0] * float(bin_ms)))


def population_activity(trains: Sequence, bin_ms: float, t_start_ms: float, t_stop_ms: float
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of neurons that fire at least once in each bin: ``A_k = (1/N) sum_i 1[c_ik > 0]``.

    Returns ``(edges [n_bins + 1] ms, activity [n_bins] in [0, 1])``.
    """
    edges, counts = bin_spikes(trains, bin_ms, t_start_ms, t_stop_ms)
    if counts.shape[0] == 0:
        raise ParameterError("trains must contain at least one spike train")
    return edges, (counts > 0).mean(axis=0)


def treves_rolls(r: np.ndarray, axis: int = -1) -> np.ndarray:
    """Treves-Rolls activity ratio along ``axis``: ``a = (mean r)^2 / mean(r^2)``, in ``(0, 1]``.

    ``r >= 0`` (rates or counts). ``a = 1`` when all entries are equal (dense), ``a = 1/n`` when a
    single one of n entries is non-zero (sparsest). NaN where all entries are zero.
    """
    r = np.asarray(r, dtype=np.float64)
    if np.any(r < 0):
        raise ParameterError("r must be non-negative (rates or counts)")
    m1 = r.mean(axis=axis)
    m2 = (r * r).mean(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m2 > 0, m1 * m1 / np.where(m2 > 0, m2, 1.0), np.nan)


def _sparsity(a: np.ndarray, n: int, measure: str) -> np.ndarray:
    if measure == "treves_rolls":
        return a
    if measure == "vinje_gallant":
        if n < 2:
            raise ParameterError("measure='vinje_gallant' needs at least 2 entries")
        return (1.0 - a) / (1.0 - 1.0 / n)
    raise ParameterError(f"measure must be 'treves_rolls' or 'vinje_gallant', got {measure!r}")


def population_sparsity(trains: Sequence, bin_ms: float, t_start_ms: float, t_stop_ms: float,
                        measure: str = "treves_rolls") -> tuple[np.ndarray, np.ndarray]:
    """Population sparseness in each bin, computed over the N neurons' spike counts.

    ``measure='treves_rolls'``: ``a_k = (mean_i c_ik)^2 / mean_i(c_ik^2)`` (1 dense, 1/N sparsest).
    ``measure='vinje_gallant'``: ``S_k = (1 - a_k) / (1 - 1/N)`` (0 dense, 1 sparsest).
    NaN in bins without spikes. Returns ``(edges [n_bins + 1] ms, sparsity [n_bins])``.
    """
    edges, counts = bin_spikes(trains, bin_ms, t_start_ms, t_stop_ms)
    return edges, _sparsity(treves_rolls(counts, axis=0), counts.shape[0], measure)


def lifetime_sparsity(trains: Sequence, bin_ms: float, t_start_ms: float, t_stop_ms: float,
                      measure: str = "treves_rolls") -> np.ndarray:
    """Lifetime sparseness of each neuron, computed over its spike counts in the K time bins.

    ``a_i = (mean_k c_ik)^2 / mean_k(c_ik^2)``; ``vinje_gallant``: ``(1 - a_i) / (1 - 1/K)``.
    NaN for silent neurons. Returns ``[N]``.
    """
    _, counts = bin_spikes(trains, bin_ms, t_start_ms, t_stop_ms)
    return _sparsity(treves_rolls(counts, axis=1), counts.shape[1], measure)
