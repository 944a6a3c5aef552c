"""The timestep engine on numbers: determinism, chunk invariance, a closed-form LIF trajectory,
agreement with the MicroCircuit module (the one LIF update), banked circuits, bounded memory,
and the spikes of every stimulus type.

Phase convention under test (``neurobit.sim.engine``): in step ``t`` the stimulus ``x_t`` and
the population spikes ``s_{t-1}`` give ``u_t``; then ``v_t = alpha v_{t-1} + u_t - beta s_{t-1}``
and ``s_t = 1[v_t > theta]`` (``functional.lif_step``). So from rest a constant current ``u``
gives ``v_t = u (1 - alpha^(t+1)) / (1 - alpha)``: step 0 integrates ``u`` once from ``v = 0``.
"""
from __future__ import annotations

import copy
import math
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from neurobit.config.loader import load_circuit
from neurobit.config.schema import CircuitConfig
from neurobit.functional.lif import LIFParameters, initial_state, lif_step
from neurobit.modules import MicroCircuit
from neurobit.sim.network import build_network
from neurobit.sim.run import build_engine, simulate

STEPPERS = (["reference", "fused"] if "stepper" in CircuitConfig.model_fields else [None])


class RasterSink:
    """An in-memory :class:`neurobit.sim.engine.Sink` that keeps everything and watches sizes."""

    def __init__(self):
        self.spikes = defaultdict(list)
        self.reports = defaultdict(list)
        self.marks: list[int] = []
        self.flushes = 0
        self.max_span = 0        # largest step range covered by one append_spikes call
        self.max_samples = 0     # largest number of report samples in one append_report call

    def append_spikes(self, name, steps, node_ids, trials):
        steps = np.asarray(steps)
        if steps.size:
            lo = self.marks[-1] if self.marks else 0
            assert steps.min() >= lo, "spikes of an already finished chunk"
            self.max_span = max(self.max_span, int(steps.max()) - lo + 1)
        self.spikes[name].append((steps.copy(), np.array(node_ids), np.array(trials)))

    def append_report(self, name, data):
        self.max_samples = max(self.max_samples, len(data))
        self.reports[name].append(np.array(data, copy=True))

    def mark_steps(self, n):
        self.marks.append(int(n))

    def flush(self):
        self.flushes += 1

    def raster(self, name, n_steps, trials, units) -> np.ndarray:
        r = np.zeros((n_steps, trials, units), dtype=bool)
        for s, n, tr in self.spikes[name]:
            r[s, tr, n] = True
        return r

    def report(self, name) -> np.ndarray:
        """``[samples, nodes, trials]``."""
        return np.concatenate(self.reports[name], 0)


def make_cfg(d: dict, stepper=None, **over) -> CircuitConfig:
    d = copy.deepcopy(d)
    d.update(over)
    if stepper is not None:
        d["stepper"] = stepper
    return CircuitConfig.model_validate(d)


def run(cfg: CircuitConfig):
    eng = build_engine(cfg)
    sink = RasterSink()
    summary = eng.run(sink)
    return eng, sink, summary


def raster_of(cfg: CircuitConfig, pop: str) -> np.ndarray:
    eng, sink, _ = run(cfg)
    return sink.raster(pop, eng.n_steps, cfg.trials, eng.net.populations[pop].units)


EI = dict(
    name="ei", dt_ms=0.5, duration_ms=150, trials=2, seed=4,
    populations=dict(exc=dict(size=40, tau_mem_ms=10.0, v_init="uniform"),
                     inh=dict(size=10, tau_mem_ms=5.0, theta=0.8)),
    stimuli=dict(drive=dict(type="poisson", size=30, rate_hz=80.0),
                 bias=dict(type="current", target="inh", amplitude=0.02, start_ms=20.0)),
    projections=[dict(source="drive", target="exc", density=0.3, weight=0.3, sign="excitatory"),
                 dict(source="exc", target="exc", density=0.1, weight=0.2),
                 dict(source="exc", target="inh", density=0.3, weight=0.3, sign="excitatory"),
                 dict(source="inh", target="exc", density=0.5, weight=0.4, sign="inhibitory")],
    monitors=dict(spikes=["exc", "inh"],
                  state=[dict(population="exc", indices=[0, 5, 39], every_steps=3)]),
)


# ------------------------------------------------------------------ determinism, chunking
@pytest.mark.parametrize("stepper", STEPPERS)
def test_same_seed_same_spikes_other_seed_differs(stepper):
    a = raster_of(make_cfg(EI, stepper), "exc")
    b = raster_of(make_cfg(EI, stepper), "exc")
    c = raster_of(make_cfg(EI, stepper, seed=5), "exc")
    assert a.sum() > 100, "the test circuit should be active"
    np.testing.assert_array_equal(a, b)
    assert (a != c).sum() > 0.1 * a.sum()


