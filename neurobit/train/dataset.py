"""Prepared token data: tokenize a corpus split once, cache it memory-mapped, draw batches.

Cache layout (``cache_dir`` argument, else ``$NEUROBIT_CACHE``, else ``~/.cache/neurobit``)::

    <cache_dir>/prepared/<source>-<tokenizer kind>-<key[:16]>/
        train.npy  val.npy              token ids, uint16 (vocab <= 65536) or uint32
        train_words.npy  val_words.npy  causal FNV-1a word hash per token, uint32 (0 = separator)
        tokenizer.json                  the tokenizer that made the ids
        manifest.json                   written last; its presence marks a complete cache

``key`` is the sha256 of (format version, sha256 of the train and validation text, tokenizer
fingerprint), so a changed text or tokenizer gets a new directory and is tokenized afresh,
and an unchanged one is read back without tokenizing. Every file is written to a hidden
temporary name and moved into place with ``os.replace``: an interrupted run leaves at most a
hidden ``.<name>.tmp-*`` file, never a partial file under a final name, and no manifest.
Arrays are opened with ``np.load(mmap_mode="r")`` (``np.memmap``, pickle never allowed).

Batches: ``get_batch(split, B, T, generator)`` draws ``B`` window starts uniformly from
``[0, N - T)`` with ``torch.randint(generator=...)`` and returns ``x = ids[s : s + T]``,
``y = ids[s + 1 : s + T + 1]`` and the word ids of ``x`` (see ``neurobit.train.tokenizer``),
each ``[B, T]`` int64. Word hashes come from the whole split, so a window that starts inside
a word keeps the hash of the word's earlier characters (still causal).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from neurobit.errors import ParameterError
from neurobit.train.corpus import CorpusSplit, split_corpus
from neurobit.train.tokenizer import (
    DEFAULT_WORD_BUCKETS, BPETokenizer, CharTokenizer, bucket_word_hashes, load_tokenizer,
)

FORMAT_VERSION = 1
SPLITS = ("train", "val")
WORD_HASH = "fnv1a32-prefix; word chars isalnum or apostrophe; per-code-point lowercase"


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` if given, else ``$NEUROBIT_CACHE`` if set, else ``~/.cache/neurobit``."""
    if cache_dir is None:
        cache_dir = os.environ.get("NEUROBIT_CACHE") or Path.home() / ".cache" / "neurobit"
    return Path(cache_dir).expanduser()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _slug(source: str) -> str:
    name = Path(source).name if source != "shakespeare" else source
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "corpus"


def _write_npy(f, arr: np.ndarray) -> None:
    """Serialise ``arr`` into the open file ``f`` (a seam the crash-safety tests replace)."""
    np.save(f, arr, allow_pickle=False)


