"""MetaController: turns ACC signals into extra reflection passes, a temperature and a cautious
flag. It never vetoes an output and can never loop.

Decision from signals ``s_k`` (sanitised to [0, 1]: NaN -> 1 (a broken monitor counts as maximal
concern), +inf -> 1, -inf and negatives -> 0, values > 1 -> 1; a tensor counts by its largest
element; a signal that is absent, or not named in ``weights``, is ignored)::

    concern = sum_k w_k s_k / sum_k w_k               (0 when no weighted signal is present)
    remaining = max_reflection_steps - reflections_done   (clamped to [0, max_reflection_steps])
    reflection_steps = 0                                 if concern < reflect_threshold
                     = min(remaining, max(1, ceil(max_reflection_steps * f)))  otherwise,
                       f = (concern - reflect_threshold) / (1 - reflect_threshold)  (1 if th = 1)
    temperature = clamp(t_base - temperature_slope * concern, t_min, t_max)
    cautious = concern >= cautious_threshold

:func:`run_with_reflection` runs ``1 + max_reflection_steps`` passes at most: a ``for`` loop over a
fixed range (the bound holds by construction, whatever the signals), stopping early when a
decision asks for no further reflection. It always returns the answer of the last pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Union

import torch
from torch import nn

from neurobit.errors import ParameterError

DEFAULT_WEIGHTS = {"conflict": 1.0, "uncertainty": 1.0, "divergence": 1.0,
                   "conflict_norm": 0.5, "error_prob": 1.0}


@dataclass(frozen=True)
class MetaControllerConfig:
    """Parameters of :func:`decide` (validated on construction).

    Attributes:
        max_reflection_steps: extra passes allowed per answer, an int in [1, 3].
        reflect_threshold: concern at which reflection starts, in [0, 1].
        cautious_threshold: concern at which cautious mode starts, in [0, 1].
        t_base, t_min, t_max: temperatures, finite, 0 < t_min <= t_base <= t_max.
        temperature_slope: temperature drop per unit of concern, finite and >= 0.
        weights: signal name -> weight >= 0 (finite; at least one > 0).
    """

    max_reflection_steps: int = 2
    reflect_threshold: float = 0.5
    cautious_threshold: float = 0.75
    t_base: float = 1.0
    t_min: float = 0.3
    t_max: float = 1.5
    temperature_slope: float = 0.7
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))

    def __post_init__(self):
        m = self.max_reflection_steps
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= 3:
            raise ParameterError(f"max_reflection_steps: must be an int in [1, 3], got {m!r}")
        for name in ("reflect_threshold", "cautious_threshold"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise ParameterError(f"{name}: must lie in [0, 1], got {v!r}")
        for name in ("t_base", "t_min", "t_max", "temperature_slope"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ParameterError(f"{name}: must be a finite number, got {v!r}")
        if not 0 < self.t_min <= self.t_base <= self.t_max:
            raise ParameterError(f"t_min, t_base, t_max: need 0 < t_min <= t_base <= t_max, got "
                                 f"{self.t_min}, {self.t_base}, {self.t_max}")
        if self.temperature_slope < 0:
            raise ParameterError(f"temperature_slope: must be >= 0, got {self.temperature_slope}")
        w = dict(self.weights)
        for k, v in w.items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ParameterError(f"weights.{k}: must be a finite number >= 0, got {v!r}")
        if not any(v > 0 for v in w.values()):
            raise ParameterError("weights: at least one weight must be > 0")


class MetaState(NamedTuple):
    """``reflections_done``: extra passes already run for the current answer."""

    reflections_done: int = 0


class Decision(NamedTuple):
    """``reflection_steps`` in [0, remaining budget]; ``temperature`` in [t_min, t_max];
    ``cautious``; ``concern`` in [0, 1]. There is no veto: the answer is always delivered."""

    reflection_steps: int
    temperature: float
    cautious: bool
    concern: float


class ReflectionResult(NamedTuple):
    """``answer`` of the last pass, number of ``passes`` run (1 + reflections) and the
    ``decisions`` taken after each pass (the last one describes the delivered answer)."""

    answer: Any
    passes: int
    decisions: tuple[Decision, ...]


def sanitize_signal(x: Any) -> float:
    """A signal value as a float in [0, 1] (NaN -> 1, +inf -> 1, -inf -> 0; tensors: max)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.numel() == 0:
            return 0.0
        if bool(torch.isnan(x).any()):
            return 1.0
        x = x.max().item()
    try:
        v = float(x)
    except (TypeError, ValueError):
        return 1.0
    if math.isnan(v):
        return 1.0
    return min(1.0, max(0.0, v))


