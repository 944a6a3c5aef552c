"""ACC (anterior cingulate cortex): conflict and uncertainty monitors, fixed and learned.

:class:`ACC` computes, per batch element (all in [0, 1], see ``neurobit.functional.monitoring``)::

    conflict      = circuit_conflict(h)                 (cosine | variance | mean of the two)
    uncertainty   = H(softmax(logits)) / log K          (if logits are given)
    divergence    = JS(softmax(candidate_logits)) / log n   (if n >= 1 candidates are given)
    conflict_norm = sigmoid((conflict - mean) / std)    (running z-score over past conflicts)

The calibration state (:class:`ZScoreState`) is passed in and returned: each batch is scored
against the conflicts seen before it, then added to the state.

:class:`LearnedACC` is a small MLP over :func:`acc_features` (the signals above plus the top-1
probability and the top-1/top-2 margin) that predicts the probability that the output is wrong;
it is trained with binary cross-entropy on labelled records (:meth:`LearnedACC.fit`) and
standardises its inputs with the same running z-score calibration, fitted on the training
records.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from neurobit.errors import ParameterError, ShapeError
from neurobit.functional.monitoring import (CONFLICT_MEASURES, EPS, ZScoreState, calibrate,
                                            circuit_conflict, js_divergence, normalized_entropy,
                                            zscore_init, zscore_std, zscore_update)
from neurobit.modules.bitlinear import BitLinear

FEATURE_NAMES = ("conflict", "uncertainty", "divergence", "conflict_norm", "top1_prob", "margin")


class ACCOutput(NamedTuple):
    """``signals``: name -> ``[B]`` tensor (``conflict``, ``conflict_norm`` always;
    ``uncertainty`` with logits; ``divergence`` with candidates); ``calibration``: new state."""

    signals: dict[str, torch.Tensor]
    calibration: ZScoreState


class ACC(nn.Module):
    """Fixed conflict/uncertainty monitor (no parameters).

    Args:
        conflict_measure: ``cosine`` (default; scale-free) | ``variance`` | ``mean``.
        eps: guard for zero norms.
    """

    def __init__(self, conflict_measure: str = "cosine", eps: float = EPS):
        super().__init__()
        if conflict_measure not in CONFLICT_MEASURES:
            raise ParameterError(f"conflict_measure: unknown {conflict_measure!r}; choose one of "
                                 f"{list(CONFLICT_MEASURES)}")
        self.conflict_measure, self.eps = conflict_measure, eps

    @staticmethod
    def initial_calibration(dtype=torch.float64, device=None) -> ZScoreState:
        """An empty running z-score of the scalar conflict."""
        return zscore_init((), dtype, device)

    def forward(self, h: torch.Tensor, logits: torch.Tensor | None = None,
                candidate_logits: torch.Tensor | None = None,
                calibration: ZScoreState | None = None,
                update_calibration: bool = True) -> ACCOutput:
        """Signals for ``h`` ``[B, C, D]`` (C >= 2), ``logits`` ``[B, K]``, ``candidate_logits``
        ``[B, n, K]``; ``calibration`` None starts an empty one."""
        if h.dim() != 3:
            raise ShapeError(f"h: expected [B, C, D], got {list(h.shape)}")
        B = h.shape[0]
        conflict = circuit_conflict(h, self.conflict_measure, self.eps)
        signals = {"conflict": conflict}
        if logits is not None:
            if logits.dim() != 2 or logits.shape[0] != B:
                raise ShapeError(f"logits: expected [B={B}, K], got {list(logits.shape)}")
            signals["uncertainty"] = normalized_entropy(logits)
        if candidate_logits is not None:
            if candidate_logits.dim() != 3 or candidate_logits.shape[0] != B:
                raise ShapeError(f"candidate_logits: expected [B={B}, n, K], "
                                 f"got {list(candidate_logits.shape)}")
            signals["divergence"] = js_divergence(torch.softmax(candidate_logits, -1), dim=-2)
        if calibration is None:
            calibration = self.initial_calibration(device=h.device)
        signals["conflict_norm"], calibration = calibrate(calibration, conflict.detach(),
                                                          update_calibration)
        return ACCOutput(signals, calibration)


def acc_features(signals: dict[str, torch.Tensor],
                 logits: torch.Tensor | None = None) -> torch.Tensor:
    """Feature matrix ``[B, 6]`` in the order of ``FEATURE_NAMES``; a missing signal (or missing
    logits for ``top1_prob``/``margin``) is 0. ``margin`` = top-1 minus top-2 probability."""
    if "conflict" not in signals:
        raise ParameterError("signals: needs at least 'conflict'")
    ref = signals["conflict"]
    cols = [signals.get(n, torch.zeros_like(ref)).to(ref.dtype) for n in FEATURE_NAMES[:4]]
    if logits is not None:
        p = torch.softmax(logits.to(ref.dtype), -1)
        top = p.topk(min(2, p.shape[-1]), dim=-1).values
        cols += [top[:, 0], top[:, 0] - (top[:, 1] if top.shape[-1] > 1 else 0.0)]
    else:
        cols += [torch.zeros_like(ref), torch.zeros_like(ref)]
    return torch.stack(cols, -1)


class LearnedACC(nn.Module):
    """MLP ``p(wrong) = sigmoid(W_2 tanh(W_1 z + b_1) + b_2)`` on standardised features
    ``z = (x - mean) / std`` (mean/std: the z-score calibration of the training features).

    Args:
        n_features: input size (6 for :func:`acc_features`); hidden: hidden units.
        quant: BitLinear mode of both layers (``float`` by default: the monitor is tiny).
    """

    def __init__(self, n_features: int = len(FEATURE_NAMES), hidden: int = 16,
                 quant: str = "float"):
        super().__init__()
        for name, n in (("n_features", n_features), ("hidden", hidden)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ParameterError(f"{name}: must be an int >= 1, got {n!r}")
        self.n_features = n_features
        self.l1 = BitLinear(n_features, hidden, bias=True, quant=quant)
        self.l2 = BitLinear(hidden, 1, bias=True, quant=quant)
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.n_features:
            raise ShapeError(f"features: expected [N, {self.n_features}], got {list(x.shape)}")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logit of p(wrong), ``[N]``, for ``features`` ``[N, n_features]``."""
        self._check(features)
        z = (features.to(self.feature_mean.dtype) - self.feature_mean) / self.feature_std
        return self.l2(torch.tanh(self.l1(z))).squeeze(-1)

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """p(wrong) in [0, 1], ``[N]``."""
        return torch.sigmoid(self(features))

    def fit(self, features: torch.Tensor, labels: torch.Tensor, epochs: int = 300,
            lr: float = 1e-2, seed: int = 0) -> list[float]:
        """Fit on records (``labels`` 1 = output was wrong) with full-batch Adam on BCE.

        Re-initialises the weights from ``seed`` (same data and seed -> same model), sets the
        feature calibration from the records, and returns the loss per epoch.
        """
        self._check(features)
        if labels.shape != features.shape[:1]:
            raise ShapeError(f"labels: expected [{features.shape[0]}], got {list(labels.shape)}")
        if not bool(((labels == 0) | (labels == 1)).all()):
            raise ParameterError("labels: must be 0 or 1")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ParameterError(f"epochs: must be an int >= 1, got {epochs!r}")
        if not lr > 0:
            raise ParameterError(f"lr: must be > 0, got {lr}")
        x = features.detach().to(self.feature_mean.dtype)
        y = labels.detach().to(x.dtype)
        cal = zscore_update(zscore_init((self.n_features,), torch.float64), x)
        self.feature_mean.copy_(cal.mean.to(x.dtype))
        self.feature_std.copy_(zscore_std(cal).clamp_min(1e-6).to(x.dtype))
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for layer in (self.l1, self.l2):
                bound = layer.in_features ** -0.5
                u = torch.rand(layer.weight.shape, generator=gen)
                layer.weight.copy_(u * 2 * bound - bound)
                layer.bias.zero_()
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        losses = []
        for _ in range(epochs):
            opt.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(self(x), y)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return losses
