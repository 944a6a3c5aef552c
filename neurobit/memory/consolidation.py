"""Consolidation: replay selected episodes plus a slice of old data into adapters (or chosen
sub-networks), with a bounded learning rate and frequency scaled by prediction integrity.

One session (:func:`consolidate`) runs at most ``max_steps`` AdamW steps. Step ``i`` draws
``n_old = round(replay_ratio * batch_size)`` sequences from the old-data slice and
``n_new = batch_size - n_old`` from the new episodes (uniformly, with replacement, from an
explicit generator seeded by ``seed``) and minimises::

    L_i = (n_new * L(new batch) + n_old * L(old batch)) / batch_size

(``L``: mean token cross-entropy, targets ``-100`` ignored). Only parameters whose names match
``trainable`` (fnmatch; default the LoRA adapters) receive gradients or updates; every other
parameter is bit-identical afterwards. The learning rate is::

    lr_eff = min(lr, max_lr) * integrity,     integrity in [0, 1]

Prediction integrity (:func:`integrity_score`): from a sequence of recent prediction errors
``e`` (e.g. per-interaction loss in nats/token), the last ``recent`` values against the
``baseline`` before them (mean ``mu``, standard deviation ``sigma``)::

    z = (mean(e_recent) - mu) / (sigma + eps * (|mu| + 1)),    integrity = exp(-max(z, 0))

Errors at or below their usual level give 1 (full plasticity); a burst of surprising errors
(corrupted or off-distribution input, a shock) lowers the rate exponentially in the surprise,
so one bad session cannot rewrite the model; a lasting shift becomes the new baseline and the
rate recovers. With fewer than ``min_baseline`` baseline values the integrity is 1.

Frequency: :func:`consolidation_due` allows a session only after ``min_interval_s`` seconds
and ``min_new_episodes`` new records since the last one.
"""
from __future__ import annotations

import fnmatch
import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from neurobit.errors import ParameterError, ShapeError
from neurobit.memory.episodic import Episode
from neurobit.memory.lifecycle import register_update
from neurobit.memory.lora import attach_lora, merge_lora

LORA_PATTERNS = ("*.lora_A", "*.lora_B")
Batch = tuple  # (x [B, T] long, y [B, T] long, word_ids [B, T] long | None)


# -- prediction integrity --------------------------------------------------------------------
def integrity_score(errors: Sequence[float], recent: int = 8, min_baseline: int = 8,
                    eps: float = 1e-6) -> float:
    """Prediction integrity in [0, 1] of an error sequence (see the module docstring)."""
    e = np.asarray(errors, dtype=np.float64)
    if e.ndim != 1 or not np.isfinite(e).all():
        raise ParameterError("errors: expected a 1-d sequence of finite floats")
    if int(recent) < 1:
        raise ParameterError(f"recent: must be >= 1, got {recent}")
    base, rec = e[:-recent], e[-recent:]
    if len(base) < max(int(min_baseline), 2):
        return 1.0
    mu, sigma = base.mean(), base.std()
    z = (rec.mean() - mu) / (sigma + eps * (abs(mu) + 1.0))
    return float(math.exp(-max(z, 0.0)))


class PredictionIntegrity:
    """Running :func:`integrity_score` over the last ``window`` errors (explicit state: the
    deque of errors, which :meth:`state` returns and the constructor accepts)."""

    def __init__(self, window: int = 64, recent: int = 8, min_baseline: int = 8,
                 errors: Sequence[float] = ()):
        if int(window) <= int(recent):
            raise ParameterError(f"window: must exceed recent={recent}, got {window}")
        self.recent, self.min_baseline = int(recent), int(min_baseline)
        self.errors: deque = deque((float(x) for x in errors), maxlen=int(window))

    def update(self, error: float) -> float:
        """Add one error; returns the integrity after it."""
        if not math.isfinite(float(error)):
            raise ParameterError(f"error: must be finite, got {error}")
        self.errors.append(float(error))
        return self.score()

    def score(self) -> float:
        if len(self.errors) <= self.recent:
            return 1.0
        return integrity_score(list(self.errors), self.recent, self.min_baseline)

    def state(self) -> list[float]:
        return list(self.errors)


