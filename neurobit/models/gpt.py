"""GPT baseline: a small nanoGPT-style pre-norm causal Transformer with rotary positions.

Per block (``x`` ``[B, T, d]``)::

    x = x + Attn(RMSNorm(x))        causal multi-head self-attention, rotary q/k
    x = x + W_2 GELU(W_1 RMSNorm(x))

then ``logits = W_head RMSNorm(x)``. Rotary position embeddings (Su et al. 2021) rotate each
query/key pair of channels by angle ``p * base^(-2i/hd)`` at position ``p``; they are computed
on the fly for any position, so generation is not bounded by a position table (16k tokens and
beyond; quality past the training length is not promised). Generation keeps a KV cache: its
size grows linearly with the number of tokens seen (``KVCache``), unlike BrainLM's recurrent
state.

All linear maps are :class:`BitLinear` (``weights: float`` -> ``quant='float'``, the default;
``ternary`` -> absmean), so the baseline can be ternarized too. :func:`gpt_matching` picks a
width/depth whose parameter count matches a target (e.g. a BrainLM's) within a tolerance.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from neurobit.errors import ParameterError, ShapeError
from neurobit.models.embedding import HierarchicalEmbedding
from neurobit.models.stepping import StepByRun
from neurobit.models.lm_config import GPTConfig
from neurobit.modules.bitlinear import BitLinear


def quant_of(weights: str) -> str:
    """Config ``weights`` (``ternary`` | ``float``) -> BitLinear ``quant``."""
    return {"ternary": "absmean", "float": "float"}[weights]


class _KVStore:
    """Preallocated key/value buffers ``[B, H, capacity, hd]`` and how many positions hold data."""

    def __init__(self, like: torch.Tensor, capacity: int):
        B, H, _, hd = like.shape
        self.k = like.new_empty(B, H, capacity, hd)
        self.v = like.new_empty(B, H, capacity, hd)
        self.filled = 0


class KVCache(NamedTuple):
    """Keys and values of all tokens seen, ``[B, H, t, hd]`` each (grows with t).

    Without gradients (generation) the cache lives in a preallocated buffer that doubles when
    full (``store``), so appending a token costs O(1) amortized instead of copying the whole
    cache (``torch.cat``); ``k``, ``v`` are views of its first t positions. A cache whose buffer
    was already extended by another continuation (the state was branched) is copied first,
    so states stay immutable from the caller's side.
    """

    k: torch.Tensor
    v: torch.Tensor
    store: _KVStore | None = None


def append_kv(cache: KVCache | None, k: torch.Tensor, v: torch.Tensor) -> KVCache:
    """``cache`` with ``k``, ``v`` ``[B, H, T, hd]`` appended along positions."""
    if cache is None:
        return KVCache(k, v)
    if torch.is_grad_enabled():  # autograd: plain concatenation
        return KVCache(torch.cat((cache.k, k), dim=2), torch.cat((cache.v, v), dim=2))
    S, T = cache.k.shape[2], k.shape[2]
    st = cache.store
    if st is None or st.filled != S or st.k.shape[2] < S + T:
        new = _KVStore(k, max(64, 2 * (S + T)))
        new.k[:, :, :S], new.v[:, :, :S] = cache.k, cache.v
        st = new
    st.k[:, :, S:S + T], st.v[:, :, S:S + T] = k, v
    st.filled = S + T
    return KVCache(st.k[:, :, :S + T], st.v[:, :, :S + T], st)


def rotary(x: torch.Tensor, pos0: int, base: float) -> torch.Tensor:
    """Rotate channel pairs of ``x`` ``[B, H, T, hd]`` by angle ``(pos0 + t) * base^(-2i/hd)``."""
    T, hd = x.shape[-2], x.shape[-1]
    inv = base ** (-torch.arange(0, hd, 2, dtype=torch.float64, device=x.device) / hd)
    ang = torch.arange(pos0, pos0 + T, dtype=torch.float64, device=x.device)[:, None] * inv
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)               # [T, hd/2]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with rotary q/k and an optional KV cache.

    ``forward(x [B, T, d_in], cache=None, pos0=0) -> (y [B, T, d], cache)``: with a cache the
    new keys/values are appended and the T new queries attend to all cached tokens plus the
    causal part of the new ones (T = 1 in generation).
    """

    def __init__(self, d_in: int, d: int, n_heads: int, quant: str = "float",
                 rope_base: float = 10000.0):
        super().__init__()
        if d % n_heads or (d // n_heads) % 2:
            raise ParameterError(f"n_heads: d={d} must split into {n_heads} heads of even size")
        self.d, self.n_heads, self.hd, self.rope_base = d, n_heads, d // n_heads, rope_base
        self.qkv = BitLinear(d_in, 3 * d, quant=quant)
        self.proj = BitLinear(d, d, quant=quant)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None,
                pos0: int = 0) -> tuple[torch.Tensor, KVCache]:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(self.d, dim=-1)
        q, k, v = (t.view(B, T, self.n_heads, self.hd).transpose(1, 2) for t in (q, k, v))
        q, k = rotary(q, pos0, self.rope_base), rotary(k, pos0, self.rope_base)
        cache = append_kv(cache, k, v)
        k, v = cache.k, cache.v
        S = k.shape[2]
        if S == T:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # T new queries at positions S-T..S-1 over S keys
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, self.d)
        return self.proj(y), cache


