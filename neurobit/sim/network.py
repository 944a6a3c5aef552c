"""Build the modules of a circuit file: populations (LIFPopulation), projections (BitLinear
with fixed ternary scale), stimuli. Weights are drawn from the config's seed.

A population with ``circuits: M > 1`` is a MicroCircuitBank: its state is ``[trials, M, size]``
and node ids are circuit-major (``m * size + i``). Projections into a bank use banked
BitLinears ``[M, size, source]``; between two banks of equal ``M`` (and a bank's recurrent
projection) they connect circuit m to circuit m only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from neurobit.config.checks import is_per_circuit, lif_kwargs, projection_shape
from neurobit.config.schema import CircuitConfig, ProjectionConfig
from neurobit.errors import ConfigError
from neurobit.functional.synapse import conv_as_dense, ternary_event_matvec
from neurobit.modules.bitlinear import BitLinear
from neurobit.modules.lif_population import LIFPopulation
from neurobit.sim.stimuli import StimulusSource

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Population:
    name: str
    lif: LIFPopulation
    size: int
    circuits: int

    @property
    def units(self) -> int:
        return self.size * self.circuits

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.size,) if self.circuits == 1 else (self.circuits, self.size)


@dataclass
class Projection:
    cfg: ProjectionConfig
    linear: BitLinear
    per_circuit: bool
    target_circuits: int
    event_fraction: float = 0.05  # below this spike fraction, propagate events, not a GEMM

    def __post_init__(self):
        q = self.linear.freeze()._frozen
        self._codes_t = q.codes.transpose(-1, -2).contiguous()
        self._scale = q.scale.squeeze(-1) if q.scale.dim() == 3 else q.scale

    def _expand(self, src: torch.Tensor) -> torch.Tensor:
        if self.target_circuits == 1 or self.per_circuit:
            return src
        return src.unsqueeze(-2).expand(*src.shape[:-1], self.target_circuits, src.shape[-1])

    def __call__(self, src: torch.Tensor) -> torch.Tensor:
        """Dense input ``src`` ``[..., source units]`` (or ``[..., M, size]`` per circuit) ->
        current in the target's state shape."""
        return self.linear(self._expand(src))

    def spikes(self, s: torch.Tensor) -> torch.Tensor:
        """Binary spikes ``[..., source units]`` (``[B, M, size]`` per circuit):
        event-driven when sparse, the dense product otherwise (identical results)."""
        if float(s.count_nonzero()) > self.event_fraction * s.numel():
            return self(s)
        s = self._expand(s)
        return ternary_event_matvec(s, self._codes_t, self._scale)


@dataclass
class Network:
    cfg: CircuitConfig
    populations: dict[str, Population]
    projections: list[Projection]
    stimuli: dict[str, StimulusSource]
    dtype: torch.dtype


def _init_codes(pr: ProjectionConfig, shape: tuple[int, ...], recurrent: bool,
                gen: torch.Generator) -> torch.Tensor:
    recurrent_square = recurrent and not pr.allow_self and shape[-1] == shape[-2]
    if pr.connectivity == "fixed_indegree":
        n_src = shape[-1] - (1 if recurrent_square else 0)
        k = int(round(pr.density * n_src))
        keys = torch.rand(shape, generator=gen)
        if recurrent_square:
            keys = keys + 2.0 * torch.eye(shape[-1])  # never choose i -> i
        kth = torch.topk(keys, k, dim=-1, largest=False).indices if k else None
        mask = torch.zeros(shape, dtype=torch.bool)
        if kth is not None:
            mask.scatter_(-1, kth, True)
    else:
        mask = torch.rand(shape, generator=gen) < pr.density
    if pr.sign == "mixed":
        sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)
    else:
        sign = torch.full(shape, 1.0 if pr.sign == "excitatory" else -1.0)
    codes = mask * sign
    if recurrent_square:
        codes = codes * (1 - torch.eye(shape[-1]))
    return codes


def _load_checkpoint(pr: ProjectionConfig) -> torch.Tensor:
    """The stored codes ``[target, source]``; a conv kernel is unrolled to that dense form."""
    from safetensors.torch import load_file
    w = load_file(pr.checkpoint)[pr.key].to(torch.float64)
    if pr.conv is not None:
        w = conv_as_dense(w, pr.conv.in_shape, pr.conv.stride, pr.conv.padding)
    return w


def build_network(cfg: CircuitConfig) -> Network:
    dtype = DTYPES[cfg.dtype]
    gen = torch.Generator().manual_seed(cfg.seed)
    pops = {}
    for name, p in cfg.populations.items():
        lif = LIFPopulation(p.size, **lif_kwargs(cfg, name), dtype=dtype)
        pops[name] = Population(name, lif, p.size, p.circuits)
    projections = []
    for i, pr in enumerate(cfg.projections):
        shape = projection_shape(cfg, pr)
        tgt = cfg.populations[pr.target]
        banks = tgt.circuits if tgt.circuits > 1 else None
        lin = BitLinear(shape[-1], shape[-2], quant="fixed", fixed_scale=pr.weight, banks=banks,
                        dtype=dtype)
        lin.requires_grad_(False)
        if pr.checkpoint is not None:
            w = _load_checkpoint(pr) * pr.weight  # stored codes (or master weights) x weight
        else:
            w = _init_codes(pr, shape, pr.source == pr.target, gen) * pr.weight
        if tuple(w.shape) != tuple(lin.weight.shape):
            raise ConfigError(f"projections.{i}: weight shape {list(w.shape)} != {list(lin.weight.shape)}")
        lin.weight.data.copy_(w.to(dtype))
        projections.append(Projection(pr, lin, is_per_circuit(cfg, pr), tgt.circuits))
    stimuli = {}
    for j, (name, s) in enumerate(cfg.stimuli.items()):
        g = torch.Generator().manual_seed(cfg.seed * 7919 + 104729 * (j + 1))
        stimuli[name] = StimulusSource(name, s, dt_ms=cfg.dt_ms, trials=cfg.trials, dtype=dtype,
                                       generator=g)
    return Network(cfg, pops, projections, stimuli, dtype)
