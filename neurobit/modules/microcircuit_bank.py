"""MicroCircuitBank: M independent MicroCircuits computed together (no loop over circuits).

Same update as :class:`MicroCircuit`, with a circuit axis ``M``; every synapse set is a banked
:class:`BitLinear` (``[M, out, in]``, one ternary scale per circuit) applied with one einsum::

    u_t[b, m] = W_in[m] x_t[b, m] + W_rec[m] s_{t-1}[b, m] + feedback_t[b, m]

Input ``x_seq`` is ``[T, B, M, n_in]``, or ``[T, B, n_in]`` shared by all circuits.
Outputs ``y`` ``[T, B, M, n_out]`` and spikes ``[T, B, M, N]``; state ``[B, M, N]``.
"""
from __future__ import annotations

import torch
from torch import nn

from neurobit.errors import ParameterError, ShapeError
from neurobit.modules.microcircuit import MicroCircuit, MicroCircuitState


class MicroCircuitBank(MicroCircuit):
    """``n_circuits`` MicroCircuits of identical shape; other arguments as :class:`MicroCircuit`."""

    def __init__(self, n_circuits: int, n_in: int, n_units: int, n_out: int | None = None, *,
                 recurrent: bool = True, quant: str = "absmean",
                 fixed_scale: float | None = None, **lif):
        if int(n_circuits) < 1:
            raise ParameterError(f"n_circuits: must be >= 1, got {n_circuits}")
        nn.Module.__init__(self)
        self.n_circuits = int(n_circuits)
        self._build(n_in, n_units, n_out, recurrent, quant, fixed_scale, self.n_circuits, lif)

    def initial_state(self, batch_size: int, dtype=None, device=None) -> MicroCircuitState:
        return MicroCircuitState(
            self.lif.initial_state((batch_size, self.n_circuits), dtype, device))

    def _shared_to_banked(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., n_in]`` -> ``[..., M, n_in]`` (a view, no copy)."""
        return x.unsqueeze(-2).expand(*x.shape[:-1], self.n_circuits, x.shape[-1])

    def _prepare_x(self, x_seq: torch.Tensor) -> torch.Tensor:
        banked = x_seq.dim() == 4 and x_seq.shape[2] == self.n_circuits
        if not (banked or x_seq.dim() == 3) or x_seq.shape[-1] != self.n_in:
            raise ShapeError(f"x_seq: expected [T, B, {self.n_circuits}, {self.n_in}] or "
                             f"[T, B, {self.n_in}], got {list(x_seq.shape)}")
        return x_seq if banked else self._shared_to_banked(x_seq)

    def step(self, x, state, feedback=None):
        """One step from ``x`` ``[B, M, n_in]`` or shared ``[B, n_in]``."""
        if x.dim() == 2:
            x = self._shared_to_banked(x)
        return self.step_from_current(self.w_in(x), state, feedback)
