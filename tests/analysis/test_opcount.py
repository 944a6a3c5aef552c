"""neurobit.analysis.opcount: synaptic-operation counts on hand-sized layers.

Counting rules (per call, input x with rows = x.numel() / in, weight W [out, in]):
spike input -> AC = #(active input, non-zero synapse) pairs; ternary weights with a non-spike
input -> AC = rows * nnz(codes); otherwise MAC = rows * in * out. Hand counts are in comments;
brute-force references use the plain formula ((x != 0) @ (W != 0)^T).sum() or explicit loops,
not the implementation's column-sum shortcut.
"""
import itertools

import pytest
import torch
from torch import nn

from neurobit.analysis.opcount import (ENERGY_PJ, LayerOps, OpCounter, OpSummary, count_ops,
                                       dense_energy_joules, energy_joules)
from neurobit.errors import ParameterError
from neurobit.modules import BitLinear
from neurobit.modules.microcircuit import MicroCircuit

F64 = torch.float64
CODES = [[1.0, 0.0, -1.0], [0.0, 1.0, 1.0]]


def fixed_layer(codes, banks=None):
    """A BitLinear whose codes equal ``codes`` (quant='fixed', scale 1: codes = round(W))."""
    w = torch.tensor(codes, dtype=F64)
    bl = BitLinear(w.shape[-1], w.shape[-2], quant="fixed", fixed_scale=1.0, banks=banks, dtype=F64)
    with torch.no_grad():
        bl.weight.copy_(w)
    assert torch.equal(bl.quantized().codes.detach(), w)
    return bl


def brute_pairs(x, w):
    return int(((x != 0).to(F64) @ (w != 0).to(F64).T).sum())


def test_bitlinear_spike_input_counts_active_synapse_pairs():
    bl = fixed_layer(CODES)
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=F64)
    _, s = count_ops(bl, bl, x)
    # row 1: input 0 reaches 1 non-zero synapse (code 1 in output 0), input 2 reaches 2
    # (codes -1 and +1) -> 3; row 2 is silent -> 0. Total AC = 3, no MACs.
    assert s.acs == 3 and s.macs == 0
    rec = s.per_layer[""]
    assert (rec.calls, rec.rows, rec.dense_macs, rec.spike_calls) == (1, 2, 2 * 3 * 2, 1)
    assert rec.mean_activity == pytest.approx(2 / 6)          # 2 of 6 inputs non-zero
    assert s.other_macs == 0                                  # nothing outside the layer


def test_bitlinear_nonbinary_input_counts_rows_times_nnz():
    bl = fixed_layer(CODES)
    x = torch.tensor([[[0.5, 0.0, 2.0], [1.0, 1.0, 1.0]],
                      [[-1.0, 3.0, 0.0], [0.2, 0.0, 0.0]]], dtype=F64)    # [2, 2, 3]: 4 rows
    _, s = count_ops(bl, bl, x)
    # nnz(codes) = 4, rows = 4 -> AC = 16 (zero inputs are not skipped on the dense path)
    assert (s.acs, s.macs, s.dense_macs) == (16, 0, 4 * 3 * 2)
    assert s.per_layer[""].spike_calls == 0


def test_float_layers_count_dense_macs():
    gen = torch.Generator().manual_seed(0)
    bl = BitLinear(3, 2, quant="float", dtype=F64)
    lin = nn.Linear(4, 5, dtype=F64)
    x3 = torch.randn(2, 3, generator=gen, dtype=F64) + 5.0        # non-binary
    x4 = torch.randn(2, 3, 4, generator=gen, dtype=F64)            # 6 rows
    _, s = count_ops(bl, bl, x3)
    assert (s.acs, s.macs) == (0, 2 * 3 * 2)                       # 12 MACs
    _, s = count_ops(lin, lin, x4)
    assert (s.acs, s.macs, s.dense_macs) == (0, 6 * 4 * 5, 120)
    assert s.other_macs == 0                                       # addmm counted as the layer
    # a float layer fed spikes is event-driven too: pairs with non-zero float weights
    with torch.no_grad():
        bl.weight.copy_(torch.tensor([[0.3, 0.0, 0.0], [0.0, -2.0, 0.0]], dtype=F64))
    _, s = count_ops(bl, bl, torch.tensor([[1.0, 1.0, 1.0]], dtype=F64))
    assert (s.acs, s.macs) == (2, 0)                               # inputs 0 and 1 each hit 1


