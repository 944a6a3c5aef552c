"""read_run(path) -> Run: a read-only view of a file written by :class:`RunWriter`.

Works on complete files and on files left by a killed run (``complete`` is False). A killed
writer leaves the HDF5 "open for SWMR write" flag set, which a plain ``h5py.File(path)``
refuses ("file is already open for write"); the reader then opens it in SWMR-read mode. For
incomplete files every dataset is cut to its committed length (see ``docs/output_format.md``),
and spike counts are recomputed from the committed spikes.

Shapes: ``spikes`` -> ``(timestamps_ms [n] float64, node_ids [n] int64)``;
``spike_counts`` -> ``[n_trials, n_nodes]``; ``report`` -> ``(times_ms [n_samples],
node_ids [n_nodes], data [n_samples, n_nodes, n_trials])``.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from neurobit.errors import NeurobitError, ParameterError


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise NeurobitError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as plain:
        try:  # a writer killed in SWMR mode leaves the write flag set; SWMR-read ignores it
            return h5py.File(path, "r", swmr=True, locking=False)
        except OSError:
            raise NeurobitError(f"{path}: cannot be read as HDF5 ({plain})") from plain


def _text(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


class Run:
    """Read-only view of one run file; a context manager that closes the file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._f = _open(self.path)
        g = self._f.get("neurobit")
        self._a = dict(g.attrs) if g is not None else {}

    # ------------------------------------------------------------------ metadata
    @property
    def complete(self) -> bool:
        return bool(self._a.get("complete", False))

    @property
    def config_yaml(self) -> str:
        if "neurobit/config_yaml" in self._f:
            return _text(self._f["neurobit/config_yaml"][()])
        return _text(self._a.get("config_yaml", ""))

    seed = property(lambda self: int(self._a["seed"]))
    dt_ms = property(lambda self: float(self._a["dt_ms"]))
    n_steps = property(lambda self: int(self._a["n_steps"]))
    n_trials = property(lambda self: int(self._a.get("n_trials", 1)))
    duration_ms = property(lambda self: float(self._a["duration_ms"]))
    steps_written = property(lambda self: int(self._a.get("steps_written", 0)))
    created = property(lambda self: _text(self._a.get("created", "")))

    @property
    def versions(self) -> dict[str, str]:
        return json.loads(_text(self._a.get("versions", "{}")))

    @property
    def extra(self) -> dict:
        return json.loads(_text(self._a.get("extra", "{}")))

    # ------------------------------------------------------------------ spikes
    @property
    def populations(self) -> list[str]:
        return sorted(self._f["spikes"].keys()) if "spikes" in self._f else []

    def _pop(self, pop: str) -> h5py.Group:
        if pop not in self.populations:
            raise ParameterError(f"pop: unknown spike population {pop!r}; "
                                 f"known: {self.populations}")
        return self._f["spikes"][pop]

    def _n_spikes(self, g: h5py.Group) -> int:
        n = g["timestamps"].shape[0]
        if not self.complete and "n_committed" in g.attrs:
            n = min(n, int(g.attrs["n_committed"]))
        return n

    def n_nodes(self, pop: str) -> int:
        g = self._pop(pop)
        if "n_nodes" in g.attrs:
            return int(g.attrs["n_nodes"])
        ids = g["node_ids"][: self._n_spikes(g)]
        return int(ids.max()) + 1 if ids.size else 0

    def _raw_spikes(self, pop: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        g = self._pop(pop)
        n = self._n_spikes(g)
        t = g["timestamps"][:n].astype(np.float64)
        ids = g["node_ids"][:n].astype(np.int64)
        tr = g["trial"][:n].astype(np.int64) if "trial" in g else np.zeros(n, np.int64)
        if not self.complete:  # an interrupted run: only the steps it declared written
            keep = t < self.steps_written * self.dt_ms - 1e-9 * self.dt_ms
            t, ids, tr = t[keep], ids[keep], tr[keep]
        return t, ids, tr

    def spikes(self, pop: str, trial: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(timestamps_ms float64 [n], node_ids int64 [n])`` in time order, one trial or all."""
        t, ids, tr = self._raw_spikes(pop)
        if trial is None:
            return t, ids
        if not 0 <= int(trial) < self.n_trials:
            raise ParameterError(f"trial: must lie in [0, {self.n_trials}), got {trial}")
        keep = tr == int(trial)
        return t[keep], ids[keep]

    def spike_trains(self, pop: str, trial: int = 0) -> list[np.ndarray]:
        """One array of spike times (ms, increasing) per node ``0 .. n_nodes-1`` of ``trial``."""
        t, ids = self.spikes(pop, trial)
        order = np.argsort(ids, kind="stable")  # stable: keeps time order within a node
        bounds = np.searchsorted(ids[order], np.arange(self.n_nodes(pop) + 1))
        ts = t[order]
        return [ts[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]

    def spike_counts(self, pop: str) -> np.ndarray:
        """Spikes per trial and node, ``[n_trials, n_nodes]`` (int64)."""
        path = f"neurobit/spike_counts/{pop}"
        if self.complete and path in self._f:
            self._pop(pop)
            return self._f[path][...].astype(np.int64)
        _, ids, tr = self._raw_spikes(pop)
        n_nodes, n_trials = self.n_nodes(pop), self.n_trials
        return np.bincount(tr * n_nodes + ids, minlength=n_trials * n_nodes
                           ).reshape(n_trials, n_nodes).astype(np.int64)

    # ------------------------------------------------------------------ reports, signals
    @property
    def reports(self) -> list[str]:
        return sorted(self._f["report"].keys()) if "report" in self._f else []

    def report(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(times_ms [n_samples], node_ids [n_nodes], data [n_samples, n_nodes, n_trials])``."""
        if name not in self.reports:
            raise ParameterError(f"name: unknown report {name!r}; known: {self.reports}")
        g = self._f["report"][name]
        m = g["mapping"]
        t0, t1, dt = (float(x) for x in m["time"][:3])
        n = g["data"].shape[0]
        if dt > 0:
            n = min(n, int(round((t1 - t0) / dt)))
            if not self.complete:  # samples at steps < steps_written only
                n = min(n, max(0, int(np.ceil((self.steps_written * self.dt_ms - t0) / dt - 1e-9))))
        ids = m["node_ids"][...].astype(np.int64)
        ptr = m["index_pointers"][...].astype(np.int64)
        per = np.diff(ptr)
        if per.size and not np.all(per == per[0]):
            raise NeurobitError(f"{self.path}: report {name!r} has nodes with different element "
                                "counts; not a neurobit trial layout")
        n_trials = int(per[0]) if per.size else 0
        data = g["data"][:n].reshape(n, ids.size, n_trials)
        return t0 + np.arange(n) * dt, ids, data

    @property
    def signals(self) -> list[str]:
        p = "neurobit/signals"
        return sorted(self._f[p].keys()) if p in self._f else []

    def signal(self, name: str) -> np.ndarray:
        """``[n_samples, *shape]`` samples of signal ``name`` (sample k at step k*every_steps)."""
        if name not in self.signals:
            raise ParameterError(f"name: unknown signal {name!r}; known: {self.signals}")
        d = self._f["neurobit/signals"][name]
        n = d.shape[0]
        if not self.complete and "n_committed" in d.attrs:
            n = min(n, int(d.attrs["n_committed"]))
        return d[:n]

    def signal_attrs(self, name: str) -> dict:
        if name not in self.signals:
            raise ParameterError(f"name: unknown signal {name!r}; known: {self.signals}")
        return dict(self._f["neurobit/signals"][name].attrs)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def __repr__(self) -> str:
        state = "complete" if self.complete else "INCOMPLETE"
        return (f"Run({str(self.path)!r}, {state}, steps_written={self.steps_written}, "
                f"populations={self.populations}, reports={self.reports})")


def read_run(path: str | Path) -> Run:
    """Open a run file read-only (use as a context manager to close it)."""
    return Run(path)
