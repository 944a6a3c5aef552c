"""Lifecycle: one identity per instance, one fsynced JSONL event per update (data hash, lr,
metrics, checkpoint), and replay of the log from the initial checkpoint gives bit-identical
tensors; a torn last line, tampered data and non-deterministic updates are caught."""
import json

import numpy as np
import pytest
import torch

from neurobit.errors import NeurobitError, ParameterError
from neurobit.memory.consolidation import (ConsolidationConfig, consolidation_data,
                                           episodes_to_batch)
from neurobit.memory.episodic import Episode
from neurobit.memory.lifecycle import (UPDATES, Lifecycle, LifecycleLog, history_lines,
                                       read_log, register_update, replay, tensors_sha256)
from neurobit.memory.lora import adapters

CFG = dict(vocab_size=11, n_word_buckets=8, d_model=16, n_layers=1, n_circuits=2, n_units=8,
           d_circuit=4, d_key=4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(seed=0):
    from neurobit.models.brain_lm import BrainLM
    from neurobit.models.lm_config import BrainLMConfig
    torch.manual_seed(seed)
    return BrainLM(BrainLMConfig(**CFG))


def session_data(seed):
    rng = np.random.default_rng(seed)
    eps = [Episode((np.arange(10) + rng.integers(0, 4)) % 4 + 1 + seed % 3, np.zeros(2),
                   np.array([0]), loss=1.0) for _ in range(4)]
    g = torch.Generator().manual_seed(seed)
    old = torch.randint(6, 11, (4, 10), generator=g)
    return consolidation_data(episodes_to_batch(eps), (old[:, :-1], old[:, 1:]))


def live(tmp_path):
    """A short life: create, attach adapters, two consolidations, merge, one more adapter
    session. Returns the lifecycle and the live model."""
    m = make()
    lc = Lifecycle.create(tmp_path / "life", m, note="test", params={"config": CFG})
    lc.update("attach_lora", m, {}, {"rank": 2, "alpha": 4.0, "include": ["*"], "seed": 3})
    cfg = ConsolidationConfig(lr=1e-2, max_steps=4, batch_size=4, replay_ratio=0.25, seed=1)
    lc.update("consolidate", m, session_data(1), {"config": cfg.to_dict(), "integrity": 1.0})
    lc.update("consolidate", m, session_data(2), {"config": cfg.to_dict(), "integrity": 0.6})
    lc.update("merge_lora", m, {}, {})
    lc.update("attach_lora", m, {}, {"rank": 2, "seed": 4, "include": ["head"]})
    lc.update("consolidate", m, session_data(3), {"config": cfg.to_dict(), "integrity": 0.9})
    return lc, m


def test_log_events_and_replay_is_bit_identical(tmp_path):
    lc, m = live(tmp_path)
    ev = read_log(tmp_path / "life" / "lifecycle.jsonl")
    assert [e["kind"] for e in ev] == ["create", "attach_lora", "consolidate", "consolidate",
                                       "merge_lora", "attach_lora", "consolidate"]
    assert [e["step"] for e in ev] == list(range(7)) and [e["seq"] for e in ev] == list(range(7))
    ident = json.loads((tmp_path / "life" / "identity.json").read_text())
    assert len({e["model_id"] for e in ev} | {ident["model_id"]}) == 1
    assert len(ident["model_id"]) == 36  # a uuid
    c1 = ev[2]
    assert c1["data_sha256"] == tensors_sha256(session_data(1))
    assert c1["lr"] == pytest.approx(1e-2) and ev[3]["lr"] == pytest.approx(6e-3)
    assert c1["metrics"]["steps"] == 4 and c1["metrics"]["new_loss_after"] > 0
    assert ev[4]["metrics"]["merged"] == 9 and ev[4]["metrics"]["flipped"] > 0
    assert set(ev[6]["written"]) <= {"head.lora_A", "head.lora_B", "head.lora_alpha"}
    assert ev[6]["written"]  # the adapter changed, and only it was written
    assert ev[2]["data_sha256"] != ev[3]["data_sha256"]
    # replay from the initial checkpoint into a differently initialised model
    fresh = make(seed=99)
    replay(tmp_path / "life", fresh)
    assert list(adapters(fresh)) == ["head"]
    final = lc.checkpoints.load()
    got = fresh.state_dict()
    assert set(got) == set(final) == set(m.state_dict())
    for k, v in final.items():
        assert torch.equal(got[k], v), k
        assert torch.equal(m.state_dict()[k], v), k
    # replay up to a step reproduces that step's checkpoint
    mid = replay(tmp_path / "life", make(seed=5), upto=3)
    for k, v in lc.checkpoints.load(ev[3]["checkpoint"]).items():
        assert torch.equal(mid.state_dict()[k], v), k
    # load_latest attaches the adapters and loads the head
    again = lc.load_latest(make(seed=6))
    assert all(torch.equal(again.state_dict()[k], v) for k, v in final.items())
    lines = history_lines(tmp_path / "life")
    assert len(lines) == 8 and lc.model_id in lines[0] and "consolidate" in lines[3]


def test_torn_line_tampered_data_and_nondeterminism(tmp_path):
    m = make()
    lc = Lifecycle.create(tmp_path / "life", m)
    with pytest.raises(ParameterError, match="already holds"):
        Lifecycle.create(tmp_path / "life", m)
    lc.update("attach_lora", m, {}, {"rank": 1, "seed": 0, "include": ["head"]})
    cfg = ConsolidationConfig(lr=1e-2, max_steps=2, batch_size=2, seed=0)
    lc.update("consolidate", m, session_data(1), {"config": cfg.to_dict(), "integrity": 1.0})
    log = tmp_path / "life" / "lifecycle.jsonl"
    with open(log, "a") as f:  # a writer killed in the middle of a line
        f.write('{"seq": 3, "kind": "consol')
    assert len(read_log(log)) == 3
    lc2 = Lifecycle(tmp_path / "life")  # reopening cuts the torn line; appends stay valid
    assert log.read_bytes().endswith(b"\n") and len(lc2.events()) == 3
    with pytest.raises(NeurobitError, match="model"):
        LifecycleLog(log, "another-model-id")
    with pytest.raises(ParameterError, match="kind"):
        lc2.update("dream", m, {}, {})

    @register_update("noisy")
    def noisy(model, data, params):  # unseeded randomness: not replayable
        with torch.no_grad():
            model.head.lora_B.add_(torch.rand(model.head.lora_B.shape) * 1e-3)
        return {"norm": float(model.head.lora_B.detach().norm())}

    try:
        lc2.update("noisy", m, {}, {})
        fresh = make()
        torch.manual_seed(1)  # the hidden global RNG is in another state than in the live run
        with pytest.raises(NeurobitError, match="metrics"):
            replay(tmp_path / "life", fresh)
    finally:
        UPDATES.pop("noisy")
    # tampered data is refused by its hash
    sha = read_log(log)[2]["data_sha256"]
    p = tmp_path / "life" / "data" / f"{sha}.safetensors"
    from safetensors.torch import load_file, save_file
    d = load_file(str(p))
    d["new_x"][0, 0] += 1
    save_file(d, str(p))
    with pytest.raises(NeurobitError, match="hash"):
        replay(tmp_path / "life", make())
