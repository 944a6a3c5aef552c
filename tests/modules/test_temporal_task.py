"""A ternary recurrent MicroCircuit learns a task that needs memory across time steps.

Task "which channel fired first": two groups of 4 input lines (A, B). In each sample group A
emits one synchronous pulse at step t_a and group B one at step t_b, t_a != t_b, both in
[0, 12); the class is 1 if A came first. Steps 12..29 carry no input at all, and the readout
is the mean of W_out s_t over the last 8 steps (22..29): every sample has the same spike
count on every line and the same (empty) input during the last 18 steps, so the answer exists
only in the order of two past events, carried through at least 10 silent steps. Generalization
is tested on 32 of the 132 timing pairs (t_a, t_b), chosen at random and never seen in training.

Why recurrence is necessary (checked below): with no input and no recurrent drive, a silent
unit stays silent (v_{t+1} = alpha v_t <= alpha theta < theta) and a firing unit loses at least
theta per step (v_{t+1} = alpha v_t - theta <= v_t - theta while v_t > 0), so all activity dies
out a few steps after the last input; removing W_rec leaves the readout window silent, the
readout exactly zero, and argmax at class 0 (accuracy = the share of class 0, i.e. chance).
"""
import time

import pytest
import torch
import torch.nn.functional as F

from neurobit.modules import MicroCircuit

T, T_IN, LINES, READ = 30, 12, 4, 8


def timing_pairs(gen):
    """All 132 ordered pairs (t_a, t_b), t_a != t_b, in [0, T_IN), randomly split 100 / 32."""
    pairs = torch.tensor([(a, b) for a in range(T_IN) for b in range(T_IN) if a != b])
    perm = torch.randperm(len(pairs), generator=gen)
    return pairs[perm[:100]], pairs[perm[100:]]


def first_of_two(n, gen, pairs):
    """``n`` samples ([T, n, 2 * LINES], labels) with timings drawn from ``pairs`` [P, 2]."""
    ta, tb = pairs[torch.randint(0, len(pairs), (n,), generator=gen)].unbind(1)
    x = torch.zeros(T, n, 2 * LINES)
    idx = torch.arange(n)
    x[ta, idx, :LINES] = 1.0
    x[tb, idx, LINES:] = 1.0
    return x, (ta < tb).long()


def readout(circuit, x):
    return circuit(x).y[-READ:].sum(0) / READ  # [B, 2]


def accuracy(circuit, x, y):
    with torch.no_grad():
        return float((readout(circuit, x).argmax(1) == y).float().mean())


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster and steadier
    yield
    torch.set_num_threads(n)


def test_microcircuit_learns_which_channel_fired_first(one_thread):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    pairs_tr, pairs_te = timing_pairs(gen)
    x_tr, y_tr = first_of_two(2048, gen, pairs_tr)
    x_te, y_te = first_of_two(1024, gen, pairs_te)

    # the task needs memory: identical line counts and silent input after T_IN for every sample
    for x in (x_tr, x_te):
        assert torch.equal(x.sum(0), torch.ones(x.shape[1:]))
        assert not x[T_IN:].any()
    assert 0.3 < float(y_te.float().mean()) < 0.7
    seen_tr = set(map(tuple, (x_tr.argmax(0)[:, [0, LINES]]).tolist()))
    seen_te = set(map(tuple, (x_te.argmax(0)[:, [0, LINES]]).tolist()))
    assert len(seen_te) == 32 and not seen_tr & seen_te  # test timings never seen in training

    c = MicroCircuit(2 * LINES, 64, 2, quant="absmean", alpha=0.9, theta=1.0, slope=5.0)
    with torch.no_grad():
        c.w_in.weight.normal_(0, 1.0, generator=gen)
        c.w_rec.weight.normal_(0, 0.3, generator=gen)
        c.w_out.weight.normal_(0, 1.0, generator=gen)
    acc_before = accuracy(c, x_te, y_te)
    opt = torch.optim.Adam(c.parameters(), lr=1e-2)
    t0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(160):
        i = torch.randint(0, x_tr.shape[1], (128,), generator=gen)
        loss = F.cross_entropy(readout(c, x_tr[:, i]), y_tr[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    acc = accuracy(c, x_te, y_te)
    print(f"first-of-two: test accuracy {acc:.4f} (before training {acc_before:.4f}), "
          f"training {wall:.1f} s wall / {cpu:.1f} s CPU")
    assert acc >= 0.95

    # the weights really are ternary: every synapse set uses codes in {-1, 0, +1}
    for layer in (c.w_in, c.w_rec, c.w_out):
        assert set(layer.ternary().codes.detach().unique().tolist()) <= {-1.0, 0.0, 1.0}

    # ablation: without recurrent synapses nothing fires in the readout window -> chance
    with torch.no_grad():
        c.w_rec.weight.zero_()
        assert not c(x_te).spikes[T - READ:].any()
    assert accuracy(c, x_te, y_te) == pytest.approx(float((y_te == 0).float().mean()))
