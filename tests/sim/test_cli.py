"""``neurobit simulate`` / ``report`` end to end on the shipped circuits.

A run writes a complete SONATA file with the configured populations and the resolved config;
an existing output is refused (exit 2, file untouched) unless ``--force``; ``report`` prints a
table and writes a figure; a run killed with SIGKILL leaves a readable, incomplete file.
"""
from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from neurobit.config.loader import load_circuit
from neurobit.config.schema import CircuitConfig
from neurobit.record import read_run

from cli_runner import invoke

REPO = Path(__file__).resolve().parents[2]
SIMS = REPO / "sims"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("sim", ["poisson_microcircuit", "microcircuit_bank"])
def test_simulate_shipped_circuit(sim, tmp_path):
    cfg_path = SIMS / f"{sim}.yaml"
    out = tmp_path / "out.h5"
    r = invoke("simulate", cfg_path, "-o", out, "--set", "duration_ms=200", "-q")
    assert r.exit_code == 0, r.stderr
    assert f"wrote {out}" in r.stdout
    cfg = load_circuit(cfg_path, ["duration_ms=200"])
    n_steps = int(round(200 / cfg.dt_ms))
    with read_run(out) as run:
        assert run.complete
        assert run.steps_written == run.n_steps == n_steps
        assert run.n_trials == cfg.trials and run.seed == cfg.seed and run.dt_ms == cfg.dt_ms
        assert run.populations == sorted(cfg.monitors.spikes)
        total = 0
        for pop in cfg.monitors.spikes:
            p = cfg.populations[pop]
            assert run.n_nodes(pop) == p.size * p.circuits
            counts = run.spike_counts(pop)
            assert counts.shape == (cfg.trials, p.size * p.circuits)
            t, ids = run.spikes(pop)
            assert counts.sum() == t.size > 0
            assert t.min() >= 0 and t.max() < 200.0 and ids.max() < p.size * p.circuits
            total += int(counts.sum())
        assert f"'{cfg.monitors.spikes[0]}': " in r.stdout and str(total) in r.stdout
        # the resolved config is stored and equals the config that ran (overrides included)
        stored = CircuitConfig.model_validate(yaml.safe_load(run.config_yaml))
        assert stored == cfg and stored.duration_ms == 200
        for m in cfg.monitors.state:
            _, node_ids, data = run.report(m.population)
            assert list(node_ids) == list(m.indices)
            assert data.shape == (n_steps // m.every_steps, len(m.indices), cfg.trials)


def test_existing_output_needs_force(tmp_path):
    cfg_path = SIMS / "poisson_microcircuit.yaml"
    out = tmp_path / "out.h5"
    assert invoke("simulate", cfg_path, "-o", out, "--set", "duration_ms=50", "-q").exit_code == 0
    before, mtime = digest(out), out.stat().st_mtime_ns
    r = invoke("simulate", cfg_path, "-o", out, "--set", "duration_ms=60", "--set", "seed=9", "-q")
    assert r.exit_code == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("neurobit: error: ")
    assert str(out) in lines[0] and "--force" in lines[0]
    assert digest(out) == before and out.stat().st_mtime_ns == mtime
    r = invoke("simulate", cfg_path, "-o", out, "--set", "duration_ms=60", "--set", "seed=9",
               "--force", "-q")
    assert r.exit_code == 0, r.stderr
    assert digest(out) != before
    with read_run(out) as run:
        assert run.complete and run.seed == 9 and run.n_steps == 60


def test_report_table_and_plot(tmp_path):
    out = tmp_path / "out.h5"
    r = invoke("simulate", SIMS / "ei_balanced.yaml", "-o", out, "--set", "duration_ms=200", "-q")
    assert r.exit_code == 0, r.stderr
    fig = tmp_path / "fig.png"
    r = invoke("report", out, "--plot", fig)
    assert r.exit_code == 0, r.stderr
    for word in ("exc", "inh", "population", "rate_hz", "cv_isi", "complete"):
        assert word in r.stdout, word
    assert "INCOMPLETE" not in r.stdout
    # the table's unit counts are the configured sizes
    assert "800" in r.stdout and "200" in r.stdout
    data = fig.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    # report on something that is not a run: one line, exit 2
    r = invoke("report", tmp_path / "missing.h5")
    assert r.exit_code == 2 and r.stderr.startswith("neurobit: error: ")
    assert len(r.stderr.splitlines()) == 1


def test_killed_run_leaves_a_readable_incomplete_file(tmp_path):
    """SIGKILL in the middle of a long run: the file opens, says incomplete, and holds every
    chunk committed before the kill."""
    out = tmp_path / "killed.h5"
    chunk = 50
    cmd = [sys.executable, "-m", "neurobit.cli", "simulate",
           str(SIMS / "poisson_microcircuit.yaml"), "-o", str(out), "-q",
           "--set", "duration_ms=10000000", "--set", f"chunk_steps={chunk}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        seen = 0
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if not out.exists():
                continue
            try:
                with read_run(out) as run:
                    seen = run.steps_written
            except Exception:  # the writer may be between SWMR sessions; poll again
                continue
            if seen >= 2 * chunk:
                break
        assert proc.poll() is None, proc.stderr.read().decode()
        assert seen >= 2 * chunk, "no chunk reached the disk within 60 s"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with read_run(out) as run:
        assert not run.complete
        n = run.steps_written
        assert seen <= n < run.n_steps == 10_000_000
        t, ids = run.spikes("circuit")
        assert t.size > 0 and np.all(np.diff(t) >= 0)
        # committed data reach at least steps_written, and at most one chunk beyond it (the
        # writer commits each stream of a chunk in its own flush; see the report)
        assert n * run.dt_ms - chunk < t.max() < (n + chunk) * run.dt_ms
        assert run.spike_counts("circuit").sum() == t.size
        times, node_ids, data = run.report("circuit")
        assert n <= data.shape[0] <= n + chunk and list(node_ids) == [0, 1, 2, 3, 4]
        assert np.isfinite(data).all() and np.ptp(data) > 0
