"""Logits processors and the sampling pipeline (model-agnostic, pure functions).

Every processor has the signature ``processor(logits, history, **params) -> logits`` with
``logits`` ``[B, V]`` (float) and ``history`` ``[B, t]`` (int64 token ids in ``[0, V)``, ``t``
may be 0). Processors never modify their input; a banned token gets the logit ``-inf``. Bind the
parameters with ``functools.partial`` to get a ``(logits, history) -> logits`` callable.

Equations (row ``b``, token ``v``, ``c_v`` = count of ``v`` in ``history[b]``)::

    temperature:        z'_v = z_v / T                                  (T > 0)
    top_k:              z'_v = z_v if z_v >= kth_largest(z) else -inf    (ties with the k-th
                        value are all kept, as in Hugging Face's TopKLogitsWarper)
    top_p (nucleus):    sort p = softmax(z) descending (stable: lower id first among ties);
                        keep rank r iff sum_{r' < r} p_(r') < p_top    (the top token always)
                        = the smallest prefix whose cumulative probability reaches p_top
    repetition_penalty  (Hugging Face / CTRL, Keskar et al. 2019), for every v with c_v >= 1:
                        z'_v = z_v / r if z_v > 0 else z_v * r
    thresholded_repetition_penalty (the design's form), for every v with c_v > N:
                        z'_v = z_v / f if z_v > 0 else z_v * f
                        (the same sign handling as CTRL: dividing a negative logit by f > 1
                        would raise it and *favour* the repeated token, so negative logits are
                        multiplied instead; f > 1 always pushes the token down)
    no_repeat_ngram(n): z'_v = -inf if history[b][-(n-1):] + [v] already occurs as an n-gram
                        in history[b] (n = 1 bans every token already in history[b])

:class:`LogitsPipeline` applies them in this fixed order (the order of Hugging Face's
``generate``: processors that edit scores, then the warpers that reshape the distribution)::

    repetition_penalty -> thresholded_repetition_penalty -> no_repeat_ngram
      -> temperature -> top_k -> top_p -> sample (or argmax when greedy)

Penalties and bans read only the last ``history_window`` tokens when that is set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Optional

import torch

from neurobit.errors import ParameterError, ShapeError

LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NEG_INF = float("-inf")


# ------------------------------------------------------------------------------- validation

def check_inputs(logits: torch.Tensor, history: torch.Tensor) -> None:
    """Raise :class:`ShapeError` / :class:`ParameterError` unless ``logits`` is a float
    ``[B, V]`` and ``history`` an integer ``[B, t]`` with ids in ``[0, V)``."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        raise ShapeError(f"logits: expected a float tensor [B, V], got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}")
    if (not isinstance(history, torch.Tensor) or history.dim() != 2
            or history.shape[0] != logits.shape[0]):
        raise ShapeError(f"history: expected [B={logits.shape[0]}, t], got "
                         f"{getattr(history, 'shape', type(history).__name__)}")
    if history.is_floating_point() or history.dtype == torch.bool:
        raise ParameterError(f"history: must hold integer token ids, got dtype {history.dtype}")
    if history.numel() and (int(history.min()) < 0 or int(history.max()) >= logits.shape[1]):
        raise ParameterError(f"history: token ids must lie in [0, V={logits.shape[1]}), got "
                             f"[{int(history.min())}, {int(history.max())}]")


