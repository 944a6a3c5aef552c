"""Multi-step LIF scan with a hand-written backward (custom autograd).

``lif_scan(u_seq, state, p)`` returns the same spikes as the reference
:func:`neurobit.functional.lif.lif_loop` (identical; the forward is the same update in the
same float operation order) and gradients with respect to ``u_seq`` and the initial state
that agree with autograd through the loop (tested to 1e-6 relative). It stores only the
membrane trace ``v`` ``[T, ..., N]`` for the backward pass, and runs both passes in numba
kernels on CPU (a torch loop elsewhere). Gradients with respect to ``alpha``, ``theta``,
``beta`` are not computed: parameters that require grad route to :func:`lif_loop`.
"""
from __future__ import annotations

import numba
import torch

from neurobit.errors import ShapeError
from neurobit.functional.numba_threads import keep_torch_threads
from neurobit.functional.lif import LIFParameters, LIFState, check_parameters, lif_loop
from neurobit.functional.lif_kernels import lif_backward_kernel, lif_forward_kernel
from neurobit.functional.surrogate import surrogate_grad


def _per_unit(x, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar/tensor parameter to ``like.shape`` and flatten it to ``[M]``."""
    t = x if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=like.dtype)
    return t.detach().to(like.dtype).expand(like.shape).contiguous().reshape(-1)


def _n_chunks(m: int) -> int:
    return max(1, min(numba.get_num_threads(), m // 64 or 1))


class _LIFScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u_seq, v0, s0, p: LIFParameters):
        T = u_seq.shape[0]
        unit_shape = u_seq.shape[1:]
        u2 = u_seq.detach().contiguous().reshape(T, -1)
        alpha, theta, beta = (_per_unit(x, v0) for x in (p.alpha, p.theta, p.reset))
        v_out = torch.empty_like(u2)
        s_out = torch.empty_like(u2)
        with keep_torch_threads():
            lif_forward_kernel(
                u2.numpy(), v0.detach().contiguous().reshape(-1).numpy(),
                s0.detach().contiguous().reshape(-1).numpy(), alpha.numpy(), theta.numpy(),
                beta.numpy(), v_out.numpy(), s_out.numpy(), _n_chunks(u2.shape[1]),
            )
        ctx.save_for_backward(v_out, alpha, theta, beta)
        ctx.p, ctx.unit_shape = p, unit_shape
        v_out = v_out.reshape(T, *unit_shape)
        s_out = s_out.reshape(T, *unit_shape)
        return s_out, v_out[-1].clone(), s_out[-1].clone()

    @staticmethod
    def backward(ctx, g_s, g_vT, g_sT):
        v_seq, alpha, theta, beta = ctx.saved_tensors
        p: LIFParameters = ctx.p
        T, M = v_seq.shape
        # Incoming gradients may be broadcast views (e.g. of spikes.sum()): numba reads them
        # with their strides, so they are not copied into a dense [T, M] array.
        z = lambda g, shape: (torch.zeros(shape, dtype=v_seq.dtype) if g is None
                              else g.to(v_seq.dtype).reshape(shape))
        g_s = z(g_s, (T, M))
        g_vT, g_sT = z(g_vT, (M,)), z(g_sT, (M,))
        g_u = torch.empty_like(v_seq)
        g_v0 = torch.empty(M, dtype=v_seq.dtype)
        g_s0 = torch.empty(M, dtype=v_seq.dtype)
        with keep_torch_threads():
            lif_backward_kernel(
                v_seq.numpy(), theta.numpy(), _jitted_surrogate(p.surrogate),
                float(p.slope), g_s.numpy(), g_vT.numpy(), g_sT.numpy(), alpha.numpy(), beta.numpy(),
                bool(p.detach_reset), g_u.numpy(), g_v0.numpy(), g_s0.numpy(), _n_chunks(M),
            )
        shape = ctx.unit_shape
        return g_u.reshape(T, *shape), g_v0.reshape(shape), g_s0.reshape(shape), None


_JITTED: dict = {}


def _jitted_surrogate(name: str):
    """The surrogate derivative of ``name`` compiled with numba (compiled once per process)."""
    if name not in _JITTED:
        _JITTED[name] = numba.njit(cache=False)(surrogate_grad(name))
    return _JITTED[name]


def _kernel_ok(u_seq: torch.Tensor, p: LIFParameters) -> bool:
    params_need_grad = any(
        isinstance(x, torch.Tensor) and x.requires_grad for x in (p.alpha, p.theta, p.beta)
    )
    return (u_seq.device.type == "cpu" and u_seq.dtype in (torch.float32, torch.float64)
            and not params_need_grad)


def lif_scan(u_seq: torch.Tensor, state: LIFState, p: LIFParameters,
             check: bool = True) -> tuple[torch.Tensor, LIFState]:
    """LIF over all steps of ``u_seq`` ``[T, ..., N]`` from ``state``; see :func:`lif_loop`.

    Returns spikes ``[T, ..., N]`` and the final :class:`LIFState`. Same result as
    ``lif_loop``; faster, and its memory for backward is one ``[T, ..., N]`` membrane trace.
    """
    if check:
        check_parameters(p)
    if u_seq.dim() < 1 or u_seq.shape[1:] != state.v.shape:
        raise ShapeError(
            f"u_seq: expected shape [T, {', '.join(map(str, state.v.shape))}], "
            f"got {list(u_seq.shape)}")
    if u_seq.shape[0] == 0:
        return u_seq.new_zeros(u_seq.shape), state
    if not _kernel_ok(u_seq, p):
        return lif_loop(u_seq, state, p)
    s_seq, vT, sT = _LIFScan.apply(u_seq, state.v, state.s, p)
    return s_seq, LIFState(vT, sT)
