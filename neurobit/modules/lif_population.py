"""LIFPopulation: N leaky integrate-and-fire units behind one of three backends.

All backends compute the update of :mod:`neurobit.functional.lif`
(``v_t = alpha v_{t-1} + u_t - beta s_{t-1}``, ``s_t = H(v_t - theta)``):

- ``native``: :func:`lif_step` / :func:`lif_scan` (fused numba scan with hand-written backward).
- ``snntorch``: ``snntorch.Leaky(beta=alpha, threshold=theta, reset_mechanism="subtract")``
  with its default delayed reset. Exact when ``beta == theta``; it derives ``s_{t-1}`` from
  ``v_{t-1}`` (so the incoming state must satisfy ``s = H(v - theta)``).
- ``norse``: ``LIFBoxCell`` with ``reset_subtract`` and Euler step ``dt * tau_mem_inv =
  1 - alpha``, input ``i = u / (1 - alpha)``. norse subtracts ``theta`` in the same step,
  before the next decay, so it expresses only ``beta == alpha * theta``.

A configuration a backend cannot express raises :class:`BackendError` at construction.
State is explicit: ``forward(u_seq, state) -> (spikes, state)``; nothing is kept in the module.
"""
from __future__ import annotations

import torch
from torch import nn

from neurobit.errors import BackendError, ParameterError, ShapeError
from neurobit.functional.lif import (LIFParameters, LIFState, alpha_from_tau, check_parameters,
                                     initial_state, lif_step)
from neurobit.functional.lif_scan import lif_scan

