"""Checkpoints without pickle, written atomically, keeping the last one.

Layout of ``out_dir``::

    latest                    text file: the name of the current checkpoint directory
    ckpt_00000200/
        model.safetensors     model.state_dict() (tensors only)
        optim.safetensors     the optimizer's tensors, keys ``state/<param index>/<name>``,
                              plus RNG tensors ``rng/torch``, ``rng/data``, ``rng/numpy_keys``
        state.json            step, optimizer param_groups and non-tensor state, the rest of
                              the numpy and Python RNG states
        config.yaml           the resolved run config (model + train)

A checkpoint is written to a hidden temporary directory, renamed into place (``os.replace``,
atomic on POSIX) and only then published by atomically replacing ``latest``; older checkpoint
directories are removed afterwards. A crash at any point leaves ``latest`` naming a complete
checkpoint. Loading uses ``safetensors``, ``json`` and ``yaml.safe_load`` only.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from neurobit.errors import ConfigError, NeurobitError
from neurobit.models.lm_config import LMRunConfig

LATEST = "latest"
PREFIX = "ckpt_"


@dataclass
class Checkpoint:
    """A loaded checkpoint: everything needed to rebuild the model and continue training."""

    path: Path
    config: LMRunConfig
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict
    rng: dict
    train_seconds: float = 0.0


def flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """``optimizer.state_dict()`` -> (tensors for safetensors, JSON-able rest)."""
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"state/{pid}/{name}"] = val.detach().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = val
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of :func:`flatten_optimizer`."""
    state: dict = {}
    for key, val in tensors.items():
        if key.startswith("state/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = val
    for pid, d in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(d)
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v)
               for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def capture_rng(data_generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict]:
    """torch, numpy, Python and data-generator RNG states as (tensors, JSON)."""
    import random
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"rng/torch": torch.get_rng_state(), "rng/data": data_generator.get_state(),
               "rng/numpy_keys": torch.from_numpy(keys.astype(np.int64))}
    version, internal, gauss_next = random.getstate()
    js = {"numpy": [name, int(pos), int(has_gauss), float(cached)],
          "python": [version, list(internal), gauss_next]}
    return tensors, js


def restore_rng(tensors: dict[str, torch.Tensor], js: dict,
                data_generator: torch.Generator) -> None:
    """Inverse of :func:`capture_rng`."""
    import random
    torch.set_rng_state(tensors["rng/torch"])
    data_generator.set_state(tensors["rng/data"])
    name, pos, has_gauss, cached = js["numpy"]
    np.random.set_state((name, tensors["rng/numpy_keys"].numpy().astype(np.uint32), pos,
                         has_gauss, cached))
    version, internal, gauss_next = js["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(out_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    config: LMRunConfig, step: int, data_generator: torch.Generator,
                    train_seconds: float = 0.0) -> Path:
    """Write ``out_dir/ckpt_<step>`` atomically, point ``latest`` at it, drop older ones."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{PREFIX}{step:08d}"
    tmp = out / f".{name}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              str(tmp / "model.safetensors"), metadata={"format": "pt", "step": str(step)})
    opt_t, opt_meta = flatten_optimizer(optimizer.state_dict())
    rng_t, rng_js = capture_rng(data_generator)
    save_file({**opt_t, **rng_t}, str(tmp / "optim.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "optimizer": opt_meta,
                                                "rng": rng_js, "train_seconds": train_seconds}))
    (tmp / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"),
                                                    sort_keys=False))
    final = out / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(out / LATEST, name + "\n")
    for old in [*out.glob(f"{PREFIX}*"), *out.glob(f".{PREFIX}*.tmp*")]:
        if old.name != name and old.is_dir():  # older checkpoints, leftovers of crashed writes
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The directory ``latest`` names, or None when there is no checkpoint yet."""
    ptr = Path(out_dir) / LATEST
    if not ptr.exists():
        return None
    path = Path(out_dir) / ptr.read_text().strip()
    if not (path / "model.safetensors").exists():
        raise NeurobitError(f"checkpoint: {ptr} names {path.name}, which is incomplete")
    return path


def load_config(path: str | Path) -> LMRunConfig:
    """The resolved run config of a checkpoint directory (``config.yaml``)."""
    p = Path(path) / "config.yaml"
    try:
        return LMRunConfig.model_validate(yaml.safe_load(p.read_text()))
    except Exception as e:  # pydantic ValidationError / YAML error: one line naming the file
        raise ConfigError(f"{p}: {e}".splitlines()[0]) from e


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint directory (or an ``out_dir`` holding ``latest``)."""
    path = Path(path)
    if (path / LATEST).exists():
        path = latest_checkpoint(path)
    if not (path / "model.safetensors").exists():
        raise NeurobitError(f"checkpoint: no model.safetensors in {path}")
    state = json.loads((path / "state.json").read_text())
    opt_rng = load_file(str(path / "optim.safetensors"))
    rng_t = {k: v for k, v in opt_rng.items() if k.startswith("rng/")}
    opt_t = {k: v for k, v in opt_rng.items() if k.startswith("state/")}
    return Checkpoint(path, load_config(path), int(state["step"]),
                      load_file(str(path / "model.safetensors")),
                      unflatten_optimizer(opt_t, state["optimizer"]),
                      {"tensors": rng_t, "json": state["rng"]},
                      float(state.get("train_seconds", 0.0)))


def load_model(path: str | Path) -> tuple[torch.nn.Module, LMRunConfig]:
    """Rebuild the model of a checkpoint (for generation/compilation): ``(model, config)``."""
    from neurobit.models.brain_lm import build_model
    ck = load_checkpoint(path)
    model = build_model(ck.config.model)
    dtype = ck.model["embed.char.weight"].dtype
    model.to(dtype).load_state_dict(ck.model)
    return model.eval(), ck.config
