"""One session of experience and consolidation (neurobit.memory.session) on a tiny BrainLM
trained for a few steps by ``neurobit train`` on a few hundred characters: windows and word
ids match the data layer, the per-window signals are consistent, a session stores its
episodes, changes only adapter parameters, lowers the loss on its text and appends exactly one
lifecycle event (after the first session's create + attach_lora), and the frequency bound
holds consolidation back while still storing the episodes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from neurobit.cli import app
from neurobit.errors import ParameterError
from neurobit.memory.consolidation import ConsolidationConfig
from neurobit.memory.episodic import EpisodicBuffer
from neurobit.memory.lifecycle import read_log, replay
from neurobit.memory.session import (EPISODES, SessionConfig, load_checkpoint_parts,
                                     load_learned, mean_loss, run_session, text_windows,
                                     window_signals)
from neurobit.train.checkpoint import load_model
from neurobit.train.tokenizer import DEFAULT_WORD_BUCKETS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CORPUS = ("The king is dead. Long live the king! What say you, my lord? I say the king "
          "is wise and the queen is fair. ") * 6
TEXT = ("We the people of this nation, in order to form a more perfect union, do ordain "
        "this budget. The economy is strong and the union is strong. ") * 3
N_WIN = (len(TEXT) - 1) // 24   # char tokenizer: one token per character
RUN_YAML = """model:
  kind: brain
  n_word_buckets: 64
  d_model: 16
  n_layers: 1
  n_circuits: 2
  n_units: 8
  d_circuit: 4
  d_key: 4
  spike_steps: 2
train:
  steps: 3
  batch_size: 4
  block_size: 16
  lr: 1.0e-2
  min_lr: 1.0e-3
  warmup_steps: 1
  eval_interval: 3
  eval_batches: 1
  checkpoint_interval: 3
  seed: 0
  num_threads: 1
data:
  source: corpus.txt
  tokenizer: char
  val_fraction: 0.2
  cache_dir: cache
"""


def tiny_checkpoint(folder: Path) -> Path:
    """A 3-step BrainLM run directory written by ``neurobit train``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.txt").write_text(CORPUS)
    (folder / "run.yaml").write_text(RUN_YAML)
    out = folder / "run"
    r = CliRunner().invoke(app, ["train", str(folder / "run.yaml"), "-o", str(out), "-q"])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


def cfg(**kw):
    c = dict(lr=2e-2, max_lr=5e-2, max_steps=30, batch_size=6, replay_ratio=1 / 3)
    c.update(kw.pop("consolidation", {}))
    return SessionConfig(**{"window": 24, "select": 64, "old_sequences": 4, **kw},
                         consolidation=ConsolidationConfig(**c))


