"""Glial PID activity controller: holds a population's mean firing at a target rate by moving
its threshold (a homeostatic, astrocyte-like slow loop; PNB-X BitBrain).

Once per update k (one forward call / batch in training), with measured activity ``a_k``
(spikes per unit per step, in [0, 1]; a scalar for a global offset or ``[N]`` for a per-unit
offset) and target ``r*``::

    e_k      = a_k - r*                                      error (too active -> e > 0)
    I_k      = clamp(I_{k-1} + e_k, -i_limit, i_limit)       integral with anti-windup
    D_k      = e_k - e_{k-1}                                 difference (e_{-1} = 0)
    offset_k = clamp(Kp e_k + Ki I_k + Kd D_k, lo, hi)       threshold offset for the next call

Gains: for a plant ``a = a0 - G * offset`` the error obeys
``e_{k+1} = (1 - G Kp - G Ki) e_k + G Kp e_{k-1}`` (Kd = 0): the defaults (Kp 0.5, Ki 4) keep
both roots inside the unit circle for plant gains G < 0.4 (BitBrain measures G ~ 0.15 per
threshold unit). A drive that drifts (weights growing in training) needs an offset ramp of
``rho`` per update, which a PI loop follows with a steady error ``rho / Ki`` in rate units.

The LIF threshold used by the next forward is ``theta + offset_k`` (``lo > -theta`` keeps it
positive); a higher threshold lowers the activity, so the loop has negative feedback for
``Kp, Ki, Kd >= 0``. Units: one update per call (no ms: the loop runs in call time, not in
simulation time). The controller carries no gradient; its state is explicit
(:class:`PIDState`) and :func:`pid_update` is the one place the update is written.
:class:`GlialPID` keeps the last state in buffers (saved with the model) and only updates
in training mode and when not frozen; eval uses the last offset.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from pydantic import Field, model_validator
from torch import nn

from neurobit._schema import Strict
from neurobit.errors import ParameterError


class GlialPIDConfig(Strict):
    """Gains and limits of :func:`pid_update` (``ValidationError`` names the bad field)."""

    target_rate: float = Field(0.188, gt=0, lt=1, description="r*: spikes per unit per step")
    kp: float = Field(0.5, ge=0, description="proportional gain (threshold units per rate)")
    ki: float = Field(4.0, ge=0, description="integral gain (threshold units per rate-update)")
    kd: float = Field(0.0, ge=0, description="derivative gain")
    lo: float = Field(-0.9, description="lowest offset (keep theta + lo > 0)")
    hi: float = Field(8.0, description="highest offset")
    i_limit: float | None = Field(None, gt=0, description="anti-windup bound on the integral; "
                                  "None: max(|lo|, |hi|) / ki (the integral alone can just "
                                  "reach either offset limit), or 1e6 when ki = 0")

    @model_validator(mode="after")
    def _check(self):
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)) or not self.lo <= 0 <= self.hi:
            raise ValueError(f"lo, hi: need finite lo <= 0 <= hi, got lo={self.lo}, hi={self.hi}")
        for name in ("kp", "ki", "kd"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name}: must be finite")
        return self

    @property
    def integral_limit(self) -> float:
        if self.i_limit is not None:
            return float(self.i_limit)
        return max(abs(self.lo), abs(self.hi)) / self.ki if self.ki > 0 else 1e6


class PIDState(NamedTuple):
    """``integral`` I_k, ``prev_error`` e_k, ``offset`` (all ``[]`` or ``[N]``)."""

    integral: torch.Tensor
    prev_error: torch.Tensor
    offset: torch.Tensor


def pid_initial_state(shape: tuple[int, ...] = (), dtype=torch.float32, device=None) -> PIDState:
    """Zero integral, zero previous error, zero offset."""
    z = torch.zeros(shape, dtype=dtype, device=device)
    return PIDState(z, z.clone(), z.clone())


@torch.no_grad()
def pid_update(state: PIDState, activity: torch.Tensor | float, cfg: GlialPIDConfig) -> PIDState:
    """One controller update (module docstring). ``activity`` broadcastable to the state shape.

    Returns the new :class:`PIDState`; ``offset`` is the threshold offset for the next call.
    """
    a = torch.as_tensor(activity, dtype=state.offset.dtype, device=state.offset.device).detach()
    if not bool(torch.isfinite(a).all()):
        raise ParameterError(f"activity: must be finite, got {a}")
    e = a - cfg.target_rate
    lim = cfg.integral_limit
    integral = torch.clamp(state.integral + e, -lim, lim)
    d = e - state.prev_error
    offset = torch.clamp(cfg.kp * e + cfg.ki * integral + cfg.kd * d, cfg.lo, cfg.hi)
    return PIDState(integral, e.expand_as(integral).clone(), offset)


class GlialPID(nn.Module):
    """Module shell over :func:`pid_update` holding the last state in buffers.

    Args:
        cfg: :class:`GlialPIDConfig`.
        n: ``None`` for one global offset, or the number of units for a per-unit offset.

    ``update(activity)`` applies one update in training mode unless :attr:`frozen`, and returns
    the offset to use next (``[]`` or ``[n]``); ``offset`` is the current one.
    """

    def __init__(self, cfg: GlialPIDConfig | None = None, n: int | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else GlialPIDConfig()
        if n is not None and int(n) < 1:
            raise ParameterError(f"n: must be >= 1 or None, got {n}")
        shape = () if n is None else (int(n),)
        s = pid_initial_state(shape)
        self.register_buffer("integral", s.integral)
        self.register_buffer("prev_error", s.prev_error)
        self.register_buffer("offset", s.offset)
        self.frozen = False

    @property
    def state(self) -> PIDState:
        return PIDState(self.integral, self.prev_error, self.offset)

    @torch.no_grad()
    def load_state(self, state: PIDState) -> None:
        self.integral.copy_(state.integral)
        self.prev_error.copy_(state.prev_error)
        self.offset.copy_(state.offset)

    @torch.no_grad()
    def reset(self) -> None:
        for b in (self.integral, self.prev_error, self.offset):
            b.zero_()

    def freeze(self, frozen: bool = True) -> "GlialPID":
        self.frozen = bool(frozen)
        return self

    @torch.no_grad()
    def update(self, activity: torch.Tensor | float) -> torch.Tensor:
        if self.training and not self.frozen:
            self.load_state(pid_update(self.state, activity, self.cfg))
        return self.offset

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"target_rate={c.target_rate}, kp={c.kp}, ki={c.ki}, kd={c.kd}, "
                f"offset in [{c.lo}, {c.hi}], shape={tuple(self.offset.shape)}")
