"""Typed schema of circuit files (``neurobit simulate circuit.yaml``).

Every field is documented here; unknown keys are errors (``extra="forbid"``), values are
range-checked, and cross-references (projection source/target, stimulus targets) are checked
after parsing. ``CircuitConfig.model_dump()`` is the *resolved* config saved with every output.
Units are in the names: ``*_ms`` milliseconds, ``*_hz`` hertz.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Field, model_validator

from neurobit._schema import PositiveFloat, PositiveInt, Strict  # noqa: F401 (re-exported)



class PopulationConfig(Strict):
    """A LIF population; with ``circuits > 1`` a MicroCircuitBank of ``circuits`` x ``size``."""

    size: PositiveInt = Field(description="units per circuit")
    circuits: PositiveInt = Field(1, description="independent circuits (a MicroCircuitBank)")
    tau_mem_ms: Optional[PositiveFloat] = Field(20.0, description="membrane time constant")
    alpha: Optional[float] = Field(None, gt=0, lt=1, description="decay per step; overrides tau_mem_ms")
    theta: PositiveFloat = Field(1.0, description="threshold")
    beta: Optional[Annotated[float, Field(ge=0)]] = Field(None, description="reset amount (default theta)")
    v_init: Literal["zero", "uniform"] = Field("zero", description="uniform: v ~ U(0, theta)")
    backend: Literal["native", "snntorch", "norse"] = "native"


class ConvProjection(Strict):
    """A convolutional projection: the source is an image-shaped population ``in_shape``
    (channels, height, width; flattened in that order) and the checkpoint tensor is a kernel
    ``[out channels, in channels, kernel, kernel]`` of codes; it is unrolled into the dense
    ``[target units, source units]`` matrix of the equivalent ``conv2d`` (no bias), the target
    being ``out channels x out height x out width`` units."""

    in_shape: tuple[PositiveInt, PositiveInt, PositiveInt]
    stride: PositiveInt = 1
    padding: Annotated[int, Field(ge=0)] = 0


class ProjectionConfig(Strict):
    """Ternary synapses ``source -> target``: ``w = weight * code``, code in {-1, 0, +1}.

    Random init: each synapse is non-zero with probability ``density`` (or each target gets
    exactly ``round(density * sources)`` of them with ``connectivity: fixed_indegree``); its sign is ``+`` for
    ``sign: excitatory``, ``-`` for ``inhibitory``, random for ``mixed``. Or load the codes from
    a safetensors ``checkpoint`` (tensor ``key``, shape [target units, source units]; banked
    targets [circuits, units, source units]).
    """

    source: str
    target: str
    density: float = Field(0.1, ge=0, le=1)
    connectivity: Literal["bernoulli", "fixed_indegree"] = Field(
        "bernoulli", description="bernoulli: each synapse independently with p = density; "
        "fixed_indegree: every target unit gets exactly round(density * sources) synapses")
    weight: PositiveFloat = Field(0.1, description="magnitude of a non-zero synapse")
    sign: Literal["mixed", "excitatory", "inhibitory"] = "mixed"
    allow_self: bool = Field(False, description="keep i->i synapses in recurrent projections")
    checkpoint: Optional[str] = None
    key: Optional[str] = None
    conv: Optional[ConvProjection] = Field(None, description="the checkpoint holds a conv kernel")

    @model_validator(mode="after")
    def _checkpoint_needs_key(self):
        if self.checkpoint is not None and self.key is None:
            raise ValueError("key: a projection loaded from a checkpoint needs the tensor key")
        if self.conv is not None and self.checkpoint is None:
            raise ValueError("conv: a convolutional projection needs a checkpoint with its kernel")
        return self


class PoissonStimulus(Strict):
    """``size`` independent Poisson spike sources at ``rate_hz`` between start and stop."""

    type: Literal["poisson"]
    size: PositiveInt
    rate_hz: Annotated[float, Field(ge=0)]
    start_ms: Annotated[float, Field(ge=0)] = 0.0
    stop_ms: Optional[Annotated[float, Field(ge=0)]] = None


class CurrentStimulus(Strict):
    """A current added to every unit of ``target`` each step: ``amplitude`` from start to stop
    (a step current; ``stop_ms: null`` means constant to the end)."""

    type: Literal["current"]
    target: str
    amplitude: float
    start_ms: Annotated[float, Field(ge=0)] = 0.0
    stop_ms: Optional[Annotated[float, Field(ge=0)]] = None


class SpikeFileStimulus(Strict):
    """Spike times from a CSV file with header ``time_ms,node_id`` (or an .h5 file written by
    neurobit: ``population`` names the group)."""

    type: Literal["spike_file"]
    path: str
    size: PositiveInt
    population: Optional[str] = None


class ImageStimulus(Strict):
    """An image encoded as spikes. ``source``: ``digits:<index>`` (scikit-learn 8x8 digits,
    bundled) or a path to a ``.npy`` array (H x W, values in [0, 1] or 0-255).
    ``rate``: Poisson at ``max_rate_hz * intensity``; ``regular``: the same rate as a
    deterministic spike train (``s_t = floor(t p + 1/2) - floor((t - 1) p + 1/2)``, ``p`` the
    spike probability per step); ``latency``: one spike per pixel at ``t = (1 - intensity) *
    window_ms`` (pixels below ``min_intensity`` stay silent). Equations:
    ``neurobit.functional.encoding``."""

    type: Literal["image"]
    source: str
    encoding: Literal["rate", "regular", "latency"] = "rate"
    max_rate_hz: PositiveFloat = 100.0
    window_ms: PositiveFloat = 50.0
    min_intensity: Annotated[float, Field(ge=0, le=1)] = 0.05


class TextStimulus(Strict):
    """Text as a token stream: characters of ``text`` (or the file ``path``) one-hot over
    ``vocab`` (default: printable ASCII), one token every ``token_ms``; the active channel fires
    every step while its token is presented."""

    type: Literal["text"]
    text: Optional[str] = None
    path: Optional[str] = None
    vocab: Optional[str] = None
    token_ms: PositiveFloat = 10.0

    @model_validator(mode="after")
    def _one_source(self):
        if (self.text is None) == (self.path is None):
            raise ValueError("text: give exactly one of text or path")
        return self


Stimulus = Annotated[
    Union[PoissonStimulus, CurrentStimulus, SpikeFileStimulus, ImageStimulus, TextStimulus],
    Field(discriminator="type"),
]


class SpikeMonitorConfig(Strict):
    population: str


class StateMonitorConfig(Strict):
    """Record ``variable`` (membrane ``v`` after integration) of ``population`` at ``indices``
    (default all) every ``every_steps`` steps."""

    population: str
    variable: Literal["v"] = "v"
    indices: Optional[list[Annotated[int, Field(ge=0)]]] = None
    every_steps: PositiveInt = 1


class MonitorsConfig(Strict):
    spikes: list[str] = Field(default_factory=list, description="populations whose spikes are recorded")
    state: list[StateMonitorConfig] = Field(default_factory=list)


class FastWeightsConfig(Strict):
    """``M_{t+1} = clamp(lam M_t + eta sum_i k_i v_i^T, -clip, clip)``, cleared at run start."""

    enabled: bool = True
    lam: float = Field(0.95, gt=0, le=1)
    eta: Annotated[float, Field(ge=0)] = 0.05
    clip: PositiveFloat = 1.0


class ACCConfig(Strict):
    """Conflict (disagreement of the circuits' traces) and uncertainty (entropy of the hub's
    global state read as logits), with a running z-score calibration (``conflict_norm``)."""

    enabled: bool = True
    conflict_measure: Literal["cosine", "variance", "mean"] = "cosine"


class MetaConfig(Strict):
    """Reflection: extra hub passes within a step when the ACC's concern is high (bounded)."""

    enabled: bool = True
    max_reflection_steps: int = Field(2, ge=1, le=3)
    reflect_threshold: float = Field(0.5, ge=0, le=1)
    cautious_threshold: float = Field(0.75, ge=0, le=1)