@pytest.mark.parametrize("stepper", STEPPERS)
def test_results_do_not_depend_on_chunk_size(stepper):
    out = {}
    for chunk in (7, 1000):
        eng, sink, summary = run(make_cfg(EI, stepper, chunk_steps=chunk))
        T = eng.n_steps
        out[chunk] = (sink.raster("exc", T, 2, 40), sink.raster("inh", T, 2, 10),
                      sink.report("exc"), summary.spike_counts["exc"])
        assert sink.marks == list(range(chunk, T, chunk)) + [T]
    for x, y in zip(out[7], out[1000]):
        np.testing.assert_array_equal(x, y)
    # state monitor: samples at steps 0, 3, 6, ... across chunk edges (7 is not a multiple of 3)
    assert out[7][2].shape == (math.ceil(300 / 3), 3, 2)
    np.testing.assert_array_equal(out[7][3], out[7][0].sum(0))


# ------------------------------------------------------------------ closed form
@pytest.mark.parametrize("alpha, tau, dt, u, theta", [
    (0.9, None, 1.0, 0.15, 1.0),     # a^(t+1) < 1/3  -> t* = 10
    (None, 10.0, 0.5, 0.2, 2.0),     # alpha = exp(-0.05)
    (0.5, None, 1.0, 0.6, 1.0),      # fires at t* = 1
])
def test_constant_current_matches_closed_form(alpha, tau, dt, u, theta):
    start_ms, stop_ms = 10 * dt, 80 * dt
    pop = dict(size=3, theta=theta)
    pop.update(dict(alpha=alpha) if alpha is not None else dict(tau_mem_ms=tau))
    cfg = make_cfg(dict(
        dt_ms=dt, duration_ms=120 * dt, dtype="float64", populations=dict(p=pop),
        stimuli=dict(i=dict(type="current", target="p", amplitude=u, start_ms=start_ms,
                            stop_ms=stop_ms)),
        monitors=dict(spikes=["p"], state=[dict(population="p")])))
    a = alpha if alpha is not None else math.exp(-dt / tau)
    eng, sink, _ = run(cfg)
    spikes = sink.raster("p", 120, 1, 3)[:, 0]
    v = sink.report("p")[:, :, 0]                      # [steps, units] (float32 on disk)
    t_on = 10
    # first spike: smallest k with u (1 - a^(k+1)) / (1 - a) > theta
    k_star = math.ceil(math.log(1 - theta * (1 - a) / u) / math.log(a)) - 1
    assert u * (1 - a ** (k_star + 1)) / (1 - a) > theta >= u * (1 - a ** k_star) / (1 - a)
    first = np.nonzero(spikes[:, 0])[0][0]
    assert first == t_on + k_star
    assert np.all(spikes == spikes[:, :1])             # identical units
    assert not spikes[:t_on].any()
    # membrane: 0 before the window, closed form up to and including the first spike
    assert np.all(v[:t_on] == 0)
    k = np.arange(k_star + 1)
    np.testing.assert_allclose(v[t_on:t_on + k_star + 1, 0], u * (1 - a ** (k + 1)) / (1 - a),
                               rtol=1e-6, atol=1e-6)
    # delayed reset: theta is subtracted in the step after the spike
    v_star = u * (1 - a ** (k_star + 1)) / (1 - a)
    np.testing.assert_allclose(v[t_on + k_star + 1, 0], a * v_star + u - theta, rtol=1e-6,
                               atol=1e-6)
    # after stop_ms no input: from the last step on, v decays as a^k (minus a pending reset)
    t_off = 80
    s_last = float(spikes[t_off - 1, 0])
    np.testing.assert_allclose(v[t_off, 0], a * v[t_off - 1, 0] - theta * s_last, rtol=1e-5,
                               atol=1e-6)
    assert not spikes[t_off + 1:].any()


def test_subthreshold_current_never_spikes():
    cfg = make_cfg(dict(dt_ms=1.0, duration_ms=200, dtype="float64",
                        populations=dict(p=dict(size=2, alpha=0.9)),
                        stimuli=dict(i=dict(type="current", target="p", amplitude=0.0999)),
                        monitors=dict(spikes=["p"], state=[dict(population="p", indices=[1])])))
    eng, sink, summary = run(cfg)
    assert summary.spike_counts["p"].sum() == 0
    v = sink.report("p")[:, 0, 0]
    t = np.arange(200)
    np.testing.assert_allclose(v, 0.0999 * (1 - 0.9 ** (t + 1)) / 0.1, rtol=1e-6)
    assert v.max() < 1.0


