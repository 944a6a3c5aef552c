"""Measured synaptic-operation counts of a forward pass, and an energy estimate from them.

:class:`OpCounter` watches every :class:`~neurobit.modules.bitlinear.BitLinear`,
``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` inside a module while its ``with`` block runs
and counts, per call, with input ``x`` ``[..., in]`` (rows = ``x.numel() / in`` input vectors)
and the weight ``W`` ``[out, in]`` the call applies:

* spike input (every element of ``x`` is 0 or 1; event-driven): accumulate operations
  ``AC = sum_{r,o,i} 1[x_ri != 0] 1[W_oi != 0]`` -- one addition per (active input, non-zero
  synapse) pair; computed as ``sum_i (sum_r 1[x_ri != 0]) (sum_o 1[W_oi != 0])``;
* else, ternary weights (BitLinear with ``quant != "float"`` whose codes are all in
  {-1, 0, +1}): ``AC = rows * nnz(codes)`` (a product with +-1 is an addition, zero codes are
  skipped);
* else: dense multiply-accumulates ``MAC = rows * in * out``.

A banked BitLinear (weight ``[M, out, in]``, input ``[..., M, in]``) counts each bank against its
own matrix; ``forward_shared`` (input ``[..., in]`` against all ``M * out`` rows) is counted too.
Convolutions count the same pairs through the layer's own stride/padding/dilation/groups; their
dense MACs are ``output elements * in_channels / groups * kernel size``. Every call also adds the
dense-equivalent ``rows * in * out`` (what a GPU would do) and the fraction of non-zero inputs.

Matrix products outside those layers (attention ``Q K^T`` and ``A V``, fast-weight reads, a
LoRA adapter's ``B @ A``) are counted with
``torch.utils.flop_counter.FlopCounterMode`` running over the same block::

    other_macs = (total flops - flops inside the watched layers) / 2

where "inside" is measured, not assumed: the counter's total is read before and after each
watched call (for ``F.linear``, the banked einsum and ``conv`` it equals ``2 * dense_macs``;
tested). CPU ``scaled_dot_product_attention`` (``aten._scaled_dot_product_flash_attention_for_cpu``,
which torch's counter leaves at zero) is given the standard ``2 * (S_q S_k d + S_q S_k d_v)``
per head formula here. Elementwise work (LIF updates, softmax, bias adds) is not counted.

How to count: run the forward pass under ``torch.no_grad()`` (:func:`count_ops` does): a
backward pass inside the block would add its flops to ``other_macs``. What is not seen: code
that reads ``layer.quantized()`` and multiplies by itself (compiled models, numba kernels) is
not a watched call; its torch matmuls land in ``other_macs``, its numba/numpy work nowhere.
In particular BrainLM's fused recurrent scan (``functional.recurrent_lif_scan``, numba) hides
every ``W_rec`` operation: set ``block.fused_scan = False`` on each block to count them.
``BitLinear`` is watched by wrapping its ``apply_ternary`` and ``forward_shared`` methods on the
instance (``forward`` goes through ``apply_ternary``, and time loops call ``apply_ternary``
directly); ``nn.Linear``/``nn.Conv*`` through forward pre/post hooks. All are removed on exit.
A bound method taken before the block (``f = layer.forward_shared`` outside, then ``f(x)``
inside) is the unwrapped one and is not counted; look methods up inside the block.

Energy (:func:`energy_joules`) uses the per-operation energies of Horowitz, "Computing's energy
problem (and what we can do about it)", ISSCC 2014, 45 nm CMOS, 0.9 V::

    E = AC * E_add + (MAC + other_MAC) * (E_mult + E_add)

Example::

    out, s = count_ops(model, model, x_seq)
    print(s.acs, s.macs, s.other_macs, energy_joules(s))
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from neurobit.errors import ParameterError
from neurobit.modules.bitlinear import BitLinear

#: Energy per operation in picojoules, Horowitz (ISSCC 2014), 45 nm CMOS.
#: ``"fp32"``: 32-bit float add 0.9 pJ, multiply 3.7 pJ (a MAC 4.6 pJ, an AC 0.9 pJ).
#: ``"int8"``: 8-bit integer add 0.03 pJ, multiply 0.2 pJ (a MAC 0.23 pJ).
ENERGY_PJ: dict[str, dict[str, float]] = {
    "fp32": {"add": 0.9, "mult": 3.7},
    "int8": {"add": 0.03, "mult": 0.2},
}


@dataclass
class LayerOps:
    """Counts of one watched layer, summed over its calls."""

    kind: str
    calls: int = 0
    rows: int = 0              # input vectors (conv: output positions)
    acs: int = 0               # accumulate operations (additions)
    macs: int = 0              # dense multiply-accumulates
    dense_macs: int = 0        # rows * in * out: what a dense matmul does
    active: int = 0            # non-zero input elements seen
    elements: int = 0          # input elements seen
    spike_calls: int = 0       # calls whose input was all 0/1

    @property
    def mean_activity(self) -> float:
        """Fraction of non-zero input elements over all calls (nan before any call)."""
        return self.active / self.elements if self.elements else float("nan")


@dataclass
class OpSummary:
    """Totals of an :class:`OpCounter` block. ``other_macs`` is None when flops were not counted."""

    acs: int
    macs: int
    dense_macs: int
    other_macs: int | None
    total_flops: int | None
    per_layer: dict[str, LayerOps] = field(default_factory=dict)

    @property
    def synops(self) -> int:
        """Synaptic operations of the watched layers: ``acs + macs``."""
        return self.acs + self.macs


def _sdpa_cpu_mapping() -> dict[Any, Any]:
    """Flop formulas for CPU flash attention, which ``FlopCounterMode`` does not register:
    ``2 * B * H * (S_q S_k d + S_q S_k d_v)`` forward (torch's own ``sdpa_flop_count``)."""
    from torch.utils import flop_counter as fc
    mapping: dict[Any, Any] = {}
    fwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)

    def fwd_flops(q, k, v, *args, out_val=None, **kwargs):
        return fc.sdpa_flop_count(q.shape, k.shape, v.shape)

    def bwd_flops(grad_out, q, k, v, *args, out_val=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out.shape, q.shape, k.shape, v.shape)

    for op, f, name in ((fwd, fwd_flops, "sdpa_flop_count"),
                        (bwd, bwd_flops, "sdpa_backward_flop_count")):
        if op is not None and hasattr(fc, name) and op not in fc.flop_registry:
            f._get_raw = True   # FlopCounterMode passes tensors, not shapes
            mapping[op] = f
    return mapping