class MLP(nn.Module):
    """``W_2 act(W_1 x)``; ``act`` a callable ``[..., hidden] -> [..., hidden]``."""

    def __init__(self, d_in: int, hidden: int, d_out: int, quant: str = "float", act=F.gelu):
        super().__init__()
        self.fc = BitLinear(d_in, hidden, quant=quant)
        self.out = BitLinear(hidden, d_out, quant=quant)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.fc(x)))


class GPTBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        q = quant_of(cfg.weights)
        self.norm1 = nn.RMSNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg.d_model, cfg.d_model, cfg.n_heads, q, cfg.rope_base)
        self.norm2 = nn.RMSNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.mlp_ratio * cfg.d_model, cfg.d_model, q)

    def forward(self, x, cache=None, pos0=0):
        a, cache = self.attn(self.norm1(x), cache, pos0)
        x = x + a
        return x + self.mlp(self.norm2(x)), cache


class GPTState(NamedTuple):
    """Generation state: one :class:`KVCache` per block and the next position."""

    caches: tuple
    pos: int


class GPT(StepByRun, nn.Module):
    """``forward(tokens [B, T], word_ids [B, T] | None) -> logits [B, T, vocab]``;
    ``step(token [B], word_id [B] | None, state) -> (logits [B, vocab], state)``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = HierarchicalEmbedding(cfg.vocab_size, cfg.n_word_buckets, 1, cfg.d_model,
                                           position="none")
        self.blocks = nn.ModuleList(GPTBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model)
        self.head = BitLinear(cfg.d_model, cfg.vocab_size, quant=quant_of(cfg.weights))

    def forward(self, tokens: torch.Tensor, word_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(tokens, word_ids).to(self.head.weight.dtype)
        for blk in self.blocks:
            x, _ = blk(x)
        return self.head(self.norm(x))

    def initial_state(self, batch_size: int, device=None) -> GPTState:
        """Empty KV caches (``t = 0``)."""
        dt = self.head.weight.dtype
        hd = self.cfg.d_model // self.cfg.n_heads
        empty = torch.zeros(batch_size, self.cfg.n_heads, 0, hd, dtype=dt, device=device)
        return GPTState(tuple(KVCache(empty, empty) for _ in self.blocks), 0)

    def run(self, tokens: torch.Tensor, word_ids: torch.Tensor | None = None,
            state: GPTState | None = None) -> tuple[torch.Tensor, GPTState]:
        """Logits ``[B, T, V]`` for ``tokens`` ``[B, T]`` after the tokens cached in ``state``
        (None: none); the caches grow by T positions (prompt processing in one pass)."""
        if tokens.dim() != 2:
            raise ShapeError(f"tokens: expected [B, T], got {list(tokens.shape)}")
        if state is None:
            state = self.initial_state(tokens.shape[0], tokens.device)
        x = self.embed(tokens, word_ids).to(self.head.weight.dtype)
        caches = []
        for blk, c in zip(self.blocks, state.caches):
            x, c = blk(x, c, state.pos)
            caches.append(c)
        return self.head(self.norm(x)), GPTState(tuple(caches), state.pos + tokens.shape[1])



def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gpt_parameter_count(cfg: GPTConfig) -> int:
    """Parameters of ``GPT(cfg)`` (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        return count_parameters(GPT(cfg))


def gpt_matching(n_params_target: int, vocab_size: int, *, n_word_buckets: int = 512,
                 n_heads: int = 4, tol: float = 0.05, max_layers: int = 12,
                 **fields) -> GPTConfig:
    """A :class:`GPTConfig` whose parameter count is within ``tol`` of ``n_params_target``.

    Searches depth 1..max_layers and widths in steps of ``2 * n_heads`` (even head size);
    among the configs within tolerance it prefers an aspect ratio ``d_model / n_layers``
    closest to 32 (nanoGPT-like), else it returns the closest count and raises if it misses.
    Extra ``fields`` are passed to :class:`GPTConfig` (``mlp_ratio``, ``weights``, ...).
    """
    if n_params_target < 1:
        raise ParameterError(f"n_params_target: must be >= 1, got {n_params_target}")
    best, within = None, []
    step = 2 * n_heads
    for L in range(1, max_layers + 1):
        lo, hi = step, 4096
        while lo < hi:  # smallest width reaching the target at this depth
            mid = (lo + hi) // 2 // step * step or step
            cfg = GPTConfig(vocab_size=vocab_size, n_word_buckets=n_word_buckets, d_model=mid,
                            n_layers=L, n_heads=n_heads, **fields)
            if gpt_parameter_count(cfg) < n_params_target:
                lo = mid + step
            else:
                hi = mid
        for d in (lo - step, lo):
            if d < step:
                continue
            cfg = GPTConfig(vocab_size=vocab_size, n_word_buckets=n_word_buckets, d_model=d,
                            n_layers=L, n_heads=n_heads, **fields)
            err = abs(gpt_parameter_count(cfg) - n_params_target) / n_params_target
            if best is None or err < best[0]:
                best = (err, cfg)
            if err <= tol:
                within.append((abs(d / L - 32), err, cfg))
    if within:
        return min(within, key=lambda t: (t[0], t[1]))[2]
    raise ParameterError(f"n_params_target: no GPT within {tol:.0%} of {n_params_target} "
                         f"(closest {best[0]:.1%} off: d_model={best[1].d_model}, "
                         f"n_layers={best[1].n_layers})")
