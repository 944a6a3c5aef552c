"""The fast-weight memory over a whole sequence, with a hand-written backward (custom autograd).

``fast_weight_scan(M0, K, V, lam, eta, clip)`` returns ``M_0 .. M_T`` ``[T+1, B, d, d]`` for keys
and values ``K``, ``V`` ``[T, B, C, d]``, by the update of :mod:`neurobit.functional.fast_weights`
(the same functions called step by step, so the forward values are identical)::

    P_{t+1} = lam M_t + eta sum_i k_{t,i} v_{t,i}^T,     M_{t+1} = clamp(P_{t+1}, -c, c)

Backward (``G_t = dL/dM_t`` total, ``D_{t+1} = G_{t+1} * 1[-c <= P_{t+1} <= c]``, the mask
torch's ``clamp`` uses)::

    G_t += lam D_{t+1};   dL/dk_{t,i} = eta D_{t+1} v_{t,i};   dL/dv_{t,i} = eta D_{t+1}^T k_{t,i}

The backward runs as one numba kernel over the batch, without the per-step autograd graph
(autograd through the loop costs three small ops per step). Gradients agree with autograd
through the loop (tests).
"""
from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from neurobit.errors import ShapeError
from neurobit.functional.fast_weights import (fast_weight_clip, fast_weight_update,
                                              fast_weight_write)
from neurobit.functional.numba_threads import keep_torch_threads


@njit(parallel=True, cache=True)
def _fast_weight_backward(P, K, V, lam, eta, clip, g_M, g_M0, g_K, g_V):  # pragma: no cover
    """``P`` pre-clamp ``[T, B, d, d]``; ``g_M`` ``[T+1, B, d, d]`` (gradients of M_0..M_T)."""
    T, B, d, _ = P.shape
    C = K.shape[2]
    zero = P.dtype.type(0.0)
    for b in prange(B):
        G = g_M[T, b].copy()
        D = np.empty((d, d), dtype=P.dtype)
        for t in range(T - 1, -1, -1):
            Pt = P[t, b]
            for x in range(d):
                for y in range(d):
                    p = Pt[x, y]
                    D[x, y] = G[x, y] if (p >= -clip and p <= clip) else zero
            for i in range(C):
                k = K[t, b, i]
                v = V[t, b, i]
                gk = g_K[t, b, i]
                gv = g_V[t, b, i]
                gv[:] = zero
                for x in range(d):
                    acc = zero
                    kx = k[x]
                    for y in range(d):
                        acc += D[x, y] * v[y]
                        gv[y] += D[x, y] * kx
                    gk[x] = eta * acc
                for y in range(d):
                    gv[y] *= eta
            gt = g_M[t, b]
            for x in range(d):
                for y in range(d):
                    G[x, y] = lam * D[x, y] + gt[x, y]
        g_M0[b] = G


class _FastWeightScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, M0, K, V, lam: float, eta: float, clip: float):
        M, Ms, Ps = M0.detach(), [M0.detach()], []
        for k, v in zip(K.detach().unbind(0), V.detach().unbind(0)):
            P = fast_weight_write(M, k, v, lam, eta)
            M = fast_weight_clip(P, clip)
            Ps.append(P)
            Ms.append(M)
        ctx.save_for_backward(torch.stack(Ps, 0), K.detach().contiguous(),
                              V.detach().contiguous())
        ctx.params = (lam, eta, clip)
        return torch.stack(Ms, 0)

    @staticmethod
    def backward(ctx, g_M):
        P, K, V = ctx.saved_tensors
        lam, eta, clip = ctx.params
        dt = P.dtype
        g_M = g_M.to(dt).contiguous()
        g_M0 = torch.empty_like(P[0])
        g_K, g_V = torch.empty_like(K), torch.empty_like(V)
        with keep_torch_threads():
            _fast_weight_backward(P.numpy(), K.numpy(), V.numpy(), dt_scalar(lam, dt),
                                  dt_scalar(eta, dt), dt_scalar(clip, dt), g_M.numpy(),
                                  g_M0.numpy(), g_K.numpy(), g_V.numpy())
        return g_M0, g_K, g_V, None, None, None


def dt_scalar(x: float, dtype: torch.dtype):
    """``x`` as a numpy scalar of ``dtype`` (the kernel's arithmetic stays in that dtype)."""
    return np.dtype(str(dtype).replace("torch.", "")).type(x)


def fast_weight_scan(M0: torch.Tensor, K: torch.Tensor, V: torch.Tensor, lam: float, eta: float,
                     clip: float) -> torch.Tensor:
    """``M_0 .. M_T`` ``[T+1, B, d, d]`` from ``M0`` ``[B, d, d]``, ``K``, ``V`` ``[T, B, C, d]``.

    CPU float32/float64 uses the numba backward; other devices loop
    :func:`fast_weight_update` under autograd (same values).
    """
    if K.dim() != 4 or K.shape != V.shape or M0.dim() != 3 or K.shape[1] != M0.shape[0] \
            or K.shape[-1] != M0.shape[-1] or M0.shape[-1] != M0.shape[-2]:
        raise ShapeError(f"K, V: expected [T, B, C, d] with M0 [B, d, d], got "
                         f"{list(K.shape)}, {list(V.shape)}, {list(M0.shape)}")
    if M0.device.type == "cpu" and M0.dtype in (torch.float32, torch.float64):
        return _FastWeightScan.apply(M0, K, V, float(lam), float(eta), float(clip))
    Ms = [M0]
    for k, v in zip(K.unbind(0), V.unbind(0)):
        Ms.append(fast_weight_update(Ms[-1], k, v, lam, eta, clip, check=False))
    return torch.stack(Ms, 0)