class CorticalHubBlock(Strict):
    """A CorticalHub over the circuits of a bank population (``circuits > 1``).

    Each step (phase ``blocks``) the hub reads ``h_i``, an exponential trace of circuit i's spikes
    (``h <- exp(-dt / trace_tau_ms) h + s``, ``[trials, circuits, size]``), runs grouped attention
    with fast weights and inhibition, and its feedback ``f_i`` is added to circuit i's input
    current at the next step. Weights: random from ``seed`` (default: the circuit's seed), or a
    safetensors ``checkpoint`` of ``CorticalHub.state_dict()``."""

    type: Literal["cortical_hub"]
    population: str
    trace_tau_ms: PositiveFloat = 10.0
    d_key: PositiveInt = 16
    d_global: PositiveInt = 8
    groups: Union[PositiveInt, list[list[Annotated[int, Field(ge=0)]]]] = 1
    inhibition: Literal["none", "kwta", "divisive"] = "none"
    k: PositiveInt = 1
    fast_weights: FastWeightsConfig = Field(default_factory=FastWeightsConfig)
    feedback_gain: float = 0.1
    every_steps: PositiveInt = 1
    seed: Optional[Annotated[int, Field(ge=0)]] = None
    checkpoint: Optional[str] = None
    acc: ACCConfig = Field(default_factory=ACCConfig)
    meta: MetaConfig = Field(default_factory=MetaConfig)


Block = Annotated[Union[CorticalHubBlock], Field(discriminator="type")]


class CircuitConfig(Strict):
    """A whole circuit file."""

    name: str = "circuit"
    dt_ms: PositiveFloat = 1.0
    duration_ms: PositiveFloat = 1000.0
    trials: PositiveInt = 1
    seed: Annotated[int, Field(ge=0)] = 0
    dtype: Literal["float32", "float64"] = "float32"
    chunk_steps: PositiveInt = Field(1000, description="steps simulated between disk writes")
    stepper: Literal["auto", "reference", "fused"] = Field(
        "auto", description="reference: torch modules step by step (the oracle); fused: one "
        "numba kernel per chunk (identical spikes); auto: fused where supported")
    max_memory_gb: PositiveFloat = Field(8.0, description="refuse networks estimated above this")
    output: Optional[str] = Field(None, description="default output path (.h5)")
    populations: dict[str, PopulationConfig]
    projections: list[ProjectionConfig] = Field(default_factory=list)
    stimuli: dict[str, Stimulus] = Field(default_factory=dict)
    monitors: MonitorsConfig = Field(default_factory=MonitorsConfig)
    blocks: dict[str, Block] = Field(default_factory=dict, description="hub/ACC blocks")
