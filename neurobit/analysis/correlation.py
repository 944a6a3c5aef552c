"""Pairwise correlation of spike trains: binned Pearson coefficients and the STTC (numpy only).

Trains are lists of sorted 1-D float64 arrays of spike times in ms with an explicit window
``[t_start_ms, t_stop_ms]`` (see :mod:`neurobit.analysis.spike_stats`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from neurobit.analysis.spike_stats import as_trains, bin_spikes
from neurobit.errors import ParameterError


def correlation_matrix(trains: Sequence, bin_ms: float, t_start_ms: float, t_stop_ms: float,
                       binary: bool = False) -> np.ndarray:
    """Pearson correlation coefficients of binned spike counts, ``[N, N]``.

    With ``b_i`` the count vector of neuron i over the L bins (``binary=True`` clips counts to
    {0, 1}) and ``mu_i`` its mean::

        C_ij = <b_i - mu_i, b_j - mu_j> / sqrt(<b_i - mu_i, b_i - mu_i> <b_j - mu_j, b_j - mu_j>)

    Rows and columns of neurons with zero variance (silent, or the same count in every bin) are
    NaN. Binning as ``elephant.conversion.BinnedSpikeTrain(sts, bin_size=bin_ms * ms)``; result as
    ``elephant.spike_train_correlation.correlation_coefficient`` (which returns a plain 1.0 rather
    than a 1x1 matrix for a single train).
    """
    _, counts = bin_spikes(trains, bin_ms, t_start_ms, t_stop_ms)
    if counts.shape[0] == 0:
        raise ParameterError("trains must contain at least one spike train")
    b = counts.astype(np.float64)
    if binary:
        b = np.minimum(b, 1.0)
    b -= b.mean(axis=1, keepdims=True)
    cov = b @ b.T
    sd = np.sqrt(np.diag(cov))
    with np.errstate(invalid="ignore", divide="ignore"):
        c = cov / np.outer(sd, sd)
    bad = sd == 0
    c[bad, :] = np.nan
    c[:, bad] = np.nan
    return c


def _tiled_fraction(train: np.ndarray, dt_ms: float, t_start_ms: float, t_stop_ms: float) -> float:
    """T: fraction of ``[t_start, t_stop]`` within ``dt`` of a spike of ``train`` (non-empty).

    Measure of the union of ``[t_k - dt, t_k + dt]`` clipped to the window::

        T = (sum_k min(t_{k+1} - t_k, 2 dt) + min(t_1 - t_start, dt) + min(t_stop - t_n, dt))
            / (t_stop - t_start)
    """
    gaps = np.diff(train)
    covered = (np.minimum(gaps, 2.0 * dt_ms).sum()
               + min(train[0] - t_start_ms, dt_ms) + min(t_stop_ms - train[-1], dt_ms))
    return float(covered / (t_stop_ms - t_start_ms))


def _proportion_near(a: np.ndarray, b: np.ndarray, dt_ms: float) -> float:
    """P: fraction of spikes of ``a`` with a spike of ``b`` at ``|t_a - t_b| <= dt`` (sorted)."""
    j = np.searchsorted(b, a)
    left = np.abs(a - b[np.clip(j - 1, 0, b.size - 1)])
    right = np.abs(b[np.clip(j, 0, b.size - 1)] - a)
    return float(np.count_nonzero(np.minimum(left, right) <= dt_ms) / a.size)


def sttc(train_a, train_b, dt_ms: float, t_start_ms: float, t_stop_ms: float) -> float:
    """Spike time tiling coefficient of two trains (Cutts & Eglen 2014), in [-1, 1].

    ::

        STTC = 1/2 [ (P_A - T_B) / (1 - P_A T_B) + (P_B - T_A) / (1 - P_B T_A) ]

    ``P_A``: fraction of A's spikes within ``+-dt_ms`` of some spike of B; ``T_A``: fraction of the
    window within ``+-dt_ms`` of some spike of A (likewise for B). When ``P_A T_B = 1`` its term is
    replaced by 1 (every spike of A is tiled), and likewise for the other term. NaN if a train is
    empty. STTC of a non-empty train with itself is 1.

    Elephant: ``elephant.spike_train_correlation.spike_time_tiling_coefficient(a, b, dt)``. One
    known difference: Elephant tests ``|t_a - t_b| <= dt`` with ``np.isclose`` and its default
    ``rtol=1e-5``, so it also counts pairs up to ``dt + 1e-5 * |t_b|`` apart (0.05 ms at 5 s); this
    function uses the exact window. They agree whenever no spike pair falls in that sliver, which
    is always the case for spikes on a simulation grid when ``dt_ms`` lies between grid points.
    """
    a, b = as_trains([train_a, train_b], t_start_ms, t_stop_ms)
    dt_ms = float(dt_ms)
    if not (np.isfinite(dt_ms) and dt_ms > 0):
        raise ParameterError(f"dt_ms must be a positive finite number, got {dt_ms}")
    if a.size == 0 or b.size == 0:
        return float("nan")
    t0, t1 = float(t_start_ms), float(t_stop_ms)
    ta, tb = _tiled_fraction(a, dt_ms, t0, t1), _tiled_fraction(b, dt_ms, t0, t1)
    pa, pb = _proportion_near(a, b, dt_ms), _proportion_near(b, a, dt_ms)
    term_a = 1.0 if pa * tb == 1 else (pa - tb) / (1.0 - pa * tb)
    term_b = 1.0 if pb * ta == 1 else (pb - ta) / (1.0 - pb * ta)
    return 0.5 * term_a + 0.5 * term_b


def sttc_matrix(trains: Sequence, dt_ms: float, t_start_ms: float, t_stop_ms: float) -> np.ndarray:
    """STTC of every pair, ``[N, N]`` (symmetric; diagonal 1 for non-empty trains, NaN if empty)."""
    trains = as_trains(trains, t_start_ms, t_stop_ms)
    n = len(trains)
    out = np.empty((n, n))
    for i in range(n):
        for j in range(i, n):
            out[i, j] = out[j, i] = sttc(trains[i], trains[j], dt_ms, t_start_ms, t_stop_ms)
    return out
