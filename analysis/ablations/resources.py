"""Measured resource accounting of generation, BrainLM vs the GPT baseline, as context grows.

    python analysis/ablations/resources.py measure --lengths 512,2048,4096,16384 \
        --out analysis/ablations/results

For the two trained models of the language-model study (``runs/lm_study/{brain,gpt}``, loaded
as ``analysis/lm/study.py`` does) this measures:

- parameters; the compiled file of ``neurobit compile`` (ternary codes packed 2 bits per weight,
  float parameters 4 bytes, plus metadata and tokenizer), the same counted
  (``n_ternary / 4 + 4 n_float`` bytes), and the float32 checkpoint (``model.safetensors``);
- per generated token at context length L, one fresh process per model and L
  (:func:`probe`):

  * peak resident memory of generating L tokens greedily after a 16-token prompt, the study's
    method: ``VmHWM`` reset through ``/proc/self/clear_refs`` once the model is loaded and warm;
    the generation state's bytes (BrainLM: LIF ``v``, ``s`` and fast weights; GPT: the KV
    cache's filled part and its allocated buffer, which doubles when full); wall time per
    token at context L = median of the last 64 step times of that generation (the model
    generation runs on: BrainLM compiled, fused kernel; the GPT as trained); one torch thread;
  * synaptic operations of one ``step`` at context L, averaged over ``--steps`` next tokens of
    held-out text, with :func:`neurobit.analysis.opcount.count_ops` on the reference modules.
    The state at L comes from a prefill of L tokens of validation text (BrainLM through its
    fused scan, whose outputs equal the module loop's; then ``fused_scan = False`` on every
    block so that the counter sees ``W_rec``). ACs: spike inputs (event-driven) or ternary
    weights; MACs: dense layers; other MACs: matmuls outside layers (attention ``QK^T``,
    ``AV``, fast-weight reads/writes) from ``FlopCounterMode``; energy per
    :func:`~neurobit.analysis.opcount.energy_joules` (Horowitz, ISSCC 2014, 45 nm);
  * ops of the prefill per token: the GPT over the whole L-token prefill (one pass; torch's
    SDPA formula counts the full ``L x L`` score matrix, a causal kernel needs about half);
    BrainLM over the first ``min(L, 512)`` tokens through the module loop (its per-token work
    does not depend on L);
  * mean spike activity of BrainLM's circuits: the fraction of non-zero inputs of every
    ``W_rec`` call (the spikes ``s_{k-1}`` of all units) during the counted steps.

Not counted: elementwise work (LIF updates, softmax, norms, rotary, GELU, bias adds),
embedding lookups, tokenizer hashing. Outputs: ``resources.md``, ``resources.json`` in
``--out`` and ``figures/resources.png`` beside it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import typer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "analysis" / "lm"))
import study  # noqa: E402 (the study's loaders: _load, _data, _rss_mib, RUNS)

MODELS = ("brain", "gpt")
LABEL = study.LABEL
PROMPT = 16          # prompt tokens before the generation whose memory is measured
TAIL = 64            # last steps whose times give the wall time per token at context L
PREFILL_COUNT_BRAIN = 512

app = typer.Typer(add_completion=False, no_args_is_help=True)


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    return env


# -- sizes ----------------------------------------------------------------------------------
def _sizes(m: str, nbc_dir: Path) -> dict:
    """Parameters and bytes: compiled file, counted packed size, float32 checkpoint."""
    from neurobit.compile.artifact import ternary_layers
    from neurobit.compile.lm import compile_checkpoint
    from neurobit.models.gpt import count_parameters
    model, _, _ = study._load(m)
    n = count_parameters(model)
    n_tern = sum(layer.weight.numel() for layer in ternary_layers(model).values())
    nbc = compile_checkpoint(study.RUNS / m, nbc_dir / f"{m}.nbc")
    latest = (study.RUNS / m / "latest").read_text().strip()   # the checkpoint load_model reads
    ckpt_file = study.RUNS / m / latest / "model.safetensors"
    return {"params": n, "ternary_weights": n_tern, "float_params": n - n_tern,
            "compiled_bytes": nbc.stat().st_size, "counted_packed_bytes": n_tern // 4 + 4 * (n - n_tern),
            "fp32_bytes": 4 * n, "checkpoint_bytes": ckpt_file.stat().st_size,
            "nbc": str(nbc)}


# -- the per-length probe (a fresh process) -------------------------------------------------
def _kv_alloc_bytes(state) -> int:
    """Bytes of the GPT KV caches' allocated buffers (>= the filled part; 0 for BrainLM)."""
    tot = 0
    for c in getattr(state, "caches", ()):
        st = getattr(c, "store", None)
        tot += (st.k.nbytes + st.v.nbytes) if st is not None else c.k.nbytes + c.v.nbytes
    return tot


