"""CompiledBrainLM: a frozen BrainLM for inference, with a fused per-token generation kernel.

``CompiledBrainLM(model)`` takes a :class:`neurobit.models.brain_lm.BrainLM` whose ternary
layers are frozen (quantized once: codes and scales, as loaded from a compiled file) and
offers the interface generation uses (``cfg``, ``initial_state``, ``run``, ``step``) with the
same :class:`BrainLMState`:

- ``run`` over several tokens (prompt processing) is the reference forward pass with frozen
  weights and no autograd: input projections batched over time into one GEMM per block, the
  LIF scan and recurrence fused (numba), the hub's attention batched over steps;
- one token (generation) runs each block as one numba kernel
  (:func:`neurobit.compile.brain_kernels.brain_block_token`) on float32/64 arrays prepared once:
  no per-token quantization, no torch dispatch inside a block, no autograd bookkeeping.

Supported: the spiking circuits + CorticalHub variant (``neuron: lif``, ``ffn: circuits``,
``mixer: hub``, no hub feedback, ``hub_inhibition: none``, ``membrane_readout`` ``none`` or
``gain``; ``hub_residual`` and ``memory_read`` either way); others raise
:class:`ParameterError` naming the field.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from neurobit.compile.brain_kernels import brain_block_token
from neurobit.errors import ParameterError, ShapeError
from neurobit.functional.fast_weight_scan import dt_scalar
from neurobit.functional.lif import LIFState
from neurobit.models.stepping import StepByRun
from neurobit.models.brain_lm import BrainBlockState, BrainLM, BrainLMState
from neurobit.modules.bitlinear import BitLinear
from neurobit.modules.cortical_hub import HubState
from neurobit.modules.microcircuit import MicroCircuitState


class _BlockArrays(NamedTuple):
    """Frozen arrays of one block in the kernel's layouts (see brain_block_token)."""

    w_norm: np.ndarray
    eps: float
    codes_in: np.ndarray
    sc_in: np.ndarray
    codes_rec_t: np.ndarray
    sc_rec: np.ndarray
    alpha: np.ndarray
    theta: np.ndarray
    beta: np.ndarray
    m_gain: np.ndarray
    codes_out: np.ndarray
    sc_out: np.ndarray
    codes_q: np.ndarray
    sc_q: float
    codes_k: np.ndarray
    sc_k: float
    codes_v: np.ndarray
    sc_v: float
    codes_g: np.ndarray
    sc_g: float
    use_fw: bool
    residual: bool
    mem_read: bool
    lam: float
    eta: float
    clip: float
    score_scale: float
    group_size: int


def check_compilable(model: BrainLM) -> None:
    """Raise naming the config field when ``model`` is a variant the kernel does not cover."""
    cfg = model.cfg
    for field, want in (("neuron", "lif"), ("ffn", "circuits"), ("mixer", "hub"),
                        ("hub_feedback", False), ("hub_inhibition", "none")):
        if getattr(cfg, field) != want:
            raise ParameterError(f"model.{field}: the compiled BrainLM supports {field}="
                                 f"{want!r} only, got {getattr(cfg, field)!r}")
    if cfg.membrane_readout == "bank":
        raise ParameterError("model.membrane_readout: the compiled BrainLM supports 'none' and "
                             "'gain', got 'bank'")
    for i, blk in enumerate(model.blocks):
        if blk.hub.inhibition != "none" or not blk.hub.layout.contiguous:
            raise ParameterError(f"blocks.{i}.hub: the compiled kernel needs equal contiguous "
                                 "groups and no inhibition")


def _np(x: torch.Tensor, dtype) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to(dtype).numpy())


def _frozen(layer):
    q = layer.quantized()
    return q.codes.detach(), q.scale.detach()


def _block_arrays(blk, dtype) -> _BlockArrays:
    C, N = blk.cfg.n_circuits, blk.cfg.n_units
    f = lambda x: dt_scalar(x, dtype)  # noqa: E731 (scalars in the arrays' dtype)
    per = lambda x: _np(torch.as_tensor(x, dtype=dtype).expand(C, N), dtype)
    p = blk.bank.lif.params
    c_in, s_in = _frozen(blk.bank.w_in)
    c_rec, s_rec = _frozen(blk.bank.w_rec)
    c_out, s_out = _frozen(blk.readout)
    hub = blk.hub
    qs = {n: _frozen(getattr(hub, n)) for n in ("w_q", "w_k", "w_v", "w_g")}
    sc = lambda s: f(float(s.reshape(-1)[0]))
    bank_sc = lambda s: _np(s.reshape(-1).expand(C), dtype)
    eps = blk.norm.eps if blk.norm.eps is not None else torch.finfo(dtype).eps
    return _BlockArrays(
        _np(blk.norm.weight, dtype), f(eps), _np(c_in, dtype), bank_sc(s_in),
        _np(c_rec.transpose(1, 2), dtype), bank_sc(s_rec), per(p.alpha), per(p.theta),
        per(p.reset),
        (_np(blk.membrane_gain, dtype) if blk.cfg.membrane_readout == "gain"
         else _np(torch.zeros(0, N), dtype)),
        _np(c_out, dtype), bank_sc(s_out),
        _np(qs["w_q"][0], dtype), sc(qs["w_q"][1]), _np(qs["w_k"][0], dtype), sc(qs["w_k"][1]),
        _np(qs["w_v"][0], dtype), sc(qs["w_v"][1]), _np(qs["w_g"][0], dtype), sc(qs["w_g"][1]),
        bool(hub.use_fast_weights), bool(hub.residual), bool(hub.memory_read),
        f(hub.lam), f(hub.eta), f(hub.clip),
        f(hub.scale if hub.scale is not None else 1.0 / math.sqrt(hub.d_key)),
        int(hub.layout.group_size))


