"""Low-rank adapters (LoRA) on ternary BitLinear layers, and their merge with re-quantization.

An adapted layer computes, in float::

    y = BitLinear(x) + (alpha / r) * B A x  =  (Q(W) + D) x (+ bias),   D = (alpha / r) B A

with the frozen master weight ``W`` ``[out, in]`` (``[M, out, in]`` for a bank of M circuits),
its quantization ``Q(W) = scale * codes`` (the layer's own mode, absmean for BrainLM),
``A`` ``[r, in]`` (``[M, r, in]``) and ``B`` ``[out, r]`` (``[M, out, r]``). ``A`` starts
Kaiming-uniform (bound ``1/sqrt(in)``), ``B`` at zero, so a fresh adapter changes nothing.

:class:`LoRABitLinear` is a :class:`BitLinear` that shares the base layer's parameter objects
(state-dict keys of the base stay the same; the adapter adds ``<name>.lora_A`` and
``<name>.lora_B``) and returns ``Ternary(codes + D / scale, scale)`` from :meth:`quantized`:
every path that applies a BitLinear (``forward``, ``apply_ternary``, ``forward_shared``, the
fused recurrent scan of BrainLM) then computes ``scale * (codes + D / scale) x = Q(W) x + D x``,
and gradients reach ``A`` and ``B`` through it. The "codes" of an adapted layer are not ternary;
merge before exporting packed weights.

Merge folds the adapter into the master weight and re-quantizes::

    W' = W + D,    merged layer: Q(W') x

so a zero adapter changes nothing (bit for bit), and with ``E(W) = Q(W) - W`` the merged output
differs from base + adapter by quantization error only::

    Q(W') x - (Q(W) + D) x = (E(W') - E(W)) x

For absmean, ``|E(W)_ij| <= max(scale / 2, max|W| - scale)`` elementwise (rounding inside the
clip range, clipping outside it), which bounds the difference (tested).
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

import torch
from torch import nn

from neurobit.errors import ParameterError
from neurobit.functional.ternary import Ternary
from neurobit.modules.bitlinear import BitLinear


class LoRABitLinear(BitLinear):
    """A BitLinear with a trainable low-rank float adapter (see the module docstring).

    Args:
        base: the layer to adapt; its parameters are shared, not copied.
        rank: r >= 1.
        alpha: adapter scale numerator (``D = alpha / r * B A``); default ``rank`` (scale 1).
        generator: for the initialisation of ``A``.
    """

    def __init__(self, base: BitLinear, rank: int, alpha: float | None = None,
                 generator: torch.Generator | None = None):
        nn.Module.__init__(self)
        if not isinstance(base, BitLinear) or isinstance(base, LoRABitLinear):
            raise ParameterError("base: must be a plain BitLinear (not already adapted)")
        if int(rank) < 1:
            raise ParameterError(f"rank: must be >= 1, got {rank}")
        alpha = float(rank if alpha is None else alpha)
        if not math.isfinite(alpha):
            raise ParameterError(f"alpha: must be finite, got {alpha}")
        for k in ("in_features", "out_features", "banks", "quant", "act_bits", "fixed_scale"):
            setattr(self, k, getattr(base, k))
        self.weight = base.weight
        self.bias = base.bias
        if isinstance(base.tau, nn.Parameter):
            self.tau = base.tau
        elif base.tau is not None:
            self.register_buffer("tau", base.tau)
        else:
            self.tau = None
        self._frozen = base._frozen
        object.__setattr__(self, "_base", base)  # not a submodule: its parameters are ours
        self.rank = int(rank)
        self.register_buffer("lora_alpha", torch.tensor(alpha, dtype=base.weight.dtype,
                                                        device=base.weight.device))
        w = base.weight
        lead = () if base.banks is None else (base.banks,)
        self.lora_A = nn.Parameter(torch.empty(*lead, self.rank, base.in_features, dtype=w.dtype,
                                               device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(*lead, base.out_features, self.rank,
                                               dtype=w.dtype, device=w.device))
        bound = 1.0 / math.sqrt(base.in_features)
        with torch.no_grad():
            u = torch.rand(self.lora_A.shape, generator=generator, dtype=torch.float64)
            self.lora_A.copy_((2 * u - 1) * bound)

    @property
    def base(self) -> BitLinear:
        """The adapted layer (sharing this layer's weight, bias and tau)."""
        return self._base

    @property
    def alpha(self) -> float:
        """The adapter's alpha (stored as the buffer ``lora_alpha``, so it is checkpointed)."""
        return float(self.lora_alpha)

    def delta_weight(self) -> torch.Tensor:
        """``D = alpha / r * B A``: ``[out, in]`` or ``[M, out, in]`` (carries gradients)."""
        return (self.alpha / self.rank) * (self.lora_B @ self.lora_A)

    def quantized(self) -> Ternary:
        """``Ternary(codes + D / scale, scale)``: applying it gives ``Q(W) x + D x``."""
        q = super().quantized()
        return Ternary(q.codes + self.delta_weight() / q.scale, q.scale)

    def export_packed(self, fmt: str = "2bit") -> dict[str, torch.Tensor]:
        raise ParameterError("fmt: an adapted layer has no ternary codes to pack; "
                             "merge_lora(model) first")

    @torch.no_grad()
    def merge(self) -> BitLinear:
        """Fold ``D`` into the base master weight (``W <- W + D``) and return the base layer,
        re-quantized (re-frozen if it was frozen). This adapter must not be used afterwards."""
        base = self._base
        base.weight.add_(self.delta_weight().to(base.weight.dtype))
        if base._frozen is not None:
            base.freeze()
        return base

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lora_rank={self.rank}, lora_alpha={self.alpha:g}"


@dataclass
class MergeReport:
    """What a merge changed in one layer: codes flipped (of ``n``) and the scale before/after."""

    flipped: int
    n: int
    scale_before: float
    scale_after: float


def _matches(name: str, include, exclude) -> bool:
    return (any(fnmatch.fnmatchcase(name, p) for p in include)
            and not any(fnmatch.fnmatchcase(name, p) for p in exclude))


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def attach_lora(model: nn.Module, rank: int, alpha: float | None = None,
                include: tuple[str, ...] = ("*",), exclude: tuple[str, ...] = (),
                generator: torch.Generator | None = None) -> list[str]:
    """Wrap every plain BitLinear whose module name matches a pattern of ``include`` (and none of
    ``exclude``; ``fnmatch`` patterns such as ``"blocks.*.hub.*"``, ``"head"``) in a
    :class:`LoRABitLinear`. Returns the adapted names (in module order)."""
    if isinstance(include, str) or isinstance(exclude, str):
        raise ParameterError("include/exclude: pass tuples of patterns, not a string")
    names = [n for n, m in model.named_modules()
             if type(m) is BitLinear and n and _matches(n, include, exclude)]
    if not names:
        raise ParameterError(f"include: no BitLinear layer matches {list(include)} "
                             f"(excluding {list(exclude)})")
    for n in names:
        _replace(model, n, LoRABitLinear(model.get_submodule(n), rank, alpha, generator))
    return names


def adapters(model: nn.Module) -> dict[str, LoRABitLinear]:
    """The adapted layers of ``model`` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRABitLinear)}


def lora_parameter_names(model: nn.Module) -> list[str]:
    """Names of all adapter parameters (``*.lora_A``, ``*.lora_B``)."""
    return [n for n, _ in model.named_parameters() if n.endswith((".lora_A", ".lora_B"))]


def detach_lora(model: nn.Module) -> list[str]:
    """Remove every adapter (discarding it) and put the base layers back. Returns the names."""
    found = adapters(model)
    for n, m in found.items():
        _replace(model, n, m.base)
    return list(found)


@torch.no_grad()
def merge_lora(model: nn.Module) -> dict[str, MergeReport]:
    """Merge every adapter into its base layer (``W <- W + D``, re-quantized) and put the base
    layers back; returns a :class:`MergeReport` per layer."""
    out = {}
    for n, m in adapters(model).items():
        before = BitLinear.quantized(m)  # the base quantization, without the adapter
        base = m.merge()
        after = base.quantized()
        out[n] = MergeReport(int((before.codes != after.codes).sum()), before.codes.numel(),
                             float(before.scale.mean()), float(after.scale.mean()))
        _replace(model, n, base)
    return out


def attach_from_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Attach adapters where ``state`` has ``<name>.lora_A`` keys (rank from its shape, alpha
    from ``<name>.lora_alpha``), so that ``model.load_state_dict(state)`` then fits."""
    names = sorted({k[:-len(".lora_A")] for k in state if k.endswith(".lora_A")})
    have = adapters(model)
    for n in names:
        if n in have:
            continue
        try:
            base = model.get_submodule(n)
        except AttributeError:
            raise ParameterError(f"state: {n}.lora_A names no layer of the model") from None
        rank = int(state[f"{n}.lora_A"].shape[-2])
        alpha = float(state[f"{n}.lora_alpha"]) if f"{n}.lora_alpha" in state else None
        _replace(model, n, LoRABitLinear(base, rank, alpha))
    return names
