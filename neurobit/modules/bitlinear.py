"""BitLinear: a linear map with float master weights and a ternary forward pass.

``y = scale * (x @ codes^T) + bias`` where ``codes`` in {-1, 0, +1} and ``scale`` come from
:func:`neurobit.functional.ternary.ternary_ste` (absmean by default). The integer-valued product
``x @ codes^T`` is formed first and scaled once, so for binary spike inputs the pre-scale sums
are exact integers in any summation order (what the compiler relies on).

With ``banks=M`` the weight is ``[M, out, in]`` (one matrix and one scale per circuit) and the
input is ``[..., M, in]`` -> output ``[..., M, out]``, computed with one einsum.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from neurobit.errors import ParameterError, ShapeError
from neurobit.functional.packing import PACKERS
from neurobit.functional.ternary import (QUANT_MODES, Ternary, quantize_activations_absmax,
                                         ternary_ste)


class BitLinear(nn.Module):
    """Ternary linear layer.

    Args:
        in_features, out_features: sizes (>= 1).
        bias: add a float bias.
        quant: ``absmean`` | ``threshold`` | ``fixed`` | ``float`` (see ``ternary_ste``).
        tau: threshold for ``quant="threshold"``; ``learn_tau`` makes it a parameter.
        fixed_scale: the scale for ``quant="fixed"`` (the synaptic weight of a +1 code).
        act_bits: quantize inputs per token to this many bits (absmax), or None.
        banks: number of independent circuits sharing this layer's shape, or None.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *,
                 quant: str = "absmean", tau: float | None = None, learn_tau: bool = False,
                 fixed_scale: float | None = None, act_bits: int | None = None,
                 banks: int | None = None, dtype=None):
        super().__init__()
        for name, n in (("in_features", in_features), ("out_features", out_features)):
            if int(n) < 1:
                raise ParameterError(f"{name}: must be >= 1, got {n}")
        if banks is not None and int(banks) < 1:
            raise ParameterError(f"banks: must be >= 1, got {banks}")
        if quant not in QUANT_MODES:
            raise ParameterError(f"quant: unknown mode {quant!r}; choose one of {list(QUANT_MODES)}")
        if quant == "threshold" and tau is None:
            raise ParameterError("tau: quant='threshold' needs tau")
        if quant == "fixed" and (fixed_scale is None or not fixed_scale > 0):
            raise ParameterError(f"fixed_scale: quant='fixed' needs a scale > 0, got {fixed_scale}")
        self.in_features, self.out_features, self.banks = in_features, out_features, banks
        self.quant, self.act_bits = quant, act_bits
        self.fixed_scale = fixed_scale
        shape = (out_features, in_features) if banks is None else (banks, out_features, in_features)
        self.weight = nn.Parameter(torch.empty(shape, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(shape[:-1], dtype=dtype)) if bias else None
        if quant == "threshold":
            t = torch.tensor(float(tau), dtype=dtype)
            if learn_tau:
                self.tau = nn.Parameter(t)
            else:
                self.register_buffer("tau", t)
        else:
            self.tau = None
        self._frozen: Ternary | None = None
        self.reset_parameters()

    def freeze(self) -> "BitLinear":
        """Quantize once and reuse the codes/scale in every forward (inference; no gradient to
        the master weight). Call again after changing the weights; :meth:`unfreeze` undoes it."""
        q = self.ternary()
        self._frozen = Ternary(q.codes.detach().clone(), q.scale.detach().clone())
        return self

    def unfreeze(self) -> "BitLinear":
        self._frozen = None
        return self

    def reset_parameters(self) -> None:
        """Kaiming-uniform master weights (as ``nn.Linear``); zero bias."""
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @torch.no_grad()
    def init_sparse_(self, density: float, generator: torch.Generator | None = None) -> None:
        """Set master weights to random ternary codes with ``density`` non-zeros of random sign,
        times the layer's scale (``fixed_scale``, or 1): for circuits built from a config."""
        if not 0 <= density <= 1:
            raise ParameterError(f"density: must lie in [0, 1], got {density}")
        shape = self.weight.shape
        mask = torch.rand(shape, generator=generator) < density
        sign = torch.where(torch.rand(shape, generator=generator) < 0.5, -1.0, 1.0)
        scale = self.fixed_scale if self.fixed_scale is not None else 1.0
        self.weight.copy_((mask * sign * scale).to(self.weight.dtype))

    def ternary(self) -> Ternary:
        """Codes (with STE gradient) and scale; scale is ``[]`` or ``[M, 1, 1]`` for banks."""
        return ternary_ste(self.weight, self.quant, tau=self.tau, fixed_scale=self.fixed_scale,
                           per_leading=self.banks is not None)

    def quantized(self) -> Ternary:
        """The codes and scale the forward pass uses: the frozen ones (:meth:`freeze`,
        :meth:`load_packed`) if any, else :meth:`ternary` of the master weight."""
        return self._frozen if self._frozen is not None else self.ternary()

    def effective_weight(self) -> torch.Tensor:
        """``scale * codes`` (detached): the weight the forward pass applies."""
        q = self.quantized()
        return (q.codes * q.scale).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.quantized()
        return self.apply_ternary(x, q)

    def apply_ternary(self, x: torch.Tensor, q: Ternary) -> torch.Tensor:
        """``scale * (x @ codes^T) + bias`` with codes/scale ``q`` from :meth:`ternary` (lets a
        time loop quantize once per sequence instead of once per step)."""
        if x.shape[-1] != self.in_features:
            raise ShapeError(f"x: last axis must be in_features={self.in_features}, "
                             f"got shape {list(x.shape)}")
        if self.act_bits is not None:
            x = quantize_activations_absmax(x, self.act_bits)
        if self.banks is None:
            y = torch.nn.functional.linear(x, q.codes) * q.scale
        else:
            if x.dim() < 2 or x.shape[-2] != self.banks:
                raise ShapeError(f"x: expected [..., {self.banks}, {self.in_features}] for "
                                 f"{self.banks} banks, got {list(x.shape)}")
            scale = q.scale.squeeze(-1) if q.scale.dim() == 3 else q.scale  # [M, 1] or []
            y = torch.einsum("...mi,moi->...mo", x, q.codes) * scale
        return y if self.bias is None else y + self.bias

    def forward_shared(self, x: torch.Tensor) -> torch.Tensor:
        """A banked layer applied to one input shared by all banks: ``x`` ``[..., in]`` ->
        ``[..., M, out]``, as one GEMM over ``[M * out, in]`` (the same as expanding ``x`` to
        ``[..., M, in]`` and calling the layer, without the copy or the batched matmul)."""
        if self.banks is None:
            raise ShapeError("forward_shared: needs a banked BitLinear (banks=M)")
        if x.shape[-1] != self.in_features or self.act_bits is not None:
            raise ShapeError(f"x: last axis must be in_features={self.in_features} (and no "
                             f"act_bits), got shape {list(x.shape)}")
        q = self.quantized()
        M, out = self.banks, self.out_features
        y = torch.nn.functional.linear(x, q.codes.reshape(M * out, self.in_features))
        y = y.unflatten(-1, (M, out)) * q.scale.reshape(-1, 1)
        return y if self.bias is None else y + self.bias

    def export_packed(self, fmt: str = "2bit") -> dict[str, torch.Tensor]:
        """Packed codes (``uint8``), scale and shape, for safetensors: at most 2 bits/weight."""
        pack, _ = PACKERS[fmt] if fmt in PACKERS else (None, None)
        if pack is None:
            raise ParameterError(f"fmt: unknown packing {fmt!r}; choose one of {list(PACKERS)}")
        if self.quant == "float":
            raise ParameterError("quant: a float BitLinear has no ternary codes to pack")
        q = self.quantized()
        out = {"codes": pack(q.codes.detach()), "scale": q.scale.detach().clone(),
               "shape": torch.tensor(list(self.weight.shape), dtype=torch.int64)}
        if self.bias is not None:
            out["bias"] = self.bias.detach().clone()
        return out

    @torch.no_grad()
    def load_packed(self, packed: dict[str, torch.Tensor], fmt: str = "2bit") -> "BitLinear":
        """Freeze the layer to the codes and scale of :meth:`export_packed` output (a compiled
        model's weights); the master weight is set to ``scale * codes`` as well."""
        _, unpack = PACKERS[fmt] if fmt in PACKERS else (None, None)
        if unpack is None:
            raise ParameterError(f"fmt: unknown packing {fmt!r}; choose one of {list(PACKERS)}")
        shape = tuple(int(n) for n in packed["shape"])
        if shape != tuple(self.weight.shape):
            raise ShapeError(f"packed: shape {list(shape)} does not match the layer's "
                             f"{list(self.weight.shape)}")
        codes = unpack(packed["codes"], shape, dtype=self.weight.dtype)
        scale = packed["scale"].to(self.weight.dtype)
        self.weight.copy_(codes * scale)
        if self.bias is not None and "bias" in packed:
            self.bias.copy_(packed["bias"])
        self._frozen = Ternary(codes, scale)
        return self

    def extra_repr(self) -> str:
        b = f", banks={self.banks}" if self.banks is not None else ""
        return f"{self.in_features} -> {self.out_features}, quant={self.quant}{b}"
