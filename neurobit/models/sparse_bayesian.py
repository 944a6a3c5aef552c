"""Sparse Bayesian Layers (SBL) and the blocks built from them: MoIE FFN, DynSIHA attention.

**Sparse Bayesian Layer** (``d_in -> d_out``). Parameters: the posterior means ``mu``
``[d_out, d_in]`` (the weights), the raw posterior spreads ``sigma`` ``[d_out, d_in]`` (std
``s = softplus(sigma)``) and a gate threshold per output ``g`` ``[d_out]``. For ``x``
``[..., d_in]``::

    K      = mu * softplus(sigma)                          keys          [d_out, d_in]
    scores = (x @ K^T) / sqrt(d_in)                        [..., d_out]
    gate   = ReLU(scores - g)                              [..., d_out]  (>= 0, sparse)
    y      = gate * (x @ mu^T)                             [..., d_out]

Every output unit is an "expert" that fires only where its score clears its threshold; the
computation is dense (two GEMMs and an elementwise product), as the design notes conclude.
The *activation rate* is the fraction of gate entries > 0 (:func:`activation_rate`).

**Gating outside checkpointing.** :meth:`SparseBayesianLinear.forward` computes the gate in the
plain autograd graph and passes it into the checkpointed part (``gate * linear(x, mu)``) as an
input, so a recomputation in the backward pass (``torch.utils.checkpoint``, possibly in
bfloat16 autocast) cannot produce a different gate than the forward pass used.

**MoIE FFN**: two SBLs, ``y = SBL_2(rmsnorm(SBL_1(x)))`` (``d -> hidden -> d``); the
parameter-free RMS normalisation between them keeps the second layer's scores at the scale of
the first (an SBL output is quadratic in its input).

**DynSIHA attention**: ``SBL_qkv`` (``d -> 3d``) gives Q, K, V; causal multi-head attention with
rotary q/k (:func:`neurobit.models.gpt.rotary`) and a :class:`neurobit.models.gpt.KVCache`;
``SBL_out`` (``d -> d``) maps the heads back::

    [Q, K, V] = SBL_qkv(x)                      [B, T, 3d] -> heads [B, H, T, d/H] each
    Q, K     <- rotary(rmsnorm_head(Q)), rotary(rmsnorm_head(K))
    A         = softmax(Q K^T / sqrt(d/H) + causal mask) V
    y         = SBL_out(rmsnorm(A))

The parameter-free RMS normalisations (per head for Q, K; over d before ``SBL_out``) keep the
attention logits and the output SBL's scores at unit scale: an SBL output is quadratic in its
input and small at initialisation, which would otherwise leave the attention uniform.

**Losses** (added to the main loss ``L`` by the training step, with weights from the config):

- surprise gate loss (:func:`surprise_gate_loss`): the surprise of an SBL output ``y`` at token
  ``t`` is ``s_t = || dL_sum / dy_t ||_2`` with ``L_sum = N * L`` (the summed loss over the N
  tokens the mean ``L`` averages, so ``s`` does not shrink with the batch size). The loss is
  ``mean_t s_t^2`` averaged over the SBLs, built with ``create_graph=True`` so that its own
  gradient (a Hessian-vector product) moves ``mu``, ``sigma`` and ``g`` towards gates under which
  the main loss is less surprised (flatter in the SBL outputs). The double backward needs
  attention without torch's CPU flash kernel (it has no second derivative):
  :class:`neurobit.models.variant_lm.VariantLM` selects ``SDPBackend.MATH`` when the loss is on.
- KL against a dynamic prior (:func:`kl_dynamic_prior`): posterior ``q(w) = N(mu, s^2)`` per
  weight; prior ``N(0, s_p^2)`` with ``s_p^2 = mean(mu^2 + s^2)`` over the layer, recomputed every
  call and detached (empirical Bayes: the zero-mean Gaussian prior that maximises the evidence
  bound for the current posterior). Chosen because it needs no hand-set prior scale and no
  extra state to checkpoint, follows the layer as it trains, and in closed form::

      KL = mean_ij [ log(s_p / s_ij) + (s_ij^2 + mu_ij^2) / (2 s_p^2) - 1/2 ]

  which pulls every ``s_ij`` towards the layer's scale and shrinks ``mu`` relative to it.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint as _checkpoint

from neurobit.errors import ParameterError, ShapeError
from neurobit.models.gpt import KVCache, append_kv, rotary

class SBLOutput(NamedTuple):
    """``y`` ``[..., d_out]`` the layer output; ``gate`` ``[..., d_out]`` the gate weights
    (>= 0)."""

    y: torch.Tensor
    gate: torch.Tensor


def activation_rate(gate: torch.Tensor) -> torch.Tensor:
    """Fraction of gate entries ``> 0`` (a 0-d tensor in [0, 1], no gradient)."""
    return (gate.detach() > 0).float().mean()


def _gated_value(x: torch.Tensor, mu: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``gate * (x @ mu^T)``: the part that may run under gradient checkpointing."""
    return gate * F.linear(x, mu)


