"""Training loop: schedule, metrics and plot, checkpoints (no pickle, atomic), exact resume,
and 2-process data parallel equal to 1 process with the same global batch."""
import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from safetensors import safe_open

from neurobit.errors import ConfigError
from neurobit.models.lm_config import BrainLMConfig, GPTConfig, LMRunConfig, TrainConfig
from neurobit.train import checkpoint as ckpt_mod
from neurobit.train.checkpoint import latest_checkpoint, load_checkpoint, load_model
from neurobit.train.loop import lr_at, train

TEXT = ("it was the best of times, it was the worst of times, it was the age of wisdom, "
        "it was the age of foolishness. ") * 12


class TextData:
    """A stand-in for the data layer: random windows of a fixed text, word ids by spaces."""

    def __init__(self, text: str = TEXT):
        chars = sorted(set(text))
        self.vocab_size = len(chars)
        self.ids = torch.tensor([chars.index(c) for c in text])
        self.words = torch.cumsum(torch.tensor([c == " " for c in text]), 0) % 31
        cut = int(0.9 * len(text))
        self.split = {"train": (0, cut), "val": (cut, len(text))}

    def get_batch(self, split, batch_size, block_size, generator):
        lo, hi = self.split[split]
        i = torch.randint(lo, hi - block_size - 1, (batch_size,), generator=generator)
        idx = i[:, None] + torch.arange(block_size)
        return self.ids[idx], self.ids[idx + 1], self.words[idx]


def brain_cfg(vocab):
    return BrainLMConfig(vocab_size=vocab, n_word_buckets=31, d_model=32, n_layers=1,
                         n_circuits=2, n_units=16, d_circuit=8, d_key=8)


def train_cfg(**kw):
    base = dict(steps=12, batch_size=4, block_size=16, lr=1e-2, min_lr=1e-3, warmup_steps=3,
                eval_interval=6, eval_batches=1, checkpoint_interval=100, num_threads=1,
                progress=False)
    return TrainConfig(**{**base, **kw})


def test_lr_schedule():
    c = TrainConfig(steps=110, lr=1.0, min_lr=0.1, warmup_steps=10)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0)
    assert lr_at(60, c) == pytest.approx(0.55)          # half-way down the cosine
    assert lr_at(110, c) == pytest.approx(0.1)
    assert all(lr_at(i, c) >= lr_at(i + 1, c) for i in range(10, 110))


def test_time_budget_schedule_and_stop(tmp_path):
    """With max_seconds the cosine follows the budget fraction, and training stops (with a
    final validation and checkpoint) once the budget is spent, well before ``steps``."""
    c = TrainConfig(steps=10_000, lr=1.0, min_lr=0.1, warmup_steps=10, max_seconds=100.0)
    assert lr_at(5, c, 0.0) == pytest.approx(0.6)                   # warmup still by step
    assert lr_at(500, c, 50.0) == pytest.approx(0.55)               # half the budget
    assert lr_at(20, c, 100.0) == pytest.approx(0.1)
    data = TextData()
    train(brain_cfg(data.vocab_size), train_cfg(steps=1), data, tmp_path / "warm")  # jit
    res = train(brain_cfg(data.vocab_size), train_cfg(steps=100_000, max_seconds=1.5,
                                                      eval_interval=10_000), data, tmp_path)
    assert 1.5 <= res.train_seconds < 1.5 + 1.0                     # stops within one step
    assert 3 < len(res.steps) < 100_000
    assert res.val_losses and res.val_losses[-1][0] == res.steps[-1]
    ck = load_checkpoint(tmp_path)
    assert ck.step == res.steps[-1] and ck.train_seconds == pytest.approx(res.train_seconds)
    again = train(brain_cfg(data.vocab_size), train_cfg(steps=100_000, max_seconds=1.5,
                                                        eval_interval=10_000), data, tmp_path,
                  resume=True)
    assert again.steps == []                                         # the budget is spent


def test_train_writes_metrics_plot_config_and_learns(tmp_path):
    data = TextData()
    res = train(brain_cfg(data.vocab_size), train_cfg(steps=30, eval_interval=10), data,
                tmp_path)
    assert res.steps == list(range(1, 31))
    assert sum(res.losses[-5:]) / 5 < 0.7 * res.losses[0]
    assert res.val_losses[-1][1] < 0.8 * res.val_losses[0][1] + 0.5
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 31))
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in train_rows)
    assert [r["step"] for r in rows if "val_loss" in r] == [10, 20, 30]
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = LMRunConfig.model_validate(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert cfg.model.d_model == 32 and cfg.train.steps == 30


@pytest.mark.parametrize("kind", ["brain", "gpt"])
def test_resume_continues_exactly(tmp_path, kind):
    data = TextData()
    mc = brain_cfg(data.vocab_size) if kind == "brain" else GPTConfig(
        vocab_size=data.vocab_size, n_word_buckets=31, d_model=32, n_layers=1, n_heads=2)
    tc = train_cfg(checkpoint_interval=4)
    full = train(mc, tc, data, tmp_path / "full")
    first = train(mc, tc, data, tmp_path / "split", stop_at=6)
    second = train(mc, tc, data, tmp_path / "split", resume=True)
    assert first.steps == list(range(1, 7)) and second.resumed_from == 6
    assert second.steps == list(range(7, 13))
    assert first.losses + second.losses == full.losses          # bitwise
    assert full.val_losses == first.val_losses + second.val_losses
    a = load_checkpoint(tmp_path / "full").model
    b = load_checkpoint(tmp_path / "split").model
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(r) for r in lines]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 13))
    assert [r["step"] for r in rows if "val_loss" in r] == [6, 12]


