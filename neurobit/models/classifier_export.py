"""Export a trained :class:`SpikingClassifier` as a circuit file for ``neurobit simulate``.

Each hidden layer becomes a LIF population (``alpha``, ``theta`` of the model, reset by
subtraction), the readout a population that never fires (``theta`` = :data:`NEVER`) whose
membrane ``v`` is recorded; the image is an ``image`` stimulus with the model's encoding. Every
projection loads its ternary codes (int8) from one safetensors file, with ``weight`` = the
layer's scale times its learned gain (the effective weight of a +1 code), so the simulator
applies exactly ``W = weight * codes``; conv layers keep their kernel and the simulator
unrolls it (``projections[i].conv``). The class the simulator predicts is the argmax of the
readout membrane at the last step (:func:`predicted_class`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

from neurobit._atomic import atomic_write, atomic_write_text
from neurobit.errors import ParameterError
from neurobit.models.spiking_classifier import SpikingClassifier, TernaryConv2d

NEVER = 1.0e9
"""Threshold of the readout population: its membrane is the logit and it never spikes."""


def _layer_name(i: int) -> str:
    return f"layer{i + 1}"


def export_circuit(model: SpikingClassifier, out_yaml: str | Path, image_source: str,
                   weights_file: str | Path | None = None, name: str = "classifier",
                   trials: int = 1, seed: int = 0) -> Path:
    """Write ``out_yaml`` (and the codes to ``weights_file``, default next to it with suffix
    ``.safetensors``); paths inside the YAML are relative to the YAML's folder."""
    cfg = model.cfg
    if cfg.neuron != "lif" or cfg.weights != "ternary":
        raise ParameterError("model: only LIF units with ternary weights map onto a circuit "
                             f"(got neuron={cfg.neuron!r}, weights={cfg.weights!r})")
    out_yaml = Path(out_yaml)
    weights_file = Path(weights_file) if weights_file else out_yaml.with_suffix(".safetensors")
    gains = model.gains().detach().to(torch.float64)
    tensors, projections = {}, []
    src, src_shape = "image", cfg.input_shape
    populations = {}
    for i, (syn, shape) in enumerate(zip(model.synapses, cfg.shapes())):
        q = syn.quantized()
        key = f"{_layer_name(i)}.codes"
        tensors[key] = q.codes.detach().to(torch.int8).contiguous()
        pr = {"source": src, "target": _layer_name(i), "checkpoint": weights_file.name,
              "key": key, "weight": float(q.scale.detach().double() * gains[i])}
        if isinstance(syn, TernaryConv2d):
            pr["conv"] = {"in_shape": list(src_shape), "stride": syn.stride[0],
                          "padding": syn.padding[0]}
        projections.append(pr)
        populations[_layer_name(i)] = {"size": math.prod(shape), "alpha": cfg.alpha,
                                       "theta": cfg.theta}
        src, src_shape = _layer_name(i), shape
    q = model.readout.quantized()
    tensors["readout.codes"] = q.codes.detach().to(torch.int8).contiguous()
    projections.append({"source": src, "target": "readout", "checkpoint": weights_file.name,
                        "key": "readout.codes",
                        "weight": float(q.scale.detach().double() * gains[-1])})
    populations["readout"] = {"size": cfg.n_classes, "alpha": cfg.readout_alpha, "theta": NEVER}
    if cfg.readout_alpha >= 1:
        raise ParameterError("readout_alpha: the simulator needs a decay < 1")
    circuit = {
        "name": name, "dt_ms": cfg.dt_ms, "duration_ms": cfg.steps * cfg.dt_ms,
        "trials": trials, "seed": seed, "dtype": "float64", "stepper": "reference",
        "populations": populations,
        "stimuli": {"image": {"type": "image", "source": image_source, "encoding": cfg.encoding,
                              "max_rate_hz": cfg.max_rate_hz}},
        "projections": projections,
        "monitors": {"spikes": [_layer_name(i) for i in range(len(cfg.layers))],
                     "state": [{"population": "readout"}]},
    }
    weights_file.parent.mkdir(parents=True, exist_ok=True)
    def write_weights(p):
        save_file(tensors, p, metadata={"format": "neurobit-classifier-circuit"})
        os.chmod(p, 0o644)
    atomic_write(weights_file, write_weights)
    header = (f"# {name}: a trained ternary spiking classifier ({len(cfg.layers)} LIF layers, "
              f"{cfg.steps} steps, {cfg.encoding} code)\n# exported by "
              f"neurobit.models.classifier_export; the class is argmax of the readout membrane "
              f"at the last step\n")
    atomic_write_text(out_yaml, header + yaml.safe_dump(circuit, sort_keys=False))
    return out_yaml


def predicted_class(readout_v: np.ndarray) -> np.ndarray:
    """Class per trial from the recorded readout membrane ``[steps, trials, classes]`` (or
    ``[steps, classes]``): argmax at the last step."""
    v = np.asarray(readout_v)
    return np.argmax(v[-1], axis=-1)
