"""Learning demonstrations of the CorticalHub: key-item selection and associative recall.

Network (:class:`HubTaskNet`): C spiking ternary circuits -> CorticalHub -> ternary readout.

1. Encoding, per hub step t, independently (the circuits keep no state across hub steps, so the
   hub's fast-weight memory ``M`` is the only path that carries information between them)::

       x_t [B, C, n_in]  held as a constant input current for n_sub LIF steps
       u_s = W_in[c] x_t;  v_s = alpha v_{s-1} + u_s - theta s_{s-1};  s_s = H(v_s - theta)
       h_t[b, c] = (1 / n_sub) sum_s s_s[b, c]         spike rates in [0, 1], [B, C, n_units]

   (a :class:`MicroCircuitBank` with no recurrence: one banked ternary ``W_in`` per circuit,
   LIF units from ``functional.lif``, surrogate gradients).
2. ``CorticalHub.forward(h [T, B, C, n_units])`` with memory cleared at the start (grouped
   attention, fast weights, inhibition, global state ``g``; equations in ``cortical_hub``).
3. ``logits = W_r g_T + b_r`` (ternary :class:`BitLinear` with a float bias), ``[B, K]``.

Every synapse (``W_in``, the five hub projections, ``W_r``) is ternary (absmean BitNet b1.58
codes with straight-through gradients).

Tasks (all samples drawn from an explicit ``torch.Generator``):

- :func:`key_selection_batch` (stage 2 of the design): C circuits each receive a one-hot item
  from a vocabulary of V; one circuit also receives a cue flag. Target: the cued circuit's item.
  One hub step. Solved by attention: every query attends to the key of the cued circuit and the
  values carry the items.
- :func:`recall_batch` (associative recall): ``n_pairs`` hub steps each present one
  (key, value) pair to circuit 0 (both one-hots in its input); circuits 1..C-1 are silent. Then
  one query step: circuit 0 receives the query key (key one-hot plus a query flag) and circuits
  1..n_values each hold one candidate value, the n_values values in a fresh random order.
  Target: the value that was paired with the query key.

  Why the hub's read path solves it: each study step s = 0..P-1 writes circuit 0's
  ``k_s (x) v_s`` (silent circuits have zero rates, so zero keys and values, and write nothing),
  so at the query step P, before the clip, ``M = eta sum_s lam^(P-1-s) k_s v_s^T`` and the score
  of query circuit 0 for candidate circuit j is (times the score scale)::

      q_0 . k_j + q_0 . (M k_j) = q_0 . k_j + eta sum_s lam^(P-1-s) (q_0 . k_s)(v_s . k_j)

  It is raised exactly for the candidate whose value (seen through ``W_k``) matches the value
  ``v_s`` stored with the key ``k_s`` that matches the query. The query's attention then picks
  that circuit, ``h'_0 = sum_j a_0j v_j`` carries its value, and ``g`` reads it out. Without fast
  weights the query step contains nothing about the pairing (keys and values are paired at
  random and the candidates are shuffled), so any model is at chance, ``1 / n_values``.

Plus the tools of the studies: :func:`train` (Adam on cross-entropy), :func:`accuracy`,
:func:`auroc` (rank-based Mann-Whitney) and :func:`acc_records` (ACC features of a trained net).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import nn

from neurobit.errors import ParameterError, ShapeError
from neurobit.functional.monitoring import normalized_entropy
from neurobit.modules.acc import ACC, LearnedACC, acc_features
from neurobit.modules.bitlinear import BitLinear
from neurobit.modules.cortical_hub import CorticalHub, HubOutput
from neurobit.modules.microcircuit_bank import MicroCircuitBank


class HubTaskOutput(NamedTuple):
    """``logits`` ``[B, K]`` (from the last hub step); ``h`` ``[T, B, C, n_units]`` circuit spike
    rates; ``hub`` the hub's outputs over the T steps."""

    logits: torch.Tensor
    h: torch.Tensor
    hub: HubOutput


