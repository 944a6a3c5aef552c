"""VariantLM: the other seed designs as language models with the GPT baseline's interface.

``embedding -> n_layers blocks -> RMSNorm -> head``, the block chosen by the config ``kind``
(:mod:`neurobit.models.variant_config`)::

    moie, dynsiha:      x = x + Attn(RMSNorm(x));  x = x + FFN(RMSNorm(x))
                        (Attn: rotary BitLinear attention | DynSIHA; FFN: MoIE | MLP)
    bit_ttt:            x = x + BitTTT(RMSNorm(x))
    bit_llama:          x = x + BitTTT(RMSNorm(x));  x = x + SwiGLU(RMSNorm(x))

then ``logits = W_head RMSNorm(x)``. The embedding is
:class:`neurobit.models.embedding.HierarchicalEmbedding` without absolute positions (rotary
attention or the TTT recurrence carries order). Generation state per block: a
:class:`neurobit.models.gpt.KVCache` (attention; grows with t) or the TTT matrix ``W``
``[B, n, n]`` (constant size).

Interface (as :class:`neurobit.models.gpt.GPT`): ``forward(tokens [B, T], word_ids=None) ->
logits [B, T, V]``; ``initial_state(B)``; ``run(tokens, word_ids, state) -> (logits, state)``;
``step(token [B], word_id, state) -> (logits [B, V], state)``. In addition
``forward_aux`` returns the SBL outputs/gates and TTT reconstruction losses, ``regularizer``
the SBL losses (surprise gate loss, KL to the dynamic prior) weighted by the config, and
``activity`` the mean SBL activation rate.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from neurobit.errors import ParameterError, ShapeError
from neurobit.models.bit_ttt import BitTTTBlock
from neurobit.models.embedding import HierarchicalEmbedding
from neurobit.models.gpt import MLP, CausalSelfAttention, KVCache, quant_of
from neurobit.models.stepping import StepByRun
from neurobit.models.sparse_bayesian import (DynSIHA, MoIE, SBLOutput, activation_rate,
                                             kl_dynamic_prior, sbl_layers, surprise_gate_loss)
from neurobit.models.variant_config import (BitLlamaConfig, BitTTTConfig, DynSIHAConfig,
                                            MoIEConfig, VariantConfig)
from neurobit.modules.bitlinear import BitLinear


class SBLBlock(nn.Module):
    """Pre-norm attention + FFN block of the ``moie`` / ``dynsiha`` models.

    ``forward(x [B, T, d], cache, pos0) -> (x, cache, SBL outputs)``.
    """

    def __init__(self, cfg: MoIEConfig | DynSIHAConfig):
        super().__init__()
        d, q = cfg.d_model, quant_of(cfg.weights)
        self.checkpoint = cfg.checkpoint
        self.norm1 = nn.RMSNorm(d)
        self.dynsiha = cfg.kind == "dynsiha"
        self.attn = (DynSIHA(d, cfg.n_heads, cfg.rope_base) if self.dynsiha
                     else CausalSelfAttention(d, d, cfg.n_heads, q, cfg.rope_base))
        self.norm2 = nn.RMSNorm(d)
        self.moie = cfg.kind == "moie" or cfg.ffn == "moie"
        self.ffn = (MoIE(d, cfg.moie_ratio * d) if self.moie
                    else MLP(d, cfg.mlp_ratio * d, d, q))

    def forward(self, x, cache=None, pos0=0):
        aux: tuple[SBLOutput, ...] = ()
        h = self.norm1(x)
        if self.dynsiha:
            a, cache, aux = self.attn(h, cache, pos0, self.checkpoint)
        else:
            a, cache = self.attn(h, cache, pos0)
        x = x + a
        h = self.norm2(x)
        if self.moie:
            f, more = self.ffn(h, self.checkpoint)
            aux = aux + more
        else:
            f = self.ffn(h)
        return x + f, cache, aux


class VariantState(NamedTuple):
    """Generation state: one KVCache or TTT matrix per block, and the next position."""

    states: tuple
    pos: int


class VariantOutput(NamedTuple):
    """``logits`` ``[B, T, V]``; ``sbl`` every SBL's output and gate (model order);
    ``recon`` each TTT layer's reconstruction loss ``[B, T]``; ``state`` after the tokens."""

    logits: torch.Tensor
    sbl: tuple
    recon: tuple
    state: VariantState


def _is_ttt(cfg) -> bool:
    return cfg.kind in ("bit_ttt", "bit_llama")


