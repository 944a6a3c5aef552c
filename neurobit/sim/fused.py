"""Fused CPU stepper: the engine's synapse -> integrate -> threshold phases for a whole chunk of
steps in one numba kernel, with event-driven ternary synapses (CSR per source unit).

It computes the same arithmetic as the reference stepper in :mod:`neurobit.sim.engine`, in the
same order, so spikes are identical (tested):

    u_t[i] = drive_t[i] + sum_p (scale_p * count_p[i])     (projections in config order,
                                                           skipping those with no source spike;
                                                           count_p = integer sum of codes over
                                                           the source units that fired at t-1)
    v_t = (alpha * v_{t-1} + u_t) - beta * s_{t-1};  s_t = 1[v_t > theta]

``drive`` (stimulus projections and currents) is computed by the engine per chunk, as in the
reference, as ``[k, B, N]`` (float, ``N`` = all units), or as ``[1, B, N]`` when it is the same
at every step of the chunk (constant currents: the kernel reads that one row every step).
Supported: populations without circuits (no banks), native backend, no blocks;
:func:`fused_supported` says why not otherwise.

How the kernel is laid out (per step and trial): the spikes of step t-1 (an active list) are
scattered into one integer accumulator per projection; then one pass over the units, cut into
segments with one set of incoming projections and one ``alpha, theta, beta`` (scalars there)
and into blocks of :data:`BLOCK` units, computes ``u``, integrates, thresholds and clears the
accumulators in a branch-free loop that the compiler vectorises; only blocks that fired are
scanned for spike events. On the 4000-unit network of ``analysis/benchmarks/brian2_network.py``
this is about 3x the per-unit loop it replaced (spikes identical).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numba import njit, uint64

from neurobit.sim.network import Network

BLOCK = 128  # units per threshold block: the spike scan visits only blocks that fired


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
def _segments(alpha, theta, beta, p_tgt_start, p_tgt_n):  # pragma: no cover
    """Cut the unit axis into segments with one set of incoming projections and one value of
    ``alpha``, ``theta``, ``beta`` each. Returns bounds ``[n_seg + 1]`` and, per segment, the
    projections covering it in projection order (CSR: ``seg_ptr`` ``[n_seg + 1]``, ``seg_proj``)."""
    N, P = alpha.shape[0], p_tgt_start.shape[0]
    cut = np.zeros(N + 1, np.bool_)
    cut[0] = cut[N] = True
    for p in range(P):
        cut[p_tgt_start[p]] = cut[p_tgt_start[p] + p_tgt_n[p]] = True
    for n in range(1, N):
        if alpha[n] != alpha[n - 1] or theta[n] != theta[n - 1] or beta[n] != beta[n - 1]:
            cut[n] = True
    bounds = np.nonzero(cut)[0]
    n_seg = bounds.shape[0] - 1
    seg_ptr = np.zeros(n_seg + 1, np.int64)
    seg_proj = np.empty(max(1, n_seg * P), np.int64)
    m = 0
    for g in range(n_seg):
        for p in range(P):
            if p_tgt_start[p] <= bounds[g] and bounds[g + 1] <= p_tgt_start[p] + p_tgt_n[p]:
                seg_proj[m] = p
                m += 1
        seg_ptr[g + 1] = m
    return bounds, seg_ptr, seg_proj


# The integrate + threshold loop over units [c0, c1) of one segment of one trial (1-d views that
# start at the segment's first unit; unsigned loop indices, so that the loop vectorises without
# negative-index checks), one function per number of live projections: 0, 1, 2 are written out,
# more go through the generic loop. ``a_p`` is projection p's integer count per unit (zeroed after
# use), ``s`` the previous spikes as uint8 (overwritten with the new ones); ``x - beta if s else
# x`` is ``x - beta * s`` exactly (x - 0 == x). Each returns how many units fired.
@njit(cache=True, inline="always")
def _lif_unit(v, s, n, u, alpha, theta, beta):  # pragma: no cover
    """``functional.lif`` for unit n in place: ``v = alpha v + u - beta s_prev``,
    ``s = v > theta``; returns the new spike."""
    x = alpha * v[n] + u
    x = x - beta if s[n] else x
    v[n] = x
    f = x > theta
    s[n] = f
    return f


@njit(cache=True)
def _block_0(d, v, s, alpha, theta, beta, c0, c1):  # pragma: no cover
    fired = 0
    for n in range(uint64(c0), uint64(c1)):
        fired += _lif_unit(v, s, n, d[n], alpha, theta, beta)
    return fired


@njit(cache=True)
def _block_1(d, v, s, alpha, theta, beta, c0, c1, a1, sc1):  # pragma: no cover
    fired = 0
    for n in range(uint64(c0), uint64(c1)):
        u = d[n] + sc1 * v.dtype.type(a1[n])
        a1[n] = 0
        fired += _lif_unit(v, s, n, u, alpha, theta, beta)
    return fired


@njit(cache=True)
def _block_2(d, v, s, alpha, theta, beta, c0, c1, a1, sc1, a2, sc2):  # pragma: no cover
    fired = 0
    for n in range(uint64(c0), uint64(c1)):
        u = d[n] + sc1 * v.dtype.type(a1[n])
        u = u + sc2 * v.dtype.type(a2[n])
        a1[n] = 0
        a2[n] = 0
        fired += _lif_unit(v, s, n, u, alpha, theta, beta)
    return fired


@njit(cache=True)
def _block_n(d, v, s, alpha, theta, beta, c0, c1, acc, first, live, n_live, acc_base,
             p_scale):  # pragma: no cover
    """As above with any number of live projections: unit n of the view is global unit
    ``first + n``, its count for projection p is ``acc[acc_base[p] + first + n]``."""
    fired = 0
    for n in range(c0, c1):
        u = d[n]
        for j in range(n_live):
            i = acc_base[live[j]] + first + n
            u = u + p_scale[live[j]] * v.dtype.type(acc[i])
            acc[i] = 0
        fired += _lif_unit(v, s, n, u, alpha, theta, beta)
    return fired


@njit(cache=True)
def fused_chunk_kernel(drive, v, s, alpha, theta, beta, p_src_start, p_src_n, p_tgt_start,
                       p_tgt_n, p_scale, p_ptr_off, indptr, targets, codes, mon_idx, v_out,
                       ev_step, ev_trial, ev_node):  # pragma: no cover
    """Advance ``v``, ``s`` ``[B, N]`` in place through ``k = v_out.shape[0]`` steps of
    ``drive`` ``[k, B, N]`` (or ``[1, B, N]``: the same drive at every step of the chunk).

    Writes each spike as an event ``(step, trial, unit)`` in that order (sorted by step, then
    trial, then unit) into ``ev_*`` and ``v[:, mon_idx]`` into ``v_out`` ``[k, B, n_mon]``.
    Returns the number of events, or -1 if the event arrays are too small (``v`` is then
    partly advanced: the caller restores it and retries with larger arrays).
    """
    k, B, N = v_out.shape[0], v.shape[0], v.shape[1]
    P = p_scale.shape[0]
    cap = ev_step.shape[0]
    one, zero = v.dtype.type(1.0), v.dtype.type(0.0)
    bounds, seg_ptr, seg_proj = _segments(alpha, theta, beta, p_tgt_start, p_tgt_n)
    n_seg = bounds.shape[0] - 1
    # one integer accumulator per projection over its target range: unit n of projection p is
    # acc[acc_base[p] + n]
    acc_base = np.empty(max(1, P), np.int64)
    size = 0
    for p in range(P):
        acc_base[p] = size - p_tgt_start[p]
        size += p_tgt_n[p]
    acc = np.zeros(max(1, size), dtype=np.int32)
    hit = np.zeros(max(1, P), dtype=np.bool_)
    live = np.zeros(max(1, P), dtype=np.int64)
    spk = np.zeros((B, N), dtype=np.uint8)  # s as bytes while the chunk runs
    active = np.empty((B, N), dtype=np.int64)  # units that fired at the previous step
    n_active = np.zeros(B, dtype=np.int64)
    for b in range(B):
        for n in range(N):
            if s[b, n] > zero:
                spk[b, n] = 1
                active[b, n_active[b]] = n
                n_active[b] += 1
    n_ev = 0
    for i in range(k):
        for b in range(B):
            d, vb, sb = drive[i if drive.shape[0] > 1 else 0, b], v[b], spk[b]
            # synapse: integer code sums over the units that fired at the previous step
            for p in range(P):
                s0 = p_src_start[p]
                base = p_ptr_off[p]
                a0 = acc_base[p] + p_tgt_start[p]
                h = False
                for q in range(n_active[b]):
                    src = active[b, q] - s0
                    if 0 <= src < p_src_n[p]:
                        h = True
                        for e in range(indptr[base + src], indptr[base + src + 1]):
                            acc[a0 + targets[e]] += codes[e]
                hit[p] = h
            # integrate + threshold per segment and block; u += scale_p * count_p in projection
            # order, projections without a source spike skipped (as the reference stepper)
            m = 0
            for g in range(n_seg):
                lo, hi = bounds[g], bounds[g + 1]
                al, th, be = alpha[lo], theta[lo], beta[lo]
                n_live = 0
                for j in range(seg_ptr[g], seg_ptr[g + 1]):
                    if hit[seg_proj[j]]:
                        live[n_live] = seg_proj[j]
                        n_live += 1
                o1, o2, sc1, sc2 = lo, lo, zero, zero
                if n_live > 0:
                    o1, sc1 = acc_base[live[0]] + lo, p_scale[live[0]]
                if n_live > 1:
                    o2, sc2 = acc_base[live[1]] + lo, p_scale[live[1]]
                dv, vv, sv = d[lo:hi], vb[lo:hi], sb[lo:hi]
                a1, a2 = acc[o1:o1 + hi - lo], acc[o2:o2 + hi - lo]
                for c0 in range(lo, hi, BLOCK):
                    c1 = min(c0 + BLOCK, hi)
                    if n_live == 0:
                        fired = _block_0(dv, vv, sv, al, th, be, c0 - lo, c1 - lo)
                    elif n_live == 1:
                        fired = _block_1(dv, vv, sv, al, th, be, c0 - lo, c1 - lo, a1, sc1)
                    elif n_live == 2:
                        fired = _block_2(dv, vv, sv, al, th, be, c0 - lo, c1 - lo, a1, sc1, a2,
                                         sc2)
                    else:
                        fired = _block_n(dv, vv, sv, al, th, be, c0 - lo, c1 - lo, acc, lo,
                                         live, n_live, acc_base, p_scale)
                    if fired == 0:
                        continue
                    if n_ev + fired > cap:
                        return -1
                    n = c0
                    while fired:  # the block's spikes, in unit order
                        if sb[n]:
                            active[b, m] = n
                            m += 1
                            ev_step[n_ev] = i
                            ev_trial[n_ev] = b
                            ev_node[n_ev] = n
                            n_ev += 1
                            fired -= 1
                        n += 1
            n_active[b] = m
            for j in range(mon_idx.shape[0]):
                v_out[i, b, j] = vb[mon_idx[j]]
    for b in range(B):
        for n in range(N):
            s[b, n] = one if spk[b, n] else zero
    return n_ev
