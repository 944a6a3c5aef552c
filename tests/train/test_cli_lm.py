"""``neurobit train`` / ``neurobit generate`` end to end on sims/lm/tiny.yaml (real Shakespeare).

One module-scoped run: 20 steps (``--stop-at 20``), a refused second ``train`` (files
untouched), ``--resume`` to the configured 30 steps. Generation from it: greedy output equals
an argmax loop over the model's full forward pass (the step interface and the causal word ids
are right), is deterministic, honours seeds; the collapse guard reports and retries; bad
checkpoints and malformed configs are one-line errors with exit code 2.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from neurobit.train.lm_step import lm_step_fn
from neurobit.decode import CollapseDetector
from neurobit.train.checkpoint import load_checkpoint, load_model
from neurobit.train.run_config import load_run_file
from neurobit.train.tokenizer import load_tokenizer

from cli_runner import invoke, one_error_line

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "sims" / "lm" / "tiny.yaml"
PROMPT = "ROMEO:"


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def metric_rows(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("nbcache")


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache):
    """Train 20 steps, try again without flags, resume to 30; keep what each call saw."""
    out = tmp_path_factory.mktemp("lm") / "run"
    common = ["--set", f"data.cache_dir={cache}", "-q"]
    first = invoke("train", TINY, "-o", out, "--stop-at", 20, *common)
    after_first = {"metrics": metric_rows(out) if first.exit_code == 0 else [],
                   "digests": digests(out) if out.is_dir() else {}}
    again = invoke("train", TINY, "-o", out, *common)
    after_again = digests(out)
    resumed = invoke("train", TINY, "-o", out, "--resume", *common)
    return {"out": out, "first": first, "after_first": after_first, "again": again,
            "after_again": after_again, "resumed": resumed, "cache": cache}


def test_train_writes_a_run(run):
    r, out = run["first"], run["out"]
    assert r.exit_code == 0, r.stderr
    assert "trained" in r.stdout and "steps 0 -> 20 of 30" in r.stdout
    assert r.stderr.startswith("data: shakespeare, char tokenizer")
    files = run["after_first"]["digests"]
    for name in ("latest", "ckpt_00000020/model.safetensors", "ckpt_00000020/optim.safetensors",
                 "ckpt_00000020/state.json", "ckpt_00000020/config.yaml", "metrics.jsonl",
                 "loss_curve.png", "config.yaml", "run.yaml", "tokenizer.json", "data.json"):
        assert name in files, name
    rows = run["after_first"]["metrics"]
    train_rows = [x for x in rows if "loss" in x]
    assert [x["step"] for x in train_rows] == list(range(1, 21))
    assert [x["step"] for x in rows if "val_loss" in x] == [15]
    losses = [x["loss"] for x in train_rows]
    assert losses[0] == pytest.approx(torch.log(torch.tensor(80.0)).item(), abs=0.3)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.8      # measured 4.45 -> 3.05
    assert all(x["tokens_per_s"] > 0 for x in train_rows)


def test_run_saves_its_tokenizer_and_resolved_config(run):
    out = run["out"]
    tok = load_tokenizer(out / "tokenizer.json")
    assert tok.kind == "char" and tok.vocab_size == 80
    model, cfg = load_model(out)
    assert cfg.model.vocab_size == tok.vocab_size == model.head.weight.shape[0]
    resolved = load_run_file(out / "run.yaml").config
    shipped = load_run_file(TINY).config
    assert resolved.model.vocab_size == 80
    assert resolved.model.model_dump(exclude={"vocab_size"}) == \
        shipped.model.model_dump(exclude={"vocab_size"})
    assert resolved.data.cache_dir == str(run["cache"])
    assert json.loads((out / "data.json").read_text())["tokenizer"]["sha256"] == \
        tok.fingerprint()


def test_second_train_is_refused_and_leaves_the_run_untouched(run):
    line = one_error_line(run["again"])
    assert "--resume" in line and "--force" in line and "step 20" in line
    assert run["after_again"] == run["after_first"]["digests"]


def test_resume_continues_to_the_configured_steps(run):
    r, out = run["resumed"], run["out"]
    assert r.exit_code == 0, r.stderr
    assert "steps 20 -> 30 of 30" in r.stdout
    assert (out / "latest").read_text().strip() == "ckpt_00000030"
    assert load_checkpoint(out).step == 30
    assert not (out / "ckpt_00000020").exists()
    rows = metric_rows(out)
    assert [x["step"] for x in rows if "loss" in x] == list(range(1, 31))
    assert [x["step"] for x in rows if "val_loss" in x] == [15, 30]
    assert rows[:21] == run["after_first"]["metrics"]       # the first 20 steps kept as they were


def test_resume_with_another_config_and_force(run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(run["out"], out)
    before = digests(out)
    common = ["--set", f"data.cache_dir={run['cache']}", "-q"]
    line = one_error_line(invoke("train", TINY, "-o", out, "--resume", "--set", "train.lr=0.02",
                                 *common))
    assert "resume" in line and "differs" in line
    assert digests(out) == before
    one_error_line(invoke("train", TINY, "-o", out, "--resume", "--force", *common))
    r = invoke("train", TINY, "-o", out, "--force", "--set", "train.steps=3", *common)
    assert r.exit_code == 0, r.stderr
    assert (out / "latest").read_text().strip() == "ckpt_00000003"
    assert sorted(p.name for p in out.glob("ckpt_*")) == ["ckpt_00000003"]
    assert [x["step"] for x in metric_rows(out) if "loss" in x] == [1, 2, 3]


def _reference_greedy(model, tok, prompt: str, n: int) -> str:
    """Argmax loop over the full forward pass with word ids of the whole running text."""
    ids = tok.encode(prompt)
    with torch.no_grad():
        for _ in range(n):
            x = torch.tensor(ids)[None]
            ids.append(int(model(x, tok.word_ids(ids)[None])[0, -1].argmax()))
    return prompt + tok.decode(ids[len(prompt):])


def test_generate_greedy_is_the_models_argmax_and_deterministic(run):
    out, n = run["out"], 40
    args = ("generate", out, "--prompt", PROMPT, "--max-new-tokens", n, "--greedy",
            "--no-collapse-guard")
    r1, r2 = invoke(*args), invoke(*args)
    assert r1.exit_code == 0, r1.stderr
    assert r1.stdout == r2.stdout
    text = r1.stdout[:-1]
    assert r1.stdout.endswith("\n") and text.startswith(PROMPT) and len(text) == len(PROMPT) + n
    model, _ = load_model(out)
    tok = load_tokenizer(out / "tokenizer.json")
    assert text == _reference_greedy(model, tok, PROMPT, n)
    assert "retries: 0" in r1.stderr.splitlines() and "cautious: no" in r1.stderr.splitlines()


def test_step_fn_logits_equal_the_forward_pass(run):
    """Incremental step_fn (prompt, then one token at a time) == forward on the whole text,
    word ids included (without them the logits move by far more than the tolerance)."""
    model, _ = load_model(run["out"])
    tok = load_tokenizer(run["out"] / "tokenizer.json")
    text = "HAMLET: To be, or not to be, that is the question: whether 'tis nobler"
    ids = torch.tensor(tok.encode(text))
    with torch.no_grad():
        ref = model(ids[None], tok.word_ids(ids)[None])[0]
        no_words = model(ids[None], None)[0]
    step, state, worst = lm_step_fn(model, tok), None, 0.0
    for t in range(7, len(ids) + 1):
        logits, state = step(ids[None, :t], state)
        worst = max(worst, float((logits[0] - ref[t - 1]).abs().max()))
    assert worst < 1e-4                                       # measured 1.4e-6
    assert float((no_words - ref).abs().max()) > 0.05        # measured 0.36


def test_generate_sampling_follows_the_seed(run):
    def gen(seed):
        r = invoke("generate", run["out"], "--prompt", PROMPT, "--max-new-tokens", 40,
                   "--temperature", 0.9, "--top-k", 20, "--seed", seed, "--no-collapse-guard")
        assert r.exit_code == 0, r.stderr
        return r.stdout
    a, b, c = gen(3), gen(3), gen(4)
    assert a == b and a != c
    assert len(a) == len(PROMPT) + 40 + 1


def test_generate_collapse_guard_reports_and_retries(run):
    """Greedy decoding of this 30-step model loops ("The the the ..."); the guard catches it,
    cuts attempt 0 and retries once with conservative sampling."""
    out, n = run["out"], 80
    free = invoke("generate", out, "--prompt", PROMPT, "--max-new-tokens", n, "--greedy",
                  "--no-collapse-guard")
    tok = load_tokenizer(out / "tokenizer.json")
    event = CollapseDetector().first_event(tok.encode(free.stdout[len(PROMPT):-1]))
    assert event is not None, free.stdout              # the precondition of this test
    r = invoke("generate", out, "--prompt", PROMPT, "--max-new-tokens", n, "--greedy")
    assert r.exit_code == 0, r.stderr
    err = r.stderr.splitlines()
    collapse = [ln for ln in err if ln.startswith("collapse: ")]
    assert collapse[0].startswith(f"collapse: attempt 0: {event.reason}")
    assert f"cut at token {event.position}" in collapse[0]
    assert "retries: 1" in err
    cautious = [ln for ln in err if ln.startswith("cautious: ")]
    assert len(collapse) in (1, 2) and len(cautious) == 1
    assert cautious[0] == "cautious: no" if len(collapse) == 1 else \
        cautious[0].startswith("cautious: yes")
    assert r.stdout != free.stdout and len(r.stdout) <= len(free.stdout)


def test_generate_bad_checkpoint_is_one_line(run, tmp_path):
    assert "no such checkpoint" in one_error_line(
        invoke("generate", tmp_path / "missing", "--prompt", "x"))
    assert "not a neurobit checkpoint" in one_error_line(
        invoke("generate", tmp_path, "--prompt", "x"))
    assert "not a neurobit checkpoint" in one_error_line(
        invoke("generate", TINY, "--prompt", "x"))
    broken = tmp_path / "broken"
    shutil.copytree(run["out"], broken)
    ck = broken / (broken / "latest").read_text().strip()
    (ck / "model.safetensors").write_bytes(b"\x00" * 64)
    assert "unreadable checkpoint" in one_error_line(
        invoke("generate", broken, "--prompt", "x"))
    no_tok = tmp_path / "no_tok"
    shutil.copytree(run["out"], no_tok)
    (no_tok / "tokenizer.json").unlink()
    assert "tokenizer.json" in one_error_line(invoke("generate", no_tok, "--prompt", "x"))


def _line_of(text: str, needle: str) -> int:
    return next(i for i, ln in enumerate(text.splitlines(), 1) if needle in ln)


@pytest.mark.parametrize("edit, key, msg", [
    ("  d_key: 16\n", "model.n_unitz", "unknown key"),
    ("  block_size: 64\n", "train.block_sise", "unknown key"),
    ("  tokenizer: char\n", "data.vocab", "unknown key"),
])
def test_malformed_config_names_key_and_line(tmp_path, edit, key, msg):
    text = TINY.read_text()
    section, name = key.split(".")
    bad = text.replace(edit, edit + f"  {name}: 3\n", 1)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(bad)
    line = one_error_line(invoke("train", cfg, "-o", tmp_path / "out"))
    assert line == f"neurobit: error: {cfg}:{_line_of(bad, f'  {name}: 3')}: {key}: {msg}"
    assert not (tmp_path / "out").exists()


def test_bad_values_are_located(tmp_path, cache):
    text = TINY.read_text()
    r = invoke("train", TINY, "-o", tmp_path / "o", "--set", "train.lr=1e-4")
    assert one_error_line(r).endswith(
        f"{TINY}:{_line_of(text, 'min_lr:')}: train.min_lr: 0.001 exceeds lr=0.0001")
    r = invoke("train", TINY, "-o", tmp_path / "o", "--set", "data.tokenizer=word")
    assert f"{TINY}:{_line_of(text, 'tokenizer: char')}: data.tokenizer:" in one_error_line(r)
    r = invoke("train", TINY, "-o", tmp_path / "o", "--set", f"data.cache_dir={cache}",
               "--set", "model.vocab_size=70")
    assert "model.vocab_size: 70 does not match the tokenizer's 80 ids" in one_error_line(r)
    assert not (tmp_path / "o").exists()


def test_shipped_study_config_validates():
    run = load_run_file(REPO / "sims" / "lm" / "shakespeare.yaml")
    cfg = run.with_vocab(80)
    assert not run.vocab_given and cfg.data.tokenizer == "char"
    from neurobit.models.brain_lm import brain_parameter_count
    n = brain_parameter_count(cfg.model)
    assert 1.4e6 < n < 1.8e6                                # "about 1.6M" in the file


def test_compile_then_generate_matches_the_checkpoint(run, tmp_path):
    """`neurobit compile RUN -o M` packs the model (<= 2 bits per ternary weight) with its
    tokenizer; `neurobit generate M` gives the checkpoint's greedy text (the compiled
    per-token kernel agrees with the reference except at threshold ties: none here)."""
    model_file = tmp_path / "tiny.nbc"
    r = invoke("compile", run["out"], "-o", model_file)
    assert r.exit_code == 0, r.stderr
    assert "(2.00 bits each)" in r.stdout
    args = ("--prompt", PROMPT, "--max-new-tokens", 60, "--greedy", "--no-collapse-guard")
    ref = invoke("generate", run["out"], *args)
    com = invoke("generate", model_file, *args)
    assert com.exit_code == 0, com.stderr
    assert com.stdout == ref.stdout
    again = invoke("compile", run["out"], "-o", model_file)
    assert "exists" in one_error_line(again)


def test_compile_and_simulate_a_circuit(tmp_path):
    """A circuit YAML compiles to a packed file that `neurobit simulate` runs (fused stepper),
    with the spikes of the YAML's own run."""
    from neurobit.record.sonata_reader import read_run
    model_file, a, b = tmp_path / "ei.nbc", tmp_path / "a.h5", tmp_path / "b.h5"
    circuit = REPO / "sims" / "ei_balanced.yaml"
    assert invoke("compile", circuit, "-o", model_file).exit_code == 0
    short = ("--set", "duration_ms=100", "-q")
    assert invoke("simulate", circuit, "-o", a, *short).exit_code == 0
    assert invoke("simulate", model_file, "-o", b, *short).exit_code == 0
    ra, rb = read_run(a), read_run(b)
    for pop in ("exc", "inh"):
        sa, sb = ra.spikes(pop), rb.spikes(pop)
        assert len(sa[0]) > 50
        assert all(np.array_equal(x, y) for x, y in zip(sa, sb))
