"""Circuit blocks run by the engine in the ``blocks`` phase: the CorticalHub with its ACC and
MetaController, over a bank population.

Per step t (after threshold), for the bank's spikes ``s_t`` ``[trials, C, N]``::

    h_t = exp(-dt / trace_tau_ms) h_{t-1} + s_t                      (trace per circuit unit)
    pass 0:  out = hub.forward_step(h_t, state)                       (attention, fast weights)
    ACC:     conflict(h_t), uncertainty = H(softmax(g_t)) / log d_global, conflict_norm
    Meta:    r = decide(signals).reflection_steps (per trial, <= max_reflection_steps)
    passes 1..max r: hub.forward_step(h_t, state) again for the trials that asked for them
    feedback_{t+1}[trial, i, :] = out.feedback[trial, i, :]           (added at the next synapse)

Recorded every ``every_steps`` steps as ``/neurobit/signals/<block>.<name>``: ``attn``
``[trials, C, S]``, ``memory_norm`` (Frobenius norm of M) ``[trials]``, ``conflict``,
``uncertainty``, ``conflict_norm``, ``reflections``, ``temperature``, ``cautious`` ``[trials]``.
The MetaController never vetoes: the hub always delivers feedback; reflection only refines it.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from neurobit.config.schema import CircuitConfig, CorticalHubBlock
from neurobit.errors import ConfigError
from neurobit.modules.acc import ACC
from neurobit.modules.cortical_hub import CorticalHub, HubState
from neurobit.modules.meta_controller import MetaControllerConfig, MetaState, decide


class HubBlock:
    """Runtime of one ``cortical_hub`` block (explicit state, reset by :meth:`reset`)."""

    def __init__(self, name: str, b: CorticalHubBlock, cfg: CircuitConfig, dtype: torch.dtype):
        self.name, self.b, self.dtype, self.trials = name, b, dtype, cfg.trials
        pop = cfg.populations[b.population]
        self.C, self.N = pop.circuits, pop.size
        self.decay = math.exp(-cfg.dt_ms / b.trace_tau_ms)
        fw = b.fast_weights
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed if b.seed is None else b.seed)
            self.hub = CorticalHub(self.C, self.N, b.d_key, b.d_global, self.N, groups=b.groups,
                                   inhibition=b.inhibition, k=b.k, lam=fw.lam, eta=fw.eta,
                                   clip=fw.clip, use_fast_weights=fw.enabled,
                                   feedback_gain=b.feedback_gain).to(dtype)
        if b.checkpoint is not None:
            from safetensors.torch import load_file
            try:
                self.hub.load_state_dict(load_file(b.checkpoint))
            except (RuntimeError, OSError, ValueError) as e:
                raise ConfigError(f"blocks.{name}.checkpoint: {b.checkpoint}: cannot load into "
                                  f"the hub: {str(e).splitlines()[0]}") from None
        self.hub.eval().requires_grad_(False)
        self.acc = ACC(b.acc.conflict_measure) if b.acc.enabled else None
        self.meta = (MetaControllerConfig(max_reflection_steps=b.meta.max_reflection_steps,
                                          reflect_threshold=b.meta.reflect_threshold,
                                          cautious_threshold=b.meta.cautious_threshold)
                     if b.meta.enabled and self.acc is not None else None)
        self.reset()

    # -- recording --------------------------------------------------------------------------
    def signal_specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """``name -> (shape per sample, dtype)`` of the recorded signals."""
        T = self.trials
        S = max(self.hub.layout.sizes())
        specs = {"attn": ((T, self.C, S), "float32"), "memory_norm": ((T,), "float32")}
        if self.acc is not None:
            specs.update({k: ((T,), "float32") for k in ("conflict", "uncertainty", "conflict_norm")})
        if self.meta is not None:
            specs.update({"reflections": ((T,), "int32"), "temperature": ((T,), "float32"),
                          "cautious": ((T,), "uint8")})
        return {f"{self.name}.{k}": v for k, v in specs.items()}

    def pop_signals(self) -> dict[str, np.ndarray]:
        """Samples buffered since the last call, ``[k_samples, *shape]`` per signal."""
        out = {f"{self.name}.{k}": np.stack(v, 0) for k, v in self._buf.items() if v}
        self._buf = {k: [] for k in self._buf}
        return out

    # -- state --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Clear trace, fast-weight memory, calibration and feedback (a new session)."""
        T = self.trials
        self.h = torch.zeros(T, self.C, self.N, dtype=self.dtype)
        self.state: HubState = self.hub.initial_state(T, dtype=self.dtype)
        self.calibration = ACC.initial_calibration() if self.acc is not None else None
        self.feedback: dict[str, torch.Tensor] = {}
        self._buf = {k.split(".", 1)[1]: [] for k in self.signal_specs()}

    def step(self, t: int, states: dict) -> None:
        s = states[self.b.population].s  # [trials, C, N]
        self.h = self.decay * self.h + s
        if t % self.b.every_steps:
            return
        out = self.hub.forward_step(self.h, self.state)
        sig, reflections, temps, cautious = {}, None, None, None
        if self.acc is not None:
            acc = self.acc(self.h, logits=out.g, calibration=self.calibration)
            self.calibration, sig = acc.calibration, acc.signals
        if self.meta is not None:
            decisions = [decide({k: v[i] for k, v in sig.items()}, MetaState(), self.meta)
                         for i in range(self.trials)]
            reflections = torch.tensor([d.reflection_steps for d in decisions])
            temps = [d.temperature for d in decisions]
            cautious = [d.cautious for d in decisions]
            # bounded by construction: at most max_reflection_steps extra passes
            for p in range(1, int(reflections.max()) + 1 if len(decisions) else 1):
                again = self.hub.forward_step(self.h, out.state)
                keep = (reflections >= p).view(-1, 1, 1)
                out = out._replace(
                    feedback=torch.where(keep, again.feedback, out.feedback),
                    attn=torch.where(keep, again.attn, out.attn),
                    g=torch.where(keep.view(-1, 1), again.g, out.g),
                    state=HubState(torch.where(keep, again.state.M, out.state.M),
                                   torch.where(keep.view(-1, 1), again.state.g, out.state.g)))
        self.state = out.state
        self.feedback = {self.b.population: out.feedback}
        self._buf["attn"].append(out.attn.float().numpy())
        self._buf["memory_norm"].append(out.state.M.flatten(1).norm(dim=1).float().numpy())
        for k in ("conflict", "uncertainty", "conflict_norm"):
            if k in self._buf:
                self._buf[k].append(sig[k].float().numpy())
        if self.meta is not None:
            self._buf["reflections"].append(reflections.numpy().astype(np.int32))
            self._buf["temperature"].append(np.asarray(temps, np.float32))
            self._buf["cautious"].append(np.asarray(cautious, np.uint8))


def build_blocks(cfg: CircuitConfig, dtype: torch.dtype) -> list[HubBlock]:
    return [HubBlock(name, b, cfg, dtype) for name, b in cfg.blocks.items()]