def test_text_windows_match_the_data_layer(ckpt):
    _, _, tok, _ = load_checkpoint_parts(ckpt)
    ids = np.asarray(tok.encode(TEXT))
    words = tok.word_ids(ids, DEFAULT_WORD_BUCKETS).numpy()
    x, y, w = text_windows(TEXT, tok, DEFAULT_WORD_BUCKETS, 24, 1000)
    n = (len(ids) - 1) // 24
    assert x.shape == y.shape == w.shape == (n, 24)
    for i in (0, n // 2, n - 1):  # consecutive slices; y the next tokens; causal word ids
        assert np.array_equal(x[i].numpy(), ids[24 * i:24 * i + 24])
        assert np.array_equal(y[i].numpy(), ids[24 * i + 1:24 * i + 25])
        assert np.array_equal(w[i].numpy(), words[24 * i:24 * i + 24])
    xs, _, _ = text_windows(TEXT, tok, DEFAULT_WORD_BUCKETS, 24, 3)  # evenly spaced subset
    mid = int(np.round((n - 1) / 2))
    assert xs.shape == (3, 24) and [torch.equal(xs[j], x[i]) for j, i in
                                    enumerate((0, mid, n - 1))] == [True] * 3
    short, _, _ = text_windows("abc de", tok, DEFAULT_WORD_BUCKETS, 24, 10)
    assert short.shape == (1, 5)
    with pytest.raises(ParameterError, match="data"):
        text_windows("a", tok, DEFAULT_WORD_BUCKETS, 24, 10)


def test_window_signals_are_consistent(ckpt):
    model, _, tok, _ = load_checkpoint_parts(ckpt)
    batch = text_windows(TEXT, tok, DEFAULT_WORD_BUCKETS, 24, 1000)
    sig = window_signals(model, batch, chunk=3)
    n = batch[0].shape[0]
    # equal-length windows: the mean of the per-window losses is the pooled loss
    assert float(sig["loss"].mean()) == pytest.approx(mean_loss(model, batch), rel=1e-5)
    assert ((sig["uncertainty"] > 0) & (sig["uncertainty"] < 1)).all()
    assert ((sig["conflict"] > 0) & (sig["conflict"] <= 1)).all()
    assert sig["state"].shape == (n, model.cfg.n_layers * model.cfg.n_circuits)
    assert ((sig["state"] >= 0) & (sig["state"] <= 1)).all()
    logits = model(*batch[::2])
    assert torch.equal(sig["pred"], logits.argmax(-1))


def test_session_stores_episodes_changes_only_adapters_and_learns(ckpt, tmp_path):
    root = tmp_path / "life"
    r1 = run_session(ckpt, TEXT, cfg(), root=root, source="t.txt")
    assert r1.created and r1.consolidated and r1.steps == 30 and r1.integrity == 1.0
    assert [e["kind"] for e in read_log(root / "lifecycle.jsonl")] == [
        "create", "attach_lora", "consolidate"]
    with EpisodicBuffer(root / EPISODES) as buf:
        assert len(buf) == r1.episodes_stored == r1.n_windows == N_WIN
        eps = buf.get(buf.ids())
    assert all(len(e.input_tokens) == 25 and e.session == "session-1" for e in eps)
    assert r1.text_loss_after < 0.9 * r1.text_loss_before
    assert r1.old_loss_before is not None and r1.old_loss_after is not None

    base, _ = load_model(ckpt)
    learned, _ = load_learned(ckpt, root)
    base_p = dict(base.named_parameters())
    changed = set()
    for n, p in learned.named_parameters():
        if n.endswith((".lora_A", ".lora_B")):
            changed |= {n} if n.endswith(".lora_B") and p.abs().sum() > 0 else set()
        else:
            assert torch.equal(p, base_p[n]), n          # the backbone is bit-identical
    assert changed                                       # the adapters learned
    batch = text_windows(TEXT, *load_checkpoint_parts(ckpt)[2:3], DEFAULT_WORD_BUCKETS, 24, 100)
    assert mean_loss(learned, batch) == pytest.approx(r1.text_loss_after, rel=1e-5)

    # the second session appends exactly one event and its episodes
    text2 = TEXT.replace("budget", "treaty")
    r2 = run_session(ckpt, text2, cfg(), root=root)
    events = read_log(root / "lifecycle.jsonl")
    assert not r2.created and len(events) == 4 and events[-1]["kind"] == "consolidate"
    assert events[-1]["params"]["session"] == r2.session == "session-2"
    assert len(r2.events) == 1
    with EpisodicBuffer(root / EPISODES) as buf:
        assert len(buf) == 2 * N_WIN and len(buf.ids("session-2")) == N_WIN
    # the log replays to the last checkpoint, bit for bit
    fresh, _ = load_model(ckpt)
    replayed = replay(root, fresh)
    final, _ = load_learned(ckpt, root)
    sd = final.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in replayed.state_dict().items())


def test_frequency_bound_stores_but_does_not_consolidate(ckpt, tmp_path):
    root = tmp_path / "life"
    c = cfg(consolidation={"min_interval_s": 3600.0, "max_steps": 2})
    run_session(ckpt, TEXT, c, root=root, now_s=1_000_000.0)
    r = run_session(ckpt, TEXT, c, root=root, now_s=1_000_100.0)
    assert not r.consolidated and r.steps == 0 and r.events == []
    assert r.text_loss_after == r.text_loss_before and r.episodes_total == 2 * N_WIN
    r = run_session(ckpt, TEXT, c, root=root, now_s=1_004_000.0)
    assert r.consolidated and len(r.events) == 1


def test_bad_input(ckpt, tmp_path):
    with pytest.raises(ParameterError, match="data: the text is empty"):
        run_session(ckpt, "  \n", cfg(), root=tmp_path / "a")
    with pytest.raises(ParameterError, match="checkpoint"):
        run_session(tmp_path / "nope", TEXT, cfg(), root=tmp_path / "b")
    with pytest.raises(ParameterError, match="select"):
        SessionConfig(select=0)
