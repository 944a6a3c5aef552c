"""RunWriter: stream a simulation run into one SONATA HDF5 file, crash-safe.

Layout (see ``docs/output_format.md``)::

    /                      attrs magic=0x0A7A (uint32), version=[0, 1] (uint32)
    /spikes/<pop>/timestamps   float64 [n_spikes]  ms, ``steps * dt_ms``; attr units="ms"
    /spikes/<pop>/node_ids     uint64  [n_spikes]
    /spikes/<pop>/trial        uint32  [n_spikes]  (neurobit extension)
    /spikes/<pop>              attr sorting = enum {none, by_id, by_time} = by_time
    /report/<name>/data        float32 [n_samples, n_nodes * n_trials], node-major elements
    /report/<name>/mapping/{node_ids, index_pointers, element_ids, time}
    /neurobit                  attrs complete, steps_written, seed, dt_ms, n_steps, ...
    /neurobit/config_yaml, /neurobit/spike_counts/<pop> [n_trials, n_nodes] (uint64),
    /neurobit/signals/<name>   [n_samples, *shape]

Crash safety. The file is created directly at ``path`` (HDF5 format 1.10) and runs in
HDF5 single-writer/multiple-reader (SWMR) mode whenever data are appended: HDF5 then orders
its metadata writes so that the file on disk is readable at every instant, even when the
process is killed mid-write. Objects (groups, datasets, attributes) are only created outside
SWMR mode: each ``write_metadata`` / ``add_*`` call leaves SWMR mode (close, reopen), creates,
flushes and enters SWMR mode again. Each write of buffered data happens in two flushes: the
data first, then the commit markers (``steps_written``, the spike counts, the report time
vector and per-dataset committed lengths). A reader of an incomplete file trusts only the
committed lengths, so data half-written at the moment of a kill are ignored.

Memory. Appended data are buffered and written when the buffered steps reach
``chunk_steps`` (or on :meth:`flush` / :meth:`close`); ``buffered_steps`` and
``buffered_bytes`` (and their ``max_*`` high-water marks) expose the buffer size.
"""
from __future__ import annotations

import datetime as _dt
import json
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from neurobit.errors import NeurobitError, ParameterError, ShapeError

SONATA_MAGIC = 0x0A7A
SONATA_VERSION = (0, 1)
SORTING_ENUM = h5py.enum_dtype({"none": 0, "by_id": 1, "by_time": 2}, basetype="i1")
SORTING_BY_TIME = 2
SPIKE_CHUNK = 1 << 16          # elements per chunk of the spike datasets
TARGET_CHUNK_BYTES = 1 << 20   # about 1 MiB per chunk of report / signal datasets
# File format bounds: SWMR needs >= 1.10; the upper bound keeps the file readable by HDF5
# 1.10-1.14 (libsonata's wheels bundle 1.14; HDF5 2.0's "latest" format is not readable there).
LIBVER = ("v110", "v110")


class OutputExistsError(NeurobitError, FileExistsError):
    """The output file exists and overwriting was not requested."""


class WriterClosedError(NeurobitError, RuntimeError):
    """A write to a RunWriter after :meth:`RunWriter.close`."""


