"""A bank of recurrent ternary LIF circuits over a token sequence, fused (custom autograd).

``recurrent_lif_scan(x, codes, scale, state, p, substeps=K)`` computes, for token inputs ``x``
``[B, T, C, N]`` (the input current of each token, held for ``K`` LIF steps), the per-token spike
rates ``r`` ``[B, T, C, N]`` of C circuits whose recurrent synapses are ``W_c = scale_c * codes_c``
(``codes`` ``[C, N, N]`` in {-1, 0, +1}, ``scale`` ``[]`` or ``[C, 1, 1]``)::

    v_n = alpha v_{n-1} + x_t + W_c s_{n-1} - beta s_{n-1},   s_n = H(v_n - theta)
    r_t = mean of s_n over the K steps of token t
    m_t = v_n at the token's last step (n = tK + K - 1; only with ``membrane=True``)

(:mod:`neurobit.functional.recurrent_lif_kernels` has the step order). It is the same
computation as looping :meth:`MicroCircuitBank.step_from_current` K times per token and
averaging (the spikes are identical; gradients agree with autograd through that loop), without
the per-step autograd graph: the forward and the hand-written backward are numba kernels
(the backward's weight gradient is one batched matrix product of the adjoint trace with the
spikes), and only the membrane trace ``[B, C, T*K, N]`` is kept for the backward. Gradients
flow to ``x``, ``codes`` (the straight-through estimator of the caller), ``scale`` and the
initial state.
Parameters (alpha, theta, beta) that require grad are not supported (``fused_ok`` says so).
"""
from __future__ import annotations

import torch

from neurobit.errors import ParameterError, ShapeError
from neurobit.functional.numba_threads import keep_torch_threads
from neurobit.functional.lif import LIFParameters, LIFState
from neurobit.functional.lif_scan import _jitted_surrogate
from neurobit.functional.recurrent_lif_kernels import (recurrent_lif_backward,
                                                       recurrent_lif_forward)


def _per_circuit_unit(x, C: int, N: int, like: torch.Tensor) -> torch.Tensor:
    """A scalar, ``[N]``, ``[C, 1]`` or ``[C, N]`` parameter as a contiguous ``[C, N]`` array."""
    t = x if isinstance(x, torch.Tensor) else torch.tensor(float(x))
    return t.detach().to(like.dtype).expand(C, N).contiguous()


def _scale_vector(scale: torch.Tensor, C: int) -> torch.Tensor:
    """``[]``/``[1]`` or ``[C, 1, 1]`` scale -> ``[C]``."""
    return scale.reshape(-1).expand(C) if scale.numel() == 1 else scale.reshape(C)


