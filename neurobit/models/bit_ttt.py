"""Bit-TTT layer (test-time training with ternary projections) and the Bit-Llama block.

**Bit-TTT** (TTT-Linear, Sun et al. 2024, "Learning to (Learn at Test Time)", with BitNet
b1.58 projections as in the Bit-TTT notes). The hidden state is a weight matrix ``W``
``[B, n, n]`` (``n = d_state``) trained *per token* by one gradient-descent step on a
self-supervised reconstruction loss. For ``x_t`` ``[B, d]``::

    [k_t, v_t, q_t] = D x_t                      D: ternary BitLinear d -> 3n (absmean)
    k_t, v_t, q_t  <- each / ||.||_2             L2-normalised features   [B, n]
    r_t   = W_{t-1} k_t - v_t                    reconstruction residual  [B, n]
    l_t   = 1/2 ||r_t||^2                        self-supervised loss     [B]
    W_t   = W_{t-1} - eta * r_t k_t^T            = W_{t-1} - eta * dl_t/dW    [B, n, n]
    z_t   = W_t q_t                              read-out with the updated state  [B, n]
    y_t   = U z_t                                U: ternary BitLinear n -> d

``W_0`` is a learned parameter ``[n, n]`` (zeros at initialisation), shared by all sequences.
Because ``||k_t|| = 1``, the update shrinks the residual along ``k_t`` by ``(1 - eta)``: it is
stable for ``0 < eta < 2`` and stores the pair exactly at ``eta = 1``. Repeating a pattern
lowers its loss ``l_t`` (the memory effect); fresh random features do not.

The scan over tokens is a Python loop over ``x.unbind(1)`` (no O(T^2) slicing gradient);
training backpropagates through it (backpropagation through time). :func:`ttt_linear_step` is
the one place the update is written.

**Bit-Llama block** (``x`` ``[B, T, d]``)::

    x = x + BitTTT(RMSNorm(x))
    x = x + SwiGLU(RMSNorm(x)),   SwiGLU(h) = W_2 (silu(W_1 h) * W_3 h)   (ternary W_1, W_2, W_3)
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from neurobit.errors import ParameterError, ShapeError
from neurobit.modules.bitlinear import BitLinear


def ttt_linear_step(W: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q: torch.Tensor,
                    eta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One TTT-Linear token: ``(z_t [B, n], W_t [B, n, n], l_t [B])`` from ``W_{t-1}``
    ``[B, n, n]`` and unit features ``k_t, v_t, q_t`` ``[B, n]`` (equations in the module
    docstring)."""
    r = torch.baddbmm(v[:, :, None], W, k[:, :, None], beta=-1).squeeze(-1)   # W k - v
    loss = 0.5 * (r * r).sum(-1)
    W = torch.baddbmm(W, r[:, :, None], k[:, None, :], alpha=-eta)            # W - eta r k^T
    z = torch.bmm(W, q[:, :, None]).squeeze(-1)
    return z, W, loss


class TTTOutput(NamedTuple):
    """``y`` ``[B, T, d]``; ``state`` ``W_T`` ``[B, n, n]``; ``recon`` ``l_t`` ``[B, T]``."""

    y: torch.Tensor
    state: torch.Tensor
    recon: torch.Tensor


class BitTTT(nn.Module):
    """Bit-TTT layer ``[B, T, d] -> [B, T, d]`` with a weight-matrix state (module docstring).

    Args:
        d: input/output width.
        d_state: n, the size of the features and of ``W`` (the notes use ``d / 4``).
        eta: inner learning rate, ``0 < eta < 2``.
        quant: BitLinear mode of the down/up projections (``absmean``: ternary; ``float``).
    """

    def __init__(self, d: int, d_state: int, eta: float = 0.5, quant: str = "absmean"):
        super().__init__()
        for name, n in (("d", d), ("d_state", d_state)):
            if int(n) < 1:
                raise ParameterError(f"{name}: must be >= 1, got {n}")
        if not 0 < eta < 2:
            raise ParameterError(f"eta: must lie in (0, 2) (stability of the update), got {eta}")
        self.d, self.n, self.eta = int(d), int(d_state), float(eta)
        self.down = BitLinear(d, 3 * d_state, quant=quant)
        self.up = BitLinear(d_state, d, quant=quant)
        self.W0 = nn.Parameter(torch.zeros(d_state, d_state))

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """``W_0`` expanded to ``[B, n, n]`` (part of the autograd graph: W_0 is learned)."""
        return self.W0.expand(int(batch_size), self.n, self.n)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` ``[B, T, d]`` -> L2-normalised ``k, v, q`` ``[B, T, n]`` each."""
        f = self.down(x).split(self.n, dim=-1)
        return tuple(F.normalize(t, dim=-1) for t in f)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> TTTOutput:
        if x.dim() != 3 or x.shape[-1] != self.d:
            raise ShapeError(f"x: expected [B, T, {self.d}], got {list(x.shape)}")
        B = x.shape[0]
        W = self.initial_state(B).to(x.dtype) if state is None else state
        if W.shape != (B, self.n, self.n):
            raise ShapeError(f"state: expected [{B}, {self.n}, {self.n}], got {list(W.shape)}")
        k, v, q = self.features(x)
        zs, losses = [], []
        for kt, vt, qt in zip(k.unbind(1), v.unbind(1), q.unbind(1)):
            z, W, l = ttt_linear_step(W, kt, vt, qt, self.eta)
            zs.append(z)
            losses.append(l)
        if not zs:
            return TTTOutput(x.new_zeros(B, 0, self.d), W, x.new_zeros(B, 0))
        return TTTOutput(self.up(torch.stack(zs, 1)), W, torch.stack(losses, 1))

    def extra_repr(self) -> str:
        return f"d={self.d}, d_state={self.n}, eta={self.eta}"


class SwiGLU(nn.Module):
    """``W_2 (silu(W_1 x) * W_3 x)``: ``[..., d] -> [..., d]`` via ``hidden`` (BitLinear)."""

    def __init__(self, d: int, hidden: int, quant: str = "absmean"):
        super().__init__()
        self.w1 = BitLinear(d, hidden, quant=quant)
        self.w3 = BitLinear(d, hidden, quant=quant)
        self.w2 = BitLinear(hidden, d, quant=quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class BitTTTBlock(nn.Module):
    """``x + BitTTT(RMSNorm(x))`` (``ffn_hidden=None``), or the Bit-Llama block that adds
    ``x + SwiGLU(RMSNorm(x))`` (``ffn_hidden`` = SwiGLU width).

    ``forward(x [B, T, d], state [B, n, n] | None) -> (x, W_T, recon [B, T])``.
    """

    def __init__(self, d: int, d_state: int, eta: float, quant: str = "absmean",
                 ffn_hidden: int | None = None):
        super().__init__()
        self.norm1 = nn.RMSNorm(d)
        self.ttt = BitTTT(d, d_state, eta, quant)
        self.norm2 = nn.RMSNorm(d) if ffn_hidden else None
        self.ffn = SwiGLU(d, ffn_hidden, quant) if ffn_hidden else None

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        o = self.ttt(self.norm1(x), state)
        x = x + o.y
        if self.ffn is not None:
            x = x + self.ffn(self.norm2(x))
        return x, o.state, o.recon
