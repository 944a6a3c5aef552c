"""Event-driven ternary synapses: ``u = scale * (codes @ s)`` for binary spikes ``s``.

For spikes, ``codes @ s`` is the sum of the code columns of the units that fired; with codes
in {-1, 0, +1} these sums are exact integers, so the result equals the dense product
``scale * F.linear(s, codes)`` bit for bit, at a cost proportional to the number of spikes.

Shapes: ``s`` ``[..., n_in]`` (any leading axes) with ``codes_t`` ``[n_in, out]`` (the transposed codes, rows
contiguous), or banked ``s`` ``[..., M, n_in]`` with ``codes_t`` ``[M, n_in, out]``.
"""
from __future__ import annotations

import torch


def ternary_event_matvec(s: torch.Tensor, codes_t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Sum the rows of ``codes_t`` selected by the spikes in ``s``; multiply by ``scale``
    (a scalar, or ``[M, 1]`` for banks). Returns ``[B, out]`` or ``[B, M, out]``."""
    out_n = codes_t.shape[-1]
    if codes_t.dim() == 2:
        lead = s.shape[:-1]
        b, i = torch.nonzero(s.reshape(-1, s.shape[-1]), as_tuple=True)
        y = torch.zeros(lead.numel(), out_n, dtype=codes_t.dtype)
        y.index_add_(0, b, codes_t.index_select(0, i))
        return y.view(*lead, out_n) * scale
    lead, M = s.shape[:-2], s.shape[-2]
    b, m, i = torch.nonzero(s.reshape(-1, M, s.shape[-1]), as_tuple=True)
    y = torch.zeros(lead.numel() * M, out_n, dtype=codes_t.dtype)
    y.index_add_(0, b * M + m, codes_t[m, i])
    return y.view(*lead, M, out_n) * scale
