"""BrainLM: a recurrent spiking language model built from MicroCircuitBanks and CorticalHubs.

Per token t and block (residual ``x_t`` ``[B, d]``, C circuits of N units, readout size D)::

    a_t  = RMSNorm(x_t)                                   (weight initialised to ``drive``)
    for k in 1..K (K = spike_steps, the input held for the token):
        u    = W_in a_t + W_rec s_{k-1} (+ f_{t-1})       (MicroCircuitBank, ternary BitLinear)
        s_k  = LIF(u)                                    (functional.lif: v, s carried on)
    h_t  = W_out (1/K sum_k s_k)                         [B, C, D]   spike-count readout
           (+ W_m m_t with membrane_readout 'bank', or W_out (rate + gamma * m_t) with 'gain':
            m_t = v_K the membrane at the token's last LIF step, a graded readout)
    g_t  = CorticalHub(h_t; M_t)                         [B, d]      grouped attention across
                                                                     circuits, fast weights M,
                                                                     lateral inhibition
    x_t <- x_t + g_t

The LIF state (``v``, ``s``) and the hub memory ``M`` pass from token to token, so the block is
a recurrent network: :meth:`BrainLM.step` processes one token with a state whose size does not
depend on how many tokens came before (no KV cache), and :meth:`BrainLM.run` over a sequence
gives the same logits as stepping through it. Memory is cleared at the start of each sequence
(``state=None``). With ``hub_feedback`` the hub's feedback ``f_t`` enters the circuits at the next
token (then the token loop also runs the hub; slower to train).

Switches (``BrainLMConfig``), each to its standard counterpart:

- ``neuron: relu | gelu | silu``: the LIF threshold nonlinearity is replaced by the activation, with
  the same leak and subtractive reset: ``v_k = alpha v_{k-1} + u_k - beta r_{k-1}``,
  ``r_k = act(v_k - theta)`` (a leaky rate unit; ``beta = theta``). In the ``mlp`` ffn,
  ``lif`` means a one-step spike ``H(W_1 a - theta)`` with surrogate gradient.
- ``weights: float``: every BitLinear in the blocks and head uses float weights.
- ``mixer: attention``: causal multi-head self-attention over tokens (rotary) on the
  concatenated circuit outputs replaces the hub; generation then keeps a KV cache.
- ``mixer: mean``: ``g_t = W_p (1/C sum_i h_i)`` (BitLinear ``D -> d``, the blocks' quantization)
  replaces the hub: mean pooling over the circuits, no state across tokens (the hub's and
  attention's state fields stay None).
- ``hub_inhibition: kwta | divisive`` (``hub_k``): lateral inhibition across the circuits of
  each hub group on the hub's attention outputs ``h'`` (``CorticalHub(inhibition=, k=)``; the
  hub's batched sequence pass and its per-token step both apply it).
- ``ffn: mlp``: a per-token MLP ``d -> mlp_ratio d -> C D`` replaces the circuits.

Shapes: ``tokens`` ``[B, T]`` -> logits ``[B, T, vocab]``.
"""
from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from neurobit.errors import ShapeError
from neurobit.functional.lif import alpha_spread, lif_rate_step
from neurobit.functional.recurrent_lif_scan import fused_ok, recurrent_lif_scan
from neurobit.functional.surrogate import spike
from neurobit.models.embedding import HierarchicalEmbedding
from neurobit.models.gpt import (GPT, MLP, CausalSelfAttention, KVCache, count_parameters,
                                 quant_of)
from neurobit.models.stepping import StepByRun
from neurobit.models.lm_config import BrainLMConfig, GPTConfig
from neurobit.modules.bitlinear import BitLinear
from neurobit.modules.cortical_hub import CorticalHub, HubState
from neurobit.modules.microcircuit import MicroCircuitState
from neurobit.modules.microcircuit_bank import MicroCircuitBank


_RATE_ACTS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}  # neuron -> rate nonlinearity


def _spike_act(x: torch.Tensor, theta: float, surrogate: str, slope: float) -> torch.Tensor:
    """Stateless spike ``H(x - theta)`` (surrogate gradient) for the spiking MLP variant."""
    return spike(x - theta, surrogate, slope)


