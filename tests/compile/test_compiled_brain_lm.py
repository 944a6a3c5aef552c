"""Compiled BrainLM against the reference BrainLM it was compiled from (float32, fixed seed).

The compiled file stores the ternary codes packed at 2 bits per weight; the loaded model's
prompt pass (the batched reference path with frozen codes) equals the reference exactly, and
the per-token numba kernel of generation reproduces the reference step: the spikes of every
block agree except at threshold ties (the kernel sums in another order; the mismatch rate is
measured and must stay below 1e-4), and logits agree to float32 rounding (1e-5 relative); also
with the hub residual, the memory value read and the membrane-gain readout switched on.
"""
import pytest
import torch

from neurobit.compile.artifact import is_compiled, read_compiled, ternary_storage, write_compiled
from neurobit.compile.brain_lm import CompiledBrainLM
from neurobit.compile.lm import _build
from neurobit.errors import NeurobitError, ParameterError
from neurobit.models.brain_lm import BrainLM
from neurobit.models.lm_config import BrainLMConfig

V = 29
CFG = dict(vocab_size=V, n_word_buckets=37, d_model=48, n_layers=2, n_circuits=4, n_units=24,
           d_circuit=12, d_key=12, spike_steps=2, head_weights="float", hub_groups=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trained_model(**kw):
    """A BrainLM trained 25 steps on a repeated phrase (spiking, weights moved off init)."""
    torch.manual_seed(0)
    cfg = BrainLMConfig(**{**CFG, **kw})
    m = BrainLM(cfg)
    text = torch.tensor([(3 * i * i + i) % V for i in range(12)] * 12)
    opt = torch.optim.AdamW(m.parameters(), 1e-2)
    for _ in range(25):
        i = torch.randint(0, len(text) - 33, (4,))
        x = torch.stack([text[j:j + 33] for j in i])
        loss = torch.nn.functional.cross_entropy(m(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    return m, cfg


def compiled_copy(m, cfg, tmp_path, packing="2bit"):
    path = write_compiled(tmp_path / "m.nbc", m, "brain", cfg.model_dump_json(), None, packing)
    return CompiledBrainLM(read_compiled(path, _build).model), path


@pytest.mark.parametrize("variant", [{}, dict(memory_read=True, hub_residual=True,
                                             membrane_readout="gain")])
def test_generation_kernel_matches_reference_step(tmp_path, variant):
    m, cfg = trained_model(**variant)
    cm, _ = compiled_copy(m, cfg, tmp_path)
    g = torch.Generator().manual_seed(3)
    B, T = 3, 200
    toks = torch.randint(0, V, (B, T), generator=g)
    words = torch.randint(0, 1000, (B, T), generator=g)
    with torch.no_grad():
        sr, sc = m.initial_state(B), cm.initial_state(B)
        worst, flips, total, spikes = 0.0, 0, 0, 0
        for t in range(T):
            lr, sr = m.step(toks[:, t], words[:, t], sr)
            lc, sc = cm.step(toks[:, t], words[:, t], sc)
            for br, bc in zip(sr.blocks, sc.blocks):
                flip = br.circuits.lif.s != bc.circuits.lif.s
                # the first flipped spikes sit at threshold ties: the membranes straddle theta
                # (= 1 here) by rounding only; later ones follow from the first
                margin = (br.circuits.lif.v[flip] - 1.0).abs()
                assert flips > 0 or margin.numel() == 0 or float(margin.max()) < 1e-4
                flips += int(flip.sum())
                total += br.circuits.lif.s.numel()
                spikes += int(br.circuits.lif.s.sum())
            if flips == 0:
                worst = max(worst, float((lc - lr).abs().max() / lr.abs().max()))
    assert 0.02 < spikes / total < 0.9                      # a spiking model, not a silent one
    assert flips / total < 1e-4
    assert worst < 1e-5
    # the hub memory and global state follow the reference too
    for br, bc in zip(sr.blocks, sc.blocks):
        assert (br.hub.M - bc.hub.M).abs().max() < 1e-4
        assert (br.hub.g - bc.hub.g).abs().max() < 1e-4


def test_prompt_pass_is_the_reference_pass_and_states_interoperate(tmp_path):
    m, cfg = trained_model()
    cm, _ = compiled_copy(m, cfg, tmp_path)
    x = torch.randint(0, V, (2, 40), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref, st_ref = m.run(x)
        out, st = cm.run(x)
        assert torch.equal(out, ref)                         # same codes, same path
        # continuing the compiled state with the kernel equals the reference continuation
        a, _ = m.run(x[:, :1], None, st_ref)
        b, _ = cm.run(x[:, :1], None, st)
    assert (a - b).abs().max() / a.abs().max() < 1e-5


@pytest.mark.parametrize("packing,bits", [("2bit", 2.0), ("trit5", 1.6)])
def test_packed_storage(tmp_path, packing, bits):
    m, cfg = trained_model()
    _, path = compiled_copy(m, cfg, tmp_path, packing)
    st = ternary_storage(path)
    assert st["ternary_weights"] > 20_000
    assert st["bits_per_ternary_weight"] <= bits + 0.01
    assert is_compiled(path) and not is_compiled(tmp_path / "nothing.nbc")
    # the codes survive the round trip exactly
    loaded = read_compiled(path, _build).model
    for (name, a), (_, b) in zip(m.named_modules(), loaded.named_modules()):
        if hasattr(a, "ternary") and a.quant != "float":
            qa, qb = a.ternary(), b._frozen
            assert torch.equal(qa.codes, qb.codes), name
            assert torch.equal(qa.scale.to(qb.scale.dtype), qb.scale), name


def test_unsupported_variants_and_bad_files(tmp_path):
    m, cfg = trained_model(n_layers=1)
    m2 = BrainLM(BrainLMConfig(**{**CFG, "n_layers": 1, "mixer": "attention", "n_heads": 2}))
    with pytest.raises(ParameterError, match="model.mixer"):
        CompiledBrainLM(m2)
    m3 = BrainLM(BrainLMConfig(**{**CFG, "n_layers": 1, "membrane_readout": "bank"}))
    with pytest.raises(ParameterError, match="model.membrane_readout"):
        CompiledBrainLM(m3)
    bad = tmp_path / "bad.nbc"
    bad.write_bytes(b"not a model")
    with pytest.raises(NeurobitError, match="not a neurobit compiled model"):
        read_compiled(bad, _build)


def test_backends_of_a_compiled_file(tmp_path):
    """One file, two backends behind one loader: the fused cpu kernel and the frozen reference
    modules give the same greedy continuation; unknown or unavailable backends are refused."""
    from neurobit.compile.lm import load_compiled_lm
    from neurobit.errors import BackendError
    m, cfg = trained_model(n_layers=1)
    path = write_compiled(tmp_path / "m.nbc", m, "brain", cfg.model_dump_json())
    cpu, _ = load_compiled_lm(path, "cpu")
    ref, _ = load_compiled_lm(path, "reference")
    assert isinstance(cpu, CompiledBrainLM) and isinstance(ref, BrainLM)
    tok = torch.tensor([3])
    outs = []
    for model in (cpu, ref):
        st, seq = model.initial_state(1), []
        with torch.no_grad():
            for _ in range(40):
                lg, st = model.step(tok, None, st)
                tok = lg.argmax(-1)
                seq.append(int(tok))
        outs.append(seq)
        tok = torch.tensor([3])
    assert outs[0] == outs[1]
    for bad in ("cuda", "tpu"):
        with pytest.raises(BackendError, match="backend"):
            load_compiled_lm(path, bad)