def test_banked_bitlinear_spikes_and_forward_shared():
    codes = [CODES, [[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]]]           # [M=2, out=2, in=3]
    bl = fixed_layer(codes, banks=2)
    x = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]], dtype=F64)  # [B=1, M=2, in=3]
    _, s = count_ops(bl, bl, x)
    # bank 0: inputs 0, 1 reach 1 + 1 synapses = 2; bank 1: inputs 0, 2 reach 1 + 1 = 2 -> 4
    assert (s.acs, s.macs, s.dense_macs) == (4, 0, 2 * 3 * 2)
    assert s.other_macs == 0                                       # einsum seen as the layer
    # non-binary: per bank rows(1) * nnz; nnz = 4 + 2 = 6 -> AC = 6
    _, s = count_ops(bl, bl, 0.5 * x + 0.25)
    assert (s.acs, s.macs) == (6, 0)
    # forward_shared: x [1, 3] = [1, 1, 0] against all 4 rows: column 0 has 2 non-zeros
    # (bank0 row0, bank1 row1), column 1 has 1 -> AC = 3
    _, s = count_ops(bl, lambda a: bl.forward_shared(a), torch.tensor([[1.0, 1.0, 0.0]], dtype=F64))
    assert (s.acs, s.dense_macs, s.per_layer[""].calls) == (3, 1 * 3 * 4, 1)
    assert s.other_macs == 0
    # random banks against the brute-force formula, bank by bank
    gen = torch.Generator().manual_seed(1)
    big = BitLinear(7, 5, banks=3, dtype=F64)
    big.init_sparse_(0.4, gen)
    xs = (torch.rand(4, 6, 3, 7, generator=gen) < 0.3).to(F64)
    _, s = count_ops(big, big, xs)
    w = big.quantized().codes.detach()
    assert s.acs == sum(brute_pairs(xs[..., m, :].reshape(-1, 7), w[m]) for m in range(3))


def brute_conv2d_pairs(x, w, stride, padding, groups):
    """Loop over every output element and kernel tap: count (x != 0) and (w != 0) pairs."""
    n, c_in, h, wd = x.shape
    c_out, c_per, kh, kw = w.shape
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (wd + 2 * padding - kw) // stride + 1
    per_group = c_out // groups
    total = 0
    for b, o, i, j in itertools.product(range(n), range(c_out), range(ho), range(wo)):
        g = o // per_group
        for c, u, v in itertools.product(range(c_per), range(kh), range(kw)):
            r, q = i * stride - padding + u, j * stride - padding + v
            if 0 <= r < h and 0 <= q < wd and x[b, g * c_per + c, r, q] != 0 and w[o, c, u, v] != 0:
                total += 1
    return total


def test_conv2d_spikes_match_brute_force_and_dense_count():
    gen = torch.Generator().manual_seed(2)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=True, dtype=F64)
    with torch.no_grad():
        conv.weight.mul_((torch.rand(conv.weight.shape, generator=gen) < 0.5).to(F64))
    x = (torch.rand(2, 4, 7, 7, generator=gen) < 0.3).to(F64)
    out, s = count_ops(conv, conv, x)
    expected = brute_conv2d_pairs(x, conv.weight.detach(), 2, 1, 2)
    assert expected > 0 and s.acs == expected and s.macs == 0
    # dense: output elements (2 * 6 * 4 * 4) * in/groups (2) * kernel (9)
    dense = out.numel() * 2 * 9
    assert out.shape == (2, 6, 4, 4) and s.dense_macs == dense
    assert s.other_macs == 0                                       # conv flops = 2 * dense
    _, s = count_ops(conv, conv, x + 0.5)                          # non-binary -> dense MACs
    assert (s.acs, s.macs) == (0, dense)