class HubTaskNet(nn.Module):
    """Spiking circuits -> CorticalHub -> readout (see the module docstring).

    Args:
        n_circuits: C; n_in: input lines per circuit; n_classes: K.
        n_units: LIF units per circuit (the hub's ``d_in``); n_sub: LIF steps per hub step.
        d_key, d_global: hub sizes; groups, inhibition, k, lam, eta, clip, use_fast_weights,
            scale_scores: passed to :class:`CorticalHub`.
        alpha, theta, slope: LIF decay per step (``exp(-dt_ms / tau_mem_ms)``; 0.9 is
            tau_mem = 9.5 ms at dt = 1 ms), threshold, surrogate slope.
        in_std: std of the normal initial master weights of ``W_in`` (large enough to fire).
        seed: initialises every weight from this seed.
    """

    def __init__(self, n_circuits: int, n_in: int, n_classes: int, *, n_units: int = 32,
                 n_sub: int = 4, d_key: int = 16, d_global: int = 32, groups=1,
                 inhibition: str = "none", k: int = 1, lam: float = 0.95, eta: float = 0.5,
                 clip: float = 1.0, use_fast_weights: bool = True, scale_scores: bool = True,
                 alpha: float = 0.9, theta: float = 1.0, slope: float = 5.0,
                 in_std: float = 1.5, seed: int = 0):
        super().__init__()
        if isinstance(n_sub, bool) or not isinstance(n_sub, int) or n_sub < 1:
            raise ParameterError(f"n_sub: must be an int >= 1, got {n_sub!r}")
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise ParameterError(f"n_classes: must be an int >= 2, got {n_classes!r}")
        self.n_circuits, self.n_in, self.n_sub = n_circuits, n_in, n_sub
        self.bank = MicroCircuitBank(n_circuits, n_in, n_units, None, recurrent=False,
                                     alpha=alpha, theta=theta, slope=slope)
        self.hub = CorticalHub(n_circuits, n_units, d_key, d_global, 1, groups=groups,
                               inhibition=inhibition, k=k, lam=lam, eta=eta, clip=clip,
                               use_fast_weights=use_fast_weights, scale_scores=scale_scores)
        self.readout = BitLinear(d_global, n_classes, bias=True)
        self.reset_parameters(seed, in_std)

    @torch.no_grad()
    def reset_parameters(self, seed: int, in_std: float = 1.5) -> None:
        """Draw every weight from a generator seeded with ``seed`` (the global RNG is not
        touched): ``W_in ~ N(0, in_std^2)``, every other BitLinear ``U(-1/sqrt(in), 1/sqrt(in))``
        (Kaiming-uniform as ``nn.Linear``), biases 0, feedback gains unchanged."""
        gen = torch.Generator().manual_seed(int(seed))
        self.bank.w_in.weight.normal_(0.0, in_std, generator=gen)
        for layer in (self.hub.w_q, self.hub.w_k, self.hub.w_v, self.hub.w_g, self.hub.w_f,
                      self.readout):
            bound = layer.in_features ** -0.5
            layer.weight.uniform_(-bound, bound, generator=gen)
            if layer.bias is not None:
                layer.bias.zero_()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Spike rates ``[T, B, C, n_units]`` of ``x`` ``[T, B, C, n_in]``, each hub step
        encoded from a fresh (resting) circuit state over ``n_sub`` LIF steps."""
        if x.dim() != 4 or tuple(x.shape[2:]) != (self.n_circuits, self.n_in):
            raise ShapeError(f"x: expected [T, B, {self.n_circuits}, {self.n_in}], "
                             f"got {list(x.shape)}")
        T, B = x.shape[:2]
        flat = x.reshape(1, T * B, self.n_circuits, self.n_in)
        spikes = self.bank(flat.expand(self.n_sub, *flat.shape[1:])).spikes
        return spikes.mean(0).reshape(T, B, self.n_circuits, -1)

    def forward(self, x: torch.Tensor) -> HubTaskOutput:
        """Logits ``[B, K]`` for a sequence of hub-step inputs ``x`` ``[T, B, C, n_in]``."""
        h = self.encode(x)
        out = self.hub(h)
        return HubTaskOutput(self.readout(out.g[-1]), h, out)


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ParameterError(f"n: must be an int >= 1, got {n!r}")


def key_selection_batch(n: int, gen: torch.Generator, n_circuits: int = 8, n_items: int = 8,
                        noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` key-selection samples: ``x`` ``[1, n, C, n_items + 1]`` (item one-hot, then the cue
    flag), targets ``[n]`` (the cued circuit's item). ``noise`` > 0 adds Gaussian noise of that
    std to every input line (to make the task harder at evaluation)."""
    _check_n(n)
    if n_circuits < 2 or n_items < 2:
        raise ParameterError(f"n_circuits, n_items: need >= 2, got {n_circuits}, {n_items}")
    if not noise >= 0:
        raise ParameterError(f"noise: must be >= 0, got {noise}")
    items = torch.randint(0, n_items, (n, n_circuits), generator=gen)
    cue = torch.randint(0, n_circuits, (n,), generator=gen)
    x = F.one_hot(items, n_items + 1).float()                       # [n, C, V + 1]
    b = torch.arange(n)
    x[b, cue, n_items] = 1.0
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=gen)
    return x.unsqueeze(0), items[b, cue]


