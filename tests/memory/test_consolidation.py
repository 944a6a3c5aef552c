"""Consolidation on a tiny BrainLM: only adapters (or the named sub-network) change, bit for bit
everything else stays; the loss on the replayed episodes falls; the learning rate is bounded
and scaled by prediction integrity, which is checked on hand-made error sequences."""
import math

import numpy as np
import pytest
import torch

from neurobit.errors import ParameterError, ShapeError
from neurobit.memory.consolidation import (ConsolidationConfig, PredictionIntegrity,
                                           consolidate, consolidation_due, episodes_to_batch,
                                           integrity_score)
from neurobit.memory.episodic import Episode
from neurobit.memory.lora import attach_lora

V = 11
CFG = dict(vocab_size=V, n_word_buckets=8, d_model=16, n_layers=1, n_circuits=2, n_units=8,
           d_circuit=4, d_key=4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def model(seed=0):
    from neurobit.models.brain_lm import BrainLM
    from neurobit.models.lm_config import BrainLMConfig
    torch.manual_seed(seed)
    return BrainLM(BrainLMConfig(**CFG))


def new_episodes(n=6, T=13):
    """The 'new domain': a fixed cycle 1 2 3 4 5 from random phases (learnable)."""
    rng = np.random.default_rng(0)
    return [Episode((np.arange(T) + rng.integers(0, 5)) % 5 + 1, np.zeros(4), np.array([0]),
                    loss=1.0) for _ in range(n)]


def old_slice(n=8, T=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(6, V, (n, T + 1), generator=g)
    return x[:, :-1], x[:, 1:]


def snapshot(m):
    return {n: p.detach().clone() for n, p in m.named_parameters()}


def test_only_adapters_change_and_replayed_loss_falls():
    m = model()
    attach_lora(m, 4, generator=torch.Generator().manual_seed(0))
    before = snapshot(m)
    new = episodes_to_batch(new_episodes())
    cfg = ConsolidationConfig(lr=2e-2, max_lr=5e-2, max_steps=30, batch_size=6,
                              replay_ratio=1 / 3)
    res = consolidate(m, new, old_slice(), cfg)
    assert res.steps == 30 and res.lr == pytest.approx(2e-2) and len(res.losses) == 30
    assert res.trainable and all(n.endswith((".lora_A", ".lora_B")) for n in res.trainable)
    changed = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(res.trainable)      # adapters only ...
    for n, p in m.named_parameters():
        if n not in res.trainable:
            assert torch.equal(p, before[n]), n           # ... everything else bit-identical
    assert res.new_loss_after < 0.8 * res.new_loss_before  # the replayed episodes were learned
    assert all(p.requires_grad for p in m.parameters())   # flags restored


def test_named_subnetwork_and_no_old_data():
    m = model()
    before = snapshot(m)
    cfg = ConsolidationConfig(lr=1e-2, max_steps=5, batch_size=4, trainable=("blocks.0.hub.*",))
    res = consolidate(m, episodes_to_batch(new_episodes()), None, cfg)
    assert res.old_loss_before is None and res.steps == 5
    changed = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= {n for n in before if n.startswith("blocks.0.hub.")}
    assert {"blocks.0.hub.w_q.weight", "blocks.0.hub.w_g.weight"} <= changed
    with pytest.raises(ParameterError, match="trainable"):
        consolidate(m, episodes_to_batch(new_episodes()), None, ConsolidationConfig())


def test_integrity_scales_learning_rate():
    """Adam's first step moves each parameter by lr * g / (|g| + eps) ~ lr: half the integrity,
    half the step; zero integrity, no change at all."""
    new = episodes_to_batch(new_episodes())
    deltas = {}
    for integ in (1.0, 0.5, 0.0):
        m = model()
        attach_lora(m, 2, generator=torch.Generator().manual_seed(0))
        b = m.head.lora_B.detach().clone()
        cfg = ConsolidationConfig(lr=1e-2, max_steps=1, batch_size=6, replay_ratio=0.0)
        res = consolidate(m, new, None, cfg, integrity=integ)
        assert res.lr == pytest.approx(1e-2 * integ)
        deltas[integ] = (m.head.lora_B.detach() - b)
    assert torch.equal(deltas[0.0], torch.zeros_like(deltas[0.0]))
    big = deltas[1.0].abs() > 5e-3
    assert big.sum() > 10
    ratio = deltas[0.5][big] / deltas[1.0][big]
    assert ((ratio - 0.5).abs() < 1e-3).all()


def test_config_bounds():
    with pytest.raises(ParameterError, match="lr"):
        ConsolidationConfig(lr=0.1, max_lr=0.01)
    with pytest.raises(ParameterError, match="replay_ratio"):
        ConsolidationConfig(replay_ratio=1.0)
    with pytest.raises(ParameterError, match="max_steps"):
        ConsolidationConfig(max_steps=-1)
    with pytest.raises(ParameterError, match="unknown"):
        ConsolidationConfig.from_dict({"lr": 1e-3, "lrr": 2})
    c = ConsolidationConfig(lr=2e-3, trainable=("a*",))
    assert ConsolidationConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ParameterError, match="integrity"):
        consolidate(model(), episodes_to_batch(new_episodes()), None, c, integrity=1.5)
    cfg = ConsolidationConfig(min_interval_s=60, min_new_episodes=10)
    assert consolidation_due(cfg, None, 0.0, 10)
    assert not consolidation_due(cfg, None, 0.0, 9)
    assert not consolidation_due(cfg, 100.0, 159.0, 50)
    assert consolidation_due(cfg, 100.0, 160.0, 50)


def test_episodes_to_batch():
    eps = [Episode(np.array([1, 2, 3, 4]), np.zeros(1), np.array([0]), loss=0.0),
           Episode(np.array([5, 6]), np.zeros(1), np.array([0]), loss=0.0,
                   label=np.array([7, 8]))]
    x, y = episodes_to_batch(eps, pad_id=9)
    assert x.tolist() == [[1, 2, 3], [5, 6, 9]]
    assert y.tolist() == [[2, 3, 4], [7, 8, -100]]
    with pytest.raises(ShapeError, match="label"):
        episodes_to_batch([Episode(np.array([1, 2]), np.zeros(1), np.array([0]), loss=0.0,
                                   label=np.array([1]))])


def test_integrity_on_hand_made_sequences():
    flat = [2.0] * 20
    assert integrity_score(flat) == 1.0
    base = [1.0, 3.0] * 8                       # mean 2, std 1
    assert integrity_score(base + [4.0] * 8) == pytest.approx(math.exp(-2.0), rel=1e-4)
    assert integrity_score(base + [2.5] * 8) == pytest.approx(math.exp(-0.5), rel=1e-4)
    assert integrity_score(base + [0.5] * 8) == 1.0   # better than usual: full plasticity
    assert integrity_score([1.0, 9.0] * 3 + [50.0] * 8) == 1.0  # too little baseline
    assert integrity_score(base + [12.0] * 8) < 1e-4  # a 10-sigma burst: almost frozen
    with pytest.raises(ParameterError, match="errors"):
        integrity_score([1.0, float("nan")])
    # running form: a burst lowers it, a lasting shift becomes the baseline and it recovers
    pi = PredictionIntegrity(window=24, recent=4, errors=base)
    assert pi.score() == 1.0
    scores = [pi.update(5.0) for _ in range(40)]
    assert scores[3] == pytest.approx(math.exp(-3.0), rel=1e-4)
    assert min(scores) < 0.06 and scores[-1] == 1.0
    assert PredictionIntegrity(window=24, recent=4, errors=pi.state()).score() == pi.score()
    with pytest.raises(ParameterError, match="window"):
        PredictionIntegrity(window=4, recent=4)
