"""Atomic file writes: write to a hidden temporary file next to the target, fsync it, move it
into place with ``os.replace`` (atomic on POSIX), fsync the folder. A crash leaves either the
old file or the new one, never a half-written file under the final name."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write) -> int:
    """Call ``write(tmp_path)``, fsync it, move it to ``path``; returns the bytes written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        size = tmp.stat().st_size
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return size


def atomic_write_text(path: str | Path, text: str) -> int:
    return atomic_write(path, lambda p: Path(p).write_text(text))


def atomic_write_json(path: str | Path, obj) -> int:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=float))
