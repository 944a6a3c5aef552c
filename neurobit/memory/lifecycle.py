"""Perpetual training: model identity, a JSONL lifecycle log of every update, and its replay.

A model instance lives in a directory ``root``::

    identity.json          {"model_id": uuid4, "created": ISO-8601 UTC, "parent_id", "note"}
    lifecycle.jsonl        one JSON event per line (below), appended and fsynced
    data/<sha256>.safetensors   the tensors each update trained on, content-addressed
    checkpoints/           an :class:`~neurobit.memory.incremental.IncrementalStore`

Event (one line)::

    {"seq": n, "time": ISO-8601 UTC, "model_id": ..., "kind": "create" | <update kind>,
     "step": <updates so far>, "data_sha256": <hash of the update's tensors or null>,
     "lr": <float or null>, "params": {...}, "metrics": {...},
     "checkpoint": <manifest name>, "written": [<tensors that changed>]}

An update is a registered function ``fn(model, data: dict[str, Tensor], params: dict) -> dict``
(metrics) that changes ``model`` in place and depends only on its arguments (its randomness
seeded from ``params``). :meth:`Lifecycle.update` runs it, stores its data by hash, saves an
incremental checkpoint and appends the event; :func:`replay` loads the initial checkpoint and
re-runs every logged update from its stored data and params, so for deterministic updates the
final tensors equal the last checkpoint's (bit for bit on the same machine and thread count).

The data hash (:func:`tensors_sha256`) is the sha256 over the sorted tensor names and each
tensor's :func:`~neurobit.memory.incremental.tensor_sha256`. A torn last line of the log (a
process killed mid-write) is ignored on read and cut off before the next append.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from neurobit._atomic import atomic_write, atomic_write_text
from neurobit.errors import NeurobitError, ParameterError
from neurobit.memory.incremental import IncrementalStore, tensor_sha256

UpdateFn = Callable[[torch.nn.Module, dict, dict], dict]
UPDATES: dict[str, UpdateFn] = {}
IDENTITY, LOG, DATA, CHECKPOINTS = "identity.json", "lifecycle.jsonl", "data", "checkpoints"


def register_update(kind: str):
    """Decorator: register ``fn(model, data, params) -> metrics`` as update ``kind``."""
    def deco(fn: UpdateFn) -> UpdateFn:
        if kind == "create":
            raise ParameterError("kind: 'create' is reserved for the first event")
        UPDATES[kind] = fn
        return fn
    return deco


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def tensors_sha256(data: dict[str, torch.Tensor]) -> str:
    """sha256 over ``name || tensor_sha256`` for the names in sorted order."""
    h = hashlib.sha256()
    for k in sorted(data):
        h.update(f"{k}\0{tensor_sha256(data[k])}\0".encode())
    return h.hexdigest()


# -- the log -------------------------------------------------------------------------------------
def read_log(path: str | Path) -> list[dict]:
    """Events of a lifecycle log, in order. A torn (unterminated) last line is skipped; a bad
    line elsewhere raises NeurobitError naming the line number."""
    p = Path(path)
    if not p.exists():
        raise ParameterError(f"log: {p} does not exist")
    raw = p.read_bytes()
    lines = raw.split(b"\n")
    complete = lines[:-1]  # the piece after the last newline is empty or torn
    events = []
    for i, line in enumerate(complete, 1):
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise NeurobitError(f"log: {p} line {i} is not valid JSON ({e})") from None
    return events


class LifecycleLog:
    """Append-only JSONL event log (each line flushed and fsynced before ``append`` returns)."""

    def __init__(self, path: str | Path, model_id: str):
        self.path, self.model_id = Path(path), str(model_id)
        if self.path.exists():
            raw = self.path.read_bytes()
            if raw and not raw.endswith(b"\n"):  # torn line of a killed writer: cut it off
                with open(self.path, "rb+") as f:
                    f.truncate(raw.rfind(b"\n") + 1)
            for e in read_log(self.path):
                if e.get("model_id") != self.model_id:
                    raise NeurobitError(f"log: {self.path} has events of model "
                                        f"{e.get('model_id')}, not {self.model_id}")

    def events(self) -> list[dict]:
        return read_log(self.path) if self.path.exists() else []

    def append(self, kind: str, *, step: int, data_sha256: str | None = None,
               lr: float | None = None, params: dict | None = None,
               metrics: dict | None = None, **extra) -> dict:
        """Append one event (fields in the module docstring); returns it."""
        event = {"seq": len(self.events()), "time": _now(), "model_id": self.model_id,
                 "kind": kind, "step": int(step), "data_sha256": data_sha256,
                 "lr": None if lr is None else float(lr), "params": params or {},
                 "metrics": metrics or {}, **extra}
        try:
            line = json.dumps(event, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ParameterError(f"params/metrics: must be JSON-able finite values ({e})") from None
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        return event


# -- the data store ------------------------------------------------------------------------------
class DataStore:
    """Tensors of each update, by :func:`tensors_sha256` (safetensors, written atomically)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def put(self, data: dict[str, torch.Tensor]) -> str:
        sha = tensors_sha256(data)
        p = self.root / f"{sha}.safetensors"
        if not p.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            clean = {k: v.detach().cpu().contiguous().clone() for k, v in data.items()}
            atomic_write(p, lambda q: save_file(clean, str(q)))
        return sha

    def get(self, sha: str) -> dict[str, torch.Tensor]:
        p = self.root / f"{sha}.safetensors"
        if not p.exists():
            raise NeurobitError(f"data: {p} is missing (needed to replay the update)")
        data = load_file(str(p))
        if tensors_sha256(data) != sha:
            raise NeurobitError(f"data: {p} does not match its hash")
        return data


