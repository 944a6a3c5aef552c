"""Incremental checkpoints: a second save after changing one tensor writes only that tensor (by
name, file count and bytes); every manifest reloads to identical tensors; corruption and
leftovers of a crashed write are detected / collected."""
import json

import pytest
import torch

from neurobit.errors import NeurobitError, ParameterError
from neurobit.memory.incremental import IncrementalStore, tensor_sha256
from neurobit.memory.lora import attach_lora
from neurobit.models.brain_lm import BrainLM
from neurobit.models.lm_config import BrainLMConfig

CFG = dict(vocab_size=19, n_word_buckets=8, d_model=16, n_layers=2, n_circuits=2, n_units=8,
           d_circuit=4, d_key=4)


def make(seed=0):
    torch.manual_seed(seed)
    return BrainLM(BrainLMConfig(**CFG))


def test_second_save_writes_only_the_changed_tensor(tmp_path):
    m = make()
    store = IncrementalStore(tmp_path / "ck")
    sd = m.state_dict()
    first = store.save(sd, meta={"step": 0})
    distinct = len({tensor_sha256(t) for t in sd.values()})
    objs = sorted((tmp_path / "ck" / "objects").iterdir())
    assert len(objs) == distinct and set(first.written) <= set(sd)
    assert len(first.written) == distinct  # equal tensors (e.g. two zero biases) stored once
    with torch.no_grad():
        m.blocks[1].hub.w_q.weight.add_(0.01)
    second = store.save(m.state_dict(), meta={"step": 1})
    assert second.written == ["blocks.1.hub.w_q.weight"]
    new = sorted(set((tmp_path / "ck" / "objects").iterdir()) - set(objs))
    assert len(new) == 1
    manifest_size = (tmp_path / "ck" / "manifests" / f"{second.manifest}.json").stat().st_size
    assert second.bytes_written == new[0].stat().st_size + manifest_size
    assert new[0].stat().st_size < 0.2 * sum(p.stat().st_size for p in objs)
    # nothing changed: only a manifest
    third = store.save(m.state_dict())
    assert third.written == [] and store.manifests() == ["00000000", "00000001", "00000002"]
    assert store.head() == "00000002"
    assert store.manifest()["parent"] == "00000001"
    # reload: identical tensors, for the head and for an older manifest
    m2 = make(seed=7)
    m2.load_state_dict(store.load())
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b), k
    old = store.load(first.manifest)
    assert all(torch.equal(old[k], sd_k) for k, sd_k in make().state_dict().items())
    assert not torch.equal(old["blocks.1.hub.w_q.weight"],
                           m.state_dict()["blocks.1.hub.w_q.weight"])


def test_adapted_model_round_trip_and_dtypes(tmp_path):
    m = make().double()
    attach_lora(m, 2, generator=torch.Generator().manual_seed(0))
    store = IncrementalStore(tmp_path / "ck")
    store.save({**m.state_dict(), "counter": torch.tensor([3], dtype=torch.int64),
                "empty": torch.zeros(0, 4)})
    back = store.load()
    assert back["counter"].dtype == torch.int64 and back["empty"].shape == (0, 4)
    for k, v in m.state_dict().items():
        assert back[k].dtype == torch.float64 and torch.equal(back[k], v)


def test_corruption_missing_and_gc(tmp_path):
    m = make()
    store = IncrementalStore(tmp_path / "ck")
    with pytest.raises(NeurobitError, match="no checkpoint"):
        store.load()
    with pytest.raises(ParameterError, match="state"):
        store.save({})
    store.save(m.state_dict())
    with torch.no_grad():
        m.head.weight.mul_(2)
    store.save(m.state_dict())
    # a crashed write leaves a hidden temporary; gc removes it and unreferenced objects
    (tmp_path / "ck" / "objects" / ".dead.safetensors.tmp-abc").write_bytes(b"partial")
    removed = store.gc(keep=1)
    assert removed == 1 + 1 + 1  # the old manifest, the old head.weight object, the temporary
    assert store.manifests() == ["00000001"]
    assert torch.equal(store.load()["head.weight"], m.head.weight.detach())
    # flip a byte in an object: the hash check refuses it
    sha = store.manifest()["tensors"]["head.weight"]["sha256"]
    obj = tmp_path / "ck" / "objects" / f"{sha}.safetensors"
    raw = bytearray(obj.read_bytes())
    raw[-1] ^= 0xFF
    obj.write_bytes(bytes(raw))
    with pytest.raises(NeurobitError, match="corrupt"):
        store.load()
    assert store.load(verify=False)["head.weight"].shape == m.head.weight.shape
    obj.unlink()
    with pytest.raises(NeurobitError, match="missing"):
        store.load()
    assert json.loads((tmp_path / "ck" / "manifests" / "00000001.json").read_text())["parent"] \
        == "00000000"
