"""The generation loop: collapse -> one retry -> cautious safe stop, reflection bounds, seeds.

Checked: a hard looping model collapses twice, is retried exactly once from the prompt with a
fresh state and returns the longer truncated attempt marked cautious (never a third attempt);
a looping model that the conservative retry can break ends the retry without events and without
a repeated 4-gram; a non-looping model and a model that spells real English text generate
max_new_tokens with no events; the MetaController's reflection passes re-call step_fn on the
same prefix and state, never exceed max_reflection_steps per token (also under NaN/inf/junk
signals), and its temperature equals sampling at that temperature; same seed -> same tokens;
eos stops; bad arguments raise errors naming them.
"""
import math

import pytest
import torch

from neurobit.decode.collapse import CollapseDetector
from neurobit.decode.generate import GenerationResult, generate
from neurobit.decode.metrics import seq_rep_n
from neurobit.decode.processors import SamplingConfig
from neurobit.errors import ParameterError, ShapeError
from neurobit.modules.meta_controller import MetaControllerConfig

V = 32
NEG_INF = float("-inf")


class Recorder:
    """Wraps a pure ``logits_of(prefix list) -> [1, V]`` model as a step_fn; the state counts
    the calls of an attempt; every call's (prefix, state) is recorded."""

    def __init__(self, logits_of):
        self.logits_of, self.calls = logits_of, []

    def __call__(self, tokens, state):
        assert tokens.dim() == 2 and tokens.shape[0] == 1 and tokens.dtype == torch.long
        self.calls.append((tokens[0].tolist(), state))
        return self.logits_of(tokens[0].tolist()), (0 if state is None else state) + 1

    @property
    def attempts(self) -> int:
        return sum(1 for _, s in self.calls if s is None)


def cycle_model(unit, sharpness):
    """Logit ``sharpness`` on the token after the last one in ``unit``'s cycle; -inf elsewhere
    when ``sharpness`` is inf (a hard loop), 0 elsewhere otherwise."""
    def logits_of(prefix):
        last = prefix[-1]
        nxt = unit[(unit.index(last) + 1) % len(unit)] if last in unit else unit[0]
        z = torch.full((1, V), NEG_INF if math.isinf(sharpness) else 0.0)
        z[0, nxt] = 10.0 if math.isinf(sharpness) else sharpness
        return z
    return logits_of


def random_model(prefix):
    """A stateless non-looping model: logits drawn from a seed that hashes the prefix."""
    h = 0
    for t in prefix[-8:]:
        h = (h * 1000003 + t + 1) % (2 ** 61 - 1)
    return torch.randn(1, V, generator=torch.Generator().manual_seed(h + len(prefix)))


def test_hard_loop_retries_once_then_safe_stop():
    rec = Recorder(cycle_model([3, 4, 5], math.inf))
    det = CollapseDetector()
    res = generate(rec, [1, 2], 300, SamplingConfig(temperature=0.0), det, seed=0)
    assert isinstance(res, GenerationResult)
    assert (res.retries, res.cautious, res.stopped_reason, len(res.events)) == (
        1, True, "collapse", 2)
    assert rec.attempts == 2                                   # bounded, fresh state each time
    # both attempts: 3,4,5,... -> square of 2 * 21 tokens -> cut after 21 (one copy kept)
    for ev in res.events:
        assert (ev.reason, ev.end, ev.position) == ("repeat", 42, 21)
    assert res.tokens.tolist() == [3, 4, 5] * 7 and res.attempt == 0
    assert res.step_calls == len(rec.calls) == 84
    # the retry restarted from the prompt
    starts = [p for p, s in rec.calls if s is None]
    assert starts == [[1, 2], [1, 2]]


def test_soft_loop_is_fixed_by_the_conservative_retry():
    unit = [1, 2, 3, 4, 5]
    rec = Recorder(cycle_model(unit, 5.0))
    res = generate(rec, [0], 200, SamplingConfig(temperature=0.0), CollapseDetector(), seed=3)
    assert (res.retries, res.cautious, res.attempt, res.stopped_reason) == (
        1, False, 1, "max_new_tokens")
    assert len(res.events) == 1 and res.events[0].reason == "repeat"
    assert len(res.tokens) == 200
    assert seq_rep_n(res.tokens, 4) == 0.0          # no-repeat-trigram: no repeated 4-gram
    assert seq_rep_n(res.tokens, 2) > 0.0           # ... yet it is not a ban on everything
    assert rec.attempts == 2


