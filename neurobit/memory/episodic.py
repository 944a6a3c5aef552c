"""Episodic buffer: persistent, crash-safe records of experience; selection of valuable ones.

One record (:class:`Episode`) per interaction::

    input_tokens   [T_in]  int32   what the model read
    state          [S]     float32 internal-state summary (e.g. mean spike rate per circuit)
    output_tokens  [T_out] int32   what the model produced
    label          [T_lab] int32 | None   target tokens (feedback as a correction), optional
    feedback       float | None    scalar feedback (reward / rating), optional
    conflict, uncertainty          ACC signals (floats)
    loss, surprise                 prediction loss (nats/token) and its surprise (z-score)
    session, time, meta            session name, UNIX time (s), JSON-able dict

Storage: SQLite (``sqlite3`` from the standard library) in WAL mode, one transaction per
:meth:`EpisodicBuffer.append` (or per :meth:`EpisodicBuffer.extend` batch). An id is returned
only after its transaction committed; SQLite's journal makes a commit all-or-nothing, so a
process killed at any instant loses no committed record and leaves a store that opens and
passes ``PRAGMA integrity_check``. ``synchronous="NORMAL"`` (default) survives process kills;
``"FULL"`` also survives an OS crash or power loss, at the cost of an fsync per commit.
HDF5 was measured as the alternative (:func:`benchmark_stores`; numbers in docs/memory.md):
it has no transactions, so a kill during a resize/flush can leave a file that does not open.

Arrays are stored as little-endian raw bytes (``<i4`` tokens, ``<f4`` state): no pickle.

Selection (:meth:`EpisodicBuffer.select`): with ``z(v)`` the z-score of a signal over the
candidate records (0 where the signal is constant), the value of record i is::

    score_i = w_loss * z(loss)_i + w_surprise * z(surprise)_i + w_conflict * z(conflict)_i

and the top-k by score (ties: the newer record first) are returned.
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from neurobit.errors import NeurobitError, ParameterError

FORMAT_VERSION = 1
SIGNALS = ("loss", "surprise", "conflict")
DEFAULT_WEIGHTS = {"loss": 1.0, "surprise": 1.0, "conflict": 1.0}
_SYNC = ("OFF", "NORMAL", "FULL")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS episodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    session TEXT NOT NULL,
    input_tokens BLOB NOT NULL,
    state BLOB NOT NULL,
    output_tokens BLOB NOT NULL,
    label BLOB,
    feedback REAL,
    conflict REAL NOT NULL,
    uncertainty REAL NOT NULL,
    loss REAL NOT NULL,
    surprise REAL NOT NULL,
    meta TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = ("id", "time", "session", "input_tokens", "state", "output_tokens", "label",
            "feedback", "conflict", "uncertainty", "loss", "surprise", "meta")


@dataclass
class Episode:
    """One interaction (see the module docstring for fields, dtypes and shapes).

    ``id`` is None until the record is stored; the buffer fills it in on read.
    """

    input_tokens: np.ndarray
    state: np.ndarray
    output_tokens: np.ndarray
    loss: float
    surprise: float = 0.0
    conflict: float = 0.0
    uncertainty: float = 0.0
    label: np.ndarray | None = None
    feedback: float | None = None
    session: str = ""
    time: float | None = None
    meta: dict = field(default_factory=dict)
    id: int | None = None


def _tokens(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ParameterError(f"{name}: expected a 1-d token array, got shape {list(a.shape)}")
    if a.size and (not np.issubdtype(a.dtype, np.integer) or a.min() < 0 or a.max() > 2**31 - 1):
        raise ParameterError(f"{name}: token ids must be integers in [0, 2^31), got {a.dtype}")
    return a.astype("<i4")


def _finite(x, name: str) -> float:
    v = float(x)
    if not math.isfinite(v):
        raise ParameterError(f"{name}: must be a finite float, got {x}")
    return v


def _row(ep: Episode) -> tuple:
    """Validated column values of ``ep`` (without id), in ``_COLUMNS[1:]`` order."""
    state = np.asarray(ep.state, dtype="<f4")
    if state.ndim != 1 or not np.isfinite(state).all():
        raise ParameterError(f"state: expected a finite 1-d vector, got shape {list(state.shape)}")
    label = None if ep.label is None else _tokens(ep.label, "label").tobytes()
    feedback = None if ep.feedback is None else _finite(ep.feedback, "feedback")
    try:
        meta = json.dumps(ep.meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ParameterError(f"meta: must be a JSON-able dict ({e})") from None
    return (float(time.time() if ep.time is None else ep.time), str(ep.session),
            _tokens(ep.input_tokens, "input_tokens").tobytes(), state.tobytes(),
            _tokens(ep.output_tokens, "output_tokens").tobytes(), label, feedback,
            _finite(ep.conflict, "conflict"), _finite(ep.uncertainty, "uncertainty"),
            _finite(ep.loss, "loss"), _finite(ep.surprise, "surprise"), meta)


def _episode(row: Sequence) -> Episode:
    d = dict(zip(_COLUMNS, row))
    tok = lambda b: np.frombuffer(b, dtype="<i4").astype(np.int64)  # noqa: E731
    return Episode(input_tokens=tok(d["input_tokens"]),
                   state=np.frombuffer(d["state"], dtype="<f4").copy(),
                   output_tokens=tok(d["output_tokens"]), loss=d["loss"],
                   surprise=d["surprise"], conflict=d["conflict"],
                   uncertainty=d["uncertainty"],
                   label=None if d["label"] is None else tok(d["label"]),
                   feedback=d["feedback"], session=d["session"], time=d["time"],
                   meta=json.loads(d["meta"]), id=int(d["id"]))


def value_scores(signals: dict[str, np.ndarray], weights: dict[str, float] | None = None
                 ) -> np.ndarray:
    """``sum_k w_k * z(signal_k)`` per record; ``z`` is the z-score (0 for a constant signal).

    ``signals``: ``{"loss": [n], "surprise": [n], "conflict": [n]}``; ``weights`` default 1 each.
    """
    weights = DEFAULT_WEIGHTS if weights is None else weights
    unknown = set(weights) - set(SIGNALS)
    if unknown:
        raise ParameterError(f"weights: unknown signals {sorted(unknown)}; choose from {SIGNALS}")
    n = len(next(iter(signals.values())))
    score = np.zeros(n)
    for k, w in weights.items():
        v = np.asarray(signals[k], dtype=np.float64)
        sd = v.std()
        if w and sd > 0:
            score += w * (v - v.mean()) / sd
    return score


class EpisodicBuffer:
    """A persistent store of :class:`Episode` records (SQLite, WAL). See the module docstring.

    Example::

        buf = EpisodicBuffer("run/episodes.sqlite")
        i = buf.append(Episode(np.array([3, 4]), np.zeros(8), np.array([5]), loss=2.1))
        best = buf.select(k=16)
        buf.close()
    """

    def __init__(self, path: str | Path, synchronous: str = "NORMAL", timeout_s: float = 30.0):
        if synchronous not in _SYNC:
            raise ParameterError(f"synchronous: choose one of {_SYNC}, got {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            with self._tx():
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    self._db.execute(stmt)
                self._db.execute("INSERT OR IGNORE INTO info VALUES ('format_version', ?)",
                                 (str(FORMAT_VERSION),))
        except sqlite3.DatabaseError as e:
            raise NeurobitError(f"path: {self.path} is not a readable episode store "
                                f"({e})") from None
        version = self._db.execute("SELECT value FROM info WHERE key='format_version'").fetchone()
        if int(version[0]) != FORMAT_VERSION:
            raise NeurobitError(f"path: {self.path} has store format {version[0]}, "
                                f"this neurobit reads {FORMAT_VERSION}")

    # -- transactions --------------------------------------------------------------------------
    class _Tx:
        def __init__(self, db):
            self.db = db

        def __enter__(self):
            self.db.execute("BEGIN IMMEDIATE")

        def __exit__(self, exc_type, *_):
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self) -> "_Tx":
        return self._Tx(self._db)

    # -- writing -------------------------------------------------------------------------------
    def append(self, episode: Episode) -> int:
        """Store one record in its own transaction; returns its id once committed."""
        return self.extend([episode])[0]

    def extend(self, episodes: Iterable[Episode]) -> list[int]:
        """Store records in one transaction (all or none); returns their ids once committed."""
        rows = [_row(e) for e in episodes]  # validate everything before writing anything
        q = f"INSERT INTO episodes ({', '.join(_COLUMNS[1:])}) VALUES ({', '.join('?' * 12)})"
        ids = []
        with self._tx():
            for r in rows:
                ids.append(int(self._db.execute(q, r).lastrowid))
        return ids

    # -- reading -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM episodes").fetchone()[0])

    def ids(self, session: str | None = None) -> list[int]:
        q, a = "SELECT id FROM episodes", ()
        if session is not None:
            q, a = q + " WHERE session=?", (session,)
        return [int(r[0]) for r in self._db.execute(q + " ORDER BY id", a)]

    def get(self, ids: Sequence[int]) -> list[Episode]:
        """Records by id, in the order given (missing ids raise ParameterError)."""
        ids = [int(i) for i in ids]
        found = {}
        for chunk in range(0, len(ids), 500):
            part = ids[chunk:chunk + 500]
            marks = ",".join("?" * len(part))
            q = f"SELECT {', '.join(_COLUMNS)} FROM episodes WHERE id IN ({marks})"
            for row in self._db.execute(q, part):
                found[int(row[0])] = _episode(row)
        missing = [i for i in ids if i not in found]
        if missing:
            raise ParameterError(f"ids: not in {self.path}: {missing[:10]}")
        return [found[i] for i in ids]

    def signals(self, session: str | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(ids [n], {"loss", "surprise", "conflict", "uncertainty": [n]})`` of the records."""
        q, a = "SELECT id, loss, surprise, conflict, uncertainty FROM episodes", ()
        if session is not None:
            q, a = q + " WHERE session=?", (session,)
        rows = np.array(self._db.execute(q + " ORDER BY id", a).fetchall(), dtype=np.float64)
        rows = rows.reshape(-1, 5)
        return rows[:, 0].astype(np.int64), {k: rows[:, j + 1] for j, k in
                                             enumerate(("loss", "surprise", "conflict",
                                                        "uncertainty"))}

    def select(self, k: int, weights: dict[str, float] | None = None,
               session: str | None = None) -> list[Episode]:
        """The ``k`` highest-value records by :func:`value_scores` (all records if fewer)."""
        if int(k) < 0:
            raise ParameterError(f"k: must be >= 0, got {k}")
        ids, sig = self.signals(session)
        if len(ids) == 0 or k == 0:
            return []
        score = value_scores(sig, weights)
        order = np.lexsort((-ids, -score))[:int(k)]  # score descending, then newer first
        return self.get(ids[order].tolist())

    def check(self) -> bool:
        """SQLite's ``integrity_check`` of the whole file (True when it reports ``ok``)."""
        return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "EpisodicBuffer":
        return self

    def __exit__(self, *_):
        self.close()


