"""The ablation file: a base experiment, the variants (overrides of the base) and the seeds.

Example::

    name: fmnist
    experiment: vision            # vision (SpikingClassifier) | lm (a language model run)
    out: runs/ablations/fmnist    # relative to this file
    seeds: [0, 1, 2]
    base: {model: {...}, data: {...}, train: {...}}     # the experiment's run config
    variants:
      - {name: lif_ternary}                             # the base itself
      - {name: relu, set: {model.neuron: relu}}         # dotted key paths into base

Every variant is validated with the experiment's config class when the file is loaded; an
error names the file, the line and the key path (``variants.2.set.model.neuron``, or the
``base`` key it came from).
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, ValidationError, field_validator

from neurobit._schema import Strict
from neurobit.config.loader import _Located, apply_override, read_yaml_file
from neurobit.errors import ConfigError

EXPERIMENTS = ("vision", "lm")


class Variant(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$", description="folder-safe variant name")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted key path -> value")


class DecodeEval(Strict):
    """LM runs only (``base.decode``): anti-collapse decoding of ``prompts`` held-out prompts
    x ``tokens`` new tokens, with (``acc: true``) or without the ACC-driven meta-controller;
    the table reports its seq-rep-4."""

    acc: bool = True
    prompts: int = Field(8, ge=0)
    tokens: int = Field(100, ge=1)


class AblationConfig(Strict):
    name: str = "ablation"
    experiment: Literal["vision", "lm"]
    out: Optional[str] = Field(None, description="output folder (default runs/ablations/<name>)")
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    base: dict[str, Any]
    variants: list[Variant] = Field(min_length=1)
    energy_precision: Literal["fp32", "int8"] = "fp32"
    eval_batch: int = Field(256, ge=1, description="samples (vision) or sequences (lm) "
                            "counted for operations and activity")

    @field_validator("variants")
    @classmethod
    def _unique(cls, v):
        names = [x.name for x in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate variant names {dup}")
        return v


def variant_config(base: dict, variant: Variant, seed: int, experiment: str) -> dict:
    """``base`` with the variant's overrides and the seed applied (a new dict)."""
    data = copy.deepcopy(base)
    for key, value in variant.set.items():
        apply_override(data, key.split("."), copy.deepcopy(value), f"{key}={value}")
    data.setdefault("train", {})["seed"] = seed
    return data


def config_hash(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _validator(experiment: str):
    if experiment == "vision":
        from neurobit.train.classifier import VisionRunConfig
        return VisionRunConfig
    from neurobit.train.run_config import LMFileConfig
    return LMFileConfig


_UNION_TAGS = ("brain", "gpt", "moie", "dynsiha", "bit_ttt", "bit_llama", "conv", "dense")
"""pydantic's discriminated-union tags in error locations (not keys of the user's file)."""


def _locate(e: ValidationError, variant: Variant, i: int, where: _Located) -> ConfigError:
    err = e.errors()[0]
    loc = tuple(str(p) for p in err["loc"] if p not in _UNION_TAGS)
    msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix(
        "Value error, ")
    for n in range(len(loc), 0, -1):
        key = ".".join(loc[:n])
        if key in variant.set:
            sub = ".".join(loc[n:])
            return where.error(("variants", i, "set", key), f"{sub}: {msg}" if sub else msg)
    return where.error(("base",) + loc, f"{msg} (in variant {variant.name!r})")


def load_ablation(path: str | Path) -> tuple[AblationConfig, list[dict]]:
    """The validated ablation file and the resolved run config of every variant (seed 0
    placeholder); relative ``out``, ``data.source`` and ``data.cache_dir`` paths are resolved
    against the file's folder."""
    path = Path(path)
    data, where = read_yaml_file(path)
    try:
        cfg = AblationConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        msg = ("unknown key" if err["type"] == "extra_forbidden"
               else err["msg"].removeprefix("Value error, "))
        raise where.error(tuple(err["loc"]), msg) from None
    base = copy.deepcopy(cfg.base)
    d = base.get("data")
    if isinstance(d, dict):
        for key in ("cache_dir", "source"):
            v = d.get(key)
            if isinstance(v, str) and ("/" in v or v.startswith(".")):
                d[key] = str((path.parent / v).resolve())
    out = Path(cfg.out) if cfg.out else Path("runs") / "ablations" / cfg.name
    if cfg.out and not out.is_absolute():
        out = (path.parent / out).resolve()
    cfg = cfg.model_copy(update={"base": base, "out": str(out)})
    validator = _validator(cfg.experiment)
    resolved = []
    for i, v in enumerate(cfg.variants):
        try:
            run = variant_config(base, v, cfg.seeds[0], cfg.experiment)
        except ConfigError as e:
            raise where.error(("variants", i, "set"), str(e)) from None
        try:
            probe = dict(run)
            if cfg.experiment == "lm":
                try:
                    DecodeEval.model_validate(probe.pop("decode", None) or {})
                except ValidationError as e:
                    err = e.errors()[0]
                    raise where.error(("base", "decode") + tuple(err["loc"]), err["msg"]) from None
                if isinstance(run.get("model"), dict):
                    probe["model"] = {"vocab_size": 2, **run["model"]}
            validator.model_validate(probe)
        except ValidationError as e:
            raise _locate(e, v, i, where) from None
        resolved.append(run)
    return cfg, resolved
