"""The fast-weight memory over a whole sequence, with a hand-written backward (custom autograd).

``fast_weight_scan(M0, K, V, lam, eta, clip)`` returns ``M_0 .. M_T`` ``[T+1, B, d, d]`` for keys
and values ``K``, ``V`` ``[T, B, C, d]``, by the update of :mod:`neurobit.functional.fast_weights`
(the writes ``sum_i k_i v_i^T`` of all steps as one batched matrix product, then the
recurrence in a numba kernel with the same float operations as :func:`fast_weight_update`, so
the forward values are identical to calling it step by step)::

    P_{t+1} = lam M_t + eta sum_i k_{t,i} v_{t,i}^T,     M_{t+1} = clamp(P_{t+1}, -c, c)

Backward (``G_t = dL/dM_t`` total, ``D_{t+1} = G_{t+1} * 1[-c <= P_{t+1} <= c]``, the mask
torch's ``clamp`` uses)::

    G_t += lam D_{t+1};   dL/dk_{t,i} = eta D_{t+1} v_{t,i};   dL/dv_{t,i} = eta D_{t+1}^T k_{t,i}

The backward runs the recurrence of ``G`` in a numba kernel over the batch, without the
per-step autograd graph, and the key and value gradients of all steps as two batched matrix
products. Gradients agree with autograd through the loop (tests).
"""
from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from neurobit.errors import ShapeError
from neurobit.functional.fast_weights import fast_weight_outer, fast_weight_update
from neurobit.functional.numba_threads import keep_torch_threads


@njit(parallel=True, cache=True)
def _fast_weight_forward(M0, KV, lam, eta, clip, P, Ms):  # pragma: no cover
    """``P[t] = lam M_t + eta KV[t]`` and ``M_{t+1} = clamp(P[t], -clip, clip)`` for every step:
    ``M0`` ``[B, d, d]``, ``KV`` and ``P`` ``[T, B, d, d]``, ``Ms`` ``[T+1, B, d, d]`` (M_0..M_T).
    The same float operations as :func:`fast_weight_write` then :func:`fast_weight_clip`; a NaN
    passes the clamp, as in torch."""
    T, B, d, _ = KV.shape
    for b in prange(B):
        Ms[0, b] = M0[b]
        for t in range(T):
            m_in, m_out, kv, p = Ms[t, b], Ms[t + 1, b], KV[t, b], P[t, b]
            for x in range(d):
                for y in range(d):
                    px = lam * m_in[x, y] + eta * kv[x, y]
                    p[x, y] = px
                    if px < -clip:
                        px = -clip
                    elif px > clip:
                        px = clip
                    m_out[x, y] = px


@njit(parallel=True, cache=True)
def _fast_weight_adjoint(P, lam, clip, g_M, D, g_M0):  # pragma: no cover
    """``D[t] = G_{t+1} * 1[-c <= P[t] <= c]`` and ``G_t = lam D[t] + dL/dM_t`` backwards from
    ``G_T = dL/dM_T``: ``P``, ``D`` ``[T, B, d, d]``; ``g_M`` ``[T+1, B, d, d]``; ``g_M0 = G_0``."""
    T, B, d, _ = P.shape
    zero = P.dtype.type(0.0)
    for b in prange(B):
        G = g_M[T, b].copy()
        for t in range(T - 1, -1, -1):
            Pt, Dt, gt = P[t, b], D[t, b], g_M[t, b]
            for x in range(d):
                for y in range(d):
                    p = Pt[x, y]
                    dxy = G[x, y] if (p >= -clip and p <= clip) else zero
                    Dt[x, y] = dxy
                    G[x, y] = lam * dxy + gt[x, y]
        g_M0[b] = G


class _FastWeightScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, M0, K, V, lam: float, eta: float, clip: float):
        T, B, _, d = K.shape
        dt = K.dtype
        KV = fast_weight_outer(K.detach(), V.detach()).contiguous()     # [T, B, d, d]
        P = torch.empty_like(KV)
        Ms = torch.empty(T + 1, B, d, d, dtype=dt)
        with keep_torch_threads():
            _fast_weight_forward(M0.detach().to(dt).contiguous().numpy(), KV.numpy(),
                                 dt_scalar(lam, dt), dt_scalar(eta, dt), dt_scalar(clip, dt),
                                 P.numpy(), Ms.numpy())
        ctx.save_for_backward(P, K.detach(), V.detach())
        ctx.params = (lam, eta, clip)
        return Ms

    @staticmethod
    def backward(ctx, g_M):
        P, K, V = ctx.saved_tensors
        lam, eta, clip = ctx.params
        dt = P.dtype
        g_M = g_M.to(dt).contiguous()
        g_M0, D = torch.empty_like(P[0]), torch.empty_like(P)
        with keep_torch_threads():
            _fast_weight_adjoint(P.numpy(), dt_scalar(lam, dt), dt_scalar(clip, dt),
                                 g_M.numpy(), D.numpy(), g_M0.numpy())
        g_K = eta * torch.matmul(V, D.transpose(-1, -2))   # dL/dk_i = eta D v_i
        g_V = eta * torch.matmul(K, D)                      # dL/dv_i = eta D^T k_i
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
