"""Cross-validation: neurobit's MicroCircuit (float64) against the same circuit run by Brian2.

Circuits: 128 units, 40 input channels, dyadic scales (W_in 0.25, W_rec 0.125), 500 steps of
Poisson-like binary input. Rasters must be identical over all [500, 128] entries; negative
controls show the comparison can fail.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

pytest.importorskip("brian2")

from neurobit.errors import ParameterError, ShapeError  # noqa: E402
from neurobit.interop.brian2_reference import (brian2_from_microcircuit,  # noqa: E402
                                               raster_from_events, run_brian2_circuit)
from neurobit.modules import BitLinear, MicroCircuit  # noqa: E402

T, N_IN, N = 500, 40, 128


@pytest.fixture(autouse=True)
def quiet_brian2():
    """Brian2 logs every code-generation step at DIAGNOSTIC level; pytest capturing them all
    doubles the run time. Keep warnings only, for these tests."""
    logger = logging.getLogger("brian2")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The neurobit side steps 128x128 ops 500 times; on a shared 2-core machine a second
    torch thread only spin-waits (each op took ms instead of us)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_circuit(seed: int, alpha=0.875, theta=1.0, beta=None, rate=0.2):
    """Random recurrent ternary circuit (float64) and one trial of binary input [T, N_IN]."""
    g = torch.Generator().manual_seed(seed)
    c = MicroCircuit(N_IN, N, quant="fixed", fixed_scale=0.25, alpha=alpha, theta=theta,
                     beta=beta)
    c.w_rec = BitLinear(N, N, quant="fixed", fixed_scale=0.125)  # a second dyadic scale
    c.w_in.init_sparse_(0.3, g)
    c.w_rec.init_sparse_(0.1, g)
    c = c.double()
    x = (torch.rand(T, N_IN, generator=g, dtype=torch.float64) < rate).double()
    return c, x


def neurobit_raster(c: MicroCircuit, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return c(x[:, None]).spikes[:, 0].numpy()


def check_regime(c: MicroCircuit, x: torch.Tensor, s: np.ndarray) -> None:
    """Meaningful activity, and recurrence changes the raster."""
    rate = s.mean()
    assert 0.02 < rate < 0.40, rate
    saved = c.w_rec.weight.detach().clone()
    with torch.no_grad():
        c.w_rec.weight.zero_()
        s_ff = neurobit_raster(c, x)
        c.w_rec.weight.copy_(saved)
    assert not np.array_equal(s, s_ff)


@pytest.mark.parametrize("case", ["dyadic_alpha", "per_unit_alpha", "beta_half"])
def test_microcircuit_raster_identical_to_brian2(case):
    kw = {"dyadic_alpha": {},
          # per-unit alphas, mostly not dyadic: exactness needs only dyadic weights
          "per_unit_alpha": {"alpha": torch.linspace(0.80, 0.95, N)},
          "beta_half": {"beta": 0.5}}[case]
    c, x = make_circuit(seed=1, **kw)
    s = neurobit_raster(c, x)
    check_regime(c, x, s)
    b = brian2_from_microcircuit(c, x, dt_ms=1.0)
    assert b.shape == (T, N)
    assert int(s.sum()) > 1000  # thousands of spikes compared
    assert np.array_equal(s, b), f"{int((s != b).sum())} raster entries differ"


def _circuit_args(c: MicroCircuit):
    q_in, q_rec = c.w_in.ternary(), c.w_rec.ternary()
    return q_in.codes, q_in.scale, q_rec.codes, q_rec.scale


def test_membrane_identical_bit_for_bit():
    """v_t from Brian2 equals neurobit's v_t exactly at every step and unit."""
    c, x = make_circuit(seed=2, alpha=0.9, beta=0.75)
    state = c.initial_state(1, torch.float64)
    vs, ss = [], []
    with torch.no_grad():
        for t in range(T):
            _, s_t, state = c.step(x[t][None], state)
            vs.append(state.lif.v[0].numpy())
            ss.append(s_t[0].numpy())
    out = run_brian2_circuit(*_circuit_args(c), x, c.lif.alpha, c.lif.theta, c.lif.beta,
                             n_steps=T, dt_ms=0.5, record_v=True)
    assert out["v"].shape == (T, N)
    assert np.array_equal(out["v"], np.stack(vs))
    assert np.array_equal(raster_from_events(out["spike_steps"], out["spike_ids"], T, N),
                          np.stack(ss))


