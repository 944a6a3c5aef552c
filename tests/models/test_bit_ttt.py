"""Bit-TTT layer and Bit-Llama block: the update rule, the memory effect, BPTT, state passing."""
import pytest
import torch

from neurobit.errors import ParameterError, ShapeError
from neurobit.models.bit_ttt import BitTTT, BitTTTBlock, SwiGLU, ttt_linear_step


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_step_hand_computed():
    W = torch.zeros(1, 2, 2)
    k, v, q = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    z, W1, loss = ttt_linear_step(W, k, v, q, 0.5)
    # r = 0 k - v = [0, -1]; l = 1/2; W1 = -0.5 r k^T = [[0, 0], [0.5, 0]]; z = W1 q = [0, 0.5]
    assert float(loss) == pytest.approx(0.5)
    torch.testing.assert_close(W1, torch.tensor([[[0.0, 0.0], [0.5, 0.0]]]))
    torch.testing.assert_close(z, torch.tensor([[0.0, 0.5]]))
    # eta = 1 with a unit key stores the pair exactly: W1 k == v
    _, W2, _ = ttt_linear_step(W, k, v, q, 1.0)
    torch.testing.assert_close(torch.einsum("bij,bj->bi", W2, k), v)


def test_step_is_gradient_descent_on_the_reconstruction_loss():
    torch.manual_seed(0)
    W = torch.randn(3, 5, 5, requires_grad=True)
    k, v, q = (torch.nn.functional.normalize(torch.randn(3, 5), dim=-1) for _ in range(3))
    _, W1, loss = ttt_linear_step(W, k, v, q, 0.3)
    (g,) = torch.autograd.grad(loss.sum(), W)
    torch.testing.assert_close(W1, W - 0.3 * g, rtol=1e-6, atol=1e-6)


def test_memory_effect_on_repeated_patterns_not_on_random_ones():
    torch.manual_seed(0)
    layer = BitTTT(64, 16, eta=0.5)
    patterns = torch.randn(2, 4, 64)
    repeated = patterns.repeat(1, 8, 1)                     # 4 patterns, 8 times: T = 32
    fresh = torch.randn(2, 32, 64)
    with torch.no_grad():
        r_rep = layer(repeated).recon.mean(0)               # [T]
        r_new = layer(fresh).recon.mean(0)
    first, last = r_rep[:4].mean(), r_rep[-4:].mean()
    assert float(last) < 0.02 * float(first)                # learned in context
    assert float(r_rep[4:8].mean()) < 0.5 * float(first)    # already lower at the 2nd repetition
    assert float(r_new[-4:].mean()) > 0.8 * float(r_new[:4].mean())   # nothing to remember


def test_features_are_unit_vectors_and_projections_ternary():
    torch.manual_seed(1)
    layer = BitTTT(32, 8)
    k, v, q = layer.features(torch.randn(2, 5, 32))
    for t in (k, v, q):
        torch.testing.assert_close(t.norm(dim=-1), torch.ones(2, 5))
    for lin in (layer.down, layer.up):
        codes, scale = lin.ternary()
        assert set(codes.unique().tolist()) <= {-1.0, 0.0, 1.0}
        assert len(lin.effective_weight().abs().unique()) <= 2   # {0, scale}


def test_state_passing_equals_one_pass_and_bptt_reaches_early_tokens():
    torch.manual_seed(2)
    block = BitTTTBlock(16, 8, 0.7, ffn_hidden=32)          # Bit-Llama block
    x = torch.randn(2, 10, 16, requires_grad=True)
    y, W, recon = block(x)
    y1, W1, _ = block(x[:, :6])
    y2, W2, _ = block(x[:, 6:], W1)
    torch.testing.assert_close(torch.cat((y1, y2), 1), y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(W2, W, rtol=1e-6, atol=1e-6)
    assert recon.shape == (2, 10)
    # backpropagation through time: the last output depends on the first token via W
    (g,) = torch.autograd.grad(y[:, -1].sum(), x, retain_graph=True)
    assert float(g[:, 0].abs().sum()) > 1e-6
    assert float(g[:, 0].abs().sum()) < float(g[:, -1].abs().sum())
    # and W_0 is learned
    y[:, -1].sum().backward()
    assert float(block.ttt.W0.grad.abs().sum()) > 0


def test_swiglu_hand_case_with_float_weights():
    f = SwiGLU(1, 1, quant="float")
    with torch.no_grad():
        f.w1.weight.fill_(2.0), f.w3.weight.fill_(3.0), f.w2.weight.fill_(0.5)
    x = torch.tensor([[1.0]])
    expected = 0.5 * (2.0 * torch.sigmoid(torch.tensor(2.0))) * 3.0
    torch.testing.assert_close(f(x), expected.reshape(1, 1))


def test_bad_input_names_the_parameter():
    with pytest.raises(ParameterError, match="eta"):
        BitTTT(8, 4, eta=2.0)
    with pytest.raises(ParameterError, match="d_state"):
        BitTTT(8, 0)
    with pytest.raises(ShapeError, match="x"):
        BitTTT(8, 4)(torch.zeros(2, 8))
    with pytest.raises(ShapeError, match="state"):
        BitTTT(8, 4)(torch.zeros(2, 3, 8), torch.zeros(2, 3, 3))
