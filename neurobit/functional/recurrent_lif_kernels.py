"""Numba CPU kernels for a bank of recurrent ternary LIF circuits scanned over tokens.

The update is :func:`neurobit.functional.lif.lif_step` with the recurrent synapse of
:class:`neurobit.modules.MicroCircuit` (``scale * (codes @ s)``), in the same float operation
order, so spikes are identical to the module loop. Per circuit ``c``, token ``t`` and sub-step
``k = 1..K`` (the token's input current ``x_t`` is held for ``K`` steps; ``n`` counts all steps)::

    rec_n = scale_c * (codes_c @ s_{n-1})                  (integer sum of codes, then the scale)
    v_n   = (alpha * v_{n-1} + (x_t + rec_n)) - beta * s_{n-1}
    s_n   = 1[v_n > theta]
    r_t   = (s_{tK+1} + ... + s_{tK+K}) / K                (the token's spike rate)

Layouts: ``x`` and ``r`` ``[B, T, C, N]``; ``codes`` ``[C, N, N]`` (out, in) and its transpose;
``scale``, ``alpha``, ``theta``, ``beta`` per circuit ``[C]`` or per unit ``[C, N]``; state
``[B, C, N]``; membrane trace ``[B, C, T*K, N]``. The (batch, circuit) pairs run in parallel.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def lif_circuit_token(xt, codes_t_c, sc, a, th, be, K, v, s, rec, acc, v_trace_c, n):
    """One token of one circuit, in place: ``K`` steps from ``v``, ``s`` (``[N]``) with input
    ``xt`` ``[N]``; ``acc`` receives the spike count; step ``n + k`` of the membrane goes to
    ``v_trace_c[n + k]`` when ``v_trace_c`` has rows (pass a ``[0, N]`` array to skip)."""
    N = xt.shape[0]
    one = xt.dtype.type(1.0)
    zero = xt.dtype.type(0.0)
    acc[:] = zero
    for k in range(K):
        rec[:] = zero
        for j in range(N):
            sj = s[j]
            if sj != zero:
                cj = codes_t_c[j]
                for i in range(N):
                    rec[i] += cj[i] * sj
        for i in range(N):
            v[i] = (a[i] * v[i] + (xt[i] + rec[i] * sc)) - be[i] * s[i]
        if v_trace_c.shape[0] > 0:
            v_trace_c[n + k, :] = v
        for i in range(N):
            si = one if v[i] > th[i] else zero
            s[i] = si
            acc[i] += si


@njit(parallel=True, cache=True)
def recurrent_lif_forward(x, codes_t, scale, alpha, theta, beta, v0, s0, K, r_out, v_trace,
                          v_end, s_end):  # pragma: no cover
    """Forward scan; writes rates ``r_out``, the membrane trace and the final state."""
    B, T, C, N = x.shape
    inv_k = x.dtype.type(1.0) / x.dtype.type(K)
    for pair in prange(B * C):
        b = pair // C
        c = pair % C
        v = v0[b, c].copy()
        s = s0[b, c].copy()
        rec = np.empty(N, dtype=x.dtype)
        acc = np.empty(N, dtype=x.dtype)
        for t in range(T):
            lif_circuit_token(x[b, t, c], codes_t[c], scale[c], alpha[c], theta[c], beta[c], K,
                              v, s, rec, acc, v_trace[b, c], t * K)
            rt = r_out[b, t, c]
            for i in range(N):
                rt[i] = acc[i] * inv_k
        v_end[b, c] = v
        s_end[b, c] = s


@njit(parallel=True, cache=False)  # not cached: see lif_kernels
def recurrent_lif_backward(v_trace, codes, scale, alpha, theta, beta, s0, K, sg_fn, slope,
                           detach_reset, g_r, g_vtok, g_vT, g_sT, g_x, g_trace, s_prev, g_v0,
                           g_s0):  # pragma: no cover
    """Reverse-time adjoint of :func:`recurrent_lif_forward`.

    With ``G_n = dL/dv_n`` (total), ``W = scale * codes`` and ``sg_n = sigma'(v_n - theta)``::

        gs_n = dL/dr_t / K + W^T G_{n+1} - (not detach_reset) beta G_{n+1}   (+ dL/ds_end at n = last)
        G_n  = gs_n sg_n + alpha G_{n+1}                                      (+ dL/dv_end at n = last)
               (+ dL/dm_t at the token's last step n = tK + K - 1; ``g_vtok`` ``[B, T, C, N]``,
                the gradient of the per-token membrane output m_t = v_{tK+K-1}; zeros if unused)
        dL/dx_t = sum_{n in t} G_n
        dL/dv_0 = alpha G_0;  dL/ds_0 = W^T G_0 - (not detach_reset) beta G_0

    ``g_trace`` ``[B, C, T*K, N]`` receives every ``G_n`` and ``s_prev`` (same shape) every
    ``s_{n-1}``, recomputed from the trace by the forward's comparison (``s_{-1} = s0``); the
    caller forms the weight gradient ``dL/dW_c = sum_{b, n} G_n s_{n-1}^T`` from them as one
    batched matrix product (BLAS), faster than accumulating it here step by step.
    """
    B, C, NK, N = v_trace.shape
    zero = v_trace.dtype.type(0.0)
    one = v_trace.dtype.type(1.0)
    inv_k = one / v_trace.dtype.type(K)
    g_x[:] = zero
    for pair in prange(B * C):
        b = pair // C
        c = pair % C
        a = alpha[c]
        th = theta[c]
        be = beta[c]
        sc = scale[c]
        G = np.zeros(N, dtype=v_trace.dtype)      # G_{n+1}
        back = np.zeros(N, dtype=v_trace.dtype)   # W^T G_{n+1}
        for n in range(NK - 1, -1, -1):
            t = n // K
            last = n == NK - 1
            token_end = n % K == K - 1
            gvt = g_vtok[b, t, c]
            grt = g_r[b, t, c]
            vn = v_trace[b, c, n]
            gxt = g_x[b, t, c]
            gtn = g_trace[b, c, n]
            spn = s_prev[b, c, n]
            if n > 0:
                vp = v_trace[b, c, n - 1]
                for j in range(N):
                    spn[j] = one if vp[j] > th[j] else zero
            else:
                spn[:] = s0[b, c]
            for j in range(N):
                gs = grt[j] * inv_k + back[j]
                if last:
                    gs = gs + g_sT[b, c, j]
                if not detach_reset:
                    gs = gs - be[j] * G[j]
                Gj = gs * sg_fn(vn[j] - th[j], slope) + a[j] * G[j]
                if token_end:
                    Gj = Gj + gvt[j]
                if last:
                    Gj = Gj + g_vT[b, c, j]
                G[j] = Gj
                gtn[j] = Gj
                gxt[j] += Gj
            back[:] = zero                               # W^T G_n
            for i in range(N):
                Gi = G[i] * sc
                if Gi != zero:
                    ci = codes[c, i]
                    for j in range(N):
                        back[j] += ci[j] * Gi
        for j in range(N):
            g_v0[b, c, j] = a[j] * G[j]
            g_s0[b, c, j] = back[j] - (zero if detach_reset else be[j] * G[j])
