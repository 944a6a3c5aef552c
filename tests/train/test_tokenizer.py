"""Tokenizers: exact round trips, <unk>, JSON save/load, BPE vocab, stable causal word ids."""
import json
import re
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from neurobit.errors import ParameterError, ShapeError
from neurobit.train.corpus import split_corpus
from neurobit.train.tokenizer import (
    BPETokenizer, CharTokenizer, UNK_ID, codepoints, load_tokenizer, prefix_word_hashes, word_ids,
)

SENTENCE = "To be, or not to be: that is the question:\n'Tis nobler TO BE."


def fnv1a(data: bytes) -> int:
    """Reference 32-bit FNV-1a over bytes, written independently of the package."""
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) % 2**32
    return h


@pytest.fixture(scope="module")
def split():
    return split_corpus()


@pytest.fixture(scope="module")
def bpe(split):
    return BPETokenizer.train(split.train[:200_000], vocab_size=1000)


def test_char_round_trip_on_training_text(split):
    tok = CharTokenizer.train(split.train)
    assert tok.vocab_size == len(set(split.train)) + 1
    assert list(tok.chars) == sorted(set(split.train))
    ids = tok.encode_array(split.train)
    assert ids.shape == (len(split.train),) and ids.min() >= 1
    assert tok.decode(ids) == split.train
    assert tok.encode("ab") == [tok.chars.index("a") + 1, tok.chars.index("b") + 1]


def test_char_unknown_maps_to_unk(tmp_path):
    tok = CharTokenizer.train("hello world")
    ids = tok.encode("hello\u00e9 w\u20acrld\U0001F600")
    assert ids[5] == UNK_ID and ids[8] == UNK_ID and ids[-1] == UNK_ID
    assert sum(i == UNK_ID for i in ids) == 3
    assert tok.decode(ids) == "hello\ufffd w\ufffdrld\ufffd"
    with pytest.raises(ParameterError, match="ids"):
        tok.decode([tok.vocab_size])


def test_char_save_load_json(tmp_path, split):
    tok = CharTokenizer.train(split.train)
    path = tok.save(tmp_path / "char.json")
    obj = json.loads(path.read_text())
    assert obj["type"] == "char" and len(obj["chars"]) == tok.vocab_size - 1
    back = load_tokenizer(path)
    assert isinstance(back, CharTokenizer)
    sample = split.val[:20_000]
    assert back.encode(sample) == tok.encode(sample)
    assert back.fingerprint() == tok.fingerprint()
    assert not list(tmp_path.glob(".*tmp*"))
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ParameterError, match="bad.json"):
        load_tokenizer(bad)


def test_fnv1a_prefix_hashes_match_reference():
    # published FNV-1a 32-bit test vectors pin the reference itself
    assert fnv1a(b"a") == 0xE40C292C and fnv1a(b"foobar") == 0xBF9CF968
    h = prefix_word_hashes(codepoints("FooBar"))  # case folded
    assert int(h[-1]) == 0xBF9CF968
    assert [int(x) for x in h] == [fnv1a(b"foobar"[: i + 1]) for i in range(6)]


def test_word_ids_equal_words_separators_and_buckets():
    n = 1000
    w = word_ids(SENTENCE, n).tolist()
    assert len(w) == len(SENTENCE)
    for i, ch in enumerate(SENTENCE):
        if not (ch.isalnum() or ch == "'"):
            assert w[i] == 0, (i, ch)
    # the last character of every word carries the bucket of the whole word
    words = [(m.group().lower(), m.end() - 1) for m in re.finditer(r"[A-Za-z']+", SENTENCE)]
    assert len(words) == 14
    for word, end in words:
        assert w[end] == 1 + fnv1a(word.encode()) % (n - 1), word
    ends = {word: {w[e] for ww, e in words if ww == word} for word, _ in words}
    assert len(ends["to"]) == 1 and len(ends["be"]) == 1  # "To", "to", "TO" share one id
    assert ends["to"] != ends["be"]
    assert 0 < min(x for x in w if x) and max(w) < n


def test_word_ids_are_causal():
    full = word_ids(SENTENCE, 512)
    for t in range(1, len(SENTENCE) + 1):
        assert torch.equal(word_ids(SENTENCE[:t], 512), full[:t])


def test_word_ids_stable_across_processes():
    code = ("from neurobit.train.tokenizer import word_ids;"
            f"print(word_ids({SENTENCE!r}, 4096).tolist())")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert json.loads(out) == word_ids(SENTENCE, 4096).tolist()


def test_token_word_ids_agree_with_text(split, bpe):
    text = split.train[:5000]
    char = CharTokenizer.train(split.train)
    ids = char.encode(text)
    assert torch.equal(word_ids(ids, 777, tokenizer=char), word_ids(text, 777))
    bids = bpe.encode(" the queen")
    pieces = [bpe.pieces()[i] for i in bids]
    w = bpe.word_ids(bids, 777).tolist()
    the = pieces.index(" the")
    assert w[the] == 1 + fnv1a(b"the") % 776
    with pytest.raises(ParameterError, match="tokenizer"):
        word_ids(ids, 777)
    with pytest.raises(ParameterError, match="n_word_buckets"):
        word_ids(text, 1)
    with pytest.raises(ShapeError, match="ids"):
        char.word_ids(torch.tensor([ids[:10], ids[10:20]]))


def test_bpe_trains_round_trips_and_has_the_vocab(split, bpe):
    assert bpe.vocab_size == 1000
    sample = split.train[:200_000]
    ids = bpe.encode(sample)
    assert max(ids) < 1000
    assert len(ids) < 0.6 * len(sample)  # merges compress the text
    assert bpe.decode(ids) == sample
    unseen = split.val[:50_000] + " caf\u00e9 \u20ac \U0001F600\n"
    assert bpe.decode(bpe.encode(unseen)) == unseen
    # chunked parallel encoding gives exactly the ids of one whole-text call
    assert np.array_equal(bpe.encode_array(sample, chunk_chars=4096), np.asarray(ids))
    with pytest.raises(ParameterError, match="vocab_size"):
        BPETokenizer.train(sample, vocab_size=200)


def test_bpe_save_load_identical(tmp_path, split, bpe):
    path = bpe.save(tmp_path / "bpe.json")
    assert json.loads(path.read_text())["model"]["type"] == "BPE"
    back = load_tokenizer(path)
    assert isinstance(back, BPETokenizer)
    sample = split.val[:30_000]
    assert back.encode(sample) == bpe.encode(sample)
    assert back.fingerprint() == bpe.fingerprint()
    again = BPETokenizer.train(split.train[:200_000], vocab_size=1000)
    assert again.fingerprint() == bpe.fingerprint()  # training is deterministic
    other = BPETokenizer.train(split.train[:200_000], vocab_size=600)
    assert other.vocab_size == 600 and other.fingerprint() != bpe.fingerprint()
