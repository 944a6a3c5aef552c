"""Small shared fixtures: every test draws its randomness from an explicit seed."""
import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A torch generator seeded with 0 (one fresh generator per test)."""
    return torch.Generator().manual_seed(0)
