"""A writer killed with SIGKILL leaves a readable file holding every step it reported written.

A child process streams a deterministic run (data drawn from ``default_rng([seed, chunk])``)
and prints ``steps_written`` after each engine chunk. The test waits until enough steps are
reported, kills the child at different moments (often in the middle of a write), then reads
the file with ``read_run`` and compares it with the data regenerated from the seed.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from neurobit.record import read_run

N_NODES, N_TRIALS, K, EVERY, REP_NODES = 2000, 2, 50, 2, 300

CHILD = textwrap.dedent(f"""
    import sys
    import numpy as np
    from neurobit.record import RunWriter

    N_NODES, N_TRIALS, K, EVERY, REP_NODES = {N_NODES}, {N_TRIALS}, {K}, {EVERY}, {REP_NODES}

    def chunk(seed, c):
        rng = np.random.default_rng([seed, c])
        s, tr, nd = np.nonzero(rng.random((K, N_TRIALS, N_NODES)) < 0.05)
        rep = rng.standard_normal((K // EVERY, REP_NODES, N_TRIALS)).astype(np.float32)
        sig = rng.standard_normal((K, 4)).astype(np.float32)
        return s + c * K, tr, nd, rep, sig

    if __name__ == "__main__":
        path, seed = sys.argv[1], int(sys.argv[2])
        w = RunWriter(path, chunk_steps=K)
        w.write_metadata(config_yaml="crash: test", seed=seed, dt_ms=0.5, n_steps=10**9,
                         n_trials=N_TRIALS, versions={{}})
        w.add_spike_population("exc", N_NODES)
        w.add_report("exc", np.arange(REP_NODES) * 3, EVERY)
        w.add_signal("hub", (4,))
        for c in range(10**6):
            s, tr, nd, rep, sig = chunk(seed, c)
            w.append_spikes("exc", s, nd, tr)
            w.append_report("exc", rep)
            w.append_signal("hub", sig)
            w.mark_steps((c + 1) * K)
            print(w.steps_written, flush=True)
""")


def _expected(script, seed: int, n_chunks: int):
    """The child's data for chunks [0, n_chunks), from the child's own generator."""
    spec = importlib.util.spec_from_file_location("crash_child", script)
    child = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(child)
    parts = [child.chunk(seed, c) for c in range(n_chunks)]
    steps, trials, nodes, rep, sig = (np.concatenate(x) for x in zip(*parts))
    return steps, trials, nodes, rep, sig


@pytest.mark.parametrize("delay_s", [0.0, 0.011, 0.029, 0.13])
def test_sigkill_leaves_every_reported_step_readable(tmp_path, delay_s):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    path, seed, want_steps = tmp_path / "run.h5", 7, 12 * K
    proc = subprocess.Popen([sys.executable, str(script), str(path), str(seed)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ})
    reported, t_end = 0, time.monotonic() + 60
    try:
        while reported < want_steps:
            line = proc.stdout.readline()
            assert line, f"child exited early with code {proc.poll()}"
            reported = int(line)
            assert time.monotonic() < t_end, "child too slow"
        if delay_s == 0.13:   # the file is readable while the writer is still running
            with read_run(path) as live:
                assert live.complete is False and live.steps_written >= want_steps
        time.sleep(delay_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # lines printed before the kill (the child may have gone further than we read)
        for line in proc.stdout.read().split():
            reported = max(reported, int(line))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    with read_run(path) as run:
        assert run.complete is False
        assert run.config_yaml == "crash: test" and run.seed == seed and run.dt_ms == 0.5
        written = run.steps_written
        assert written >= reported and written % K == 0
        steps, trials, nodes, rep, sig = _expected(script, seed, written // K + 3)
        # spikes: an exact prefix of the generated stream in (step, trial, node) order
        t, ids = run.spikes("exc")
        n = t.size
        assert n >= np.count_nonzero(steps < written)   # nothing claimed is missing
        np.testing.assert_array_equal(t, steps[:n] * 0.5)
        np.testing.assert_array_equal(ids, nodes[:n])
        counts = np.zeros((N_TRIALS, N_NODES), np.int64)
        np.add.at(counts, (trials[:n], nodes[:n]), 1)
        np.testing.assert_array_equal(run.spike_counts("exc"), counts)
        assert counts.sum() >= np.count_nonzero(steps < reported) > 0
        # report and signal: prefixes of the generated samples covering the written steps
        times, rep_ids, data = run.report("exc")
        assert data.shape[0] >= written // EVERY
        np.testing.assert_array_equal(data, rep[: data.shape[0]])
        np.testing.assert_array_equal(times, np.arange(data.shape[0]) * EVERY * 0.5)
        np.testing.assert_array_equal(rep_ids, np.arange(REP_NODES) * 3)
        hub = run.signal("hub")
        assert hub.shape[0] >= written
        np.testing.assert_array_equal(hub, sig[: hub.shape[0]])
