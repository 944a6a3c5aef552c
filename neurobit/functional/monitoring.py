"""Conflict, uncertainty and divergence measures in [0, 1], and running z-score calibration.

All functions are pure; the calibration state is an explicit :class:`ZScoreState`.

Conflict among the C circuit outputs ``h_i`` (``h`` ``[..., C, D]``, C >= 2):

- cosine dissimilarity: ``mean_{i<j} (1 - cos(h_i, h_j)) / 2``, computed as
  ``mean_{i<j} ||n_i - n_j||^2 / 4`` with ``n_i = h_i / max(||h_i||, eps)`` (equal to the cosine
  form for non-zero vectors, exactly 0 for identical ones; a zero vector counts as the origin).
  0 when all agree in direction, 1 when two circuits point in opposite directions.
- variance conflict: ``Var / mean_i ||h_i||^2 = 1 - ||mean_i h_i||^2 / mean_i ||h_i||^2``, where
  ``Var = mean_i ||h_i - hbar||^2 = (1/C^2) sum_{i<j} ||h_i - h_j||^2``; it lies in [0, 1]
  (Jensen), is 0 exactly when all h_i are equal and 1 when they cancel (``sum_i h_i = 0``).
  Computed from the pairwise differences, so identical inputs give exactly 0.

Uncertainty of output logits ``[..., K]``: ``H(softmax(z)) / log K`` (0 for one-hot, 1 uniform).

Divergence of n candidate distributions ``p_1..p_n`` over K outcomes (generalised
Jensen-Shannon with equal weights, normalised by its maximum ``log n``)::

    JS = (H(mean_i p_i) - mean_i H(p_i)) / log n        in [0, 1]

(0 when all candidates agree, 1 for n disjoint one-hot candidates.)

Calibration (Welford/Chan running moments, population variance)::

    z = (x - mean) / sqrt(M2 / count + eps);   conflict_norm = sigmoid(z)  in (0, 1)
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence, Union

import torch

from neurobit.errors import ParameterError, ShapeError

EPS = 1e-12


def _check_circuits(h: torch.Tensor) -> int:
    if h.dim() < 2 or h.shape[-2] < 2:
        raise ShapeError(f"h: expected [..., C >= 2, D], got {list(h.shape)}")
    return h.shape[-2]


def _pair_sum(x: torch.Tensor) -> torch.Tensor:
    """``sum_{i<j} ||x_i - x_j||^2`` over the circuit axis of ``x`` ``[..., C, D]``."""
    C = x.shape[-2]
    i, j = torch.triu_indices(C, C, offset=1, device=x.device)
    diff = x[..., i, :] - x[..., j, :]
    return (diff * diff).sum(dim=(-1, -2))


def pairwise_cosine_dissimilarity(h: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``mean_{i<j} (1 - cos(h_i, h_j)) / 2`` in [0, 1]: ``h`` ``[..., C, D]`` -> ``[...]``."""
    C = _check_circuits(h)
    n = h / h.norm(dim=-1, keepdim=True).clamp_min(eps)
    return (_pair_sum(n) / (4 * C * (C - 1) / 2)).clamp(0.0, 1.0)


def variance_conflict(h: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``1 - ||mean h||^2 / mean ||h||^2`` in [0, 1] (0 if all ``h_i`` are 0): ``[..., C, D]`` ->
    ``[...]``."""
    C = _check_circuits(h)
    energy = (h * h).sum(dim=(-1, -2))                                  # sum_i ||h_i||^2
    return (_pair_sum(h) / (C * energy).clamp_min(eps)).clamp(0.0, 1.0)


CONFLICT_MEASURES = ("cosine", "variance", "mean")


def circuit_conflict(h: torch.Tensor, measure: str = "cosine", eps: float = EPS) -> torch.Tensor:
    """``cosine`` | ``variance`` | ``mean`` (the average of the two) conflict of ``[..., C, D]``."""
    if measure == "cosine":
        return pairwise_cosine_dissimilarity(h, eps)
    if measure == "variance":
        return variance_conflict(h, eps)
    if measure == "mean":
        return 0.5 * (pairwise_cosine_dissimilarity(h, eps) + variance_conflict(h, eps))
    raise ParameterError(f"conflict_measure: unknown {measure!r}; choose one of "
                         f"{list(CONFLICT_MEASURES)}")


def entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy (nats) of probabilities ``p`` along ``dim``; ``0 log 0 = 0``."""
    return -torch.where(p > 0, p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)),
                        torch.zeros_like(p)).sum(dim)