def test_conv1d_spikes_match_unfolded_count():
    gen = torch.Generator().manual_seed(3)
    conv = nn.Conv1d(3, 4, 5, padding=2, dilation=1, bias=False, dtype=F64)
    x = (torch.rand(2, 3, 9, generator=gen) < 0.4).to(F64)
    _, s = count_ops(conv, conv, x)
    # unfold to [N, C*k, L] patches with zero padding and count pairs against W [out, C*k]
    xp = torch.nn.functional.pad(x, (2, 2)).unfold(2, 5, 1)        # [N, C, L, k]
    patches = xp.permute(0, 2, 1, 3).reshape(-1, 3 * 5)
    assert s.acs == brute_pairs(patches, conv.weight.detach().reshape(4, -1))


class LinearPlusMatmul(nn.Module):
    """One hooked Linear (rows 6 = 2*3, in 4, out 5: 120 MACs) and one explicit matmul
    [6, 5] @ [5, 7] (210 MACs) that no layer owns."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 5, dtype=F64)
        self.register_buffer("m", torch.ones(5, 7, dtype=F64))

    def forward(self, x):
        return torch.matmul(self.lin(x).reshape(6, 5), self.m)


def test_flop_counter_other_macs_excludes_hooked_layers():
    model = LinearPlusMatmul()
    x = torch.randn(2, 3, 4, dtype=F64)
    _, s = count_ops(model, model, x)
    assert s.macs == 120 and s.dense_macs == 120
    assert s.other_macs == 6 * 5 * 7                               # 210
    assert s.total_flops == 2 * (120 + 210)
    assert set(s.per_layer) == {"lin"}


def test_sdpa_and_einsum_attention_count_as_other_macs():
    q = torch.randn(1, 2, 4, 8, dtype=F64)                          # [B, H, S, d]
    model = nn.Module()
    # sdpa: Q K^T (1*2*4*4*8 = 256) + A V (256) = 512 MACs, on CPU's flash kernel too
    _, s = count_ops(model, torch.nn.functional.scaled_dot_product_attention, q, q, q)
    assert (s.acs, s.macs, s.other_macs) == (0, 0, 512)
    _, s = count_ops(model, lambda a: torch.einsum("bhsd,bhtd->bhst", a, a), q)
    assert s.other_macs == 256


def test_microcircuit_counts_every_time_step():
    gen = torch.Generator().manual_seed(4)
    mc = MicroCircuit(5, 8, 3, quant="fixed", fixed_scale=0.6, alpha=0.9, theta=1.0)
    for layer in (mc.w_in, mc.w_rec, mc.w_out):
        layer.init_sparse_(0.5, gen)
    x = (torch.rand(6, 2, 5, generator=gen) < 0.5).float()        # T=6, B=2
    out, s = count_ops(mc, mc, x)
    spk = out.spikes
    assert spk.sum() > 0
    codes = {n: getattr(mc, n).quantized().codes.detach() for n in ("w_in", "w_rec", "w_out")}
    prev = torch.cat([torch.zeros_like(spk[:1]), spk[:-1]])         # s_{t-1}, s_{-1} = 0
    assert s.per_layer["w_rec"].calls == 6                          # apply_ternary in the loop
    assert s.per_layer["w_in"].acs == brute_pairs(x.reshape(-1, 5), codes["w_in"])
    assert s.per_layer["w_rec"].acs == brute_pairs(prev.reshape(-1, 8), codes["w_rec"])
    # MicroCircuit.forward applies w_out twice: once per step inside step_from_current (a y_t
    # it then discards) and once over the stacked spikes -> 7 calls, twice the pairs
    assert s.per_layer["w_out"].calls == 7
    assert s.per_layer["w_out"].acs == 2 * brute_pairs(spk.reshape(-1, 8), codes["w_out"])
    assert s.macs == 0 and s.other_macs == 0
    assert s.dense_macs == 12 * 5 * 8 + 12 * 8 * 8 + 2 * 12 * 8 * 3


def test_energy_matches_hand_formula():
    s = OpSummary(acs=10, macs=3, dense_macs=40, other_macs=2, total_flops=None)
    # fp32: 10 * 0.9 + (3 + 2) * (3.7 + 0.9) = 9 + 23 = 32 pJ
    assert energy_joules(s) == pytest.approx(32e-12, rel=1e-12)
    # int8: 10 * 0.03 + 5 * 0.23 = 1.45 pJ
    assert energy_joules(s, "int8") == pytest.approx(1.45e-12, rel=1e-12)
    # dense: (40 + 2) * 4.6 = 193.2 pJ
    assert dense_energy_joules(s) == pytest.approx(193.2e-12, rel=1e-12)
    assert ENERGY_PJ["fp32"] == {"add": 0.9, "mult": 3.7}
    with pytest.raises(ParameterError, match="precision"):
        energy_joules(s, "fp16")


def test_hooks_removed_after_exit_and_reset():
    bl = fixed_layer(CODES)
    lin = nn.Linear(2, 2, dtype=F64)
    model = nn.Sequential(bl, lin)
    x = torch.tensor([[1.0, 0.0, 1.0]], dtype=F64)
    counter = OpCounter(model)
    with torch.no_grad(), counter:
        model(x)
    first = counter.summary()
    assert first.per_layer["0"].acs == 3 and first.per_layer["1"].calls == 1
    model(x)                                                       # outside: adds nothing
    again = counter.summary()
    assert (again.acs, again.macs, again.other_macs) == (first.acs, first.macs, first.other_macs)
    assert "apply_ternary" not in bl.__dict__ and "forward_shared" not in bl.__dict__
    assert not lin._forward_hooks and not lin._forward_pre_hooks
    with pytest.raises(RuntimeError, match="boom"):                # removed on error too
        with counter:
            raise RuntimeError("boom")
    assert "apply_ternary" not in bl.__dict__ and not lin._forward_hooks
    counter.reset()
    s = counter.summary()
    assert (s.acs, s.macs, s.dense_macs, s.other_macs) == (0, 0, 0, 0)
    assert isinstance(s.per_layer["0"], LayerOps) and s.per_layer["0"].calls == 0


def test_backward_inside_the_block_lands_in_other_macs():
    # the documented caveat: without no_grad, a backward pass inside the block is counted as
    # "other" work. Linear 4 -> 5 on 6 rows: forward 120 MACs (the layer); backward forms
    # grad_input [6, 4] (120 MACs) and grad_weight [5, 4] (120 MACs) -> other = 240
    lin = nn.Linear(4, 5, dtype=F64)
    x = torch.randn(6, 4, dtype=F64, requires_grad=True)
    counter = OpCounter(lin)
    with counter:
        lin(x).sum().backward()
    s = counter.summary()
    assert (s.macs, s.other_macs) == (120, 240)


def test_ternary_conv_counts_its_codes_not_the_master_weights():
    """A conv with a ``quantized()`` method (the spiking classifier's TernaryConv2d) is counted
    with its ternary codes: zero codes are skipped, and dense inputs give accumulates."""
    from neurobit.models.spiking_classifier import TernaryConv2d
    torch.manual_seed(0)
    conv = TernaryConv2d(1, 2, 3, 1, 0)
    codes = conv.quantized().codes.detach()
    nnz = int((codes != 0).sum())
    assert 0 < nnz < codes.numel()  # some codes are 0 while every master weight is non-zero
    x = torch.rand(1, 1, 5, 5) + 0.1  # dense, non-binary input: one add per non-zero code
    _, s = count_ops(conv, conv, x)
    assert s.macs == 0 and s.acs == 9 * nnz  # 3x3 output positions
    spikes = torch.ones(1, 1, 5, 5)
    _, s = count_ops(conv, conv, spikes)
    assert s.acs == 9 * nnz and s.macs == 0
