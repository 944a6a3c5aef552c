"""Fast-weight associative memory of the CorticalHub, written once.

Update (one hub step; ``k``, ``v`` are the keys and values of the C circuits)::

    M_{t+1} = clamp(lambda * M_t + eta * sum_i k_i (x) v_i,  -c, c)

with the outer product ``(k (x) v)_{xy} = k_x v_y``, so ``M[b] = sum_i k_i v_i^T`` accumulated
over steps. Read-out: ``(M k_j)_x = sum_y M_{xy} k_{j,y}``; since the value dimension equals the
key dimension ``d``, ``M`` is square ``[d, d]`` and ``M k_j`` lives in the same space as the
queries, so a score can add ``q_i . (M k_j)`` to ``q_i . k_j``.

- ``lambda`` in (0, 1]: decay per step (with no input ``M_t = lambda^t M_0`` while it lies inside
  the clip range); ``eta >= 0``: write rate; ``c > 0``: clip bound (every entry stays in
  ``[-c, c]`` after every update, whatever the input, as long as ``k``, ``v`` are finite and the
  sum of products does not overflow; a NaN input propagates, it is not hidden).
- The memory is cleared (``fast_weight_init``) at the start of every session or sequence.

Shapes: ``M`` ``[B, d, d]``; ``k``, ``v`` ``[B, C, d]``. All functions are pure and
differentiable (``clamp`` passes no gradient where it saturates).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from neurobit.errors import ParameterError, ShapeError


class FastWeightParameters(NamedTuple):
    """``lam`` decay per step in (0, 1], ``eta`` write rate >= 0, ``clip`` bound c > 0."""

    lam: float = 0.95
    eta: float = 0.1
    clip: float = 1.0


def check_fast_weight_parameters(lam: float, eta: float, clip: float) -> None:
    """Raise :class:`ParameterError` naming the first impossible value."""
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and 0 < lam <= 1):
        raise ParameterError(f"lam: must lie in (0, 1], got {lam}")
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
        raise ParameterError(f"eta: must be a finite number >= 0, got {eta}")
    if not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip > 0):
        raise ParameterError(f"clip: must be a finite number > 0, got {clip}")


def fast_weight_init(batch_size: int, d: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """An empty memory: ``M = 0`` of shape ``[batch_size, d, d]``."""
    if int(batch_size) < 0:
        raise ParameterError(f"batch_size: must be >= 0, got {batch_size}")
    if int(d) < 1:
        raise ParameterError(f"d: must be >= 1, got {d}")
    return torch.zeros(int(batch_size), int(d), int(d), dtype=dtype, device=device)


def _check_kv(M: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if M.dim() != 3 or M.shape[-1] != M.shape[-2]:
        raise ShapeError(f"M: expected [B, d, d], got {list(M.shape)}")
    B, d = M.shape[0], M.shape[-1]
    for name, x in (("k", k), ("v", v)):
        if x.dim() != 3 or x.shape[0] != B or x.shape[-1] != d:
            raise ShapeError(f"{name}: expected [B={B}, C, d={d}], got {list(x.shape)}")
    if k.shape != v.shape:
        raise ShapeError(f"v: shape {list(v.shape)} does not match k {list(k.shape)}")


def fast_weight_update(M: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: float,
                       eta: float, clip: float, *, check: bool = True) -> torch.Tensor:
    """``clamp(lam * M + eta * sum_i k_i v_i^T, -clip, clip)``.

    Args:
        M: ``[B, d, d]`` memory after step t.
        k, v: ``[B, C, d]`` keys and values of the C circuits at step t.
        lam, eta, clip: see :class:`FastWeightParameters`.
        check: validate the parameters (turn off in a tight loop once validated).

    Returns:
        ``M_{t+1}`` ``[B, d, d]``.
    """
    if check:
        check_fast_weight_parameters(lam, eta, clip)
        _check_kv(M, k, v)
    return fast_weight_clip(fast_weight_write(M, k, v, lam, eta), clip)


def fast_weight_clip(P: torch.Tensor, clip: float) -> torch.Tensor:
    """The clip of the update: every entry into ``[-clip, clip]``."""
    return torch.clamp(P, -clip, clip)


def fast_weight_outer(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The write of one step, ``sum_i k_i v_i^T``: ``[..., C, d]`` -> ``[..., d, d]`` (any leading
    dimensions; a sequence's writes are one batched matrix product)."""
    return torch.matmul(k.transpose(-1, -2), v)


def fast_weight_write(M: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: float,
                      eta: float) -> torch.Tensor:
    """The update before the clip: ``lam * M + eta * sum_i k_i v_i^T`` ``[B, d, d]``.

    Three separate float operations (no fused multiply-add), the order the scan's kernel
    (:mod:`neurobit.functional.fast_weight_scan`) repeats, so both give identical memories."""
    return lam * M + eta * fast_weight_outer(k, v)


def fast_weight_read(M: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``M k_j`` for every circuit j: ``M`` ``[B, d, d]``, ``k`` ``[B, C, d]`` -> ``[B, C, d]``."""
    if M.dim() != 3 or k.dim() != 3 or M.shape[0] != k.shape[0] or M.shape[-1] != k.shape[-1]:
        raise ShapeError(f"M/k: expected [B, d, d] and [B, C, d], got {list(M.shape)} "
                         f"and {list(k.shape)}")
    return torch.einsum("bxy,bcy->bcx", M, k)


def fast_weight_retrieve(M: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The memory's value for query ``q_i``, ``M^T q_i = sum_t w_t v_t (k_t . q_i)`` (a linear-
    attention read of the values written before; ``w_t`` the decayed write rates): ``M``
    ``[B, d, d]``, ``q`` ``[B, C, d]`` -> ``[B, C, d]`` (row form ``q @ M``)."""
    if M.dim() != 3 or q.dim() != 3 or M.shape[0] != q.shape[0] or M.shape[1] != q.shape[-1]:
        raise ShapeError(f"M/q: expected [B, d, d] and [B, C, d], got {list(M.shape)} "
                         f"and {list(q.shape)}")
    return torch.bmm(q, M)
