"""NIR export/import: lossless round trip, foreign simulators (norse, snntorch), the Braille graph.

Circuits use alpha = 0.75, fixed_scale = 0.5, theta = 1: every quantity is dyadic, so the Euler
step of NIR's LIF (``v + dt/tau (r I - v)`` with ``dt/tau = 0.25``, ``r = 4``) equals neurobit's
``0.75 v + u`` bit for bit, and spikes can be compared with ``torch.equal``.
"""
from __future__ import annotations

import importlib.util
import logging
import pathlib
import warnings

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")

from neurobit.errors import ParameterError  # noqa: E402
from neurobit.interop.nir_export import NIRResetWarning, export_nir  # noqa: E402
from neurobit.interop.nir_import import NIRSimulator, import_nir  # noqa: E402
from neurobit.modules.microcircuit import MicroCircuit  # noqa: E402
from neurobit.modules.microcircuit_bank import MicroCircuitBank  # noqa: E402

T, B, N_IN, N = 200, 2, 10, 16


def _circuit(recurrent: bool, n_out: int | None = 4, seed: int = 1) -> MicroCircuit:
    c = MicroCircuit(N_IN, N, n_out, recurrent=recurrent, quant="fixed", fixed_scale=0.5,
                     alpha=0.75, theta=1.0)
    g = torch.Generator().manual_seed(seed)
    for layer in (c.w_in, c.w_rec, c.w_out):
        if layer is not None:
            layer.init_sparse_(0.4, g)
    return c


def _poisson(shape, rate=0.3, seed=2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < rate).float()


def _export(circuit, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NIRResetWarning)
        return export_nir(circuit, **kw)


def _run_stepwise(model, x_seq: torch.Tensor) -> torch.Tensor:
    """Drive a nirtorch-built module one step at a time: ``model(x_t, state) -> (y, state)``."""
    state, out = None, []
    for x in x_seq.unbind(0):
        y, state = model(x, state)
        out.append(y)
    return torch.stack(out, 0).detach()


def _norse_generic(graph, dt_s: float):
    """``nirtorch.nir_to_torch`` with norse's LIFBoxCell, the input scaled by ``r`` (norse's
    own ``from_nir`` drops ``r`` for LIF nodes; see test_norse_from_nir_drops_r)."""
    import nirtorch
    import norse.torch as nt

    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731

    class RLIF(torch.nn.Module):
        def __init__(self, node):
            super().__init__()
            self.r = t(node.r)
            self.cell = nt.LIFBoxCell(nt.LIFBoxParameters(
                tau_mem_inv=1 / t(node.tau), v_th=t(node.v_threshold), v_leak=t(node.v_leak),
                v_reset=t(node.v_reset)), dt=dt_s)

        def forward(self, x, state=None):
            return self.cell(self.r * x, state)

    def linear(node):
        w = t(node.weight)
        m = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        m.weight.data = w
        return m

    return nirtorch.nir_to_torch(graph, {nir.Linear: linear, nir.LIF: RLIF})


# --- export and file round trip ---------------------------------------------------------------

def test_export_warns_and_maps_parameters():
    c = _circuit(True)
    with pytest.warns(NIRResetWarning, match="subtract"):
        g = export_nir(c, dt_ms=1.0)
    lif = g.nodes["lif"]
    np.testing.assert_allclose(lif.tau, 1e-3 / 0.25)  # tau = dt / (1 - alpha), seconds
    np.testing.assert_allclose(lif.r, 4.0)             # r = tau / dt
    assert np.all(lif.v_reset == 0) and np.all(lif.v_leak == 0) and np.all(lif.v_threshold == 1)
    assert torch.equal(torch.from_numpy(g.nodes["w_rec"].weight), c.w_rec.effective_weight())
    assert set(np.unique(g.nodes["w_in"].weight)) <= {-0.5, 0.0, 0.5}
    assert ("w_rec", "lif") in g.edges and ("lif", "w_rec") in g.edges
    meta = g.metadata["neurobit"]
    assert meta["reset"] == "subtract_delayed" and meta["dt_ms"] == 1.0
    assert float(meta["beta"][0]) == 1.0 and float(meta["alpha"][0]) == 0.75


@pytest.mark.parametrize("recurrent", [False, True])
def test_write_read_keeps_every_parameter(tmp_path, recurrent):
    g = _export(_circuit(recurrent))
    path = tmp_path / "c.nir"
    nir.write(path, g)
    g2 = nir.read(path)
    assert set(g2.nodes) == set(g.nodes) and sorted(g2.edges) == sorted(g.edges)
    for name, node in g.nodes.items():
        d1, d2 = node.to_dict(), g2.nodes[name].to_dict()
        assert d1["type"] == d2["type"]
        for key, val in d1.items():
            if isinstance(val, np.ndarray):
                assert np.array_equal(val, d2[key]), (name, key)
                assert val.dtype == np.asarray(d2[key]).dtype, (name, key)
    m1, m2 = g.metadata["neurobit"], g2.metadata["neurobit"]
    assert set(m1) == set(m2)
    for key, val in m1.items():
        if key == "scales":
            for layer, s in val.items():
                assert np.array_equal(s, m2[key][layer]), layer
        else:
            assert np.array_equal(np.asarray(val), np.asarray(m2[key])), key


