"""numba kernels must not change torch's thread count, and the backward kernels (which take
a jitted surrogate) must work in a fresh process next to an on-disk numba cache."""
import os
import subprocess
import sys

SCRIPT = r"""
import sys, torch
torch.set_num_threads(1)
from neurobit.functional.lif import LIFParameters, initial_state
from neurobit.functional.lif_scan import lif_scan
dt = torch.float32 if sys.argv[1] == "32" else torch.float64
u = torch.randn(5, 3, 4, dtype=dt, requires_grad=True)
s, _ = lif_scan(u, initial_state((3, 4), dtype=dt), LIFParameters())
a = torch.get_num_threads()
(s * torch.arange(4.0, dtype=dt)).sum().backward()   # dense (not broadcast) incoming grad
print(a, torch.get_num_threads(), int(torch.isfinite(u.grad).all()))
"""


def test_torch_threads_kept_and_backward_in_fresh_processes(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "NUMBA_NUM_THREADS": "2"}
    for dtype in ("32", "64", "32"):   # a second process with another signature, then a third
        r = subprocess.run([sys.executable, "-c", SCRIPT, dtype], env=env, text=True,
                           capture_output=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.split() == ["1", "1", "1"]