class SparseBayesianLinear(nn.Module):
    """Sparse Bayesian Layer ``d_in -> d_out`` (equations in the module docstring).

    Args:
        d_in, d_out: sizes (>= 1).
        sigma_init: initial posterior std ``softplus(sigma)`` (> 0); 1 by default.
        g_init: initial gate threshold (0: about half the gates open at initialisation).
    """

    def __init__(self, d_in: int, d_out: int, *, sigma_init: float = 1.0, g_init: float = 0.0):
        super().__init__()
        for name, n in (("d_in", d_in), ("d_out", d_out)):
            if int(n) < 1:
                raise ParameterError(f"{name}: must be >= 1, got {n}")
        if not sigma_init > 0:
            raise ParameterError(f"sigma_init: must be > 0, got {sigma_init}")
        self.d_in, self.d_out = int(d_in), int(d_out)
        self.mu = nn.Parameter(torch.empty(d_out, d_in))
        raw = math.log(math.expm1(sigma_init))  # softplus(raw) == sigma_init
        self.sigma = nn.Parameter(torch.full((d_out, d_in), raw))
        self.g = nn.Parameter(torch.full((d_out,), float(g_init)))
        bound = 1.0 / math.sqrt(d_in)
        nn.init.uniform_(self.mu, -bound, bound)

    def std(self) -> torch.Tensor:
        """Posterior standard deviations ``softplus(sigma)`` ``[d_out, d_in]``."""
        return F.softplus(self.sigma)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """``ReLU(x @ (mu * softplus(sigma))^T / sqrt(d_in) - g)`` ``[..., d_out]``."""
        if x.shape[-1] != self.d_in:
            raise ShapeError(f"x: last axis must be d_in={self.d_in}, got {list(x.shape)}")
        keys = self.mu * self.std()
        return F.relu(F.linear(x, keys) / math.sqrt(self.d_in) - self.g)

    def forward(self, x: torch.Tensor, checkpoint: bool = False) -> SBLOutput:
        """``x`` ``[..., d_in]`` -> :class:`SBLOutput`; ``checkpoint`` recomputes only
        ``gate * linear(x, mu)`` in the backward pass, never the gate."""
        gate = self.gate(x)
        if checkpoint and torch.is_grad_enabled():
            y = _checkpoint(_gated_value, x, self.mu, gate, use_reentrant=False)
        else:
            y = _gated_value(x, self.mu, gate)
        return SBLOutput(y, gate)

    def extra_repr(self) -> str:
        return f"{self.d_in} -> {self.d_out}"


class MoIE(nn.Module):
    """MoIE FFN ``y = SBL_2(rmsnorm(SBL_1(x)))``: ``[..., d] -> [..., d]`` via ``hidden`` units.

    ``forward(x, checkpoint=False) -> (y, (SBLOutput_1, SBLOutput_2))``.
    """

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.sbl1 = SparseBayesianLinear(d, hidden)
        self.sbl2 = SparseBayesianLinear(hidden, d)

    def forward(self, x: torch.Tensor, checkpoint: bool = False):
        o1 = self.sbl1(x, checkpoint)
        o2 = self.sbl2(F.rms_norm(o1.y, (o1.y.shape[-1],)), checkpoint)
        return o2.y, (o1, o2)


