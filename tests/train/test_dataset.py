"""Prepared data: cache reuse and invalidation, memory maps, crash-safe writes, batches."""
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from neurobit.errors import ParameterError
from neurobit.train import dataset as ds
from neurobit.train.corpus import CorpusSplit, split_corpus
from neurobit.train.dataset import PreparedData, prepare, resolve_cache_dir
from neurobit.train.tokenizer import BPETokenizer, CharTokenizer, bucket_word_hashes, word_ids


@pytest.fixture(scope="module")
def small():
    """300 kB of training and 40 kB of validation text from the real split (fast to tokenize)."""
    s = split_corpus()
    return CorpusSplit("shakespeare-slice", s.train[:300_000], s.val[:40_000],
                       s.train_documents, s.val_documents, "test slice")


def counting(monkeypatch, tok):
    """Count the calls of ``tok.encode_array``."""
    calls = []
    original = tok.encode_array

    def wrapped(text, *a, **k):
        calls.append(len(text))
        return original(text, *a, **k)

    monkeypatch.setattr(tok, "encode_array", wrapped)
    return calls


def test_prepare_writes_memmapped_arrays_and_manifest(tmp_path, small):
    tok = CharTokenizer.train(small.train)
    d = prepare(small, tok, cache_dir=tmp_path)
    assert d.path.parent == tmp_path / "prepared"
    for name in ("train", "val", "train_words", "val_words"):
        arr = d.arrays[name]
        assert isinstance(arr, np.memmap) and not arr.flags.writeable
    assert d.train.dtype == np.uint16 and d.train.shape == (300_000,)
    assert tok.decode(np.asarray(d.train)) == small.train
    assert tok.decode(np.asarray(d.val)) == small.val
    m = json.loads((d.path / "manifest.json").read_text())
    assert m["text_sha256"]["train"] == hashlib.sha256(small.train.encode()).hexdigest()
    assert m["counts"]["val"] == {"characters": 40_000, "tokens": 40_000, "unknown": 0}
    assert m["tokenizer"] == {"kind": "char", "vocab_size": tok.vocab_size,
                              "sha256": tok.fingerprint()}
    assert d.tokenizer().encode(small.val[:1000]) == tok.encode(small.val[:1000])
    # stored word hashes, bucketed, equal the word ids computed from the raw text
    assert torch.equal(bucket_word_hashes(np.asarray(d.arrays["val_words"]), 333),
                       word_ids(small.val, 333))


def test_second_prepare_reads_the_cache(tmp_path, small, monkeypatch):
    tok = CharTokenizer.train(small.train)
    calls = counting(monkeypatch, tok)
    first = prepare(small, tok, cache_dir=tmp_path)
    assert len(calls) == 2
    mtime = (first.path / "train.npy").stat().st_mtime_ns
    tok2 = CharTokenizer.load(tok.save(tmp_path / "tok.json"))  # equal tokenizer, new object
    calls2 = counting(monkeypatch, tok2)
    second = prepare(small, tok2, cache_dir=tmp_path)
    assert calls2 == [] and len(calls) == 2
    assert second.path == first.path
    assert (second.path / "train.npy").stat().st_mtime_ns == mtime
    assert np.array_equal(second.train, first.train)


def test_changed_tokenizer_or_text_rebuilds(tmp_path, small, monkeypatch):
    tok = CharTokenizer.train(small.train)
    base = prepare(small, tok, cache_dir=tmp_path)
    wider = CharTokenizer(tok.chars + ("~",))  # one more character: same ids, new tokenizer
    calls = counting(monkeypatch, wider)
    other = prepare(small, wider, cache_dir=tmp_path)
    assert len(calls) == 2 and other.path != base.path
    assert other.manifest["tokenizer"]["sha256"] != base.manifest["tokenizer"]["sha256"]
    changed = CorpusSplit(small.source, small.train, small.val[:-1] + "X", small.train_documents,
                          small.val_documents, small.rule)
    calls_t = counting(monkeypatch, tok)
    third = prepare(changed, tok, cache_dir=tmp_path)
    assert len(calls_t) == 2 and third.path not in (base.path, other.path)
    assert third.manifest["text_sha256"]["train"] == base.manifest["text_sha256"]["train"]
    assert third.manifest["text_sha256"]["val"] != base.manifest["text_sha256"]["val"]


def test_bpe_prepare(tmp_path, small):
    tok = BPETokenizer.train(small.train[:200_000], vocab_size=700)
    d = prepare(small, tok, cache_dir=tmp_path)
    assert d.vocab_size == 700 and d.train.dtype == np.uint16
    assert d.manifest["tokenizer"]["kind"] == "bpe"
    assert 0 < d.train.shape[0] < 0.6 * len(small.train)
    assert tok.decode(np.asarray(d.train)) == small.train


