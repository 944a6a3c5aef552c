"""Numba CPU kernels for the multi-step LIF scan (forward and the hand-written backward).

They implement exactly the update of :mod:`neurobit.functional.lif` in the same operation
order (``(alpha * v + u) - beta * s``, no fused multiply-add), so their spikes are identical to
:func:`neurobit.functional.lif.lif_loop`; tests check that. Arrays are ``[T, M]`` with the unit
axis flattened and contiguous; per-unit parameters are ``[M]``. The unit axis is split into
contiguous chunks run in parallel; the inner loop over units vectorizes.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def lif_forward_kernel(u, v0, s0, alpha, theta, beta, v_out, s_out, n_chunks):  # pragma: no cover
    """``v_t = alpha v_{t-1} + u_t - beta s_{t-1}``, ``s_t = 1[v_t > theta]`` for t = 0..T-1."""
    T, M = u.shape
    size = (M + n_chunks - 1) // n_chunks
    one = u.dtype.type(1.0)
    zero = u.dtype.type(0.0)
    for c in prange(n_chunks):
        lo = c * size
        hi = min(M, lo + size)
        if lo >= hi:
            continue
        v = v0[lo:hi].copy()
        s = s0[lo:hi].copy()
        a = alpha[lo:hi]
        th = theta[lo:hi]
        b = beta[lo:hi]
        for t in range(T):
            ut = u[t, lo:hi]
            vo = v_out[t, lo:hi]
            so = s_out[t, lo:hi]
            for j in range(hi - lo):
                vj = a[j] * v[j] + ut[j] - b[j] * s[j]
                sj = one if vj > th[j] else zero
                v[j] = vj
                s[j] = sj
                vo[j] = vj
                so[j] = sj


# Not cached on disk: its argument ``sg_fn`` is a numba dispatcher, and numba's cache index
# stores dispatcher types by weak reference; a process that loads such an index and then
# compiles a new signature (another dtype or memory layout) can fail to re-save it with
# "ReferenceError: underlying object has vanished" in the middle of backward. Compiling per
# process costs about 3 s the first time a backward runs.
@njit(parallel=True, cache=False)
def lif_backward_kernel(v, theta, sg_fn, slope, g_s, g_vT, g_sT, alpha, beta, detach_reset,
                        g_u, g_v0, g_s0, n_chunks):  # pragma: no cover
    """Reverse-time adjoint of the forward kernel.

    With ``sg_t = sg_fn(v_t - theta, slope)`` (the surrogate ``sigma'``, a jitted function from
    ``neurobit.functional.surrogate``) and ``G_t = dL/dv_t`` (total)::

        gs_t = dL/ds_t (direct) + [t = T-1] dL/ds_T - (not detach) beta G_{t+1}
        G_t  = gs_t sg_t + alpha G_{t+1} + [t = T-1] dL/dv_T ,   dL/du_t = G_t
        dL/dv_0 = alpha G_0 ,  dL/ds_0 = -(not detach) beta G_0
    """
    T, M = v.shape
    size = (M + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        lo = c * size
        hi = min(M, lo + size)
        if lo >= hi:
            continue
        G = np.zeros(hi - lo, dtype=v.dtype)  # G_{t+1}; zero beyond the last step
        a = alpha[lo:hi]
        b = beta[lo:hi]
        th = theta[lo:hi]
        for t in range(T - 1, -1, -1):
            last = t == T - 1
            vt = v[t, lo:hi]
            gst = g_s[t, lo:hi]
            gut = g_u[t, lo:hi]
            for j in range(hi - lo):
                gs = gst[j]
                if last:
                    gs = gs + g_sT[lo + j]
                if not detach_reset:
                    gs = gs - b[j] * G[j]
                Gj = gs * sg_fn(vt[j] - th[j], slope) + a[j] * G[j]
                if last:
                    Gj = Gj + g_vT[lo + j]
                G[j] = Gj
                gut[j] = Gj
        for j in range(hi - lo):
            g_v0[lo + j] = a[j] * G[j]
            g_s0[lo + j] = 0.0 if detach_reset else -b[j] * G[j]