class CompiledBrainLM(StepByRun, torch.nn.Module):
    """A frozen BrainLM with the fused generation kernel; see the module docstring."""

    def __init__(self, model: BrainLM):
        super().__init__()
        check_compilable(model)
        for layer in model.modules():
            if isinstance(layer, BitLinear) and layer._frozen is None:
                layer.freeze()
        model.eval()
        self.ref = model
        self.cfg = model.cfg
        self.dtype = model.head.weight.dtype
        self._blocks = [_block_arrays(b, self.dtype) for b in model.blocks]
        emb = model.embed
        self._char = emb.char.weight.detach().numpy()
        self._word = emb.word.weight.detach().numpy() if emb.word is not None else None
        self._plain_embedding = emb.position == "none"
        self._norm_w = model.norm.weight.detach().numpy()
        self._norm_eps = (model.norm.eps if model.norm.eps is not None
                          else torch.finfo(self.dtype).eps)
        self._head_wt = np.ascontiguousarray(model.head.effective_weight().numpy().T)
        self._head_b = None if model.head.bias is None else model.head.bias.detach().numpy()

    def _embed_token(self, tokens: torch.Tensor, word_ids, pos: int) -> np.ndarray:
        """``[B, d]`` embedding of one token per sequence (numpy; the reference embedding when
        it has positions)."""
        if not self._plain_embedding:
            return self.ref.embed(tokens, word_ids, pos)[:, 0].to(self.dtype).numpy().copy()
        ids = tokens[:, 0].numpy()
        if ids.min() < 0 or ids.max() >= self._char.shape[0]:
            raise ParameterError(f"tokens: ids must lie in [0, {self._char.shape[0]}), got "
                                 f"{int(ids.min())}..{int(ids.max())}")
        x = self._char[ids]
        if word_ids is not None and self._word is not None:
            x = x + self._word[np.remainder(word_ids[:, 0].numpy(), self._word.shape[0])]
        return np.ascontiguousarray(x, dtype=self._char.dtype)

    def _logits(self, x: np.ndarray) -> np.ndarray:
        """Final RMSNorm and head, ``[B, d] -> [B, V]``."""
        r = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + self._norm_eps)
        y = ((x * r.astype(x.dtype)) * self._norm_w) @ self._head_wt
        return y if self._head_b is None else y + self._head_b

    def initial_state(self, batch_size: int, device=None) -> BrainLMState:
        return self.ref.initial_state(batch_size, device)

    @torch.no_grad()
    def run(self, tokens: torch.Tensor, word_ids: torch.Tensor | None = None,
            state: BrainLMState | None = None) -> tuple[torch.Tensor, BrainLMState]:
        """Logits ``[B, T, V]``; T = 1 uses the per-token kernel, longer inputs the batched
        reference pass (both continue ``state``; None: cleared)."""
        if tokens.dim() != 2:
            raise ShapeError(f"tokens: expected [B, T], got {list(tokens.shape)}")
        if tokens.shape[1] != 1:
            return self.ref.run(tokens, word_ids, state)
        if state is None:
            state = self.initial_state(tokens.shape[0])
        xa = self._embed_token(tokens, word_ids, state.pos)
        new = []
        for arr, st in zip(self._blocks, state.blocks):   # copies: states stay immutable
            v = st.circuits.lif.v.numpy().copy()
            s = st.circuits.lif.s.numpy().copy()
            M = st.hub.M.numpy().copy()
            g = np.empty_like(st.hub.g.numpy())
            brain_block_token(xa, arr.w_norm, arr.eps, arr.codes_in, arr.sc_in,
                              arr.codes_rec_t, arr.sc_rec, arr.alpha, arr.theta, arr.beta,
                              self.cfg.spike_steps, v, s, arr.m_gain, arr.codes_out,
                              arr.sc_out, arr.codes_q, arr.sc_q, arr.codes_k, arr.sc_k,
                              arr.codes_v, arr.sc_v, arr.codes_g, arr.sc_g, M,
                              arr.use_fw, arr.residual, arr.mem_read, arr.lam, arr.eta,
                              arr.clip, arr.score_scale,
                              arr.group_size, g)
            t = torch.from_numpy
            new.append(BrainBlockState(MicroCircuitState(LIFState(t(v), t(s))),
                                       HubState(t(M), t(g)), None, None))
        logits = torch.from_numpy(self._logits(xa))[:, None]
        return logits, BrainLMState(tuple(new), state.pos + 1)


    def forward(self, tokens: torch.Tensor, word_ids: torch.Tensor | None = None):
        return self.run(tokens, word_ids)[0]
