"""Typed configuration of the language models (BrainLM, GPT baseline) and of their training.

Unknown keys are errors (``extra="forbid"``) and values are range-checked; a ``ValidationError``
names the key path. ``LMRunConfig.model_dump()`` is the *resolved* config written with every
checkpoint (``config.yaml``). The model section is discriminated by ``kind``:

- ``kind: brain``  -> :class:`neurobit.models.brain_lm.BrainLM`
- ``kind: gpt``    -> :class:`neurobit.models.gpt.GPT`
- ``kind: moie | dynsiha | bit_ttt | bit_llama`` -> :class:`neurobit.models.variant_lm.VariantLM`
  (the other seed designs as blocks; configs in :mod:`neurobit.models.variant_config`)

Each BrainLM layer has a switch to its standard counterpart (for ablations):

- ``neuron``: ``lif`` (spiking LIF circuits) | ``relu`` | ``gelu`` | ``silu`` (leaky rate units
  instead)
- ``weights``: ``ternary`` (BitLinear absmean, BitNet b1.58) | ``float``
- ``mixer``: ``hub`` (CorticalHub with fast weights across tokens) | ``attention`` (causal
  multi-head self-attention over tokens with rotary positions) | ``mean`` (mean pooling over
  the circuits and a BitLinear ``D -> d_model``; no state across tokens)
- ``hub_inhibition``: ``none`` | ``kwta`` (keep ``hub_k`` circuits per hub group) | ``divisive``
  (lateral inhibition in the CorticalHub)
- ``ffn``: ``circuits`` (recurrent MicroCircuitBank) | ``mlp`` (per-token two-layer MLP)
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Field, model_validator

from neurobit._schema import PositiveFloat, PositiveInt, Strict  # noqa: F401 (re-exported)
from neurobit.models.config_base import EmbeddingFields, NonNegInt, check_rotary_heads
from neurobit.models.variant_config import (BitLlamaConfig, BitTTTConfig, DynSIHAConfig,
                                            MoIEConfig)

class BrainLMConfig(EmbeddingFields):
    """BrainLM: embedding -> n_layers BrainBlocks -> RMSNorm -> head.

    Per token and block: C circuits of N LIF units read the normalized residual through
    ternary ``W_in``, run ``spike_steps`` LIF steps (state carried across tokens), and a
    readout of their spike counts gives ``h_i`` ``[C, d_circuit]``; the CorticalHub attends
    across the circuits with a fast-weight memory carried across tokens, and its global state
    ``g`` (size ``d_model``) is added to the residual.
    """

    kind: Literal["brain"] = "brain"
    position: Literal["none", "learned", "sinusoidal"] = Field(
        "none", description="absolute positions added to the embedding; 'none': the "
        "recurrence carries order, so generation is not bounded by max_pos")
    max_pos: PositiveInt = Field(1024, description="rows of a learned position table")
    n_circuits: PositiveInt = Field(4, description="C circuits per block")
    n_units: PositiveInt = Field(64, description="N LIF units per circuit")
    d_circuit: PositiveInt = Field(32, description="readout size D of each circuit")
    spike_steps: PositiveInt = Field(2, description="LIF steps per token")
    alpha: float = Field(0.9, gt=0, lt=1, description="membrane decay per LIF step (the "
                         "slowest unit's with alpha_min)")
    alpha_min: Optional[float] = Field(
        None, gt=0, lt=1, description="heterogeneous time constants: the units of each "
        "circuit get decays from alpha_min to alpha, time constants -1/ln(alpha) spaced "
        "geometrically (functional.lif.alpha_spread); None: every unit decays by alpha")
    theta: PositiveFloat = Field(1.0, description="LIF threshold")
    membrane_readout: Literal["none", "bank", "gain"] = Field(
        "none", description="circuit readout also sees the membrane m at each token's last LIF "
        "step: 'bank' adds a second ternary readout W_m m, 'gain' reads W_out (rate + gamma m) "
        "with a learned gain gamma per unit; 'none' spike counts only")
    surrogate: Literal["fast_sigmoid", "arctan", "hard_sigmoid"] = "fast_sigmoid"
    slope: PositiveFloat = Field(4.0, description="surrogate-gradient slope")
    drive: PositiveFloat = Field(2.0, description="initial gain of the circuits' input norm")
    d_key: PositiveInt = Field(32, description="hub query/key/value size d")
    hub_groups: PositiveInt = Field(1, description="hub attention groups (divide n_circuits)")
    fast_weights: bool = Field(True, description="hub fast-weight memory across tokens")
    hub_residual: bool = Field(False, description="each circuit keeps its own hub value next "
                               "to what it attends to: h'_i = v_i + sum_j a_ij v_j")
    memory_read: bool = Field(False, description="the hub also reads the fast-weight memory "
                              "as values (h'_i += M^T q_i / sqrt(d): a linear-attention read "
                              "across tokens); needs fast_weights")
    lam: float = Field(0.95, gt=0, le=1, description="fast-weight decay per token")
    eta: float = Field(0.1, ge=0, description="fast-weight write rate")
    clip: PositiveFloat = Field(1.0, description="fast-weight clip bound")
    hub_feedback: bool = Field(False, description="hub feedback into the circuits at the "
                               "next token (sequential; slower to train)")
    n_heads: PositiveInt = Field(4, description="heads of the attention mixer")
    mlp_ratio: PositiveInt = Field(4, description="hidden width / d_model of the mlp ffn")
    neuron: Literal["lif", "relu", "gelu", "silu"] = Field(
        "lif", description="circuit units: 'lif' spiking LIF; 'relu' | 'gelu' | 'silu' leaky "
        "rate units r = act(v - theta) with the same leak and subtractive reset (in the mlp "
        "ffn: the hidden activation; 'lif' there is a one-step spike)")
    weights: Literal["ternary", "float"] = "ternary"
    mixer: Literal["hub", "attention", "mean"] = Field(
        "hub", description="across-circuit mixer: 'hub' CorticalHub with fast weights across "
        "tokens; 'attention' causal self-attention over tokens (KV cache); 'mean' mean of the "
        "C circuit outputs then a BitLinear D -> d_model (no state across tokens)")
    hub_inhibition: Literal["none", "kwta", "divisive"] = Field(
        "none", description="lateral inhibition across the circuits of each hub group on the "
        "hub's attention outputs: 'kwta' keeps the hub_k circuits of largest norm, "
        "'divisive' divides each feature by 1 + the group's root-mean-square (mixer: hub)")
    hub_k: PositiveInt = Field(1, description="winners per hub group of the kwta inhibition "
                               "(<= n_circuits / hub_groups)")
    ffn: Literal["circuits", "mlp"] = "circuits"
    head_weights: Optional[Literal["ternary", "float"]] = Field(
        None, description="quantization of the output head (default: weights)")

    @model_validator(mode="after")
    def _check(self):
        if self.n_circuits % self.hub_groups:
            raise ValueError(f"hub_groups: {self.hub_groups} groups do not divide "
                             f"n_circuits={self.n_circuits}")
        if self.alpha_min is not None and self.alpha_min > self.alpha:
            raise ValueError(f"alpha_min: {self.alpha_min} exceeds alpha={self.alpha}")
        if self.hub_residual and self.mixer != "hub":
            raise ValueError(f"hub_residual: acts in the hub; it needs mixer='hub', got "
                             f"mixer={self.mixer!r}")
        if self.membrane_readout != "none" and self.ffn != "circuits":
            raise ValueError(f"membrane_readout: reads the circuits' membranes; it needs "
                             f"ffn='circuits', got ffn={self.ffn!r}")
        if self.memory_read and not (self.fast_weights and self.mixer == "hub"):
            raise ValueError("memory_read: reads the hub's fast-weight memory; it needs "
                             "mixer='hub' and fast_weights=true")
        group = self.n_circuits // self.hub_groups
        if self.hub_inhibition == "kwta" and self.hub_k > group:
            raise ValueError(f"hub_k: kwta keeps hub_k={self.hub_k} circuits per hub group but "
                             f"a group has only n_circuits / hub_groups = {group}")
        if self.hub_inhibition != "none" and self.mixer != "hub":
            raise ValueError(f"hub_inhibition: {self.hub_inhibition!r} acts in the hub; it needs "
                             f"mixer='hub', got mixer={self.mixer!r}")
        if self.mixer == "attention" and self.d_model % self.n_heads:
            raise ValueError(f"n_heads: {self.n_heads} does not divide d_model={self.d_model}")
        if self.mixer == "attention" and (self.d_model // self.n_heads) % 2:
            raise ValueError("n_heads: rotary positions need an even head size "
                             f"(d_model / n_heads = {self.d_model // self.n_heads})")
        if self.position == "sinusoidal" and self.d_model % 2:
            raise ValueError("position: sinusoidal positions need an even d_model")
        return self


class GPTConfig(EmbeddingFields):
    """nanoGPT-style pre-norm causal Transformer with rotary positions (no length limit)."""

    kind: Literal["gpt"] = "gpt"
    n_heads: PositiveInt = 4
    mlp_ratio: PositiveInt = 4
    rope_base: PositiveFloat = 10000.0
    weights: Literal["ternary", "float"] = "float"

    @model_validator(mode="after")
    def _check(self):
        check_rotary_heads(self.d_model, self.n_heads)
        return self


ModelConfig = Annotated[Union[BrainLMConfig, GPTConfig, MoIEConfig, DynSIHAConfig, BitTTTConfig,
                              BitLlamaConfig], Field(discriminator="kind")]


class TrainConfig(Strict):
    """AdamW with linear warmup then cosine decay to ``min_lr``, gradient-norm clipping."""

    steps: PositiveInt = Field(1000, description="total optimizer steps (sets the schedule)")
    batch_size: PositiveInt = Field(16, description="global batch (split across processes)")
    block_size: PositiveInt = Field(64, description="tokens per training sequence T")
    max_seconds: Optional[PositiveFloat] = Field(
        None, description="wall-clock budget of the training steps (evaluation and checkpoints "
        "not counted): training stops when it is spent, and the cosine schedule follows the "
        "fraction of the budget used instead of the step count (steps stays an upper bound). "
        "Runs with a budget are not bit-reproducible (the schedule depends on timing)")
    lr: PositiveFloat = 3e-3
    min_lr: Annotated[float, Field(ge=0)] = 3e-4
    warmup_steps: NonNegInt = 50
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    grad_clip: Annotated[float, Field(ge=0)] = Field(1.0, description="max grad norm (0: off)")
    eval_interval: PositiveInt = Field(100, description="steps between validation losses")
    eval_batches: PositiveInt = 4
    log_interval: PositiveInt = Field(1, description="steps between metrics.jsonl lines")
    checkpoint_interval: PositiveInt = Field(200, description="steps between checkpoints")
    seed: NonNegInt = 0
    dtype: Literal["float32", "float64"] = "float32"
    progress: bool = Field(True, description="rich progress bar (rank 0)")
    num_threads: Optional[PositiveInt] = Field(
        None, description="torch intra-op threads per process (None: leave torch's setting; "
        "1 is much faster for these small models on a busy or small CPU)")

    @model_validator(mode="after")
    def _check(self):
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr: {self.min_lr} exceeds lr={self.lr}")
        return self


class LMRunConfig(Strict):
    """A whole training run: ``model`` and ``train`` sections (the resolved config)."""

    model: ModelConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