def causal_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of T new queries ``[B, H, T, hd]`` over S >= T keys/values
    ``[B, H, S, hd]`` whose last T positions are the queries' own (a KV cache before them)."""
    T, S = q.shape[2], k.shape[2]
    if S == T:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class DynSIHA(nn.Module):
    """DynSIHA attention: Q, K, V from one SBL, causal rotary attention, output SBL.

    ``forward(x [B, T, d], cache=None, pos0=0, checkpoint=False)
    -> (y [B, T, d], cache, (SBLOutput_qkv, SBLOutput_out))``; with a cache the new keys and
    values are appended and the T queries (at positions ``pos0..pos0+T-1``) attend to the
    cached tokens and causally to each other.
    """

    def __init__(self, d: int, n_heads: int, rope_base: float = 10000.0):
        super().__init__()
        if d % n_heads or (d // n_heads) % 2:
            raise ParameterError(f"n_heads: d={d} must split into {n_heads} heads of even size")
        self.d, self.n_heads, self.hd, self.rope_base = d, n_heads, d // n_heads, rope_base
        self.qkv = SparseBayesianLinear(d, 3 * d)
        self.out = SparseBayesianLinear(d, d)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, pos0: int = 0,
                checkpoint: bool = False):
        if x.dim() != 3 or x.shape[-1] != self.d:
            raise ShapeError(f"x: expected [B, T, {self.d}], got {list(x.shape)}")
        B, T, _ = x.shape
        o_qkv = self.qkv(x, checkpoint)
        q, k, v = (t.view(B, T, self.n_heads, self.hd).transpose(1, 2)
                   for t in o_qkv.y.split(self.d, dim=-1))
        q, k = (rotary(F.rms_norm(t, (self.hd,)), pos0, self.rope_base) for t in (q, k))
        cache = append_kv(cache, k, v)
        y = causal_attend(q, cache.k, cache.v).transpose(1, 2).reshape(B, T, self.d)
        o_out = self.out(F.rms_norm(y, (self.d,)), checkpoint)
        return o_out.y, cache, (o_qkv, o_out)


def sbl_layers(module: nn.Module) -> list[SparseBayesianLinear]:
    """All :class:`SparseBayesianLinear` layers inside ``module``."""
    return [m for m in module.modules() if isinstance(m, SparseBayesianLinear)]


def kl_dynamic_prior(layer: SparseBayesianLinear) -> torch.Tensor:
    """KL(q || p) per weight, averaged, against the empirical-Bayes prior
    ``N(0, s_p^2)``, ``s_p^2 = mean(mu^2 + s^2)`` (detached); see the module docstring."""
    s = layer.std()
    mu = layer.mu
    sp2 = (mu.detach() ** 2 + s.detach() ** 2).mean()
    kl = 0.5 * torch.log(sp2) - torch.log(s) + (s ** 2 + mu ** 2) / (2 * sp2) - 0.5
    return kl.mean()


def surprise(main_loss: torch.Tensor, outputs: list[torch.Tensor], n_tokens: int,
             create_graph: bool = True) -> list[torch.Tensor]:
    """Per-token surprise ``|| d(n_tokens * main_loss) / dy_t ||_2`` of each SBL output ``y``
    ``[..., T, d]`` -> ``[..., T]`` (one tensor per output)."""
    if not outputs:
        return []
    if int(n_tokens) < 1:
        raise ParameterError(f"n_tokens: must be >= 1, got {n_tokens}")
    grads = torch.autograd.grad(main_loss * n_tokens, outputs, create_graph=create_graph,
                                retain_graph=True, allow_unused=True)
    return [torch.zeros(y.shape[:-1], dtype=y.dtype, device=y.device) if g is None
            else g.norm(dim=-1) for g, y in zip(grads, outputs)]


def surprise_gate_loss(main_loss: torch.Tensor, outputs: list[torch.Tensor],
                       n_tokens: int) -> torch.Tensor:
    """``mean over outputs of mean_t s_t^2`` (differentiable: built with ``create_graph``).

    Args:
        main_loss: the scalar main loss ``L`` (a mean over ``n_tokens`` tokens).
        outputs: SBL outputs ``y`` that ``main_loss`` depends on (``SBLOutput.y``).
        n_tokens: the number of tokens ``L`` averages over.
    """
    if main_loss.dim() != 0:
        raise ShapeError(f"main_loss: expected a scalar, got {list(main_loss.shape)}")
    s = surprise(main_loss, outputs, n_tokens, create_graph=True)
    if not s:
        return main_loss.new_zeros(())
    return torch.stack([(t ** 2).mean() for t in s]).mean()