def _permutations(n: int, m: int, gen: torch.Generator) -> torch.Tensor:
    """``[n, m]``: one uniform random permutation of ``range(m)`` per row."""
    return torch.rand(n, m, generator=gen).argsort(1)


def recall_batch(n: int, gen: torch.Generator, n_keys: int = 8, n_values: int = 7,
                 n_pairs: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` associative-recall samples (see the module docstring).

    Returns ``x`` ``[n_pairs + 1, n, 1 + n_values, n_keys + n_values + 1]`` (input lines: key
    one-hot, value one-hot, query flag) and targets ``[n]`` in ``range(n_values)``. Keys within
    a sample are distinct, and so are values.
    """
    _check_n(n)
    if not (1 <= n_pairs <= min(n_keys, n_values)):
        raise ParameterError(f"n_pairs: must lie in [1, min(n_keys, n_values)], got {n_pairs}")
    P, C, n_in = n_pairs, 1 + n_values, n_keys + n_values + 1
    keys = _permutations(n, n_keys, gen)[:, :P]
    vals = _permutations(n, n_values, gen)[:, :P]
    which = torch.randint(0, P, (n,), generator=gen)
    cand = _permutations(n, n_values, gen)              # circuit 1 + j holds cand[:, j]
    b = torch.arange(n)
    x = torch.zeros(P + 1, n, C, n_in)
    for t in range(P):
        x[t, b, 0, keys[:, t]] = 1.0
        x[t, b, 0, n_keys + vals[:, t]] = 1.0
    x[P, b, 0, keys[b, which]] = 1.0
    x[P, b, 0, n_in - 1] = 1.0
    j = torch.arange(n_values)
    x[P, b[:, None], 1 + j[None, :], n_keys + cand] = 1.0
    return x, vals[b, which]


def train(model: nn.Module, sample: Callable[[], tuple[torch.Tensor, torch.Tensor]],
          steps: int, lr: float = 1e-2, final_lr: float | None = None) -> list[float]:
    """``steps`` Adam steps on cross-entropy, each on a fresh batch from ``sample()``; the
    learning rate decays from ``lr`` to ``final_lr`` on a cosine (constant when None). Returns
    the losses."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ParameterError(f"steps: must be an int >= 1, got {steps!r}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=final_lr)
             if final_lr is not None else None)
    losses = []
    for _ in range(steps):
        x, y = sample()
        loss = F.cross_entropy(model(x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of samples whose arg-max logit is the target."""
    return float((model(x).logits.argmax(-1) == y).float().mean())


def auroc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = positive), by the
    Mann-Whitney rank sum (ties get average ranks, so a tie counts one half)::

        AUROC = (sum of positive ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg)
    """
    s = np.asarray(torch.as_tensor(scores).detach().double().cpu()).reshape(-1)
    y = np.asarray(torch.as_tensor(labels).detach().cpu()).reshape(-1)
    if s.shape != y.shape:
        raise ShapeError(f"labels: expected {s.shape[0]} labels, got {y.shape[0]}")
    if not np.isin(y, (0, 1)).all():
        raise ParameterError("labels: must be 0 or 1")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ParameterError("labels: need at least one positive and one negative")
    r = rankdata(s)
    return float((r[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class ACCRecords(NamedTuple):
    """Per sample: ``features`` ``[N, 6]`` (``acc_features``), ``wrong`` ``[N]`` (1 = the net's
    answer was wrong), ``entropy`` ``[N]`` (normalised output entropy), ``accuracy``."""

    features: torch.Tensor
    wrong: torch.Tensor
    entropy: torch.Tensor
    accuracy: float


@torch.no_grad()
def acc_records(model: HubTaskNet, x: torch.Tensor, y: torch.Tensor,
                calibration=None) -> tuple[ACCRecords, object]:
    """ACC records of ``model`` on ``(x, y)``; conflict is measured among the hub outputs
    ``h'`` of the last step. ``calibration`` (a ``ZScoreState``) scores ``conflict_norm``
    against earlier records; None first calibrates on these records themselves. Returns the
    records and the calibration used (pass it on to score a held-out split the same way)."""
    out = model(x)
    h = out.hub.h_prime[-1]
    acc = ACC()
    if calibration is None:
        calibration = acc(h, out.logits).calibration
    sig = acc(h, out.logits, calibration=calibration, update_calibration=False).signals
    wrong = (out.logits.argmax(-1) != y).long()
    rec = ACCRecords(acc_features(sig, out.logits).float(), wrong,
                     normalized_entropy(out.logits), float(1 - wrong.float().mean()))
    return rec, calibration


# ---- the demonstrations, shared by tests/modules/test_hub_tasks.py and analysis/hub/hub_tasks.py

KEY_SELECTION = dict(n_circuits=8, n_items=8, n_units=32, n_sub=4, d_key=16, d_global=32,
                     steps=300, batch=128, lr=1e-2, final_lr=1e-3)
"""Key-item selection setting: 8 circuits, 8 items, one hub step (chance 1/8)."""

RECALL = dict(n_keys=8, n_values=7, n_pairs=4, n_units=64, n_sub=4, d_key=64, d_global=32,
              lam=0.95, eta=0.5, clip=1.0, steps=600, batch=128, lr=1e-2, final_lr=1e-3)
"""Associative-recall setting: 4 pairs from 8 keys x 7 values, 8 circuits (chance 1/7)."""


def key_selection_net(seed: int = 0, cfg: dict = KEY_SELECTION) -> HubTaskNet:
    """An untrained :class:`HubTaskNet` for the key-selection task."""
    return HubTaskNet(cfg["n_circuits"], cfg["n_items"] + 1, cfg["n_items"],
                      n_units=cfg["n_units"], n_sub=cfg["n_sub"], d_key=cfg["d_key"],
                      d_global=cfg["d_global"], seed=seed)


def train_key_selection(seed: int = 0, cfg: dict = KEY_SELECTION,
                        n_test: int = 2000) -> tuple[HubTaskNet, float]:
    """Train on fresh batches drawn from ``seed``; return the net and its accuracy on
    ``n_test`` held-out samples (drawn from an independent generator)."""
    net = key_selection_net(seed, cfg)
    gen = torch.Generator().manual_seed(seed)

    def draw(n, g):
        return key_selection_batch(n, g, cfg["n_circuits"], cfg["n_items"])

    train(net, lambda: draw(cfg["batch"], gen), cfg["steps"], cfg["lr"], cfg["final_lr"])
    x, y = draw(n_test, torch.Generator().manual_seed(10_000 + seed))
    return net, accuracy(net, x, y)


def recall_net(seed: int = 0, use_fast_weights: bool = True, cfg: dict = RECALL) -> HubTaskNet:
    """An untrained :class:`HubTaskNet` for the recall task."""
    return HubTaskNet(1 + cfg["n_values"], cfg["n_keys"] + cfg["n_values"] + 1, cfg["n_values"],
                      n_units=cfg["n_units"], n_sub=cfg["n_sub"], d_key=cfg["d_key"],
                      d_global=cfg["d_global"], lam=cfg["lam"], eta=cfg["eta"],
                      clip=cfg["clip"], use_fast_weights=use_fast_weights, seed=seed)


def train_recall(seed: int = 0, use_fast_weights: bool = True, cfg: dict = RECALL,
                 n_test: int = 2000) -> tuple[HubTaskNet, float]:
    """Train (same batches and initial weights for either ``use_fast_weights``); return the net
    and its held-out accuracy."""
    net = recall_net(seed, use_fast_weights, cfg)
    gen = torch.Generator().manual_seed(seed)

    def draw(n, g):
        return recall_batch(n, g, cfg["n_keys"], cfg["n_values"], cfg["n_pairs"])

    train(net, lambda: draw(cfg["batch"], gen), cfg["steps"], cfg["lr"], cfg["final_lr"])
    x, y = draw(n_test, torch.Generator().manual_seed(10_000 + seed))
    return net, accuracy(net, x, y)


class ACCResult(NamedTuple):
    """``noise``: input noise std used; ``accuracy``: the net's accuracy on the held-out split
    at that noise; ``auroc_learned`` / ``auroc_entropy``: AUROC of predicting a wrong output on
    the held-out split by :class:`LearnedACC` and by the normalised entropy alone; ``n_wrong``:
    wrong outputs in the held-out split (of ``n``)."""

    noise: float
    accuracy: float
    auroc_learned: float
    auroc_entropy: float
    n_wrong: int
    n: int


def acc_study(net: HubTaskNet, seed: int = 0, cfg: dict = KEY_SELECTION, n: int = 4000,
              target_accuracy: float = 0.8,
              noises: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)) -> ACCResult:
    """Learned ACC against the entropy rule on a trained key-selection net made to err.

    The difficulty is input noise: the std in ``noises`` whose accuracy on a calibration batch
    is closest to ``target_accuracy`` is used for a training split and a held-out split of ``n``
    samples each (three independent generators). :class:`LearnedACC` is fitted on the training
    split's :func:`acc_records` (conflict calibration from the training split too) and both
    scores are evaluated on the held-out split.
    """
    def draw(n_, g, s):
        return key_selection_batch(n_, g, cfg["n_circuits"], cfg["n_items"], s)

    g_cal = torch.Generator().manual_seed(20_000 + seed)
    accs = []
    for s in noises:
        accs.append(accuracy(net, *draw(n, g_cal, s)))
    noise = noises[min(range(len(noises)), key=lambda i: abs(accs[i] - target_accuracy))]
    tr, cal = acc_records(net, *draw(n, torch.Generator().manual_seed(30_000 + seed), noise))
    te, _ = acc_records(net, *draw(n, torch.Generator().manual_seed(40_000 + seed), noise), cal)
    monitor = LearnedACC()
    monitor.fit(tr.features, tr.wrong, epochs=300, lr=1e-2, seed=seed)
    return ACCResult(noise, te.accuracy, auroc(monitor.predict(te.features), te.wrong),
                     auroc(te.entropy, te.wrong), int(te.wrong.sum()), n)
