"""Keep torch's intra-op thread count across numba parallel kernels.

numba's OpenMP threading layer shares the process' OpenMP runtime with torch: the first
``parallel=True`` kernel sets the OpenMP thread count to numba's (all cores), silently
changing ``torch.get_num_threads()`` (measured: 1 -> 2 on this 2-core machine, and every later
torch op of a one-thread training process then ran 2 threads, 5x slower next to another
job). Every call into a parallel kernel goes through :func:`keep_torch_threads`.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def keep_torch_threads():
    """Run the block, then restore ``torch.get_num_threads()`` if the block changed it."""
    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
