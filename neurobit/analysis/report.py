"""``neurobit report RUN.h5``: a per-population summary table and a raster/rate figure.

Statistics per population (trial ``trial``): units, spikes, mean rate (Hz), mean CV of ISI over
units with >= 2 intervals, Fano factor of spike counts across units, fraction of units active,
Treves-Rolls population sparsity averaged over 10 ms bins.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from neurobit.analysis import spike_stats as st

COLUMNS = ("population", "units", "spikes", "rate_hz", "cv_isi", "fano", "active", "sparsity")


def summarize(run, trial: int = 0, bin_ms: float = 10.0) -> list[dict]:
    """One dict per recorded population with the statistics of ``COLUMNS``."""
    t0, t1 = 0.0, recorded_ms(run)
    rows = []
    for pop in run.populations:
        trains = run.spike_trains(pop, trial)
        n_sp = int(sum(len(t) for t in trains))
        cv = st.cv_isi(trains, t0, t1)
        _, sparsity = st.population_sparsity(trains, min(bin_ms, t1), t0, t1)
        rows.append(dict(
            population=pop, units=len(trains), spikes=n_sp,
            rate_hz=float(st.mean_rate(trains, t0, t1)),
            cv_isi=float(np.nanmean(cv)) if np.isfinite(cv).any() else float("nan"),
            fano=float(st.fano_factor(trains, t0, t1)) if n_sp else float("nan"),
            active=float(np.mean([len(t) > 0 for t in trains])),
            sparsity=float(np.nanmean(sparsity)) if np.isfinite(sparsity).any() else float("nan"),
        ))
    return rows


def recorded_ms(run) -> float:
    """Duration covered by the file: all steps, or those written before an interruption."""
    return (run.n_steps if run.complete else run.steps_written) * run.dt_ms


def concat_populations(run, trial: int = 0) -> tuple[list[np.ndarray], dict[str, range]]:
    """All populations' trains stacked (in file order) and each population's row range."""
    trains, ranges, start = [], {}, 0
    for pop in run.populations:
        t = run.spike_trains(pop, trial)
        trains += t
        ranges[pop] = range(start, start + len(t))
        start += len(t)
    return trains, ranges


def print_report(path: str | Path, plot: str | Path | None = None, trial: int = 0) -> list[dict]:
    from rich.console import Console
    from rich.table import Table

    from neurobit.errors import ParameterError
    from neurobit.record import read_run

    with read_run(path) as run:
        if not 0 <= trial < run.n_trials:
            raise ParameterError(f"trial: must be in [0, {run.n_trials}), got {trial}")
        rows = summarize(run, trial)
        state = "complete" if run.complete else "INCOMPLETE (run was interrupted)"
        table = Table(title=f"{path}: {run.n_steps} steps x {run.dt_ms} ms, "
                            f"{run.n_trials} trial(s), trial {trial}, {state}")
        for c in COLUMNS:
            table.add_column(c, justify="left" if c == "population" else "right")
        for r in rows:
            table.add_row(*[r[c] if isinstance(r[c], str) else
                            (f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c])) for c in COLUMNS])
        Console().print(table)
        if plot is not None:
            from neurobit.analysis.plots import summary_figure
            trains, ranges = concat_populations(run, trial)
            if not trains:
                raise ParameterError(f"{path}: no spike population recorded; nothing to plot")
            t1 = recorded_ms(run)
            summary_figure(trains, 0.0, t1, path=plot, populations=ranges,
                           bin_ms=max(run.dt_ms, min(5.0, t1 / 50)),
                           title=f"{Path(path).name} (trial {trial})")
            Console().print(f"wrote {plot}")
    return rows
