"""Compiled circuits: a circuit file's network frozen into one safetensors file.

``compile_circuit(config, out)`` builds the network of a circuit YAML and writes, through
:func:`neurobit.compile.artifact.write_compiled` (atomic write, no pickle):

    projections.<i>.codes   uint8   projection i's ternary codes ``[target, source]`` (banked:
                                    ``[circuits, target, source]``), packed 2 bits per weight
                                    (or 5 trits per byte, ``packing="trit5"``)
    projections.<i>.scale   float   its scale (the projection's ``weight``)
    blocks.<name>.<key>     float   the parameters of hub block ``name`` (ternary layers packed
                                    as above), so a hub never needs its checkpoint again
    dtype_marker            float   ``[1]`` zero in the network's dtype

with metadata ``neurobit_compiled = "1"``, ``kind = "circuit"``, ``config`` = the resolved
config YAML (:func:`neurobit.sim.run.resolved_yaml`), ``packing``, ``ternary_layers`` and
``source`` (the YAML's path).

Loading rebuilds the modules from the stored config, then freezes every projection (and hub) to
the stored codes and scales; projection ``checkpoint`` and hub ``checkpoint`` entries are not
read again. The engine then runs exactly as for the YAML: per step
``u_t = drive_t + sum_p scale_p * (codes_p s_{t-1})`` and ``v_t = alpha v_{t-1} + u_t -
beta s_{t-1}``, so the spikes equal those of the YAML run bit for bit (tested for every shipped
circuit). ``--set`` style overrides (e.g. ``duration_ms=100``) may change the run but not the
weights: a changed projection shape or weight is refused.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from neurobit.compile.artifact import is_compiled, read_compiled, write_compiled
from neurobit.config.loader import (_Located, apply_override, load_circuit, load_yaml_text,
                                    parse_override, validate_circuit)
from neurobit.config.schema import CircuitConfig
from neurobit.errors import NeurobitError
from neurobit.sim.engine import Engine, RunSummary
from neurobit.sim.network import Network

KIND = "circuit"


class _CircuitWeights(nn.Module):
    """What a compiled circuit stores: the projections' BitLinears (shared with the engine's
    network, not copied), the hub blocks' modules and a dtype marker."""

    def __init__(self, engine: Engine):
        super().__init__()
        self.projections = nn.ModuleList([p.linear for p in engine.net.projections])
        self.blocks = nn.ModuleDict({b.name: b.hub for b in engine.blocks})
        self.register_buffer("dtype_marker", torch.zeros(1, dtype=engine.net.dtype))


def compile_circuit(config_path: str | Path, out_path: str | Path, packing: str = "2bit",
                    overrides: Sequence[str] = ()) -> Path:
    """Build the circuit of ``config_path`` (with ``--set`` ``overrides``) and write its compiled
    file to ``out_path`` atomically; returns ``out_path``."""
    from neurobit.sim.run import build_engine, resolved_yaml
    cfg = load_circuit(config_path, list(overrides))
    engine = build_engine(cfg)
    return write_compiled(out_path, _CircuitWeights(engine), KIND, resolved_yaml(cfg),
                          packing=packing, source=str(Path(config_path).resolve()))


def _metadata(path: Path) -> dict:
    """The safetensors metadata of a compiled circuit; one-line errors naming ``path``."""
    from safetensors import safe_open
    if not path.is_file():
        raise NeurobitError(f"{path}: no such file")
    if not is_compiled(path):
        raise NeurobitError(f"{path}: not a neurobit compiled circuit (expected a file written "
                            "by `neurobit compile CIRCUIT.yaml`)")
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    if meta.get("kind") != KIND:
        raise NeurobitError(f"{path}: a compiled {meta.get('kind')!r} model, not a circuit")
    return meta


def _run_config(path: Path, meta: dict, overrides: Sequence[str]) -> CircuitConfig:
    """The stored config with ``overrides`` applied, validated; weights come from the file, so
    projection and hub checkpoints are dropped."""
    if not isinstance(meta.get("config"), str):
        raise NeurobitError(f"{path}: corrupted compiled circuit: no stored config")
    data, lines = load_yaml_text(meta["config"], f"{path}[config]")
    for item in overrides:
        keys, value = parse_override(item)
        apply_override(data, keys, value, item)
    for pr in data.get("projections") or []:
        if isinstance(pr, dict):  # the stored codes are dense (a conv kernel is unrolled)
            pr["checkpoint"] = pr["key"] = pr["conv"] = None
    for b in (data.get("blocks") or {}).values():
        if isinstance(b, dict):
            b["checkpoint"] = None
    source = Path(meta.get("source") or path)
    return validate_circuit(data, _Located(f"{path}[config]", lines), base_dir=source.parent)


