"""PNB-X BitBrain: a brain-inspired spiking image classifier with ternary weights, a glial
activity controller, low-rank fast weights and a hippocampal prototype memory.

Per image ``x`` ``[B, n_in]`` in [0, 1], presented for T steps (t = 1..T, one step = one LIF
update; no ms: the model runs in steps)::

    x_t  ~ Bernoulli(x)                       (encoding="rate", explicit torch.Generator), or
    x_t  = floor(t x + 1/2) - floor((t-1) x + 1/2)      (encoding="regular", deterministic)
    u_t  = W_in x_t                           W_in: BitLinear n_in -> H        [B, H]
    z_t  = a * z_{t-1} + (1 - a) * u_t        a = sigmoid(a_logit) per unit (diagonal SSM)
    r_t  = tanh(W_d u_t + W_r r_{t-1})        W_d: H -> d_rnn, W_r: d_rnn -> d_rnn (micro-RNN)
    I_t  = z_t + W_up r_t + f_t               W_up: d_rnn -> H
    s_t, v_t = lif_step(I_t; alpha, theta + offset)          LIF, surrogate gradient
    p_t  = U^T s_t                            U: BitLinear H -> r (codes used both ways)
    F_t  = clamp(lam F_{t-1} + eta p_t p_t^T, -clip, clip)   per-sample [B, r, r]
    f_{t+1} = U (F_t p_t)                     fast-weight feedback to the next step
    rate = mean_t s_t                         [B, H]
    logits = W_out rate + b + tau_mem * (g cos(rate, P_fast) + (1 - g) cos(rate, P_slow))

``g = sigmoid(gate_logit)`` is learned. ``P_fast``, ``P_slow`` ``[n_classes, H]`` are buffers
(no gradient) moved in training mode, when labels are given, toward each class's mean rate in
the batch: ``P_c <- P_c + m (mean_{i: y_i = c} rate_i - P_c)`` with m = 0.5 (fast) and 0.01
(slow), *after* the logits of that batch are formed (no label leaks into them). ``offset``
comes from :class:`neurobit.modules.glial_pid.GlialPID`, updated once per training call with
the call's activity ``mean(s)`` (spikes per unit per step). With ``fast_weights`` off the input
current does not depend on the spikes and the LIF runs as one :func:`lif_scan`; with it on, the
loop steps :func:`lif_step` (T is small).

Every equation is called from ``neurobit.functional`` (lif, fast_weights, packing); this file
only wires them.
"""
from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from neurobit._schema import PositiveInt, Strict
from neurobit.errors import ParameterError, ShapeError
from neurobit.functional.encoding import encode
from neurobit.functional.fast_weights import (check_fast_weight_parameters, fast_weight_init,
                                              fast_weight_read, fast_weight_update)
from neurobit.functional.lif import LIFParameters, LIFState, initial_state, lif_step
from neurobit.functional.lif_scan import lif_scan
from neurobit.functional.packing import packed_nbytes
from neurobit.modules.bitlinear import BitLinear
from neurobit.modules.glial_pid import GlialPID, GlialPIDConfig

ENCODINGS = ("rate", "regular")


