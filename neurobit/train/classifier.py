"""Training and evaluation of :class:`SpikingClassifier` on an image data set.

Loss per batch: ``CE(logits, y) + activity_weight * max(0, activity - activity_target)``
(the activity is the mean spike rate per unit and step, so the penalty only bites above the
target). AdamW with a one-cycle schedule (linear warm-up over ``warmup`` of the run, cosine
decay) over ``epochs`` epochs or ``max_seconds`` of training-step time, whichever ends first
(the schedule follows the larger of the step and time fractions). Augmentation (training
only): a random horizontal flip and a random shift of up to ``shift`` pixels (``torch.roll``),
one shift per batch.

Output directory (``out``)::

    config.yaml           the resolved run config
    checkpoint/           model.safetensors, optim.safetensors, state.json (after each epoch;
                          written to a temporary directory and renamed: a kill loses at most
                          the current epoch, and the run resumes from here)
    model.safetensors     the final model (written last, atomically)
    result.json           test accuracy, activity, timings (written last: marks the run done)
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Annotated, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from pydantic import Field
from safetensors.torch import load_file, save_file

from neurobit._atomic import atomic_write, atomic_write_json, atomic_write_text
from neurobit._schema import PositiveFloat, PositiveInt, Strict
from neurobit.errors import ConfigError
from neurobit.models.spiking_classifier import ClassifierConfig, SpikingClassifier
from neurobit.train.checkpoint import flatten_optimizer, unflatten_optimizer
from neurobit.train.images import ImageSplit, load_images

NonNegFloat = Annotated[float, Field(ge=0)]


class ImageDataConfig(Strict):
    source: Literal["fashion_mnist", "mnist_10k", "digits"] = "fashion_mnist"
    cache_dir: Optional[str] = None
    train_subset: Optional[PositiveInt] = Field(None, description="use the first n training "
                                                "images only (quick runs)")


class ClassifierTrainConfig(Strict):
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 2e-3
    weight_decay: NonNegFloat = 0.0
    warmup: float = Field(0.1, ge=0, lt=1, description="fraction of the run warming up")
    epochs: PositiveFloat = 10.0
    max_seconds: Optional[PositiveFloat] = Field(None, description="training-step time budget")
    activity_target: float = Field(0.15, ge=0, le=1)
    activity_weight: NonNegFloat = 1.0
    flip: bool = True
    shift: Annotated[int, Field(ge=0)] = 2
    eval_batch: PositiveInt = 1000
    seed: int = 0
    threads: Optional[PositiveInt] = None


class VisionRunConfig(Strict):
    """A classifier run: ``model``, ``data``, ``train``."""

    model: ClassifierConfig
    data: ImageDataConfig = Field(default_factory=ImageDataConfig)
    train: ClassifierTrainConfig = Field(default_factory=ClassifierTrainConfig)


def _augment(x: torch.Tensor, shape, gen: torch.Generator, flip: bool, shift: int) -> torch.Tensor:
    B = x.shape[0]
    img = x.view(B, *shape)
    if flip:
        f = (torch.rand(B, generator=gen) < 0.5).view(B, 1, 1, 1)
        img = torch.where(f, img.flip(-1), img)
    if shift:
        dy, dx = torch.randint(-shift, shift + 1, (2,), generator=gen).tolist()
        img = torch.roll(img, (dy, dx), (-2, -1))
    return img.reshape(B, -1)


@torch.no_grad()
def evaluate_classifier(model: SpikingClassifier, split: ImageSplit, batch: int = 1000,
                        seed: int = 1234) -> dict:
    """Accuracy and mean activity on ``split`` (rate code drawn from a fixed seed)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    correct, act, n = 0, 0.0, len(split.labels)
    for i in range(0, n, batch):
        x = torch.from_numpy(split.as_float(slice(i, i + batch)))
        out = model(x, gen)
        correct += int((out.logits.argmax(1).numpy() == split.labels[i:i + batch]).sum())
        act += float(out.activity) * len(x)
    return {"accuracy": correct / n, "activity": act / n, "n": n}


def _lr(frac: float, cfg: ClassifierTrainConfig) -> float:
    if frac < cfg.warmup:
        return cfg.lr * (frac / cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (frac - cfg.warmup) / (1 - cfg.warmup))))


