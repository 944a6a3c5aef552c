"""Fused CPU stepper: the engine's synapse -> integrate -> threshold phases for a whole chunk of
steps in one numba kernel, with event-driven ternary synapses (CSR per source unit).

It computes the same arithmetic as the reference stepper in :mod:`neurobit.sim.engine`, in the
same order, so spikes are identical (tested):

    u_t[i] = drive_t[i] + sum_p (scale_p * count_p[i])     (projections in config order;
                                                           count_p = integer sum of codes over
                                                           the source units that fired at t-1)
    v_t = (alpha * v_{t-1} + u_t) - beta * s_{t-1};  s_t = 1[v_t > theta]

``drive`` (stimulus projections and currents) is computed by the engine per chunk, as in the
reference. Supported: populations without circuits (no banks), native backend, no blocks;
:func:`fused_supported` says why not otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numba import njit

from neurobit.sim.network import Network


def fused_supported(net: Network, n_blocks: int = 0) -> str | None:
    """None if the fused stepper can run ``net``; else the reason it cannot."""
    if n_blocks:
        return "circuit blocks (hub/ACC) run in the reference stepper"
    for name, p in net.populations.items():
        if p.circuits != 1:
            return f"population {name} is a bank (circuits > 1)"
        if p.lif.backend != "native":
            return f"population {name} uses backend {p.lif.backend}"
    return None


@dataclass
class FusedLayout:
    """All populations concatenated into one unit axis, and the population projections as CSR."""

    offsets: dict[str, int]
    n_total: int
    alpha: np.ndarray
    theta: np.ndarray
    beta: np.ndarray
    p_src_start: np.ndarray
    p_src_n: np.ndarray
    p_tgt_start: np.ndarray
    p_tgt_n: np.ndarray
    p_scale: np.ndarray
    p_ptr_off: np.ndarray
    indptr: np.ndarray
    targets: np.ndarray
    codes: np.ndarray


def build_layout(net: Network, projections) -> FusedLayout:
    np_dtype = np.float32 if net.dtype == torch.float32 else np.float64
    offsets, n = {}, 0
    alpha, theta, beta = [], [], []
    for name, pop in net.populations.items():
        offsets[name] = n
        n += pop.units
        p = pop.lif.params
        for arr, val in ((alpha, p.alpha), (theta, p.theta), (beta, p.reset)):
            arr.append(torch.as_tensor(val).to(net.dtype).expand(pop.units).numpy())
    src_start, src_n, tgt_start, tgt_n, scale, ptr_off = [], [], [], [], [], []
    indptr_all, targets_all, codes_all = [], [], []
    nnz_off, ptr_base = 0, 0
    for proj in projections:
        codes_t = proj._codes_t.numpy()  # [source units, target units] of {-1, 0, 1}
        rows, cols = np.nonzero(codes_t)
        counts = np.bincount(rows, minlength=codes_t.shape[0])
        indptr = np.concatenate([[0], np.cumsum(counts)]) + nnz_off
        indptr_all.append(indptr)
        targets_all.append(cols.astype(np.int32))
        codes_all.append(codes_t[rows, cols].astype(np.int8))
        src_start.append(offsets[proj.cfg.source])
        src_n.append(codes_t.shape[0])
        tgt_start.append(offsets[proj.cfg.target])
        tgt_n.append(codes_t.shape[1])
        scale.append(float(proj._scale))
        ptr_off.append(ptr_base)
        ptr_base += len(indptr)
        nnz_off += len(cols)
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)
    return FusedLayout(
        offsets, n, np.concatenate(alpha).astype(np_dtype), np.concatenate(theta).astype(np_dtype),
        np.concatenate(beta).astype(np_dtype), np.asarray(src_start, np.int64),
        np.asarray(src_n, np.int64), np.asarray(tgt_start, np.int64), np.asarray(tgt_n, np.int64),
        np.asarray(scale, np_dtype), np.asarray(ptr_off, np.int64), cat(indptr_all, np.int64),
        cat(targets_all, np.int32), cat(codes_all, np.int8))


@njit(cache=True)
def fused_chunk_kernel(drive, v, s, alpha, theta, beta, p_src_start, p_src_n, p_tgt_start,
                       p_tgt_n, p_scale, p_ptr_off, indptr, targets, codes, mon_idx, v_out,
                       ev_step, ev_trial, ev_node):  # pragma: no cover
    """Advance ``v``, ``s`` ``[B, N]`` in place through ``drive`` ``[k, B, N]``.

    Writes each spike as an event ``(step, trial, unit)`` in that order (sorted by step, then
    trial, then unit) into ``ev_*`` and ``v[:, mon_idx]`` into ``v_out`` ``[k, B, n_mon]``.
    Returns the number of events, or -1 if the event arrays are too small (``v``, ``s`` are then
    partly advanced: the caller restores them and retries with larger arrays).
    """
    k, B, N = drive.shape
    P = p_scale.shape[0]
    cap = ev_step.shape[0]
    acc = np.zeros(N, dtype=np.int32)
    u = np.empty(N, dtype=v.dtype)
    active = np.empty((B, N), dtype=np.int64)  # units that fired at the previous step
    n_active = np.zeros(B, dtype=np.int64)
    one = v.dtype.type(1.0)
    zero = v.dtype.type(0.0)
    for b in range(B):
        for n in range(N):
            if s[b, n] > zero:
                active[b, n_active[b]] = n
                n_active[b] += 1
    n_ev = 0
    for i in range(k):
        for b in range(B):
            for n in range(N):
                u[n] = drive[i, b, n]
            # synapse: integer code sums over the units that fired at the previous step,
            # then u += scale_p * count_p in projection order (as the reference stepper)
            for p in range(P):
                t0 = p_tgt_start[p]
                s0 = p_src_start[p]
                base = p_ptr_off[p]
                hits = 0
                for q in range(n_active[b]):
                    src = active[b, q] - s0
                    if 0 <= src < p_src_n[p]:
                        hits += 1
                        for e in range(indptr[base + src], indptr[base + src + 1]):
                            acc[t0 + targets[e]] += codes[e]
                if hits == 0:
                    continue  # adding scale * 0 would leave u unchanged
                sc = p_scale[p]
                for j in range(t0, t0 + p_tgt_n[p]):
                    u[j] = u[j] + sc * v.dtype.type(acc[j])
                    acc[j] = 0
            # integrate, threshold (the reset of s_{t-1} lands here: delayed reset)
            m = 0
            for n in range(N):
                vn = alpha[n] * v[b, n] + u[n] - beta[n] * s[b, n]
                v[b, n] = vn
                if vn > theta[n]:
                    s[b, n] = one
                    active[b, m] = n
                    m += 1
                    if n_ev >= cap:
                        return -1
                    ev_step[n_ev] = i
                    ev_trial[n_ev] = b
                    ev_node[n_ev] = n
                    n_ev += 1
                else:
                    s[b, n] = zero
            n_active[b] = m
            for j in range(mon_idx.shape[0]):
                v_out[i, b, j] = v[b, mon_idx[j]]
    return n_ev
