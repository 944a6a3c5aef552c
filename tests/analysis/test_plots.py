"""neurobit.analysis.plots: PNG written, one raster point per spike, data drawn = statistics."""
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from neurobit.analysis import firing_rates, psth  # noqa: E402
from neurobit.analysis import plots  # noqa: E402
from neurobit.errors import ParameterError  # noqa: E402

T0, T1 = 0.0, 2000.0
POPS = {"exc": range(0, 24), "inh": range(24, 30)}


@pytest.fixture(scope="module")
def trains():
    rng = np.random.default_rng(11)
    rates = np.r_[rng.uniform(2.0, 15.0, 24), rng.uniform(20.0, 50.0, 6)]
    return [np.sort(rng.uniform(T0, T1, rng.poisson(r * 2.0))) for r in rates]


def raster_lines(ax):
    return [ln for ln in ax.lines if (ln.get_gid() or "").startswith("raster:")]


def test_summary_figure_writes_png_with_every_spike(trains, tmp_path):
    path = tmp_path / "summary.png"
    fig = plots.summary_figure(trains, T0, T1, path=path, populations=POPS, bin_ms=10.0,
                               title="test")
    assert path.exists()
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # a 9x6 in figure with ~400 spikes, not an empty canvas
    ax_raster, ax_rate = fig.axes
    lines = raster_lines(ax_raster)
    assert [ln.get_gid() for ln in lines] == ["raster:exc", "raster:inh"]
    n_points = sum(len(ln.get_xdata()) for ln in lines)
    assert n_points == sum(t.size for t in trains)
    # inhibitory rows are stacked above the excitatory ones, in a different colour
    inh_rows = np.asarray(lines[1].get_ydata())
    assert inh_rows.min() >= 24 and inh_rows.max() <= 29
    assert lines[0].get_color() != lines[1].get_color()
    # the rate panel draws exactly the PSTH of each population
    rate_lines = {ln.get_gid(): ln for ln in ax_rate.lines}
    _, ref = psth([trains[i] for i in POPS["inh"]], 10.0, T0, T1)
    np.testing.assert_allclose(rate_lines["rate:inh"].get_ydata(), ref)


def test_raster_points_are_the_spike_times(trains):
    fig = plots.raster_plot(trains, T0, T1)
    (line,) = raster_lines(fig.axes[0])
    np.testing.assert_array_equal(line.get_xdata(), np.concatenate(trains))
    rows = np.repeat(np.arange(len(trains)), [t.size for t in trains])
    np.testing.assert_array_equal(line.get_ydata(), rows)


def test_isi_and_rate_histograms_count_everything(trains):
    fig = plots.isi_histogram(trains, T0, T1, bins=40)
    heights = sum(p.get_height() for p in fig.axes[0].patches)
    assert heights == sum(t.size - 1 for t in trains if t.size > 1)
    fig = plots.isi_histogram(trains, T0, T1, bins=20, log_x=True)
    assert fig.axes[0].get_xscale() == "log"
    fig = plots.rate_distribution(trains, T0, T1, bins=10)
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert sum(heights) == len(trains)
    counts, _ = np.histogram(firing_rates(trains, T0, T1), bins=10)
    np.testing.assert_array_equal(heights, counts)


def test_draws_into_given_axes_and_leaks_no_pyplot_state(trains):
    fig = plots.new_figure()
    ax = fig.add_subplot(1, 1, 1)
    assert plots.population_rate_plot(trains, 20.0, T0, T1, ax=ax) is fig
    if "matplotlib.pyplot" in sys.modules:  # only if something else imported pyplot
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


def test_bad_population_raises():
    with pytest.raises(ParameterError, match=r"populations\['x'\]"):
        plots.raster_plot([np.array([1.0])], 0.0, 10.0, populations={"x": [0, 3]})