# ------------------------------------------------------------------ engine == module
REC = dict(
    dt_ms=1.0, duration_ms=200, trials=3, seed=11,
    populations=dict(c=dict(size=30, alpha=0.8, theta=1.0)),
    stimuli=dict(x=dict(type="poisson", size=20, rate_hz=150.0)),
    projections=[dict(source="x", target="c", density=0.3, weight=0.25),
                 dict(source="c", target="c", density=0.2, weight=0.25)],
    monitors=dict(spikes=["c"]),
)


def _input(cfg: CircuitConfig, name: str) -> torch.Tensor:
    """The stimulus spikes the engine sees: a fresh build with the same seed."""
    n_steps = int(round(cfg.duration_ms / cfg.dt_ms))
    return build_network(cfg).stimuli[name].chunk(0, n_steps)


@pytest.mark.parametrize("stepper", STEPPERS)
def test_engine_equals_microcircuit_module(stepper):
    cfg = make_cfg(REC, stepper)
    eng, sink, _ = run(cfg)
    got = sink.raster("c", 200, 3, 30)
    assert got.sum() > 200, "circuit too quiet for a meaningful comparison"
    w_in, w_rec = (p.linear.weight.detach() for p in eng.net.projections)
    assert set(torch.unique(w_rec).tolist()) <= {-0.25, 0.0, 0.25}
    assert (w_rec != 0).any() and (torch.diagonal(w_rec) == 0).all()
    x = _input(cfg, "x")                                           # [T, trials, 20]
    mc = MicroCircuit(20, 30, None, recurrent=True, quant="fixed", fixed_scale=0.25,
                      alpha=0.8, theta=1.0)
    with torch.no_grad():
        mc.w_in.weight.copy_(w_in)
        mc.w_rec.weight.copy_(w_rec)
        out = mc(x)
    np.testing.assert_array_equal(got, out.spikes.numpy() > 0)
    # and a hand loop over functional.lif_step with the effective weights, in float64
    p = LIFParameters(alpha=0.8, theta=1.0)
    st = initial_state((3, 30), torch.float64)
    ref = []
    for xt in x.double().unbind(0):
        u = xt @ w_in.double().T + st.s @ w_rec.double().T
        s, st = lif_step(u, st, p)
        ref.append(s)
    np.testing.assert_array_equal(got, torch.stack(ref).numpy() > 0)


BANK = dict(
    dt_ms=1.0, duration_ms=150, trials=2, seed=21,
    populations=dict(bank=dict(size=12, circuits=4, alpha=0.85, theta=1.0)),
    stimuli=dict(x=dict(type="poisson", size=15, rate_hz=200.0)),
    projections=[dict(source="x", target="bank", density=0.3, weight=0.3),
                 dict(source="bank", target="bank", density=0.25, weight=0.3)],
    monitors=dict(spikes=["bank"]),
)


def test_bank_equals_separate_circuits():
    cfg = make_cfg(BANK)
    eng, sink, _ = run(cfg)
    got = sink.raster("bank", 150, 2, 48)                          # node = m * 12 + i
    w_in, w_rec = (p.linear.weight.detach() for p in eng.net.projections)
    assert w_in.shape == (4, 12, 15) and w_rec.shape == (4, 12, 12)
    x = _input(cfg, "x")
    for m in range(4):
        mc = MicroCircuit(15, 12, None, quant="fixed", fixed_scale=0.3, alpha=0.85, theta=1.0)
        with torch.no_grad():
            mc.w_in.weight.copy_(w_in[m])
            mc.w_rec.weight.copy_(w_rec[m])
            ref = mc(x).spikes.numpy() > 0
        assert ref.sum() > 20, f"circuit {m} too quiet"
        np.testing.assert_array_equal(got[:, :, m * 12:(m + 1) * 12], ref, err_msg=f"circuit {m}")


def _bank_from_checkpoint(tmp_path: Path, w_in: torch.Tensor, w_rec: torch.Tensor, tag: str):
    from safetensors.torch import save_file
    save_file({"w_in": w_in.contiguous(), "w_rec": w_rec.contiguous()},
              str(tmp_path / f"{tag}.safetensors"))
    d = copy.deepcopy(BANK)
    d["projections"][0].update(checkpoint=f"{tag}.safetensors", key="w_in")
    d["projections"][1].update(checkpoint=f"{tag}.safetensors", key="w_rec")
    p = tmp_path / f"{tag}.yaml"
    p.write_text(yaml.safe_dump(d))
    return raster_of(load_circuit(p), "bank")


