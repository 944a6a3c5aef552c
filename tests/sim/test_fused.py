"""The fused numba stepper (``neurobit.sim.fused``) against the reference torch stepper.

Both compute, per unit and step, ``u = drive; u += scale_p * count_p`` (projections in config
order, those without a source spike skipped) and ``v = (alpha v + u) - beta s``, so the spike
rasters and the recorded membranes must be *identical* (``torch.equal``), in float32 and
float64, over chunk boundaries, with 0, 1, 2 and more live projections into one population
(the kernel's specialised and generic loops), with populations that receive nothing, and on the
4000-unit benchmark network of ``analysis/benchmarks/brian2_network.py`` (100 ms = 1000 steps).
"""
from __future__ import annotations

import copy
import importlib.util
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from neurobit.config.schema import CircuitConfig
from neurobit.sim import fused
from neurobit.sim.run import build_engine

ROOT = Path(__file__).resolve().parents[2]


class Sink:
    """In-memory engine sink: spike events and membrane reports."""

    def __init__(self):
        self.spikes = defaultdict(list)
        self.reports = defaultdict(list)

    def append_spikes(self, name, steps, node_ids, trials):
        self.spikes[name].append((np.array(steps), np.array(node_ids), np.array(trials)))

    def append_report(self, name, data):
        self.reports[name].append(np.array(data, copy=True))

    def append_signal(self, name, data):
        pass

    def mark_steps(self, n):
        pass

    def flush(self):
        pass


def run(d: dict, stepper: str, **over):
    """Rasters ``{pop: bool [steps, trials, units]}`` and reports of one run of config ``d``."""
    d = {**copy.deepcopy(d), **over, "stepper": stepper}
    eng = build_engine(CircuitConfig.model_validate(d))
    sink = Sink()
    eng.run(sink)
    assert eng.stepper == stepper
    rasters = {}
    for name in d["monitors"]["spikes"]:
        units = eng.net.populations[name].units
        r = torch.zeros((eng.n_steps, eng.trials, units), dtype=torch.bool)
        for s, n, tr in sink.spikes[name]:
            r[torch.as_tensor(s), torch.as_tensor(tr), torch.as_tensor(n)] = True
        rasters[name] = r
    reports = {k: torch.as_tensor(np.concatenate(v, 0)) for k, v in sink.reports.items()}
    return rasters, reports


# Five populations: exc/inh recurrent; "many" receives four projections (generic loop when
# three or more fire in one step); "quiet" receives nothing but a step current; "other" has
# another alpha next to "quiet" (a segment cut by parameters, not by projections).
NET = dict(
    name="fused_mix", dt_ms=0.5, duration_ms=120, trials=2, seed=11, chunk_steps=37,
    populations=dict(exc=dict(size=60, tau_mem_ms=10.0, v_init="uniform"),
                     inh=dict(size=20, tau_mem_ms=5.0, theta=0.8, beta=0.5),
                     many=dict(size=30, tau_mem_ms=8.0, v_init="uniform"),
                     quiet=dict(size=7, tau_mem_ms=4.0),
                     other=dict(size=9, tau_mem_ms=12.0, theta=0.6)),
    stimuli=dict(drive=dict(type="poisson", size=40, rate_hz=90.0),
                 step=dict(type="current", target="quiet", amplitude=0.3, start_ms=10.0,
                           stop_ms=80.0),
                 bias=dict(type="current", target="other", amplitude=0.07)),
    projections=[dict(source="drive", target="exc", density=0.3, weight=0.3, sign="excitatory"),
                 dict(source="exc", target="exc", density=0.1, weight=0.2),
                 dict(source="exc", target="inh", density=0.3, weight=0.3, sign="excitatory"),
                 dict(source="inh", target="exc", density=0.4, weight=0.35, sign="inhibitory"),
                 dict(source="drive", target="many", density=0.2, weight=0.25),
                 dict(source="exc", target="many", density=0.3, weight=0.15),
                 dict(source="inh", target="many", density=0.3, weight=0.1),
                 dict(source="many", target="many", density=0.2, weight=0.3),
                 dict(source="quiet", target="many", density=0.5, weight=0.2),
                 dict(source="quiet", target="other", density=0.5, weight=0.2)],
    monitors=dict(spikes=["exc", "inh", "many", "quiet", "other"],
                  state=[dict(population="exc", indices=[0, 7, 59], every_steps=3),
                         dict(population="many", every_steps=1)]),
)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_equals_reference_bit_for_bit(dtype):
    ref, ref_v = run(NET, "reference", dtype=dtype)
    fus, fus_v = run(NET, "fused", dtype=dtype)
    for name in ref:
        assert torch.equal(ref[name], fus[name]), name
    counts = {n: int(r.sum()) for n, r in ref.items()}
    assert all(c > 10 for c in counts.values()), counts  # every population is active
    assert set(ref_v) == {"exc", "many"}
    for name in ref_v:
        assert torch.equal(ref_v[name], fus_v[name]), name


