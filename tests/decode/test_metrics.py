"""Degeneration metrics (seq-rep-n, distinct-n, rep/l) on hand-computed sequences."""
import pytest
import torch

from neurobit.decode.metrics import distinct_n, ngrams, rep_l, seq_rep_n
from neurobit.errors import ParameterError, ShapeError


def test_ngrams_overlap_in_order():
    assert ngrams([1, 2, 3, 4], 2) == [(1, 2), (2, 3), (3, 4)]
    assert ngrams("abc", 3) == [("a", "b", "c")]
    assert ngrams([1, 2], 3) == []


def test_seq_rep_n_hand_computed():
    assert seq_rep_n([0, 1, 0, 1, 0, 1], 4) == pytest.approx(1 / 3)      # abab, baba, abab
    assert seq_rep_n([7] * 10, 4) == pytest.approx(6 / 7)               # 7 grams, 1 unique
    assert seq_rep_n(list(range(10)), 4) == 0.0
    assert seq_rep_n([1, 2, 3], 4) == 0.0                                # no 4-gram
    assert seq_rep_n(torch.tensor([5, 5, 5, 6, 5, 5, 5]), 3) == pytest.approx(1 - 4 / 5)


def test_distinct_n_hand_computed():
    assert distinct_n([1, 2, 1, 2, 3], 2) == pytest.approx(3 / 4)
    assert distinct_n("hello", 1) == pytest.approx(4 / 5)
    assert distinct_n("hello", 5) == 1.0
    assert distinct_n("hi", 3) == 0.0
    seq = [3, 1, 3, 1, 3, 2, 2, 2]
    assert seq_rep_n(seq, 2) == pytest.approx(1 - distinct_n(seq, 2))


def test_rep_l_hand_computed():
    x = [1, 2, 1, 3, 2, 2]
    assert rep_l(x, 2) == pytest.approx(2 / 6)        # hits at t = 2 and t = 5
    assert rep_l(x, 3) == pytest.approx(3 / 6)        # t = 4 sees the 2 at t = 1
    assert rep_l(x, 2, context=2) == pytest.approx(2 / 4)
    assert rep_l("abcabc", 3) == pytest.approx(3 / 6)
    assert rep_l("abcabc", 2) == 0.0
    assert rep_l(torch.tensor([4, 4, 4, 4]), 1) == pytest.approx(3 / 4)
    assert rep_l([1, 2], 4, context=2) == 0.0


def test_metric_errors_name_the_parameter():
    with pytest.raises(ParameterError, match="^n"):
        distinct_n([1, 2], 0)
    with pytest.raises(ParameterError, match="^l"):
        rep_l([1, 2], 0)
    with pytest.raises(ParameterError, match="^context"):
        rep_l([1, 2], 2, context=-1)
    with pytest.raises(ShapeError, match="tokens"):
        seq_rep_n(torch.zeros(2, 3, dtype=torch.long))
