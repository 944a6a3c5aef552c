"""Event-driven ternary synapses: ``u = scale * (codes @ s)`` for binary spikes ``s``; and the
dense form of a convolutional projection (:func:`conv_as_dense`).

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


def conv_output_shape(in_shape, channels: int, kernel: int, stride: int, padding: int
                      ) -> tuple[int, int, int]:
    """``(channels, H_out, W_out)`` of ``conv2d`` on ``in_shape = (C, H, W)``:
    ``H_out = floor((H + 2 padding - kernel) / stride) + 1``."""
    _, h, w = in_shape
    return (channels, (h + 2 * padding - kernel) // stride + 1,
            (w + 2 * padding - kernel) // stride + 1)


def conv_as_dense(kernel: torch.Tensor, in_shape, stride: int = 1, padding: int = 0
                  ) -> torch.Tensor:
    """The dense matrix ``[C_out H_out W_out, C_in H W]`` of ``conv2d(x, kernel)`` (no bias) on
    ``x`` of ``in_shape`` flattened in (C, H, W) order: ``conv(x).flatten() = D @ x.flatten()``.
    Column j is the convolution of the j-th unit image (exact: each entry is one kernel value
    or 0)."""
    n = int(in_shape[0] * in_shape[1] * in_shape[2])
    out_shape = conv_output_shape(in_shape, kernel.shape[0], kernel.shape[-1], stride, padding)
    dense = torch.empty((out_shape[0] * out_shape[1] * out_shape[2], n), dtype=kernel.dtype)
    for j0 in range(0, n, 1024):  # unit images in blocks: memory O(block x n), not O(n^2)
        j1 = min(n, j0 + 1024)
        eye = torch.zeros((j1 - j0, n), dtype=kernel.dtype)
        eye[torch.arange(j1 - j0), torch.arange(j0, j1)] = 1
        cols = torch.nn.functional.conv2d(eye.view(j1 - j0, *in_shape), kernel, None, stride,
                                          padding)
        dense[:, j0:j1] = cols.reshape(j1 - j0, -1).T
    return dense