class BitBrainConfig(Strict):
    """Typed config of :class:`BitBrain`; unknown keys and impossible values name the field."""

    n_in: PositiveInt = Field(784, description="input pixels (28 x 28)")
    n_classes: PositiveInt = Field(10, description="classes")
    hidden: PositiveInt = Field(2048, description="H: LIF units")
    T: PositiveInt = Field(6, description="presentation steps per image")
    encoding: Literal["rate", "regular"] = Field("rate", description="spike code of the pixels")
    alpha: float = Field(0.9, gt=0, lt=1, description="LIF membrane decay per step")
    theta: float = Field(1.0, gt=0, description="LIF base threshold")
    surrogate: str = Field("fast_sigmoid", description="surrogate-gradient name")
    slope: float = Field(5.0, gt=0, description="surrogate steepness")
    d_rnn: PositiveInt = Field(64, description="micro-RNN width")
    fast_weights: bool = Field(True, description="low-rank fast-weight feedback on/off")
    fw_rank: PositiveInt = Field(16, description="r: rank of the fast-weight projection U")
    lam: float = Field(0.95, gt=0, le=1, description="fast-weight decay per step")
    eta: float = Field(0.1, ge=0, description="fast-weight write rate")
    clip: float = Field(1.0, gt=0, description="fast-weight clip bound")
    memory: bool = Field(True, description="hippocampal prototype memory on/off")
    tau_mem: float = Field(5.0, ge=0, description="scale of the memory cosine logits")
    mem_fast_rate: float = Field(0.5, gt=0, le=1, description="EMA rate of P_fast")
    mem_slow_rate: float = Field(0.01, gt=0, le=1, description="EMA rate of P_slow")
    target_rate: float = Field(0.188, gt=0, lt=1, description="glial target activity r*")
    kp: float = Field(0.5, ge=0, description="glial PID proportional gain")
    ki: float = Field(4.0, ge=0, description="glial PID integral gain")
    kd: float = Field(0.0, ge=0, description="glial PID derivative gain")
    offset_lo: float = Field(-0.9, le=0, description="lowest threshold offset (> -theta)")
    offset_hi: float = Field(8.0, ge=0, description="highest threshold offset")
    pid_scope: Literal["global", "per_unit"] = Field("global", description="one offset or H")
    weights: Literal["ternary", "float"] = Field("ternary", description="ternary absmean or float")
    in_gain: float = Field(8.0, gt=0, description="init bound of W_in is in_gain / sqrt(n_in) "
                           "(rate-coded pixels are sparse: the default lets u_t reach theta)")
    use_scan: bool = Field(True, description="with fast_weights off, run the LIF as one "
                           "lif_scan (numba, CPU); False: lif_step loop (same spikes)")
    seed: int = Field(0, ge=0, description="seed of the weight initialisation")

    @model_validator(mode="after")
    def _check(self):
        if not self.theta + self.offset_lo > 0:
            raise ValueError(f"offset_lo: theta + offset_lo must be > 0, got "
                             f"{self.theta} + {self.offset_lo}")
        return self

    def pid_config(self) -> GlialPIDConfig:
        return GlialPIDConfig(target_rate=self.target_rate, kp=self.kp, ki=self.ki, kd=self.kd,
                              lo=self.offset_lo, hi=self.offset_hi)


class BitBrainOutput(NamedTuple):
    """``logits`` ``[B, C]``; ``rate`` ``[B, H]`` mean spikes per step; ``activity`` ``[]`` mean
    spikes per unit per step; ``theta_offset`` the offset this call used (``[]`` or ``[H]``)."""

    logits: torch.Tensor
    rate: torch.Tensor
    activity: torch.Tensor
    theta_offset: torch.Tensor


class BitBrainState(NamedTuple):
    """State after step t: LIF ``lif`` ([B, H]), SSM ``z`` [B, H], micro-RNN ``r`` [B, d_rnn],
    fast weights ``F`` [B, r, r] and the feedback ``f`` [B, H] for step t + 1."""

    lif: LIFState
    z: torch.Tensor
    r: torch.Tensor
    F: torch.Tensor
    f: torch.Tensor


