"""``simulate(cfg, out)``: build the network, open the recorder, run the engine, mark complete.

Nothing is created on disk until the config has validated and the network has been built, so
bad input leaves no output file. A run that fails or is interrupted after that leaves its file
with ``/neurobit.complete = False`` and every chunk written before the failure.
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from neurobit._version import __version__
from neurobit.config.checks import population_units
from neurobit.config.schema import CircuitConfig
from neurobit.sim.engine import Engine, RunSummary, StateMonitor
from neurobit.sim.blocks import build_blocks
from neurobit.sim.network import build_network


def resolved_yaml(cfg: CircuitConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def versions() -> dict[str, str]:
    import h5py
    import torch
    return {"neurobit": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "h5py": h5py.__version__, "python": platform.python_version()}


def build_engine(cfg: CircuitConfig) -> Engine:
    net = build_network(cfg)
    state_monitors = []
    for m in cfg.monitors.state:
        n = population_units(cfg, m.population)
        idx = np.arange(n) if m.indices is None else np.asarray(m.indices, dtype=np.int64)
        state_monitors.append(StateMonitor(m.population, idx, m.every_steps))
    engine = Engine(net, list(cfg.monitors.spikes), state_monitors, cfg.chunk_steps, cfg.stepper)
    engine.blocks = build_blocks(cfg, net.dtype)
    return engine


def simulate(cfg: CircuitConfig, out: str | Path, *, force: bool = False,
             progress: Callable[[int], None] | None = None) -> RunSummary:
    """Run ``cfg`` and write ``out`` (SONATA HDF5). Refuses an existing ``out`` unless ``force``."""
    return run_to_file(build_engine(cfg), out, force=force, progress=progress)


def run_to_file(engine: Engine, out: str | Path, *, force: bool = False,
                progress: Callable[[int], None] | None = None,
                extra: dict | None = None) -> RunSummary:
    """Run a built engine and write ``out``: metadata (resolved config, seed, versions, and
    ``extra``), every monitor and block signal, streamed in chunks, then the complete flag."""
    from neurobit.record import RunWriter

    cfg = engine.net.cfg
    with RunWriter(out, overwrite=force, chunk_steps=cfg.chunk_steps) as w:
        w.write_metadata(config_yaml=resolved_yaml(cfg), seed=cfg.seed, dt_ms=cfg.dt_ms,
                         n_steps=engine.n_steps, n_trials=cfg.trials, versions=versions(),
                         extra=extra)
        for name in cfg.monitors.spikes:
            w.add_spike_population(name, population_units(cfg, name))
        for m in engine.state_monitors:
            w.add_report(m.population, m.indices, m.every_steps, variable="v")
        for block in engine.blocks:
            for name, (shape, dtype) in block.signal_specs().items():
                w.add_signal(name, shape, dtype, every_steps=block.b.every_steps)
        summary = engine.run(w, progress)
        w.close(complete=True)
    return summary
