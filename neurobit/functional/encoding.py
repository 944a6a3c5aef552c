"""Spike encodings of analog intensities (images), written once for the models and the
simulator's image stimulus.

All take intensities ``I`` in [0, 1] of any shape ``[...]`` and return spikes ``[T, ...]`` in
{0, 1} for steps ``t = 1 .. T`` (``dt`` per step):

- ``rate`` (Poisson / Bernoulli): ``s_t ~ Bernoulli(p)``, ``p = min(1, I * max_rate_hz * dt_ms
  / 1000)``, independent per step and element (drawn with ``torch.rand`` from ``generator``;
  ``s_t = 1[U_t < p]``).
- ``regular`` (deterministic rate code, an integrate-and-fire encoder with a half-step offset):
  ``s_t = floor(t p + 1/2) - floor((t - 1) p + 1/2)``, so the count over ``T`` steps is
  ``floor(T p + 1/2)``, the rounded expected count of the Bernoulli code, without its noise.
- ``latency``: one spike per window of ``period`` steps at step index
  ``floor((1 - I) * window_ms / dt_ms)`` (clipped to the window), brighter pixels first; pixels
  below ``min_intensity`` stay silent.
"""
from __future__ import annotations

import math

import torch

from neurobit.errors import ParameterError

ENCODINGS = ("rate", "regular", "latency")


def spike_probability(intensity: torch.Tensor, max_rate_hz: float, dt_ms: float) -> torch.Tensor:
    """``p = clamp(I * max_rate_hz * dt_ms / 1000, 0, 1)``: spikes per step at full rate."""
    if not max_rate_hz > 0 or not dt_ms > 0:
        raise ParameterError(f"max_rate_hz, dt_ms: must be > 0, got {max_rate_hz}, {dt_ms}")
    return (intensity * (max_rate_hz * dt_ms / 1000.0)).clamp(0.0, 1.0)


def rate_code(p: torch.Tensor, steps: int, generator: torch.Generator | None = None,
              dtype=torch.float32) -> torch.Tensor:
    """Bernoulli spikes ``[steps, *p.shape]``: ``s_t = 1[U_t < p]``, ``U_t ~ U(0, 1)``."""
    u = torch.rand((steps, *p.shape), generator=generator, dtype=torch.float64, device=p.device)
    return (u < p.to(torch.float64)).to(dtype)


def regular_code(p: torch.Tensor, steps: int, t0: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Deterministic spikes ``[steps, *p.shape]`` for steps ``t = t0 + 1 .. t0 + steps``:
    ``s_t = floor(t p + 1/2) - floor((t - 1) p + 1/2)``."""
    t = torch.arange(t0 + 1, t0 + steps + 1, dtype=torch.float64, device=p.device)
    t = t.view(-1, *([1] * p.dim()))
    p = p.to(torch.float64)
    return (torch.floor(t * p + 0.5) - torch.floor((t - 1) * p + 0.5)).to(dtype)


def latency_code(intensity: torch.Tensor, steps: int, window_ms: float, dt_ms: float,
                 min_intensity: float = 0.05, t0: int = 0, dtype=torch.float32) -> torch.Tensor:
    """One spike per ``window_ms`` at step ``floor((1 - I) window_ms / dt_ms)`` of the window
    (repeating every window); steps ``t0 .. t0 + steps - 1``; ``[steps, *I.shape]``."""
    period = max(1, int(math.ceil(window_ms / dt_ms)))
    lat = torch.floor((1 - intensity.to(torch.float64)) * window_ms / dt_ms).clamp_max(period - 1)
    t = torch.arange(t0, t0 + steps, device=intensity.device).view(-1, *([1] * intensity.dim()))
    fire = ((t % period) == lat.long()) & (intensity >= min_intensity)
    return fire.to(dtype)


def encode(intensity: torch.Tensor, encoding: str, steps: int, *, max_rate_hz: float = 1000.0,
           dt_ms: float = 1.0, window_ms: float | None = None, min_intensity: float = 0.05,
           generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    """Spikes ``[steps, *intensity.shape]`` of ``encoding`` (one of :data:`ENCODINGS`);
    ``window_ms`` of the latency code defaults to the whole presentation ``steps * dt_ms``."""
    if encoding == "rate":
        return rate_code(spike_probability(intensity, max_rate_hz, dt_ms), steps, generator, dtype)
    if encoding == "regular":
        return regular_code(spike_probability(intensity, max_rate_hz, dt_ms), steps, 0, dtype)
    if encoding == "latency":
        return latency_code(intensity, steps, window_ms or steps * dt_ms, dt_ms, min_intensity,
                            0, dtype)
    raise ParameterError(f"encoding: unknown {encoding!r}; choose one of {list(ENCODINGS)}")
