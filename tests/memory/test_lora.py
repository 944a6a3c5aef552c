"""LoRA on BitLinear: y = Q(W) x + (alpha/r) B A x on every application path; a zero adapter
changes nothing, before and after merging; a merge differs from base + adapter by exactly
(E(W') - E(W)) x, bounded elementwise; attach/detach by name pattern; state dicts round-trip."""
import pytest
import torch

from neurobit.errors import ParameterError
from neurobit.functional.ternary import ternarize_absmean
from neurobit.memory.lora import (LoRABitLinear, adapters, attach_from_state_dict, attach_lora,
                                  detach_lora, lora_parameter_names, merge_lora)
from neurobit.models.brain_lm import BrainLM
from neurobit.models.lm_config import BrainLMConfig
from neurobit.modules.bitlinear import BitLinear

CFG = dict(vocab_size=19, n_word_buckets=8, d_model=16, n_layers=1, n_circuits=2, n_units=8,
           d_circuit=4, d_key=4)


def layer(banks=None, seed=0, **kw):
    torch.manual_seed(seed)
    return BitLinear(12, 7, banks=banks, **kw).double()


def randomize(ad: LoRABitLinear, std: float, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ad.lora_B.copy_(torch.randn(ad.lora_B.shape, generator=g, dtype=torch.float64) * std)


@pytest.mark.parametrize("banks", [None, 3])
def test_adapter_adds_low_rank_term(banks, gen):
    base = layer(banks, bias=True)
    x = torch.randn(5, *(() if banks is None else (banks,)), 12, generator=gen,
                    dtype=torch.float64)
    y0 = base(x)
    ad = LoRABitLinear(base, rank=2, alpha=4.0, generator=gen)
    assert torch.equal(ad(x), y0)  # B = 0: bit-identical
    randomize(ad, 0.3)
    D = 2.0 * ad.lora_B @ ad.lora_A  # alpha / r = 2
    expect = y0 + torch.einsum("...i,...oi->...o", x, D)
    torch.testing.assert_close(ad(x), expect, rtol=0, atol=1e-12)
    assert (ad(x) - y0).abs().max() > 1e-2
    if banks is not None:  # the shared-input path of a bank sees the adapter too
        xs = torch.randn(5, 12, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(ad.forward_shared(xs), ad(xs[:, None].expand(5, banks, 12)),
                                   rtol=0, atol=1e-12)
    ad(x).pow(2).sum().backward()
    assert ad.lora_A.grad.abs().sum() > 0 and ad.lora_B.grad.abs().sum() > 0
    assert ad.weight is base.weight  # shared, not copied
    with pytest.raises(ParameterError, match="merge_lora"):
        ad.export_packed()


@pytest.mark.parametrize("banks", [None, 3])
def test_merge(banks, gen):
    base = layer(banks)
    W0 = base.weight.detach().clone()
    x = torch.randn(40, *(() if banks is None else (banks,)), 12, generator=gen,
                    dtype=torch.float64)
    y_base = base(x)
    # zero adapter: the merge changes nothing, bit for bit
    ad = LoRABitLinear(base, rank=3, generator=gen)
    merged = ad.merge()
    assert merged is base and torch.equal(base.weight, W0) and torch.equal(base(x), y_base)
    # a real adapter
    ad = LoRABitLinear(base, rank=3, generator=gen)
    randomize(ad, 0.05)
    y_adapted = ad(x).detach()
    D = ad.delta_weight().detach()
    merged = ad.merge()
    y_merged = merged(x)
    per = banks is not None

    def err(w):  # E(W) = Q(W) - W and the elementwise bound max(scale/2, max|W| - scale)
        q = ternarize_absmean(w, per_leading=per)
        dims = tuple(range(1, w.dim())) if per else tuple(range(w.dim()))
        bound = torch.maximum(q.scale / 2, w.abs().amax(dim=dims, keepdim=True) - q.scale)
        return q.codes * q.scale - w, bound

    E0, b0 = err(W0)
    E1, b1 = err(W0 + D)
    assert torch.equal(merged.weight, W0 + D)  # folded into the master weight
    assert (E0.abs() <= b0 + 1e-12).all() and (E1.abs() <= b1 + 1e-12).all()
    diff = y_merged - y_adapted
    expect = torch.einsum("...i,...oi->...o", x, E1 - E0)
    torch.testing.assert_close(diff, expect, rtol=0, atol=1e-12)  # quantization error only
    bound = torch.einsum("...i,...oi->...o", x.abs(), (b0 + b1).expand_as(E0))
    assert (diff.abs() <= bound + 1e-12).all()
    assert diff.abs().max() > 1e-3  # the re-quantization really is lossy here
    assert not torch.equal(merged(x), y_base)  # and the merge did change the layer


def test_attach_detach_by_pattern_and_state_dict(gen):
    torch.manual_seed(0)
    m = BrainLM(BrainLMConfig(**CFG)).double()
    keys0 = set(m.state_dict())
    x = torch.randint(0, 19, (2, 6), generator=gen)
    y0 = m(x)
    names = attach_lora(m, 2, include=("blocks.*.hub.*", "head"), exclude=("*.w_f",),
                        generator=gen)
    assert names == ["blocks.0.hub.w_q", "blocks.0.hub.w_k", "blocks.0.hub.w_v",
                     "blocks.0.hub.w_g", "head"]
    assert set(adapters(m)) == set(names)
    assert torch.equal(m(x), y0)
    assert set(m.state_dict()) - keys0 == {f"{n}.{k}" for n in names
                                           for k in ("lora_A", "lora_B", "lora_alpha")}
    assert lora_parameter_names(m) == [f"{n}.{k}" for n in names for k in ("lora_A", "lora_B")]
    for ad in adapters(m).values():
        randomize(ad, 0.2)
    y1 = m(x)
    assert (y1 - y0).abs().max() > 1e-3
    # a fresh model takes the adapted state dict after attach_from_state_dict
    torch.manual_seed(5)
    m2 = BrainLM(BrainLMConfig(**CFG)).double()
    assert attach_from_state_dict(m2, m.state_dict()) == sorted(names)
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2(x), y1)
    with pytest.raises(ParameterError, match="include"):
        attach_lora(m, 2, include=("nothing.*",))
    with pytest.raises(ParameterError, match="rank"):
        LoRABitLinear(BitLinear(3, 3), 0)
    assert sorted(detach_lora(m)) == sorted(names)
    assert set(m.state_dict()) == keys0 and torch.equal(m(x), y0)  # adapters discarded


def test_model_merge_equals_adapted_within_quantization(gen):
    """On a whole BrainLM (banked circuits, fused recurrent scan, hub, head): merging zero
    adapters is bit-identical; merge_lora reports flips and puts plain BitLinears back."""
    torch.manual_seed(0)
    m = BrainLM(BrainLMConfig(**CFG)).double()
    x = torch.randint(0, 19, (2, 6), generator=gen)
    y0 = m(x)
    attach_lora(m, 2, generator=gen)
    rep = merge_lora(m)
    assert all(r.flipped == 0 for r in rep.values()) and torch.equal(m(x), y0)
    assert not adapters(m) and all(type(mod) is BitLinear for n, mod in m.named_modules()
                                   if isinstance(mod, BitLinear))
    attach_lora(m, 2, generator=gen)
    for ad in adapters(m).values():
        randomize(ad, 0.5)
    rep = merge_lora(m)
    assert sum(r.flipped for r in rep.values()) > 0


def test_adapted_brain_lm_fused_scan_matches_module_loop(gen):
    """The adapted recurrent weights enter BrainLM's fused numba scan as non-ternary 'codes':
    logits and adapter gradients equal those of the per-token module loop (the oracle)."""
    torch.manual_seed(0)
    m = BrainLM(BrainLMConfig(**CFG)).double()
    attach_lora(m, 2, include=("blocks.0.bank.*",), generator=gen)
    for ad in adapters(m).values():
        randomize(ad, 0.3)
    x = torch.randint(0, 19, (2, 6), generator=gen)
    out = {}
    for fused in (True, False):
        m.blocks[0].fused_scan = fused
        m.zero_grad()
        y = m(x)
        y.pow(2).mean().backward()
        out[fused] = (y.detach(), m.blocks[0].bank.w_rec.lora_B.grad.clone(),
                      m.blocks[0].bank.w_in.lora_A.grad.clone())
    for a, b in zip(out[True], out[False]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert out[True][1].abs().sum() > 0