@pytest.mark.parametrize("recurrent", [False, True])
def test_neurobit_round_trip_identical_spikes(tmp_path, recurrent):
    c = _circuit(recurrent)
    path = tmp_path / "c.nir"
    nir.write(path, _export(c))
    c2 = import_nir(path)
    assert type(c2) is MicroCircuit and (c2.w_rec is not None) == recurrent
    x = _poisson((T, B, N_IN))
    a, b = c(x), c2(x)
    assert a.spikes.sum() > 50  # a run with enough spikes to matter
    assert torch.equal(a.spikes, b.spikes)
    assert torch.equal(a.y, b.y)
    assert torch.equal(c2.w_in.effective_weight(), c.w_in.effective_weight())


@pytest.mark.parametrize("kw", [
    dict(quant="float", alpha=0.9),
    dict(quant="threshold", fixed_scale=0.3, alpha=0.9),
    dict(quant="absmean", alpha=torch.full((12,), 0.8), theta=torch.linspace(0.5, 1.5, 12),
         beta=0.7),
], ids=["float", "threshold", "per-unit-absmean"])
def test_round_trip_other_quant_modes_and_per_unit_parameters(tmp_path, kw):
    torch.manual_seed(0)
    c = MicroCircuit(5, 12, 3, **kw)
    path = tmp_path / "k.nir"
    nir.write(path, _export(c, dt_ms=0.5))
    c2 = import_nir(path)
    assert c2.w_in.quant == kw["quant"]
    x = _poisson((150, 3, 5), rate=0.4)
    a, b = c(x), c2(x)
    assert a.spikes.sum() > 20
    assert torch.equal(a.spikes, b.spikes) and torch.equal(a.y, b.y)
    assert torch.equal(c2.lif.params.reset * torch.ones(12), c.lif.params.reset * torch.ones(12))


def test_bank_round_trip_absmean(tmp_path):
    bank = MicroCircuitBank(3, 6, 8, 2, recurrent=True, alpha=0.9, theta=0.5)  # absmean scales
    path = tmp_path / "bank.nir"
    nir.write(path, _export(bank))
    bank2 = import_nir(path)
    assert isinstance(bank2, MicroCircuitBank) and bank2.n_circuits == 3
    x = _poisson((100, B, 3, 6))
    a, b = bank(x), bank2(x)
    assert a.spikes.sum() > 10
    assert torch.equal(a.spikes, b.spikes) and torch.equal(a.y, b.y)
    # block-diagonal flat graph under NIR semantics: circuit-major units
    run = import_nir(path, semantics="nir")(x.reshape(100, B, 18))
    assert run.output.shape == (100, B, 6) and run.spikes["lif"].shape == (100, B, 24)


# --- foreign simulators agree with neurobit's NIR-semantics simulation ------------------------

@pytest.mark.parametrize("recurrent", [False, True])
def test_norse_matches_nir_semantics(recurrent):
    pytest.importorskip("norse")
    g = _export(_circuit(recurrent, n_out=None))
    x = _poisson((T, B, N_IN))
    ours = import_nir(g, semantics="nir")(x)
    assert isinstance(import_nir(g, semantics="nir"), NIRSimulator)
    theirs = _run_stepwise(_norse_generic(g, dt_s=1e-3), x)
    assert ours.output.sum() > 50
    assert torch.equal(theirs, ours.output)
    assert torch.equal(ours.output, ours.spikes["lif"])


def test_norse_from_nir_drops_r():
    """norse.torch.from_nir ignores LIF's r: it equals our simulation of the graph with r = 1."""
    norse_torch = pytest.importorskip("norse.torch")
    g = _export(_circuit(False, n_out=None))
    x = _poisson((T, B, N_IN))
    logging.disable(logging.WARNING)
    try:
        theirs = _run_stepwise(norse_torch.from_nir(g, dt=1e-3), x)
    finally:
        logging.disable(logging.NOTSET)
    g.nodes["lif"].r = np.ones_like(g.nodes["lif"].r)
    assert torch.equal(theirs, import_nir(g, semantics="nir")(x).output)