def _memory_and_time(m: str, nbc: str, length: int, data) -> dict:
    """Generate ``length`` tokens greedily from a 16-token prompt (the study's memory probe,
    one thread): peak RSS, state bytes, wall time per token at the end."""
    import gc

    import torch
    from neurobit.compile.lm import load_compiled_lm
    from neurobit.decode import SamplingConfig
    from neurobit.decode.processors import LogitsPipeline
    from neurobit.models.brain_lm import state_numel
    from neurobit.train.lm_step import lm_step_fn
    model, tok = load_compiled_lm(nbc) if m == "brain" else study._load(m)[:2]
    step = lm_step_fn(model, tok)
    seq = torch.empty(length + PROMPT, dtype=torch.long)
    seq[:PROMPT] = torch.as_tensor(data.arrays["val"][:PROMPT].astype("int64"))
    step(seq[None, :PROMPT], step(seq[None, :PROMPT - 1], None)[1])  # warm the one-token path
    logits, state = step(seq[None, :PROMPT], None)
    pipe = LogitsPipeline(SamplingConfig(do_sample=False))
    gc.collect()
    base = study._rss_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")   # reset VmHWM to the current RSS
    times = []
    for i in range(PROMPT, PROMPT + length):
        seq[i] = pipe.sample(logits, seq[None, :i], None)[0]
        t = time.perf_counter()
        logits, state = step(seq[None, :i + 1], state)
        times.append(time.perf_counter() - t)
    peak = study._rss_mib("VmHWM")
    tail = sorted(times[-TAIL:])   # median: robust to other jobs on a shared machine
    return {"rss_before_mib": base, "rss_peak_mib": peak, "growth_mib": peak - base,
            "state_bytes": state_numel(state.model, nbytes=True),
            "state_alloc_bytes": _kv_alloc_bytes(state.model) or
            state_numel(state.model, nbytes=True),
            "ms_per_token": 1e3 * tail[len(tail) // 2],
            "ms_per_token_mean_all": 1e3 * sum(times) / len(times),
            "generation_seconds": sum(times)}


def _ops(m: str, length: int, steps: int, data) -> dict:
    """Synaptic ops of one step at context ``length`` (mean over ``steps`` next tokens of
    held-out text, teacher-forced) and of the prefill per token; BrainLM circuit activity."""
    import torch
    from neurobit.analysis.opcount import count_ops, energy_joules
    from neurobit.train.lm_step import lm_step_fn
    model, tok, _ = study._load(m)
    step = lm_step_fn(model, tok)
    val = data.arrays["val"]
    seq = torch.as_tensor(val[:length + steps].astype("int64"))[None]
    brain = m == "brain"

    def fused(on: bool):
        for blk in getattr(model, "blocks", ()):
            if hasattr(blk, "fused_scan"):
                blk.fused_scan = on

    # prefill: counted (GPT: the whole prefill; BrainLM: module loop on min(L, 512) tokens)
    n_pre = min(length, PREFILL_COUNT_BRAIN) if brain else length
    fused(False)
    (_, st_pre), pre = count_ops(model, step, seq[:, :n_pre], None)
    fused(True)
    t = time.perf_counter()
    _, st = step(seq[:, :length], None) if brain else (None, st_pre)
    prefill_s = time.perf_counter() - t if brain else None
    # reference-module step time (uncounted; BrainLM fused), from the same state
    s_ref, times = st, []
    for i in range(steps):
        t = time.perf_counter()
        _, s_ref = step(seq[:, :length + 1 + i], s_ref)
        times.append(time.perf_counter() - t)
    # counted steps (BrainLM: the module loop, so W_rec is seen)
    fused(False)
    acc = {"acs": 0, "macs": 0, "other_macs": 0, "dense_macs": 0, "e_fp32": 0.0, "e_int8": 0.0}
    act = {}
    for i in range(steps):
        (_, st), s = count_ops(model, step, seq[:, :length + 1 + i], st)
        for k in ("acs", "macs", "other_macs", "dense_macs"):
            acc[k] += getattr(s, k)
        acc["e_fp32"] += energy_joules(s, "fp32")
        acc["e_int8"] += energy_joules(s, "int8")
        for name, rec in s.per_layer.items():
            if name.endswith("bank.w_rec"):
                a = act.setdefault(name, [0, 0])
                a[0] += rec.active
                a[1] += rec.elements
    out = {k: v / steps for k, v in acc.items()}
    out.update(prefill_tokens_counted=n_pre, prefill_acs_per_token=pre.acs / n_pre,
               prefill_macs_per_token=pre.macs / n_pre,
               prefill_other_macs_per_token=(pre.other_macs or 0) / n_pre,
               ms_per_token_reference=1e3 * sorted(times)[steps // 2],
               prefill_seconds_fused=prefill_s)
    if act:
        out["activity_per_block"] = {k: a / e for k, (a, e) in act.items()}
        out["activity"] = sum(a for a, _ in act.values()) / sum(e for _, e in act.values())
    return out


@app.command(hidden=True)
def probe(model_name: str, length: int, nbc: str, steps: int = 8):
    """(internal) One model at one length in this fresh process; prints one JSON line."""
    import torch
    torch.set_num_threads(1)
    data = study._data()
    row = {"model": model_name, "length": length}
    row.update(_memory_and_time(model_name, nbc, length, data))
    row.update(_ops(model_name, length, steps, data))
    print(json.dumps(row))


# -- outputs ---------------------------------------------------------------------------------
def _figure(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    for m, c in zip(MODELS, ("C0", "C1")):
        rows = res[m]["rows"]
        L = [r["length"] for r in rows]
        a1.plot(L, [r["acs"] + r["macs"] + r["other_macs"] for r in rows], "o-", color=c,
                label=f"{LABEL[m]}: all ops")
        if m == "brain":   # the GPT has no ACs: its MACs are all its ops
            a1.plot(L, [r["acs"] for r in rows], "s--", color=c, ms=4, label=f"{LABEL[m]}: ACs")
            a1.plot(L, [r["macs"] + r["other_macs"] for r in rows], "^:", color=c, ms=4,
                    label=f"{LABEL[m]}: MACs (head + hub)")
        a2.plot(L, [r["rss_peak_mib"] for r in rows], "o-", color=c, label=LABEL[m])
    a1.set_yscale("log")
    a1.set_ylabel("operations per generated token")
    a2.set_ylabel("peak RSS of generation (MiB)")
    for a in (a1, a2):
        a.set_xscale("log", base=2)
        a.set_xlabel("context length L (tokens)")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _markdown(res: dict, fig_rel: str) -> str:
    b, g = res["brain"]["sizes"], res["gpt"]["sizes"]
    lines = [
        "# Resources of generation: BrainLM vs the GPT baseline as context grows",
        "",
        f"Made by `{res['command']}` on {res['machine']} ({res['date']}; one torch and numba "
        f"thread per probe; the machine was shared with other jobs, load average "
        f"{res['load_before'][0]:.1f} before / {res['load_after'][0]:.1f} after, so wall times "
        "are noisy). Models: the trained runs of `analysis/lm/study.py` "
        "(`runs/lm_study/{brain,gpt}`).",
        "",
        "## Sizes",
        "",
        "| | BrainLM | GPT baseline |",
        "|---|---:|---:|",
        f"| parameters | {b['params']:,} | {g['params']:,} |",
        f"| of which ternary weights | {b['ternary_weights']:,} | {g['ternary_weights']:,} |",
        f"| compiled file (`neurobit compile`, 2-bit packing) | {b['compiled_bytes']:,} B | "
        f"{g['compiled_bytes']:,} B |",
        f"| counted packed size (2 bits/ternary weight + 4 B/float param) | "
        f"{b['counted_packed_bytes']:,} B | {g['counted_packed_bytes']:,} B |",
        f"| float32 parameters (4 B each) | {b['fp32_bytes']:,} B | {g['fp32_bytes']:,} B |",
        f"| float32 checkpoint file (`model.safetensors`) | {b['checkpoint_bytes']:,} B | "
        f"{g['checkpoint_bytes']:,} B |",
        "",
        "BrainLM keeps its embeddings and output head in float (as BitNet b1.58 does): "
        f"{b['float_params']:,} float parameters, which dominate its packed size.",
        "",
        "## Per generated token at context length L",
        "",
        f"Ops: one `step` at context L, mean over {res['steps']} next tokens of held-out text "
        "(reference modules, BrainLM with `fused_scan = False`). Time: median of the last "
        f"{TAIL} steps of a greedy generation of L tokens (BrainLM compiled, GPT as trained). "
        "Memory: peak RSS of that generation (fresh process, VmHWM reset after loading). "
        "State: BrainLM LIF + fast weights; GPT KV cache filled (allocated buffer in brackets). "
        "Activity: fraction of BrainLM circuit units spiking per LIF step.",
        "",
        "| model | L | ACs | MACs | other MACs | energy fp32 (nJ) | energy int8 (nJ) | "
        "ms/token | peak RSS (MiB) | growth (MiB) | state (KiB) | activity |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in MODELS:
        for r in res[m]["rows"]:
            state = f"{r['state_bytes'] / 1024:,.1f}"
            if r["state_alloc_bytes"] != r["state_bytes"]:
                state += f" ({r['state_alloc_bytes'] / 1024:,.0f})"
            lines.append(
                f"| {LABEL[m]} | {r['length']:,} | {r['acs']:,.0f} | {r['macs']:,.0f} | "
                f"{r['other_macs']:,.0f} | {r['e_fp32'] * 1e9:.3f} | {r['e_int8'] * 1e9:.4f} | "
                f"{r['ms_per_token']:.2f} | {r['rss_peak_mib']:.1f} | {r['growth_mib']:+.1f} | "
                f"{state} | {r['activity']:.3f} |" if "activity" in r else
                f"| {LABEL[m]} | {r['length']:,} | {r['acs']:,.0f} | {r['macs']:,.0f} | "
                f"{r['other_macs']:,.0f} | {r['e_fp32'] * 1e9:.3f} | {r['e_int8'] * 1e9:.4f} | "
                f"{r['ms_per_token']:.2f} | {r['rss_peak_mib']:.1f} | {r['growth_mib']:+.1f} | "
                f"{state} | |")
    lines += [
        "",
        "## Prefill, per token",
        "",
        f"GPT: the whole L-token prefill in one pass (torch's SDPA formula counts the full "
        f"L x L scores; a causal kernel does about half). BrainLM: the first "
        f"min(L, {PREFILL_COUNT_BRAIN}) tokens through the module loop (per-token work "
        "independent of L). Reference-module step time (median, no counter) beside it.",
        "",
        "| model | L | ACs/token | MACs/token | other MACs/token | reference step (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in MODELS:
        for r in res[m]["rows"]:
            lines.append(f"| {LABEL[m]} | {r['length']:,} | {r['prefill_acs_per_token']:,.0f} | "
                         f"{r['prefill_macs_per_token']:,.0f} | "
                         f"{r['prefill_other_macs_per_token']:,.0f} | "
                         f"{r['ms_per_token_reference']:.2f} |")
    lines += [
        "",
        "## What is counted",
        "",
        "`neurobit.analysis.opcount`: every BitLinear / nn.Linear call. Input all 0/1 (spikes): "
        "one accumulate (AC) per (active input, non-zero synapse) pair (event-driven; BrainLM's "
        "`W_rec`). Else ternary weights: `rows x nnz(codes)` ACs (BrainLM's `W_in`, readout "
        "and hub projections; the readout reads spike counts / 2, so it is counted as ternary, "
        "not event-driven: an upper bound). Else dense MACs `rows x in x out` (the GPT's layers "
        "and both output heads, which are float). Matrix products outside layers (GPT attention "
        "`QK^T` and `AV` over the cache; the hub's grouped attention and fast-weight read/write) "
        "are `other MACs` from torch's `FlopCounterMode` (flops / 2). Energy "
        "`E = AC E_add + (MAC + other MAC)(E_mult + E_add)` with Horowitz, ISSCC 2014, 45 nm: "
        "fp32 add 0.9 pJ, mult 3.7 pJ; int8 add 0.03 pJ, mult 0.2 pJ.",
        "",
        "Peak RSS includes the libraries each path loads (BrainLM's compiled kernel brings "
        "the numba runtime); compare the growth during generation and the state sizes.",
        "",
        "Not counted: elementwise work (LIF membrane updates, thresholds and resets, softmax, "
        "RMSNorm, rotary, GELU, clamps, bias adds), embedding lookups, memory traffic "
        "(weights and KV-cache reads, often the larger energy cost), tokenizer hashing.",
        "",
        f"![resources]({fig_rel})",
        "",
    ]
    return "\n".join(lines)


@app.command()
def measure(lengths: str = typer.Option("512,2048,4096,16384", "--lengths",
                                         help="context lengths L, comma-separated"),
            out: Path = typer.Option(HERE / "results", "--out", help="results directory"),
            steps: int = typer.Option(8, "--steps", help="counted steps per length")):
    """Measure both models at every length; write resources.md, resources.json, the figure."""
    import torch
    from neurobit.analysis.machine import cpu_model
    from neurobit.errors import ParameterError
    try:
        lengths = sorted(int(x) for x in lengths.replace(",", " ").split())
    except ValueError:
        raise ParameterError(f"lengths: expected integers like 512,2048, got {lengths!r}")
    if not lengths or min(lengths) < TAIL:
        raise ParameterError(f"lengths: each must be >= {TAIL}, got {lengths}")
    if steps < 1:
        raise ParameterError(f"steps: must be >= 1, got {steps}")
    torch.set_num_threads(1)
    cmd = ("python analysis/ablations/resources.py measure --lengths "
           + ",".join(map(str, lengths)) + (f" --steps {steps}" if steps != 8 else ""))
    res = {"command": cmd, "machine": f"{cpu_model()}, {os.cpu_count()} cores, "
           f"torch {torch.__version__}", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "steps": steps, "load_before": list(os.getloadavg())}
    with tempfile.TemporaryDirectory() as tmp:
        for m in MODELS:
            sizes = _sizes(m, Path(tmp))
            rows = []
            for n in lengths:
                print(f"{m} L={n}", flush=True)
                t = time.perf_counter()
                p = subprocess.run([sys.executable, __file__, "probe", m, str(n), sizes["nbc"],
                                    "--steps", str(steps)], capture_output=True, text=True,
                                   env=_env())
                if p.returncode:
                    raise SystemExit(f"probe {m} {n} failed:\n{p.stderr[-3000:]}")
                rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
                rows[-1]["probe_seconds"] = time.perf_counter() - t
            sizes.pop("nbc")
            res[m] = {"sizes": sizes, "rows": rows}
    res["load_after"] = list(os.getloadavg())
    out.mkdir(parents=True, exist_ok=True)
    fig = out.parent / "figures" / "resources.png"
    _figure(res, fig)
    (out / "resources.json").write_text(json.dumps(res, indent=1))
    md = _markdown(res, os.path.relpath(fig, out))
    (out / "resources.md").write_text(md)
    print(md)


if __name__ == "__main__":
    app()