def test_three_or_more_live_projections_happen():
    """The NET config really exercises the kernel's generic loop: in some steps >= 3 of the four
    population projections into ``many`` (from exc, inh, many, quiet) have a source spike at
    the previous step (the Poisson projection is part of the drive, not of the kernel)."""
    ref, _ = run(NET, "reference", dtype="float64")
    live = sum(ref[n][:-1].any(-1).int() for n in ("exc", "inh", "many", "quiet"))
    assert int((live >= 3).sum()) > 20


def test_feedforward_only_network_no_population_projections():
    """No projection between populations (the kernel's projection arrays are empty)."""
    d = {**copy.deepcopy(NET), "projections": NET["projections"][:1] + NET["projections"][4:5]}
    ref, ref_v = run(d, "reference")
    fus, fus_v = run(d, "fused")
    assert int(ref["exc"].sum()) > 10 and int(ref["quiet"].sum()) > 10
    for name in ref:
        assert torch.equal(ref[name], fus[name]), name
    assert torch.equal(ref_v["many"], fus_v["many"])


def test_chunk_size_does_not_change_fused_spikes():
    a, va = run(NET, "fused", chunk_steps=1000)
    b, vb = run(NET, "fused", chunk_steps=5)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert torch.equal(va["many"], vb["many"])


def _layout_args(d: dict):
    eng = build_engine(CircuitConfig.model_validate({**d, "stepper": "fused"}))
    lay = fused.build_layout(eng.net, eng._pop_proj)
    return eng, lay, (lay.alpha, lay.theta, lay.beta, lay.p_src_start, lay.p_src_n,
                      lay.p_tgt_start, lay.p_tgt_n, lay.p_scale, lay.p_ptr_off, lay.indptr,
                      lay.targets, lay.codes)


def _kernel(drive, v, s, args, k, cap):
    ev = [np.empty(cap, np.int64) for _ in range(3)]
    v_out = np.zeros((k, v.shape[0], 3), dtype=v.dtype)
    n = fused.fused_chunk_kernel(drive, v, s, *args, np.array([0, 5, 70]), v_out, *ev)
    return n, [e[:max(n, 0)] for e in ev], v_out


def test_event_buffer_overflow_reports_minus_one_then_retry_matches():
    _, lay, args = _layout_args(NET)
    g = np.random.default_rng(0)
    k, B, N = 50, 2, lay.n_total
    drive = (g.random((k, B, N)) * 0.4).astype(np.float32)
    v0 = (g.random((B, N)) * 0.9).astype(np.float32)
    s0 = (g.random((B, N)) < 0.1).astype(np.float32)
    n_small, _, _ = _kernel(drive, v0.copy(), s0.copy(), args, k, cap=8)
    assert n_small == -1
    v, s = v0.copy(), s0.copy()
    n, (step, trial, node), v_out = _kernel(drive, v, s, args, k, cap=1 << 16)
    assert n > 8
    order = np.lexsort((node, trial, step))  # events sorted by step, then trial, then unit
    assert np.array_equal(order, np.arange(n))
    # the final spikes are those of the last step
    last = np.zeros((B, N), np.float32)
    sel = step == k - 1
    last[trial[sel], node[sel]] = 1
    assert np.array_equal(s, last)
    assert np.array_equal(v_out[-1], v[:, [0, 5, 70]])


def test_constant_drive_row_equals_repeated_drive():
    """A drive ``[1, B, N]`` (the same every step) gives what the repeated ``[k, B, N]`` gives."""
    _, lay, args = _layout_args(NET)
    g = np.random.default_rng(1)
    k, B, N = 80, 2, lay.n_total
    row = (g.random((1, B, N)) * 0.3).astype(np.float32)
    v0 = (g.random((B, N)) * 0.9).astype(np.float32)
    s0 = np.zeros((B, N), np.float32)
    va, sa, vb, sb = v0.copy(), s0.copy(), v0.copy(), s0.copy()
    na, eva, outa = _kernel(np.repeat(row, k, 0), va, sa, args, k, 1 << 16)
    nb, evb, outb = _kernel(row, vb, sb, args, k, 1 << 16)
    assert na == nb > 50
    assert all(np.array_equal(x, y) for x, y in zip(eva, evb))
    assert np.array_equal(outa, outb) and np.array_equal(va, vb) and np.array_equal(sa, sb)


def _benchmark_module():
    path = ROOT / "analysis" / "benchmarks" / "brian2_network.py"
    spec = importlib.util.spec_from_file_location("_brian2_network_bench", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_network_4000_units_100ms_identical():
    """The 4000-unit E/I network of the Brian2 benchmark, 100 ms (1000 steps of 0.1 ms)."""
    bench = _benchmark_module()
    d = bench.network_config(100.0, 0, "reference")
    ref, _ = run(d, "reference")
    fus, _ = run(d, "fused")
    n_spikes = sum(int(r.sum()) for r in ref.values())
    assert n_spikes > 1000  # ~17 Hz x 4000 units x 0.1 s
    for name in ref:
        assert torch.equal(ref[name], fus[name]), name
