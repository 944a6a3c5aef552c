"""Cross-field checks of a parsed circuit file: references, units, files, memory.

``check_semantics(cfg, base_dir)`` returns a list of ``(key path, message)``; the loader
reports the first one with its line. Relative file paths are resolved against ``base_dir``
(the circuit file's folder) in place, so the saved resolved config names real files.
"""
from __future__ import annotations

from pathlib import Path

from neurobit.config.schema import (CircuitConfig, ImageStimulus, SpikeFileStimulus,
                                    TextStimulus)
from neurobit.errors import NeurobitError

SPIKE_SOURCES = ("poisson", "spike_file", "image", "text")


def spike_source_size(stim) -> int | None:
    """Number of channels of a spike-emitting stimulus (None for currents)."""
    if stim.type in ("poisson", "spike_file"):
        return stim.size
    if stim.type == "image":
        from neurobit.sim.stimuli import load_image
        return int(load_image(stim.source).size)
    if stim.type == "text":
        from neurobit.sim.stimuli import text_vocab
        return len(text_vocab(stim))
    return None


def population_units(cfg: CircuitConfig, name: str) -> int:
    p = cfg.populations[name]
    return p.size * p.circuits


def estimate_bytes(cfg: CircuitConfig) -> int:
    """Rough peak memory of a run: weights (master + codes + effective, 3 copies), chunk buffers
    of stimuli and spikes, state."""
    item = 4 if cfg.dtype == "float32" else 8
    sizes = {n: population_units(cfg, n) for n in cfg.populations}
    for n, s in cfg.stimuli.items():
        if s.type in SPIKE_SOURCES:
            try:
                sizes[n] = spike_source_size(s) or 0
            except Exception:
                sizes[n] = 0
    weights = sum(sizes.get(p.source, 0) * sizes.get(p.target, 0) for p in cfg.projections)
    units = sum(sizes.values())
    buffers = cfg.chunk_steps * cfg.trials * units * 2
    return int(item * (3 * weights + buffers + 4 * cfg.trials * units))


def source_units(cfg: CircuitConfig, name: str) -> int:
    if name in cfg.populations:
        return population_units(cfg, name)
    return spike_source_size(cfg.stimuli[name]) or 0


def is_per_circuit(cfg: CircuitConfig, pr) -> bool:
    """A projection between two banks of the same number of circuits connects circuit m to
    circuit m only (block-diagonal); recurrent projections of a bank are such."""
    tgt = cfg.populations[pr.target]
    src = cfg.populations.get(pr.source)
    return tgt.circuits > 1 and src is not None and src.circuits == tgt.circuits


def projection_shape(cfg: CircuitConfig, pr) -> tuple[int, ...]:
    """Weight shape: ``[target units, source units]``; banked targets
    ``[circuits, size, source units]`` (source units per circuit when per-circuit)."""
    tgt = cfg.populations[pr.target]
    if tgt.circuits == 1:
        return (tgt.size, source_units(cfg, pr.source))
    if is_per_circuit(cfg, pr):
        return (tgt.circuits, tgt.size, cfg.populations[pr.source].size)
    return (tgt.circuits, tgt.size, source_units(cfg, pr.source))