def test_non_looping_model_runs_to_max_new_tokens():
    rec = Recorder(random_model)
    res = generate(rec, [7, 8, 9], 250, SamplingConfig(temperature=1.0), CollapseDetector(),
                   seed=11)
    assert (res.events, res.retries, res.cautious, res.stopped_reason, res.attempt) == (
        (), 0, False, "max_new_tokens", 0)
    assert len(res.tokens) == 250 and res.step_calls == 250 and res.reflections == 0
    # step_fn saw the prompt followed by the tokens generated so far
    prefix, _ = rec.calls[-1]
    assert prefix == [7, 8, 9] + res.tokens[:-1].tolist()
    again = generate(Recorder(random_model), [7, 8, 9], 250, SamplingConfig(), CollapseDetector(),
                     seed=11)
    other = generate(Recorder(random_model), [7, 8, 9], 250, SamplingConfig(), CollapseDetector(),
                     seed=12)
    assert torch.equal(again.tokens, res.tokens)
    assert not torch.equal(other.tokens, res.tokens)


def test_model_spelling_real_text_is_not_stopped():
    from pydoc_data.topics import topics
    text = " ".join(topics["if"].split())[:400].encode("ascii", "replace")
    prompt = list(text[:10])

    def logits_of(prefix):                              # teacher-forced: the next character
        z = torch.zeros(1, 128)
        z[0, text[len(prefix)]] = 8.0
        return z
    res = generate(Recorder(logits_of), prompt, len(text) - 10,
                   SamplingConfig(temperature=0.0), CollapseDetector())
    assert res.events == () and bytes(res.tokens.tolist()) == text[10:]


def test_reflections_are_bounded_and_recompute_the_same_prefix():
    m = 3
    meta = MetaControllerConfig(max_reflection_steps=m, reflect_threshold=0.0)
    rec = Recorder(lambda prefix: torch.zeros(1, V))           # uniform: uncertainty 1
    res = generate(rec, [0], 20, SamplingConfig(temperature=1.0), None, meta, seed=1)
    assert res.reflections == 20 * m and res.max_reflections_per_step == m
    assert res.step_calls == len(rec.calls) == 20 * (1 + m)
    for k in range(20):                                        # 1 + m calls, same inputs
        group = rec.calls[k * (1 + m):(k + 1) * (1 + m)]
        assert all(c == group[0] for c in group)
    # a confident model is not reflected on
    sure = Recorder(cycle_model(list(range(V)), 30.0))
    res2 = generate(sure, [0], 20, SamplingConfig(temperature=1.0), None,
                    MetaControllerConfig(max_reflection_steps=2), seed=1)
    assert res2.reflections == 0 and res2.step_calls == 20


@pytest.mark.parametrize("signal", [float("nan"), float("inf"), -5.0, 1e9, "junk", None,
                                    torch.tensor([0.2, float("nan")])])
def test_reflection_bound_holds_under_broken_signals(signal):
    meta = MetaControllerConfig(max_reflection_steps=2, reflect_threshold=0.1)
    res = generate(Recorder(random_model), [1], 15, SamplingConfig(), None, meta,
                   acc_fn=lambda z: {"uncertainty": signal, "conflict": signal}, seed=2)
    assert len(res.tokens) == 15
    assert res.max_reflections_per_step <= 2 and res.step_calls == 15 + res.reflections


def test_meta_temperature_equals_sampling_at_that_temperature():
    meta = MetaControllerConfig(t_base=1.0, t_min=0.3, temperature_slope=0.7,
                                reflect_threshold=1.0, cautious_threshold=1.0)
    concern_one = lambda z: {"uncertainty": 1.0}                # noqa: E731 -> T = 0.3
    a = generate(Recorder(random_model), [5], 80, SamplingConfig(temperature=1.0), None, meta,
                 acc_fn=concern_one, seed=4)
    b = generate(Recorder(random_model), [5], 80, SamplingConfig(temperature=0.3), seed=4)
    c = generate(Recorder(random_model), [5], 80, SamplingConfig(temperature=1.0), seed=4)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert a.meta_cautious_steps == 80
    # the decision only lowers: a config already below it keeps its own temperature
    d = generate(Recorder(random_model), [5], 80, SamplingConfig(temperature=0.2), None, meta,
                 acc_fn=concern_one, seed=4)
    e = generate(Recorder(random_model), [5], 80, SamplingConfig(temperature=0.2), seed=4)
    assert torch.equal(d.tokens, e.tokens)


def test_greedy_eos_and_validation():
    res = generate(Recorder(cycle_model(list(range(10)), 30.0)), [0], 50,
                   SamplingConfig(temperature=0.0), eos_token_id=6)
    assert res.tokens.tolist() == [1, 2, 3, 4, 5, 6] and res.stopped_reason == "eos"
    step = Recorder(random_model)
    with pytest.raises(ParameterError, match="max_new_tokens"):
        generate(step, [0], 0)
    with pytest.raises(ShapeError, match="prompt_tokens"):
        generate(step, [], 5)
    with pytest.raises(ParameterError, match="sampling"):
        generate(step, [0], 5, sampling={"temperature": 1.0})
    with pytest.raises(ShapeError, match="step_fn"):
        generate(lambda t, s: (torch.zeros(V), s), [0], 5)
    with pytest.raises(ParameterError, match="history"):      # prompt id outside the vocab
        generate(step, [V + 3], 5)
