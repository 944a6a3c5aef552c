"""Incremental checkpoints: content-addressed tensors, so a save writes only what changed.

Layout of ``root``::

    objects/<sha256>.safetensors   one tensor per file (key "t"), named by its content hash
    manifests/<seq:08d>.json       {"tensors": {name: {"sha256", "dtype", "shape"}},
                                    "meta": {...}, "parent": <previous manifest or null>}
    HEAD                           text: the name of the current manifest

The hash of a tensor is ``sha256(dtype || shape || raw bytes)`` (little-endian, contiguous),
so a tensor that did not change between two saves maps to an object that already exists and
is not written again. Every file is written to a hidden temporary name, fsynced and moved into
place with ``os.replace`` (atomic on POSIX); objects first, then the manifest, then ``HEAD``.
A process killed at any point leaves ``HEAD`` naming a complete manifest whose objects all
exist (at worst some unreferenced objects or hidden temporaries, which :meth:`gc` removes).
Loading reads safetensors and JSON only and checks every hash (``verify=True``).
One writer per store at a time.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from neurobit._atomic import atomic_write, atomic_write_text
from neurobit.errors import NeurobitError, ParameterError

HEAD = "HEAD"


def tensor_sha256(t: torch.Tensor) -> str:
    """``sha256(dtype || shape || bytes)`` of a (CPU, contiguous) copy of ``t``."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{list(t.shape)}|".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class SaveInfo:
    """One :meth:`IncrementalStore.save`: the manifest name, the tensors whose content was new
    (written as objects), and the bytes written (objects + manifest)."""

    manifest: str
    written: list[str]
    bytes_written: int


class IncrementalStore:
    """Content-addressed checkpoint store (see the module docstring).

    Example::

        store = IncrementalStore("run/ckpt")
        info = store.save(model.state_dict(), meta={"step": 10})
        model.load_state_dict(store.load())
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.manifest_dir = self.root / "manifests"

    def _object(self, sha: str) -> Path:
        return self.objects / f"{sha}.safetensors"

    def manifests(self) -> list[str]:
        """Names of the complete manifests, oldest first."""
        if not self.manifest_dir.exists():
            return []
        return sorted(p.stem for p in self.manifest_dir.glob("[0-9]*.json"))

    def head(self) -> str | None:
        """The current manifest's name, or None for an empty store."""
        p = self.root / HEAD
        return p.read_text().strip() if p.exists() else None

    def save(self, state: dict[str, torch.Tensor], meta: dict | None = None) -> SaveInfo:
        """Write the tensors of ``state`` not yet stored, then a manifest, then move ``HEAD``."""
        if not state:
            raise ParameterError("state: nothing to save (empty state dict)")
        self.objects.mkdir(parents=True, exist_ok=True)
        self.manifest_dir.mkdir(parents=True, exist_ok=True)
        entries, written, nbytes = {}, [], 0
        for name, t in state.items():
            if not isinstance(t, torch.Tensor):
                raise ParameterError(f"state: {name!r} is not a tensor")
            t = t.detach().cpu().contiguous()
            sha = tensor_sha256(t)
            entries[name] = {"sha256": sha, "dtype": str(t.dtype).removeprefix("torch."),
                             "shape": list(t.shape)}
            obj = self._object(sha)
            if not obj.exists():
                nbytes += atomic_write(obj, lambda p, t=t: save_file({"t": t.clone()}, str(p)))
                written.append(name)
        names = self.manifests()
        seq = int(names[-1]) + 1 if names else 0
        name = f"{seq:08d}"
        body = json.dumps({"tensors": entries, "meta": meta or {}, "parent": self.head()},
                          indent=1, sort_keys=True)
        nbytes += atomic_write(self.manifest_dir / f"{name}.json", lambda p: Path(p).write_text(body))
        atomic_write_text(self.root / HEAD, name + "\n")
        return SaveInfo(name, written, nbytes)

    def manifest(self, name: str | None = None) -> dict:
        """The manifest ``name`` (default: ``HEAD``) as a dict."""
        name = name or self.head()
        if name is None:
            raise NeurobitError(f"checkpoint: {self.root} holds no checkpoint yet")
        p = self.manifest_dir / f"{name}.json"
        if not p.exists():
            raise ParameterError(f"manifest: {name!r} is not in {self.manifest_dir}")
        return json.loads(p.read_text())

    def load(self, name: str | None = None, verify: bool = True) -> dict[str, torch.Tensor]:
        """The state dict of manifest ``name`` (default ``HEAD``); ``verify`` re-hashes each."""
        out = {}
        for key, e in self.manifest(name)["tensors"].items():
            obj = self._object(e["sha256"])
            if not obj.exists():
                raise NeurobitError(f"checkpoint: object {obj.name} of {key!r} is missing")
            t = load_file(str(obj))["t"]
            if verify and tensor_sha256(t) != e["sha256"]:
                raise NeurobitError(f"checkpoint: object {obj.name} of {key!r} is corrupt "
                                    f"(hash mismatch)")
            out[key] = t
        return out

    def gc(self, keep: int | None = None) -> int:
        """Drop all but the last ``keep`` manifests (None: keep all), then every object and
        temporary file no kept manifest references. Returns the number of files removed."""
        names = self.manifests()
        removed = 0
        if keep is not None:
            if int(keep) < 1:
                raise ParameterError(f"keep: must be >= 1, got {keep}")
            for n in names[:-int(keep)]:
                (self.manifest_dir / f"{n}.json").unlink()
                removed += 1
            names = names[-int(keep):]
        live = {e["sha256"] for n in names for e in self.manifest(n)["tensors"].values()}
        for d in (self.objects, self.manifest_dir, self.root):
            for p in d.glob(".*.tmp-*") if d.exists() else ():
                p.unlink()
                removed += 1
        for p in self.objects.glob("*.safetensors") if self.objects.exists() else ():
            if p.stem not in live:
                p.unlink()
                removed += 1
        return removed
