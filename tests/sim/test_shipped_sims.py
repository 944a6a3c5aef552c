"""Every shipped circuit in sims/ validates and runs as shipped; the E/I network is asynchronous
and irregular (CV of ISI near 1, weak pairwise correlation)."""
from pathlib import Path

import numpy as np
import pytest

from neurobit.analysis import correlation, spike_stats
from neurobit.config.loader import load_circuit
from neurobit.record import read_run
from neurobit.sim.run import simulate

SIMS = sorted((Path(__file__).parents[2] / "sims").glob("*.yaml"))


def test_there_are_shipped_sims():
    names = {p.stem for p in SIMS}
    assert {"poisson_microcircuit", "ei_balanced", "microcircuit_bank"} <= names


@pytest.mark.parametrize("path", SIMS, ids=lambda p: p.stem)
def test_shipped_sim_runs_complete(path, tmp_path):
    cfg = load_circuit(path)
    out = tmp_path / f"{path.stem}.h5"
    summary = simulate(cfg, out)
    with read_run(out) as run:
        assert run.complete
        assert run.n_steps == round(cfg.duration_ms / cfg.dt_ms)
        assert set(run.populations) == set(cfg.monitors.spikes)
        for pop in run.populations:
            counts = run.spike_counts(pop)
            assert counts.shape == (cfg.trials, cfg.populations[pop].size * cfg.populations[pop].circuits)
            np.testing.assert_array_equal(counts, summary.spike_counts[pop])
            assert counts.sum() > 0, f"{pop} is silent"


def test_ei_network_is_asynchronous_irregular(tmp_path):
    cfg = load_circuit(Path(__file__).parents[2] / "sims" / "ei_balanced.yaml")
    out = tmp_path / "ei.h5"
    simulate(cfg, out)
    t1 = cfg.duration_ms
    with read_run(out) as run:
        trains = run.spike_trains("exc", 0)
    # discard the first 100 ms (transient from the uniform initial membrane)
    trains = [t[t >= 100.0] for t in trains]
    rate = spike_stats.mean_rate(trains, 100.0, t1)
    cv = np.nanmean(spike_stats.cv_isi(trains, 100.0, t1))
    assert 5.0 < rate < 100.0, rate
    assert 0.8 < cv < 1.3, cv  # Poisson-like irregularity
    cc = correlation.correlation_matrix(trains[:100], 5.0, 100.0, t1)
    off = cc[~np.eye(len(cc), dtype=bool)]
    assert np.nanmean(off) < 0.1, np.nanmean(off)  # asynchronous: weak pairwise correlation


def test_shipped_fmnist_classifier_classifies_its_image(tmp_path):
    """The trained Fashion-MNIST classifier shipped as a circuit: its readout membrane after
    the last step names the label written in the file's header, and every LIF layer fires."""
    import re

    from neurobit.models.classifier_export import predicted_class
    path = Path(__file__).parents[2] / "sims" / "fmnist_classifier.yaml"
    label = int(re.search(r"\(label (\d)\)", path.read_text()).group(1))
    cfg = load_circuit(path)
    simulate(cfg, tmp_path / "fmnist.h5")
    with read_run(tmp_path / "fmnist.h5") as run:
        _, _, v = run.report(run.reports[0])
        assert v.shape == (6, 10, 1)
        assert predicted_class(v[..., 0]) == label
        for pop in ("layer1", "layer2", "layer3"):
            rate = run.spike_counts(pop).sum() / (cfg.populations[pop].size * 6)
            assert 0.005 < rate < 0.5, (pop, rate)
