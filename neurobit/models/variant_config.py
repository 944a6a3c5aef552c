"""Typed configs of the other seed designs as LM block types (:class:`VariantLM`).

- ``kind: moie``      rotary attention (BitLinear) + MoIE FFN (two Sparse Bayesian Layers)
- ``kind: dynsiha``   DynSIHA attention (SBL q/k/v and output) + MoIE FFN (or an MLP)
- ``kind: bit_ttt``   Bit-TTT layers (ternary projections, weight-matrix state) with residuals
- ``kind: bit_llama`` Bit-TTT + SwiGLU with RMSNorm and residuals (Bit-Llama)

Every model is ``embedding -> n_layers blocks -> RMSNorm -> head``; unknown keys are errors and
values are range-checked (``ValidationError`` names the key).
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from neurobit._schema import PositiveFloat, PositiveInt
from neurobit.models.config_base import EmbeddingFields, check_rotary_heads

NonNegFloat = Annotated[float, Field(ge=0)]


class _SBLFields(EmbeddingFields):
    """Fields shared by the Sparse-Bayesian-Layer models."""

    n_heads: PositiveInt = Field(4, description="attention heads (even head size: rotary)")
    rope_base: PositiveFloat = 10000.0
    moie_ratio: PositiveInt = Field(4, description="MoIE hidden SBL units / d_model")
    weights: Literal["ternary", "float"] = Field(
        "float", description="quantization of the non-SBL linear maps (attention, mlp, head)")
    checkpoint: bool = Field(False, description="gradient-checkpoint the SBL value paths "
                             "(the gates are computed outside the checkpoint)")
    gate_loss_weight: NonNegFloat = Field(
        0.0, description="weight of the surprise gate loss (needs a double backward)")
    kl_weight: NonNegFloat = Field(1e-4, description="weight of the KL to the dynamic prior")

    @model_validator(mode="after")
    def _check(self):
        check_rotary_heads(self.d_model, self.n_heads)
        return self


class MoIEConfig(_SBLFields):
    """Pre-norm Transformer whose FFN is the MoIE (two SBLs); attention as in the GPT baseline."""

    kind: Literal["moie"] = "moie"


class DynSIHAConfig(_SBLFields):
    """Pre-norm Transformer with DynSIHA attention (SBLs) and a MoIE or MLP FFN."""

    kind: Literal["dynsiha"] = "dynsiha"
    ffn: Literal["moie", "mlp"] = Field("moie", description="FFN of each block")
    mlp_ratio: PositiveInt = Field(4, description="hidden width / d_model of the mlp ffn")


class _TTTFields(EmbeddingFields):
    d_state: PositiveInt = Field(32, description="n: size of the TTT features and of the "
                                 "state matrix W (the Bit-TTT notes use d_model / 4)")
    ttt_lr: float = Field(0.5, gt=0, lt=2, description="inner learning rate eta of the "
                          "per-token update (stable for 0 < eta < 2 with unit features)")
    weights: Literal["ternary", "float"] = Field(
        "ternary", description="projections (and head): ternary absmean or float")


class BitTTTConfig(_TTTFields):
    """Blocks ``x + BitTTT(RMSNorm(x))`` (the Bit-TTT layer of the notes, stacked)."""

    kind: Literal["bit_ttt"] = "bit_ttt"


class BitLlamaConfig(_TTTFields):
    """Bit-Llama: blocks ``x + BitTTT(RMSNorm(x))`` then ``x + SwiGLU(RMSNorm(x))``."""

    kind: Literal["bit_llama"] = "bit_llama"
    mlp_ratio: PositiveInt = Field(2, description="SwiGLU hidden width / d_model")


VariantConfig = MoIEConfig | DynSIHAConfig | BitTTTConfig | BitLlamaConfig
VARIANT_KINDS = ("moie", "dynsiha", "bit_ttt", "bit_llama")
