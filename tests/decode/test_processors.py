"""Logits processors and the sampling pipeline on hand-computed cases.

Checked: temperature, top-k (ties with the k-th value kept), top-p (exact cumulative-mass
boundaries, ties resolved by token id, the top token always kept), the Hugging Face / CTRL
repetition penalty and the thresholded form on positive and negative logits, no-repeat-ngram bans
for n = 1, 2, 3 with batch rows that differ (and against a brute-force reference), that no
processor writes into its input, SamplingConfig validation naming the parameter, the pipeline's
order, greedy == argmax, seeded reproducibility, sampling frequencies, and the empty-row fallback.
"""
import math
from functools import partial

import pytest
import torch

from neurobit.decode.processors import (LogitsPipeline, SamplingConfig, banned_ngram_tokens,
                                        conservative, no_repeat_ngram, repetition_penalty,
                                        temperature, thresholded_repetition_penalty, top_k, top_p)
from neurobit.errors import ParameterError, ShapeError

INF = float("inf")
F64 = torch.float64


def empty_history(B: int = 1) -> torch.Tensor:
    return torch.zeros(B, 0, dtype=torch.long)


# --------------------------------------------------------------------------- temperature, top-k

def test_temperature_divides_logits():
    z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -4.0]])
    torch.testing.assert_close(temperature(z, empty_history(2), 0.5),
                               torch.tensor([[4.0, -2.0, 1.0], [0.0, 6.0, -8.0]]), rtol=0, atol=0)
    for bad in (0, -1.0, float("nan"), INF):
        with pytest.raises(ParameterError, match="temperature"):
            temperature(z, empty_history(2), bad)


def test_top_k_keeps_ties_with_the_kth_value():
    z = torch.tensor([[3.0, 1.0, 2.0, 2.0, 0.0],
                      [0.0, 5.0, 1.0, 4.0, 3.0]])
    h = empty_history(2)
    assert torch.equal(top_k(z, h, 2), torch.tensor([[3.0, -INF, 2.0, 2.0, -INF],
                                                     [-INF, 5.0, -INF, 4.0, -INF]]))
    assert torch.equal(top_k(z, h, 1), torch.tensor([[3.0, -INF, -INF, -INF, -INF],
                                                     [-INF, 5.0, -INF, -INF, -INF]]))
    assert torch.equal(top_k(z, h, 5), z) and torch.equal(top_k(z, h, 99), z)
    with pytest.raises(ParameterError, match="top_k"):
        top_k(z, h, 0)


# ------------------------------------------------------------------------------------- top-p

def nucleus(p: float, logits: torch.Tensor) -> list[int]:
    out = top_p(logits, empty_history(logits.shape[0]), p)
    return torch.isfinite(out[0]).nonzero().flatten().tolist()


def test_top_p_exact_boundaries():
    # probabilities 0.5, 0.25, 0.125, 0.125 (exact in float64), listed out of order
    z = torch.log(torch.tensor([[0.125, 0.5, 0.125, 0.25]], dtype=F64))
    assert nucleus(1e-9, z) == [1]                 # top token always kept
    assert nucleus(0.5, z) == [1]                  # 0.5 alone reaches p = 0.5
    assert nucleus(0.5 + 1e-9, z) == [1, 3]        # needs the next one
    assert nucleus(0.75, z) == [1, 3]
    assert nucleus(0.76, z) == [0, 1, 3]           # tie 0.125/0.125: lower id first
    assert nucleus(0.875, z) == [0, 1, 3]
    assert nucleus(0.9, z) == [0, 1, 2, 3]
    assert nucleus(1.0, z) == [0, 1, 2, 3]
    kept = top_p(z, empty_history(), 0.75)
    assert torch.equal(kept[0, [1, 3]], z[0, [1, 3]])   # kept logits are untouched


def test_top_p_uniform_ties_and_rows():
    z = torch.zeros(2, 4, dtype=F64)
    z[1] = torch.log(torch.tensor([0.25, 0.125, 0.125, 0.5], dtype=F64))
    out = top_p(z, empty_history(2), 0.5)
    assert torch.isfinite(out).tolist() == [[True, True, False, False],
                                            [False, False, False, True]]
    for bad in (0.0, -0.1, 1.01):
        with pytest.raises(ParameterError, match="top_p"):
            top_p(z, empty_history(2), bad)


# --------------------------------------------------------------------------- repetition penalties

def test_repetition_penalty_hf_ctrl_positive_and_negative():
    z = torch.tensor([[2.0, -1.0, 0.5, -3.0, 0.0],
                      [2.0, -1.0, 0.5, -3.0, 0.0]])
    h = torch.tensor([[0, 1, 1, 4], [2, 3, 3, 3]])
    out = repetition_penalty(z, h, 2.0)
    assert torch.equal(out, torch.tensor([[1.0, -2.0, 0.5, -3.0, 0.0],
                                          [2.0, -1.0, 0.25, -6.0, 0.0]]))
    assert torch.equal(repetition_penalty(z, h, 1.0), z)
    with pytest.raises(ParameterError, match="repetition_penalty"):
        repetition_penalty(z, h, 0.0)


