"""Tokenizers (character and byte-level BPE) and the hashed word ids of the hierarchical embedding.

Common interface (both tokenizers): ``encode(str) -> list[int]``, ``encode_array(str) ->
np.ndarray`` (the fast path for a whole corpus), ``decode(list[int]) -> str``,
``vocab_size``, ``save(path)`` / ``load(path)`` (JSON, never pickle), ``fingerprint()`` (sha256
of the JSON, the cache key) and ``pieces()`` (the text of every id).

- :class:`CharTokenizer`: id 0 is ``<unk>``, ids ``1..n`` the sorted characters of the
  training text; ``decode`` writes ``<unk>`` as U+FFFD. Round trip exact on any text made of
  the training characters.
- :class:`BPETokenizer`: Hugging Face ``tokenizers`` byte-level BPE (GPT-2 pre-tokenizer
  regex, no prefix space, no special tokens) trained on the training split; every string
  round-trips exactly. Saved as the library's own ``tokenizer.json``.

Word ids (hierarchical embedding: character + word id + position embeddings summed)
---------------------------------------------------------------------------------------
A word is a maximal run of word characters (``str.isalnum()`` or the apostrophe ``'``), case
folded per code point. At each position inside a word the hash is the 32-bit FNV-1a of the
word's code points *up to and including that position* (offset basis 2166136261, prime
16777619; for ASCII this is FNV-1a over the bytes), so the id is causal: it never reveals a
character the model still has to predict. At the last character of a word it is the hash of
the whole word, so equal words get equal ids there (and equal prefixes equal ids
everywhere). Separators (spaces, punctuation, newlines) get hash 0, and a word whose hash is
0 is moved to 1. Buckets: ``id = 0`` for separators, else ``1 + hash % (n_word_buckets - 1)``.
The hash is the same in every process and on every machine (no Python ``hash()``).

For tokens (ids of either tokenizer) the hash of a token is the running hash at the last
character of its text (:meth:`pieces`), so a BPE token ``" the"`` gets the id of the word
"the" and a character token the id of the prefix it ends.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from neurobit.errors import BackendError, ParameterError, ShapeError

FNV_OFFSET = 2166136261
FNV_PRIME = 16777619
DEFAULT_WORD_BUCKETS = 8192
UNK = "<unk>"
UNK_ID = 0
UNK_TEXT = "\ufffd"

_BMP = 0x10000
_TABLES: dict[str, np.ndarray] = {}


def _bmp_tables() -> tuple[np.ndarray, np.ndarray]:
    """(is_word_char[65536] bool, lowercase[65536] uint32) for the Basic Multilingual Plane."""
    if not _TABLES:
        is_word = np.zeros(_BMP, dtype=bool)
        lower = np.arange(_BMP, dtype=np.uint32)
        for c in range(_BMP):
            ch = chr(c)
            is_word[c] = ch.isalnum() or ch == "'"
            low = ch.lower()
            if len(low) == 1:
                lower[c] = ord(low)
        _TABLES["is_word"], _TABLES["lower"] = is_word, lower
    return _TABLES["is_word"], _TABLES["lower"]


def codepoints(text: str) -> np.ndarray:
    """The Unicode code points of ``text`` as ``uint32[len(text)]``."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def prefix_word_hashes(cp: np.ndarray) -> np.ndarray:
    """Causal FNV-1a word hashes (``uint32``, 0 at separators) for code points ``cp[N]``."""
    cp = np.asarray(cp, dtype=np.uint32)
    n = cp.size
    is_word_bmp, lower_bmp = _bmp_tables()
    bmp = cp < _BMP
    is_word = np.zeros(n, dtype=bool)
    low = cp.copy()
    is_word[bmp] = is_word_bmp[cp[bmp]]
    low[bmp] = lower_bmp[cp[bmp]]
    for i in np.flatnonzero(~bmp):  # astral code points are rare: handle them one by one
        ch = chr(int(cp[i]))
        is_word[i] = ch.isalnum()
        low[i] = ord(ch.lower()) if len(ch.lower()) == 1 else cp[i]
    hashes = np.zeros(n, dtype=np.uint32)
    pos = np.flatnonzero(is_word)
    if pos.size == 0:
        return hashes
    starts = np.ones(pos.size, dtype=bool)
    starts[1:] = pos[1:] != pos[:-1] + 1
    word_start = np.maximum.accumulate(np.where(starts, np.arange(pos.size), 0))
    offset = np.arange(pos.size) - word_start  # position of each word char inside its word
    order = np.argsort(offset, kind="stable")
    bounds = np.searchsorted(offset[order], np.arange(int(offset.max()) + 2))
    prime = np.uint32(FNV_PRIME)
    for k in range(int(offset.max()) + 1):  # one vectorised FNV-1a step per character offset
        at = pos[order[bounds[k]:bounds[k + 1]]]
        prev = np.full(at.size, FNV_OFFSET, dtype=np.uint32) if k == 0 else hashes[at - 1]
        hashes[at] = (prev ^ low[at]) * prime
    hashes[is_word & (hashes == 0)] = 1
    return hashes


