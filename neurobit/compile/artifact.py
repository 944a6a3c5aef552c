"""The compiled-model file: one safetensors file, ternary weights packed, no pickle.

Layout (``neurobit compile CHECKPOINT -o MODEL.nbc``)::

    <layer>.codes   uint8   ternary codes of every ternary BitLinear, packed (2 bits per
                            weight, or 5 trits per byte with ``--packing trit5``)
    <layer>.scale   float   its scale (``[]`` or ``[banks, 1, 1]``)
    <name>          float   every other parameter and buffer (embeddings, norms, float layers)

and string metadata: ``neurobit_compiled`` (format version), ``kind`` (``brain`` | ``gpt``),
``config`` (the model config, JSON), ``packing``, ``ternary_layers`` (JSON: name -> shape),
``tokenizer`` (the tokenizer JSON, so the file is self-contained), ``source`` and
``neurobit_version``. The file is written to a temporary name and renamed, so a crash never
leaves a half-written model under the final name.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from neurobit._version import __version__
from neurobit.errors import NeurobitError, ParameterError
from neurobit.functional.packing import PACKERS
from neurobit.modules.bitlinear import BitLinear

FORMAT_VERSION = "1"


class CompiledFile(NamedTuple):
    """What :func:`read_compiled` returns: the frozen model, its metadata and tokenizer JSON."""

    model: torch.nn.Module
    meta: dict
    tokenizer_json: str | None


def ternary_layers(model: torch.nn.Module) -> dict[str, BitLinear]:
    """Every BitLinear of ``model`` that stores ternary codes (not ``quant='float'``)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, BitLinear) and m.quant != "float"}


def write_compiled(path: str | Path, model: torch.nn.Module, kind: str, config_json: str,
                   tokenizer_json: str | None = None, packing: str = "2bit",
                   source: str = "") -> Path:
    """Pack ``model``'s ternary layers and write everything to ``path`` atomically."""
    if packing not in PACKERS:
        raise ParameterError(f"packing: unknown {packing!r}; choose one of {list(PACKERS)}")
    path = Path(path)
    layers = ternary_layers(model)
    skip = set()
    tensors: dict[str, torch.Tensor] = {}
    shapes = {}
    for name, layer in layers.items():
        packed = layer.export_packed(packing)
        tensors[f"{name}.codes"] = packed["codes"]
        tensors[f"{name}.scale"] = packed["scale"].contiguous()
        if "bias" in packed:
            tensors[f"{name}.bias"] = packed["bias"]
        shapes[name] = [int(n) for n in packed["shape"]]
        skip.update({f"{name}.weight", f"{name}.bias"})
    for key, val in model.state_dict().items():
        if key not in skip:
            tensors[key] = val.detach().contiguous()
    meta = {"neurobit_compiled": FORMAT_VERSION, "kind": kind, "config": config_json,
            "packing": packing, "ternary_layers": json.dumps(shapes),
            "source": str(source), "neurobit_version": __version__}
    if tokenizer_json is not None:
        meta["tokenizer"] = tokenizer_json
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def is_compiled(path: str | Path) -> bool:
    """True when ``path`` is a file written by :func:`write_compiled`."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as f:
            return "neurobit_compiled" in (f.metadata() or {})
    except Exception:  # not a safetensors file
        return False


def read_compiled(path: str | Path, build) -> CompiledFile:
    """Load a compiled file: ``build(kind, config_json) -> module`` makes the empty model, whose
    ternary layers are then frozen to the stored codes (unpacked) and scales."""
    path = Path(path)
    if not is_compiled(path):
        raise NeurobitError(f"{path}: not a neurobit compiled model (expected a file written by "
                            "`neurobit compile`)")
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta["neurobit_compiled"] != FORMAT_VERSION:
        raise NeurobitError(f"{path}: compiled format {meta['neurobit_compiled']} is not "
                            f"supported (this neurobit reads {FORMAT_VERSION})")
    model = build(meta["kind"], meta["config"])
    shapes = json.loads(meta["ternary_layers"])
    layers = ternary_layers(model)
    if set(shapes) != set(layers):
        raise NeurobitError(f"{path}: ternary layers {sorted(set(shapes) ^ set(layers))} do not "
                            "match the model its config builds")
    packed_keys = {f"{n}.{part}" for n in shapes for part in ("codes", "scale", "bias")}
    rest = {k: v for k, v in tensors.items() if k not in packed_keys}
    missing, unexpected = model.load_state_dict(rest, strict=False)
    missing = [k for k in missing if k.rsplit(".", 1)[0] not in shapes]
    if missing or unexpected:
        raise NeurobitError(f"{path}: tensors missing {missing[:3]} / unexpected "
                            f"{unexpected[:3]}")
    dtype = next(iter(rest.values())).dtype if rest else torch.float32
    model.to(dtype)
    for name, layer in layers.items():
        packed = {"codes": tensors[f"{name}.codes"], "scale": tensors[f"{name}.scale"],
                  "shape": torch.tensor(shapes[name])}
        if f"{name}.bias" in tensors:
            packed["bias"] = tensors[f"{name}.bias"]
        layer.load_packed(packed, meta["packing"])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return CompiledFile(model, meta, meta.get("tokenizer"))


def ternary_storage(path: str | Path) -> dict:
    """Bytes of a compiled file: total, packed ternary codes, and bits per ternary weight."""
    path = Path(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        shapes = json.loads(meta["ternary_layers"])
        code_bytes = sum(f.get_tensor(f"{n}.codes").numel() for n in shapes)
    n_weights = sum(int(torch.tensor(s).prod()) for s in shapes.values())
    return {"file_bytes": path.stat().st_size, "code_bytes": code_bytes,
            "ternary_weights": n_weights,
            "bits_per_ternary_weight": 8 * code_bytes / max(1, n_weights)}