def test_negative_controls_differ():
    """A threshold 1.0 -> 1.0625, or input one step late, changes the Brian2 raster."""
    c, x = make_circuit(seed=3)
    s = neurobit_raster(c, x)
    args = _circuit_args(c)
    base = run_brian2_circuit(*args, x, 0.875, 1.0)
    r0 = raster_from_events(base["spike_steps"], base["spike_ids"], T, N)
    assert np.array_equal(r0, s)
    hi = run_brian2_circuit(*args, x, 0.875, 1.0625)
    r1 = raster_from_events(hi["spike_steps"], hi["spike_ids"], T, N)
    assert not np.array_equal(r1, s)
    assert r1.sum() < s.sum()  # a higher threshold fires less
    late = np.concatenate([np.zeros((1, N_IN)), x.numpy()[:-1]])
    r2 = raster_from_events(*[run_brian2_circuit(*args, late, 0.875, 1.0)[k]
                              for k in ("spike_steps", "spike_ids")], T, N)
    assert not np.array_equal(r2, s)


def test_phase_mapping_single_spikes():
    """An input spike at step 5 fires unit 0 at step 5; its recurrent synapse fires unit 1 at
    step 6; unit 0's reset (beta = 1) lands at step 6: v = 0.5 * 2 - 1 = 0."""
    x = np.zeros((10, 1))
    x[5, 0] = 1
    out = run_brian2_circuit(np.array([[1.0], [0.0]]), 2.0, np.array([[0.0, 0.0], [1.0, 0.0]]),
                             2.0, x, alpha=0.5, theta=1.0, record_v=True)
    assert out["spike_steps"].tolist() == [5, 6]
    assert out["spike_ids"].tolist() == [0, 1]
    assert out["spike_steps"].dtype == np.int64
    assert out["v"][5].tolist() == [2.0, 0.0]
    assert out["v"][6].tolist() == [0.0, 2.0]
    assert out["v"][7].tolist() == [0.0, 0.0]


def test_dyadic_current_input_identical():
    """A float (dyadic) current through a TimedArray and a summed variable is also exact."""
    c, _ = make_circuit(seed=4)
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 5, (200, N_IN), generator=g).double() / 8  # 0 .. 0.5 in steps of 1/8
    s = neurobit_raster(c, x)
    assert s.sum() > 100
    b = brian2_from_microcircuit(c, x, input_kind="current")
    assert np.array_equal(s, b)


def test_bad_input_names_the_parameter():
    c_in = np.ones((3, 2))
    x = np.zeros((4, 2))
    with pytest.raises(ParameterError, match="target"):
        run_brian2_circuit(c_in, 0.25, None, None, x, 0.9, target="cuda")
    with pytest.raises(ShapeError, match="n_steps"):
        run_brian2_circuit(c_in, 0.25, None, None, x, 0.9, n_steps=5)
    with pytest.raises(ParameterError, match="w_in_codes"):
        run_brian2_circuit(2 * c_in, 0.25, None, None, x, 0.9)
    with pytest.raises(ParameterError, match="alpha"):
        run_brian2_circuit(c_in, 0.25, None, None, x, 1.5)
    with pytest.raises(ShapeError, match="input_spikes_or_current"):
        run_brian2_circuit(c_in, 0.25, None, None, np.zeros((4, 3)), 0.9)
    with pytest.raises(ParameterError, match="input_kind"):
        run_brian2_circuit(c_in, 0.25, None, None, x + 0.5, 0.9, input_kind="spikes")