class _RecurrentLIFScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, codes, scale, v0, s0, p: LIFParameters, K: int):
        B, T, C, N = x.shape
        dt = x.dtype
        xc = x.detach().contiguous()
        cd = codes.detach().to(dt).contiguous()
        sc = _scale_vector(scale.detach().to(dt), C).contiguous()
        alpha, theta, beta = (_per_circuit_unit(q, C, N, x) for q in (p.alpha, p.theta, p.reset))
        v0c, s0c = v0.detach().to(dt).contiguous(), s0.detach().to(dt).contiguous()
        r = torch.empty_like(xc)
        v_trace = torch.empty(B, C, T * K, N, dtype=dt)
        v_end, s_end = torch.empty_like(v0c), torch.empty_like(s0c)
        with keep_torch_threads():
            recurrent_lif_forward(xc.numpy(), cd.transpose(1, 2).contiguous().numpy(), sc.numpy(),
                                  alpha.numpy(), theta.numpy(), beta.numpy(), v0c.numpy(),
                                  s0c.numpy(), int(K), r.numpy(), v_trace.numpy(), v_end.numpy(),
                                  s_end.numpy())
        ctx.save_for_backward(v_trace, cd, sc, alpha, theta, beta, s0c, codes, scale)
        ctx.p, ctx.K = p, int(K)
        m = v_trace[:, :, K - 1::K].transpose(1, 2).contiguous()      # [B, T, C, N]
        return r, m, v_end, s_end

    @staticmethod
    def backward(ctx, g_r, g_m, g_vT, g_sT):
        v_trace, cd, sc, alpha, theta, beta, s0c, codes, scale = ctx.saved_tensors
        p: LIFParameters = ctx.p
        B, C, NK, N = v_trace.shape
        T = NK // ctx.K
        dt = v_trace.dtype
        z = lambda g, shape: (torch.zeros(shape, dtype=dt) if g is None
                              else g.to(dt).contiguous())
        g_r, g_m = z(g_r, (B, T, C, N)), z(g_m, (B, T, C, N))
        g_vT, g_sT = z(g_vT, (B, C, N)), z(g_sT, (B, C, N))
        g_x = torch.empty(B, T, C, N, dtype=dt)
        g_trace = torch.empty(B, C, NK, N, dtype=dt)                 # G_n = dL/dv_n
        s_prev = torch.empty(B, C, NK, N, dtype=dt)                  # s_{n-1}
        g_v0, g_s0 = torch.empty(B, C, N, dtype=dt), torch.empty(B, C, N, dtype=dt)
        with keep_torch_threads():
            recurrent_lif_backward(v_trace.numpy(), cd.numpy(), sc.numpy(), alpha.numpy(),
                                   theta.numpy(), beta.numpy(), s0c.numpy(), ctx.K,
                                   _jitted_surrogate(p.surrogate), float(p.slope),
                                   bool(p.detach_reset), g_r.numpy(), g_m.numpy(), g_vT.numpy(),
                                   g_sT.numpy(),
                                   g_x.numpy(), g_trace.numpy(), s_prev.numpy(), g_v0.numpy(),
                                   g_s0.numpy())
        g_w = torch.matmul(g_trace.transpose(2, 3), s_prev).sum(0)   # dL/dW, W = scale * codes
        g_codes = (g_w * sc[:, None, None]).to(codes.dtype) if ctx.needs_input_grad[1] else None
        g_scale = None
        if ctx.needs_input_grad[2]:
            per_c = (g_w * cd).sum((1, 2))
            g_scale = (per_c.sum() if scale.numel() == 1 else per_c).reshape(scale.shape)
            g_scale = g_scale.to(scale.dtype)
        return g_x, g_codes, g_scale, g_v0, g_s0, None, None


def fused_ok(x: torch.Tensor, p: LIFParameters) -> bool:
    """Whether :func:`recurrent_lif_scan` can run ``x`` (CPU float32/64, fixed parameters)."""
    params_need_grad = any(isinstance(q, torch.Tensor) and q.requires_grad
                           for q in (p.alpha, p.theta, p.beta))
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not params_need_grad)


def recurrent_lif_scan(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                       state: LIFState, p: LIFParameters, substeps: int = 1, *,
                       membrane: bool = False):
    """Token rates ``[B, T, C, N]`` and the final :class:`LIFState` ``[B, C, N]``; see module doc.
    With ``membrane=True``: ``(rates, m, state)``, ``m`` ``[B, T, C, N]`` the membrane at each
    token's last LIF step (gradients flow through it too).

    Args:
        x: input current per token ``[B, T, C, N]`` (already ``W_in a_t``).
        codes: recurrent ternary codes ``[C, N, N]`` (out, in), with the caller's STE gradient.
        scale: ``[]`` or ``[C, 1, 1]`` scale of ``codes``.
        state: LIF state ``v``, ``s`` ``[B, C, N]`` before the first token.
        p: LIF parameters (scalars or broadcastable to ``[C, N]``; not requiring grad).
        substeps: K LIF steps per token (>= 1).
    """
    if x.dim() != 4:
        raise ShapeError(f"x: expected [B, T, C, N], got {list(x.shape)}")
    B, T, C, N = x.shape
    if tuple(codes.shape) != (C, N, N):
        raise ShapeError(f"codes: expected [{C}, {N}, {N}], got {list(codes.shape)}")
    if tuple(state.v.shape) != (B, C, N) or tuple(state.s.shape) != (B, C, N):
        raise ShapeError(f"state: expected v, s [{B}, {C}, {N}], got {list(state.v.shape)}")
    if int(substeps) < 1:
        raise ShapeError(f"substeps: must be >= 1, got {substeps}")
    if not fused_ok(x, p):
        raise ParameterError("x: the fused scan needs CPU float32/float64 input and fixed LIF "
                         "parameters (check fused_ok first)")
    if T == 0:
        return (x.new_zeros(x.shape),) + ((x.new_zeros(x.shape),) if membrane else ()) + (state,)
    r, m, v, s = _RecurrentLIFScan.apply(x, codes, scale, state.v, state.s, p, int(substeps))
    return (r, m, LIFState(v, s)) if membrane else (r, LIFState(v, s))