BACKENDS = ("native", "snntorch", "norse")


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to a few rounding steps of the coarser dtype (parameters may be float32)."""
    rtol = 4 * torch.finfo(torch.promote_types(a.dtype, b.dtype)).eps
    return bool(torch.allclose(a.double(), b.double(), rtol=rtol, atol=0.0))


class LIFPopulation(nn.Module):
    """``n`` LIF units.

    Args:
        n: number of units (>= 1).
        alpha: decay per step in (0, 1); or give ``tau_mem_ms`` and ``dt_ms`` instead.
        theta: threshold (> 0); scalar or ``[n]``.
        beta: reset amount (default ``theta``); scalar or ``[n]``.
        surrogate, slope, detach_reset: see :class:`LIFParameters`.
        backend: ``native`` | ``snntorch`` | ``norse``.
        dtype: dtype of the parameter buffers (default: torch's default dtype).
    Shapes: inputs ``[..., n]`` per step, ``[T, ..., n]`` for sequences.
    """

    def __init__(self, n: int, alpha: float | torch.Tensor | None = None, *,
                 tau_mem_ms: float | None = None, dt_ms: float | None = None,
                 theta: float | torch.Tensor = 1.0, beta: float | torch.Tensor | None = None,
                 surrogate: str = "fast_sigmoid", slope: float = 25.0,
                 detach_reset: bool = True, backend: str = "native", dtype=None):
        super().__init__()
        if int(n) < 1:
            raise ParameterError(f"n: must be >= 1, got {n}")
        if backend not in BACKENDS:
            raise ParameterError(f"backend: unknown {backend!r}; choose one of {list(BACKENDS)}")
        if alpha is None:
            if tau_mem_ms is None or dt_ms is None:
                raise ParameterError("alpha: give alpha, or tau_mem_ms and dt_ms")
            alpha = alpha_from_tau(tau_mem_ms, dt_ms)
        elif tau_mem_ms is not None:
            raise ParameterError("alpha: give either alpha or tau_mem_ms, not both")
        self.n, self.backend = int(n), backend
        dt = dtype or torch.get_default_dtype()  # float64 circuits keep alpha = exp(-dt/tau) exact
        self.register_buffer("alpha", torch.as_tensor(alpha, dtype=dt))
        self.register_buffer("theta", torch.as_tensor(theta, dtype=dt))
        self.register_buffer("beta", None if beta is None else torch.as_tensor(beta, dtype=dt))
        self.surrogate, self.slope, self.detach_reset = surrogate, slope, detach_reset
        for name in ("alpha", "theta", "beta"):
            t = getattr(self, name)
            if t is not None and t.dim() > 0 and t.shape[-1] != self.n:
                raise ShapeError(f"{name}: per-unit values need shape [{self.n}], got {list(t.shape)}")
        check_parameters(self.params)
        self._check_backend()

    @property
    def params(self) -> LIFParameters:
        return LIFParameters(self.alpha, self.theta, self.beta, self.surrogate, self.slope,
                             self.detach_reset)

    def _check_backend(self) -> None:
        p = self.params
        if self.backend == "snntorch" and not _close(torch.as_tensor(p.reset), self.theta):
            raise BackendError(
                "backend: snntorch's Leaky subtracts exactly theta after a spike; "
                "beta != theta cannot be expressed (use backend='native')")
        if self.backend == "norse":
            if not _close(torch.as_tensor(p.reset), self.alpha * self.theta):
                raise BackendError(
                    "backend: norse's reset_subtract removes theta before the next decay, i.e. "
                    "beta = alpha * theta; this population has a different beta "
                    "(use backend='native', or set beta = alpha * theta)")

    def initial_state(self, batch_shape: tuple[int, ...] = (), dtype=None, device=None) -> LIFState:
        """Resting state ``v = 0, s = 0`` of shape ``[*batch_shape, n]``."""
        return initial_state((*batch_shape, self.n), dtype or self.alpha.dtype, device)

    def _check_input(self, u: torch.Tensor, name: str) -> None:
        if u.shape[-1] != self.n:
            raise ShapeError(f"{name}: last axis must be n={self.n}, got shape {list(u.shape)}")

    def step(self, u: torch.Tensor, state: LIFState | None = None) -> tuple[torch.Tensor, LIFState]:
        """One step: ``u`` ``[..., n]`` -> spikes ``[..., n]`` and the new state."""
        self._check_input(u, "u")
        if state is None:
            state = self.initial_state(u.shape[:-1], u.dtype, u.device)
        if self.backend == "native":
            return lif_step(u, state, self.params)
        s, state = self._foreign_scan(u.unsqueeze(0), state)
        return s[0], state

    def forward(self, u_seq: torch.Tensor, state: LIFState | None = None) -> tuple[torch.Tensor, LIFState]:
        """All steps: ``u_seq`` ``[T, ..., n]`` -> spikes ``[T, ..., n]`` and the final state."""
        if u_seq.dim() < 2:
            raise ShapeError(f"u_seq: expected [T, ..., {self.n}], got shape {list(u_seq.shape)}")
        self._check_input(u_seq, "u_seq")
        if state is None:
            state = self.initial_state(u_seq.shape[1:-1], u_seq.dtype, u_seq.device)
        if self.backend == "native":
            return lif_scan(u_seq, state, self.params, check=False)
        return self._foreign_scan(u_seq, state)

    # -- foreign backends ---------------------------------------------------------------------
    def _foreign_scan(self, u_seq: torch.Tensor, state: LIFState) -> tuple[torch.Tensor, LIFState]:
        if self.backend == "snntorch":
            return self._snntorch_scan(u_seq, state)
        return self._norse_scan(u_seq, state)

    def _snntorch_scan(self, u_seq, state):
        try:
            import snntorch
        except ImportError as e:  # pragma: no cover
            raise BackendError("backend: snntorch is not installed (pip install snntorch)") from e
        dt = u_seq.dtype
        leaky = snntorch.Leaky(beta=self.alpha.to(dt), threshold=self.theta.to(dt),
                               reset_mechanism="subtract",
                               spike_grad=_SnntorchSurrogate(self.surrogate, self.slope))
        mem = state.v
        out = []
        for u in u_seq.unbind(0):
            s, mem = leaky(u, mem)
            out.append(s)
        s_seq = torch.stack(out, 0)
        return s_seq, LIFState(mem, s_seq[-1])

    def _norse_scan(self, u_seq, state):
        try:
            from norse.torch.functional.lif_box import (LIFBoxFeedForwardState, LIFBoxParameters,
                                                        lif_box_feed_forward_step)
            from norse.torch.functional.reset import reset_subtract
        except ImportError as e:  # pragma: no cover
            raise BackendError("backend: norse is not installed (pip install norse)") from e
        dt = u_seq.dtype
        one_minus_alpha = (1 - self.alpha).to(dt)
        p = LIFBoxParameters(tau_mem_inv=one_minus_alpha, v_leak=torch.zeros((), dtype=dt),
                             v_th=self.theta.to(dt), v_reset=torch.zeros((), dtype=dt),
                             method="super", alpha=torch.as_tensor(float(self.slope)),
                             reset_method=reset_subtract)
        # norse keeps the membrane after its same-step reset: v_norse = v - theta * s.
        nstate = LIFBoxFeedForwardState(v=state.v - p.v_th * state.s)
        out = []
        v_pre = state.v
        for u in u_seq.unbind(0):
            s, nstate = lif_box_feed_forward_step(u / one_minus_alpha, nstate, p, dt=1.0)
            v_pre = nstate.v + p.v_th * s
            out.append(s)
        s_seq = torch.stack(out, 0)
        return s_seq, LIFState(v_pre, s_seq[-1])


class _SnntorchSurrogate:
    """Adapter so snntorch's Leaky uses neurobit's spike function (same forward, same surrogate)."""

    def __init__(self, name: str, slope: float):
        self.name, self.slope = name, slope

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from neurobit.functional.surrogate import spike
        return spike(x, self.name, self.slope)