def test_bank_recurrence_is_block_diagonal(tmp_path):
    """Changing circuit 2's input synapses changes circuit 2's spikes and no other circuit's."""
    g = torch.Generator().manual_seed(3)
    # ternary codes (the projections' weight, 0.3, scales them)
    w_in = (torch.rand(4, 12, 15, generator=g) < 0.5).float()
    w_rec = (torch.randint(-1, 2, (4, 12, 12), generator=g)
             * (torch.rand(4, 12, 12, generator=g) < 0.3)).float()
    base = _bank_from_checkpoint(tmp_path, w_in, w_rec, "base")
    w_in2 = w_in.clone()
    w_in2[2] = w_in2[2] * (torch.rand(12, 15, generator=g) < 0.5)   # thin circuit 2's input
    pert = _bank_from_checkpoint(tmp_path, w_in2, w_rec, "pert")
    blocks = lambda r: [r[:, :, m * 12:(m + 1) * 12] for m in range(4)]  # noqa: E731
    for m, (a, b) in enumerate(zip(blocks(base), blocks(pert))):
        if m == 2:
            assert (a != b).sum() > 10
        else:
            np.testing.assert_array_equal(a, b, err_msg=f"circuit {m} changed")
    assert base.sum() > 100


def test_checkpoint_holds_codes_scaled_by_weight(tmp_path):
    """A projection's checkpoint holds ternary codes; the synapse is ``weight * code``
    (ProjectionConfig docstring), for any weight."""
    from safetensors.torch import save_file
    codes = torch.tensor([[0.0, 1.0, -1.0], [1.0, 0.0, 0.0], [-1.0, 1.0, 0.0]])
    save_file({"w": codes}, str(tmp_path / "codes.safetensors"))
    for weight in (0.5, 1.5, 2.5, 4.0):
        cfg = make_cfg(dict(populations=dict(p=dict(size=3, alpha=0.5)),
                            projections=[dict(source="p", target="p", weight=weight,
                                              checkpoint=str(tmp_path / "codes.safetensors"),
                                              key="w")]))
        w = build_network(cfg).projections[0].linear.effective_weight()
        torch.testing.assert_close(w, codes * weight, msg=f"weight={weight}")


# ------------------------------------------------------------------ bounded memory
class _Spy:
    writers: list = []


def test_memory_is_bounded_by_the_chunk(tmp_path, monkeypatch):
    import neurobit.record as record

    class SpyWriter(record.RunWriter):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            _Spy.writers.append(self)

    monkeypatch.setattr(record, "RunWriter", SpyWriter)
    _Spy.writers = []
    chunk = 40
    stats = {}
    for steps in (200, 2000):
        cfg = make_cfg(EI, chunk_steps=chunk, duration_ms=steps * 0.5)
        simulate(cfg, tmp_path / f"run{steps}.h5")
        w = _Spy.writers[-1]
        assert w.max_buffered_steps <= chunk, (steps, w.max_buffered_steps)
        assert w.n_writes >= steps // chunk
        # what the engine hands to a sink per chunk, and the drive it builds per chunk
        eng = build_engine(cfg)
        ks = []
        orig = eng._chunk_drive
        monkeypatch.setattr(eng, "_chunk_drive", lambda t0, k: (ks.append(k), orig(t0, k))[1])
        sink = RasterSink()
        eng.run(sink)
        assert max(ks) == chunk and sum(ks) == steps
        assert sink.max_span <= chunk and sink.max_samples <= math.ceil(chunk / 3)
        assert len(sink.marks) == steps // chunk and sink.flushes == len(sink.marks)
        stats[steps] = w.max_buffered_bytes
    # ten times longer, the same buffer high-water mark (within noise of spike counts)
    assert stats[2000] <= 2 * stats[200] + 4096


# ------------------------------------------------------------------ stimuli
def relay(tmp_path: Path, stim: dict, n: int, steps: int, dt: float = 1.0, trials: int = 1,
          seed: int = 0) -> np.ndarray:
    """Spikes of stimulus ``stim`` (``n`` channels) as seen by the engine: an identity
    projection (weight 1.5) into ``n`` units with alpha 0.01, theta 1 and no reset fires unit i
    at step t exactly when channel i spiked at t. Returns ``[steps, trials, n]``."""
    from safetensors.torch import save_file
    save_file({"eye": torch.eye(n)}, str(tmp_path / "eye.safetensors"))
    d = dict(dt_ms=dt, duration_ms=steps * dt, trials=trials, seed=seed,
             populations=dict(r=dict(size=n, alpha=0.01, theta=1.0, beta=0.0)),
             stimuli=dict(s=stim),
             projections=[dict(source="s", target="r", weight=1.5, checkpoint="eye.safetensors",
                               key="eye")],
             monitors=dict(spikes=["r"]))
    p = tmp_path / "relay.yaml"
    p.write_text(yaml.safe_dump(d))
    return raster_of(load_circuit(p), "r")


