"""HierarchicalEmbedding: character + word + position embeddings, summed.

For token ``c_t`` (a character id), its word id ``w_t`` and its absolute position ``p_t``::

    e_t = E_char[c_t] + E_word[w_t mod n_word_buckets] + P(p_t)          e_t in R^d

- ``E_word`` gives every character of a word a shared vector (the word ids come from the data
  layer, e.g. hashed words; they are bucketed by ``mod n_word_buckets``). ``n_word_buckets = 0``
  or ``word_ids=None`` leaves the term out.
- ``P``: ``learned`` (a table of ``max_pos`` rows; positions >= max_pos raise),
  ``sinusoidal`` (Vaswani et al. 2017, ``P(p)_{2i} = sin(p / 10000^{2i/d})``,
  ``P(p)_{2i+1} = cos(...)``; defined for every position, so generation may run past the
  training length), or ``none`` (the model gets order elsewhere: BrainLM's recurrence, GPT's
  rotary attention).

Shapes: ``tokens``, ``word_ids`` ``[B, T]`` (long) -> ``[B, T, d]``; ``pos0`` is the position of
the first token (for step-by-step generation).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from neurobit.errors import ParameterError, ShapeError

POSITIONS = ("none", "learned", "sinusoidal")


def sinusoidal_positions(positions: torch.Tensor, d: int) -> torch.Tensor:
    """``[T] -> [T, d]`` sinusoidal table (``d`` even), any non-negative positions."""
    if d % 2:
        raise ParameterError(f"d: sinusoidal positions need an even size, got {d}")
    inv = torch.exp(torch.arange(0, d, 2, dtype=torch.float64) * (-math.log(10000.0) / d))
    ang = positions.to(torch.float64)[:, None] * inv[None, :]
    out = torch.stack((ang.sin(), ang.cos()), dim=-1).reshape(positions.shape[0], d)
    return out


class HierarchicalEmbedding(nn.Module):
    """Sum of character, word-bucket and position embeddings (see module docstring).

    Args:
        vocab_size: number of token ids.
        n_word_buckets: rows of the word table (0: no word term).
        max_pos: rows of the learned position table (ignored otherwise).
        d: embedding size.
        position: ``none`` | ``learned`` | ``sinusoidal``.
    """

    def __init__(self, vocab_size: int, n_word_buckets: int, max_pos: int, d: int,
                 position: str = "none"):
        super().__init__()
        if int(vocab_size) < 1:
            raise ParameterError(f"vocab_size: must be >= 1, got {vocab_size}")
        if int(n_word_buckets) < 0:
            raise ParameterError(f"n_word_buckets: must be >= 0, got {n_word_buckets}")
        if int(d) < 1:
            raise ParameterError(f"d: must be >= 1, got {d}")
        if position not in POSITIONS:
            raise ParameterError(f"position: unknown {position!r}; choose one of {list(POSITIONS)}")
        if position == "sinusoidal" and d % 2:
            raise ParameterError(f"d: sinusoidal positions need an even size, got {d}")
        self.vocab_size, self.n_word_buckets = vocab_size, n_word_buckets
        self.max_pos, self.d = max_pos, d
        self.position = position
        self.char = nn.Embedding(vocab_size, d)
        self.word = nn.Embedding(n_word_buckets, d) if n_word_buckets > 0 else None
        self.pos = nn.Embedding(max_pos, d) if position == "learned" else None
        for emb in (self.char, self.word, self.pos):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02 if emb is not self.char else 1.0)

    def forward(self, tokens: torch.Tensor, word_ids: torch.Tensor | None = None,
                pos0: int = 0) -> torch.Tensor:
        if tokens.dim() != 2:
            raise ShapeError(f"tokens: expected [B, T], got {list(tokens.shape)}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size:
            raise ParameterError(f"tokens: ids must lie in [0, {self.vocab_size}), got "
                                 f"{int(tokens.min())}..{int(tokens.max())}")
        e = self.char(tokens)
        if word_ids is not None and self.word is not None:
            if word_ids.shape != tokens.shape:
                raise ShapeError(f"word_ids: expected {list(tokens.shape)}, "
                                 f"got {list(word_ids.shape)}")
            e = e + self.word(torch.remainder(word_ids, self.n_word_buckets))
        T = tokens.shape[1]
        if self.position == "learned":
            if pos0 + T > self.max_pos:
                raise ParameterError(f"pos0: positions up to {pos0 + T - 1} exceed the learned "
                                     f"table (max_pos={self.max_pos}); use position: sinusoidal")
            e = e + self.pos.weight[pos0:pos0 + T]
        elif self.position == "sinusoidal":
            pos = torch.arange(pos0, pos0 + T, device=tokens.device)
            e = e + sinusoidal_positions(pos, self.d).to(e.dtype)
        return e
