"""Numba kernel of one BrainBlock for one token (compiled generation; no autograd, no torch ops).

Per sequence ``b`` (residual ``x`` ``[d]``), with frozen ternary codes and folded per-layer
scales (``W = scale * codes``; codes are {-1, 0, +1} stored as float for SIMD)::

    a     = x * rsqrt(mean(x^2) + eps) * w_norm                      (RMSNorm)
    u_c   = sc_in_c * (C_in_c a)                                     [C, N]  input current
    r_c   = LIF token of circuit c, K steps (functional.recurrent_lif_kernels.lif_circuit_token)
    r_c  += gain_c * v_c   (membrane_readout 'gain': v_c the membrane after the K steps)
    h_c   = sc_out_c * (C_out_c r_c)                                 [C, D]  readout
    q, k, v = sc_q C_q h_c, sc_k C_k h_c, sc_v C_v h_c                [C, dk] hub projections
    k_eff_j = k_j + M k_j;  a_ij = softmax_j(s q_i . k_eff_j) in i's group;  o_i = sum_j a_ij v_j
    o_i  += v_i                                                       (only with residual)
    o_i  += s M^T q_i                                                 (only with mem_read)
    x    += sc_g * (C_g [o_1 .. o_C])                                 [d]     global state
    M     = clamp(lam M + eta sum_c k_c v_c^T, -clip, clip)

the same equations as :class:`neurobit.models.brain_lm.BrainBlock` with
:class:`neurobit.modules.CorticalHub` (groups contiguous and equal, no inhibition, no feedback),
evaluated in a different summation order (the matrix-vector products reassociate their sums,
``_gemv`` with fastmath, so they vectorize; the LIF update keeps the reference order): spikes
agree except at threshold ties (measured in the tests), logits to float32 rounding.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from neurobit.functional.recurrent_lif_kernels import lif_circuit_token


@njit(cache=True, fastmath=True)
def _gemv(W, x, scale, out):  # pragma: no cover
    """``out = scale * (W @ x)`` for a code matrix ``W`` ``[m, n]`` (reassociated sums: SIMD)."""
    for i in range(W.shape[0]):
        row = W[i]
        t = x.dtype.type(0.0)
        for j in range(x.shape[0]):
            t += row[j] * x[j]
        out[i] = t * scale


@njit(cache=True)
def brain_block_token(x, w_norm, eps, codes_in, sc_in, codes_rec_t, sc_rec, alpha, theta, beta,
                      K, v, s, m_gain, codes_out, sc_out, codes_q, sc_q, codes_k, sc_k, codes_v,
                      sc_v, codes_g, sc_g, M, use_fw, residual, mem_read, lam, eta, clip,
                      score_scale, group_size, g_out):  # pragma: no cover
    """Advance every sequence of ``x`` ``[B, d]`` through one block, in place (``x``, ``v``,
    ``s`` ``[B, C, N]``, ``M`` ``[B, dk, dk]``; the global state goes to ``g_out`` ``[B, d]``).
    Code layouts are BitLinear's ``[out, in]``:
    ``codes_in`` ``[C, N, d]``, ``codes_rec_t`` ``[C, N, N]`` transposed (in, out),
    ``codes_out`` ``[C, D, N]``, ``codes_q/k/v`` ``[dk, D]``, ``codes_g`` ``[d, C * dk]``;
    ``m_gain`` ``[C, N]`` the membrane gains or ``[0, N]`` (no membrane readout)."""
    B, d = x.shape
    C, N = v.shape[1], v.shape[2]
    D = codes_out.shape[1]
    dk = codes_q.shape[0]
    f = x.dtype.type
    zero = f(0.0)
    a = np.empty(d, dtype=x.dtype)
    u = np.empty(N, dtype=x.dtype)
    rec = np.empty(N, dtype=x.dtype)
    acc = np.empty(N, dtype=x.dtype)
    no_trace = np.empty((0, N), dtype=x.dtype)
    h = np.empty(D, dtype=x.dtype)
    q = np.empty((C, dk), dtype=x.dtype)
    k = np.empty((C, dk), dtype=x.dtype)
    vv = np.empty((C, dk), dtype=x.dtype)
    ke = np.empty((C, dk), dtype=x.dtype)
    o = np.empty(C * dk, dtype=x.dtype)
    sc = np.empty(group_size, dtype=x.dtype)
    inv_k = f(1.0) / f(K)
    for b in range(B):
        xb = x[b]
        ms = zero
        for j in range(d):
            ms += xb[j] * xb[j]
        r = f(1.0) / np.sqrt(ms / f(d) + eps)
        for j in range(d):
            a[j] = (xb[j] * r) * w_norm[j]
        for c in range(C):
            _gemv(codes_in[c], a, sc_in[c], u)
            lif_circuit_token(u, codes_rec_t[c], sc_rec[c], alpha[c], theta[c], beta[c], K,
                              v[b, c], s[b, c], rec, acc, no_trace, 0)
            for i in range(N):
                acc[i] = acc[i] * inv_k
            if m_gain.shape[0] > 0:
                for i in range(N):
                    acc[i] = acc[i] + m_gain[c, i] * v[b, c, i]
            _gemv(codes_out[c], acc, sc_out[c], h)
            _gemv(codes_q, h, sc_q, q[c])
            _gemv(codes_k, h, sc_k, k[c])
            _gemv(codes_v, h, sc_v, vv[c])
        Mb = M[b]
        for c in range(C):
            for e in range(dk):
                t = zero
                if use_fw:
                    for y in range(dk):
                        t += Mb[e, y] * k[c, y]
                ke[c, e] = k[c, e] + t
        for c in range(C):
            g0 = (c // group_size) * group_size
            mx = -np.inf
            for jj in range(group_size):
                t = zero
                for e in range(dk):
                    t += q[c, e] * ke[g0 + jj, e]
                sc[jj] = t * score_scale
                mx = max(mx, sc[jj])
            tot = zero
            for jj in range(group_size):
                sc[jj] = np.exp(sc[jj] - mx)
                tot += sc[jj]
            for e in range(dk):
                t = zero
                for jj in range(group_size):
                    t += (sc[jj] / tot) * vv[g0 + jj, e]
                if mem_read:
                    m = zero
                    for y in range(dk):
                        m += q[c, y] * Mb[y, e]
                    t += score_scale * m
                if residual:
                    t = t + vv[c, e]
                o[c * dk + e] = t
        _gemv(codes_g, o, sc_g, g_out[b])
        for j in range(d):
            xb[j] += g_out[b, j]
        if use_fw:
            for e in range(dk):
                for y in range(dk):
                    t = zero
                    for c in range(C):
                        t += k[c, e] * vv[c, y]
                    p = lam * Mb[e, y] + eta * t
                    Mb[e, y] = min(max(p, -clip), clip)