# -- measurement behind the storage choice ------------------------------------------------------
def _hdf5_append(path: Path, n: int, T: int, S: int, flush_each: bool) -> None:
    """Append ``n`` records to resizable HDF5 datasets (the alternative that was measured)."""
    import h5py
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        tok = f.create_dataset("input_tokens", (0, T), maxshape=(None, T), dtype="<i4",
                               chunks=(256, T))
        st = f.create_dataset("state", (0, S), maxshape=(None, S), dtype="<f4", chunks=(256, S))
        sc = f.create_dataset("signals", (0, 4), maxshape=(None, 4), dtype="<f8", chunks=(256, 4))
        for i in range(n):
            for d in (tok, st, sc):
                d.resize(i + 1, axis=0)
            tok[i] = rng.integers(0, 100, T)
            st[i] = rng.random(S)
            sc[i] = rng.random(4)
            if flush_each:
                f.flush()


def _sqlite_append(path: Path, n: int, T: int, S: int, synchronous: str, batch: int) -> None:
    rng = np.random.default_rng(0)
    with EpisodicBuffer(path, synchronous=synchronous) as buf:
        eps = [Episode(rng.integers(0, 100, T), rng.random(S), rng.integers(0, 100, 4),
                       loss=float(rng.random()), surprise=float(rng.random()))
               for _ in range(n)]
        for i in range(0, n, batch):
            buf.extend(eps[i:i + batch])


