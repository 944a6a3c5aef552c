"""The experiments an ablation grid can run. Each takes one resolved run config (a dict) and
a run folder, trains (resuming from the folder's checkpoint if a kill interrupted it),
evaluates, and returns a flat dict of metrics:

- ``quality`` (vision: test accuracy; lm: validation bits per character or token; the table
  says which is better), ``activity`` (mean fraction of active units per step: spikes for LIF
  units, non-zero outputs otherwise),
- synaptic operations per sample (vision: per image; lm: per token) counted by
  :class:`neurobit.analysis.opcount.OpCounter`: ``acs`` (accumulates: spike inputs or ternary
  weights), ``macs`` (dense multiply-accumulates), ``other_macs`` (matmuls outside layers,
  e.g. attention), and ``energy_j`` per sample from those counts (Horowitz, ISSCC 2014),
- ``params``, ``packed_bytes`` (ternary weights at 2 bits, float weights at 4 bytes),
  ``train_seconds``, ``steps``.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from neurobit.analysis.opcount import count_ops, energy_joules

QUALITY = {"vision": ("test accuracy", "higher"), "lm": ("validation bits/char", "lower")}


def _ops(summary, n: int, precision: str) -> dict:
    return {"acs": summary.acs / n, "macs": summary.macs / n,
            "other_macs": (summary.other_macs or 0) / n,
            "energy_j": energy_joules(summary, precision) / n}


def run_vision(run: dict, out: Path, eval_batch: int, precision: str) -> dict:
    from neurobit.train.classifier import VisionRunConfig, train_classifier
    cfg = VisionRunConfig.model_validate(run)
    res = train_classifier(cfg, out)
    return {"quality": res["test"]["accuracy"], "activity": res["test"]["activity"],
            **vision_ops(out, eval_batch, precision), "params": res["n_params"],
            "packed_bytes": res["packed_bytes"], "train_seconds": res["train_seconds"],
            "steps": res["steps"]}


def vision_ops(out: Path, eval_batch: int, precision: str) -> dict:
    """Operations and energy per image of the trained classifier in ``out``, counted on the
    first ``eval_batch`` test images."""
    from neurobit.train.classifier import load_classifier
    from neurobit.train.images import load_images
    model, cfg = load_classifier(out)
    test = load_images(cfg.data.source, cfg.data.cache_dir).test
    x = torch.from_numpy(test.as_float(slice(0, eval_batch)))
    _, summary = count_ops(model, model, x, torch.Generator().manual_seed(0))
    return _ops(summary, len(x), precision)


def _lm_packed_bytes(model) -> int:
    """Ternary (BitLinear, non-float) weights at 2 bits, every other parameter at 4 bytes."""
    from neurobit.functional.packing import packed_nbytes
    from neurobit.modules.bitlinear import BitLinear
    ternary = set()
    n = 0
    for m in model.modules():
        if isinstance(m, BitLinear) and m.quant != "float":
            ternary.add(id(m.weight))
            n += packed_nbytes(m.weight.numel(), "2bit") + 4
    return n + sum(4 * p.numel() for p in model.parameters() if id(p) not in ternary)


def _lm_activity(summary) -> float | None:
    """Mean fraction of active inputs of the circuits' recurrent synapses (= the spike rate
    of the previous LIF step); None for models without circuits."""
    rec = [v for k, v in summary.per_layer.items() if k.endswith("w_rec") and v.elements]
    if not rec:
        return None
    return sum(v.active for v in rec) / sum(v.elements for v in rec)


def run_lm(run: dict, out: Path, eval_batch: int, precision: str) -> dict:
    from neurobit.decode import CollapseDetector, SamplingConfig, conservative, generate
    from neurobit.decode.metrics import seq_rep_n
    from neurobit.modules.meta_controller import MetaControllerConfig
    from neurobit.train.checkpoint import latest_checkpoint, load_model
    from neurobit.train.corpus import split_corpus
    from neurobit.train.dataset import prepare
    from neurobit.train.lm_step import lm_step_fn
    from neurobit.train.loop import lm_loss, train
    from neurobit.train.run_config import LMFileConfig, _tokenizer_for
    from neurobit.ablation.config import DecodeEval
    run = dict(run)
    decode = DecodeEval.model_validate(run.pop("decode", None) or {})
    d = LMFileConfig.model_validate({**run, "model": {"vocab_size": 2, **run["model"]}}).data
    split = split_corpus(d.source, d.val_fraction, d.val_documents)
    data = prepare(split, _tokenizer_for(split, d), d.cache_dir)
    cfg = LMFileConfig.model_validate({**run, "model": {**run["model"],
                                                        "vocab_size": data.vocab_size}})
    train_cfg = cfg.train.model_copy(update={"progress": False})
    out.mkdir(parents=True, exist_ok=True)
    res = train(cfg.model, train_cfg, data, out, resume=latest_checkpoint(out) is not None)
    model, _ = load_model(latest_checkpoint(out))
    model.eval()
    gen = torch.Generator().manual_seed(20261123)
    block = train_cfg.block_size
    n_batches = max(1, eval_batch // 16)
    with torch.no_grad():
        val = sum(float(lm_loss(model, *data.get_batch("val", 16, block, gen)))
                  for _ in range(n_batches)) / n_batches
    if not math.isfinite(val):  # diverged: nothing else to measure; the table says so
        return {"quality": None, "diverged": True, "params": res.n_params,
                "packed_bytes": _lm_packed_bytes(model), "train_seconds": res.train_seconds,
                "steps": res.steps[-1] if res.steps else None}
    for block_mod in getattr(model, "blocks", []):  # count the recurrent synapses too
        if hasattr(block_mod, "fused_scan"):
            block_mod.fused_scan = False
    x, _, _ = data.get_batch("val", 4, block, torch.Generator().manual_seed(1))
    _, summary = count_ops(model, model, x)
    metrics = {"quality": val / math.log(2), "activity": _lm_activity(summary),
               **_ops(summary, x.numel(), precision), "params": res.n_params,
               "packed_bytes": _lm_packed_bytes(model),
               "train_seconds": res.train_seconds, "steps": res.steps[-1] if res.steps else None}
    n_prompts = decode.prompts
    if n_prompts:
        tok = data.tokenizer()
        step = lm_step_fn(model, tok)
        valarr = data.arrays["val"]
        span = len(valarr) - 64
        meta = MetaControllerConfig() if decode.acc else None
        sampling = SamplingConfig(temperature=0.8, top_p=0.95, repetition_penalty=1.1,
                                  history_window=64)
        reps = []
        for i in range(n_prompts):
            s = int(i * span / n_prompts)
            r = generate(step, torch.tensor(valarr[s:s + 64].astype(int)),
                         decode.tokens, sampling=sampling,
                         detector=CollapseDetector(), seed=i, meta=meta,
                         retry_sampling=conservative(sampling))
            reps.append(seq_rep_n(r.tokens.tolist(), 4))
        metrics["seq_rep_4"] = sum(reps) / len(reps)
    return metrics


RUNNERS = {"vision": run_vision, "lm": run_lm}
