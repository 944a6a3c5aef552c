"""Stimuli: spike sources (Poisson, spike files, images, text) and injected currents.

Each stimulus yields, for steps ``[t0, t0 + k)``, a tensor ``[k, trials, n]``: spikes in
{0, 1} for spike sources, or the current added to each unit of its target (``n = 1``,
broadcast). Randomness comes from a ``torch.Generator`` owned by the engine (seeded), so the
same config and seed give the same stimulus. Step ``t`` covers ``[t dt, (t + 1) dt)`` ms.
"""
from __future__ import annotations

import csv
import math
import string
from pathlib import Path

import numpy as np
import torch

from neurobit.errors import ConfigError
from neurobit.functional.encoding import latency_code, rate_code, regular_code, spike_probability

PRINTABLE = string.printable[:95]  # digits, letters, punctuation, space


def _window(start_ms: float, stop_ms: float | None, t0: int, k: int, dt_ms: float) -> torch.Tensor:
    """Bool ``[k]``: step t is on when ``start_ms <= t dt < stop_ms``."""
    t = (torch.arange(t0, t0 + k, dtype=torch.float64)) * dt_ms
    on = t >= start_ms
    if stop_ms is not None:
        on &= t < stop_ms
    return on


def load_image(source: str) -> np.ndarray:
    """Image as float64 [H, W] in [0, 1] from ``digits:<i>``, ``fashion_mnist:<train|test>:<i>``
    or ``mnist_10k:<train|test>:<i>`` (the data sets of ``neurobit.train.images``), or a
    ``.npy`` file (no pickle)."""
    kind = source.split(":", 1)[0]
    if kind in ("fashion_mnist", "mnist_10k"):
        from neurobit.train.images import load_images
        parts = source.split(":")
        if len(parts) != 3 or parts[1] not in ("train", "test") or not parts[2].isdigit():
            raise ConfigError(f"image {source}: expected {kind}:<train|test>:<index>")
        split = getattr(load_images(kind), parts[1])
        i = int(parts[2])
        if i >= len(split.labels):
            raise ConfigError(f"image {source}: index must be 0..{len(split.labels) - 1}")
        return split.as_float(i).astype(np.float64).reshape(28, 28)
    if source.startswith("digits:"):
        from sklearn.datasets import load_digits  # bundled 8x8 digits (CC BY 4.0)
        idx = source.split(":", 1)[1]
        images = load_digits().images
        if not idx.isdigit() or int(idx) >= len(images):
            raise ConfigError(f"digits index must be 0..{len(images) - 1}, got {idx!r}")
        return images[int(idx)] / 16.0
    try:
        arr = np.load(source, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read image {source}: {e}") from None
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2:
        raise ConfigError(f"image {source}: expected a 2-D array, got shape {list(arr.shape)}")
    return arr / 255.0 if arr.max() > 1.0 else arr


def text_vocab(stim) -> str:
    return stim.vocab if stim.vocab else PRINTABLE


def _text(stim) -> str:
    return stim.text if stim.text is not None else Path(stim.path).read_text(encoding="utf-8")


def read_spike_file(stim, dt_ms: float) -> tuple[np.ndarray, np.ndarray]:
    """(steps, node_ids) from a CSV ``time_ms,node_id`` or a neurobit/SONATA .h5 file."""
    path = Path(stim.path)
    if path.suffix in (".h5", ".hdf5", ".sonata"):
        import h5py
        with h5py.File(path, "r") as f:
            pops = list(f.get("spikes", {}).keys())
            pop = stim.population or (pops[0] if len(pops) == 1 else None)
            if pop is None or pop not in pops:
                raise ConfigError(f"{path}: name the spike population (one of {pops})")
            times = f[f"spikes/{pop}/timestamps"][()]
            ids = f[f"spikes/{pop}/node_ids"][()].astype(np.int64)
    else:
        times_l, ids_l = [], []
        with path.open(newline="") as fh:
            rows = csv.reader(fh)
            header = next(rows, None)
            if header is None or [h.strip() for h in header[:2]] != ["time_ms", "node_id"]:
                raise ConfigError(f"{path}:1: expected the CSV header 'time_ms,node_id'")
            for line, row in enumerate(rows, start=2):
                try:
                    times_l.append(float(row[0]))
                    ids_l.append(int(row[1]))
                except (ValueError, IndexError):
                    raise ConfigError(f"{path}:{line}: expected 'time_ms,node_id', got {row}") from None
        times, ids = np.asarray(times_l, np.float64), np.asarray(ids_l, np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= stim.size):
        raise ConfigError(f"{path}: node_id {int(ids.max())} out of range for size {stim.size}")
    if times.size and times.min() < 0:
        raise ConfigError(f"{path}: negative spike time {times.min()} ms")
    return np.floor(times / dt_ms + 1e-9).astype(np.int64), ids


class StimulusSource:
    """A stimulus bound to a run: ``chunk(t0, k)`` -> ``[k, trials, n]``."""

    def __init__(self, name: str, stim, *, dt_ms: float, trials: int, dtype: torch.dtype,
                 generator: torch.Generator):
        self.name, self.stim, self.dt_ms, self.trials, self.dtype = name, stim, dt_ms, trials, dtype
        self.gen = generator
        self.kind = stim.type
        if self.kind == "spike_file":
            self._steps, self._ids = read_spike_file(stim, dt_ms)
        elif self.kind == "image":
            self._img = torch.as_tensor(load_image(stim.source).reshape(-1))
        elif self.kind == "text":
            vocab = text_vocab(stim)
            text = _text(stim)
            bad = sorted({c for c in text if c not in vocab})
            if bad:
                raise ConfigError(f"stimuli.{name}: characters {bad[:5]} are not in the vocabulary")
            self._tokens = torch.tensor([vocab.index(c) for c in text], dtype=torch.int64)
            self._vocab = vocab
        self.size = self._size()

    def _size(self) -> int:
        s = self.stim
        return {"poisson": lambda: s.size, "spike_file": lambda: s.size,
                "image": lambda: int(self._img.numel()), "text": lambda: len(self._vocab),
                "current": lambda: 1}[self.kind]()

    @property
    def is_current(self) -> bool:
        return self.kind == "current"

    def chunk(self, t0: int, k: int) -> torch.Tensor:
        s, dt = self.stim, self.dt_ms
        shape = (k, self.trials, self.size)
        if self.kind == "poisson":
            p = s.rate_hz * dt / 1000.0
            on = _window(s.start_ms, s.stop_ms, t0, k, dt).view(k, 1, 1)
            return ((torch.rand(shape, generator=self.gen, dtype=torch.float64) < p) & on).to(self.dtype)
        if self.kind == "current":
            on = _window(s.start_ms, s.stop_ms, t0, k, dt).view(k, 1, 1)
            return (on.to(self.dtype) * s.amplitude).expand(k, self.trials, 1)
        if self.kind == "spike_file":
            out = torch.zeros(shape, dtype=self.dtype)
            sel = (self._steps >= t0) & (self._steps < t0 + k)
            out[torch.as_tensor(self._steps[sel] - t0), :, torch.as_tensor(self._ids[sel])] = 1
            return out
        if self.kind == "image":
            inten = self._img.to(torch.float64)
            if s.encoding == "latency":  # repeats every window, phase from the absolute step
                fire = latency_code(inten, k, s.window_ms, dt, s.min_intensity, t0, self.dtype)
                return fire.unsqueeze(1).expand(shape).contiguous()
            p = spike_probability(inten, s.max_rate_hz, dt).expand(self.trials, -1)
            if s.encoding == "rate":
                return rate_code(p, k, self.gen, self.dtype)
            return regular_code(p, k, t0, self.dtype)
        # text: token index changes every token_ms
        per = max(1, int(round(s.token_ms / dt)))
        idx = (torch.arange(t0, t0 + k) // per)
        active = idx < len(self._tokens)
        tok = self._tokens[idx.clamp_max(len(self._tokens) - 1)]
        onehot = torch.nn.functional.one_hot(tok, self.size).to(self.dtype) * active.view(k, 1).to(self.dtype)
        return onehot.unsqueeze(1).expand(shape).contiguous()
