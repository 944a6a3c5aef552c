"""RunWriter / read_run: exact round trip, libsonata compatibility, overwrite policy, bounded
buffering, input validation."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from neurobit.errors import NeurobitError, ParameterError, ShapeError
from neurobit.record import OutputExistsError, RunWriter, read_run

DT_MS = 0.1          # not a dyadic number: timestamps must still equal steps * dt_ms exactly
N_TRIALS = 2
POPS = {"exc": 40, "inh": 10, "out": 3}
RATES = {"exc": 0.05, "inh": 0.2, "out": 0.5}


def _spikes(rng, k, n_nodes, rate):
    """Random raster for k steps: (steps, trials, nodes) of every spike, shuffled."""
    step, trial, node = np.nonzero(rng.random((k, N_TRIALS, n_nodes)) < rate)
    perm = rng.permutation(step.size)
    return step[perm], trial[perm], node[perm]


def _write_run(path, *, n_chunks=7, engine_chunk=30, chunk_steps=50, seed=0):
    """Write a run the way the engine does (one append per engine chunk) and return what
    was appended: spikes per population, report samples, signal samples."""
    rng = np.random.default_rng(seed)
    n_steps = n_chunks * engine_chunk
    sent = {p: [] for p in POPS}
    rep_ids, rep_every = np.array([1, 4, 7, 30]), 4
    reps, hub, acc = [], [], []
    with RunWriter(path, chunk_steps=chunk_steps) as w:
        w.write_metadata(config_yaml="dt_ms: 0.1\npopulations: {}\n", seed=seed, dt_ms=DT_MS,
                         n_steps=n_steps, n_trials=N_TRIALS, versions={"neurobit": "0.0.test"},
                         extra={"note": "round trip"})
        for p, n in POPS.items():
            w.add_spike_population(p, n)
        w.add_report("exc", rep_ids, rep_every, variable="v", unit="mV")
        w.add_signal("hub", (3,), every_steps=1)
        w.add_signal("acc", (2, 2), dtype="float64", every_steps=10, attrs={"kind": "conflict"})
        for c in range(n_chunks):
            t0 = c * engine_chunk
            for p, n in POPS.items():
                s, tr, nd = _spikes(rng, engine_chunk, n, RATES[p])
                w.append_spikes(p, s + t0, nd, tr)
                sent[p].append((s + t0, tr, nd))
            steps = [t for t in range(t0, t0 + engine_chunk) if t % rep_every == 0]
            r = rng.standard_normal((len(steps), rep_ids.size, N_TRIALS)).astype(np.float32)
            w.append_report("exc", r)
            reps.append(r)
            h = rng.standard_normal((engine_chunk, 3)).astype(np.float32)
            w.append_signal("hub", h)
            hub.append(h)
            a = rng.standard_normal((len([t for t in range(t0, t0 + engine_chunk)
                                          if t % 10 == 0]), 2, 2))
            w.append_signal("acc", a)
            acc.append(a)
            w.mark_steps(t0 + engine_chunk)
    n_writes = w.n_writes
    spikes = {p: tuple(np.concatenate(x) for x in zip(*sent[p])) for p in POPS}
    return dict(spikes=spikes, report=np.concatenate(reps), rep_ids=rep_ids,
                rep_every=rep_every, hub=np.concatenate(hub), acc=np.concatenate(acc),
                n_steps=n_steps, n_writes=n_writes)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "run.h5"
    return path, _write_run(path)


def test_round_trip_spikes_counts_metadata(written):
    path, ref = written
    # 210 steps in writes of >= 50 buffered steps, engine chunks of 30: writes at steps
    # 60, 120, 180 and the final flush at close.
    assert ref["n_writes"] == 4
    with read_run(path) as run:
        assert run.complete is True
        assert run.populations == sorted(POPS)
        assert run.n_steps == ref["n_steps"] == run.steps_written
        assert run.n_trials == N_TRIALS and run.seed == 0 and run.dt_ms == DT_MS
        assert run.duration_ms == pytest.approx(ref["n_steps"] * DT_MS)
        assert run.config_yaml == "dt_ms: 0.1\npopulations: {}\n"
        assert run.versions == {"neurobit": "0.0.test"} and run.extra == {"note": "round trip"}
        for p, n in POPS.items():
            steps, trials, nodes = ref["spikes"][p]
            assert steps.size > 20
            assert run.n_nodes(p) == n
            t_all, _ = run.spikes(p)
            assert t_all.size == steps.size and np.all(np.diff(t_all) >= 0)
            counts = np.zeros((N_TRIALS, n), np.int64)
            np.add.at(counts, (trials, nodes), 1)
            np.testing.assert_array_equal(run.spike_counts(p), counts)
            for k in range(N_TRIALS):
                order = np.lexsort((nodes[trials == k], steps[trials == k]))
                exp_steps, exp_nodes = steps[trials == k][order], nodes[trials == k][order]
                t, ids = run.spikes(p, trial=k)
                assert t.dtype == np.float64 and ids.dtype == np.int64
                np.testing.assert_array_equal(t, exp_steps.astype(np.float64) * DT_MS)
                np.testing.assert_array_equal(ids, exp_nodes)
                trains = run.spike_trains(p, trial=k)
                assert len(trains) == n
                for i in (0, n - 1):
                    np.testing.assert_array_equal(trains[i], exp_steps[exp_nodes == i] * DT_MS)
                assert sum(x.size for x in trains) == exp_steps.size


def test_round_trip_report_signals_and_sonata_attrs(written):
    path, ref = written
    with read_run(path) as run:
        times, ids, data = run.report("exc")
        np.testing.assert_array_equal(ids, ref["rep_ids"])
        assert data.shape == (ref["n_steps"] // ref["rep_every"] + 1, 4, N_TRIALS)
        np.testing.assert_array_equal(data, ref["report"])
        np.testing.assert_allclose(times, np.arange(data.shape[0]) * ref["rep_every"] * DT_MS,
                                   rtol=0, atol=1e-12)
        assert run.signals == ["acc", "hub"]
        np.testing.assert_array_equal(run.signal("hub"), ref["hub"])
        np.testing.assert_array_equal(run.signal("acc"), ref["acc"])
        assert run.signal("acc").dtype == np.float64
        assert run.signal_attrs("acc")["kind"] == "conflict"
    with h5py.File(path, "r") as f:  # a closed file opens without SWMR flags
        assert int(f.attrs["magic"]) == 0x0A7A and f.attrs["magic"].dtype == np.uint32
        assert list(f.attrs["version"]) == [0, 1]
        g = f["spikes/exc"]
        assert h5py.check_enum_dtype(g.attrs.get_id("sorting").dtype) == {
            "none": 0, "by_id": 1, "by_time": 2}
        assert int(g.attrs["sorting"]) == 2
        assert (g["timestamps"].dtype, g["node_ids"].dtype, g["trial"].dtype) == (
            np.float64, np.uint64, np.uint32)
        m = f["report/exc/mapping"]
        np.testing.assert_array_equal(m["index_pointers"][:], [0, 2, 4, 6, 8])
        np.testing.assert_array_equal(m["element_ids"][:], [0, 1] * 4)
        assert f["report/exc/data"].dtype == np.float32
        assert json.loads(f["neurobit"].attrs["versions"]) == {"neurobit": "0.0.test"}
        assert f["neurobit/spike_counts/inh"].shape == (N_TRIALS, POPS["inh"])


def test_libsonata_reads_spikes_and_report(written):
    libsonata = pytest.importorskip("libsonata")
    path, ref = written
    reader = libsonata.SpikeReader(str(path))
    assert sorted(reader.get_population_names()) == sorted(POPS)
    with read_run(path) as run:
        for p in POPS:
            pop = reader[p]
            assert pop.sorting == "by_time" and pop.time_units == "ms"
            got = pop.get()
            t, ids = run.spikes(p)
            assert len(got) == t.size
            np.testing.assert_array_equal([g[0] for g in got], ids)
            np.testing.assert_array_equal([g[1] for g in got], t)
        times, ids, data = run.report("exc")
    rep = libsonata.ElementReportReader(str(path))
    assert rep.get_population_names() == ["exc"]
    pop = rep["exc"]
    tstart, tstop, tstep = pop.times
    assert (tstart, tstep) == (0.0, pytest.approx(ref["rep_every"] * DT_MS))
    assert pop.data_units == "mV" and pop.time_units == "ms" and pop.sorted
    assert pop.get_node_ids() == list(ref["rep_ids"])
    frame = pop.get()
    np.testing.assert_allclose(frame.times, times, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(frame.ids),
                                  [[i, k] for i in ref["rep_ids"] for k in range(N_TRIALS)])
    np.testing.assert_array_equal(np.asarray(frame.data), data.reshape(data.shape[0], -1))
    one = pop.get(node_ids=libsonata.Selection([7]))  # node 7 is the 3rd reported node
    np.testing.assert_array_equal(np.asarray(one.data), data[:, 2, :])


def test_refuses_existing_file_and_leaves_it_untouched(tmp_path):
    path = tmp_path / "out.h5"
    path.write_bytes(b"precious results")
    with pytest.raises(OutputExistsError) as err:
        RunWriter(path)
    assert isinstance(err.value, NeurobitError)
    assert str(path) in str(err.value) and "--force" in str(err.value)
    assert path.read_bytes() == b"precious results"
    with RunWriter(path, overwrite=True) as w:
        w.write_metadata(config_yaml="", seed=1, dt_ms=1.0, n_steps=4, n_trials=1, versions={})
        w.add_spike_population("p", 2)
        w.append_spikes("p", np.array([3]), np.array([1]), np.array([0]))
    with read_run(path) as run:
        assert run.complete and run.seed == 1
        np.testing.assert_array_equal(run.spikes("p")[0], [3.0])


def test_exception_in_context_leaves_incomplete_file_with_written_data(tmp_path):
    path = tmp_path / "fail.h5"
    with pytest.raises(RuntimeError, match="engine blew up"):
        with RunWriter(path, chunk_steps=10) as w:
            w.write_metadata(config_yaml="", seed=0, dt_ms=0.5, n_steps=100, n_trials=1,
                             versions={})
            w.add_spike_population("p", 3)
            w.append_spikes("p", np.array([0, 4, 9]), np.array([2, 0, 1]), np.zeros(3, int))
            w.mark_steps(10)
            w.append_spikes("p", np.array([12]), np.array([1]), np.array([0]))
            raise RuntimeError("engine blew up")
    with read_run(path) as run:
        assert run.complete is False
        assert run.steps_written == 13   # close(complete=False) still flushes the buffer
        np.testing.assert_array_equal(run.spikes("p")[0], [0.0, 2.0, 4.5, 6.0])
        np.testing.assert_array_equal(run.spike_counts("p"), [[1, 2, 1]])


def test_steps_written_tracks_writes_and_silent_tail(tmp_path):
    path = tmp_path / "s.h5"
    w = RunWriter(path, chunk_steps=20)
    w.write_metadata(config_yaml="", seed=0, dt_ms=1.0, n_steps=60, n_trials=1, versions={})
    w.add_spike_population("p", 1)
    w.append_spikes("p", np.array([5]), np.array([0]), np.array([0]))
    assert w.buffered_steps == 6 and w.n_writes == 0
    w.mark_steps(25)            # steps 6..24 were silent
    assert w.n_writes == 1 and w.buffered_steps == 0
    with h5py.File(path, "r", swmr=True) as f:  # readable while the writer is open
        assert int(f["neurobit"].attrs["steps_written"]) == 25
        assert f["spikes/p/timestamps"][:].tolist() == [5.0]
    w.close(complete=False)
    w.close()                   # second close does nothing
    with read_run(path) as run:
        assert run.steps_written == 25 and run.complete is False


def test_buffer_stays_bounded_when_the_run_is_10x_longer(tmp_path):
    def run(n_steps):
        rng = np.random.default_rng(1)
        w = RunWriter(tmp_path / f"b{n_steps}.h5", chunk_steps=100)
        w.write_metadata(config_yaml="", seed=0, dt_ms=1.0, n_steps=n_steps, n_trials=1,
                         versions={})
        w.add_spike_population("p", 50)
        w.add_report("p", np.arange(50), every_steps=1)
        peak = 0
        for t0 in range(0, n_steps, 10):        # the engine appends 10 steps at a time
            s, _, nd = np.nonzero(rng.random((10, 1, 50)) < 0.3)
            w.append_spikes("p", s + t0, nd, np.zeros_like(s))
            w.append_report("p", rng.random((10, 50, 1)))
            peak = max(peak, w.buffered_bytes)
        out = (w.max_buffered_steps, w.max_buffered_bytes, peak, w.n_writes)
        w.close()
        assert w.buffered_bytes == 0
        return out

    short, long_ = run(1_000), run(10_000)
    for max_steps, max_bytes, peak, _ in (short, long_):
        assert max_steps <= 100
        assert 0 < peak <= max_bytes
        # bound: 100 steps x 50 nodes x (20 bytes per spike + 4 bytes per report value)
        assert 0 < max_bytes <= 100 * 50 * 24
    assert short[3] == 10 and long_[3] == 100            # one write per 100 steps
    assert long_[1] <= 1.1 * short[1]                    # 10x the steps, same peak buffer
    with read_run(tmp_path / "b10000.h5") as r:
        assert r.report("p")[2].shape == (10_000, 50, 1)


def test_bad_input_raises_errors_naming_the_parameter(tmp_path):
    w = RunWriter(tmp_path / "bad.h5")
    with pytest.raises(NeurobitError, match="write_metadata"):
        w.add_spike_population("p", 3)
    with pytest.raises(ParameterError, match="dt_ms"):
        w.write_metadata(config_yaml="", seed=0, dt_ms=0.0, n_steps=1, n_trials=1, versions={})
    w.write_metadata(config_yaml="", seed=0, dt_ms=1.0, n_steps=100, n_trials=2, versions={})
    w.add_spike_population("p", 3)
    w.add_report("p", np.array([0, 2]), 1)
    with pytest.raises(ParameterError, match="already exists"):
        w.add_spike_population("p", 3)
    with pytest.raises(ParameterError, match="node_ids"):
        w.append_spikes("p", np.array([0]), np.array([3]), np.array([0]))
    with pytest.raises(ParameterError, match="trials"):
        w.append_spikes("p", np.array([0]), np.array([0]), np.array([2]))
    with pytest.raises(ShapeError, match="lengths differ"):
        w.append_spikes("p", np.array([0, 1]), np.array([0]), np.array([0]))
    w.append_spikes("p", np.array([5]), np.array([0]), np.array([0]))
    with pytest.raises(ParameterError, match="step order"):
        w.append_spikes("p", np.array([4]), np.array([0]), np.array([0]))
    with pytest.raises(ShapeError, match=r"\[k_samples, 2, 2\]"):
        w.append_report("p", np.zeros((1, 3, 2)))
    with pytest.raises(ParameterError, match="unknown spike population 'q'"):
        w.append_spikes("q", np.array([5]), np.array([0]), np.array([0]))
    w.close()
    with pytest.raises(NeurobitError, match="closed"):
        w.append_spikes("p", np.array([6]), np.array([0]), np.array([0]))
    with pytest.raises(ParameterError, match="chunk_steps"):
        RunWriter(tmp_path / "x.h5", chunk_steps=0)


def test_objects_added_after_data_was_written(tmp_path):
    """add_* after writes leaves SWMR mode, creates, and returns to it; nothing is lost."""
    path = tmp_path / "late.h5"
    with RunWriter(path, chunk_steps=5) as w:
        w.write_metadata(config_yaml="", seed=0, dt_ms=1.0, n_steps=20, n_trials=1, versions={})
        w.add_spike_population("a", 2)
        w.append_spikes("a", np.array([1, 6]), np.array([0, 1]), np.array([0, 0]))
        assert w.n_writes == 1
        w.add_signal("late", (2,), every_steps=10)
        w.add_spike_population("b", 4)
        w.append_spikes("a", np.array([7]), np.array([1]), np.array([0]))
        w.append_spikes("b", np.array([8]), np.array([3]), np.array([0]))
        w.append_signal("late", np.array([[1.0, 2.0], [3.0, 4.0]]))
        with h5py.File(path, "r", swmr=True) as f:   # back in SWMR mode after the add_* calls
            assert f["spikes/a/timestamps"][:].tolist() == [1.0, 6.0]
    with read_run(path) as run:
        assert run.populations == ["a", "b"]
        np.testing.assert_array_equal(run.spikes("a")[0], [1.0, 6.0, 7.0])
        np.testing.assert_array_equal(run.spike_counts("b"), [[0, 0, 0, 1]])
        np.testing.assert_array_equal(run.signal("late"), [[1.0, 2.0], [3.0, 4.0]])
