"""The CorticalHub learns: key-item selection, associative recall through fast weights, and a
learned ACC that predicts the trained network's errors.

Network and tasks: :mod:`neurobit.models.hub_tasks` (spiking ternary circuits, 4 LIF steps per
hub step -> CorticalHub -> ternary readout of the global state g; settings ``KEY_SELECTION`` and
``RECALL``). Seeds are fixed; the thresholds below were set from seeds 0-9 of
``analysis/hub/hub_tasks.py`` (results/hub_tasks.md), which runs the same code per seed:

- key selection (8 circuits, 8 items, chance 1/8): held-out accuracy >= 0.95 after 300 steps
  (seed 0: 0.9995; seeds 0-9: 0.977-1.000).
- associative recall (4 pairs, 7 values, chance 1/7 = 0.143): with fast weights >= 0.90 after
  600 steps (seed 0: 0.964; seeds 0-9: 0.920-1.000); the same network, seed and batches
  without fast weights <= 1/7 + 0.05 (seed 0: 0.153; seeds 0-9: 0.132-0.153; the query step
  holds no information about the pairing, so nothing beats chance but sampling noise, SE about
  0.008 on 2000 samples). Switching the memory off in the trained fast-weight network also
  drops it to chance (seeds 0-9: 0.129-0.152): the answer is read through ``M`` only.
- learned ACC on the key-selection network with input noise (accuracy 0.74-0.87): AUROC of
  predicting a wrong output >= 0.75 on a held-out split (seed 0: 0.791; seeds 0-9:
  0.791-0.901), reported beside the entropy-only rule (seed 0: 0.759; seeds 0-9: 0.759-0.901).

Runtime: about 62 s on one thread (the two recall trainings take about 34 s and 20 s).
"""
import numba
import numpy as np
import pytest
import torch

from neurobit.errors import ParameterError
from neurobit.models.hub_tasks import (KEY_SELECTION, RECALL, acc_study, accuracy, auroc,
                                       key_selection_batch, recall_batch, train_key_selection,
                                       train_recall)

SEED = 0


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one torch and one numba thread are faster and steadier on a loaded box."""
    n_torch, n_numba = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(n_torch)
    numba.set_num_threads(n_numba)


@pytest.fixture(scope="module")
def key_selection():
    return train_key_selection(SEED)


def test_auroc_hand_cases():
    # 4 positive/negative pairs: (0.35 > 0.1), (0.35 < 0.4), (0.8 > 0.1), (0.8 > 0.4) -> 3/4
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)  # a tie counts one half
    assert auroc([3.0, 1.0, 2.0], [1, 0, 0]) == pytest.approx(1.0)
    assert auroc([3.0, 1.0, 2.0], [0, 1, 1]) == pytest.approx(0.0)
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(0)
    s, y = rng.integers(0, 5, 200).astype(float), rng.integers(0, 2, 200)  # many ties
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    with pytest.raises(ParameterError, match="labels"):
        auroc([0.1, 0.2], [1, 1])


def test_task_batches_are_well_formed(gen):
    x, y = key_selection_batch(64, gen)
    V = KEY_SELECTION["n_items"]
    assert x.shape == (1, 64, 8, V + 1)
    assert torch.equal(x[0, :, :, V].sum(1), torch.ones(64))            # exactly one cue
    cued = x[0, :, :, V].argmax(1)
    assert torch.equal(x[0, torch.arange(64), cued, :V].argmax(1), y)  # target = cued item
    x, y = recall_batch(64, gen)
    P, K, NV = RECALL["n_pairs"], RECALL["n_keys"], RECALL["n_values"]
    assert x.shape == (P + 1, 64, 1 + NV, K + NV + 1)
    assert not x[:P, :, 1:].any()                                      # only circuit 0 studies
    q = x[P, :, 0, :K].argmax(1)                                       # the query key
    study_keys, study_vals = x[:P, :, 0, :K].argmax(2), x[:P, :, 0, K:K + NV].argmax(2)
    hit = study_keys == q                                              # [P, 64]
    assert torch.equal(hit.sum(0), torch.ones(64, dtype=torch.long))    # queried key was studied
    assert torch.equal(study_vals[hit.float().argmax(0), torch.arange(64)], y)
    cands = x[P, :, 1:, K:K + NV].argmax(2)                            # every value exactly once
    assert torch.equal(cands.sort(1).values, torch.arange(NV).expand(64, NV))


def test_key_item_selection_is_learned(key_selection):
    net, acc = key_selection
    print(f"key selection: held-out accuracy {acc:.4f} (chance {1 / KEY_SELECTION['n_items']:.3f})")
    assert acc >= 0.95


def test_recall_needs_fast_weights():
    net, acc_fw = train_recall(SEED, use_fast_weights=True)
    _, acc_none = train_recall(SEED, use_fast_weights=False)
    chance = 1 / RECALL["n_values"]
    x, y = recall_batch(2000, torch.Generator().manual_seed(123), RECALL["n_keys"],
                        RECALL["n_values"], RECALL["n_pairs"])
    net.hub.use_fast_weights = False  # ablate the memory of the trained network
    acc_ablated = accuracy(net, x, y)
    print(f"recall: fast weights {acc_fw:.4f}, none {acc_none:.4f}, trained with fast weights "
          f"then ablated {acc_ablated:.4f} (chance {chance:.3f})")
    assert acc_fw >= 0.90
    assert acc_none <= chance + 0.05
    assert acc_ablated <= chance + 0.05


def test_learned_acc_predicts_errors(key_selection):
    net, _ = key_selection
    r = acc_study(net, SEED)
    print(f"ACC: noise {r.noise}, accuracy {r.accuracy:.3f}, {r.n_wrong}/{r.n} wrong; AUROC "
          f"learned {r.auroc_learned:.3f}, entropy only {r.auroc_entropy:.3f}")
    assert 0.6 <= r.accuracy <= 0.9 and r.n_wrong >= 200  # the net errs often enough to judge
    assert r.auroc_learned >= 0.75
