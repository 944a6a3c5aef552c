"""The discrete leaky integrate-and-fire update, written once.

Update (one step of ``dt_ms``), for every unit independently::

    v_t = alpha * v_{t-1} + u_t - beta * s_{t-1}        (integrate, with delayed subtractive reset)
    s_t = H(v_t - theta)                                 (threshold; H(x) = 1[x > 0])

- ``v`` membrane potential (dimensionless, threshold units), ``u`` input current per step,
  ``s`` spikes in {0, 1}.
- ``alpha = exp(-dt_ms / tau_mem_ms)`` in (0, 1): decay per step.
- ``theta > 0``: threshold. ``beta >= 0``: amount subtracted one step after a spike
  (default ``beta = theta``: reset by subtraction, as snntorch ``Leaky(reset_mechanism="subtract")``).

The reset lands in the step *after* the spike (it uses ``s_{t-1}``); this is the order that
snntorch's ``Leaky`` (``reset_delay=True``) and the Brian2 reference in ``neurobit.interop``
reproduce exactly. Every other path (the fused scan, numba kernels, compiled backends) is
tested against :func:`lif_step`.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Union

import torch

from neurobit.errors import ParameterError, ShapeError
from neurobit.functional.surrogate import spike, surrogate_grad

Scalar = Union[float, torch.Tensor]


class LIFParameters(NamedTuple):
    """Parameters of :func:`lif_step` (scalars or tensors broadcastable to the unit shape).

    Attributes:
        alpha: membrane decay per step, in (0, 1). See :func:`alpha_from_tau`.
        theta: firing threshold, > 0.
        beta: reset amount subtracted the step after a spike, >= 0; ``None`` means ``theta``.
        surrogate: surrogate-gradient name (see ``neurobit.functional.surrogate``).
        slope: surrogate steepness, > 0.
        detach_reset: if True the reset term carries no gradient (snntorch's default).
    """

    alpha: Scalar = 0.9
    theta: Scalar = 1.0
    beta: Scalar | None = None
    surrogate: str = "fast_sigmoid"
    slope: float = 25.0
    detach_reset: bool = True

    @property
    def reset(self) -> Scalar:
        """The reset amount actually used: ``beta`` or, when unset, ``theta``."""
        return self.theta if self.beta is None else self.beta


class LIFState(NamedTuple):
    """State of a LIF population after step t: membrane ``v`` and spikes ``s`` (same shape)."""

    v: torch.Tensor
    s: torch.Tensor


def alpha_from_tau(tau_mem_ms: float, dt_ms: float) -> float:
    """``alpha = exp(-dt_ms / tau_mem_ms)``: the exact decay of ``tau dv/dt = -v`` over one step."""
    if not tau_mem_ms > 0:
        raise ParameterError(f"tau_mem_ms: must be > 0, got {tau_mem_ms}")
    if not dt_ms > 0:
        raise ParameterError(f"dt_ms: must be > 0, got {dt_ms}")
    return math.exp(-dt_ms / tau_mem_ms)


def tau_from_alpha(alpha: float, dt_ms: float) -> float:
    """Inverse of :func:`alpha_from_tau`: ``tau_mem_ms = -dt_ms / ln(alpha)``."""
    check_alpha(alpha)
    if not dt_ms > 0:
        raise ParameterError(f"dt_ms: must be > 0, got {dt_ms}")
    return -dt_ms / math.log(alpha)


def alpha_spread(alpha_min: float, alpha_max: float, n: int) -> torch.Tensor:
    """Decays of ``n`` units whose time constants ``tau = -1 / ln(alpha)`` (in steps) are spaced
    geometrically from ``tau(alpha_min)`` to ``tau(alpha_max)``: ``[n]`` float64, ascending.

    Heterogeneous membrane time constants give one population memories on several time scales
    (Perez-Nieves et al., Nat. Commun. 12, 5791, 2021). ``n == 1`` gives ``[alpha_max]``.
    """
    check_alpha(alpha_min, "alpha_min")
    check_alpha(alpha_max, "alpha_max")
    if alpha_min > alpha_max:
        raise ParameterError(f"alpha_min: {alpha_min} exceeds alpha_max={alpha_max}")
    if int(n) < 1:
        raise ParameterError(f"n: must be >= 1, got {n}")
    lo, hi = -1.0 / math.log(alpha_min), -1.0 / math.log(alpha_max)
    if n == 1:
        return torch.tensor([alpha_max], dtype=torch.float64)
    tau = torch.logspace(math.log10(lo), math.log10(hi), int(n), dtype=torch.float64)
    return torch.exp(-1.0 / tau)


def _as_tensor(x: Scalar) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.tensor(float(x))


def check_alpha(alpha: Scalar, name: str = "alpha") -> None:
    a = _as_tensor(alpha).detach()
    if not bool(((a > 0) & (a < 1)).all()):
        raise ParameterError(f"{name}: must lie in (0, 1), got {a.min().item():g}..{a.max().item():g}")


def check_parameters(p: LIFParameters) -> None:
    """Raise :class:`ParameterError` naming the first impossible parameter of ``p``."""
    check_alpha(p.alpha)
    th = _as_tensor(p.theta).detach()
    if not bool((th > 0).all()):
        raise ParameterError(f"theta: must be > 0, got min {th.min().item():g}")
    if p.beta is not None and not bool((_as_tensor(p.beta).detach() >= 0).all()):
        raise ParameterError(f"beta: must be >= 0, got min {_as_tensor(p.beta).min().item():g}")
    surrogate_grad(p.surrogate)
    if not p.slope > 0:
        raise ParameterError(f"slope: must be > 0, got {p.slope}")


def initial_state(shape: tuple[int, ...], dtype=torch.float32, device=None) -> LIFState:
    """Resting state: ``v = 0``, ``s = 0`` of the given shape."""
    if any(int(n) < 0 for n in shape):
        raise ParameterError(f"shape: sizes must be >= 0, got {tuple(shape)}")
    z = torch.zeros(shape, dtype=dtype, device=device)
    return LIFState(z, z.clone())


def lif_step(u: torch.Tensor, state: LIFState, p: LIFParameters) -> tuple[torch.Tensor, LIFState]:
    """One LIF step. Shapes: ``u``, ``state.v``, ``state.s``: ``[..., N]``; returns ``(s_t, state_t)``.

    ``v_t = alpha * v_{t-1} + u_t - beta * s_{t-1}``; ``s_t = H(v_t - theta)`` (surrogate backward).
    """
    v = lif_integrate(u, state, p)
    s = spike(v - p.theta, p.surrogate, p.slope)
    return s, LIFState(v, s)


def lif_integrate(u: torch.Tensor, state: LIFState, p: LIFParameters) -> torch.Tensor:
    """The integrate phase: ``v_t = alpha * v_{t-1} + u_t - beta * s_{t-1}`` (delayed reset)."""
    if u.shape != state.v.shape:
        raise ShapeError(f"u: shape {tuple(u.shape)} does not match state.v {tuple(state.v.shape)}")
    s_prev = state.s.detach() if p.detach_reset else state.s
    return p.alpha * state.v + u - p.reset * s_prev


def lif_rate_step(u: torch.Tensor, state: LIFState, p: LIFParameters,
                  act) -> tuple[torch.Tensor, LIFState]:
    """The same leaky integration with a rate nonlinearity instead of the spike (ablations):
    ``v_t`` as :func:`lif_integrate`, ``r_t = act(v_t - theta)``; ``r`` takes the place of ``s``
    (also in the reset term of the next step)."""
    v = lif_integrate(u, state, p)
    r = act(v - p.theta)
    return r, LIFState(v, r)


def lif_loop(u_seq: torch.Tensor, state: LIFState, p: LIFParameters) -> tuple[torch.Tensor, LIFState]:
    """Reference multi-step LIF: :func:`lif_step` over ``u_seq`` of shape ``[T, ..., N]``.

    Reads the input with ``unbind(0)`` (indexing ``u[t]`` makes autograd O(T^2)).
    Returns spikes ``[T, ..., N]`` and the final state.
    """
    if u_seq.shape[0] == 0:
        return u_seq.new_zeros(u_seq.shape), state
    out = []
    for u in u_seq.unbind(0):
        s, state = lif_step(u, state, p)
        out.append(s)
    return torch.stack(out, 0), state
