"""The language-model training loop: AdamW, warmup + cosine, clipping, checkpoints, DDP.

``train(model_cfg, train_cfg, data, out_dir, resume=False)`` trains a BrainLM or GPT on
``data.get_batch(split, batch_size, block_size, generator) -> (x, y, word_ids)`` (``x``, ``y``,
``word_ids`` ``[B, T]`` long; ``word_ids`` may be None) and writes to ``out_dir``:

- ``metrics.jsonl``: one JSON line per ``log_interval`` steps ``{"step", "loss", "lr",
  "grad_norm", "tokens_per_s"}`` (``step`` counts completed steps), and ``{"step",
  "val_loss"}`` every ``eval_interval`` steps.
- checkpoints (:mod:`neurobit.train.checkpoint`) every ``checkpoint_interval`` steps and at the
  end; ``config.yaml``: the resolved run config; ``loss_curve.png`` at the end.

Learning rate at step ``i`` (0-based), with ``W`` warmup steps and ``S`` total steps::

    lr_i = lr * (i + 1) / W                                          i < W
    lr_i = min_lr + (lr - min_lr) * (1 + cos(pi * (i - W) / (S - W))) / 2      otherwise

With a wall-clock budget ``max_seconds`` (``E`` seconds of training steps spent so far), the
cosine phase follows ``frac = E / max_seconds`` instead, and training stops when ``E`` reaches
the budget (then a final validation and checkpoint); ``E`` is saved with each checkpoint.

Loss: mean token cross-entropy of ``logits[B, T, V]`` against ``y``.

Resume (``resume=True``) continues from the latest checkpoint exactly: model, optimizer, the
data generator and the torch/numpy/Python RNG states are restored, so N steps in one run equal
N/2 steps, a restart and N/2 more (bitwise on the same machine and thread count).

Data parallel: when ``torch.distributed`` is initialised (``torchrun --nproc_per_node P``, gloo
on CPU), every process draws the same global batch from the same generator and trains on its
``batch_size / P`` rows; gradients are averaged with one ``all_reduce`` (the arithmetic of
DistributedDataParallel), so P processes follow the 1-process trajectory up to summation order.
Rank 0 alone writes files and shows the progress bar.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.nn import functional as F

from neurobit.errors import ConfigError, ParameterError
from neurobit.models.brain_lm import build_model
from neurobit.models.gpt import count_parameters
from neurobit.models.lm_config import BrainLMConfig, GPTConfig, LMRunConfig, TrainConfig
from neurobit.train.checkpoint import (latest_checkpoint, load_checkpoint, restore_rng,
                                       save_checkpoint)

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class TrainResult:
    """What one call of :func:`train` did: ``steps[i]`` completed with training ``losses[i]``."""

    out_dir: Path
    n_params: int
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    tokens_per_s: float = 0.0
    resumed_from: int | None = None
    train_seconds: float = 0.0


def lr_at(step: int, cfg: TrainConfig, train_seconds: float = 0.0) -> float:
    """Learning rate of (0-based) step ``step``: linear warmup, then cosine to ``min_lr`` over
    the steps, or over the time budget ``cfg.max_seconds`` when set."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.max_seconds is not None:
        frac = min(1.0, train_seconds / cfg.max_seconds)
    else:
        frac = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def lm_loss(model: torch.nn.Module, x, y, w) -> torch.Tensor:
    """Mean token cross-entropy; models with auxiliary losses (``regularizer``: the Sparse
    Bayesian Layers' KL and surprise-gate losses) add them while training."""
    if model.training and hasattr(model, "regularizer"):
        out = model.forward_aux(x, w)
        loss = _cross_entropy(out.logits, y)
        return loss + model.regularizer(loss, out)
    return _cross_entropy(model(x, w), y)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and embedding tables (dim >= 2) only, not on norm
    weights, gains or biases (as nanoGPT)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=False)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _allreduce_mean_grads(model: torch.nn.Module, world: int) -> None:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    i = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[i:i + n].view_as(g))
        i += n


def _mean_over_ranks(x: float, world: int, dtype) -> float:
    if world == 1:
        return x
    t = torch.tensor([x], dtype=dtype)
    dist.all_reduce(t)
    return float(t) / world


def _rank_slice(batch, rank: int, world: int):
    x, y, w = batch
    b = x.shape[0] // world
    sl = slice(rank * b, (rank + 1) * b)
    return x[sl], y[sl], (None if w is None else w[sl])


