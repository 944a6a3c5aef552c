"""Model-agnostic generation loop with collapse detection, one bounded retry and ACC-driven
reflection.

``step_fn(tokens_so_far, state) -> (logits, state)``: ``tokens_so_far`` ``[1, t]`` int64 (the
prompt and the tokens generated so far), ``logits`` ``[1, V]`` for the next token, ``state``
opaque (``None`` on the first call of an attempt; whatever the model returned afterwards).

Per generated token::

    logits, state' = step_fn(x[:t], state)
    if meta:  reflection passes: step_fn(x[:t], state) again (same prefix, same input state),
              as long as MetaController.decide(acc_fn(logits)) asks, at most
              meta.max_reflection_steps times (run_with_reflection; the last pass is used);
              temperature = min(sampling.temperature, decision.temperature) when sampling
    x_t = LogitsPipeline(cfg).sample(logits, x[:t], generator(seed + attempt))
    event = detector.check(x[t0:t+1])       (the continuation only, never the prompt)
    stop on event, on eos_token_id, or after max_new_tokens

Attempts (``for attempt in range(2)``: at most two, by construction):

- attempt 0 uses ``sampling`` and ``seed``; if it ends without a collapse its tokens are returned.
- after a collapse the event is recorded and attempt 1 restarts from the prompt with
  ``seed + 1`` and ``retry_sampling`` (default :func:`conservative`: sampling on, repetition
  penalty >= 1.3, no-repeat-trigrams, top-p <= 0.9).
- if attempt 1 collapses too, the longer of the two truncated continuations is returned (ties:
  attempt 0) with ``cautious=True`` (safe stop).

The answer is never vetoed: a collapsed attempt is returned truncated at the event's
``position`` (the text before the repetition; one copy of a repeated unit is kept).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional

import torch

from neurobit.decode.collapse import CollapseDetector, CollapseEvent
from neurobit.decode.processors import LogitsPipeline, SamplingConfig, conservative
from neurobit.errors import ParameterError, ShapeError
from neurobit.functional.monitoring import normalized_entropy
from neurobit.modules.meta_controller import MetaControllerConfig, run_with_reflection

StepFn = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
AccFn = Callable[[torch.Tensor], Mapping[str, Any]]
MAX_ATTEMPTS = 2


class GenerationResult(NamedTuple):
    """Outcome of :func:`generate`.

    Attributes:
        tokens: ``[n]`` int64 continuation of the returned attempt (prompt excluded; truncated
            at the collapse position when that attempt collapsed).
        events: the collapse of each collapsed attempt, in order (``events[i]`` is attempt i's).
        retries: 0 or 1.
        cautious: True when both attempts collapsed (safe stop).
        reflections: reflection passes run over all attempts.
        stopped_reason: how the returned attempt ended: ``max_new_tokens`` | ``eos`` |
            ``collapse``.
        attempt: index of the returned attempt (0 or 1).
        max_reflections_per_step: the most reflection passes spent on one token.
        step_calls: calls of ``step_fn`` over all attempts (tokens sampled + reflections).
        meta_cautious_steps: tokens for which the MetaController's decision was cautious.
    """

    tokens: torch.Tensor
    events: tuple[CollapseEvent, ...]
    retries: int
    cautious: bool
    reflections: int
    stopped_reason: str
    attempt: int = 0
    max_reflections_per_step: int = 0
    step_calls: int = 0
    meta_cautious_steps: int = 0


class _Attempt(NamedTuple):
    tokens: list
    event: Optional[CollapseEvent]
    stopped_reason: str
    reflections: int
    max_reflections: int
    step_calls: int
    cautious_steps: int


def uncertainty_signals(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """The default ``acc_fn``: ``{"uncertainty": H(softmax(logits)) / log V}`` per row."""
    return {"uncertainty": normalized_entropy(logits.detach())}


def _call_step(step_fn: StepFn, seq: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
    out = step_fn(seq, state)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ShapeError("step_fn: must return (logits [1, V], state)")
    logits, new_state = out
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != 1:
        raise ShapeError(f"step_fn: expected logits [1, V], got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}")
    return logits.detach(), new_state


def _run_attempt(step_fn: StepFn, prompt: torch.Tensor, max_new_tokens: int,
                 cfg: SamplingConfig, detector: CollapseDetector | None,
                 meta: MetaControllerConfig | None, acc_fn: AccFn | None, seed: int,
                 eos_token_id: int | None) -> _Attempt:
    gen = torch.Generator().manual_seed(int(seed))
    pipe = LogitsPipeline(cfg)
    t0 = prompt.shape[0]
    buf = torch.empty(1, t0 + max_new_tokens, dtype=torch.long)
    buf[0, :t0] = prompt
    out: list[int] = []
    state = None
    refl = max_refl = calls = cautious_steps = 0
    for i in range(max_new_tokens):
        seq = buf[:, :t0 + i]
        t_override = None
        if meta is None:
            logits, state = _call_step(step_fn, seq, state)
            calls += 1
        else:
            state_in = state
            res = run_with_reflection(lambda _i, _prev, _d: _call_step(step_fn, seq, state_in),
                                      lambda ans: acc_fn(ans[0]), meta)
            (logits, state), n_refl = res.answer, res.passes - 1
            calls += res.passes
            refl += n_refl
            max_refl = max(max_refl, n_refl)
            decision = res.decisions[-1]
            cautious_steps += int(decision.cautious)
            if not cfg.greedy:
                t_override = min(cfg.temperature, decision.temperature)
        tok = int(pipe.sample(logits, seq, gen, t_override)[0])
        buf[0, t0 + i] = tok
        out.append(tok)
        if eos_token_id is not None and tok == eos_token_id:
            return _Attempt(out, None, "eos", refl, max_refl, calls, cautious_steps)
        if detector is not None:
            event = detector.check(out)
            if event is not None:
                return _Attempt(out[:event.position], event, "collapse", refl, max_refl, calls,
                                cautious_steps)
    return _Attempt(out, None, "max_new_tokens", refl, max_refl, calls, cautious_steps)


def _as_prompt(prompt_tokens) -> torch.Tensor:
    p = torch.as_tensor(prompt_tokens)
    if p.dim() == 2 and p.shape[0] == 1:
        p = p[0]
    if p.dim() != 1 or p.shape[0] < 1:
        raise ShapeError(f"prompt_tokens: expected [t] or [1, t] with t >= 1, got "
                         f"{list(p.shape)}")
    if p.is_floating_point() or p.dtype == torch.bool:
        raise ParameterError(f"prompt_tokens: must hold integer token ids, got {p.dtype}")
    if int(p.min()) < 0:
        raise ParameterError("prompt_tokens: token ids must be >= 0")
    return p.long()


def generate(step_fn: StepFn, prompt_tokens, max_new_tokens: int,
             sampling: SamplingConfig | None = None, detector: CollapseDetector | None = None,
             meta: MetaControllerConfig | None = None, acc_fn: AccFn | None = None,
             seed: int = 0, retry_sampling: SamplingConfig | None = None,
             eos_token_id: int | None = None) -> GenerationResult:
    """Generate up to ``max_new_tokens`` tokens after ``prompt_tokens`` (see the module
    docstring for the loop, the retry and the safe stop).

    Args:
        step_fn: ``(tokens_so_far [1, t], state) -> (logits [1, V], state)``.
        prompt_tokens: ``[t]`` or ``[1, t]`` token ids (t >= 1); one sequence (B = 1).
        max_new_tokens: int >= 1.
        sampling: the first attempt's :class:`SamplingConfig` (default: plain sampling, T = 1).
        detector: a :class:`CollapseDetector`; None disables detection (and the retry).
        meta: a :class:`MetaControllerConfig` enabling per-token reflection and temperature.
        acc_fn: ``logits [1, V] -> signals`` for the MetaController (default:
            :func:`uncertainty_signals`); used only with ``meta``.
        seed: attempt ``a`` draws from ``torch.Generator().manual_seed(seed + a)``.
        retry_sampling: the retry's config (default ``conservative(sampling)``).
        eos_token_id: stop after this token (kept in the output).

    Returns:
        :class:`GenerationResult`; always with tokens (possibly fewer after a collapse).
    """
    sampling = SamplingConfig() if sampling is None else sampling
    for name, v, typ in (("sampling", sampling, SamplingConfig),
                         ("retry_sampling", retry_sampling, (SamplingConfig, type(None))),
                         ("detector", detector, (CollapseDetector, type(None))),
                         ("meta", meta, (MetaControllerConfig, type(None)))):
        if not isinstance(v, typ):
            raise ParameterError(f"{name}: wrong type {type(v).__name__}")
    if not callable(step_fn):
        raise ParameterError("step_fn: must be callable")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or max_new_tokens < 1:
        raise ParameterError(f"max_new_tokens: must be an int >= 1, got {max_new_tokens!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ParameterError(f"seed: must be an int, got {seed!r}")
    prompt = _as_prompt(prompt_tokens)
    if meta is not None and acc_fn is None:
        acc_fn = uncertainty_signals
    strategies = (sampling, retry_sampling if retry_sampling is not None
                  else conservative(sampling))

    runs: list[_Attempt] = []
    for attempt in range(MAX_ATTEMPTS):                 # the bound, fixed before the first run
        run = _run_attempt(step_fn, prompt, max_new_tokens, strategies[attempt], detector, meta,
                           acc_fn, seed + attempt, eos_token_id)
        runs.append(run)
        if run.event is None:
            break
    events = tuple(r.event for r in runs if r.event is not None)
    final = len(runs) - 1
    cautious = runs[final].event is not None            # every attempt collapsed
    if cautious:
        final = max(range(len(runs)), key=lambda a: (len(runs[a].tokens), -a))
    chosen = runs[final]
    return GenerationResult(
        tokens=torch.tensor(chosen.tokens, dtype=torch.long),
        events=events, retries=len(runs) - 1, cautious=cautious,
        reflections=sum(r.reflections for r in runs), stopped_reason=chosen.stopped_reason,
        attempt=final, max_reflections_per_step=max(r.max_reflections for r in runs),
        step_calls=sum(r.step_calls for r in runs),
        meta_cautious_steps=sum(r.cautious_steps for r in runs))
