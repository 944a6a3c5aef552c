"""The cortical_hub block inside the engine: signals recorded, bounds held, feedback wired, and
the block computes exactly what the CorticalHub module computes on the recorded spikes."""
import math

import numpy as np
import pytest
import torch

from neurobit.config.loader import load_circuit
from neurobit.errors import ConfigError
from neurobit.modules.cortical_hub import CorticalHub
from neurobit.record import read_run
from neurobit.sim.run import simulate

SIM = "sims/cortical_hub.yaml"


def run(tmp_path, *overrides, name="hub.h5"):
    cfg = load_circuit(SIM, ["duration_ms=200", *overrides])
    out = tmp_path / name
    simulate(cfg, out)
    return cfg, read_run(out)


def test_signals_recorded_with_bounds(tmp_path):
    cfg, r = run(tmp_path)
    b = cfg.blocks["hub"]
    with r:
        T, trials, C = 200, cfg.trials, cfg.populations["bank"].circuits
        attn = r.signal("hub.attn")
        assert attn.shape == (T, trials, C, C // 2)
        np.testing.assert_allclose(attn.sum(-1), 1.0, atol=1e-5)  # softmax within each group
        mnorm = r.signal("hub.memory_norm")
        assert mnorm.shape == (T, trials)
        assert (mnorm <= b.fast_weights.clip * b.d_key + 1e-5).all()  # |M_ij| <= c
        assert mnorm[-1].min() > 0
        refl = r.signal("hub.reflections")
        assert refl.min() >= 0 and refl.max() <= b.meta.max_reflection_steps
        for k in ("conflict", "uncertainty", "conflict_norm"):
            x = r.signal(f"hub.{k}")
            assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1, k
        temp = r.signal("hub.temperature")
        assert (temp >= 0.3 - 1e-6).all() and (temp <= 1.5 + 1e-6).all()


def test_fast_weights_off_keeps_memory_zero(tmp_path):
    _, r = run(tmp_path, "blocks.hub.fast_weights.enabled=false")
    with r:
        assert np.all(r.signal("hub.memory_norm") == 0)


def test_feedback_changes_the_circuits(tmp_path):
    _, a = run(tmp_path, "blocks.hub.feedback_gain=0.0", name="a.h5")
    _, b = run(tmp_path, "blocks.hub.feedback_gain=0.5", name="b.h5")
    _, c = run(tmp_path, "blocks.hub.feedback_gain=0.5", name="c.h5")
    with a, b, c:
        sa, sb, sc = (x.spikes("bank") for x in (a, b, c))
    assert not (len(sa[0]) == len(sb[0]) and np.array_equal(sa[0], sb[0]))
    np.testing.assert_array_equal(sb[0], sc[0])  # deterministic for a seed
    np.testing.assert_array_equal(sb[1], sc[1])


def test_block_equals_the_module_on_recorded_spikes(tmp_path):
    cfg, r = run(tmp_path, "blocks.hub.meta.enabled=false")
    b = cfg.blocks["hub"]
    pop = cfg.populations["bank"]
    with r:
        t, ids = r.spikes("bank", trial=0)
        attn, mnorm = r.signal("hub.attn")[:, 0], r.signal("hub.memory_norm")[:, 0]
    steps = np.round(t / cfg.dt_ms).astype(int)
    s = np.zeros((200, pop.circuits, pop.size), np.float32)
    s[steps, ids // pop.size, ids % pop.size] = 1
    torch.manual_seed(cfg.seed)
    hub = CorticalHub(pop.circuits, pop.size, b.d_key, b.d_global, pop.size, groups=b.groups,
                      inhibition=b.inhibition, k=b.k, lam=b.fast_weights.lam,
                      eta=b.fast_weights.eta, clip=b.fast_weights.clip,
                      feedback_gain=b.feedback_gain)
    decay = math.exp(-cfg.dt_ms / b.trace_tau_ms)
    h = torch.zeros(1, pop.circuits, pop.size)
    state = hub.initial_state(1)
    with torch.no_grad():
        for i in range(200):
            h = decay * h + torch.from_numpy(s[i])[None]
            out = hub.forward_step(h, state)
            state = out.state
            np.testing.assert_allclose(out.attn[0].numpy(), attn[i], rtol=1e-5, atol=1e-6)
            assert abs(float(state.M.norm()) - mnorm[i]) < 1e-4 * max(1.0, mnorm[i])


@pytest.mark.parametrize("override, path", [
    ("blocks.hub.population=nowhere", "blocks.hub.population"),
    ("blocks.hub.k=5", "blocks.hub.k"),
    ("blocks.hub.groups=3", "blocks.hub.groups"),
    ("blocks.hub.meta.max_reflection_steps=4", "blocks.hub.meta.max_reflection_steps"),
    ("blocks.hub.fast_weights.lam=1.5", "blocks.hub.fast_weights.lam"),
])
def test_bad_hub_blocks_name_the_key(override, path):
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        load_circuit(SIM, [override])


def test_hub_needs_a_bank(tmp_path):
    with pytest.raises(ConfigError, match="blocks.hub.population.*circuits"):
        load_circuit(SIM, ["populations.bank.circuits=1"])