class BrainBlockState(NamedTuple):
    """Per-block state carried across tokens (None where the variant has none).

    ``circuits``: LIF ``v``, ``s`` ``[B, C, N]``; ``hub``: fast weights ``M`` ``[B, d_key, d_key]``
    and ``g`` ``[B, d]``; ``kv``: the attention mixer's KV cache (grows); ``feedback``: hub
    feedback for the next token ``[B, C, N]``.
    """

    circuits: MicroCircuitState | None
    hub: HubState | None
    kv: KVCache | None
    feedback: torch.Tensor | None


class BrainBlock(nn.Module):
    """One block: circuits (or MLP) -> hub (attention, mean) -> residual add (module doc)."""

    def __init__(self, cfg: BrainLMConfig):
        super().__init__()
        self.cfg = cfg
        C, N, D, d = cfg.n_circuits, cfg.n_units, cfg.d_circuit, cfg.d_model
        q = quant_of(cfg.weights)
        self.norm = nn.RMSNorm(d)
        if cfg.ffn == "circuits":
            with torch.no_grad():
                self.norm.weight.fill_(cfg.drive)
            alpha = cfg.alpha if cfg.alpha_min is None else alpha_spread(cfg.alpha_min, cfg.alpha, N)
            self.bank = MicroCircuitBank(C, d, N, None, recurrent=True, quant=q, alpha=alpha,
                                         theta=cfg.theta, surrogate=cfg.surrogate,
                                         slope=cfg.slope)
            self.readout = BitLinear(N, D, quant=q, banks=C)
            if cfg.membrane_readout == "bank":
                self.readout_m = BitLinear(N, D, quant=q, banks=C)
            elif cfg.membrane_readout == "gain":
                self.membrane_gain = nn.Parameter(torch.full((C, N), 0.1))
            self.act = _RATE_ACTS.get(cfg.neuron)
        else:
            act = {**_RATE_ACTS,
                   "lif": partial(_spike_act, theta=cfg.theta, surrogate=cfg.surrogate,
                                  slope=cfg.slope)}[cfg.neuron]
            self.mlp = MLP(d, cfg.mlp_ratio * d, C * D, q, act)
        self.feedback = cfg.hub_feedback and cfg.mixer == "hub" and cfg.ffn == "circuits"
        self.fused_scan = True  # False: the per-token module loop (the oracle of the tests)
        if cfg.mixer == "hub":
            self.hub = CorticalHub(C, D, cfg.d_key, d, N if self.feedback else 1,
                                   groups=cfg.hub_groups, lam=cfg.lam, eta=cfg.eta,
                                   clip=cfg.clip, use_fast_weights=cfg.fast_weights,
                                   residual=cfg.hub_residual, memory_read=cfg.memory_read,
                                   quant=q,
                                   inhibition=cfg.hub_inhibition, k=cfg.hub_k)
        elif cfg.mixer == "mean":
            self.pool = BitLinear(D, d, quant=q)
        else:
            self.attn = CausalSelfAttention(C * D, d, cfg.n_heads, q)

    # -- state --------------------------------------------------------------------------------
    def initial_state(self, batch_size: int, dtype=None, device=None) -> BrainBlockState:
        """Cleared state: resting LIF units, empty fast-weight memory, no KV cache."""
        dtype = dtype or self.norm.weight.dtype
        circ = (self.bank.initial_state(batch_size, dtype, device)
                if self.cfg.ffn == "circuits" else None)
        hub = self.hub.initial_state(batch_size, dtype, device) if self.cfg.mixer == "hub" else None
        fb = (torch.zeros(batch_size, self.cfg.n_circuits, self.cfg.n_units, dtype=dtype,
                          device=device) if self.feedback else None)
        return BrainBlockState(circ, hub, None, fb)

    # -- circuits -----------------------------------------------------------------------------
    def _substep(self, u_in, st: MicroCircuitState, q_rec, feedback):
        """One neuron step from input current ``u_in`` ``[B, C, N]``: ``(s or r, state)``."""
        if self.act is None:  # LIF: the MicroCircuit synapse + functional.lif update
            _, s, st = self.bank.step_from_current(u_in, st, feedback, q_rec)
            return s, st
        u = u_in + self.bank.w_rec.apply_ternary(st.lif.s, q_rec)
        if feedback is not None:
            u = u + feedback
        r, lif_state = lif_rate_step(u, st.lif, self.bank.lif.params, self.act)
        return r, MicroCircuitState(lif_state)

    def _token(self, u_t, st, q_rec, feedback):
        """All ``spike_steps`` of one token: mean spikes (rates) ``[B, C, N]`` and the state."""
        acc = None
        for _ in range(self.cfg.spike_steps):
            s, st = self._substep(u_t, st, q_rec, feedback)
            acc = s if acc is None else acc + s
        return acc / self.cfg.spike_steps, st

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, state: BrainBlockState | None = None
                ) -> tuple[torch.Tensor, BrainBlockState]:
        """``x`` ``[B, T, d]`` from ``state`` (None: cleared) -> ``(x + g [B, T, d], state)``."""
        cfg = self.cfg
        B, T, d = x.shape
        if d != cfg.d_model:
            raise ShapeError(f"x: expected [B, T, {cfg.d_model}], got {list(x.shape)}")
        if state is None:
            state = self.initial_state(B, x.dtype, x.device)
        a = self.norm(x)
        circ, hub, kv, fb = state
        if cfg.ffn == "circuits":
            C = cfg.n_circuits
            u_in = self.bank.w_in.forward_shared(a)                         # [B, T, C, N]: one GEMM
            q_rec = self.bank.w_rec.quantized()                               # once per sequence
            q_out = self.readout.quantized()
            if self._fused(u_in):  # all tokens and LIF steps in one numba scan
                out = recurrent_lif_scan(u_in, q_rec.codes, q_rec.scale, circ.lif,
                                         self.bank.lif.params, cfg.spike_steps,
                                         membrane=self._reads_membrane)
                r, m, lif_state = out if self._reads_membrane else (out[0], None, out[1])
                return self._mix(x, self._readout(r, m, q_out),
                                 BrainBlockState(MicroCircuitState(lif_state), hub, kv, fb))
            rates, membranes, gs = [], [], []
            for u_t in u_in.unbind(1):
                r, circ = self._token(u_t, circ, q_rec, fb)
                if self.feedback:  # the hub must run before the next token's circuits
                    out = self.hub.forward_step(self._readout(r, circ.lif.v, q_out), hub)
                    hub, fb = out.state, out.feedback
                    gs.append(out.g)
                rates.append(r)
                membranes.append(circ.lif.v)
            if self.feedback:
                return x + torch.stack(gs, 1), BrainBlockState(circ, hub, kv, fb)
            m = torch.stack(membranes, 1) if self._reads_membrane else None
            h = self._readout(torch.stack(rates, 1), m, q_out)
        else:
            h = self.mlp(a).view(B, T, cfg.n_circuits, cfg.d_circuit)
        return self._mix(x, h, BrainBlockState(circ, hub, kv, fb))

    @property
    def _reads_membrane(self) -> bool:
        return self.cfg.membrane_readout != "none"

    def _readout(self, r, m, q_out):
        """Circuit outputs ``h`` ``[..., C, D]`` from token rates ``r`` and end-of-token
        membranes ``m`` ``[..., C, N]`` (the membrane only with ``membrane_readout``)."""
        mode = self.cfg.membrane_readout
        if mode == "gain":
            return self.readout.apply_ternary(r + self.membrane_gain * m, q_out)
        h = self.readout.apply_ternary(r, q_out)
        return h + self.readout_m(m) if mode == "bank" else h

    def _fused(self, u_in: torch.Tensor) -> bool:
        """Whether the circuits can run as one fused scan (LIF units, no per-token feedback)."""
        return (self.fused_scan and self.act is None and not self.feedback and self.bank.w_rec.bias is None
                and self.bank.w_rec.act_bits is None and fused_ok(u_in, self.bank.lif.params))

    def _mix(self, x, h, state: BrainBlockState) -> tuple[torch.Tensor, BrainBlockState]:
        """Hub (attention, mean) over circuit outputs ``h`` ``[B, T, C, D]``; residual add."""
        B, T = h.shape[:2]
        if self.cfg.mixer == "hub":
            out = self.hub(h.transpose(0, 1), state.hub)
            return x + out.g.transpose(0, 1), state._replace(hub=out.state)
        if self.cfg.mixer == "mean":                                # [B, T, C, D] -> [B, T, d]
            return x + self.pool(h.mean(2)), state
        pos0 = 0 if state.kv is None else state.kv.k.shape[2]
        m, kv = self.attn(h.reshape(B, T, -1), state.kv, pos0)
        return x + m, state._replace(kv=kv)


