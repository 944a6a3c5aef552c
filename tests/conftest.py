"""Small shared fixtures: every test draws its randomness from an explicit seed."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/cli_runner.py, importable


@pytest.fixture
def gen() -> torch.Generator:
    """A torch generator seeded with 0 (one fresh generator per test)."""
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module (small models: one thread is faster and steadier on
    a busy 2-core machine). Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