def benchmark_stores(directory: str | Path, n: int = 10_000, T: int = 64,
                     S: int = 16) -> dict[str, float]:
    """Seconds to append ``n`` records (``T`` tokens, ``S``-float state) in each candidate store.

    Keys: ``sqlite_normal_each`` / ``sqlite_full_each`` (one committed transaction per
    record, synchronous NORMAL / FULL), ``sqlite_normal_batch100``, ``hdf5_flush_each``
    (resize + flush per record; not transactional), ``hdf5_no_flush``.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    runs = {
        "sqlite_normal_each": lambda p: _sqlite_append(p, n, T, S, "NORMAL", 1),
        "sqlite_full_each": lambda p: _sqlite_append(p, n, T, S, "FULL", 1),
        "sqlite_normal_batch100": lambda p: _sqlite_append(p, n, T, S, "NORMAL", 100),
        "hdf5_flush_each": lambda p: _hdf5_append(p, n, T, S, True),
        "hdf5_no_flush": lambda p: _hdf5_append(p, n, T, S, False),
    }
    out = {}
    for name, fn in runs.items():
        p = d / f"bench_{name}.{'h5' if name.startswith('hdf5') else 'sqlite'}"
        for q in (p, Path(str(p) + "-wal"), Path(str(p) + "-shm")):
            if q.exists():
                os.remove(q)
        t0 = time.perf_counter()
        fn(p)
        out[name] = time.perf_counter() - t0
    return out


WRITER = ("import sys; from neurobit.memory.episodic import _writer; "
          "_writer(sys.argv[1], sys.argv[2], int(sys.argv[3]))")


def _writer(path: str, store: str, n: int) -> None:
    """Append ``n`` records to ``path``, printing each id (HDF5: row) once it is committed."""
    import sys
    rng = np.random.default_rng(os.getpid())
    if store == "sqlite":
        with EpisodicBuffer(path) as buf:
            for _ in range(n):
                i = buf.append(Episode(rng.integers(0, 100, 32), rng.random(8),
                                       rng.integers(0, 100, 4), loss=float(rng.random())))
                sys.stdout.write(f"{i}\n")
                sys.stdout.flush()
        return
    import h5py
    with h5py.File(path, "a") as f:
        if "state" not in f:
            f.create_dataset("state", (0, 8), maxshape=(None, 8), dtype="<f4", chunks=(64, 8))
        d = f["state"]
        for _ in range(n):
            i = d.shape[0]
            d.resize(i + 1, axis=0)
            d[i] = rng.random(8)
            f.flush()
            sys.stdout.write(f"{i}\n")
            sys.stdout.flush()


def kill_trials(directory: str | Path, store: str = "sqlite", trials: int = 10,
                seed: int = 0) -> dict[str, int]:
    """SIGKILL a writer process (:func:`_writer`) at random moments, ``trials`` times, on one
    growing store; count reopen failures and committed records that went missing.

    Returns ``{"trials", "open_failures", "lost_records", "committed"}``.
    """
    import signal
    import subprocess
    import sys
    if store not in ("sqlite", "hdf5"):
        raise ParameterError(f"store: choose 'sqlite' or 'hdf5', got {store!r}")
    rng = np.random.default_rng(seed)
    path = Path(directory) / f"kill.{'sqlite' if store == 'sqlite' else 'h5'}"
    committed: list[int] = []
    fails = lost = 0
    for _ in range(int(trials)):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), store, "1000000"],
                                stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline()  # the writer is running and has committed one record
        time.sleep(float(rng.uniform(0.05, 0.4)))
        proc.send_signal(signal.SIGKILL)
        out = proc.stdout.read()  # the rest, after what readline() buffered
        proc.wait()
        committed += [int(x) for x in (first + out).split()]
        try:
            if store == "sqlite":
                with EpisodicBuffer(path) as buf:
                    have = set(buf.ids())
                    fails += not buf.check()
            else:
                import h5py
                with h5py.File(path, "r") as f:
                    have = set(range(f["state"].shape[0]))
                    f["state"][...]
        except Exception:  # noqa: BLE001 - a store that does not open is what is counted
            fails += 1
            break
        lost += len(set(committed) - have)
    return {"trials": int(trials), "open_failures": fails, "lost_records": lost,
            "committed": len(committed)}