# -- the instance --------------------------------------------------------------------------------
class Lifecycle:
    """A model instance's directory: identity, log, update data and incremental checkpoints.

    Example::

        lc = Lifecycle.create("run/life", model)            # identity + 'create' event
        lc.update("consolidate", model, data, params)       # runs UPDATES['consolidate']
        replay("run/life", fresh_model)                     # -> the same tensors
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        p = self.root / IDENTITY
        if not p.exists():
            raise ParameterError(f"root: {self.root} has no {IDENTITY} (use Lifecycle.create)")
        self.identity = json.loads(p.read_text())
        self.model_id = self.identity["model_id"]
        self.log = LifecycleLog(self.root / LOG, self.model_id)
        self.data = DataStore(self.root / DATA)
        self.checkpoints = IncrementalStore(self.root / CHECKPOINTS)

    @classmethod
    def create(cls, root: str | Path, model: torch.nn.Module, parent_id: str | None = None,
               note: str = "", params: dict | None = None) -> "Lifecycle":
        """New identity (uuid4) in an empty ``root``, the initial checkpoint, a 'create' event.
        ``params`` (JSON) is logged with it, e.g. the model config and source checkpoint."""
        root = Path(root)
        if (root / IDENTITY).exists():
            raise ParameterError(f"root: {root} already holds model "
                                 f"{json.loads((root / IDENTITY).read_text())['model_id']}")
        root.mkdir(parents=True, exist_ok=True)
        ident = {"model_id": str(uuid.uuid4()), "created": _now(), "parent_id": parent_id,
                 "note": note}
        atomic_write_text(root / IDENTITY, json.dumps(ident, indent=1))
        lc = cls(root)
        info = lc.checkpoints.save(model.state_dict(), meta={"step": 0})
        lc.log.append("create", step=0, params=params, checkpoint=info.manifest,
                      written=info.written)
        return lc

    def events(self) -> list[dict]:
        return self.log.events()

    @property
    def step(self) -> int:
        """Number of updates logged so far."""
        ev = self.events()
        return ev[-1]["step"] if ev else 0

    def update(self, kind: str, model: torch.nn.Module, data: dict[str, torch.Tensor],
               params: dict, lr: float | None = None) -> dict:
        """Run update ``kind`` on ``model``, store its data, checkpoint, log; returns the event."""
        if kind not in UPDATES:
            raise ParameterError(f"kind: unknown update {kind!r}; registered: {sorted(UPDATES)}")
        json.dumps(params, allow_nan=False)  # refuse params that could not be replayed
        sha = self.data.put(data) if data else None
        metrics = UPDATES[kind](model, data, params)
        step = self.step + 1
        info = self.checkpoints.save(model.state_dict(), meta={"step": step, "kind": kind})
        if lr is None:
            lr = params.get("lr", metrics.get("lr"))
        return self.log.append(kind, step=step, data_sha256=sha, lr=lr, params=params,
                               metrics=metrics, checkpoint=info.manifest, written=info.written)

    def load_latest(self, model: torch.nn.Module) -> torch.nn.Module:
        """Load the last checkpoint into ``model`` (adapters attached where it has them)."""
        from neurobit.memory.lora import attach_from_state_dict
        state = self.checkpoints.load()
        attach_from_state_dict(model, state)
        model.load_state_dict(state)
        return model


def replay(root: str | Path, model: torch.nn.Module, upto: int | None = None,
           check_metrics: bool = True) -> torch.nn.Module:
    """Rebuild a model instance from its log: load the 'create' checkpoint into ``model`` (a
    fresh model of the same config), then re-run each update (``step <= upto``, default all)
    from its stored data and params. ``check_metrics``: raise if a replayed update reports
    different metrics than were logged (the first sign of a non-deterministic update)."""
    lc = Lifecycle(root)
    events = lc.events()
    if not events or events[0]["kind"] != "create":
        raise NeurobitError(f"log: {lc.log.path} does not start with a 'create' event")
    from neurobit.memory.lora import attach_from_state_dict
    state = lc.checkpoints.load(events[0]["checkpoint"])
    attach_from_state_dict(model, state)
    model.load_state_dict(state)
    for e in events[1:]:
        if upto is not None and e["step"] > upto:
            break
        if e["kind"] not in UPDATES:
            raise NeurobitError(f"log: event {e['seq']} has update kind {e['kind']!r}, which "
                                f"is not registered (import the module that defines it)")
        data = lc.data.get(e["data_sha256"]) if e["data_sha256"] else {}
        metrics = UPDATES[e["kind"]](model, data, e["params"])
        got = json.loads(json.dumps(metrics, sort_keys=True))
        if check_metrics and got != e["metrics"]:
            raise NeurobitError(f"replay: update {e['seq']} ({e['kind']}) gave metrics {got}, "
                                f"the log has {e['metrics']}")
    return model


def history_lines(root: str | Path) -> list[str]:
    """One human-readable line per event (for ``neurobit history``)."""
    lc = Lifecycle(root)
    out = [f"model {lc.model_id}  created {lc.identity['created']}"
           + (f"  parent {lc.identity['parent_id']}" if lc.identity.get("parent_id") else "")]
    for e in lc.events():
        m = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in sorted(e["metrics"].items()) if not isinstance(v, (list, dict)))
        data = f" data={e['data_sha256'][:12]}" if e.get("data_sha256") else ""
        lr = f" lr={e['lr']:.3g}" if e.get("lr") is not None else ""
        out.append(f"{e['seq']:4d} {e['time'][:19]} step {e['step']:4d} {e['kind']:<12}"
                   f"{lr}{data} ckpt={e.get('checkpoint')} changed={len(e.get('written', []))}"
                   + (f"  {m}" if m else ""))
    return out
