"""Lateral inhibition: k-winners-take-all and divisive normalisation, pure functions.

k-winners-take-all along ``dim`` (over the members of a pool)::

    kwta(x)_i = x_i  if x_i is among the k largest of its pool,  else 0

Ties are broken deterministically: among equal values the lower index wins (a stable sort),
so exactly k entries survive per pool. Gradient flows through the winners only.

Divisive normalisation (Carandini & Heeger 2012) along ``dim``::

    dn(x)_i = x_i / (sigma + (mean_{j in pool} |x_j|^p)^(1/p))

``sigma > 0`` (semi-saturation constant, same units as ``x``), ``p > 0`` (``p = 2``: the pool's
root-mean-square). An optional boolean ``mask`` marks which entries belong to the pool (padding
of unequal groups): masked-out entries neither win nor enter the mean.

In the CorticalHub both act across the circuits of each group on the attention outputs ``h'``
(:func:`inhibit_groups`): ``kwta`` keeps the k circuits with the largest ``||h'_i||`` per group
and zeroes the others; ``divisive`` divides every feature of ``h'_i`` by ``sigma`` plus the
p-mean of that feature's magnitude over the group.
"""
from __future__ import annotations

import math

import torch

from neurobit.errors import ParameterError, ShapeError
from neurobit.functional.attention import GroupLayout, from_groups, to_groups

INHIBITIONS = ("none", "kwta", "divisive")


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ParameterError(f"k: must be an int >= 1, got {k!r}")
    return k


def kwta_mask(x: torch.Tensor, k: int, dim: int = -1,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bool tensor like ``x``: True on the k largest entries along ``dim`` (lower index wins a
    tie; entries where ``mask`` is False never win). ``k`` larger than the pool keeps all."""
    _check_k(k)
    key = x.detach()
    if mask is not None:
        key = key.masked_fill(~mask.expand_as(key), float("-inf"))
    order = torch.sort(key, dim=dim, descending=True, stable=True).indices
    n = x.shape[dim]
    top = order.narrow(dim, 0, min(k, n))
    win = torch.zeros_like(x, dtype=torch.bool).scatter(dim, top, True)
    return win if mask is None else win & mask.expand_as(win)


def kwta(x: torch.Tensor, k: int, dim: int = -1, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` with all but the k largest entries along ``dim`` set to 0 (see :func:`kwta_mask`)."""
    return x * kwta_mask(x, k, dim, mask).to(x.dtype)


def _check_sigma_power(sigma: float, power: float) -> None:
    if not (math.isfinite(sigma) and sigma > 0):
        raise ParameterError(f"sigma: must be a finite number > 0, got {sigma}")
    if not (math.isfinite(power) and power > 0):
        raise ParameterError(f"power: must be a finite number > 0, got {power}")


def divisive_normalization(x: torch.Tensor, sigma: float = 1.0, dim: int = -1, power: float = 2.0,
                           mask: torch.Tensor | None = None) -> torch.Tensor:
    """``x / (sigma + mean_pool(|x|^p)^(1/p))`` along ``dim`` (mean over ``mask`` members)."""
    _check_sigma_power(sigma, power)
    a = x.abs() ** power
    if mask is None:
        pooled = a.mean(dim=dim, keepdim=True)
    else:
        m = mask.expand_as(x).to(x.dtype)
        pooled = (a * m).sum(dim=dim, keepdim=True) / m.sum(dim=dim, keepdim=True).clamp_min(1)
    # the root has an infinite derivative at 0 (a feature silent in every member): there the
    # value is 0 and the gradient is taken as 0, instead of NaN through every upstream weight
    pos = pooled > 0
    root = torch.where(pos, torch.where(pos, pooled, 1.0) ** (1.0 / power), 0.0)
    return x / (sigma + root)


def inhibit_groups(h: torch.Tensor, layout: GroupLayout, mode: str = "none", *, k: int = 1,
                   sigma: float = 1.0, power: float = 2.0) -> torch.Tensor:
    """Lateral inhibition across the circuits of each group.

    Args:
        h: ``[B, C, d]`` per-circuit vectors (the hub's attention outputs ``h'``).
        layout: the group layout (:func:`neurobit.functional.attention.group_layout`).
        mode: ``none`` | ``kwta`` (keep the ``k`` circuits of largest L2 norm per group) |
            ``divisive`` (per feature, divide by ``sigma`` + the group's p-mean magnitude).

    Returns:
        ``[B, C, d]``.
    """
    if mode not in INHIBITIONS:
        raise ParameterError(f"inhibition: unknown mode {mode!r}; "
                             f"choose one of {list(INHIBITIONS)}")
    if h.dim() != 3 or h.shape[1] != layout.n_circuits:
        raise ShapeError(f"h: expected [B, C={layout.n_circuits}, d], got {list(h.shape)}")
    if mode == "none":
        return h
    valid = layout.valid.to(h.device)
    hg = to_groups(h, layout)                                   # [B, G, S, d]
    if mode == "kwta":
        win = kwta_mask(hg.detach().norm(dim=-1), k, dim=-1, mask=valid[None])  # [B, G, S]
        return h * from_groups(win, layout).unsqueeze(-1).to(h.dtype)
    out = divisive_normalization(hg, sigma, dim=2, power=power, mask=valid[None, :, :, None])
    return from_groups(out, layout)