def _save_checkpoint(out: Path, model, opt, state: dict) -> None:
    tmp = out / ".checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    tensors, meta = flatten_optimizer(opt.state_dict())
    save_file(tensors, tmp / "optim.safetensors")
    (tmp / "state.json").write_text(json.dumps({**state, "optim": meta}))
    final = out / "checkpoint"
    old = out / ".checkpoint.old"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_classifier(path: str | Path) -> tuple[SpikingClassifier, VisionRunConfig]:
    """A trained classifier from a run directory (``config.yaml`` + ``model.safetensors``)."""
    path = Path(path)
    try:
        cfg = VisionRunConfig.model_validate(yaml.safe_load((path / "config.yaml").read_text()))
        model = SpikingClassifier(cfg.model)
        model.load_state_dict(load_file(path / "model.safetensors"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a trained classifier run: {e}") from None
    return model.eval(), cfg


def train_classifier(cfg: VisionRunConfig, out: str | Path, progress: bool = False) -> dict:
    """Train (resuming from ``out/checkpoint`` if present), evaluate on the test split, write
    ``result.json``; returns the result."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"),
                                                          sort_keys=False))
    data = load_images(cfg.data.source, cfg.data.cache_dir)
    train = data.train
    if cfg.data.train_subset:
        train = ImageSplit(train.images[:cfg.data.train_subset], train.labels[:cfg.data.train_subset])
    torch.manual_seed(tc.seed)
    model = SpikingClassifier(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    n = len(train.labels)
    steps_per_epoch = max(1, n // tc.batch_size)
    total = max(1, int(round(tc.epochs * steps_per_epoch)))
    state = {"step": 0, "seconds": 0.0, "log": []}
    gen = torch.Generator().manual_seed(tc.seed + 1)
    if (out / "checkpoint" / "state.json").exists():  # resume
        ck = out / "checkpoint"
        js = json.loads((ck / "state.json").read_text())
        model.load_state_dict(load_file(ck / "model.safetensors"))
        opt.load_state_dict(unflatten_optimizer(load_file(ck / "optim.safetensors"), js.pop("optim")))
        state = js
        gen.manual_seed(tc.seed + 1 + state["step"])
    shape = cfg.model.input_shape
    x_all = torch.from_numpy(np.array(train.images))
    y_all = torch.from_numpy(np.array(train.labels))
    t_last = time.perf_counter()
    model.train()
    bar = None
    if progress:
        from rich.progress import Progress
        bar = Progress()
        bar.start()
        task = bar.add_task("training", total=total, completed=state["step"])
    loss_sum = act_sum = 0.0
    try:
        while state["step"] < total:
            frac = max(state["step"] / total,
                       state["seconds"] / tc.max_seconds if tc.max_seconds else 0.0)
            if frac >= 1.0:
                break
            for g in opt.param_groups:
                g["lr"] = _lr(frac, tc)
            idx = torch.randint(0, n, (tc.batch_size,), generator=gen)
            x = x_all[idx].float() / 255.0
            x = _augment(x, shape, gen, tc.flip, tc.shift)
            o = model(x, gen)
            loss = F.cross_entropy(o.logits, y_all[idx]) + tc.activity_weight * F.relu(
                o.activity - tc.activity_target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["step"] += 1
            now = time.perf_counter()
            state["seconds"] += now - t_last
            t_last = now
            loss_sum += float(loss.detach())
            act_sum += float(o.activity.detach())
            if bar is not None:
                bar.update(task, completed=state["step"],
                           description=f"loss {loss_sum / max(1, (state['step'] - 1) % steps_per_epoch + 1):.3f}")
            if state["step"] % steps_per_epoch == 0 or state["step"] == total:
                k = (state["step"] - 1) % steps_per_epoch + 1
                state["log"].append({"step": state["step"], "loss": loss_sum / k,
                                     "activity": act_sum / k, "seconds": state["seconds"]})
                loss_sum = act_sum = 0.0
                _save_checkpoint(out, model, opt, state)
                t_last = time.perf_counter()
    finally:
        if bar is not None:
            bar.stop()
    result = {"steps": state["step"], "train_seconds": state["seconds"],
              "epochs": state["step"] / steps_per_epoch, "log": state["log"],
              "test": evaluate_classifier(model, data.test, tc.eval_batch),
              "n_params": model.n_params(), "packed_bytes": model.packed_nbytes()}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / "model.safetensors", lambda p: save_file(state, p))
    atomic_write_json(out / "result.json", result)  # last: marks the run done
    return result