def test_resume_with_other_config_refused(tmp_path):
    data = TextData()
    train(brain_cfg(data.vocab_size), train_cfg(steps=2), data, tmp_path)
    with pytest.raises(ConfigError, match="resume"):
        train(brain_cfg(data.vocab_size), train_cfg(steps=2, lr=5e-3), data, tmp_path,
              resume=True)


def test_checkpoint_has_no_pickle_and_reloads(tmp_path):
    data = TextData()
    res = train(brain_cfg(data.vocab_size), train_cfg(steps=4), data, tmp_path)
    ck = latest_checkpoint(tmp_path)
    assert ck.name == "ckpt_00000004"
    assert sorted(p.name for p in ck.iterdir()) == ["config.yaml", "model.safetensors",
                                                    "optim.safetensors", "state.json"]
    for f in ck.iterdir():  # a pickle stream starts with 0x80 (protocol 2+)
        assert not f.read_bytes().startswith(b"\x80")
    with safe_open(str(ck / "optim.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(k.endswith("/exp_avg_sq") for k in keys) and "rng/data" in keys
    state = json.loads((ck / "state.json").read_text())
    assert state["step"] == 4 and len(state["optimizer"]["param_groups"]) == 2
    model, cfg = load_model(tmp_path)
    x, _, w = data.get_batch("val", 2, 16, torch.Generator().manual_seed(5))
    torch.manual_seed(0)
    ref = train(brain_cfg(data.vocab_size), train_cfg(steps=4), data, tmp_path / "again")
    assert ref.losses == res.losses                             # deterministic from the seed
    model2, _ = load_model(tmp_path / "again")
    assert torch.equal(model(x, w), model2(x, w))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A crash while writing a checkpoint leaves ``latest`` on the previous, complete one;
    the new one appears only through a rename of a finished temporary directory."""
    data = TextData()
    tc = train_cfg(steps=8, checkpoint_interval=4)
    train(brain_cfg(data.vocab_size), tc, data, tmp_path, stop_at=4)
    renames = []
    real_replace = os.replace

    def spy_replace(src, dst):
        renames.append((Path(src).name, Path(dst).name))
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", spy_replace)
    calls = {"n": 0}
    real_save = ckpt_mod.save_file

    def failing_save(tensors, path, metadata=None):
        calls["n"] += 1
        if "optim" in str(path):
            raise OSError("disk full")
        return real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(ckpt_mod, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train(brain_cfg(data.vocab_size), tc, data, tmp_path, resume=True)
    assert latest_checkpoint(tmp_path).name == "ckpt_00000004"
    assert load_checkpoint(tmp_path).step == 4
    assert not (tmp_path / "ckpt_00000008").exists() and renames == []
    monkeypatch.setattr(ckpt_mod, "save_file", real_save)
    train(brain_cfg(data.vocab_size), tc, data, tmp_path, resume=True)
    assert renames[0][0].startswith(".ckpt_00000008.tmp") and renames[0][1] == "ckpt_00000008"
    assert renames[1][0].startswith(".latest.tmp") and renames[1][1] == "latest"
    assert sorted(p.name for p in tmp_path.glob("ckpt_*")) == ["ckpt_00000008"]
    assert not list(tmp_path.glob(".*tmp*"))


def _ddp_worker(rank, world, init_file, out_dir, queue):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        data = TextData()
        res = train(brain_cfg(data.vocab_size), train_cfg(steps=8, batch_size=4,
                                                          dtype="float64"), data, out_dir)
        queue.put((rank, res.losses, res.val_losses))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path):
    data = TextData()
    one = train(brain_cfg(data.vocab_size), train_cfg(steps=8, batch_size=4, dtype="float64"),
                data, tmp_path / "one")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, str(tmp_path / "init"),
                                                   str(tmp_path / "two"), queue))
             for r in range(2)]
    for p in procs:
        p.start()
    got = dict((r, (l, v)) for r, l, v in (queue.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for r in (0, 1):
        losses, vals = got[r]
        assert len(losses) == 8
        assert max(abs(a - b) for a, b in zip(losses, one.losses)) < 1e-9  # float64
        assert max(abs(a[1] - b[1]) for a, b in zip(vals, one.val_losses)) < 1e-9
    assert one.losses[-1] < one.losses[0]   # it trained, so equality is not trivial
    a = load_checkpoint(tmp_path / "one").model
    b = load_checkpoint(tmp_path / "two").model
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
