"""Spike nonlinearity with surrogate gradients.

Forward is the Heaviside step ``s = H(x) = 1[x > 0]`` (a spike when the membrane is strictly
above threshold, as in Brian2's ``v > theta`` and snntorch). Backward replaces ``dH/dx`` by a
smooth surrogate ``sigma'(x)`` with a ``slope`` parameter (units: 1/membrane unit):

- ``fast_sigmoid``: ``sigma'(x) = 1 / (slope * |x| + 1)^2``             (Zenke & Ganguli 2018)
- ``arctan``:       ``sigma'(x) = (slope / 2) / (1 + (pi/2 * slope * x)^2)`` (Fang et al. 2021)
- ``hard_sigmoid``: ``sigma'(x) = slope * 1[|x| < 1 / (2 slope)]``      (straight-through box)
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from neurobit.errors import ParameterError

SurrogateGrad = Callable[[torch.Tensor, float], torch.Tensor]


# Each derivative is written once, with operators only (``abs``, ``*``, ``/``, ``**``, ``<``),
# so the same function serves torch tensors here and numba scalars in the fused LIF kernels.
def _fast_sigmoid_grad(x, slope):
    return 1.0 / (slope * abs(x) + 1.0) ** 2


def _arctan_grad(x, slope):
    return (slope / 2.0) / (1.0 + (math.pi / 2.0 * slope * x) ** 2)


def _hard_sigmoid_grad(x, slope):
    return (abs(x) < 0.5 / slope) * slope


SURROGATES: dict[str, SurrogateGrad] = {
    "fast_sigmoid": _fast_sigmoid_grad,
    "arctan": _arctan_grad,
    "hard_sigmoid": _hard_sigmoid_grad,
}


def surrogate_grad(name: str) -> SurrogateGrad:
    """Return ``sigma'(x, slope)`` for a surrogate name; raise naming the valid choices."""
    try:
        return SURROGATES[name]
    except KeyError:
        raise ParameterError(
            f"surrogate: unknown surrogate {name!r}; choose one of {sorted(SURROGATES)}"
        ) from None


def heaviside(x: torch.Tensor) -> torch.Tensor:
    """``1[x > 0]`` in the dtype of ``x`` (no gradient)."""
    return (x > 0).to(x.dtype)


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, name: str, slope: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.name, ctx.slope = name, slope
        return heaviside(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_out * SURROGATES[ctx.name](x, ctx.slope).to(x.dtype), None, None


def spike(x: torch.Tensor, surrogate: str = "fast_sigmoid", slope: float = 25.0) -> torch.Tensor:
    """Heaviside spike of ``x = v - theta`` with the named surrogate gradient.

    Args:
        x: membrane minus threshold, any shape.
        surrogate: one of ``SURROGATES``.
        slope: steepness of the surrogate, > 0.
    Returns:
        float tensor of 0/1 with the shape of ``x``.
    """
    surrogate_grad(surrogate)
    if not slope > 0:
        raise ParameterError(f"slope: must be > 0, got {slope}")
    return _Spike.apply(x, surrogate, float(slope))