def _no_modes():
    """Run bookkeeping outside any dispatch mode (so the flop counter does not see it)."""
    from torch.utils._python_dispatch import _disable_current_modes
    return _disable_current_modes()


def _is_spikes(x: torch.Tensor) -> bool:
    return x.dtype == torch.bool or bool(((x == 0) | (x == 1)).all())


def _is_ternary(codes: torch.Tensor) -> bool:
    return bool(((codes == 0) | (codes.abs() == 1)).all())


class OpCounter:
    """Count synaptic operations of ``model``'s linear/conv layers inside a ``with`` block.

    Args:
        model: the module whose ``BitLinear``/``nn.Linear``/``nn.Conv1d``/``nn.Conv2d``
            submodules (itself included) are watched; names are ``model.named_modules()`` names.
        count_flops: also run ``FlopCounterMode`` to measure ``other_macs`` (default True).

    Use under ``torch.no_grad()``; re-entering the block keeps adding to the same counts
    (:meth:`reset` clears them).
    """

    def __init__(self, model: nn.Module, count_flops: bool = True):
        if not isinstance(model, nn.Module):
            raise ParameterError(f"model: expected an nn.Module, got {type(model).__name__}")
        self.model, self.count_flops = model, bool(count_flops)
        self._layers = {name: m for name, m in model.named_modules()
                        if isinstance(m, (BitLinear, nn.Linear, nn.Conv1d, nn.Conv2d))}
        self._handles: list[Any] = []
        self._patched: list[tuple[nn.Module, str, Any]] = []
        self._flop_mode = None
        self._active = False
        self.reset()

    # -- bookkeeping -------------------------------------------------------------------------
    def reset(self) -> None:
        """Zero every count."""
        self.per_layer = {name: LayerOps(type(m).__name__) for name, m in self._layers.items()}
        self._total_flops = 0
        self._inside_flops = 0

    def _flops_now(self) -> int:
        return self._flop_mode.get_total_flops() if self._flop_mode is not None else 0

    def _add(self, name: str, x: torch.Tensor, w: torch.Tensor, ternary: bool, rows: int,
             dense: int, spike_ac: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             flops_inside: int) -> None:
        rec = self.per_layer[name]
        with _no_modes(), torch.no_grad():
            x, w = x.detach(), w.detach()
            rec.calls += 1
            rec.rows += rows
            rec.dense_macs += dense
            rec.elements += x.numel()
            rec.active += int((x != 0).sum())
            if x.numel() and _is_spikes(x):
                rec.spike_calls += 1
                rec.acs += int(round(float(spike_ac((x != 0).to(torch.float64),
                                                    (w != 0).to(torch.float64)))))
            elif ternary and _is_ternary(w):
                rec.acs += rows * int((w != 0).sum()) // (w.shape[0] if w.dim() == 3 else 1)
            else:
                rec.macs += dense
        self._inside_flops += flops_inside

    # -- watchers ----------------------------------------------------------------------------
    def _wrap_bitlinear(self, name: str, layer: BitLinear) -> None:
        counter = self
        apply_orig, shared_orig = layer.apply_ternary, layer.forward_shared
        ternary = layer.quant != "float"

        def apply_ternary(x, q):
            f0 = counter._flops_now()
            y = apply_orig(x, q)
            f1 = counter._flops_now()
            n_in = layer.in_features
            n_out = layer.out_features
            rows = x.numel() // n_in
            if layer.banks is None:
                def ac(xm, wm):   # sum_i (#active rows of input i) (#non-zero synapses of input i)
                    return (xm.reshape(-1, n_in).sum(0) * wm.sum(0)).sum()
            else:
                def ac(xm, wm):   # per bank: xm [..., M, in], wm [M, out, in]
                    return (xm.reshape(-1, layer.banks, n_in).sum(0) * wm.sum(1)).sum()
            counter._add(name, x, q.codes, ternary, rows, rows * n_in * n_out, ac, f1 - f0)
            return y

        def forward_shared(x):
            f0 = counter._flops_now()
            y = shared_orig(x)
            f1 = counter._flops_now()
            codes = layer.quantized().codes.detach()
            n_in, n_rows_w = layer.in_features, layer.banks * layer.out_features
            rows = x.numel() // n_in   # one shared vector hits all M * out rows

            def ac(xm, wm):
                return (xm.reshape(-1, n_in).sum(0) * wm.reshape(n_rows_w, n_in).sum(0)).sum()
            counter._add(name, x, codes.reshape(n_rows_w, n_in), ternary, rows,
                         rows * n_in * n_rows_w, ac, f1 - f0)
            return y

        for attr, fn in (("apply_ternary", apply_ternary), ("forward_shared", forward_shared)):
            self._patched.append((layer, attr, layer.__dict__.get(attr, None)))
            object.__setattr__(layer, attr, fn)

    def _hook_dense(self, name: str, layer: nn.Module) -> None:
        counter = self
        starts: list[int] = []

        def pre(mod, args):
            starts.append(counter._flops_now())

        def post(mod, args, out):
            flops = counter._flops_now() - starts.pop()
            x = args[0]
            w, ternary = mod.weight, False
            if callable(getattr(mod, "quantized", None)):  # a ternary conv (codes, scale)
                w = mod.quantized().codes.detach()
                ternary = getattr(mod, "quant", "absmean") != "float"
            if isinstance(mod, nn.Linear):
                rows = x.numel() // mod.in_features
                dense = rows * mod.in_features * mod.out_features

                def ac(xm, wm):
                    return (xm.reshape(-1, mod.in_features).sum(0) * wm.sum(0)).sum()
            else:
                k = math.prod(mod.kernel_size)
                rows = out.numel() // mod.out_channels
                dense = out.numel() * (mod.in_channels // mod.groups) * k

                def ac(xm, wm):
                    return _conv_ac(mod, xm, wm)
            counter._add(name, x, w, ternary, rows, dense, ac, flops)

        self._handles.append(layer.register_forward_pre_hook(pre))
        self._handles.append(layer.register_forward_hook(post))

    # -- context -----------------------------------------------------------------------------
    def __enter__(self) -> "OpCounter":
        if self._active:
            raise ParameterError("OpCounter: already active (do not nest the same counter)")
        for name, m in self._layers.items():
            if isinstance(m, BitLinear):
                self._wrap_bitlinear(name, m)
            else:
                self._hook_dense(name, m)
        if self.count_flops:
            from torch.utils.flop_counter import FlopCounterMode
            self._flop_mode = FlopCounterMode(display=False, custom_mapping=_sdpa_cpu_mapping())
            self._flop_mode.__enter__()
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._flop_mode is not None:
                self._total_flops += self._flop_mode.get_total_flops()
                self._flop_mode.__exit__(*exc)
                self._flop_mode = None
        finally:
            for h in self._handles:
                h.remove()
            self._handles.clear()
            for layer, attr, old in reversed(self._patched):
                if old is None:
                    layer.__dict__.pop(attr, None)
                else:
                    object.__setattr__(layer, attr, old)
            self._patched.clear()
            self._active = False

    def summary(self) -> OpSummary:
        """Totals so far (inside a block: up to the last finished operation)."""
        layers = {k: LayerOps(**{f: getattr(v, f) for f in v.__dataclass_fields__})
                  for k, v in self.per_layer.items()}
        total = self._total_flops + (self._flops_now() if self._active else 0)
        other = None
        if self.count_flops:
            other = max(0, total - self._inside_flops) // 2
        return OpSummary(acs=sum(r.acs for r in layers.values()),
                         macs=sum(r.macs for r in layers.values()),
                         dense_macs=sum(r.dense_macs for r in layers.values()),
                         other_macs=other, total_flops=total if self.count_flops else None,
                         per_layer=layers)


def _conv_ac(mod: nn.Module, xm: torch.Tensor, wm: torch.Tensor) -> torch.Tensor:
    """Sum over output elements of ``conv(1[x != 0], 1[W != 0])`` with the layer's geometry,
    computed with the weight summed over the output channels of each group (``[g, in/g, *k]``)."""
    conv = F.conv1d if isinstance(mod, nn.Conv1d) else F.conv2d
    g = mod.groups
    w_sum = wm.reshape(g, wm.shape[0] // g, *wm.shape[1:]).sum(1)
    padding = mod.padding
    if mod.padding_mode != "zeros":
        xm = F.pad(xm, mod._reversed_padding_repeated_twice, mode=mod.padding_mode)
        padding = 0
    return conv(xm, w_sum, None, mod.stride, padding, mod.dilation, g).sum()


def energy_joules(summary: OpSummary, precision: str = "fp32") -> float:
    """``(AC * E_add + (MAC + other_MAC) * (E_mult + E_add)) * 1e-12`` J with :data:`ENERGY_PJ`."""
    e = _energy_table(precision)
    other = summary.other_macs or 0
    return (summary.acs * e["add"] + (summary.macs + other) * (e["mult"] + e["add"])) * 1e-12


def dense_energy_joules(summary: OpSummary, precision: str = "fp32") -> float:
    """The same work done densely: ``(dense_MAC + other_MAC) * (E_mult + E_add) * 1e-12`` J."""
    e = _energy_table(precision)
    return (summary.dense_macs + (summary.other_macs or 0)) * (e["mult"] + e["add"]) * 1e-12


def _energy_table(precision: str) -> dict[str, float]:
    if precision not in ENERGY_PJ:
        raise ParameterError(f"precision: unknown {precision!r}; choose one of {list(ENERGY_PJ)}")
    return ENERGY_PJ[precision]


def count_ops(model: nn.Module, fn: Callable[..., Any], *args: Any,
              **kwargs: Any) -> tuple[Any, OpSummary]:
    """Run ``fn(*args, **kwargs)`` under ``torch.no_grad()`` inside an :class:`OpCounter` on
    ``model``; return ``(result, summary)``."""
    counter = OpCounter(model)
    with torch.no_grad(), counter:
        result = fn(*args, **kwargs)
    return result, counter.summary()
