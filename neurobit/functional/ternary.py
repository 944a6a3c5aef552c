"""Ternary weight quantization (BitNet b1.58) and 8-bit activation quantization, with STE.

Weights, absmean form (Ma et al. 2024, "The Era of 1-bit LLMs")::

    gamma = mean(|W|) + eps          (per tensor, or per leading index for banks)
    Wq    = clip(round(W / gamma), -1, 1)  in {-1, 0, +1}

Weights, threshold form::

    Wq = 0 where |W| < tau, sign(W) elsewhere;  gamma = mean(|W| over the non-zero entries)

The effective weight is ``gamma * Wq``. Both use the straight-through estimator: the forward
value is quantized, the backward pass treats quantization as the identity
(``W + (Q(W) - W).detach()``); ``tau`` in the threshold form is not trained through the STE.

Activations, per-token absmax 8 bit::

    s_x = 127 / max(|x|) over the last axis;  xq = clip(round(x * s_x), -128, 127) / s_x
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from neurobit.errors import ParameterError

EPS = 1e-5


class Ternary(NamedTuple):
    """A ternary tensor and its scale: the effective weight is ``scale * codes``.

    ``codes``: same shape as the float weight, values in {-1, 0, +1} (float dtype, so it can be
    used in matmuls directly). ``scale``: shape broadcastable to ``codes`` (``[]`` per tensor,
    ``[M, 1, 1]`` per circuit for a bank).
    """

    codes: torch.Tensor
    scale: torch.Tensor


def _reduce_dims(w: torch.Tensor, per_leading: bool) -> tuple[int, ...]:
    return tuple(range(1, w.dim())) if per_leading else tuple(range(w.dim()))


def ternarize_absmean(w: torch.Tensor, per_leading: bool = False, eps: float = EPS) -> Ternary:
    """BitNet b1.58 absmean ternarization (no gradient; see :func:`ste_ternary`)."""
    w = w.detach()
    gamma = w.abs().mean(dim=_reduce_dims(w, per_leading), keepdim=True) + eps
    codes = torch.clamp(torch.round(w / gamma), -1, 1)
    return Ternary(codes, gamma)


def ternarize_threshold(w: torch.Tensor, tau: float | torch.Tensor,
                        per_leading: bool = False) -> Ternary:
    """Threshold ternarization: ``|W| < tau -> 0``, else ``sign(W)``; scale = mean kept |W|."""
    tau_t = tau if isinstance(tau, torch.Tensor) else torch.tensor(float(tau))
    if bool((tau_t.detach() < 0).any()):
        raise ParameterError(f"tau: must be >= 0, got {tau_t.min().item():g}")
    w = w.detach()
    keep = w.abs() >= tau_t.detach()
    codes = torch.sign(w) * keep
    dims = _reduce_dims(w, per_leading)
    n = keep.sum(dim=dims, keepdim=True).clamp_min(1)
    gamma = (w.abs() * keep).sum(dim=dims, keepdim=True) / n + EPS
    return Ternary(codes.to(w.dtype), gamma.to(w.dtype))


def ste(x: torch.Tensor, x_quantized: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator: value of ``x_quantized``, gradient of the identity on ``x``."""
    return x + (x_quantized - x).detach()


def quantize_activations_absmax(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Per-token (last axis) absmax quantization to ``bits`` signed bits, dequantized, with STE."""
    if not 2 <= bits <= 16:
        raise ParameterError(f"bits: must be in [2, 16], got {bits}")
    qmax = 2 ** (bits - 1) - 1
    scale = qmax / x.detach().abs().amax(dim=-1, keepdim=True).clamp_min(EPS)
    xq = torch.clamp(torch.round(x.detach() * scale), -qmax - 1, qmax) / scale
    return ste(x, xq)


QUANT_MODES = ("absmean", "threshold", "fixed", "float")


def ternary_ste(w: torch.Tensor, mode: str = "absmean", *, tau: float | torch.Tensor | None = None,
                fixed_scale: float | torch.Tensor | None = None, per_leading: bool = False,
                tau_sharpness: float = 10.0) -> Ternary:
    """Ternary codes of ``w`` that carry straight-through gradients, and their (detached) scale.

    ``mode``: ``absmean`` (BitNet b1.58), ``threshold`` (needs ``tau``; a ``tau`` tensor that
    requires grad gets a sigmoid-relaxed gradient of sharpness ``tau_sharpness / scale``),
    ``fixed`` (``codes = clip(round(W / fixed_scale), -1, 1)``, scale given: for circuits whose
    synaptic weight is set in physical terms), ``float`` (no quantization: codes = ``w``,
    scale = 1). The forward value of ``scale * codes`` is the effective weight; the gradient
    with respect to ``w`` is that of the identity.
    """
    if mode == "float":
        return Ternary(w, torch.ones((), dtype=w.dtype, device=w.device))
    if mode == "absmean":
        q = ternarize_absmean(w, per_leading)
    elif mode == "threshold":
        if tau is None:
            raise ParameterError("tau: the threshold quantization mode needs tau")
        q = ternarize_threshold(w, tau, per_leading)
    elif mode == "fixed":
        if fixed_scale is None:
            raise ParameterError("fixed_scale: the fixed quantization mode needs a scale")
        gamma = torch.as_tensor(fixed_scale, dtype=w.dtype, device=w.device)
        if bool((gamma <= 0).any()):
            raise ParameterError(f"fixed_scale: must be > 0, got {gamma.min().item():g}")
        q = Ternary(torch.clamp(torch.round(w.detach() / gamma), -1, 1), gamma)
    else:
        raise ParameterError(f"quant: unknown mode {mode!r}; choose one of {list(QUANT_MODES)}")
    codes = ste(w / q.scale, q.codes)
    if mode == "threshold" and isinstance(tau, torch.Tensor) and tau.requires_grad:
        soft = torch.sign(w.detach()) * torch.sigmoid(
            (w.detach().abs() - tau) * tau_sharpness / q.scale)
        codes = codes + (soft - soft.detach())  # adds exactly 0 in the forward pass
    return Ternary(codes, q.scale)
