"""Packing of ternary codes {-1, 0, +1} into bytes, with exact round trips.

- ``2bit``: 4 weights per byte, code ``c + 1`` in {0, 1, 2} at bit offset ``2 * (i % 4)``
  (little-endian within the byte): 2 bits per weight.
- ``trit5``: 5 weights per byte as the base-3 number ``sum_k (c_k + 1) * 3^k`` (< 243):
  1.6 bits per weight, the densest byte-aligned form (log2(3) = 1.585).

Both flatten the tensor in C order and pad the tail with zeros (code 0); ``unpack_*`` takes the
original shape and returns float codes.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from neurobit.errors import ParameterError

_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)


def _codes_u8(codes: torch.Tensor) -> np.ndarray:
    c = codes.detach().cpu().reshape(-1)
    if c.numel() and not bool(((c == -1) | (c == 0) | (c == 1)).all()):
        raise ParameterError("codes: packing needs values in {-1, 0, +1}")
    return (c.to(torch.int16) + 1).numpy().astype(np.uint8)


def packed_nbytes(numel: int, fmt: str) -> int:
    """Bytes needed for ``numel`` weights in format ``'2bit'`` or ``'trit5'``."""
    per = {"2bit": 4, "trit5": 5}.get(fmt)
    if per is None:
        raise ParameterError(f"fmt: unknown packing {fmt!r}; choose '2bit' or 'trit5'")
    return math.ceil(numel / per)


def pack_2bit(codes: torch.Tensor) -> torch.Tensor:
    """Pack ternary ``codes`` (any shape) into ``uint8[ceil(n / 4)]``."""
    u = _codes_u8(codes)
    pad = (-u.size) % 4
    u = np.concatenate([u, np.ones(pad, np.uint8)]).reshape(-1, 4)
    out = u[:, 0] | (u[:, 1] << 2) | (u[:, 2] << 4) | (u[:, 3] << 6)
    return torch.from_numpy(out.astype(np.uint8))


def unpack_2bit(packed: torch.Tensor, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    """Inverse of :func:`pack_2bit` for a tensor of ``shape``."""
    n = math.prod(shape)
    b = packed.cpu().numpy().astype(np.uint8)
    if b.size != packed_nbytes(n, "2bit"):
        raise ParameterError(f"packed: {b.size} bytes do not hold shape {tuple(shape)} in 2bit")
    u = np.stack([(b >> (2 * k)) & 3 for k in range(4)], axis=1).reshape(-1)[:n]
    if (u > 2).any():
        raise ParameterError("packed: invalid 2-bit code 3 found")
    return torch.from_numpy(u.astype(np.int8) - 1).to(dtype).reshape(shape)


def pack_trit5(codes: torch.Tensor) -> torch.Tensor:
    """Pack ternary ``codes`` (any shape) into ``uint8[ceil(n / 5)]``, 5 trits per byte."""
    u = _codes_u8(codes)
    pad = (-u.size) % 5
    u = np.concatenate([u, np.ones(pad, np.uint8)]).reshape(-1, 5)
    return torch.from_numpy((u * _POW3).sum(axis=1, dtype=np.uint16).astype(np.uint8))


def unpack_trit5(packed: torch.Tensor, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
    """Inverse of :func:`pack_trit5` for a tensor of ``shape``."""
    n = math.prod(shape)
    b = packed.cpu().numpy().astype(np.uint8)
    if b.size != packed_nbytes(n, "trit5"):
        raise ParameterError(f"packed: {b.size} bytes do not hold shape {tuple(shape)} in trit5")
    if (b >= 243).any():
        raise ParameterError("packed: invalid trit5 byte >= 243 found")
    u = np.stack([(b // p) % 3 for p in _POW3], axis=1).reshape(-1)[:n]
    return torch.from_numpy(u.astype(np.int8) - 1).to(dtype).reshape(shape)


PACKERS = {"2bit": (pack_2bit, unpack_2bit), "trit5": (pack_trit5, unpack_trit5)}