def _rows_per_chunk(row_bytes: int) -> int:
    return max(1, TARGET_CHUNK_BYTES // max(1, row_bytes))


def _int_array(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ShapeError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ParameterError(f"{name}: expected integers, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def _sort_spikes(s, n, tr, n_trials: int, n_nodes: int):
    """Order spikes by (step, trial, node); a no-op for input already in that order (as
    ``torch.nonzero`` over a ``[k, trials, nodes]`` raster gives it)."""
    if int(s.max()) < np.iinfo(np.int64).max // (n_trials * n_nodes) - 1:
        key = (s * n_trials + tr) * n_nodes + n
        if key.size < 2 or np.all(key[1:] >= key[:-1]):
            return s, n, tr
        order = np.argsort(key, kind="stable")
    else:  # steps too large for one int64 key
        order = np.lexsort((n, tr, s))
    return s[order], n[order], tr[order]


class _SpikeBuffer:
    """Per-population spike buffer and running counts (``counts[trial, node]``)."""

    def __init__(self, n_nodes: int, n_trials: int):
        self.n_nodes, self.n_trials = n_nodes, n_trials
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.counts = np.zeros((n_trials, n_nodes), dtype=np.uint64)
        self.last_step = -1          # largest step appended so far
        self.written = 0             # spikes committed to disk

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes + n.nbytes + t.nbytes for s, n, t in self.parts)


class _SampleBuffer:
    """Per-report / per-signal buffer of samples (first axis = sample)."""

    def __init__(self, every_steps: int, shape: tuple[int, ...], dtype=np.float32):
        self.every_steps = every_steps
        self.shape = shape           # shape of one sample
        self.dtype = np.dtype(dtype)
        self.parts: list[np.ndarray] = []
        self.n_appended = 0          # samples appended so far (buffered + written)
        self.written = 0             # samples committed to disk

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def steps_covered(self) -> int:
        """Steps known to be done from the samples: sample k is taken at step k*every_steps."""
        return 0 if self.n_appended == 0 else (self.n_appended - 1) * self.every_steps + 1


class RunWriter:
    """Stream one run into a SONATA HDF5 file at ``path``.

    Args:
        path: output file; created directly there (no temporary file).
        overwrite: replace an existing file (the CLI's ``--force``); otherwise an existing
            file raises :class:`OutputExistsError` and is left untouched.
        chunk_steps: buffered steps that trigger a write to disk (>= 1).

    Call order: ``write_metadata`` first, then ``add_spike_population`` / ``add_report`` /
    ``add_signal``, then the ``append_*`` calls in nondecreasing step order, then
    ``close(complete=True)``. Used as a context manager, an exception closes the file with
    ``complete=False`` and is re-raised.
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False, chunk_steps: int = 1000):
        self.path = Path(path)
        if int(chunk_steps) < 1:
            raise ParameterError(f"chunk_steps: must be >= 1, got {chunk_steps}")
        self.chunk_steps = int(chunk_steps)
        if self.path.is_dir():
            raise ParameterError(f"path: {self.path} is a directory, expected a file name")
        if self.path.exists() and not overwrite:
            raise OutputExistsError(f"{self.path} already exists; use --force to overwrite it")
        self._meta: dict | None = None
        self._spikes: dict[str, _SpikeBuffer] = {}
        self._reports: dict[str, _SampleBuffer] = {}
        self._signals: dict[str, _SampleBuffer] = {}
        self._steps_marked = 0
        self._steps_flushed = 0
        self.steps_written = 0
        self.max_buffered_steps = 0
        self.max_buffered_bytes = 0
        self.n_writes = 0
        self._closed = False
        self._f = h5py.File(self.path, "w", libver=LIBVER)
        self._swmr = False
        self._f.attrs.create("magic", SONATA_MAGIC, dtype=np.uint32)
        self._f.attrs.create("version", np.asarray(SONATA_VERSION, dtype=np.uint32))
        g = self._f.create_group("neurobit")
        g.attrs.create("complete", False)
        g.attrs.create("steps_written", 0, dtype=np.int64)
        g.attrs["format"] = "neurobit-sonata"
        self._f.create_group("spikes")
        self._f.create_group("report")
        g.create_group("spike_counts")
        g.create_group("signals")
        self._f.flush()
        self._enter_swmr()

    # ------------------------------------------------------------------ mode switching
    def _enter_swmr(self) -> None:
        self._f.flush()
        self._f.swmr_mode = True
        self._swmr = True

    @contextmanager
    def _creating(self):
        """Leave SWMR mode (close and reopen) to create objects, then enter it again."""
        self._check_open()
        if self._swmr:
            self._f.close()
            self._f = h5py.File(self.path, "r+", libver=LIBVER)
            self._swmr = False
        yield self._f
        self._enter_swmr()

    def _check_open(self) -> None:
        if self._closed:
            raise WriterClosedError(f"RunWriter for {self.path} is closed")

    # ------------------------------------------------------------------ structure
    def write_metadata(self, *, config_yaml: str, seed: int, dt_ms: float, n_steps: int,
                       n_trials: int, versions: dict[str, str], extra: dict | None = None) -> None:
        """Store the run description in ``/neurobit`` attrs (and ``/neurobit/config_yaml``)."""
        if self._meta is not None:
            raise ParameterError("write_metadata: already written for this file")
        if not float(dt_ms) > 0:
            raise ParameterError(f"dt_ms: must be > 0, got {dt_ms}")
        if int(n_steps) < 0:
            raise ParameterError(f"n_steps: must be >= 0, got {n_steps}")
        if int(n_trials) < 1:
            raise ParameterError(f"n_trials: must be >= 1, got {n_trials}")
        meta = dict(seed=int(seed), dt_ms=float(dt_ms), n_steps=int(n_steps),
                    n_trials=int(n_trials), duration_ms=float(n_steps) * float(dt_ms))
        with self._creating() as f:
            g = f["neurobit"]
            for k, v in meta.items():
                g.attrs[k] = v
            g.attrs["config_yaml"] = str(config_yaml)
            g.attrs["versions"] = json.dumps(dict(versions), sort_keys=True)
            g.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            g.attrs["extra"] = json.dumps(extra or {}, sort_keys=True, default=str)
            g.create_dataset("config_yaml", data=str(config_yaml), dtype=h5py.string_dtype())
        self._meta = meta

    def _need_meta(self, what: str) -> dict:
        if self._meta is None:
            raise NeurobitError(f"{what}: call write_metadata first (it sets dt_ms and n_trials)")
        return self._meta

    def _check_new(self, name: str, table: dict, what: str) -> None:
        if not isinstance(name, str) or not name or "/" in name:
            raise ParameterError(f"name: {what} name must be a non-empty string without '/', "
                                 f"got {name!r}")
        if name in table:
            raise ParameterError(f"name: {what} {name!r} already exists")

    def add_spike_population(self, name: str, n_nodes: int) -> None:
        """Create ``/spikes/<name>`` (sorting=by_time) and ``/neurobit/spike_counts/<name>``."""
        meta = self._need_meta("add_spike_population")
        self._check_new(name, self._spikes, "spike population")
        if int(n_nodes) < 1:
            raise ParameterError(f"n_nodes: must be >= 1, got {n_nodes}")
        n_nodes, n_trials = int(n_nodes), meta["n_trials"]
        with self._creating() as f:
            g = f["spikes"].create_group(name)
            g.attrs.create("sorting", SORTING_BY_TIME, dtype=SORTING_ENUM)
            g.attrs.create("n_nodes", n_nodes, dtype=np.uint64)
            g.attrs.create("n_committed", 0, dtype=np.uint64)
            for key, dt in (("timestamps", np.float64), ("node_ids", np.uint64),
                            ("trial", np.uint32)):
                g.create_dataset(key, shape=(0,), maxshape=(None,), dtype=dt,
                                 chunks=(SPIKE_CHUNK,))
            g["timestamps"].attrs["units"] = "ms"
            g["trial"].attrs["description"] = "trial index of each spike (neurobit extension)"
            f["neurobit/spike_counts"].create_dataset(
                name, data=np.zeros((n_trials, n_nodes), dtype=np.uint64))
        self._spikes[name] = _SpikeBuffer(n_nodes, n_trials)

    def add_report(self, name: str, node_ids: np.ndarray, every_steps: int, variable: str = "v",
                   unit: str = "1") -> None:
        """Create the SONATA element report ``/report/<name>``.

        Each node owns ``n_trials`` elements, node-major (node 0 trial 0, node 0 trial 1, ...):
        ``element_ids`` = trial index, ``index_pointers = [0, n_trials, 2 n_trials, ...]``.
        Sample ``k`` is taken at step ``k * every_steps``; ``mapping/time = [0, n_samples *
        dt_ms * every_steps, dt_ms * every_steps]`` (ms, stop exclusive), updated on each write.
        """
        meta = self._need_meta("add_report")
        self._check_new(name, self._reports, "report")
        ids = _int_array(node_ids, "node_ids")
        if ids.size == 0:
            raise ParameterError("node_ids: must name at least one node")
        if ids.min() < 0:
            raise ParameterError(f"node_ids: must be >= 0, got {ids.min()}")
        if np.unique(ids).size != ids.size:
            raise ParameterError("node_ids: contains duplicates")
        if int(every_steps) < 1:
            raise ParameterError(f"every_steps: must be >= 1, got {every_steps}")
        every, n_trials, n = int(every_steps), meta["n_trials"], ids.size
        n_el = n * n_trials
        with self._creating() as f:
            g = f["report"].create_group(name)
            d = g.create_dataset("data", shape=(0, n_el), maxshape=(None, n_el), dtype=np.float32,
                                 chunks=(_rows_per_chunk(4 * n_el), n_el))
            d.attrs["units"] = str(unit)
            d.attrs["variable_name"] = str(variable)
            m = g.create_group("mapping")
            nd = m.create_dataset("node_ids", data=ids.astype(np.uint64))
            nd.attrs.create("sorted", np.uint8(bool(np.all(np.diff(ids) > 0))), dtype=np.uint8)
            m.create_dataset("index_pointers",
                             data=np.arange(n + 1, dtype=np.uint64) * np.uint64(n_trials))
            m.create_dataset("element_ids", data=np.tile(np.arange(n_trials, dtype=np.uint32), n))
            t = m.create_dataset("time", data=np.array([0.0, 0.0, meta["dt_ms"] * every]))
            t.attrs["units"] = "ms"
            m.attrs["element_ids_are"] = "trial index"
        self._reports[name] = _SampleBuffer(every, (n, n_trials))

    def add_signal(self, name: str, shape: tuple[int, ...], dtype="float32", every_steps: int = 1,
                   attrs: dict | None = None) -> None:
        """Create ``/neurobit/signals/<name>`` ``[n_samples, *shape]``; sample k is at step
        ``k * every_steps``."""
        self._check_open()
        self._check_new(name, self._signals, "signal")
        shape = tuple(int(s) for s in shape)
        if any(s < 1 for s in shape):
            raise ParameterError(f"shape: every dimension must be >= 1, got {shape}")
        if int(every_steps) < 1:
            raise ParameterError(f"every_steps: must be >= 1, got {every_steps}")
        dt = np.dtype(dtype)
        row = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        with self._creating() as f:
            d = f["neurobit/signals"].create_dataset(
                name, shape=(0, *shape), maxshape=(None, *shape), dtype=dt,
                chunks=(_rows_per_chunk(row), *shape))
            d.attrs.create("every_steps", int(every_steps), dtype=np.int64)
            d.attrs.create("n_committed", 0, dtype=np.uint64)
            if self._meta is not None:
                d.attrs["dt_ms"] = self._meta["dt_ms"] * int(every_steps)
            for k, v in (attrs or {}).items():
                d.attrs[k] = v
        self._signals[name] = _SampleBuffer(int(every_steps), shape, dt)

    # ------------------------------------------------------------------ appends
    def append_spikes(self, name: str, steps: np.ndarray, node_ids: np.ndarray,
                      trials: np.ndarray) -> None:
        """Buffer spikes: ``steps`` (0-based int step indices), ``node_ids``, ``trials`` [n].

        Spikes arrive in nondecreasing step order across calls; within a call any order
        (sorted here by (step, trial, node)). On disk ``timestamps = steps * dt_ms`` (float64).
        """
        self._check_open()
        if name not in self._spikes:
            raise ParameterError(f"name: unknown spike population {name!r}; "
                                 f"known: {sorted(self._spikes)}")
        buf = self._spikes[name]
        s = _int_array(steps, "steps")
        n = _int_array(node_ids, "node_ids")
        tr = _int_array(trials, "trials")
        if not (s.size == n.size == tr.size):
            raise ShapeError(f"steps, node_ids, trials: lengths differ ({s.size}, {n.size}, "
                             f"{tr.size})")
        if s.size:
            if s.min() < 0:
                raise ParameterError(f"steps: must be >= 0, got {s.min()}")
            if s.min() < buf.last_step:
                raise ParameterError(f"steps: population {name!r} got step {s.min()} after step "
                                     f"{buf.last_step}; spikes must arrive in step order")
            if n.min() < 0 or n.max() >= buf.n_nodes:
                raise ParameterError(f"node_ids: must lie in [0, {buf.n_nodes}) for {name!r}, "
                                     f"got [{n.min()}, {n.max()}]")
            if tr.min() < 0 or tr.max() >= buf.n_trials:
                raise ParameterError(f"trials: must lie in [0, {buf.n_trials}), got "
                                     f"[{tr.min()}, {tr.max()}]")
            s, n, tr = _sort_spikes(s, n, tr, buf.n_trials, buf.n_nodes)
            buf.parts.append((s, n.astype(np.uint64), tr.astype(np.uint32)))
            buf.counts += np.bincount(tr * buf.n_nodes + n,
                                      minlength=buf.n_trials * buf.n_nodes
                                      ).reshape(buf.n_trials, buf.n_nodes).astype(np.uint64)
            buf.last_step = int(s[-1])
        self._after_append()

    def append_report(self, name: str, data: np.ndarray) -> None:
        """Buffer report samples ``data [k_samples, n_nodes, n_trials]`` (stored as float32)."""
        self._check_open()
        if name not in self._reports:
            raise ParameterError(f"name: unknown report {name!r}; known: {sorted(self._reports)}")
        buf = self._reports[name]
        a = np.asarray(data)
        if a.ndim != 3 or a.shape[1:] != buf.shape:
            raise ShapeError(f"data: report {name!r} expects [k_samples, {buf.shape[0]}, "
                             f"{buf.shape[1]}], got {a.shape}")
        if a.shape[0]:
            buf.parts.append(np.ascontiguousarray(a, dtype=np.float32).reshape(a.shape[0], -1))
            buf.n_appended += a.shape[0]
        self._after_append()

    def append_signal(self, name: str, data: np.ndarray) -> None:
        """Buffer signal samples ``data [k_samples, *shape]``."""
        self._check_open()
        if name not in self._signals:
            raise ParameterError(f"name: unknown signal {name!r}; known: {sorted(self._signals)}")
        buf = self._signals[name]
        a = np.asarray(data)
        if a.ndim != 1 + len(buf.shape) or a.shape[1:] != buf.shape:
            raise ShapeError(f"data: signal {name!r} expects [k_samples, *{buf.shape}], "
                             f"got {a.shape}")
        if a.shape[0]:
            buf.parts.append(np.array(a, dtype=buf.dtype, copy=True))
            buf.n_appended += a.shape[0]
        self._after_append()

    def mark_steps(self, n_steps_done: int) -> None:
        """Tell the writer that steps ``[0, n_steps_done)`` have been simulated and all their
        data appended (call it after the ``append_*`` calls of an engine chunk).

        Optional: without it ``steps_written`` is inferred from the data of the slowest stream
        (last spike step + 1, last report / signal sample step + 1), which lags when the last
        steps of a population are silent.
        """
        self._check_open()
        if int(n_steps_done) < self._steps_marked:
            raise ParameterError(f"n_steps_done: went back from {self._steps_marked} to "
                                 f"{n_steps_done}")
        self._steps_marked = int(n_steps_done)
        self._after_append()

    # ------------------------------------------------------------------ buffer accounting
    def _progress(self) -> list[int]:
        """Per stream, a lower bound on the steps it has appended (spikes: last step + 1;
        reports / signals: last sample step + 1)."""
        return [*(b.last_step + 1 for b in self._spikes.values()),
                *(b.steps_covered() for b in (*self._reports.values(), *self._signals.values()))]

    @property
    def steps_done(self) -> int:
        """Furthest step any stream has reached (or ``mark_steps``): drives the buffering."""
        return max([self._steps_marked, *self._progress()])

    @property
    def steps_complete(self) -> int:
        """Steps whose data every stream has appended: ``mark_steps``, or the slowest stream.

        A lower bound (a stream silent at the end of a chunk lags); it never over-claims.
        This is what ``steps_written`` records after a write.
        """
        progress = self._progress()
        return max(self._steps_marked, min(progress) if progress else 0)

    @property
    def buffered_steps(self) -> int:
        """Steps appended but not yet written to the file."""
        return self.steps_done - self._steps_flushed

    @property
    def buffered_bytes(self) -> int:
        """Bytes of appended data held in memory (spikes, report and signal samples)."""
        bufs = (*self._spikes.values(), *self._reports.values(), *self._signals.values())
        return sum(b.nbytes for b in bufs)

    def _after_append(self) -> None:
        self.max_buffered_steps = max(self.max_buffered_steps, self.buffered_steps)
        self.max_buffered_bytes = max(self.max_buffered_bytes, self.buffered_bytes)
        if self.buffered_steps >= self.chunk_steps:
            self.flush()

    # ------------------------------------------------------------------ writing
    @staticmethod
    def _extend(ds: h5py.Dataset, data: np.ndarray) -> None:
        n0 = ds.shape[0]
        ds.resize(n0 + data.shape[0], axis=0)
        ds[n0:] = data

    def flush(self) -> None:
        """Write all buffered data, then commit: counts, report times, ``steps_written``.

        Two ``File.flush()`` calls: after the data, and after the commit markers, so the
        markers on disk never claim data that are not on disk.
        """
        self._check_open()
        f, dt_ms = self._f, (self._meta or {}).get("dt_ms", 1.0)
        for name, b in self._spikes.items():
            if b.parts:
                s = np.concatenate([p[0] for p in b.parts])
                g = f["spikes"][name]
                self._extend(g["timestamps"], s.astype(np.float64) * dt_ms)
                self._extend(g["node_ids"], np.concatenate([p[1] for p in b.parts]))
                self._extend(g["trial"], np.concatenate([p[2] for p in b.parts]))
                b.written += s.size
                b.parts.clear()
        for table, prefix in ((self._reports, "report/{}/data"),
                              (self._signals, "neurobit/signals/{}")):
            for name, b in table.items():
                if b.parts:
                    a = np.concatenate(b.parts)
                    self._extend(f[prefix.format(name)], a)
                    b.written += a.shape[0]
                    b.parts.clear()
        f.flush()
        # commit markers
        for name, b in self._spikes.items():
            f["neurobit/spike_counts"][name][...] = b.counts
            f["spikes"][name].attrs.modify("n_committed", np.uint64(b.written))
        for name, b in self._reports.items():
            tstep = dt_ms * b.every_steps
            f[f"report/{name}/mapping/time"][...] = np.array([0.0, b.written * tstep, tstep])
        for name, b in self._signals.items():
            f[f"neurobit/signals/{name}"].attrs.modify("n_committed", np.uint64(b.written))
        self._steps_flushed = self.steps_done
        self.steps_written = self.steps_complete
        f["neurobit"].attrs.modify("steps_written", np.int64(self.steps_written))
        f.flush()
        self.n_writes += 1

    def close(self, complete: bool = True) -> None:
        """Flush, then set ``/neurobit.complete`` (only if ``complete``) and close the file.

        ``complete=True`` declares the run finished: ``steps_written`` becomes at least
        ``n_steps``. Closing twice does nothing.
        """
        if self._closed:
            return
        try:
            self.flush()
            g = self._f["neurobit"]
            for name in self._spikes:       # set at creation; checked here
                if "sorting" not in self._f["spikes"][name].attrs:
                    self._f["spikes"][name].attrs.create("sorting", SORTING_BY_TIME,
                                                         dtype=SORTING_ENUM)
            if complete:
                n_steps = (self._meta or {}).get("n_steps", 0)
                self.steps_written = max(self.steps_written, n_steps)
                g.attrs.modify("steps_written", np.int64(self.steps_written))
                g.attrs.modify("complete", True)
            self._f.flush()
        finally:
            self._closed = True
            self._f.close()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close(complete=True)
        else:
            try:
                self.close(complete=False)
            except Exception:  # noqa: BLE001 - the original exception matters more
                pass
        return False
