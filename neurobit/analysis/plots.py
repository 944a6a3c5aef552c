"""Spike-train figures: raster, population rate, ISI histogram, rate distribution, summary.

Every function builds on a ``matplotlib.figure.Figure`` with an Agg canvas, never on pyplot, so
no global figure state is created or leaked (nothing to close, safe in tests and servers). Each
function returns the Figure; pass ``ax=`` to draw into an existing Axes instead (the Axes'
figure is returned). Times are in ms, rates in Hz.

``populations`` (optional everywhere) is an ordered mapping ``name -> neuron indices`` (a list,
array, ``range`` or ``slice``); populations are stacked from bottom to top in that order, each
in its own colour. ``None`` means one population ``"all"`` holding every neuron.

Raster points are ``Line2D`` artists with gid ``"raster:<population>"`` (one point per spike).
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib import colormaps

from neurobit.analysis.spike_stats import as_trains, firing_rates, isi, psth
from neurobit.errors import ParameterError

Populations = Mapping[str, "Sequence[int] | slice | range"]


def new_figure(width_in: float = 8.0, height_in: float = 4.0, dpi: int = 100) -> Figure:
    """A Figure with its own Agg canvas (not registered with pyplot)."""
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _axes(ax: Axes | None, **fig_kwargs) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = new_figure(**fig_kwargs)
    return fig, fig.add_subplot(1, 1, 1)


def resolve_populations(populations: Populations | None, n: int) -> list[tuple[str, np.ndarray]]:
    """``[(name, int64 indices)]`` in order; checks every index lies in ``[0, n)``."""
    if populations is None:
        return [("all", np.arange(n))]
    out = []
    for name, sel in populations.items():
        idx = np.arange(n)[sel] if isinstance(sel, slice) else np.asarray(list(sel), dtype=np.int64)
        if idx.ndim != 1:
            raise ParameterError(f"populations[{name!r}] must be a 1-D list of neuron indices")
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ParameterError(
                f"populations[{name!r}] has indices outside [0, {n}): [{idx.min()}, {idx.max()}]"
            )
        out.append((str(name), idx))
    return out


def _colors(k: int, colors: Sequence | None) -> list:
    if colors is not None:
        if len(colors) < k:
            raise ParameterError(f"colors needs one entry per population ({k}), got {len(colors)}")
        return list(colors)
    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(k)]


def raster_plot(trains: Sequence, t_start_ms: float, t_stop_ms: float,
                populations: Populations | None = None, colors: Sequence | None = None,
                ax: Axes | None = None, marker_size: float | None = None) -> Figure:
    """Spike raster: one point per spike at (time ms, row); populations stacked and coloured.

    Rows count up from 0 across populations in the order given; the y axis is labelled with
    the population names at the middle of their blocks. ``marker_size`` (points) defaults to
    a size that fills the row height for up to ~50 neurons and shrinks for more.
    """
    trains = as_trains(trains, t_start_ms, t_stop_ms)
    pops = resolve_populations(populations, len(trains))
    cols = _colors(len(pops), colors)
    fig, ax = _axes(ax)
    n_rows = sum(idx.size for _, idx in pops)
    if marker_size is None:
        marker_size = float(np.clip(250.0 / max(n_rows, 1), 1.0, 6.0))
    row0, ticks, labels = 0, [], []
    for (name, idx), color in zip(pops, cols):
        sel = [trains[i] for i in idx]
        t = np.concatenate(sel) if sel else np.zeros(0)
        rows = row0 + np.repeat(np.arange(len(sel)), [s.size for s in sel])
        (line,) = ax.plot(t, rows, linestyle="none", marker="|", markersize=marker_size,
                          markeredgewidth=0.8, color=color, label=name)
        line.set_gid(f"raster:{name}")
        ticks.append(row0 + (len(sel) - 1) / 2.0)
        labels.append(name)
        row0 += len(sel)
    ax.set_xlim(float(t_start_ms), float(t_stop_ms))
    ax.set_ylim(-0.5, max(row0, 1) - 0.5)
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels)
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("neuron")
    return fig


def population_rate_plot(trains: Sequence, bin_ms: float, t_start_ms: float, t_stop_ms: float,
                         populations: Populations | None = None, colors: Sequence | None = None,
                         ax: Axes | None = None) -> Figure:
    """Population-averaged rate (Hz) per bin of ``bin_ms``, one step line per population.

    Each line is :func:`neurobit.analysis.psth` of that population (gid ``"rate:<population>"``).
    """
    trains = as_trains(trains, t_start_ms, t_stop_ms)
    pops = resolve_populations(populations, len(trains))
    cols = _colors(len(pops), colors)
    fig, ax = _axes(ax)
    for (name, idx), color in zip(pops, cols):
        if idx.size == 0:
            continue
        edges, rate = psth([trains[i] for i in idx], bin_ms, t_start_ms, t_stop_ms)
        (line,) = ax.plot(edges[:-1], rate, drawstyle="steps-post", color=color, label=name)
        line.set_gid(f"rate:{name}")
    ax.set_xlim(float(t_start_ms), float(t_stop_ms))
    ax.set_xlabel("time (ms)")
    ax.set_ylabel(f"rate (Hz, {bin_ms:g} ms bins)")
    if len(pops) > 1:
        ax.legend(loc="upper right", fontsize="small")
    return fig


def isi_histogram(trains: Sequence, t_start_ms: float, t_stop_ms: float, bins: int = 50,
                  max_isi_ms: float | None = None, log_x: bool = False,
                  ax: Axes | None = None) -> Figure:
    """Histogram of the pooled inter-spike intervals (ms) of all trains.

    ``max_isi_ms`` caps the range (default: the largest interval); ``log_x`` uses log-spaced bins.
    """
    trains = as_trains(trains, t_start_ms, t_stop_ms)
    d = np.concatenate([isi(t) for t in trains]) if trains else np.zeros(0)
    fig, ax = _axes(ax, width_in=5.0, height_in=3.5)
    if d.size:
        hi = float(max_isi_ms) if max_isi_ms is not None else float(d.max())
        if log_x:
            lo = max(float(d[d > 0].min()) if np.any(d > 0) else 1e-3, 1e-3)
            edges = np.geomspace(lo, max(hi, lo * 1.001), bins + 1)
            ax.set_xscale("log")
        else:
            edges = np.linspace(0.0, max(hi, 1e-9), bins + 1)
        ax.hist(d, bins=edges, color="0.3", gid="isi_hist")
    ax.set_xlabel("inter-spike interval (ms)")
    ax.set_ylabel("count")
    return fig


def rate_distribution(trains: Sequence, t_start_ms: float, t_stop_ms: float, bins: int = 30,
                      ax: Axes | None = None) -> Figure:
    """Histogram of per-neuron firing rates (Hz) over the window."""
    r = firing_rates(trains, t_start_ms, t_stop_ms)
    fig, ax = _axes(ax, width_in=5.0, height_in=3.5)
    if r.size:
        ax.hist(r, bins=bins, color="0.3", gid="rate_hist")
    ax.set_xlabel("firing rate (Hz)")
    ax.set_ylabel("neurons")
    return fig


def summary_figure(trains: Sequence, t_start_ms: float, t_stop_ms: float,
                   path: str | os.PathLike | None = None, populations: Populations | None = None,
                   bin_ms: float = 5.0, title: str | None = None, dpi: int = 100) -> Figure:
    """Raster (top) over population rate (bottom) on a shared time axis; saves a PNG to ``path``."""
    fig = new_figure(9.0, 6.0, dpi=dpi)
    grid = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    ax_raster = fig.add_subplot(grid[0])
    ax_rate = fig.add_subplot(grid[1], sharex=ax_raster)
    raster_plot(trains, t_start_ms, t_stop_ms, populations=populations, ax=ax_raster)
    population_rate_plot(trains, bin_ms, t_start_ms, t_stop_ms, populations=populations,
                         ax=ax_rate)
    ax_raster.set_xlabel("")
    ax_raster.tick_params(labelbottom=False)
    if title:
        ax_raster.set_title(title)
    if path is not None:
        fig.savefig(os.fspath(path), format="png", dpi=dpi, bbox_inches="tight")
    return fig
