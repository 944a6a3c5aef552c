"""Van Rossum distance between spike trains, exact closed form in O(n log n) (numpy only).

Each train ``{t_k}`` (ms) is filtered with a causal exponential, ``f(t) = sum_k H(t - t_k)
exp(-(t - t_k) / tau)``, and the distance is the L2 norm of the difference::

    d(a, b)^2 = (2 / tau) * integral (f_a - f_b)^2 dt
              = K(a, a) + K(b, b) - K(a, b) - K(b, a)
    K(x, y)   = sum_{i, j} exp(-|x_i - y_j| / tau)

normalised so that one spike against an empty train gives 1 (Elephant's convention; divide by
sqrt(2) for the normalisation of van Rossum 2001). The integral runs over the whole real line,
so no observation window is needed.

``K(x, y)`` is evaluated without forming all pairs (Houghton & Kreuz 2012): for sorted ``x``
the "markage" ``m_k = sum_{i<k} exp(-(x_k - x_i) / tau)`` obeys ``m_{k+1} = (m_k + 1) g_k``,
``g_k = exp(-(x_{k+1} - x_k) / tau)``; then for any time y with ``x_k`` the last spike ``<= y``::

    sum_{x_i <= y} exp(-(y - x_i) / tau) = exp(-(y - x_k) / tau) (1 + m_k)

and the spikes after y use the same recursion run backwards in time. The recursion is solved
with segmented cumulative sums (every term positive, no cancellation, no overflow), so the
whole computation is vectorised and accurate to a few ulps per term.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from neurobit.errors import ParameterError, ShapeError

# Largest span (in units of tau) summed with one reference point: exp(600) < 1e261, no overflow.
_SEGMENT_SPAN = 600.0


def _check_tau(tau_ms: float) -> float:
    tau = float(tau_ms)
    if np.isnan(tau) or tau < 0:
        raise ParameterError(f"tau_ms must be >= 0 (inf allowed), got {tau_ms}")
    return tau


def _as_sorted(train, name: str) -> np.ndarray:
    a = np.asarray(train, dtype=np.float64)
    if a.ndim != 1:
        raise ShapeError(f"{name} must be 1-D spike times, got shape {a.shape}")
    if a.size and not np.all(np.isfinite(a)):
        raise ParameterError(f"{name} contains NaN or infinite spike times")
    if np.any(np.diff(a) < 0):
        raise ParameterError(f"{name} is not sorted ascending (use np.sort)")
    return a


def markage(x: np.ndarray) -> np.ndarray:
    """``m_k = sum_{i<k} exp(x_i - x_k)`` for sorted dimensionless times ``x = t / tau``, ``[n]``.

    Solved segment by segment: inside a segment starting at p (spanning < 600),
    ``m_k = exp(x_p - x_k) * (m_p + sum_{p<=i<k} exp(x_i - x_p))``.
    """
    n = x.size
    m = np.zeros(n)
    p, carry = 0, 0.0
    while p < n:
        e = int(np.searchsorted(x, x[p] + _SEGMENT_SPAN, side="left"))
        e = max(e, p + 1)
        seg = x[p:e]
        c = np.cumsum(np.exp(seg - seg[0]))  # c[j] = sum_{i<=p+j} exp(x_i - x_p)
        partial = np.concatenate(([0.0], c[:-1]))
        m[p:e] = np.exp(seg[0] - seg) * (carry + partial)
        if e < n:
            carry = float(np.exp(seg[0] - x[e]) * (carry + c[-1]))
        p = e
    return m


class _Prepared:
    """A sorted train in units of tau with its forward and backward markage."""

    __slots__ = ("x", "m_fwd", "m_bwd")

    def __init__(self, x: np.ndarray):
        self.x = x
        self.m_fwd = markage(x)
        # m_bwd[k] = sum_{i>k} exp(x_k - x_i): the same recursion on the time-reversed train.
        self.m_bwd = markage(-x[::-1])[::-1]


def _cross_sum(a: _Prepared, b: _Prepared) -> float:
    """``K(a, b) = sum_{i, j} exp(-|a_i - b_j| / tau)`` via the markage of ``a`` at b's spikes."""
    if a.x.size == 0 or b.x.size == 0:
        return 0.0
    y = b.x
    k = np.searchsorted(a.x, y, side="right") - 1  # last a_i <= y
    has_left = k >= 0
    kl = k[has_left]
    left = np.exp(a.x[kl] - y[has_left]) * (1.0 + a.m_fwd[kl])
    r = k + 1  # first a_i > y
    has_right = r < a.x.size
    kr = r[has_right]
    right = np.exp(y[has_right] - a.x[kr]) * (1.0 + a.m_bwd[kr])
    return float(left.sum() + right.sum())


def _coincidences(a: np.ndarray, b: np.ndarray) -> float:
    """``tau -> 0`` limit of K(a, b): the number of pairs with ``a_i == b_j``."""
    return float((np.searchsorted(a, b, side="right") - np.searchsorted(a, b, side="left")).sum())


def van_rossum_distance(train_a, train_b, tau_ms: float) -> float:
    """Van Rossum distance of two spike trains (ms) with kernel time constant ``tau_ms``.

    ``d^2 = K(a,a) + K(b,b) - K(a,b) - K(b,a)``, ``K(x,y) = sum_ij exp(-|x_i - y_j| / tau)``
    (see the module docstring). Limits: ``tau_ms = inf`` gives ``|n_a - n_b|`` (as Elephant);
    ``tau_ms = 0`` gives ``sqrt(n_a + n_b - 2 * #coincident spikes)`` (Elephant ignores
    coincidences there and returns ``sqrt(n_a + n_b)``, even on its diagonal). Identical trains
    give exactly 0.
    Elephant: ``elephant.spike_train_dissimilarity.van_rossum_distance([a, b], tau)[0, 1]``.
    """
    return float(van_rossum_matrix([train_a, train_b], tau_ms)[0, 1])


def van_rossum_matrix(trains: Sequence, tau_ms: float) -> np.ndarray:
    """Van Rossum distances of all pairs of trains, ``[N, N]`` (symmetric, zero diagonal).

    Elephant: ``elephant.spike_train_dissimilarity.van_rossum_distance(trains, tau)``.
    Cost: O(N^2 n log n) for N trains of n spikes.
    """
    tau = _check_tau(tau_ms)
    arrays = [_as_sorted(t, f"trains[{i}]") for i, t in enumerate(trains)]
    n = len(arrays)
    counts = np.array([a.size for a in arrays], dtype=np.float64)
    if tau == np.inf:
        return np.abs(counts[:, None] - counts[None, :])
    if tau == 0:
        out = np.zeros((n, n))
        for i in range(n):
            for j in range(i + 1, n):
                d2 = counts[i] + counts[j] - 2.0 * _coincidences(arrays[i], arrays[j])
                out[i, j] = out[j, i] = np.sqrt(d2)
        return out
    prepared = [_Prepared(a / tau) for a in arrays]
    self_k = np.array([_cross_sum(p, p) for p in prepared])
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            d2 = (self_k[i] + self_k[j] - _cross_sum(prepared[i], prepared[j])
                  - _cross_sum(prepared[j], prepared[i]))
            out[i, j] = out[j, i] = np.sqrt(max(d2, 0.0))
    return out