def test_thresholded_penalty_hits_only_tokens_seen_more_than_n_times():
    z = torch.tensor([[2.0, -1.0, 0.5, -3.0, 0.8]])
    h = torch.tensor([[1, 1, 1, 0, 0, 4, 4, 4, 4]])   # counts: 0 -> 2, 1 -> 3, 4 -> 4
    out = thresholded_repetition_penalty(z, h, factor=2.0, threshold=2)
    assert torch.equal(out, torch.tensor([[2.0, -2.0, 0.5, -3.0, 0.4]]))  # token 0: exactly 2
    out3 = thresholded_repetition_penalty(z, h, factor=4.0, threshold=3)
    assert torch.equal(out3, torch.tensor([[2.0, -1.0, 0.5, -3.0, 0.2]]))
    # threshold 0 is the HF/CTRL penalty
    g = torch.Generator().manual_seed(3)
    zr = torch.randn(3, 11, generator=g)
    hr = torch.randint(0, 11, (3, 7), generator=g)
    assert torch.equal(thresholded_repetition_penalty(zr, hr, 1.7, 0),
                       repetition_penalty(zr, hr, 1.7))
    with pytest.raises(ParameterError, match="repetition_threshold"):
        thresholded_repetition_penalty(z, h, 2.0, -1)
    with pytest.raises(ParameterError, match="repetition_factor"):
        thresholded_repetition_penalty(z, h, -2.0, 1)


# ---------------------------------------------------------------------------- no-repeat-ngram

def banned(out: torch.Tensor) -> list[list[int]]:
    return [torch.isinf(r).nonzero().flatten().tolist() for r in out]


def test_no_repeat_ngram_n2_n3_rows_differ():
    z = torch.zeros(2, 6)
    h2 = torch.tensor([[0, 1, 2, 0], [3, 3, 1, 3]])
    assert banned(no_repeat_ngram(z, h2, 2)) == [[1], [1, 3]]
    h3 = torch.tensor([[0, 1, 2, 4, 0, 1, 0, 1], [3, 4, 5, 3, 4, 1, 3, 4]])
    assert banned(no_repeat_ngram(z, h3, 3)) == [[0, 2], [1, 5]]
    assert banned(no_repeat_ngram(z, h3, 1)) == [[0, 1, 2, 4], [1, 3, 4, 5]]
    assert banned(no_repeat_ngram(z, h3[:, :2], 3)) == [[], []]       # no trigram yet
    out = no_repeat_ngram(torch.ones(2, 6), h3, 3)
    assert torch.equal(out[0, [1, 3, 4, 5]], torch.ones(4))             # others untouched


def test_no_repeat_ngram_matches_brute_force():
    g = torch.Generator().manual_seed(5)
    for _ in range(60):
        n = int(torch.randint(1, 5, (1,), generator=g))
        h = torch.randint(0, 4, (3, int(torch.randint(0, 12, (1,), generator=g))), generator=g)
        out = no_repeat_ngram(torch.zeros(3, 4), h, n)
        for b in range(3):
            x = h[b].tolist()
            grams = {tuple(x[i:i + n]) for i in range(len(x) - n + 1)}
            tail = tuple(x[len(x) - n + 1:]) if n > 1 else ()
            want = sorted(v for v in range(4) if len(x) >= n and tail + (v,) in grams)
            assert banned(out[b:b + 1])[0] == want
            assert sorted(banned_ngram_tokens(h[b], n).tolist()) == want


def test_processors_are_pure_and_check_inputs():
    z = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    h = torch.tensor([[0, 1, 0, 1, 0]])
    z0, h0 = z.clone(), h.clone()
    for fn in (partial(temperature, t=0.7), partial(top_k, k=2), partial(top_p, p=0.6),
               partial(repetition_penalty, penalty=1.5),
               partial(thresholded_repetition_penalty, factor=2.0, threshold=1),
               partial(no_repeat_ngram, n=2)):
        out = fn(z, h)
        assert out.data_ptr() != z.data_ptr()
        assert torch.equal(z, z0) and torch.equal(h, h0)
    with pytest.raises(ParameterError, match="history"):
        repetition_penalty(z, torch.tensor([[0, 4]]), 1.2)               # id >= V
    with pytest.raises(ShapeError, match="history"):
        no_repeat_ngram(z, torch.tensor([0, 1]), 2)
    with pytest.raises(ShapeError, match="logits"):
        repetition_penalty(z[0], h, 1.2)


# ---------------------------------------------------------------------------------- pipeline

@pytest.mark.parametrize("field,value", [
    ("temperature", -0.1), ("temperature", float("nan")), ("do_sample", 1), ("top_k", 0),
    ("top_k", 2.5), ("top_p", 0.0), ("top_p", 1.5), ("repetition_penalty", 0.0),
    ("repetition_factor", -1.0), ("repetition_threshold", -1), ("no_repeat_ngram_size", -1),
    ("history_window", 0)])