@torch.no_grad()
def evaluate(model, data, cfg: TrainConfig, rank: int, world: int) -> float:
    """Mean validation loss over ``eval_batches`` batches drawn from a fixed seed (the same
    batches every evaluation, independent of the training RNG)."""
    gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    tot = 0.0
    for _ in range(cfg.eval_batches):
        x, y, w = _rank_slice(data.get_batch("val", cfg.batch_size, cfg.block_size, gen),
                              rank, world)
        tot += float(lm_loss(model, x, y, w))
    return _mean_over_ranks(tot / cfg.eval_batches, world, torch.float64)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past ``step`` (written after the checkpoint we resume from)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip()
            and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def plot_loss_curve(metrics_path: Path, png_path: Path) -> None:
    """Training (and validation) loss against step, as a PNG (matplotlib, Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    rows = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
    tr = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    va = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if tr:
        ax.plot(*zip(*tr), label="train", lw=1)
    if va:
        ax.plot(*zip(*va), "o-", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)


def _progress(enabled: bool, total: int, start: int):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn)
    prog = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"),
                    TextColumn("{task.fields[tps]:,.0f} tok/s"), TimeRemainingColumn(),
                    disable=not enabled)
    task = prog.add_task("train", total=total, completed=start, loss=float("nan"), tps=0.0)
    return prog, task


def train(model_cfg: BrainLMConfig | GPTConfig, train_cfg: TrainConfig, data, out_dir,
          resume: bool = False, *, stop_at: int | None = None) -> TrainResult:
    """Train ``model_cfg`` on ``data`` into ``out_dir`` (see the module docstring).

    ``resume``: continue from ``out_dir``'s latest checkpoint (whose config must equal this
    one); without a checkpoint it starts fresh. ``stop_at``: stop after this many completed
    steps (writing a checkpoint), as an interrupted run would; the schedule still follows
    ``train_cfg.steps``.
    """
    run_cfg = LMRunConfig(model=model_cfg, train=train_cfg)
    cfg = train_cfg
    rank, world = _world()
    if cfg.batch_size % world:
        raise ParameterError(f"batch_size: {cfg.batch_size} does not split over {world} processes")
    end = cfg.steps if stop_at is None else min(int(stop_at), cfg.steps)
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    out = Path(out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    dtype = DTYPES[cfg.dtype]

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    model = build_model(model_cfg).to(dtype)
    if world > 1:
        for t in model.state_dict().values():
            dist.broadcast(t, 0)
    opt = make_optimizer(model, cfg)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    result = TrainResult(out, count_parameters(model))
    step, train_seconds = 0, 0.0
    ck_path = latest_checkpoint(out) if resume else None
    if ck_path is not None:
        ck = load_checkpoint(ck_path)
        if _comparable(ck.config) != _comparable(run_cfg):
            raise ConfigError(f"resume: the config of {ck_path} differs from this run's")
        model.load_state_dict(ck.model)
        opt.load_state_dict(ck.optimizer)
        restore_rng(ck.rng["tensors"], ck.rng["json"], data_gen)
        step = result.resumed_from = ck.step
        train_seconds = ck.train_seconds
    metrics = out / "metrics.jsonl"
    if rank == 0:
        if ck_path is not None:
            _truncate_metrics(metrics, step)
        elif metrics.exists():
            metrics.unlink()
        (out / "config.yaml").write_text(yaml.safe_dump(run_cfg.model_dump(mode="json"),
                                                        sort_keys=False))

    prog, task = _progress(rank == 0 and cfg.progress, cfg.steps, step)
    tokens_per_step = cfg.batch_size * cfg.block_size
    t_start, first = time.perf_counter(), step
    t_log = t_start
    budget_spent = cfg.max_seconds is not None and train_seconds >= cfg.max_seconds
    model.train()
    with prog, open(metrics, "a") if rank == 0 else _Null() as mf:
        while step < end and not budget_spent:
            t_step = time.perf_counter()
            lr = lr_at(step, cfg, train_seconds)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y, w = _rank_slice(data.get_batch("train", cfg.batch_size, cfg.block_size,
                                                 data_gen), rank, world)
            loss = lm_loss(model, x, y, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                _allreduce_mean_grads(model, world)
            norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            opt.step()
            step += 1
            train_seconds += time.perf_counter() - t_step
            if cfg.max_seconds is not None:  # one clock for all ranks: same lr, same stop
                train_seconds = _mean_over_ranks(train_seconds, world, torch.float64)
                budget_spent = train_seconds >= cfg.max_seconds
            final = step == end or budget_spent
            loss_v = _mean_over_ranks(float(loss.detach()), world, torch.float64)
            result.steps.append(step)
            result.losses.append(loss_v)
            now = time.perf_counter()
            if step % cfg.log_interval == 0 or final:
                n = (step - 1) % cfg.log_interval + 1
                tps = n * tokens_per_step / max(now - t_log, 1e-9)
                t_log = now
                mf.write(json.dumps({"step": step, "loss": loss_v, "lr": lr,
                                     "grad_norm": float(norm), "tokens_per_s": tps}) + "\n")
                mf.flush()
                prog.update(task, completed=step, loss=loss_v, tps=tps)
            if step % cfg.eval_interval == 0 or step == cfg.steps or budget_spent:
                model.eval()
                vl = evaluate(model, data, cfg, rank, world)
                model.train()
                result.val_losses.append((step, vl))
                mf.write(json.dumps({"step": step, "val_loss": vl}) + "\n")
                mf.flush()
            if step % cfg.checkpoint_interval == 0 or final:
                if rank == 0:
                    save_checkpoint(out, model, opt, run_cfg, step, data_gen, train_seconds)
                if world > 1:
                    dist.barrier()
    elapsed = time.perf_counter() - t_start
    result.tokens_per_s = (step - first) * tokens_per_step / max(elapsed, 1e-9)
    result.train_seconds = train_seconds
    if rank == 0 and metrics.exists():
        plot_loss_curve(metrics, out / "loss_curve.png")
    return result


def _comparable(cfg: LMRunConfig) -> dict:
    """The parts of a run config that must not change across a resume."""
    d = cfg.model_dump()
    for k in ("progress", "num_threads"):
        d["train"].pop(k)
    return d


class _Null:
    """A do-nothing file for ranks > 0."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, s):
        pass

    def flush(self):
        pass