def _one_line(path: Path, e: Exception) -> NeurobitError:
    """``e`` as a one-line NeurobitError that names ``path``."""
    msg = (str(e).splitlines() or [""])[0] or type(e).__name__
    if isinstance(e, NeurobitError):
        return NeurobitError(msg if str(path) in msg else f"{path}: {msg}")
    return NeurobitError(f"{path}: corrupted compiled circuit: {msg}")


def _check_codes(path: Path, meta: dict) -> None:
    """Unpack every stored code tensor once: a damaged byte is an error here, not a wrong
    weight later."""
    from safetensors import safe_open
    from neurobit.functional.packing import PACKERS
    try:
        _, unpack = PACKERS[meta["packing"]]
        with safe_open(str(path), "pt") as f:
            for name, shape in json.loads(meta["ternary_layers"]).items():
                unpack(f.get_tensor(f"{name}.codes"), tuple(shape))
                f.get_tensor(f"{name}.scale")
    except Exception as e:  # noqa: BLE001 (safetensors, JSON, key and packing errors)
        raise _one_line(path, e) from None


def load_compiled_circuit(path: str | Path, overrides: Sequence[str] = ()) -> CircuitConfig:
    """The circuit config stored in compiled file ``path`` (plus ``overrides``); the stored codes
    are checked to unpack."""
    path = Path(path)
    meta = _metadata(path)
    _check_codes(path, meta)
    return _run_config(path, meta, overrides)


def build_compiled_engine(path: str | Path, overrides: Sequence[str] = (),
                          stepper: str | None = None) -> Engine:
    """An :class:`Engine` (monitors as in the stored config) whose projections and hubs hold the
    codes and scales stored in ``path``. ``stepper`` overrides the config's
    (``auto`` | ``reference`` | ``fused``)."""
    from neurobit.sim.run import build_engine
    path = Path(path)
    meta = _metadata(path)
    extra = [f"stepper={stepper}"] if stepper is not None else []
    cfg = _run_config(path, meta, [*overrides, *extra])
    made: list[Engine] = []

    def build(kind: str, config_text: str) -> nn.Module:
        made.append(build_engine(cfg))  # weights drawn from the seed, replaced from the file
        return _CircuitWeights(made[0])

    try:
        read_compiled(path, build)
    except Exception as e:  # noqa: BLE001 (a damaged file: safetensors, shape or data errors)
        raise _one_line(path, e) from None
    engine = made[0]
    for i, proj in enumerate(engine.net.projections):
        stored = proj.linear.quantized()
        proj.__post_init__()  # refresh the event-driven copy (codes^T, scale) of the synapses
        if not (torch.equal(proj.linear.quantized().codes, stored.codes)
                and torch.equal(proj.linear.quantized().scale, stored.scale)):
            raise NeurobitError(f"{path}: projections.{i}: weight {proj.cfg.weight} differs from "
                                f"the compiled scale {float(stored.scale.reshape(-1)[0])}")
    return engine


def build_network_from_compiled(path: str | Path, overrides: Sequence[str] = ()) -> Network:
    """The :class:`Network` of compiled file ``path`` (stored codes and scales)."""
    return build_compiled_engine(path, overrides).net


def simulate_compiled(path: str | Path, out_h5: str | Path, *, force: bool = False,
                      stepper: str | None = "auto", overrides: Sequence[str] = (),
                      progress: Callable[[int], None] | None = None) -> RunSummary:
    """Run compiled circuit ``path`` and write ``out_h5`` as :func:`neurobit.sim.run.simulate`
    does (same layout and metadata; ``/neurobit`` ``extra`` names the compiled file).
    ``stepper``: ``auto`` (fused where the circuit allows it), ``fused``, ``reference`` or None
    (the stored config's)."""
    from neurobit.sim.run import run_to_file

    engine = build_compiled_engine(path, overrides, stepper)
    return run_to_file(engine, out_h5, force=force, progress=progress,
                       extra={"compiled": str(Path(path).resolve())})


def compiled_circuit_info(path: str | Path) -> dict:
    """Name, source, packing, projections and storage (bits per ternary weight) of ``path``."""
    from neurobit.compile.artifact import ternary_storage
    path = Path(path)
    meta = _metadata(path)
    layers = json.loads(meta["ternary_layers"])
    return {"source": meta.get("source"), "packing": meta["packing"],
            "layers": layers, **ternary_storage(path)}
