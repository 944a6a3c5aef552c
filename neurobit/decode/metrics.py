"""Degeneration metrics of a generated continuation (Welleck et al. 2019, "Neural text
generation with unlikelihood training"; Li et al. 2016 for distinct-n).

For a token sequence ``x_0 .. x_{T-1}`` and its multiset of n-grams ``G_n`` (``T - n + 1`` of
them, overlapping)::

    distinct_n = |set(G_n)| / |G_n|                 (1 = no n-gram repeats; 0 if T < n)
    seq_rep_n  = 1 - |set(G_n)| / |G_n|             (Welleck's seq-rep-n; 0 if T < n)
    rep_l      = (1 / |S|) sum_{t in S} 1[x_t in {x_{t-l}, .., x_{t-1}}],  S = {context..T-1}

``rep_l`` is Welleck's rep/l: the share of scored tokens that already occurred among the ``l``
tokens before them; the first ``context`` tokens (e.g. the prompt) are visible but not scored.
Tokens may be a list of ints, a string (characters) or a 1-D tensor.
"""
from __future__ import annotations

import torch

from neurobit.errors import ParameterError, ShapeError


def _seq(tokens) -> list:
    if isinstance(tokens, torch.Tensor):
        if tokens.dim() != 1:
            raise ShapeError(f"tokens: expected a 1-D sequence, got {list(tokens.shape)}")
        return tokens.tolist()
    return list(tokens)


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ParameterError(f"{name}: must be an int >= 1, got {v!r}")
    return v


def ngrams(tokens, n: int) -> list[tuple]:
    """The ``T - n + 1`` overlapping n-grams of ``tokens``, in order."""
    x = _seq(tokens)
    _positive_int("n", n)
    return [tuple(x[i:i + n]) for i in range(len(x) - n + 1)]


def distinct_n(tokens, n: int = 2) -> float:
    """Unique n-grams / all n-grams (0.0 when the sequence is shorter than ``n``)."""
    g = ngrams(tokens, n)
    return len(set(g)) / len(g) if g else 0.0


def seq_rep_n(tokens, n: int = 4) -> float:
    """Welleck's seq-rep-n: ``1 - unique/total`` n-grams (0.0 when shorter than ``n``)."""
    g = ngrams(tokens, n)
    return 1.0 - len(set(g)) / len(g) if g else 0.0


def rep_l(tokens, l: int = 16, context: int = 0) -> float:  # noqa: E741 (Welleck's name)
    """Welleck's rep/l: share of the tokens at ``t >= context`` equal to one of the ``l``
    tokens before them (0.0 when nothing is scored)."""
    x = _seq(tokens)
    _positive_int("l", l)
    if isinstance(context, bool) or not isinstance(context, int) or context < 0:
        raise ParameterError(f"context: must be an int >= 0, got {context!r}")
    scored = range(context, len(x))
    if not scored:
        return 0.0
    hits = sum(1 for t in scored if x[t] in x[max(0, t - l):t])
    return hits / len(scored)
