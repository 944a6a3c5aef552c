"""Image patches as tokens for the hierarchical embedding: 2D rotary + 1D sequence position.

An image ``[B, C, H, W]`` is cut into non-overlapping ``p x p`` patches, read row-major
(patch ``n = i * (W/p) + j`` at grid row ``i``, column ``j``), flattened channel-first
(``[C, p, p] -> C p^2``) and projected to the model width::

    e_n   = P patch_n                                   P: BitLinear C p^2 -> d
    e_n  <- R2D(i, j) e_n                               2D rotary position
    out_n = e_n + S(pos0 + n)                           1D sequence position (sinusoidal)

``R2D(i, j)`` rotates the channel pairs ``(2m, 2m+1)`` of the first half of ``e`` by the angle
``i * base^(-2m/(d/2))`` and those of the second half by ``j * base^(-2m/(d/2))`` (axial 2D
rotary embedding, Su et al. 2021 applied per axis). It preserves norms and makes the dot
product of two rotated vectors depend on their positions only through ``(i - i', j - j')``.
``S`` is :func:`neurobit.models.embedding.sinusoidal_positions`, the position of the patch in
the token sequence (``pos0`` the position of the first patch), so patches can sit between
character tokens. ``d`` must be a multiple of 4.

Shapes: ``images`` ``[B, C, H, W]`` -> ``[B, N, d]`` with ``N = (H/p) (W/p)``.
"""
from __future__ import annotations

import torch
from torch import nn

from neurobit.errors import ParameterError, ShapeError
from neurobit.models.embedding import sinusoidal_positions
from neurobit.modules.bitlinear import BitLinear


def rotate_pairs(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate channel pairs ``(2m, 2m+1)`` of ``x`` ``[..., N, k]`` (k even) by angle
    ``pos_n * base^(-2m/k)``; ``pos`` ``[N]`` (any real positions)."""
    k = x.shape[-1]
    if k % 2:
        raise ShapeError(f"x: last axis must be even, got {k}")
    if pos.shape != (x.shape[-2],):
        raise ShapeError(f"pos: expected [{x.shape[-2]}], got {list(pos.shape)}")
    inv = base ** (-torch.arange(0, k, 2, dtype=torch.float64, device=x.device) / k)
    ang = pos.to(torch.float64)[:, None] * inv                          # [N, k/2]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


def rotary_2d(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
              base: float = 100.0) -> torch.Tensor:
    """``R2D(rows_n, cols_n) x_n`` for ``x`` ``[..., N, d]`` (d a multiple of 4)."""
    d = x.shape[-1]
    if d % 4:
        raise ShapeError(f"x: 2D rotary positions need a width divisible by 4, got {d}")
    h = d // 2
    return torch.cat((rotate_pairs(x[..., :h], rows, base),
                      rotate_pairs(x[..., h:], cols, base)), dim=-1)


def image_to_patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, N, C * patch^2]`` row-major non-overlapping patches."""
    if images.dim() != 4:
        raise ShapeError(f"images: expected [B, C, H, W], got {list(images.shape)}")
    B, C, H, W = images.shape
    if H % patch or W % patch:
        raise ShapeError(f"images: height {H} and width {W} must be multiples of "
                         f"patch={patch}")
    x = images.reshape(B, C, H // patch, patch, W // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(B, (H // patch) * (W // patch), C * patch * patch)


def patch_grid(n_rows: int, n_cols: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column index ``[N]`` of each row-major patch of an ``n_rows x n_cols`` grid."""
    n = torch.arange(n_rows * n_cols, device=device)
    return n // n_cols, n % n_cols


class PatchEmbedding(nn.Module):
    """Patch embedding with 2D rotary position plus the 1D sequence position.

    Args:
        channels: image channels C.
        patch: patch side p (pixels).
        d: embedding width (multiple of 4).
        quant: BitLinear mode of the projection (``float`` default, ``absmean`` ternary).
        rope_base: base of the 2D rotary angles (grids are small: 100 by default).

    ``forward(images [B, C, H, W], pos0=0) -> [B, N, d]``.
    """

    def __init__(self, channels: int, patch: int, d: int, quant: str = "float",
                 rope_base: float = 100.0):
        super().__init__()
        for name, n in (("channels", channels), ("patch", patch), ("d", d)):
            if int(n) < 1:
                raise ParameterError(f"{name}: must be >= 1, got {n}")
        if d % 4:
            raise ParameterError(f"d: 2D rotary positions need a multiple of 4, got {d}")
        if not rope_base > 0:
            raise ParameterError(f"rope_base: must be > 0, got {rope_base}")
        self.channels, self.patch, self.d, self.rope_base = channels, patch, d, rope_base
        self.proj = BitLinear(channels * patch * patch, d, quant=quant)

    def forward(self, images: torch.Tensor, pos0: int = 0) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.channels:
            raise ShapeError(f"images: expected [B, {self.channels}, H, W], "
                             f"got {list(images.shape)}")
        if int(pos0) < 0:
            raise ParameterError(f"pos0: must be >= 0, got {pos0}")
        H, W = images.shape[-2:]
        e = self.proj(image_to_patches(images, self.patch).to(self.proj.weight.dtype))
        rows, cols = patch_grid(H // self.patch, W // self.patch, images.device)
        e = rotary_2d(e, rows, cols, self.rope_base)
        seq = torch.arange(pos0, pos0 + e.shape[1], device=images.device)
        return e + sinusoidal_positions(seq, self.d).to(e.dtype)
