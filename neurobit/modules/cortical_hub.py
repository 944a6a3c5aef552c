"""CorticalHub: grouped attention among circuits with a fast-weight memory, lateral inhibition,
a global state and feedback to the circuits.

Per hub step t, for circuit outputs ``h_i`` (``h`` ``[B, C, D]``, ``D = d_in``)::

    q_i, k_i, v_i = W_q h_i, W_k h_i, W_v h_i         (BitLinear D -> d, shared by circuits)
    S_ij = s * (q_i . k_j + q_i . (M_t k_j))   i, j in one group; s = 1/sqrt(d) (or 1)
    a_i  = softmax_j(S_ij) within the group;   h'_i = sum_j a_ij v_j      (functional.attention)
    h'_i += v_i                                  (only with residual: each circuit's own value)
    h'_i += s * M_t^T q_i                        (only with memory_read: the memory's values)
    h'   = inhibition(h') across the circuits of each group           (functional.inhibition)
    g_t  = W_g [h'_1, ..., h'_C]                 (BitLinear C*d -> d_global; the global state)
    f_i  = gain_i * W_f g_t                      (BitLinear d_global -> n_feedback; per circuit)
    M_{t+1} = clamp(lam * M_t + eta * sum_i k_i v_i^T, -c, c)          (functional.fast_weights)

The value dimension equals the key dimension ``d`` so ``M`` is ``[B, d, d]`` and ``M k_j`` lives in
query space. The memory is read before it is written: step t's scores use ``M_t``, and step t's
keys and values enter ``M_{t+1}``. With ``use_fast_weights=False`` the memory term is absent and
``M`` stays zero. ``f`` (``[B, C, n_feedback]``) is meant as an extra input current to the first
``n_feedback`` units of each circuit at the next step (``MicroCircuit.step(..., feedback=)``).
With ``residual`` each circuit keeps its own value next to what it attends to (a softmax over
near-equal scores otherwise averages the circuits into one vector: ``g`` then carries about
``d`` numbers instead of ``C d``). With ``memory_read`` the memory is also read as values:
``M_t^T q_i = sum_t' w_t' v_t' (k_t' . q_i)`` over the circuits and earlier steps t' (``w`` the decayed write rates; a linear-attention read
across tokens, :func:`fast_weight_retrieve`), added to the attention output of circuit i.

State (``HubState``: memory ``M`` and last global state ``g``) goes in and comes out explicitly;
:meth:`CorticalHub.forward` over a sequence starts from a cleared memory unless given a state.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from neurobit.errors import ParameterError, ShapeError
from neurobit.functional.attention import Groups, group_layout, grouped_attention, score_scale
from neurobit.functional.fast_weight_scan import fast_weight_scan
from neurobit.functional.fast_weights import (check_fast_weight_parameters, fast_weight_init,
                                              fast_weight_retrieve, fast_weight_update)
from neurobit.functional.inhibition import INHIBITIONS, inhibit_groups
from neurobit.modules.bitlinear import BitLinear


class HubState(NamedTuple):
    """``M``: fast weights ``[B, d, d]``; ``g``: the last global state ``[B, d_global]``."""

    M: torch.Tensor
    g: torch.Tensor


class HubOutput(NamedTuple):
    """One step (shapes) or a sequence (the same with a leading ``T``).

    ``h_prime`` ``[B, C, d]`` attention outputs after inhibition; ``g`` ``[B, d_global]``;
    ``feedback`` ``[B, C, n_feedback]``; ``attn`` ``[B, C, S]`` weights of each circuit over the
    members of its group (S = largest group; see ``GroupLayout``); ``state`` after the step.
    """

    h_prime: torch.Tensor
    g: torch.Tensor
    feedback: torch.Tensor
    attn: torch.Tensor
    state: HubState


class CorticalHub(nn.Module):
    """The integration layer between C circuits.

    Args:
        n_circuits: C; d_in: D (size of each circuit's output); d_key: d (query/key/value size);
        d_global: size of the global state g; n_feedback: feedback units per circuit.
        groups: int G (contiguous equal groups) or a partition of ``range(C)`` as lists.
        inhibition: ``none`` | ``kwta`` (keep ``k`` circuits per group, 1 <= k <= smallest
            group) | ``divisive`` (``sigma``, ``power``).
        lam, eta, clip: fast-weight decay (0, 1], write rate >= 0, clip bound > 0.
        use_fast_weights: include the memory term and update ``M``.
        residual: add each circuit's own value ``v_i`` to its attention output.
        memory_read: also add the memory's value read ``s M_t^T q_i`` to the attention output
            (needs ``use_fast_weights``).
        scale_scores: multiply scores by ``1/sqrt(d)``.
        feedback_gain: initial value of the learnable per-circuit feedback gains.
        quant, fixed_scale: BitLinear quantization of all five projections.
    """

    def __init__(self, n_circuits: int, d_in: int, d_key: int, d_global: int, n_feedback: int, *,
                 groups: Groups = 1, inhibition: str = "none", k: int = 1, sigma: float = 1.0,
                 power: float = 2.0, lam: float = 0.95, eta: float = 0.1, clip: float = 1.0,
                 use_fast_weights: bool = True, residual: bool = False,
                 memory_read: bool = False,
                 scale_scores: bool = True, feedback_gain: float = 0.1, quant: str = "absmean",
                 fixed_scale: float | None = None, dtype=None):
        super().__init__()
        for name, n in (("n_circuits", n_circuits), ("d_in", d_in), ("d_key", d_key),
                        ("d_global", d_global), ("n_feedback", n_feedback)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ParameterError(f"{name}: must be an int >= 1, got {n!r}")
        if inhibition not in INHIBITIONS:
            raise ParameterError(f"inhibition: unknown mode {inhibition!r}; choose one of "
                                 f"{list(INHIBITIONS)}")
        check_fast_weight_parameters(lam, eta, clip)
        self.layout = group_layout(groups, n_circuits)
        if inhibition == "kwta" and not (isinstance(k, int) and 1 <= k <= min(self.layout.sizes())):
            raise ParameterError(f"k: kwta needs 1 <= k <= smallest group "
                                 f"({min(self.layout.sizes())}), got {k!r}")
        self.n_circuits, self.d_in, self.d_key = n_circuits, d_in, d_key
        self.d_global, self.n_feedback = d_global, n_feedback
        self.inhibition, self.k, self.sigma, self.power = inhibition, k, sigma, power
        self.lam, self.eta, self.clip = float(lam), float(eta), float(clip)
        self.use_fast_weights = bool(use_fast_weights)
        if memory_read and not use_fast_weights:
            raise ParameterError("memory_read: reads the fast-weight memory; it needs "
                                 "use_fast_weights=True")
        self.memory_read = bool(memory_read)
        self.residual = bool(residual)
        self.scale = None if scale_scores else 1.0
        kw = dict(quant=quant, fixed_scale=fixed_scale, dtype=dtype,
                  tau=0.5 * (fixed_scale or 1.0) if quant == "threshold" else None)
        self.w_q = BitLinear(d_in, d_key, **kw)
        self.w_k = BitLinear(d_in, d_key, **kw)
        self.w_v = BitLinear(d_in, d_key, **kw)
        self.w_g = BitLinear(n_circuits * d_key, d_global, **kw)
        self.w_f = BitLinear(d_global, n_feedback, **kw)
        self.feedback_gain = nn.Parameter(torch.full((n_circuits,), float(feedback_gain),
                                                     dtype=dtype))

    def initial_state(self, batch_size: int, dtype=None, device=None) -> HubState:
        """Cleared memory ``M = 0`` and ``g = 0``."""
        dtype = dtype or self.w_q.weight.dtype
        return HubState(fast_weight_init(batch_size, self.d_key, dtype, device),
                        torch.zeros(batch_size, self.d_global, dtype=dtype, device=device))

    def _check(self, h: torch.Tensor, lead: int) -> None:
        want = lead + 3
        if h.dim() != want or tuple(h.shape[-2:]) != (self.n_circuits, self.d_in):
            dims = "[T, B, C, D]" if lead else "[B, C, D]"
            raise ShapeError(f"h: expected {dims} with C={self.n_circuits}, D={self.d_in}, "
                             f"got {list(h.shape)}")

    def _check_state(self, state: HubState, B: int) -> None:
        if tuple(state.M.shape) != (B, self.d_key, self.d_key):
            raise ShapeError(f"state.M: expected [{B}, {self.d_key}, {self.d_key}], "
                             f"got {list(state.M.shape)}")

    def _attend(self, q, k, v, M):
        h_att, weights = grouped_attention(q, k, v, self.layout,
                                           M if self.use_fast_weights else None, self.scale)
        if self.residual:
            h_att = h_att + v
        if self.memory_read:
            h_att = h_att + score_scale(self.d_key, self.scale) * fast_weight_retrieve(M, q)
        return h_att, weights

    def _write(self, M, k, v):
        if not self.use_fast_weights:
            return M
        return fast_weight_update(M, k, v, self.lam, self.eta, self.clip, check=False)

    def _readout(self, h_att: torch.Tensor):
        """Inhibition, global state and feedback for ``h_att`` ``[..., C, d]`` (any leading)."""
        lead = h_att.shape[:-2]
        flat = h_att.reshape(-1, self.n_circuits, self.d_key)
        h_prime = inhibit_groups(flat, self.layout, self.inhibition, k=self.k, sigma=self.sigma,
                                 power=self.power).reshape(h_att.shape)
        g = self.w_g(h_prime.reshape(*lead, self.n_circuits * self.d_key))
        feedback = self.feedback_gain[:, None] * self.w_f(g).unsqueeze(-2)
        return h_prime, g, feedback

    def forward_step(self, h: torch.Tensor, state: HubState) -> HubOutput:
        """One hub step for circuit outputs ``h`` ``[B, C, D]`` from ``state``."""
        self._check(h, 0)
        self._check_state(state, h.shape[0])
        q, k, v = self.w_q(h), self.w_k(h), self.w_v(h)
        h_att, attn = self._attend(q, k, v, state.M)
        h_prime, g, feedback = self._readout(h_att)
        return HubOutput(h_prime, g, feedback, attn, HubState(self._write(state.M, k, v), g))

    def forward(self, h_seq: torch.Tensor, state: HubState | None = None) -> HubOutput:
        """All steps of ``h_seq`` ``[T, B, C, D]``; outputs carry a leading T.

        ``state=None`` (the default) starts from a cleared memory: every sequence is independent.
        Pass the returned state to continue the same session across chunks. The projections,
        the attention and the readout run batched over all steps; only the memory recurrence
        ``M_{t+1} = clamp(lam M_t + eta K_t^T V_t)`` loops (it does not depend on the attention).
        """
        self._check(h_seq, 1)
        if h_seq.shape[0] < 1:
            raise ShapeError(f"h_seq: needs at least one step, got {list(h_seq.shape)}")
        T, B = h_seq.shape[:2]
        if state is None:
            state = self.initial_state(B, h_seq.dtype, h_seq.device)
        self._check_state(state, B)
        Q, K, V = self.w_q(h_seq), self.w_k(h_seq), self.w_v(h_seq)
        if self.use_fast_weights:                               # M_0 .. M_T
            memories = fast_weight_scan(state.M, K, V, self.lam, self.eta, self.clip)
            M_read, M_end = memories[:T], memories[T]
        else:
            M_read, M_end = None, state.M
        flat = lambda x: x.reshape(T * B, *x.shape[2:])
        h_att, weights = self._attend(flat(Q), flat(K), flat(V),
                                      None if M_read is None else flat(M_read))
        h_prime, g, feedback = self._readout(h_att.reshape(T, B, *h_att.shape[1:]))
        return HubOutput(h_prime, g, feedback, weights.reshape(T, B, *weights.shape[1:]),
                         HubState(M_end, g[-1]))

    def extra_repr(self) -> str:
        return (f"C={self.n_circuits}, {self.d_in} -> d={self.d_key}, "
                f"groups={self.layout.as_lists()}, inhibition={self.inhibition}, "
                f"fast_weights={self.use_fast_weights}"
                + (", residual=True" if self.residual else "")
                + (", memory_read=True" if self.memory_read else ""))