class VariantLM(StepByRun, nn.Module):
    """A language model whose blocks are one of the variant designs (module docstring)."""

    def __init__(self, cfg: VariantConfig):
        super().__init__()
        if not isinstance(cfg, (MoIEConfig, DynSIHAConfig, BitTTTConfig, BitLlamaConfig)):
            raise ParameterError(f"cfg: expected a variant config (moie, dynsiha, bit_ttt, "
                                 f"bit_llama), got {type(cfg).__name__}")
        self.cfg = cfg
        d = cfg.d_model
        self.embed = HierarchicalEmbedding(cfg.vocab_size, cfg.n_word_buckets, 1, d,
                                           position="none")
        if _is_ttt(cfg):
            q = quant_of(cfg.weights)
            hidden = cfg.mlp_ratio * d if cfg.kind == "bit_llama" else None
            self.blocks = nn.ModuleList(BitTTTBlock(d, cfg.d_state, cfg.ttt_lr, q, hidden)
                                        for _ in range(cfg.n_layers))
        else:
            self.blocks = nn.ModuleList(SBLBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(d)
        self.head = BitLinear(d, cfg.vocab_size, quant=quant_of(cfg.weights))

    # ----------------------------------------------------------------- state
    def initial_state(self, batch_size: int, device=None) -> VariantState:
        """Empty KV caches (attention) or ``W_0`` (TTT) per block, position 0."""
        dt = self.head.weight.dtype
        if _is_ttt(self.cfg):
            states = tuple(b.ttt.initial_state(batch_size).to(device=device, dtype=dt)
                           for b in self.blocks)
        else:
            hd = self.cfg.d_model // self.cfg.n_heads
            empty = torch.zeros(batch_size, self.cfg.n_heads, 0, hd, dtype=dt, device=device)
            states = tuple(KVCache(empty, empty) for _ in self.blocks)
        return VariantState(states, 0)

    # --------------------------------------------------------------- forward
    def forward_aux(self, tokens: torch.Tensor, word_ids: torch.Tensor | None = None,
                    state: VariantState | None = None) -> VariantOutput:
        """Logits and the auxiliary outputs for ``tokens`` ``[B, T]`` after ``state``."""
        if tokens.dim() != 2:
            raise ShapeError(f"tokens: expected [B, T], got {list(tokens.shape)}")
        pos0 = 0 if state is None else state.pos
        x = self.embed(tokens, word_ids).to(self.head.weight.dtype)
        # the surprise gate loss differentiates a gradient: CPU flash attention has no double
        # backward, the math kernel (plain ops) has
        double = (not _is_ttt(self.cfg) and self.cfg.gate_loss_weight > 0
                  and torch.is_grad_enabled())
        with sdpa_kernel(SDPBackend.MATH) if double else contextlib.nullcontext():
            x, sbl, recon, new = self._blocks(x, state, pos0)
        logits = self.head(self.norm(x))
        return VariantOutput(logits, tuple(sbl), tuple(recon),
                             VariantState(tuple(new), pos0 + tokens.shape[1]))

    def _blocks(self, x, state, pos0):
        """Run the blocks: ``(x, SBL outputs, TTT losses, new states)``."""
        sbl, recon, new = [], [], []
        for i, blk in enumerate(self.blocks):
            s = None if state is None else state.states[i]
            if _is_ttt(self.cfg):
                x, s, r = blk(x, s)
                recon.append(r)
            else:
                x, s, aux = blk(x, s, pos0)
                sbl.extend(aux)
            new.append(s)
        return x, sbl, recon, new

    def forward(self, tokens: torch.Tensor, word_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_aux(tokens, word_ids).logits

    def run(self, tokens: torch.Tensor, word_ids: torch.Tensor | None = None,
            state: VariantState | None = None) -> tuple[torch.Tensor, VariantState]:
        """Logits ``[B, T, V]`` for ``tokens`` after those already in ``state`` (None: none)."""
        if tokens.dim() != 2:
            raise ShapeError(f"tokens: expected [B, T], got {list(tokens.shape)}")
        if state is None:
            state = self.initial_state(tokens.shape[0], tokens.device)
        out = self.forward_aux(tokens, word_ids, state)
        return out.logits, out.state


    # ------------------------------------------------------- losses, stats
    def regularizer(self, main_loss: torch.Tensor, out: VariantOutput) -> torch.Tensor:
        """``gate_loss_weight * surprise_gate_loss + kl_weight * mean KL`` of the SBLs
        (0 for the TTT models). ``main_loss``: the mean cross-entropy over the tokens of
        ``out.logits`` (its graph must still be alive)."""
        zero = main_loss.new_zeros(())
        if _is_ttt(self.cfg):
            return zero
        reg = zero
        if self.cfg.gate_loss_weight > 0:
            n = out.logits.shape[0] * out.logits.shape[1]
            reg = reg + self.cfg.gate_loss_weight * surprise_gate_loss(
                main_loss, [o.y for o in out.sbl], n)
        if self.cfg.kl_weight > 0:
            kl = torch.stack([kl_dynamic_prior(m) for m in sbl_layers(self)]).mean()
            reg = reg + self.cfg.kl_weight * kl
        return reg

    @staticmethod
    def activity(out: VariantOutput) -> float | None:
        """Mean SBL activation rate (fraction of gate weights > 0) over all SBLs, or None."""
        if not out.sbl:
            return None
        return float(torch.stack([activation_rate(o.gate) for o in out.sbl]).mean())


def variant_parameter_count(cfg: VariantConfig) -> int:
    """Parameters of ``VariantLM(cfg)`` (built on the meta device)."""
    with torch.device("meta"):
        return sum(p.numel() for p in VariantLM(cfg).parameters())