# -- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ConsolidationConfig:
    """Bounds of one consolidation session (every field is checked; errors name the field).

    lr: requested learning rate; max_lr: hard ceiling (lr above it is an error).
    max_steps: optimizer steps per session. batch_size: sequences per step.
    replay_ratio: fraction of each batch drawn from old data, in [0, 1).
    trainable: fnmatch patterns of the parameter names that may change.
    grad_clip: max gradient norm (0: off). weight_decay: AdamW decay of trainable params.
    min_interval_s, min_new_episodes: frequency bound (:func:`consolidation_due`).
    seed: the batch-sampling generator's seed.
    """

    lr: float = 1e-3
    max_lr: float = 1e-2
    max_steps: int = 50
    batch_size: int = 8
    replay_ratio: float = 0.25
    trainable: tuple[str, ...] = LORA_PATTERNS
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    min_interval_s: float = 0.0
    min_new_episodes: int = 1
    seed: int = 0

    def __post_init__(self):
        def bad(name, why):
            raise ParameterError(f"{name}: {why}, got {getattr(self, name)!r}")
        if not (0 < self.max_lr and math.isfinite(self.max_lr)):
            bad("max_lr", "must be a finite float > 0")
        if not 0 < self.lr <= self.max_lr:
            bad("lr", f"must lie in (0, max_lr={self.max_lr}]")
        if int(self.max_steps) < 0:
            bad("max_steps", "must be >= 0")
        if int(self.batch_size) < 1:
            bad("batch_size", "must be >= 1")
        if not 0 <= self.replay_ratio < 1:
            bad("replay_ratio", "must lie in [0, 1)")
        if isinstance(self.trainable, str) or not self.trainable:
            bad("trainable", "must be a non-empty tuple of patterns")
        if self.grad_clip < 0 or self.weight_decay < 0 or self.min_interval_s < 0:
            bad("grad_clip" if self.grad_clip < 0 else
                "weight_decay" if self.weight_decay < 0 else "min_interval_s", "must be >= 0")
        if int(self.min_new_episodes) < 0:
            bad("min_new_episodes", "must be >= 0")
        object.__setattr__(self, "trainable", tuple(self.trainable))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["trainable"] = list(self.trainable)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ConsolidationConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ParameterError(f"config: unknown keys {sorted(unknown)}")
        return cls(**{**d, **({"trainable": tuple(d["trainable"])} if "trainable" in d else {})})


def consolidation_due(cfg: ConsolidationConfig, last_time_s: float | None, now_s: float,
                      n_new_episodes: int) -> bool:
    """Whether a session may run now (frequency bound; ``last_time_s`` None: never ran)."""
    if n_new_episodes < cfg.min_new_episodes:
        return False
    return last_time_s is None or now_s - last_time_s >= cfg.min_interval_s


# -- data ------------------------------------------------------------------------------------
def episodes_to_batch(episodes: Sequence[Episode], pad_id: int = 0) -> tuple[torch.Tensor,
                                                                              torch.Tensor]:
    """Episodes -> ``(x, y)`` ``[E, T]`` int64, right-padded (``x`` with ``pad_id``, ``y`` with
    -100). Targets are ``label`` when the episode has one (same length as its input), else the
    next tokens of its input (``x = input[:-1]``, ``y = input[1:]``)."""
    if not episodes:
        raise ParameterError("episodes: need at least one episode")
    xs, ys = [], []
    for i, ep in enumerate(episodes):
        inp = torch.as_tensor(np.asarray(ep.input_tokens), dtype=torch.int64)
        if ep.label is not None:
            lab = torch.as_tensor(np.asarray(ep.label), dtype=torch.int64)
            if lab.shape != inp.shape:
                raise ShapeError(f"episodes[{i}].label: shape {list(lab.shape)} differs from "
                                 f"input_tokens {list(inp.shape)}")
            x, y = inp, lab
        else:
            if len(inp) < 2:
                raise ShapeError(f"episodes[{i}].input_tokens: need >= 2 tokens without a label")
            x, y = inp[:-1], inp[1:]
        xs.append(x)
        ys.append(y)
    T = max(len(x) for x in xs)
    X = torch.full((len(xs), T), pad_id, dtype=torch.int64)
    Y = torch.full((len(xs), T), -100, dtype=torch.int64)
    for i, (x, y) in enumerate(zip(xs, ys)):
        X[i, :len(x)], Y[i, :len(y)] = x, y
    return X, Y


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
            word_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Mean token cross-entropy of ``model(x, word_ids)`` ``[B, T, V]`` against ``y`` (-100
    ignored)."""
    logits = model(x, word_ids)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                           ignore_index=-100)


def _rows(batch: Batch, idx: torch.Tensor) -> Batch:
    x, y, w = (tuple(batch) + (None,))[:3]
    return x[idx], y[idx], None if w is None else w[idx]


def _check_batch(batch, name: str) -> Batch:
    x, y, w = (tuple(batch) + (None,))[:3]
    if x.dim() != 2 or y.shape != x.shape or (w is not None and w.shape != x.shape):
        raise ShapeError(f"{name}: expected (x, y[, word_ids]) of equal shape [B, T], got "
                         f"{[list(t.shape) for t in (x, y, w) if t is not None]}")
    return x, y, w


# -- the session ----------------------------------------------------------------------------
@dataclass
class ConsolidationResult:
    """What a session did. Losses are mean token cross-entropies over the whole new-episode
    pool and the whole old-data slice, before and after; ``losses``: each step's ``L_i``."""

    steps: int
    lr: float
    integrity: float
    trainable: list[str]
    new_loss_before: float
    new_loss_after: float
    old_loss_before: float | None
    old_loss_after: float | None
    losses: list[float] = field(default_factory=list)

    def metrics(self) -> dict:
        d = asdict(self)
        d.pop("trainable")
        d["n_trainable"] = len(self.trainable)
        return d