def test_cache_dir_from_environment(tmp_path, monkeypatch, small):
    monkeypatch.setenv("NEUROBIT_CACHE", str(tmp_path / "envcache"))
    assert resolve_cache_dir() == tmp_path / "envcache"
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    d = prepare(small, CharTokenizer.train(small.train))
    assert d.path.is_relative_to(tmp_path / "envcache")
    monkeypatch.delenv("NEUROBIT_CACHE")
    assert resolve_cache_dir().parts[-2:] == (".cache", "neurobit")


def test_failed_write_leaves_no_partial_file(tmp_path, small, monkeypatch):
    tok = CharTokenizer.train(small.train)
    real = ds._write_npy
    n = []

    def failing(f, arr):
        n.append(1)
        if len(n) == 3:  # the third array (val tokens): half written, then an error
            f.write(b"\x93NUMPY partial")
            raise OSError("disk full")
        real(f, arr)

    monkeypatch.setattr(ds, "_write_npy", failing)
    with pytest.raises(OSError, match="disk full"):
        prepare(small, tok, cache_dir=tmp_path)
    (path,) = (tmp_path / "prepared").iterdir()
    assert sorted(p.name for p in path.iterdir()) == ["train.npy", "train_words.npy"]
    monkeypatch.setattr(ds, "_write_npy", real)
    d = prepare(small, tok, cache_dir=tmp_path)
    assert d.path == path and tok.decode(np.asarray(d.val)) == small.val


def test_killed_process_leaves_no_partial_file(tmp_path, small):
    (tmp_path / "train.txt").write_text(small.train)
    (tmp_path / "val.txt").write_text(small.val)
    code = f"""
import os, pathlib
from neurobit.train import dataset as ds
from neurobit.train.corpus import CorpusSplit
from neurobit.train.tokenizer import CharTokenizer
root = pathlib.Path({str(tmp_path)!r})
tr, va = (root / 'train.txt').read_text(), (root / 'val.txt').read_text()
def dying(f, arr):
    f.write(arr.tobytes()[: arr.nbytes // 2]); f.flush(); os._exit(3)
ds._write_npy = dying
ds.prepare(CorpusSplit('s', tr, va, (), (), 'r'), CharTokenizer.train(tr), cache_dir=root / 'cache')
"""
    rc = subprocess.run([sys.executable, "-c", code], timeout=120).returncode
    assert rc == 3
    (path,) = (tmp_path / "cache" / "prepared").iterdir()
    left = [p.name for p in path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".train.npy.tmp-")  # hidden, never train.npy
    assert (path / left[0]).stat().st_size > 0
    with pytest.raises(ParameterError, match="no readable prepared data"):
        PreparedData.open(path)
    split = CorpusSplit("s", small.train, small.val, (), (), "r")
    d = prepare(split, CharTokenizer.train(small.train), cache_dir=tmp_path / "cache")
    assert d.path == path and d.train.shape == (300_000,)


def test_get_batch_deterministic_and_shifted(tmp_path, small):
    d = prepare(small, CharTokenizer.train(small.train), cache_dir=tmp_path)
    B, T = 8, 64
    x, y, w = d.get_batch("train", B, T, torch.Generator().manual_seed(7))
    x2, y2, w2 = d.get_batch("train", B, T, torch.Generator().manual_seed(7))
    x3, _, _ = d.get_batch("train", B, T, torch.Generator().manual_seed(8))
    assert x.shape == y.shape == w.shape == (B, T)
    assert x.dtype == y.dtype == w.dtype == torch.int64
    assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(w, w2)
    assert not torch.equal(x, x3)
    assert torch.equal(y[:, :-1], x[:, 1:])
    starts = torch.randint(0, 300_000 - T, (B,), generator=torch.Generator().manual_seed(7))
    train = np.asarray(d.train).astype(np.int64)
    words = word_ids(small.train, 8192)
    for b, s in enumerate(starts.tolist()):
        assert torch.equal(x[b], torch.from_numpy(train[s:s + T]))
        assert int(y[b, -1]) == train[s + T]
        assert torch.equal(w[b], words[s:s + T])
    xv, yv, _ = d.get_batch("val", 4, 32, torch.Generator().manual_seed(0))
    assert xv.max() < d.vocab_size and torch.equal(yv[:, :-1], xv[:, 1:])


def test_get_batch_bad_input(tmp_path, small):
    d = prepare(small, CharTokenizer.train(small.train), cache_dir=tmp_path)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ParameterError, match="block_size"):
        d.get_batch("val", 2, 40_000, g)
    with pytest.raises(ParameterError, match="split"):
        d.get_batch("test", 2, 8, g)
    with pytest.raises(ParameterError, match="generator"):
        d.get_batch("train", 2, 8, None)