def five_sigma(count: int, n: int, p: float) -> None:
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    assert abs(count - mean) <= 5 * sd, f"{count} spikes, expected {mean:.1f} +- {5 * sd:.1f}"


def test_poisson_rate_and_window(tmp_path):
    dt, rate = 0.5, 40.0
    r = relay(tmp_path, dict(type="poisson", size=100, rate_hz=rate, start_ms=100.0,
                             stop_ms=800.0), 100, 2000, dt=dt, trials=2)
    on = slice(200, 1600)                                   # 100 <= t dt < 800
    assert not r[:200].any() and not r[1600:].any()
    five_sigma(int(r[on].sum()), 1400 * 2 * 100, rate * dt / 1000)
    five_sigma(int(r[on, 1, 7].sum()), 1400, rate * dt / 1000)   # one channel, one trial
    assert (r[:, 0] != r[:, 1]).any()                       # trials draw independently


def test_spike_file_lands_at_floor_t_over_dt(tmp_path):
    rows = [("0.0", 0), ("0.3", 1), ("0.7", 2), ("1.05", 0), ("2.5", 3), ("2.5", 1),
            ("9.95", 1), ("0.29", 3)]
    (tmp_path / "in.csv").write_text("time_ms,node_id\n" + "".join(f"{t},{i}\n" for t, i in rows))
    r = relay(tmp_path, dict(type="spike_file", size=4, path="in.csv"), 4, 100, dt=0.1, trials=2)
    want = np.zeros((100, 2, 4), dtype=bool)
    for t, i in rows:
        want[int(Decimal(t) // Decimal("0.1")), :, i] = True
    np.testing.assert_array_equal(r, want)
    assert r[3, 0, 1] and r[2, 0, 3]                        # 0.3 ms -> step 3; 0.29 -> step 2


def test_image_latency_brighter_fires_earlier(tmp_path):
    from sklearn.datasets import load_digits
    inten = load_digits().images[0].reshape(-1) / 16.0
    window, dt, min_i = 20.0, 1.0, 0.05
    r = relay(tmp_path, dict(type="image", source="digits:0", encoding="latency",
                             window_ms=window, min_intensity=min_i), 64, 60, dt=dt)[:, 0]
    for w0 in (0, 20, 40):                                  # the image repeats every window
        block = r[w0:w0 + 20]
        fired = block.any(0)
        np.testing.assert_array_equal(fired, inten >= min_i)
        assert (block.sum(0)[fired] == 1).all()             # one spike per active pixel
        t = block.argmax(0)
        np.testing.assert_array_equal(t[fired], np.floor((1 - inten[fired]) * window / dt))
        bright, dim = np.argmax(inten), np.argmin(np.where(fired, inten, 9))
        assert t[bright] == t[fired].min() == math.floor((1 - inten.max()) * window / dt)
        assert t[dim] > t[bright]
        order = np.argsort(-inten[fired], kind="stable")
        assert np.all(np.diff(t[fired][order]) >= 0)        # brighter never later


def test_image_rate_encoding_from_npy(tmp_path):
    np.save(tmp_path / "img.npy", np.array([[0, 128], [255, 64]], dtype=np.uint8))
    src = str(tmp_path / "img.npy")  # absolute: see test_loader's relative-image checkpoint case
    r = relay(tmp_path, dict(type="image", source=src, encoding="rate", max_rate_hz=200.0),
              4, 3000, dt=1.0)[:, 0]
    assert r[:, 0].sum() == 0
    for pix, val in ((1, 128), (2, 255), (3, 64)):
        five_sigma(int(r[:, pix].sum()), 3000, 200.0 * (val / 255) / 1000)


def test_text_one_hot_per_token(tmp_path):
    r = relay(tmp_path, dict(type="text", text="abca", vocab="abc", token_ms=3.0), 3, 15)[:, 0]
    want = np.zeros((15, 3), dtype=bool)
    for k, ch in enumerate("abca"):
        want[3 * k:3 * k + 3, "abc".index(ch)] = True
    np.testing.assert_array_equal(r, want)
    assert (r[:12].sum(1) == 1).all() and not r[12:].any()