def encode_images(images: torch.Tensor, T: int, encoding: str = "rate",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Spike code of intensities ``images`` ``[B, N]`` in [0, 1] -> ``[T, B, N]`` in {0, 1}.

    ``rate`` (Bernoulli(I) per step, from ``generator``) or ``regular`` (deterministic), as
    in :mod:`neurobit.functional.encoding`.
    """
    if encoding not in ENCODINGS:
        raise ParameterError(f"encoding: unknown {encoding!r}; choose one of {list(ENCODINGS)}")
    if int(T) < 1:
        raise ParameterError(f"T: must be >= 1, got {T}")
    x = images.detach()
    if x.numel() and not bool(((x >= 0) & (x <= 1)).all()):
        raise ParameterError("images: intensities must lie in [0, 1]")
    # intensity I is the spike probability per step (max rate 1000 Hz at dt 1 ms)
    return encode(x, encoding, int(T), max_rate_hz=1000.0, dt_ms=1.0, generator=generator,
                  dtype=x.dtype)


class BitBrain(nn.Module):
    """PNB-X BitBrain classifier (equations in the module docstring).

    ``forward(images [B, n_in], generator=None, labels=None) -> BitBrainOutput``; ``labels``
    ``[B]`` (long) are only used to move the hippocampal memory in training mode.
    """

    def __init__(self, cfg: BitBrainConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else BitBrainConfig()
        check_fast_weight_parameters(cfg.lam, cfg.eta, cfg.clip)
        q = "absmean" if cfg.weights == "ternary" else "float"
        g = torch.Generator().manual_seed(cfg.seed)
        H = cfg.hidden
        self.proj = BitLinear(cfg.n_in, H, quant=q)
        self.a_logit = nn.Parameter(torch.zeros(H))                     # a = 0.5 at init
        self.rnn_in = BitLinear(H, cfg.d_rnn, quant=q)
        self.rnn_rec = BitLinear(cfg.d_rnn, cfg.d_rnn, quant=q)
        self.rnn_up = BitLinear(cfg.d_rnn, H, quant=q)
        self.fw_proj = BitLinear(H, cfg.fw_rank, quant=q) if cfg.fast_weights else None
        self.readout = BitLinear(H, cfg.n_classes, bias=True, quant=q)
        with torch.no_grad():
            for layer in self._bitlinears():
                b = 1.0 / layer.in_features ** 0.5
                if layer is self.proj:
                    b *= cfg.in_gain
                layer.weight.copy_((torch.rand(layer.weight.shape, generator=g) * 2 - 1) * b)
        self.glia = GlialPID(cfg.pid_config(), None if cfg.pid_scope == "global" else H)
        if cfg.memory:
            self.gate_logit = nn.Parameter(torch.zeros(()))
            self.register_buffer("P_fast", torch.zeros(cfg.n_classes, H))
            self.register_buffer("P_slow", torch.zeros(cfg.n_classes, H))
        else:
            self.gate_logit = None

    def _bitlinears(self) -> list[BitLinear]:
        return [m for m in self.modules() if isinstance(m, BitLinear)]

    # ---- dynamics -----------------------------------------------------------------------
    def lif_parameters(self, offset: torch.Tensor) -> LIFParameters:
        c = self.cfg
        return LIFParameters(alpha=c.alpha, theta=c.theta + offset, surrogate=c.surrogate,
                             slope=c.slope)

    def initial_state(self, batch_size: int, like: torch.Tensor) -> BitBrainState:
        H, d = self.cfg.hidden, self.cfg.d_rnn
        z = like.new_zeros(batch_size, H)
        F0 = fast_weight_init(batch_size, self.cfg.fw_rank, dtype=like.dtype, device=like.device)
        return BitBrainState(initial_state((batch_size, H), like.dtype, like.device), z,
                             like.new_zeros(batch_size, d), F0, z.clone())

    def run(self, images: torch.Tensor, generator: torch.Generator | None = None,
            state: BitBrainState | None = None) -> tuple[torch.Tensor, BitBrainState]:
        """Spikes ``[T, B, H]`` and the final state for ``images`` ``[B, n_in]``."""
        c = self.cfg
        if images.dim() != 2 or images.shape[-1] != c.n_in:
            raise ShapeError(f"images: expected [B, {c.n_in}], got {list(images.shape)}")
        B = images.shape[0]
        x = encode_images(images, c.T, c.encoding, generator)            # [T, B, n_in]
        u = self.proj(x)                                                  # one GEMM over T
        wd_u = self.rnn_in(u)                                             # [T, B, d_rnn]
        a = torch.sigmoid(self.a_logit)
        st = self.initial_state(B, images) if state is None else state
        p = self.lif_parameters(self.glia.offset)
        q_rec = self.rnn_rec.quantized()
        z, r = st.z, st.r
        if self.fw_proj is None:
            currents = []
            for u_t, wd_t in zip(u.unbind(0), wd_u.unbind(0)):
                z = a * z + (1 - a) * u_t
                r = torch.tanh(wd_t + self.rnn_rec.apply_ternary(r, q_rec))
                currents.append(z + st.f + self.rnn_up(r))
            I = torch.stack(currents, 0)
            if c.use_scan and I.device.type == "cpu":
                spikes, lif = lif_scan(I, st.lif, p)
            else:  # lif_scan's kernels are CPU (numba); step elsewhere
                out, lif = [], st.lif
                for I_t in I.unbind(0):
                    s, lif = lif_step(I_t, lif, p)
                    out.append(s)
                spikes = torch.stack(out, 0)
            return spikes, BitBrainState(lif, z, r, st.F, st.f)
        qU = self.fw_proj.quantized()
        lif, Fm, f = st.lif, st.F, st.f
        out = []
        for u_t, wd_t in zip(u.unbind(0), wd_u.unbind(0)):
            z = a * z + (1 - a) * u_t
            r = torch.tanh(wd_t + self.rnn_rec.apply_ternary(r, q_rec))
            s, lif = lif_step(z + self.rnn_up(r) + f, lif, p)
            out.append(s)
            pt = self.fw_proj.apply_ternary(s, qU)[:, None, :]                   # [B, 1, r]
            Fm = fast_weight_update(Fm, pt, pt, c.lam, c.eta, c.clip, check=False)
            read = fast_weight_read(Fm, pt)[:, 0]                                # F_t p_t [B, r]
            f = F.linear(read, qU.codes.t()) * qU.scale                          # U (F_t p_t)
        return torch.stack(out, 0), BitBrainState(lif, z, r, Fm, f)

    # ---- memory -------------------------------------------------------------------------
    def memory_logits(self, rate: torch.Tensor) -> torch.Tensor:
        """``tau_mem * (g cos(rate, P_fast) + (1 - g) cos(rate, P_slow))`` ``[B, C]``
        (zeros when the memory is off)."""
        if not self.cfg.memory:
            return rate.new_zeros(rate.shape[0], self.cfg.n_classes)
        g = torch.sigmoid(self.gate_logit)
        rn = F.normalize(rate, dim=-1)
        cf = rn @ F.normalize(self.P_fast, dim=-1).t()
        cs = rn @ F.normalize(self.P_slow, dim=-1).t()
        return self.cfg.tau_mem * (g * cf + (1 - g) * cs)

    @torch.no_grad()
    def update_memory(self, rate: torch.Tensor, labels: torch.Tensor) -> None:
        """Move each class's prototypes toward its mean ``rate`` in the batch (training only)."""
        if not (self.cfg.memory and self.training):
            return
        C = self.cfg.n_classes
        labels = labels.reshape(-1).long()
        if labels.shape[0] != rate.shape[0]:
            raise ShapeError(f"labels: expected [{rate.shape[0]}], got {list(labels.shape)}")
        if labels.numel() and not bool(((labels >= 0) & (labels < C)).all()):
            raise ParameterError(f"labels: must lie in [0, {C})")
        onehot = F.one_hot(labels, C).to(rate.dtype)                      # [B, C]
        count = onehot.sum(0)                                             # [C]
        mean = (onehot.t() @ rate.detach()) / count.clamp_min(1)[:, None]
        seen = (count > 0).to(rate.dtype)[:, None]
        for P, m in ((self.P_fast, self.cfg.mem_fast_rate), (self.P_slow, self.cfg.mem_slow_rate)):
            P.add_(m * seen * (mean - P))

    # ---- forward ------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None,
                labels: torch.Tensor | None = None) -> BitBrainOutput:
        offset = self.glia.offset.clone()
        spikes, _ = self.run(images, generator)
        rate = spikes.mean(0)                                             # [B, H]
        activity = spikes.detach().mean()                                 # spikes/unit/step
        self.glia.update(activity if self.cfg.pid_scope == "global"
                         else spikes.detach().mean((0, 1)))                # [H] per unit
        logits = self.readout(rate) + self.memory_logits(rate)
        if labels is not None:
            self.update_memory(rate, labels)
        return BitBrainOutput(logits, rate, activity, offset)

    # ---- size ---------------------------------------------------------------------------
    def packed_nbytes(self) -> int:
        """Deployed size in bytes: ternary BitLinear weights packed 2 bits each
        (``packed_nbytes(numel, '2bit')``) plus a 4-byte scale; every other parameter
        (float weights, biases, ``a_logit``, gate) and every buffer at its element size."""
        total, packed = 0, set()
        for layer in self._bitlinears():
            if layer.quant != "float":
                total += packed_nbytes(layer.weight.numel(), "2bit") + 4
                packed.add(id(layer.weight))
        for prm in self.parameters():
            if id(prm) not in packed:
                total += prm.numel() * prm.element_size()
        for buf in self.buffers():
            total += buf.numel() * buf.element_size()
        return total

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"hidden={c.hidden}, T={c.T}, encoding={c.encoding}, weights={c.weights}, "
                f"fast_weights={c.fast_weights}, memory={c.memory}")