def _resolve(base_dir: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else (base_dir / q).resolve()


def check_semantics(cfg: CircuitConfig, base_dir: Path) -> list[tuple[tuple, str]]:
    errs: list[tuple[tuple, str]] = []
    if not cfg.populations:
        errs.append((("populations",), "at least one population is required"))
    if cfg.duration_ms < cfg.dt_ms:
        errs.append((("duration_ms",), f"must be >= dt_ms ({cfg.dt_ms}), got {cfg.duration_ms}"))
    clash = set(cfg.populations) & set(cfg.stimuli)
    if clash:
        errs.append((("stimuli", sorted(clash)[0]), "name is already used by a population"))
    for name, p in cfg.populations.items():
        if p.alpha is None and p.tau_mem_ms is not None and cfg.dt_ms > p.tau_mem_ms:
            errs.append((("populations", name, "tau_mem_ms"),
                         f"dt_ms ({cfg.dt_ms}) > tau_mem_ms ({p.tau_mem_ms}): the step is "
                         f"longer than the membrane time constant"))
        if p.alpha is None and p.tau_mem_ms is None:
            errs.append((("populations", name, "tau_mem_ms"), "give tau_mem_ms or alpha"))
        errs += _backend_problems(cfg, name)
    for name, s in cfg.stimuli.items():
        loc = ("stimuli", name)
        if getattr(s, "target", None) is not None and s.target not in cfg.populations:
            errs.append((loc + ("target",), f"unknown population {s.target!r}"))
        start, stop = getattr(s, "start_ms", None), getattr(s, "stop_ms", None)
        if stop is not None and start is not None and stop <= start:
            errs.append((loc + ("stop_ms",), f"must be > start_ms ({start}), got {stop}"))
        if isinstance(s, SpikeFileStimulus) or (isinstance(s, TextStimulus) and s.path):
            f = _resolve(base_dir, s.path)
            if not f.is_file():
                errs.append((loc + ("path",), f"file not found: {f}"))
            else:
                s.path = str(f)
                if isinstance(s, SpikeFileStimulus):
                    from neurobit.sim.stimuli import read_spike_file
                    try:
                        read_spike_file(s, cfg.dt_ms)
                    except NeurobitError as e:
                        errs.append((loc + ("path",), str(e)))
        if isinstance(s, ImageStimulus):
            if not s.source.startswith("digits:"):
                f = _resolve(base_dir, s.source)
                if not f.is_file():
                    errs.append((loc + ("source",), f"file not found: {f}"))
                    continue
                s.source = str(f)
            try:
                spike_source_size(s)
            except NeurobitError as e:
                errs.append((loc + ("source",), str(e)))
    spike_sources = {n for n, s in cfg.stimuli.items() if s.type in SPIKE_SOURCES}
    for i, pr in enumerate(cfg.projections):
        if pr.source not in cfg.populations and pr.source not in spike_sources:
            errs.append((("projections", i, "source"),
                         f"unknown population or spike stimulus {pr.source!r}"))
        if pr.target not in cfg.populations:
            errs.append((("projections", i, "target"), f"unknown population {pr.target!r}"))
        if pr.checkpoint is not None and not errs:  # shapes need valid sources
            errs += _checkpoint_problems(cfg, i, base_dir)
    for i, name in enumerate(cfg.monitors.spikes):
        if name not in cfg.populations:
            errs.append((("monitors", "spikes", i), f"unknown population {name!r}"))
    for i, m in enumerate(cfg.monitors.state):
        if m.population not in cfg.populations:
            errs.append((("monitors", "state", i, "population"), f"unknown population {m.population!r}"))
        elif m.indices is not None:
            n = population_units(cfg, m.population)
            bad = [j for j in m.indices if j >= n]
            if bad:
                errs.append((("monitors", "state", i, "indices"),
                             f"index {bad[0]} out of range for {m.population} ({n} units)"))
    errs += _block_problems(cfg, base_dir)
    if not errs:
        need = estimate_bytes(cfg)
        if need > cfg.max_memory_gb * 2**30:
            errs.append((("populations",),
                         f"network too large: about {need / 2**30:.1f} GiB needed, "
                         f"max_memory_gb is {cfg.max_memory_gb}"))
    return errs


def _block_problems(cfg: CircuitConfig, base_dir: Path) -> list:
    errs = []
    for name, b in cfg.blocks.items():
        loc = ("blocks", name)
        if name in cfg.populations or name in cfg.stimuli:
            errs.append((loc, "block name is already used by a population or stimulus"))
        pop = cfg.populations.get(b.population)
        if pop is None:
            errs.append((loc + ("population",), f"unknown population {b.population!r}"))
            continue
        if pop.circuits < 2:
            errs.append((loc + ("population",), f"{b.population} has {pop.circuits} circuit; a "
                         f"hub integrates a bank (set populations.{b.population}.circuits >= 2)"))
            continue
        from neurobit.functional.attention import group_layout
        try:
            layout = group_layout(b.groups, pop.circuits)
        except NeurobitError as e:
            errs.append((loc + ("groups",), str(e)))
            continue
        if b.inhibition == "kwta" and b.k > min(layout.sizes()):
            errs.append((loc + ("k",), f"k = {b.k} exceeds the smallest group "
                         f"({min(layout.sizes())} circuits)"))
        if b.checkpoint is not None:
            f = _resolve(base_dir, b.checkpoint)
            if not f.is_file():
                errs.append((loc + ("checkpoint",), f"file not found: {f}"))
            else:
                b.checkpoint = str(f)
    return errs


def _backend_problems(cfg: CircuitConfig, name: str) -> list:
    from neurobit.modules.lif_population import LIFPopulation
    p = cfg.populations[name]
    try:
        LIFPopulation(1, **lif_kwargs(cfg, name))
    except NeurobitError as e:
        return [(("populations", name, "backend" if "backend" in str(e) else "alpha"), str(e))]
    return []


def lif_kwargs(cfg: CircuitConfig, name: str) -> dict:
    """LIFPopulation keyword arguments of population ``name``."""
    p = cfg.populations[name]
    kw = dict(theta=p.theta, beta=p.beta, backend=p.backend)
    if p.alpha is not None:
        kw["alpha"] = p.alpha
    else:
        kw.update(tau_mem_ms=p.tau_mem_ms, dt_ms=cfg.dt_ms)
    return kw


def _checkpoint_problems(cfg: CircuitConfig, i: int, base_dir: Path) -> list:
    pr = cfg.projections[i]
    loc = ("projections", i)
    f = _resolve(base_dir, pr.checkpoint)
    if not f.is_file():
        return [(loc + ("checkpoint",), f"file not found: {f}")]
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(f), framework="pt") as h:
            if pr.key not in h.keys():
                return [(loc + ("key",), f"tensor {pr.key!r} not in {f.name} "
                         f"(has {sorted(h.keys())[:5]})")]
            shape = tuple(h.get_slice(pr.key).get_shape())
    except (SafetensorError, OSError, ValueError) as e:
        return [(loc + ("checkpoint",), f"not a readable safetensors file: {e}")]
    pr.checkpoint = str(f)
    if pr.target not in cfg.populations:
        return []
    if pr.conv is not None:
        return _conv_problems(cfg, pr, loc, shape)
    want = projection_shape(cfg, pr)
    if shape != want:
        return [(loc + ("key",), f"checkpoint tensor shape {list(shape)} does not match "
                 f"the projection {list(want)}")]
    return []


