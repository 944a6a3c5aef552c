"""``neurobit learn`` / ``neurobit history`` end to end on a tiny BrainLM (3 steps of
``neurobit train`` on a few hundred characters): a session prints its summary (losses
before/after, episodes stored, integrity) and lowers the loss on its text; ``history`` prints
the create / attach_lora / consolidate events; ``generate`` still works on the original
checkpoint; bad ``--data`` (missing, empty, a folder), a missing checkpoint, an out-of-bounds
``--lr`` and ``history`` without an instance are one-line errors with exit code 2."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from neurobit.memory.lifecycle import read_log

from cli_runner import invoke, one_error_line

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CORPUS = ("The king is dead. Long live the king! What say you, my lord? I say the king "
          "is wise and the queen is fair. ") * 6
TEXT = ("We the people of this nation, in order to form a more perfect union, do ordain "
        "this budget. The economy is strong and the union is strong. ") * 3
RUN_YAML = """model: {kind: brain, n_word_buckets: 64, d_model: 16, n_layers: 1, n_circuits: 2,
        n_units: 8, d_circuit: 4, d_key: 4, spike_steps: 2}
train: {steps: 3, batch_size: 4, block_size: 16, lr: 1.0e-2, min_lr: 1.0e-3, warmup_steps: 1,
        eval_interval: 3, eval_batches: 1, checkpoint_interval: 3, seed: 0, num_threads: 1}
data: {source: corpus.txt, tokenizer: char, val_fraction: 0.2, cache_dir: cache}
"""
LEARN = ["--window", "24", "--steps", "30", "--lr", "2e-2", "--max-lr", "5e-2",
         "--batch-size", "6", "--old-sequences", "4", "--replay-ratio", "0.34", "--rank", "4",
         "--select", "64"]


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A tiny run directory, one `neurobit learn` session on it (default instance dir)."""
    folder = tmp_path_factory.mktemp("cli")
    (folder / "corpus.txt").write_text(CORPUS)
    (folder / "run.yaml").write_text(RUN_YAML)
    ckpt = folder / "run"
    r = invoke("train", folder / "run.yaml", "-o", ckpt, "-q")
    assert r.exit_code == 0, r.stderr
    (folder / "text.txt").write_text(TEXT)
    r = invoke("learn", ckpt, "--data", folder / "text.txt", *LEARN)
    return {"ckpt": ckpt, "folder": folder, "learn": r}


def test_learn_prints_a_summary_and_lowers_the_loss(learned):
    r = learned["learn"]
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    assert len(out.splitlines()) <= 24                     # one screen
    n = (len(TEXT) - 1) // 24
    assert f"episodes stored {n} (buffer {n})" in out
    assert re.search(r"integrity 1\.000, lr 0\.02, 30 steps", out)
    before, after = map(float, re.search(r"loss on the text: +([\d.]+) -> ([\d.]+)", out).groups())
    assert after < 0.9 * before
    assert re.search(r"loss on the old data: +[\d.]+ -> [\d.]+", out)
    events = read_log(learned["ckpt"] / "lifecycle" / "lifecycle.jsonl")
    assert [e["kind"] for e in events] == ["create", "attach_lora", "consolidate"]
    assert events[-1]["params"]["source"] == str(learned["folder"] / "text.txt")


def test_history_prints_the_log(learned):
    r = invoke("history", learned["ckpt"])
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    model_id = read_log(learned["ckpt"] / "lifecycle" / "lifecycle.jsonl")[0]["model_id"]
    assert lines[0].startswith(f"model {model_id}")
    assert [ln.split()[4] for ln in lines[1:]] == ["create", "attach_lora", "consolidate"]
    assert "lr=0.02" in lines[3] and "steps=30" in lines[3]
    # the instance directory itself works too
    assert invoke("history", learned["ckpt"] / "lifecycle").stdout == r.stdout


def test_generate_still_works_on_the_original_checkpoint(learned):
    r = invoke("generate", learned["ckpt"], "--prompt", "The ", "--max-new-tokens", "8",
               "--greedy", "--no-collapse-guard")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("The ") and "generated 8 tokens" in r.stderr


def test_bad_input_is_one_line_with_exit_code_2(learned, tmp_path):
    ckpt = learned["ckpt"]
    missing = tmp_path / "missing.txt"
    assert str(missing) in one_error_line(invoke("learn", ckpt, "--data", missing))
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n")
    line = one_error_line(invoke("learn", ckpt, "--data", empty))
    assert str(empty) in line and "empty" in line
    assert "not a file" in one_error_line(invoke("learn", ckpt, "--data", tmp_path))
    assert "no such checkpoint" in one_error_line(
        invoke("learn", tmp_path / "nockpt", "--data", learned["folder"] / "text.txt"))
    assert "--lr" in one_error_line(invoke("learn", ckpt, "--data", learned["folder"] /
                                           "text.txt", "--lr", "1.0", "--max-lr", "0.1"))
    assert "no model instance" in one_error_line(invoke("history", tmp_path))
    # the failed calls logged nothing
    assert len(read_log(ckpt / "lifecycle" / "lifecycle.jsonl")) == 3


def test_export_writes_a_merged_run_that_generate_reads(learned, tmp_path):
    from neurobit.memory.session import load_checkpoint_parts, mean_loss, text_windows
    from neurobit.train.tokenizer import DEFAULT_WORD_BUCKETS
    ckpt, exp = learned["ckpt"], tmp_path / "exported"
    r = invoke("learn", ckpt, "--data", learned["folder"] / "text.txt", "--sessions-dir",
               tmp_path / "inst", "--export", exp, *LEARN)
    assert r.exit_code == 0, r.stderr
    assert f"exported {exp}" in r.stdout and "ternary codes changed" in r.stdout
    g = invoke("generate", exp, "--prompt", "The ", "--max-new-tokens", "4", "--greedy")
    assert g.exit_code == 0, g.stderr
    base, _, tok, _ = load_checkpoint_parts(ckpt)
    merged, _, _, _ = load_checkpoint_parts(exp)
    batch = text_windows(TEXT, tok, DEFAULT_WORD_BUCKETS, 24, 100)
    assert mean_loss(merged, batch) < 0.95 * mean_loss(base, batch)   # the learning survives
    assert "exists" in one_error_line(invoke("learn", ckpt, "--data", learned["folder"] /
                                             "text.txt", "--export", exp))