def test_snntorch_matches_nir_semantics_feedforward():
    """snntorch's import hard-codes dt = 1e-4 s, so the graph is exported with dt_ms = 0.1."""
    pytest.importorskip("snntorch")
    import snntorch.import_nir
    import snntorch.utils

    g = _export(_circuit(False, n_out=None), dt_ms=0.1)
    x = _poisson((T, B, N_IN))
    ours = import_nir(g, semantics="nir")(x).output
    # the 0.1 ms graph simulates the same discrete circuit as the 1 ms one
    g_1ms = _export(_circuit(False, n_out=None))
    assert torch.equal(ours, import_nir(g_1ms, semantics="nir")(x).output)
    net = snntorch.import_nir.import_from_nir(g)
    snntorch.utils.reset(net)
    assert ours.sum() > 50
    assert torch.equal(_run_stepwise(net, x), ours)


@pytest.mark.parametrize("recurrent", [False, True])
def test_reset_is_the_only_difference_to_native(recurrent):
    """Native (delayed subtractive reset) vs NIR semantics (reset to 0): equal spikes up to the
    first spike (of that unit feed-forward; of any unit in that sample with recurrence), some
    mismatch afterwards."""
    c = _circuit(recurrent, n_out=None)
    x = _poisson((T, B, N_IN))
    native = c(x).spikes.detach()
    nirs = import_nir(_export(c), semantics="nir")(x).output
    t = torch.arange(T).view(T, 1, 1)
    fired = native.cumsum(0) > 0
    if recurrent:
        fired = fired.any(-1, keepdim=True).expand_as(native)
    first = torch.where(fired.any(0), fired.float().argmax(0), torch.tensor(T))  # [B, N]
    before = t <= first
    after = ~before
    mismatch = native != nirs
    assert before.sum() > 0 and after.sum() > 0
    assert int(mismatch[before].sum()) == 0
    assert mismatch[after].float().mean() > 0.005


# --- the trained Braille graph shipped with norse ---------------------------------------------

def _braille_path() -> pathlib.Path:
    spec = importlib.util.find_spec("norse")
    if spec is None:
        pytest.skip("norse not installed")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "torch/utils/test/braille.nir"
    if not path.is_file():
        pytest.skip("norse's braille.nir not found")
    return path


def test_braille_neurobit_equals_norse():
    path = _braille_path()
    import norse.torch as nt

    sim = import_nir(path, dt_s=1e-4)  # trained in snntorch with dt = 1e-4 s
    assert sim.sizes["input"] == (12, 12) and sim.sizes["lif1.lif"] == (38, 38)
    assert ("lif1.w_rec", "lif1.lif") in sim.delayed
    x = _poisson((300, 4, 12), rate=0.1, seed=0)
    run = sim(x)
    assert run.output.shape == (300, 4, 7)
    assert 0 < run.spikes["lif1.lif"].mean() < 0.5 and run.output.sum() > 100
    logging.disable(logging.WARNING)
    try:
        theirs = _run_stepwise(nt.from_nir(nir.read(path), dt=1e-4), x)
    finally:
        logging.disable(logging.NOTSET)
    assert torch.equal(theirs, run.output)


# --- errors -----------------------------------------------------------------------------------

def _graph(nodes, edges):
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def _io(n_in, n_out):
    return {"input": nir.Input(input_type={"input": np.array([n_in])}),
            "output": nir.Output(output_type={"output": np.array([n_out])})}


def test_unknown_node_type_raises_naming_the_node():
    g = _graph({**_io(4, 4), "delay": nir.Delay(delay=np.ones(4))},
               [("input", "delay"), ("delay", "output")])
    with pytest.raises(ParameterError, match="node 'delay': unsupported NIR node type Delay") as e:
        import_nir(g, dt_s=1e-3)
    assert "\n" not in str(e.value)


def test_shape_mismatch_raises_naming_the_node():
    lif = nir.LIF(tau=np.ones(3), r=np.ones(3), v_leak=np.zeros(3), v_threshold=np.ones(3))
    g = _graph({**_io(4, 3), "fc": nir.Linear(weight=np.ones((5, 4))), "lif": lif},
               [("input", "fc"), ("fc", "lif"), ("lif", "output")])
    with pytest.raises(ParameterError, match="node 'lif': input size 3 does not match the "
                                             "output size 5 of 'fc'") as e:
        import_nir(g, dt_s=1e-3)
    assert "\n" not in str(e.value)


def test_missing_dt_and_metadata_errors():
    g = _graph({**_io(2, 2), "fc": nir.Linear(weight=np.eye(2))},
               [("input", "fc"), ("fc", "output")])
    with pytest.raises(ParameterError, match="dt_s"):
        import_nir(g)
    with pytest.raises(ParameterError, match="semantics"):
        import_nir(g, semantics="neurobit")
    with pytest.raises(ParameterError, match="circuit"):
        export_nir(torch.nn.Linear(2, 2))