def bucket_word_hashes(hashes: np.ndarray | torch.Tensor, n_word_buckets: int) -> torch.Tensor:
    """Word ids in ``[0, n_word_buckets)`` (long tensor, same shape) from raw hashes."""
    if int(n_word_buckets) < 2:
        raise ParameterError(
            f"n_word_buckets: need at least 2 (0 is the separator), got {n_word_buckets}")
    if not isinstance(hashes, torch.Tensor):
        hashes = torch.from_numpy(np.asarray(hashes, np.int64))
    h = hashes.to(torch.int64)
    return torch.where(h == 0, torch.zeros_like(h), 1 + h % (int(n_word_buckets) - 1))


class _Tokenizer:
    """Shared parts: piece table, token word hashes, fingerprint."""

    kind = "base"
    _piece_cp: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def vocab_size(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def pieces(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_json(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def fingerprint(self) -> str:
        """sha256 of the serialised tokenizer: equal fingerprints encode text identically."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def _check_ids(self, ids) -> np.ndarray:
        if isinstance(ids, torch.Tensor):
            ids = ids.cpu()
        arr = np.asarray(ids, dtype=np.int64)
        if arr.ndim != 1:
            raise ShapeError(f"ids: expected one sequence [N], got shape {tuple(arr.shape)}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ParameterError(
                f"ids: values must be in [0, {self.vocab_size}), got [{arr.min()}, {arr.max()}]")
        return arr

    def token_word_hashes(self, ids) -> np.ndarray:
        """Raw causal word hash (``uint32``) at every token of ``ids`` (see the module doc)."""
        arr = self._check_ids(ids)
        if self._piece_cp is None:
            cps = [codepoints(p) for p in self.pieces()]
            lens = np.array([c.size for c in cps], dtype=np.int64)
            flat = np.concatenate(cps) if lens.sum() else np.zeros(0, np.uint32)
            self._piece_cp = (flat, np.cumsum(lens) - lens, lens)
        flat, off, lens = self._piece_cp
        tok_len = lens[arr]
        ends = np.cumsum(tok_len)
        total = int(ends[-1]) if arr.size else 0
        gather = np.repeat(off[arr] - (ends - tok_len), tok_len) + np.arange(total)
        hashes = prefix_word_hashes(flat[gather])
        out = np.zeros(arr.size, dtype=np.uint32)
        valid = ends > 0
        out[valid] = hashes[ends[valid] - 1]
        return out

    def word_ids(self, ids, n_word_buckets: int = DEFAULT_WORD_BUCKETS) -> torch.Tensor:
        """Word ids (long ``[N]``) of the tokens ``ids[N]``."""
        return bucket_word_hashes(self.token_word_hashes(ids), n_word_buckets)

    def save(self, path: str | Path) -> Path:
        """Write the JSON form atomically (temporary file + ``os.replace``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(self.to_json(), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path


def word_ids(x, n_word_buckets: int = DEFAULT_WORD_BUCKETS, tokenizer: _Tokenizer | None = None):
    """Word ids (long tensor) of a string (one per character) or of token ids (needs ``tokenizer``).

    Example: ``word_ids("to be, or not to be")`` gives equal ids at the two ``"be"`` ends,
    0 at the spaces and the comma.
    """
    if isinstance(x, str):
        return bucket_word_hashes(prefix_word_hashes(codepoints(x)), n_word_buckets)
    if tokenizer is None:
        raise ParameterError("tokenizer: word ids of token ids need the tokenizer that made them")
    return tokenizer.word_ids(x, n_word_buckets)


class CharTokenizer(_Tokenizer):
    """Character vocabulary: id 0 ``<unk>``, ids 1..n the sorted characters."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        chars = sorted(set(chars))
        bad = [c for c in chars if len(c) != 1]
        if bad:
            raise ParameterError(f"chars: every entry must be one character, got {bad[:3]!r}")
        if not chars:
            raise ParameterError("chars: the vocabulary is empty")
        self.chars: tuple[str, ...] = tuple(chars)
        self._cp = np.array([ord(c) for c in chars], dtype=np.uint32)  # sorted by code point
        self._to_id = {c: i + 1 for i, c in enumerate(chars)}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        """The vocabulary of the characters in ``text``."""
        return cls(set(text))

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    def encode_array(self, text: str) -> np.ndarray:
        """Ids (``uint32[len(text)]``); characters outside the vocabulary give ``UNK_ID``."""
        cp = codepoints(text)
        idx = np.minimum(np.searchsorted(self._cp, cp), self._cp.size - 1)
        return np.where(self._cp[idx] == cp, idx + 1, UNK_ID).astype(np.uint32)

    def decode(self, ids) -> str:
        arr = self._check_ids(ids)
        table = np.array([UNK_TEXT, *self.chars])
        return "".join(table[arr].tolist())

    def pieces(self) -> list[str]:
        return [UNK_TEXT, *self.chars]

    def to_json(self) -> str:
        return json.dumps({"type": "char", "version": 1, "unk": UNK, "chars": list(self.chars)},
                          ensure_ascii=True)

    @classmethod
    def load(cls, path: str | Path) -> "CharTokenizer":
        obj = _read_json(path)
        if obj.get("type") != "char" or not isinstance(obj.get("chars"), list):
            raise ParameterError(f"path: {path} is not a neurobit character tokenizer")
        return cls(obj["chars"])


def _tokenizers_lib():
    try:
        import tokenizers
    except ImportError:
        raise BackendError("tokenizer: BPE needs the Hugging Face tokenizers library; "
                           "install it with `pip install tokenizers`") from None
    return tokenizers


class BPETokenizer(_Tokenizer):
    """Byte-level BPE from Hugging Face ``tokenizers``; exact round trip for every string."""

    kind = "bpe"

    def __init__(self, tok):
        self._tok = tok

    @classmethod
    def train(cls, text: str | Iterable[str], vocab_size: int) -> "BPETokenizer":
        """Train on ``text`` until ``vocab_size`` ids (256 bytes + merges) or no pair repeats."""
        if int(vocab_size) < 257:
            raise ParameterError(
                f"vocab_size: byte-level BPE needs more than 256, got {vocab_size}")
        lib = _tokenizers_lib()
        tok = lib.Tokenizer(lib.models.BPE())
        tok.pre_tokenizer = lib.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = lib.decoders.ByteLevel()
        trainer = lib.trainers.BpeTrainer(
            vocab_size=int(vocab_size), show_progress=False, special_tokens=[],
            initial_alphabet=lib.pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator([text] if isinstance(text, str) else text, trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode_array(self, text: str, chunk_chars: int = 1 << 14) -> np.ndarray:
        """Ids (``uint32``), encoded in parallel chunks cut at ``"X\\nY"`` (X, Y not spaces).

        A line break between two non-space characters is always a pre-token boundary of the
        GPT-2 regex, so the chunks encode to exactly the ids of the whole text.
        """
        chunks, start = [], 0
        while start < len(text):
            end = min(start + chunk_chars, len(text))
            while end < len(text) and not (text[end - 1] == "\n" and not text[end].isspace()
                                           and end >= 2 and not text[end - 2].isspace()):
                end += 1
            chunks.append(text[start:end])
            start = end
        encs = self._tok.encode_batch(chunks, add_special_tokens=False)
        parts = [np.asarray(e.ids, dtype=np.uint32) for e in encs]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint32)

    def decode(self, ids) -> str:
        return self._tok.decode(self._check_ids(ids).tolist(), skip_special_tokens=False)

    def pieces(self) -> list[str]:
        return [self._tok.decode([i]) for i in range(self.vocab_size)]

    def to_json(self) -> str:
        return self._tok.to_str()

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        _read_json(path)
        return cls(_tokenizers_lib().Tokenizer.from_file(str(path)))


def _read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"path: tokenizer file {path} does not exist")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ParameterError(f"path: {path} is not a JSON tokenizer ({exc})") from None
    if not isinstance(obj, dict):
        raise ParameterError(f"path: {path} is not a JSON tokenizer object")
    return obj


def load_tokenizer(path: str | Path) -> CharTokenizer | BPETokenizer:
    """Load either tokenizer from its JSON file (the kind is read from the file)."""
    obj = _read_json(path)
    if obj.get("type") == "char":
        return CharTokenizer.load(path)
    if isinstance(obj.get("model"), dict) and obj["model"].get("type") == "BPE":
        return BPETokenizer.load(path)
    raise ParameterError(f"path: {path} is neither a character nor a BPE tokenizer")


def tokenizer_from_json(text: str) -> CharTokenizer | BPETokenizer:
    """A tokenizer from the JSON text of its file (as stored inside a compiled model)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParameterError(f"tokenizer: not JSON ({exc})") from None
    if isinstance(obj, dict) and obj.get("type") == "char" and isinstance(obj.get("chars"), list):
        return CharTokenizer(obj["chars"])
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) \
            and obj["model"].get("type") == "BPE":
        return BPETokenizer(_tokenizers_lib().Tokenizer.from_str(text))
    raise ParameterError("tokenizer: neither a character nor a BPE tokenizer")
