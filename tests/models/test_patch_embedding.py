"""Image patches: patch order, 2D rotary positions (norms, relative offsets), 1D position."""
import math

import pytest
import torch

from neurobit.errors import ParameterError, ShapeError
from neurobit.models.embedding import sinusoidal_positions
from neurobit.models.patch_embedding import (PatchEmbedding, image_to_patches, patch_grid,
                                             rotary_2d, rotate_pairs)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_patches_row_major_hand_case():
    img = torch.arange(16.0).reshape(1, 1, 4, 4)
    p = image_to_patches(img, 2)
    expected = torch.tensor([[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]])
    assert torch.equal(p[0], expected.float())
    two = torch.stack((torch.arange(4.0), 10 + torch.arange(4.0))).reshape(1, 2, 2, 2)
    assert image_to_patches(two, 2)[0, 0].tolist() == [0, 1, 2, 3, 10, 11, 12, 13]  # channel-first
    rows, cols = patch_grid(2, 3)
    assert rows.tolist() == [0, 0, 0, 1, 1, 1] and cols.tolist() == [0, 1, 2, 0, 1, 2]


def test_rotate_pairs_hand_case():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    pos = torch.tensor([0.0, math.pi / 2, math.pi])
    out = rotate_pairs(x, pos, base=100.0)         # one pair: angle = pos
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -2.0]]),
                               atol=1e-6, rtol=0)


def test_rotary_2d_preserves_norms_and_depends_on_relative_positions():
    torch.manual_seed(0)
    a, b = torch.randn(1, 8), torch.randn(1, 8)

    def dot(i, j, i2, j2):
        ra = rotary_2d(a, torch.tensor([i]), torch.tensor([j]))
        rb = rotary_2d(b, torch.tensor([i2]), torch.tensor([j2]))
        return float((ra * rb).sum())

    x = torch.randn(6, 8)
    rows, cols = patch_grid(2, 3)
    torch.testing.assert_close(rotary_2d(x, rows, cols).norm(dim=-1), x.norm(dim=-1))
    d0 = dot(1, 2, 3, 0)
    assert dot(4, 7, 6, 5) == pytest.approx(d0, abs=1e-5)          # same (di, dj) = (2, -2)
    assert abs(dot(1, 2, 3, 1) - d0) > 1e-3                         # another column offset
    assert abs(dot(1, 2, 1, 0) - dot(1, 2, 3, 2)) > 1e-3            # rows and cols differ


def test_patch_embedding_is_rotated_projection_plus_sequence_position():
    torch.manual_seed(1)
    emb = PatchEmbedding(channels=3, patch=4, d=16)
    img = torch.rand(2, 3, 8, 12)                                   # 2 x 3 = 6 patches
    out = emb(img, pos0=5)
    assert out.shape == (2, 6, 16)
    proj = emb.proj(image_to_patches(img, 4))
    rows, cols = patch_grid(2, 3)
    ref = rotary_2d(proj, rows, cols, 100.0) + sinusoidal_positions(torch.arange(5, 11), 16).float()
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    shift = emb(img, pos0=9) - out                                  # only the 1D term moves
    ref_shift = (sinusoidal_positions(torch.arange(9, 15), 16)
                 - sinusoidal_positions(torch.arange(5, 11), 16)).float()
    torch.testing.assert_close(shift, ref_shift.expand(2, 6, 16), rtol=0, atol=1e-5)
    assert float(shift.detach().abs().max()) > 0.1


def test_bad_input_names_the_parameter():
    with pytest.raises(ParameterError, match="d"):
        PatchEmbedding(3, 4, 18)
    with pytest.raises(ShapeError, match="images"):
        PatchEmbedding(3, 4, 16)(torch.zeros(1, 3, 10, 8))
    with pytest.raises(ShapeError, match="images"):
        PatchEmbedding(3, 4, 16)(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ParameterError, match="pos0"):
        PatchEmbedding(3, 4, 16)(torch.zeros(1, 3, 8, 8), pos0=-1)
