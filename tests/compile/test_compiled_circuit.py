"""Compiled circuits (``neurobit.compile.circuit``) against the circuit YAML they came from.

For every shipped circuit in ``sims/*.yaml`` (durations shortened with ``--set`` overrides) the
compiled file, run by the default stepper (fused where the circuit allows it), records the same
spike raster and membrane reports as the reference stepper run of the YAML, compared with
``torch.equal``. The file stores at most 2 bits per ternary weight (1.6 with trit5); the
weights really come from the file; a damaged, foreign or missing file is refused with one line
naming it; an override that would change the stored weights is refused.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from neurobit.compile.artifact import ternary_storage, write_compiled
from neurobit.compile.circuit import (build_compiled_engine, build_network_from_compiled,
                                      compile_circuit, load_compiled_circuit, simulate_compiled)
from neurobit.config.loader import load_circuit
from neurobit.errors import NeurobitError
from neurobit.modules.bitlinear import BitLinear
from neurobit.record import read_run
from neurobit.sim.network import build_network
from neurobit.sim.run import simulate

ROOT = Path(__file__).resolve().parents[2]
SIMS = sorted((ROOT / "sims").glob("*.yaml"))


def short(path: Path) -> list[str]:
    """Overrides that keep a shipped circuit's test run short: 1000 steps of 0.1 ms, or 600 of
    1 ms (past the 500 ms onset of cortical_hub's late input and microcircuit_bank's bias)."""
    dt = float(yaml.safe_load(path.read_text())["dt_ms"])
    return [f"duration_ms={100 if dt < 1 else 600}"]


def rasters(h5: Path) -> tuple[dict, dict]:
    """``{population: bool [steps, trials, units]}`` and ``{report: data}`` of a run file."""
    out, reps = {}, {}
    with read_run(h5) as run:
        assert run.complete
        steps, trials = run.n_steps, run.n_trials
        for pop in run.populations:
            r = torch.zeros((steps, trials, run.n_nodes(pop)), dtype=torch.bool)
            for trial in range(trials):
                t, ids = run.spikes(pop, trial)
                r[torch.as_tensor(np.round(t / run.dt_ms).astype(np.int64)), trial,
                  torch.as_tensor(ids)] = True
            out[pop] = r
        for name in run.reports:
            reps[name] = torch.as_tensor(run.report(name)[2])
    return out, reps


@pytest.mark.parametrize("sim", SIMS, ids=[p.stem for p in SIMS])
def test_compiled_run_equals_reference_run_of_the_yaml(sim, tmp_path):
    over = short(sim)
    compiled = compile_circuit(sim, tmp_path / "c.nbc", overrides=over)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.nbc"]  # atomic: no temp left
    simulate(load_circuit(sim, [*over, "stepper=reference"]), tmp_path / "ref.h5")
    simulate_compiled(compiled, tmp_path / "comp.h5")
    ref, ref_rep = rasters(tmp_path / "ref.h5")
    comp, comp_rep = rasters(tmp_path / "comp.h5")
    assert set(ref) == set(comp) and ref
    for pop in ref:
        assert int(ref[pop].sum()) > 50, pop  # the short run is active
        assert torch.equal(ref[pop], comp[pop]), pop
    assert set(ref_rep) == set(comp_rep)
    for name in ref_rep:
        assert torch.equal(ref_rep[name], comp_rep[name]), name
    # the stored config is the YAML's resolved config, except that weights come from the
    # compiled file: projection checkpoints (and a conv kernel's geometry) are dropped
    want = load_circuit(sim, over).model_dump()
    for pr in want["projections"]:
        pr.update(checkpoint=None, key=None, conv=None)
    assert load_compiled_circuit(compiled).model_dump() == want
    with read_run(tmp_path / "comp.h5") as run:
        assert run.extra["compiled"] == str(compiled.resolve())


@pytest.mark.parametrize("sim", SIMS, ids=[p.stem for p in SIMS])
def test_packed_bits_per_ternary_weight(sim, tmp_path):
    for packing, limit, per_byte in (("2bit", 2.0, 4), ("trit5", 1.61, 5)):
        path = compile_circuit(sim, tmp_path / f"{packing}.nbc", packing=packing,
                               overrides=short(sim))
        st = ternary_storage(path)
        layers = json.loads(json.loads(_header(path)[0])["__metadata__"]["ternary_layers"])
        n = [math.prod(s) for s in layers.values()]
        assert st["ternary_weights"] == sum(n) > 1000
        assert st["code_bytes"] == sum(math.ceil(k / per_byte) for k in n)
        assert st["bits_per_ternary_weight"] <= limit
        # scales and other tensors are a small part of the file
        assert st["file_bytes"] < st["code_bytes"] + 8 * 1024 + 40 * len(n)


def test_trit5_file_gives_the_same_spikes(tmp_path):
    sim = ROOT / "sims" / "poisson_microcircuit.yaml"
    a = compile_circuit(sim, tmp_path / "a.nbc", overrides=short(sim))
    b = compile_circuit(sim, tmp_path / "b.nbc", packing="trit5", overrides=short(sim))
    simulate_compiled(a, tmp_path / "a.h5")
    simulate_compiled(b, tmp_path / "b.h5", stepper="reference")
    ra, _ = rasters(tmp_path / "a.h5")
    rb, _ = rasters(tmp_path / "b.h5")
    assert int(ra["circuit"].sum()) > 50 and torch.equal(ra["circuit"], rb["circuit"])


def test_weights_come_from_the_file_not_the_seed(tmp_path):
    sim = ROOT / "sims" / "poisson_microcircuit.yaml"
    path = compile_circuit(sim, tmp_path / "c.nbc")
    net = build_network_from_compiled(path, ["seed=7"])  # another seed: other stimuli only
    orig = build_network(load_circuit(sim))
    redrawn = build_network(load_circuit(sim, ["seed=7"]))
    assert net.cfg.seed == 7
    for p, o, r in zip(net.projections, orig.projections, redrawn.projections):
        assert torch.equal(p._codes_t, o._codes_t)
        assert torch.equal(p.linear.effective_weight(), o.linear.effective_weight())
        assert not torch.equal(p._codes_t, r._codes_t)


def _header(path: Path) -> tuple[bytes, int]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return raw[8:8 + n], 8 + n


def _one_line_naming(path: Path, exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert len(msg.splitlines()) == 1, msg
    assert str(path) in msg, msg
    return msg


def test_damaged_or_foreign_files_are_refused_in_one_line(tmp_path):
    sim = ROOT / "sims" / "poisson_microcircuit.yaml"
    good = compile_circuit(sim, tmp_path / "good.nbc", overrides=short(sim))
    raw = good.read_bytes()
    header, data0 = _header(good)
    cases = {}
    cases["truncated.nbc"] = raw[: len(raw) // 2]
    cases["noise.nbc"] = bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))
    cases["circuit.yaml"] = sim.read_bytes()
    # a packed code byte set to 0xFF: 2-bit code 3 is not a ternary value
    start = json.loads(header)["projections.0.codes"]["data_offsets"][0]
    bad = bytearray(raw)
    bad[data0 + start] = 0xFF
    cases["bad_code.nbc"] = bytes(bad)
    # the JSON header broken in the middle
    broken = bytearray(raw)
    broken[8 + len(header) // 2] = ord("{")
    cases["bad_header.nbc"] = bytes(broken)
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    save_file({"x": torch.zeros(3)}, str(tmp_path / "plain.safetensors"))
    lm = torch.nn.Sequential(BitLinear(4, 3))
    write_compiled(tmp_path / "lm.nbc", lm, "gpt", "{}")
    for name in [*cases, "plain.safetensors", "lm.nbc", "missing.nbc"]:
        path = tmp_path / name
        for call in (lambda: simulate_compiled(path, tmp_path / "x.h5"),
                     lambda: load_compiled_circuit(path)):
            with pytest.raises(NeurobitError) as e:
                call()
            msg = _one_line_naming(path, e)
            if name == "lm.nbc":
                assert "not a circuit" in msg
        assert not (tmp_path / "x.h5").exists()


def test_overrides_that_change_the_weights_are_refused(tmp_path):
    sim = ROOT / "sims" / "poisson_microcircuit.yaml"
    path = compile_circuit(sim, tmp_path / "c.nbc")
    with pytest.raises(NeurobitError) as e:
        build_compiled_engine(path, ["projections.1.weight=0.3"])
    assert "projections.1" in _one_line_naming(path, e)
    with pytest.raises(NeurobitError) as e:
        build_compiled_engine(path, ["populations.circuit.size=150"])
    _one_line_naming(path, e)
    # run-only overrides are fine and take effect
    eng = build_compiled_engine(path, ["duration_ms=20", "trials=3"], stepper="fused")
    assert (eng.n_steps, eng.trials, eng.net.cfg.stepper) == (20, 3, "fused")