def _atomic_write(path: Path, write) -> None:
    """Call ``write(f)`` on a hidden temporary file, fsync it, then ``os.replace`` onto ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class PreparedData:
    """Token ids and word hashes of both splits, memory-mapped from a cache directory."""

    path: Path
    manifest: dict
    arrays: dict[str, np.ndarray] = field(repr=False)

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    @property
    def train(self) -> np.ndarray:
        return self.arrays["train"]

    @property
    def val(self) -> np.ndarray:
        return self.arrays["val"]

    def tokenizer(self) -> CharTokenizer | BPETokenizer:
        """The tokenizer that made the ids (read from ``tokenizer.json``)."""
        return load_tokenizer(self.path / "tokenizer.json")

    @classmethod
    def open(cls, path: str | Path, key: str | None = None) -> "PreparedData":
        """Open a complete cache directory; ``ParameterError`` if it is missing or inconsistent."""
        path = Path(path)
        try:
            manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ParameterError(f"path: {path} holds no readable prepared data ({exc})") from None
        if manifest.get("format_version") != FORMAT_VERSION or (key and manifest.get("key") != key):
            raise ParameterError(
                f"path: the manifest in {path} does not match this corpus/tokenizer")
        arrays = {}
        for split in SPLITS:
            n = manifest["counts"][split]["tokens"]
            for name in (split, f"{split}_words"):
                try:
                    arr = np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError) as exc:
                    raise ParameterError(
                        f"path: {path / (name + '.npy')} is unreadable ({exc})") from None
                if arr.shape != (n,):
                    raise ParameterError(f"path: {name}.npy in {path} has shape {arr.shape}, "
                                         f"manifest says ({n},)")
                arrays[name] = arr
        return cls(path, manifest, arrays)

    def get_batch(
        self,
        split: str,
        batch_size: int,
        block_size: int,
        generator: torch.Generator,
        n_word_buckets: int = DEFAULT_WORD_BUCKETS,
        device: str | torch.device | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Random windows ``(x, y, word_ids)``, each ``[batch_size, block_size]`` int64.

        ``y[:, t] = x[:, t + 1]`` for ``t < T - 1`` and ``y[:, T-1]`` is the token after the
        window. Deterministic for a given generator state.
        """
        if split not in SPLITS:
            raise ParameterError(f"split: must be 'train' or 'val', got {split!r}")
        if int(batch_size) < 1:
            raise ParameterError(f"batch_size: must be >= 1, got {batch_size}")
        if int(block_size) < 1:
            raise ParameterError(f"block_size: must be >= 1, got {block_size}")
        if not isinstance(generator, torch.Generator):
            raise ParameterError("generator: pass a seeded torch.Generator (explicit randomness)")
        tokens, words = self.arrays[split], self.arrays[f"{split}_words"]
        n = tokens.shape[0]
        if n < block_size + 1:
            raise ParameterError(
                f"block_size: {block_size} needs at least {block_size + 1} tokens; "
                f"the {split} split has {n}")
        starts = torch.randint(0, n - block_size, (int(batch_size),), generator=generator)
        idx = starts.numpy()[:, None] + np.arange(int(block_size) + 1)
        chunk = torch.from_numpy(tokens[idx].astype(np.int64))
        x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
        w = bucket_word_hashes(words[idx[:, :-1]], n_word_buckets)
        if device is not None:
            x, y, w = x.to(device), y.to(device), w.to(device)
        return x, y, w


def prepare(
    corpus: CorpusSplit | str | Path = "shakespeare",
    tokenizer: CharTokenizer | BPETokenizer | None = None,
    cache_dir: str | Path | None = None,
) -> PreparedData:
    """Tokenize ``corpus`` once into the cache and return it memory-mapped.

    ``corpus`` is a :class:`CorpusSplit` or a source for :func:`split_corpus`; ``tokenizer``
    defaults to a :class:`CharTokenizer` of the training text. A cache whose manifest
    matches is reused without tokenizing.
    """
    split = corpus if isinstance(corpus, CorpusSplit) else split_corpus(corpus)
    if tokenizer is None:
        tokenizer = CharTokenizer.train(split.train)
    texts = {"train": split.train, "val": split.val}
    text_sha = {name: _sha256(t) for name, t in texts.items()}
    tok_sha = tokenizer.fingerprint()
    key = hashlib.sha256(json.dumps(
        [FORMAT_VERSION, text_sha["train"], text_sha["val"], tok_sha]).encode()).hexdigest()
    root = resolve_cache_dir(cache_dir) / "prepared"
    path = root / f"{_slug(split.source)}-{tokenizer.kind}-{key[:16]}"
    if (path / "manifest.json").is_file():
        try:
            return PreparedData.open(path, key)
        except ParameterError:
            pass  # incomplete or stale: rebuild below
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParameterError(f"cache_dir: cannot create {path} ({exc.strerror})") from None
    (path / "manifest.json").unlink(missing_ok=True)
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    counts = {}
    for name, text in texts.items():
        ids = np.asarray(tokenizer.encode_array(text))
        words = tokenizer.token_word_hashes(ids)
        _atomic_write(path / f"{name}.npy", lambda f, a=ids.astype(dtype): _write_npy(f, a))
        _atomic_write(path / f"{name}_words.npy", lambda f, a=words: _write_npy(f, a))
        counts[name] = {"characters": len(text), "tokens": int(ids.size),
                        "unknown": int((ids == 0).sum()) if tokenizer.kind == "char" else 0}
    _atomic_write(path / "tokenizer.json", lambda f: f.write(tokenizer.to_json().encode("utf-8")))
    manifest = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "source": split.source,
        "split": {"rule": split.rule, "train_documents": list(split.train_documents),
                  "val_documents": list(split.val_documents)},
        "text_sha256": text_sha,
        "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                      "sha256": tok_sha},
        "dtype": np.dtype(dtype).name,
        "word_hash": WORD_HASH,
        "counts": counts,
    }
    _atomic_write(path / "manifest.json",
                  lambda f: f.write(json.dumps(manifest, indent=2).encode("utf-8")))
    return PreparedData.open(path, key)