def _int_at_least(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ParameterError(f"{name}: must be an int >= {lo}, got {v!r}")
    return v


def _positive(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ParameterError(f"{name}: must be a finite number > 0, got {v!r}")
    return float(v)


def token_counts(history: torch.Tensor, vocab_size: int, dtype=torch.int64) -> torch.Tensor:
    """``[B, V]`` count of each token id in each row of ``history`` ``[B, t]``."""
    counts = torch.zeros(history.shape[0], vocab_size, dtype=dtype, device=history.device)
    return counts.scatter_add_(1, history.long(), torch.ones_like(history, dtype=dtype))


def _ctrl_penalize(logits: torch.Tensor, mask: torch.Tensor, factor: float) -> torch.Tensor:
    """``z / f`` where ``z > 0`` and ``z * f`` elsewhere, on the masked entries only."""
    pen = torch.where(logits > 0, logits / factor, logits * factor)
    return torch.where(mask, pen, logits)


# ------------------------------------------------------------------------------- processors

def temperature(logits: torch.Tensor, history: torch.Tensor, t: float) -> torch.Tensor:
    """``logits / t`` (``t > 0``; ``history`` unused)."""
    _positive("temperature", t)
    return logits / t


def top_k(logits: torch.Tensor, history: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the logits ``>=`` the k-th largest of each row (ties with it all kept), ``-inf``
    elsewhere. ``k >= V`` keeps everything."""
    _int_at_least("top_k", k, 1)
    if k >= logits.shape[-1]:
        return logits.clone()
    kth = logits.topk(k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p(logits: torch.Tensor, history: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest top set with cumulative probability ``>= p`` (the top
    token always; among equal probabilities the lower id ranks first). ``p`` in (0, 1]."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise ParameterError(f"top_p: must lie in (0, 1], got {p!r}")
    probs = torch.softmax(logits.double(), dim=-1)
    sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    mass_before = torch.cumsum(sorted_p, dim=-1) - sorted_p           # exclusive cumsum
    keep_sorted = mass_before < p
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
    return logits.masked_fill(~keep, NEG_INF)


def repetition_penalty(logits: torch.Tensor, history: torch.Tensor,
                       penalty: float) -> torch.Tensor:
    """Hugging Face / CTRL penalty on every token present in the row's history: ``z / r`` for
    ``z > 0``, ``z * r`` otherwise (``r > 0``; ``r = 1`` is the identity)."""
    _positive("repetition_penalty", penalty)
    check_inputs(logits, history)
    seen = token_counts(history, logits.shape[1]) > 0
    return _ctrl_penalize(logits, seen, penalty)


def thresholded_repetition_penalty(logits: torch.Tensor, history: torch.Tensor,
                                   factor: float, threshold: int) -> torch.Tensor:
    """The design's penalty: a token seen more than ``threshold`` times in the row's history
    has ``z / f`` if ``z > 0`` else ``z * f`` (CTRL sign handling, see the module docstring)."""
    _positive("repetition_factor", factor)
    _int_at_least("repetition_threshold", threshold, 0)
    check_inputs(logits, history)
    over = token_counts(history, logits.shape[1]) > threshold
    return _ctrl_penalize(logits, over, factor)


def banned_ngram_tokens(history_row: torch.Tensor, n: int) -> torch.Tensor:
    """Token ids that would complete an n-gram already present in ``history_row`` ``[t]``."""
    t = history_row.shape[0]
    if t < n:                                                   # no n-gram yet
        return history_row.new_empty(0)
    if n == 1:
        return torch.unique(history_row)
    grams = history_row.unfold(0, n, 1)                          # [t - n + 1, n]
    prefix = history_row[t - n + 1:]                             # the last n - 1 tokens
    match = (grams[:, :-1] == prefix).all(dim=1)
    return torch.unique(grams[match, -1])


def no_repeat_ngram(logits: torch.Tensor, history: torch.Tensor, n: int) -> torch.Tensor:
    """``-inf`` for every token that would repeat an n-gram of the row's history (``n >= 1``)."""
    _int_at_least("no_repeat_ngram_size", n, 1)
    check_inputs(logits, history)
    out = logits.clone()
    for b in range(history.shape[0]):
        banned = banned_ngram_tokens(history[b], n)
        if banned.numel():
            out[b, banned] = NEG_INF
    return out


# --------------------------------------------------------------------------------- pipeline

@dataclass(frozen=True)
class SamplingConfig:
    """Decoding parameters (validated on construction; errors name the parameter).

    Attributes:
        temperature: softmax temperature, >= 0; 0 means greedy (argmax).
        do_sample: False forces greedy decoding whatever the temperature.
        top_k: keep the k largest logits (ties kept), None = off; int >= 1.
        top_p: nucleus mass in (0, 1]; None or 1.0 = off.
        repetition_penalty: Hugging Face / CTRL factor r > 0 on seen tokens; 1.0 = off.
        repetition_factor: the design's thresholded factor f > 0; 1.0 = off.
        repetition_threshold: N >= 0: the factor hits tokens seen more than N times.
        no_repeat_ngram_size: n >= 1 bans repeated n-grams; 0 = off.
        history_window: penalties and bans read only the last W >= 1 tokens; None = all.
    """

    temperature: float = 1.0
    do_sample: bool = True
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    repetition_penalty: float = 1.0
    repetition_factor: float = 1.0
    repetition_threshold: int = 3
    no_repeat_ngram_size: int = 0
    history_window: Optional[int] = None

    def __post_init__(self):
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ParameterError(f"temperature: must be a finite number >= 0, got {t!r}")
        if not isinstance(self.do_sample, bool):
            raise ParameterError(f"do_sample: must be a bool, got {self.do_sample!r}")
        if self.top_k is not None:
            _int_at_least("top_k", self.top_k, 1)
        if self.top_p is not None and (isinstance(self.top_p, bool)
                                       or not isinstance(self.top_p, (int, float))
                                       or not 0 < self.top_p <= 1):
            raise ParameterError(f"top_p: must lie in (0, 1], got {self.top_p!r}")
        _positive("repetition_penalty", self.repetition_penalty)
        _positive("repetition_factor", self.repetition_factor)
        _int_at_least("repetition_threshold", self.repetition_threshold, 0)
        _int_at_least("no_repeat_ngram_size", self.no_repeat_ngram_size, 0)
        if self.history_window is not None:
            _int_at_least("history_window", self.history_window, 1)

    @property
    def greedy(self) -> bool:
        """True when decoding takes the argmax (``temperature == 0`` or ``do_sample`` False)."""
        return self.temperature == 0 or not self.do_sample

    def replace(self, **changes) -> "SamplingConfig":
        """A validated copy with ``changes`` applied."""
        return replace(self, **changes)


def conservative(cfg: SamplingConfig) -> SamplingConfig:
    """The retry strategy after a collapse: sampling on (a greedy loop would recur exactly;
    temperature ``cfg.temperature`` if > 0 else 1.0), ``repetition_penalty >= 1.3``,
    ``no_repeat_ngram_size`` 3 unless already set, ``top_p <= 0.9``.

    For a character-level model a trigram ban over a long history forbids common letter
    triples; pass ``history_window`` (e.g. 64) in ``cfg`` or give ``generate`` its own
    ``retry_sampling`` when that matters.
    """
    return cfg.replace(do_sample=True,
                       temperature=cfg.temperature if cfg.temperature > 0 else 1.0,
                       repetition_penalty=max(cfg.repetition_penalty, 1.3),
                       no_repeat_ngram_size=cfg.no_repeat_ngram_size or 3,
                       top_p=min(cfg.top_p if cfg.top_p is not None else 1.0, 0.9))


class LogitsPipeline:
    """The processors of a :class:`SamplingConfig`, in the documented order, and the sampler.

    ``processors(temperature=None)`` lists ``(name, fn)`` with ``fn(logits, history)``; the
    ``temperature`` argument overrides the config's (the MetaController may lower it).
    """

    def __init__(self, cfg: SamplingConfig):
        if not isinstance(cfg, SamplingConfig):
            raise ParameterError(f"sampling: expected a SamplingConfig, got {type(cfg).__name__}")
        self.cfg = cfg

    def processors(self, temperature_override: float | None = None
                   ) -> list[tuple[str, LogitsProcessor]]:
        c = self.cfg
        out: list[tuple[str, LogitsProcessor]] = []
        if c.repetition_penalty != 1.0:
            out.append(("repetition_penalty", partial(repetition_penalty,
                                                      penalty=c.repetition_penalty)))
        if c.repetition_factor != 1.0:
            out.append(("thresholded_repetition_penalty",
                        partial(thresholded_repetition_penalty, factor=c.repetition_factor,
                                threshold=c.repetition_threshold)))
        if c.no_repeat_ngram_size > 0:
            out.append(("no_repeat_ngram", partial(no_repeat_ngram, n=c.no_repeat_ngram_size)))
        if not c.greedy:
            t = c.temperature if temperature_override is None else temperature_override
            if t != 1.0:
                out.append(("temperature", partial(temperature, t=t)))
            if c.top_k is not None:
                out.append(("top_k", partial(top_k, k=c.top_k)))
            if c.top_p is not None and c.top_p < 1.0:
                out.append(("top_p", partial(top_p, p=c.top_p)))
        return out

    def process(self, logits: torch.Tensor, history: torch.Tensor,
                temperature_override: float | None = None) -> torch.Tensor:
        """Processed logits ``[B, V]`` (a new tensor). Rows that every processor together left
        without a finite logit fall back to the raw logits (a ban never leaves nothing)."""
        check_inputs(logits, history)
        if bool(torch.isnan(logits).any()) or bool((logits == float("inf")).any()):
            raise ParameterError("logits: must not contain NaN or +inf")
        if not bool(torch.isfinite(logits).any(dim=-1).all()):
            raise ParameterError("logits: every row needs at least one finite value")
        if temperature_override is not None:
            _positive("temperature", temperature_override)
        w = self.cfg.history_window
        hist = history[:, -w:] if w is not None and history.shape[1] > w else history
        out = logits
        for _, fn in self.processors(temperature_override):
            out = fn(out, hist)
        empty = ~torch.isfinite(out).any(dim=-1, keepdim=True)
        if bool(empty.any()):
            out = torch.where(empty, logits, out)
        return out if out is not logits else logits.clone()

    def sample(self, logits: torch.Tensor, history: torch.Tensor,
               generator: torch.Generator | None = None,
               temperature_override: float | None = None) -> torch.Tensor:
        """Next token ids ``[B]``: argmax of the processed logits when greedy, else one draw
        from ``softmax(processed)`` with ``generator`` (an explicit seed: same seed, same ids)."""
        z = self.process(logits, history, temperature_override)
        if self.cfg.greedy:
            return z.argmax(dim=-1)
        probs = torch.softmax(z.double(), dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
