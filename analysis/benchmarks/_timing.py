"""Small timing helpers shared by the benchmarks in ``analysis/benchmarks``.

- :func:`time_round_robin` times several callables interleaved (one call of each per round), so
  slow drifts of a shared machine hit every contender alike; returns milliseconds per call.
- :func:`summarize` gives the median and the inter-quartile range (ms) of a list of samples.
- :func:`lm_rates`: prompt-processing and greedy-generation tokens/s of a language model through
  ``neurobit generate``'s step function and loop.
- :func:`machine_line` describes the machine and library versions for a results file.
"""
from __future__ import annotations

import gc
import platform
import time
from importlib import metadata
from typing import Callable, Mapping

import numpy as np
from neurobit.analysis.machine import cpu_model


def time_round_robin(fns: Mapping[str, Callable[[], object]], warmup: int,
                     repeats: int) -> dict[str, list[float]]:
    """Call every ``fns[name]()`` ``warmup`` times (untimed), then ``repeats`` timed rounds.

    Each round calls every function once, in the given order. Returns ``{name: [ms, ...]}``
    with ``repeats`` wall-clock samples (``time.perf_counter``) per function.
    """
    if repeats < 1:
        raise ValueError(f"repeats: must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup: must be >= 0, got {warmup}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return samples


def summarize(samples_ms: list[float]) -> tuple[float, float]:
    """``(median, IQR)`` in ms of the samples (IQR = 75th - 25th percentile)."""
    a = np.asarray(samples_ms, dtype=float)
    q25, q50, q75 = np.percentile(a, [25, 50, 75])
    return float(q50), float(q75 - q25)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_line(torch_threads: int, numba_threads: int, dists: tuple[str, ...]) -> str:
    """One line: CPU model, logical cores, Python and library versions, thread counts."""
    import os

    versions = ", ".join(f"{d} {_version(d)}" for d in dists)
    return (f"{cpu_model()}, {os.cpu_count()} logical cores; Python {platform.python_version()}; "
            f"{versions}; torch threads {torch_threads}, numba threads {numba_threads}")


def lm_rates(model, tokenizer, ids, n: int = 512, repeats: int = 3) -> tuple[float, float]:
    """``(prompt tokens/s, generation tokens/s)``, medians over ``repeats``: one pass over the
    first ``n`` of ``ids`` as a prompt, and ``n`` greedy tokens after a 16-token prompt through
    :func:`neurobit.decode.generate` (batch 1), after warm-up calls of both."""
    import torch
    from neurobit.decode import SamplingConfig, generate
    from neurobit.train.lm_step import lm_step_fn
    step = lm_step_fn(model, tokenizer)
    x = torch.as_tensor(np.asarray(ids[:n]).astype("int64"))
    greedy = SamplingConfig(do_sample=False)
    step(x[None, :8], None)
    generate(step, x[:16], 16, sampling=greedy)   # warm-up (kernels compiled, caches allocated)
    prompt, gen = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(x[None], None)
        prompt.append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        res = generate(step, x[:16], n, sampling=greedy)
        gen.append(len(res.tokens) / (time.perf_counter() - t0))
    return float(np.median(prompt)), float(np.median(gen))