@torch.no_grad()
def _pool_loss(model, batch, loss_fn) -> float:
    return float(loss_fn(model, *batch))


def consolidate(model: torch.nn.Module, new: Batch, old: Batch | None,
                cfg: ConsolidationConfig, integrity: float = 1.0,
                loss_fn: Callable = lm_loss) -> ConsolidationResult:
    """One consolidation session on ``model`` in place (see the module docstring).

    ``new``: ``(x, y[, word_ids])`` ``[E, T]`` of the selected episodes
    (:func:`episodes_to_batch`); ``old``: the same for the slice of old data, or None (then
    every batch is new data). ``integrity`` in [0, 1] scales the learning rate.
    """
    if not 0.0 <= float(integrity) <= 1.0:
        raise ParameterError(f"integrity: must lie in [0, 1], got {integrity}")
    new = _check_batch(new, "new")
    old = _check_batch(old, "old") if old is not None else None
    params = dict(model.named_parameters())
    names = [n for n in params if any(fnmatch.fnmatchcase(n, p) for p in cfg.trainable)]
    if not names:
        raise ParameterError(f"trainable: no parameter matches {list(cfg.trainable)} "
                             f"(attach adapters first, or name sub-networks)")
    lr = min(cfg.lr, cfg.max_lr) * float(integrity)
    n_old = round(cfg.replay_ratio * cfg.batch_size) if old is not None else 0
    n_new = cfg.batch_size - n_old
    flags = {n: p.requires_grad for n, p in params.items()}
    result = ConsolidationResult(0, lr, float(integrity), names, _pool_loss(model, new, loss_fn),
                                 0.0, None if old is None else _pool_loss(model, old, loss_fn),
                                 None)
    try:
        for n, p in params.items():
            p.requires_grad_(n in names)
        trainable = [params[n] for n in names]
        steps = cfg.max_steps if lr > 0 else 0
        if steps:
            opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=cfg.weight_decay)
            gen = torch.Generator().manual_seed(int(cfg.seed))
        for _ in range(steps):
            i_new = torch.randint(0, new[0].shape[0], (n_new,), generator=gen)
            loss = loss_fn(model, *_rows(new, i_new)) * (n_new / cfg.batch_size)
            if n_old:
                i_old = torch.randint(0, old[0].shape[0], (n_old,), generator=gen)
                loss = loss + loss_fn(model, *_rows(old, i_old)) * (n_old / cfg.batch_size)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            opt.step()
            result.losses.append(float(loss.detach()))
            result.steps += 1
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
    result.new_loss_after = _pool_loss(model, new, loss_fn)
    result.old_loss_after = None if old is None else _pool_loss(model, old, loss_fn)
    return result


# -- updates the lifecycle log can replay ----------------------------------------------------
def _batch_from(data: dict, prefix: str) -> Batch | None:
    if f"{prefix}_x" not in data:
        return None
    return data[f"{prefix}_x"], data[f"{prefix}_y"], data.get(f"{prefix}_w")


def consolidation_data(new: Batch, old: Batch | None) -> dict[str, torch.Tensor]:
    """The tensors of a session as a flat dict (``new_x``, ``new_y``, ``new_w``, ``old_*``) for
    :meth:`Lifecycle.update` ``("consolidate", model, data, params)``."""
    out = {}
    for prefix, b in (("new", new), ("old", old)):
        if b is None:
            continue
        x, y, w = (tuple(b) + (None,))[:3]
        out[f"{prefix}_x"], out[f"{prefix}_y"] = x, y
        if w is not None:
            out[f"{prefix}_w"] = w
    return out


@register_update("consolidate")
def update_consolidate(model, data: dict, params: dict) -> dict:
    """Lifecycle update: ``params = {"config": ConsolidationConfig.to_dict(), "integrity": f,
    "lr": effective lr}``; data from :func:`consolidation_data`."""
    cfg = ConsolidationConfig.from_dict(params["config"])
    res = consolidate(model, _batch_from(data, "new"), _batch_from(data, "old"), cfg,
                      float(params.get("integrity", 1.0)))
    return res.metrics()


@register_update("attach_lora")
def update_attach_lora(model, data: dict, params: dict) -> dict:
    """Lifecycle update: ``params = {"rank", "alpha", "include", "exclude", "seed"}``."""
    names = attach_lora(model, int(params["rank"]), params.get("alpha"),
                        tuple(params.get("include", ("*",))), tuple(params.get("exclude", ())),
                        torch.Generator().manual_seed(int(params.get("seed", 0))))
    return {"adapted": len(names)}


@register_update("merge_lora")
def update_merge_lora(model, data: dict, params: dict) -> dict:
    """Lifecycle update: merge every adapter into its ternary base (``params`` unused)."""
    rep = merge_lora(model)
    return {"merged": len(rep), "flipped": sum(r.flipped for r in rep.values()),
            "weights": sum(r.n for r in rep.values())}