def _conv_problems(cfg: CircuitConfig, pr, loc: tuple, shape: tuple) -> list:
    """A conv kernel ``[C_out, C_in, k, k]`` must fit ``conv.in_shape`` = the source units and
    give exactly the target's units."""
    from neurobit.functional.synapse import conv_output_shape
    c, h, w = pr.conv.in_shape
    if len(shape) != 4 or shape[2] != shape[3]:
        return [(loc + ("key",), f"a conv kernel must be [out, in, k, k], got {list(shape)}")]
    if shape[1] != c:
        return [(loc + ("conv", "in_shape"), f"kernel has {shape[1]} input channels, in_shape {c}")]
    if c * h * w != source_units(cfg, pr.source):
        return [(loc + ("conv", "in_shape"), f"{c}x{h}x{w} = {c * h * w} units, but the source "
                 f"{pr.source!r} has {source_units(cfg, pr.source)}")]
    out = conv_output_shape(pr.conv.in_shape, shape[0], shape[2], pr.conv.stride, pr.conv.padding)
    n_out = out[0] * out[1] * out[2]
    if n_out < 1 or n_out != population_units(cfg, pr.target):
        return [(loc + ("target",), f"the convolution gives {'x'.join(map(str, out))} = {n_out} "
                 f"units, but {pr.target!r} has {population_units(cfg, pr.target)}")]
    return []