def test_sampling_config_errors_name_the_parameter(field, value):
    with pytest.raises(ParameterError, match=f"^{field}"):
        SamplingConfig(**{field: value})


def test_pipeline_order_and_composition():
    cfg = SamplingConfig(temperature=0.5, top_k=3, top_p=0.9, repetition_penalty=1.3,
                         repetition_factor=2.0, repetition_threshold=1, no_repeat_ngram_size=2)
    pipe = LogitsPipeline(cfg)
    assert [n for n, _ in pipe.processors()] == [
        "repetition_penalty", "thresholded_repetition_penalty", "no_repeat_ngram",
        "temperature", "top_k", "top_p"]
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 7, generator=g)
    h = torch.randint(0, 7, (2, 9), generator=g)
    want = repetition_penalty(z, h, 1.3)
    want = thresholded_repetition_penalty(want, h, 2.0, 1)
    want = no_repeat_ngram(want, h, 2)
    want = top_p(top_k(temperature(want, h, 0.5), h, 3), h, 0.9)
    assert torch.equal(pipe.process(z, h), want)
    # history_window: penalties read only the last 3 tokens
    pw = LogitsPipeline(SamplingConfig(repetition_penalty=2.0, history_window=3))
    assert torch.equal(pw.process(z, h), repetition_penalty(z, h[:, -3:], 2.0))
    # greedy lists only the score-editing processors
    assert [n for n, _ in LogitsPipeline(cfg.replace(temperature=0)).processors()] == [
        "repetition_penalty", "thresholded_repetition_penalty", "no_repeat_ngram"]


def test_greedy_is_argmax_and_sampling_is_seeded():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(4, 9, generator=g)
    h = torch.randint(0, 9, (4, 5), generator=g)
    greedy = LogitsPipeline(SamplingConfig(temperature=0.0))
    assert torch.equal(greedy.sample(z, h), z.argmax(-1))
    assert torch.equal(LogitsPipeline(SamplingConfig(do_sample=False)).sample(z, h, None, 0.3),
                       z.argmax(-1))
    pen = LogitsPipeline(SamplingConfig(temperature=0.0, repetition_penalty=3.0))
    assert torch.equal(pen.sample(z, h), repetition_penalty(z, h, 3.0).argmax(-1))
    samp = LogitsPipeline(SamplingConfig(temperature=1.0, top_k=5))

    def run(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.stack([samp.sample(z, h, gen) for _ in range(50)])     # [50, 4]

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))
    allowed = torch.isfinite(top_k(z, h, 5))
    assert bool(allowed.gather(1, run(9).T).all())                  # draws respect top-k


def test_sampling_frequencies_follow_softmax():
    z = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    pipe = LogitsPipeline(SamplingConfig(temperature=1.0))
    gen = torch.Generator().manual_seed(0)
    n = 6000
    draws = torch.stack([pipe.sample(z.expand(n, 3), empty_history(n), gen)]).flatten()
    freq = torch.bincount(draws, minlength=3).double() / n
    sd = math.sqrt(0.25 / n)
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2], dtype=F64), atol=4 * sd)
    # temperature 0.5 squares the odds: p ~ [25, 9, 4] / 38
    pipe_t = LogitsPipeline(SamplingConfig(temperature=0.5))
    draws = pipe_t.sample(z.expand(n, 3), empty_history(n), gen)
    freq = torch.bincount(draws, minlength=3).double() / n
    assert torch.allclose(freq, torch.tensor([25, 9, 4], dtype=F64) / 38, atol=4 * sd)


def test_fully_banned_row_falls_back_to_raw_logits():
    z = torch.tensor([[-INF, 1.0, -INF], [0.0, 2.0, 1.0]])
    h = torch.tensor([[1, 1], [0, 0]])                 # n = 1 bans token 1 / token 0
    pipe = LogitsPipeline(SamplingConfig(no_repeat_ngram_size=1, temperature=0.0))
    out = pipe.process(z, h)
    assert torch.equal(out[0], z[0]) and out[1, 0] == -INF
    assert pipe.sample(z, h).tolist() == [1, 1]
    with pytest.raises(ParameterError, match="logits"):
        pipe.process(torch.full((1, 3), -INF), empty_history())
    with pytest.raises(ParameterError, match="logits"):
        pipe.process(torch.tensor([[0.0, float("nan"), 1.0]]), empty_history())


def test_conservative_retry_strategy():
    c = conservative(SamplingConfig(temperature=0.0, repetition_penalty=1.1))
    assert (c.do_sample, c.temperature, c.repetition_penalty, c.no_repeat_ngram_size,
            c.top_p) == (True, 1.0, 1.3, 3, 0.9)
    c2 = conservative(SamplingConfig(temperature=0.8, repetition_penalty=2.0, top_p=0.5,
                                     no_repeat_ngram_size=5))
    assert (c2.temperature, c2.repetition_penalty, c2.no_repeat_ngram_size, c2.top_p) == (
        0.8, 2.0, 5, 0.5)