class BrainLMState(NamedTuple):
    """Generation state: one :class:`BrainBlockState` per block and the next position."""

    blocks: tuple
    pos: int


class BrainLM(StepByRun, nn.Module):
    """Embedding -> ``n_layers`` :class:`BrainBlock` -> RMSNorm -> head (BitLinear).

    ``forward(tokens, word_ids) -> logits [B, T, V]`` (cleared state, for training);
    ``run(tokens, word_ids, state) -> (logits, state)`` continues a state;
    ``step(token [B], word_id [B] | None, state) -> (logits [B, V], state)`` for generation.
    """

    def __init__(self, cfg: BrainLMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = HierarchicalEmbedding(cfg.vocab_size, cfg.n_word_buckets, cfg.max_pos,
                                           cfg.d_model, cfg.position)
        self.blocks = nn.ModuleList(BrainBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model)
        self.head = BitLinear(cfg.d_model, cfg.vocab_size,
                              quant=quant_of(cfg.head_weights or cfg.weights))

    def initial_state(self, batch_size: int, device=None) -> BrainLMState:
        dt = self.head.weight.dtype
        return BrainLMState(tuple(b.initial_state(batch_size, dt, device) for b in self.blocks), 0)

    def run(self, tokens: torch.Tensor, word_ids: torch.Tensor | None = None,
            state: BrainLMState | None = None) -> tuple[torch.Tensor, BrainLMState]:
        """Logits ``[B, T, V]`` for ``tokens`` ``[B, T]`` continuing ``state`` (None: cleared)."""
        if tokens.dim() != 2:
            raise ShapeError(f"tokens: expected [B, T], got {list(tokens.shape)}")
        pos0 = 0 if state is None else state.pos
        x = self.embed(tokens, word_ids, pos0).to(self.head.weight.dtype)
        states = state.blocks if state is not None else (None,) * len(self.blocks)
        new = []
        for blk, st in zip(self.blocks, states):
            x, st = blk(x, st)
            new.append(st)
        return self.head(self.norm(x)), BrainLMState(tuple(new), pos0 + tokens.shape[1])

    def forward(self, tokens: torch.Tensor, word_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.run(tokens, word_ids)[0]



def state_numel(state, *, nbytes: bool = False) -> int:
    """Total number of tensor elements (or bytes, ``nbytes=True``) in a (nested) generation
    state."""
    if isinstance(state, torch.Tensor):
        return state.numel() * (state.element_size() if nbytes else 1)
    if isinstance(state, (tuple, list)):
        return sum(state_numel(s, nbytes=nbytes) for s in state)
    return 0


def build_model(cfg) -> nn.Module:
    """The model a config describes (``kind: brain`` -> BrainLM, ``kind: gpt`` -> GPT, the
    other kinds -> :class:`neurobit.models.variant_lm.VariantLM`)."""
    if cfg.kind == "brain":
        return BrainLM(cfg)
    if cfg.kind == "gpt":
        return GPT(cfg)
    from neurobit.models.variant_lm import VariantLM
    return VariantLM(cfg)


def brain_parameter_count(cfg: BrainLMConfig) -> int:
    """Parameters of ``BrainLM(cfg)`` (built on the CPU: the LIF parameter checks need values)."""
    return count_parameters(BrainLM(cfg))
