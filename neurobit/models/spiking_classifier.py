"""A ternary spiking image classifier: encoded image -> LIF layers (conv or dense) -> leaky readout.

Time runs over ``steps`` steps of ``dt_ms``. With ``x_t`` the encoded input spikes (see
``neurobit.functional.encoding``) and layers ``l = 1 .. L``::

    u^1_t = g_1 W_1 x_t                        (the stimulus drives layer 1 in the same step)
    u^l_t = g_l W_l s^{l-1}_{t-1}              (one-step synaptic delay between populations)
    v^l_t = alpha v^l_{t-1} + u^l_t - theta s^l_{t-1};  s^l_t = H(v^l_t - theta)   (functional.lif)
    r_t   = g_o W_o s^L_{t-1};  logits = v^o_T = sum_t rho^{T-1-t} r_t         (leaky readout)

``W`` are ternary (BitNet b1.58 absmean codes times one scale per layer, straight-through
gradients) or float; ``g`` a learned gain per layer (folded into the scale on export). Conv
layers are ``conv2d`` with ternary kernels (no bias), dense layers ``BitLinear``. The readout
never spikes: its membrane after the last step is the logit vector ``[B, n_classes]``.

Exactly the phase order of ``neurobit simulate`` (stimulus -> synapse with the previous step's
spikes -> integrate -> threshold -> delayed reset), so a trained classifier exported with
:func:`neurobit.models.classifier_export.export_circuit` runs in the simulator with the same
spikes. ``neuron: relu|gelu|silu`` replaces the LIF unit by ``h_t = act(u_t)`` (stateless, the
same encoding, delays and readout) for the ablations.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from neurobit._schema import PositiveFloat, PositiveInt, Strict
from neurobit.errors import ShapeError
from neurobit.functional.encoding import encode
from neurobit.functional.lif import LIFParameters, initial_state
from neurobit.functional.lif_scan import lif_scan
from neurobit.functional.packing import packed_nbytes
from neurobit.functional.ternary import ternary_ste
from neurobit.modules.bitlinear import BitLinear

NonNegInt = Annotated[int, Field(ge=0)]
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}


class ConvLayer(Strict):
    """``conv2d`` with ``channels`` output channels, a square ``kernel``, ``stride``, ``padding``."""

    type: Literal["conv"]
    channels: PositiveInt
    kernel: PositiveInt = 3
    stride: PositiveInt = 1
    padding: NonNegInt = 0


class DenseLayer(Strict):
    type: Literal["dense"]
    units: PositiveInt


Layer = Annotated[Union[ConvLayer, DenseLayer], Field(discriminator="type")]


class ClassifierConfig(Strict):
    """A spiking classifier (see the module docstring for the equations)."""

    kind: Literal["spiking_classifier"] = "spiking_classifier"
    input_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        (1, 28, 28), description="channels, height, width of the image")
    layers: list[Layer] = Field(min_length=1, description="hidden layers, in order")
    n_classes: PositiveInt = 10
    steps: PositiveInt = Field(6, description="time steps per image")
    dt_ms: PositiveFloat = 1.0
    encoding: Literal["rate", "regular", "latency"] = "regular"
    max_rate_hz: PositiveFloat = Field(1000.0, description="rate at intensity 1 (1 spike per "
                                       "step at dt 1 ms)")
    neuron: Literal["lif", "relu", "gelu", "silu"] = "lif"
    weights: Literal["ternary", "float"] = "ternary"
    alpha: float = Field(0.9, gt=0, lt=1, description="membrane decay per step")
    theta: PositiveFloat = 1.0
    surrogate: Literal["fast_sigmoid", "arctan", "hard_sigmoid"] = "fast_sigmoid"
    slope: PositiveFloat = 5.0
    readout_alpha: float = Field(0.9, gt=0, le=1, description="decay rho of the readout")

    @model_validator(mode="after")
    def _check_shapes(self):
        shape = self.input_shape
        dense_seen = False
        for i, layer in enumerate(self.layers):
            if layer.type == "conv":
                if dense_seen:
                    raise ValueError(f"layers.{i}: a conv layer cannot follow a dense layer")
                c, h, w = shape
                oh = (h + 2 * layer.padding - layer.kernel) // layer.stride + 1
                ow = (w + 2 * layer.padding - layer.kernel) // layer.stride + 1
                if oh < 1 or ow < 1:
                    raise ValueError(f"layers.{i}: kernel {layer.kernel} does not fit the "
                                     f"{h}x{w} input")
                shape = (layer.channels, oh, ow)
            else:
                dense_seen = True
        return self

    def shapes(self) -> list[tuple[int, ...]]:
        """Output shape of every hidden layer (``(C, H, W)`` for conv, ``(units,)`` dense)."""
        out, shape = [], self.input_shape
        for layer in self.layers:
            if layer.type == "conv":
                c, h, w = shape
                shape = (layer.channels, (h + 2 * layer.padding - layer.kernel) // layer.stride + 1,
                         (w + 2 * layer.padding - layer.kernel) // layer.stride + 1)
            else:
                shape = (layer.units,)
            out.append(shape)
        return out


class TernaryConv2d(nn.Conv2d):
    """``conv2d`` with ternary codes (absmean, STE) or float weights, no bias:
    ``y = scale * conv(x, codes)``."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                 quant: str = "absmean"):
        super().__init__(c_in, c_out, kernel, stride, padding, bias=False)
        self.quant = quant

    def quantized(self):
        return ternary_ste(self.weight, self.quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.quantized()
        return F.conv2d(x, q.codes, None, self.stride, self.padding) * q.scale


class ClassifierOutput(NamedTuple):
    """``logits`` ``[B, K]``; ``spikes``: per hidden layer ``[T, B, units]`` (LIF: {0, 1}; other
    units: their activations); ``activity``: mean over layers, steps, batch and units of
    ``s != 0`` (a float tensor with gradient for the LIF case: the mean spike rate)."""

    logits: torch.Tensor
    spikes: list
    activity: torch.Tensor


class SpikingClassifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        q = "float" if cfg.weights == "float" else "absmean"
        self.synapses = nn.ModuleList()
        c_in = cfg.input_shape[0]
        n_in = math.prod(cfg.input_shape)
        for layer, shape in zip(cfg.layers, cfg.shapes()):
            if layer.type == "conv":
                self.synapses.append(TernaryConv2d(c_in, layer.channels, layer.kernel,
                                                   layer.stride, layer.padding, q))
                c_in = layer.channels
            else:
                self.synapses.append(BitLinear(n_in, layer.units, quant=q))
            n_in = math.prod(shape)
        self.readout = BitLinear(n_in, cfg.n_classes, quant=q)
        self.log_gain = nn.Parameter(torch.zeros(len(cfg.layers) + 1))
        self.lif = LIFParameters(alpha=cfg.alpha, theta=cfg.theta, surrogate=cfg.surrogate,
                                 slope=cfg.slope)
        T = cfg.steps
        self.register_buffer("readout_decay", torch.tensor(
            [cfg.readout_alpha ** (T - 1 - t) for t in range(T)]), persistent=False)

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Input spikes ``[T, B, n_in]`` of intensities ``images`` ``[B, n_in]`` in [0, 1]."""
        c = self.cfg
        n_in = math.prod(c.input_shape)
        if images.dim() != 2 or images.shape[1] != n_in:
            raise ShapeError(f"images: expected [batch, {n_in}], got {list(images.shape)}")
        return encode(images, c.encoding, c.steps, max_rate_hz=c.max_rate_hz, dt_ms=c.dt_ms,
                      generator=generator, dtype=self.readout.weight.dtype)

    def gains(self) -> torch.Tensor:
        return self.log_gain.exp()

    def _synapse(self, i: int, x: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
        """Layer i's input current ``[T, B, units]`` from its source ``x`` ``[T, B, n]``."""
        T, B = x.shape[:2]
        syn = self.synapses[i]
        if isinstance(syn, TernaryConv2d):
            y = syn(x.reshape(T * B, *in_shape)).reshape(T, B, -1)
        else:
            y = syn(x)
        return y * self.gains()[i]

    def _unit(self, u: torch.Tensor) -> torch.Tensor:
        if self.cfg.neuron == "lif":
            s, _ = lif_scan(u, initial_state(u.shape[1:], u.dtype), self.lif)
            return s
        return ACTIVATIONS[self.cfg.neuron](u)

    @staticmethod
    def _delay(s: torch.Tensor) -> torch.Tensor:
        """``s_{t-1}`` (zeros at t = 0): the one-step delay between populations."""
        return torch.cat([torch.zeros_like(s[:1]), s[:-1]], 0)

    def forward_spikes(self, x: torch.Tensor) -> ClassifierOutput:
        """From input spikes ``x`` ``[T, B, n_in]``."""
        spikes, shape = [], self.cfg.input_shape
        src = x
        for i, out_shape in enumerate(self.cfg.shapes()):
            s = self._unit(self._synapse(i, src, shape))
            spikes.append(s)
            src, shape = self._delay(s), out_shape
        r = self.readout(src) * self.gains()[-1]
        logits = (r * self.readout_decay.to(r.dtype).view(-1, 1, 1)).sum(0)
        # mean over all units of all layers (weighted by layer size), steps and batch
        per_layer = torch.stack([s.mean() if self.cfg.neuron == "lif"
                                 else (s != 0).to(r.dtype).mean() for s in spikes])
        n = torch.tensor([s[0, 0].numel() for s in spikes], dtype=r.dtype)
        activity = (per_layer * n).sum() / n.sum()
        return ClassifierOutput(logits, spikes, activity)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None
                ) -> ClassifierOutput:
        """``images`` ``[B, n_in]`` intensities in [0, 1] -> :class:`ClassifierOutput`."""
        return self.forward_spikes(self.encode(images, generator))

    # -- accounting ---------------------------------------------------------------------------
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def packed_nbytes(self) -> int:
        """Bytes of the deployable model: ternary weights at 2 bits each (float weights at 4
        bytes), one float32 scale and one gain per layer."""
        n = 0
        for m in (*self.synapses, self.readout):
            w = m.weight.numel()
            n += packed_nbytes(w, "2bit") + 4 if self.cfg.weights == "ternary" else 4 * w
        return n + 4 * self.log_gain.numel()
