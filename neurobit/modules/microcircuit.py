"""MicroCircuit: N LIF units with ternary input, recurrent and readout synapses.

Per step t (input ``x_t`` ``[B, n_in]``, optional ``feedback_t`` ``[B, N]``)::

    u_t = W_in x_t + W_rec s_{t-1} + feedback_t           (synapse)
    v_t = alpha v_{t-1} + u_t - beta s_{t-1};  s_t = H(v_t - theta)   (LIF, functional.lif)
    y_t = W_out s_t                                        (readout)

``W_in``, ``W_rec``, ``W_out`` are :class:`BitLinear` (ternary, STE). The input projection is
hoisted out of the time loop (one GEMM over all steps); without recurrence the whole LIF runs
as one fused scan. State (``v``, ``s``) is passed in and returned, never kept in the module.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from neurobit.errors import ParameterError, ShapeError
from neurobit.functional.lif import LIFState
from neurobit.modules.bitlinear import BitLinear
from neurobit.modules.lif_population import LIFPopulation


class MicroCircuitState(NamedTuple):
    """``lif``: membrane and last spikes, ``[B, N]`` (``[B, M, N]`` in a bank)."""

    lif: LIFState


class MicroCircuitOutput(NamedTuple):
    """Readout ``y`` ``[T, B, (M,) n_out]``, spikes ``[T, B, (M,) N]``, final state."""

    y: torch.Tensor | None
    spikes: torch.Tensor
    state: MicroCircuitState


class MicroCircuit(nn.Module):
    """A recurrent ternary LIF circuit.

    Args:
        n_in: input size; n_units: N; n_out: readout size (None: no readout).
        recurrent: include ``W_rec``.
        quant: BitLinear quantization for all three synapse sets (``absmean``, ``fixed``, ...).
        fixed_scale: weight of a +1 synapse for ``quant="fixed"``.
        lif: keyword arguments of :class:`LIFPopulation` (alpha or tau_mem_ms/dt_ms, theta,
            beta, surrogate, slope, backend).
    """

    def __init__(self, n_in: int, n_units: int, n_out: int | None = None, *,
                 recurrent: bool = True, quant: str = "absmean",
                 fixed_scale: float | None = None, **lif):
        super().__init__()
        self._build(n_in, n_units, n_out, recurrent, quant, fixed_scale, None, lif)

    def _build(self, n_in, n_units, n_out, recurrent, quant, fixed_scale, banks, lif) -> None:
        for name, n in (("n_in", n_in), ("n_units", n_units)):
            if int(n) < 1:
                raise ParameterError(f"{name}: must be >= 1, got {n}")
        if n_out is not None and int(n_out) < 1:
            raise ParameterError(f"n_out: must be >= 1, got {n_out}")
        self.n_in, self.n_units, self.n_out = n_in, n_units, n_out
        kw = dict(quant=quant, fixed_scale=fixed_scale, banks=banks,
                  tau=0.5 * (fixed_scale or 1.0) if quant == "threshold" else None)
        self.w_in = BitLinear(n_in, n_units, **kw)
        self.w_rec = BitLinear(n_units, n_units, **kw) if recurrent else None
        self.w_out = BitLinear(n_units, n_out, **kw) if n_out is not None else None
        self.lif = LIFPopulation(n_units, **lif)

    def initial_state(self, batch_size: int, dtype=None, device=None) -> MicroCircuitState:
        return MicroCircuitState(self.lif.initial_state((batch_size,), dtype, device))

    def _prepare_x(self, x_seq: torch.Tensor) -> torch.Tensor:
        """Check ``x_seq`` ``[T, B, n_in]`` and return it in the layout ``w_in`` takes."""
        if x_seq.dim() != 3 or x_seq.shape[-1] != self.n_in:
            raise ShapeError(f"x_seq: expected [T, B, {self.n_in}], got {list(x_seq.shape)}")
        return x_seq

    def step(self, x: torch.Tensor, state: MicroCircuitState,
             feedback: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor, MicroCircuitState]:
        """One step from input ``x`` ``[B, n_in]``: returns ``(y_t, s_t, state_t)``."""
        return self.step_from_current(self.w_in(x), state, feedback)

    def step_from_current(self, u_in, state, feedback=None, q_rec=None):
        """One step from a precomputed input current ``u_in = W_in x_t`` (lets callers hoist
        the input GEMM over a sequence); ``q_rec``: ``w_rec.ternary()`` quantized once."""
        u = u_in
        if self.w_rec is not None:
            q_rec = q_rec if q_rec is not None else self.w_rec.quantized()
            u = u + self.w_rec.apply_ternary(state.lif.s, q_rec)
        if feedback is not None:
            u = u + feedback
        s, lif_state = self.lif.step(u, state.lif)
        y = self.w_out(s) if self.w_out is not None else None
        return y, s, MicroCircuitState(lif_state)

    def forward(self, x_seq: torch.Tensor, state: MicroCircuitState | None = None,
                feedback: torch.Tensor | None = None) -> MicroCircuitOutput:
        """All steps of ``x_seq`` ``[T, B, n_in]`` (``feedback`` ``[T, B, N]`` optional)."""
        x_seq = self._prepare_x(x_seq)
        if state is None:
            state = self.initial_state(x_seq.shape[1], x_seq.dtype, x_seq.device)
        u_in = self.w_in(x_seq)  # one GEMM over all steps: [T, B, N]
        if feedback is not None:
            if feedback.shape != u_in.shape:
                raise ShapeError(f"feedback: expected {list(u_in.shape)}, got {list(feedback.shape)}")
            u_in = u_in + feedback
        if self.w_rec is None:
            spikes, lif_state = self.lif(u_in, state.lif)
            state = MicroCircuitState(lif_state)
        else:
            q_rec = self.w_rec.quantized()  # quantize once per sequence, not per step
            out = []
            for u in u_in.unbind(0):
                _, s, state = self.step_from_current(u, state, None, q_rec)
                out.append(s)
            spikes = torch.stack(out, 0)
        y = self.w_out(spikes) if self.w_out is not None else None
        return MicroCircuitOutput(y, spikes, state)
