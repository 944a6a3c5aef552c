"""The timestep engine: fixed, named phases per step, trials batched, streamed to disk.

Phases of step t (in this order, every step)::

    stimulus   spike sources emit x_t; currents give I_t                    [trials, n]
    synapse    u_t = sum_proj W (x_t or s_{t-1} of the source) + I_t         (one-step delay
               between populations, as the recurrent synapses of a MicroCircuit)
    integrate  v_t = alpha v_{t-1} + u_t - beta s_{t-1}                      (functional.lif)
    threshold  s_t = H(v_t - theta)
    reset      the subtractive reset of s_t is applied in step t+1's integrate (delayed reset)
    blocks     circuit blocks (hub, ACC) read s_t, may write feedback for t+1
    record     spike monitors read s_t (phase threshold); state monitors read v_t (phase
               integrate: the membrane before reset)

integrate/threshold/reset are one call of ``LIFPopulation.step`` (the LIF update written once in
``neurobit.functional.lif``). Stimulus-driven synaptic input does not depend on the state, so it
is computed for a whole chunk of steps with one GEMM per projection. Memory is bounded by the
chunk: spikes and states of ``chunk_steps`` steps are buffered, then written and dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch

from neurobit.functional.lif import LIFState
from neurobit.sim.network import Network

PHASES = ("stimulus", "synapse", "integrate", "threshold", "reset", "blocks", "record")


class Sink(Protocol):
    """Where the engine streams results (``neurobit.record.RunWriter`` implements it)."""

    def append_spikes(self, name: str, steps: np.ndarray, node_ids: np.ndarray,
                      trials: np.ndarray) -> None: ...

    def append_report(self, name: str, data: np.ndarray) -> None: ...

    def append_signal(self, name: str, data: np.ndarray) -> None: ...

    def mark_steps(self, n_steps_done: int) -> None: ...

    def flush(self) -> None: ...


@dataclass
class StateMonitor:
    population: str
    indices: np.ndarray
    every_steps: int


@dataclass
class RunSummary:
    steps: int
    spike_counts: dict[str, np.ndarray] = field(default_factory=dict)  # [trials, units]


class Engine:
    """Runs a built :class:`Network` for ``n_steps`` steps, streaming to a :class:`Sink`."""

    def __init__(self, net: Network, spike_monitors: list[str], state_monitors: list[StateMonitor],
                 chunk_steps: int = 1000, stepper: str = "auto"):
        self.net, self.chunk_steps = net, chunk_steps
        self.requested_stepper = stepper
        self.spike_monitors, self.state_monitors = spike_monitors, state_monitors
        cfg = net.cfg
        self.trials = cfg.trials
        self.n_steps = int(round(cfg.duration_ms / cfg.dt_ms))
        self.blocks: list = []  # e.g. neurobit.sim.blocks.HubBlock
        self._stim_proj = [p for p in net.projections if p.cfg.source in net.stimuli]
        self._pop_proj = [p for p in net.projections if p.cfg.source in net.populations]
        self._currents = [s for s in net.stimuli.values() if s.is_current]

    def choose_stepper(self) -> str:
        """``reference`` or ``fused``: ``auto`` takes fused when the network allows it."""
        from neurobit.errors import ConfigError
        from neurobit.sim.fused import fused_supported
        why = fused_supported(self.net, len(self.blocks))
        if self.requested_stepper == "fused" and why:
            raise ConfigError(f"stepper: fused cannot run this circuit: {why}")
        if self.requested_stepper == "reference" or why:
            return "reference"
        return "fused"

    def initial_states(self) -> dict[str, LIFState]:
        gen = torch.Generator().manual_seed(self.net.cfg.seed + 1)
        states = {}
        for name, pop in self.net.populations.items():
            st = pop.lif.initial_state((self.trials, *pop.state_shape[:-1]), self.net.dtype)
            if self.net.cfg.populations[name].v_init == "uniform":
                theta = pop.lif.theta.to(self.net.dtype)
                v = torch.rand(st.v.shape, generator=gen, dtype=self.net.dtype) * theta
                st = LIFState(v, st.s)
            states[name] = st
        return states

    def _flat(self, name: str, s: torch.Tensor) -> torch.Tensor:
        return s.reshape(self.trials, self.net.populations[name].units)

    def run(self, sink: Sink, progress: Callable[[int], None] | None = None) -> RunSummary:
        net, T = self.net, self.n_steps
        states = self.initial_states()
        for block in self.blocks:
            block.reset()  # a run is a session: memory and calibration start cleared
        self.stepper = self.choose_stepper()
        if self.stepper == "fused":
            self._init_fused(states)
        summary = RunSummary(T, {n: np.zeros((self.trials, net.populations[n].units), np.int64)
                                 for n in self.spike_monitors})
        threads = torch.get_num_threads()
        # Per-step tensors are small: one intra-op thread avoids spin-wait overhead per op.
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                self._run_chunks(T, states, sink, summary, progress)
        finally:
            torch.set_num_threads(threads)
        return summary

    def _run_chunks(self, T, states, sink, summary, progress):
        for t0 in range(0, T, self.chunk_steps):
            k = min(self.chunk_steps, T - t0)
            states = self._run_chunk(t0, k, states, sink, summary)
            sink.flush()
            if progress is not None:
                progress(k)

    def _chunk_drive(self, t0: int, k: int) -> dict[str, torch.Tensor]:
        """stimulus + the state-independent part of synapse for steps [t0, t0+k)."""
        net = self.net
        x = {n: s.chunk(t0, k) for n, s in net.stimuli.items()}
        rows = k
        if self.stepper == "fused":  # views into one [k or 1, trials, all units] buffer
            lay = self._layout
            # the same drive at every step of the chunk (constant currents, no spike sources):
            # stored once, the kernel reads row 0 every step
            if not self._stim_proj and all(bool((x[s.name] == x[s.name][:1]).all())
                                           for s in self._currents):
                rows = 1
            shape = (rows, self.trials, lay.n_total)
            buf = getattr(self, "_drive_all", None)
            if buf is None or tuple(buf.shape) != shape or buf.dtype != net.dtype:
                self._drive_all = torch.zeros(shape, dtype=net.dtype)
            else:  # reuse the chunk buffer: zeroing touched pages beats fresh allocations
                self._drive_all.zero_()
            drive = {n: self._drive_all[:, :, lay.offsets[n]:lay.offsets[n] + p.units]
                     for n, p in net.populations.items()}
        else:
            drive = {n: torch.zeros((k, self.trials, *p.state_shape), dtype=net.dtype)
                     for n, p in net.populations.items()}
        for proj in self._stim_proj:
            drive[proj.cfg.target] += proj.spikes(x[proj.cfg.source])  # sources emit 0/1
        for s in self._currents:
            tgt = drive[s.stim.target]
            tgt += x[s.name][:rows].view(rows, self.trials, *([1] * (tgt.dim() - 2)))
        return drive

    def _run_chunk(self, t0, k, states, sink: Sink, summary: RunSummary):
        drive = self._chunk_drive(t0, k)
        if self.stepper == "fused":
            spikes, v_samples = self._steps_fused(t0, k, drive)
        else:
            spikes, v_samples, states = self._steps_reference(t0, k, drive, states)
        # record
        for n in self.spike_monitors:
            step_i, trial, node = spikes[n]  # events in (step, trial, unit) order
            sink.append_spikes(n, step_i + t0, node, trial)
            counts = summary.spike_counts[n]
            counts += np.bincount(trial * counts.shape[1] + node,
                                  minlength=counts.size).reshape(counts.shape)
        for m, data in zip(self.state_monitors, v_samples):
            if data is not None and len(data):
                sink.append_report(m.population, data)
        for block in self.blocks:
            for name, data in block.pop_signals().items():
                sink.append_signal(name, data)
        sink.mark_steps(t0 + k)
        return states

    def _sample_steps(self, m: StateMonitor, t0: int, k: int) -> np.ndarray:
        """Chunk-relative indices of the steps monitor ``m`` samples (``t % every_steps == 0``)."""
        first = (-t0) % m.every_steps
        return np.arange(first, k, m.every_steps)

    def _steps_reference(self, t0, k, drive, states):
        """The phases step by step with torch modules (the oracle)."""
        net = self.net
        spk_buf = {n: torch.zeros((k, self.trials, net.populations[n].units), dtype=torch.bool)
                   for n in self.spike_monitors}
        v_buf = {id(m): [] for m in self.state_monitors}
        drive_t = {n: d.unbind(0) for n, d in drive.items()}
        for i in range(k):
            t = t0 + i
            # synapse: population -> population with the spikes of step t-1
            u = {n: drive_t[n][i] for n in net.populations}
            for proj in self._pop_proj:
                src = states[proj.cfg.source].s
                src = src if proj.per_circuit else self._flat(proj.cfg.source, src)
                u[proj.cfg.target] = u[proj.cfg.target] + proj.spikes(src)
            for block in self.blocks:  # feedback written by the blocks at step t-1
                for pop, f in block.feedback.items():
                    u[pop] = u[pop] + f
            # integrate, threshold, reset (delayed): the LIF update
            for n, pop in net.populations.items():
                _, states[n] = pop.lif.step(u[n], states[n])
            for block in self.blocks:
                block.step(t, states)
            for n in self.spike_monitors:
                spk_buf[n][i] = self._flat(n, states[n].s) > 0
            for m in self.state_monitors:
                if t % m.every_steps == 0:
                    v = self._flat(m.population, states[m.population].v)[:, m.indices]
                    v_buf[id(m)].append(v.T.to(torch.float32))
        v_samples = [torch.stack(v_buf[id(m)], 0).numpy() if v_buf[id(m)] else None
                     for m in self.state_monitors]
        events = {n: tuple(x.numpy() for x in torch.nonzero(b, as_tuple=True))
                  for n, b in spk_buf.items()}
        return events, v_samples, states

    def _init_fused(self, states: dict[str, LIFState]) -> None:
        from neurobit.sim.fused import build_layout
        if getattr(self, "_layout", None) is None:  # weights are frozen: build the CSR once
            self._layout = build_layout(self.net, self._pop_proj)
        lay = self._layout
        self._v = torch.cat([self._flat(n, states[n].v) for n in self.net.populations], 1).numpy().copy()
        self._s = torch.cat([self._flat(n, states[n].s) for n in self.net.populations], 1).numpy().copy()
        self._mon_idx = np.concatenate(
            [lay.offsets[m.population] + m.indices for m in self.state_monitors]
        ).astype(np.int64) if self.state_monitors else np.zeros(0, np.int64)
        self._ev_cap = 1 << 16

    def _steps_fused(self, t0, k, drive):
        """The same phases in one numba kernel per chunk (see neurobit.sim.fused)."""
        from neurobit.sim.fused import fused_chunk_kernel
        lay = self._layout
        d = self._drive_all.numpy()  # drive[n] are views into it
        v_out = np.zeros((k, self.trials, len(self._mon_idx)), dtype=self._v.dtype)
        while True:
            v, s = self._v.copy(), self._s.copy()
            ev = [np.empty(self._ev_cap, np.int64) for _ in range(3)]
            n_ev = fused_chunk_kernel(d, v, s, lay.alpha, lay.theta, lay.beta, lay.p_src_start,
                                      lay.p_src_n, lay.p_tgt_start, lay.p_tgt_n, lay.p_scale,
                                      lay.p_ptr_off, lay.indptr, lay.targets, lay.codes,
                                      self._mon_idx, v_out, *ev)
            if n_ev >= 0:
                break
            self._ev_cap *= 4  # too many spikes for the event buffer: redo the chunk
        self._v, self._s = v, s
        step, trial, node = (e[:n_ev] for e in ev)
        spikes = {}
        for n in self.spike_monitors:
            o, units = lay.offsets[n], self.net.populations[n].units
            sel = (node >= o) & (node < o + units)
            spikes[n] = (step[sel], trial[sel], node[sel] - o)
        v_samples, col = [], 0
        for m in self.state_monitors:
            rows = self._sample_steps(m, t0, k)
            block = v_out[rows][:, :, col:col + len(m.indices)]  # [samples, trials, idx]
            v_samples.append(np.ascontiguousarray(block.transpose(0, 2, 1)).astype(np.float32))
            col += len(m.indices)
        return spikes, v_samples