def concern_of(signals: Mapping[str, Any], cfg: MetaControllerConfig) -> float:
    """Weighted mean of the sanitised signals named in ``cfg.weights`` (0 if none present)."""
    num = den = 0.0
    for name, w in cfg.weights.items():
        if w > 0 and name in signals and signals[name] is not None:
            num += w * sanitize_signal(signals[name])
            den += w
    return min(1.0, max(0.0, num / den)) if den > 0 else 0.0


def decide(signals: Mapping[str, Any], state: MetaState | None = None,
           cfg: MetaControllerConfig | None = None) -> Decision:
    """The decision for one answer (see the module docstring); never raises on signal values."""
    cfg = cfg or MetaControllerConfig()
    m = cfg.max_reflection_steps
    done = 0 if state is None else state.reflections_done
    try:
        done = int(done)
    except (TypeError, ValueError, OverflowError):
        done = m
    remaining = m - min(m, max(0, done))
    c = concern_of(signals, cfg)
    steps = 0
    if c >= cfg.reflect_threshold and remaining > 0:
        th = cfg.reflect_threshold
        f = 1.0 if th >= 1 else (c - th) / (1 - th)
        steps = min(remaining, max(1, math.ceil(m * f)))
    t = min(cfg.t_max, max(cfg.t_min, cfg.t_base - cfg.temperature_slope * c))
    return Decision(int(steps), float(t), bool(c >= cfg.cautious_threshold), float(c))


class MetaController(nn.Module):
    """Thin module over :func:`decide` and :func:`run_with_reflection` (no parameters)."""

    def __init__(self, cfg: MetaControllerConfig | None = None, **kwargs):
        super().__init__()
        if cfg is not None and kwargs:
            raise ParameterError("cfg: give a MetaControllerConfig or keyword arguments, not both")
        self.cfg = cfg if cfg is not None else MetaControllerConfig(**kwargs)

    def decide(self, signals: Mapping[str, Any], state: MetaState | None = None) -> Decision:
        return decide(signals, state, self.cfg)

    def forward(self, signals: Mapping[str, Any], state: MetaState | None = None) -> Decision:
        return self.decide(signals, state)

    def run(self, step_fn, signals_fn) -> ReflectionResult:
        return run_with_reflection(step_fn, signals_fn, self)

    def extra_repr(self) -> str:
        return f"max_reflection_steps={self.cfg.max_reflection_steps}"


StepFn = Callable[[int, Any, Decision], Any]
SignalsFn = Callable[[Any], Mapping[str, Any]]


def run_with_reflection(step_fn: StepFn, signals_fn: SignalsFn,
                        controller: Union[MetaController, MetaControllerConfig, None] = None
                        ) -> ReflectionResult:
    """Run a pass, ask the controller, and reflect while it asks, within the bound.

    Args:
        step_fn: ``step_fn(pass_index, previous_answer, decision) -> answer``; pass 0 gets
            ``previous_answer=None`` and a neutral decision (``t_base``, not cautious).
        signals_fn: ``signals_fn(answer) -> signals`` (e.g. an ACC's signals for that answer).
        controller: a :class:`MetaController` or :class:`MetaControllerConfig` (default config).

    Returns:
        :class:`ReflectionResult`; ``passes <= 1 + max_reflection_steps`` always.
    """
    cfg = controller.cfg if isinstance(controller, MetaController) else (
        controller or MetaControllerConfig())
    decision = Decision(0, float(cfg.t_base), False, 0.0)
    answer, decisions = None, []
    for i in range(1 + cfg.max_reflection_steps):  # the bound, fixed before the first pass
        answer = step_fn(i, answer, decision)
        decision = decide(signals_fn(answer), MetaState(i), cfg)
        decisions.append(decision)
        if decision.reflection_steps == 0:
            break
    return ReflectionResult(answer, len(decisions), tuple(decisions))