def normalized_entropy(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``H(softmax(logits)) / log K`` in [0, 1] (``-inf`` logits allowed; 0 when K = 1)."""
    K = logits.shape[dim]
    if K <= 1:
        return torch.zeros_like(logits.sum(dim))
    p = torch.softmax(logits, dim=dim)
    return (entropy(p, dim) / math.log(K)).clamp(0.0, 1.0)


def js_divergence(probs: Union[torch.Tensor, Sequence[torch.Tensor]],
                  dim: int = -2) -> torch.Tensor:
    """Normalised generalised Jensen-Shannon divergence of n candidates, in [0, 1].

    Args:
        probs: a tensor ``[..., n, K]`` with candidates along ``dim`` (default -2; the
            probability axis K is always the last), or a list of n tensors ``[..., K]``. Each
            candidate must be a probability vector (use softmax on logits first).

    Returns:
        ``[...]``; 0 when n = 1.
    """
    if not isinstance(probs, torch.Tensor):
        probs = torch.stack(list(probs), dim=-2)
        dim = -2
    if probs.dim() < 2:
        raise ShapeError(f"probs: expected [..., n, K], got {list(probs.shape)}")
    if dim % probs.dim() == probs.dim() - 1:
        raise ParameterError("dim: the candidate axis cannot be the last (probability) axis")
    probs = probs.movedim(dim, -2)                               # [..., n, K]
    n = probs.shape[-2]
    if n <= 1:
        return torch.zeros_like(probs.sum((-1, -2)))
    js = entropy(probs.mean(-2), -1) - entropy(probs, -1).mean(-1)
    return (js / math.log(n)).clamp(0.0, 1.0)


class ZScoreState(NamedTuple):
    """Running moments of a stream: ``count`` (number of values seen), ``mean``, ``m2`` (sum of
    squared deviations from the mean). Tensors of one shape (``[]`` for a scalar signal)."""

    count: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor


def zscore_init(shape: tuple[int, ...] = (), dtype=torch.float64, device=None) -> ZScoreState:
    """Empty calibration: ``count = mean = m2 = 0``."""
    z = torch.zeros(shape, dtype=dtype, device=device)
    return ZScoreState(z.clone(), z.clone(), z.clone())


def zscore_update(state: ZScoreState, x: torch.Tensor) -> ZScoreState:
    """Add values ``x`` ``[N, *shape]`` (N observations along the first axis; ``x`` of exactly
    ``shape`` is one observation) with Chan's parallel form of Welford's update::

        n = n_a + n_b;  delta = mean_b - mean_a
        mean = mean_a + delta * n_b / n;  M2 = M2_a + M2_b + delta^2 * n_a * n_b / n

    Gradient-free (the values are detached); non-finite values are skipped.
    """
    x = x.detach().to(state.mean.dtype)
    shape = tuple(state.mean.shape)
    if tuple(x.shape) == shape:
        x = x.unsqueeze(0)
    if tuple(x.shape[1:]) != shape:
        raise ShapeError(f"x: expected [N, {', '.join(map(str, shape))}] values for a calibration "
                         f"of shape {list(shape)}, got {list(x.shape)}")
    ok = torch.isfinite(x)
    nb = ok.sum(0).to(x.dtype)
    xs = torch.where(ok, x, torch.zeros_like(x))
    mean_b = xs.sum(0) / nb.clamp_min(1)
    m2_b = (torch.where(ok, x - mean_b, torch.zeros_like(x)) ** 2).sum(0)
    n = state.count + nb
    delta = mean_b - state.mean
    frac = torch.where(n > 0, nb / n.clamp_min(1), torch.zeros_like(n))
    mean = state.mean + delta * frac
    m2 = state.m2 + m2_b + delta * delta * state.count * frac
    return ZScoreState(n, mean, m2)


def zscore_std(state: ZScoreState, ddof: int = 0) -> torch.Tensor:
    """Standard deviation of the stream so far (``ddof=0``: population, as ``numpy.std``)."""
    return torch.sqrt(state.m2 / (state.count - ddof).clamp_min(1))


def zscore_normalize(state: ZScoreState, x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)``; 0 while fewer than 2 values have been seen."""
    var = state.m2 / state.count.clamp_min(1)
    z = (x - state.mean.to(x.dtype)) / torch.sqrt(var + eps).to(x.dtype)
    return torch.where((state.count >= 2).to(x.device), z, torch.zeros_like(z))


def squash(z: torch.Tensor) -> torch.Tensor:
    """``sigmoid(z)``: a z-score mapped to (0, 1) (0.5 at the running mean)."""
    return torch.sigmoid(z)


def calibrate(state: ZScoreState, x: torch.Tensor, update: bool = True,
              eps: float = 1e-8) -> tuple[torch.Tensor, ZScoreState]:
    """``(sigmoid(z(x)), new_state)``: ``x`` ``[N, *shape]`` is scored against the values seen
    *before* it (causal), then added to the state when ``update``."""
    xn = squash(zscore_normalize(state, x, eps))
    return xn, (zscore_update(state, x) if update else state)
