"""The BrainLM vs GPT study: equal parameters, equal wall-clock training budget, 2 CPU cores.

    python analysis/lm/study.py train        # both runs at once, one core each (20 min)
    python analysis/lm/study.py evaluate     # -> analysis/lm/results/, analysis/lm/figures/

``train`` runs ``neurobit train`` on ``configs/brain.yaml`` and ``configs/gpt.yaml``
concurrently, each process pinned to one thread (torch and numba), with the same
``max_seconds`` budget of training-step time, into ``runs/lm_study/{brain,gpt}``.

``evaluate`` measures, for both trained models:

- validation bits per character on 64 fixed windows of 16 x 128 characters of the held-out
  plays (the same windows for both models): ``bpc = mean cross-entropy (nats) / ln 2``;
- training tokens/s during the study (concurrent, one core each: tokens / training seconds)
  and alone on the machine (2 threads, 10 timed steps of the study's batch);
- prompt processing (one pass over 512 tokens) and generation tokens/s (greedy, batch 1,
  through ``neurobit generate``'s step function), with the reference modules;
- the same generation rates for the model generation runs on below: BrainLM compiled
  (``neurobit compile``: same weights and state, the fused per-token kernel), the GPT as
  trained (it has no ternary weights to pack);
- peak memory of generation at 512, 4096 and 16384 tokens: every length in a fresh process,
  the peak resident set size during generation (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs`` once the model is loaded and warm) and its growth over the
  resident size before generation, and the exact size of the generation state
  (BrainLM: LIF state + fast weights; GPT: its KV cache);
- greedy decoding against anti-collapse decoding (temperature 0.8, top-p 0.95, repetition
  penalty 1.1 over the last 64 tokens, collapse detection with one retry) on 50 fixed prompts
  from the held-out plays, 200 new characters each: seq-rep-4, distinct-4 and rep/16 on
  characters, seq-rep-2 on words, collapse events; beside the true continuations of the same
  prompts.

Results: ``results/lm_study.md`` (tables), ``results/lm_study.json`` (every number),
``results/{brain,gpt}_metrics.jsonl`` (the training logs), figures in ``figures/``.
"""
from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # per-token kernels: no parallel launches

import typer
import yaml

from neurobit._atomic import atomic_write_text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "analysis" / "benchmarks"))
from _timing import lm_rates  # noqa: E402 (prompt and generation tokens/s, shared)
RUNS = ROOT / "runs" / "lm_study"
MODELS = ("brain", "gpt")
LABEL = {"brain": "BrainLM", "gpt": "GPT baseline"}
GEN_LENGTHS = (512, 4096, 16384)
N_PROMPTS, PROMPT_CHARS, NEW_TOKENS = 50, 64, 200
PARTIAL = "evaluate_partial.json"   # evaluate's finished stages, per model and checkpoint

app = typer.Typer(add_completion=False, no_args_is_help=True)


def train_cmd(config: Path, out: Path, *flags: str, sets: tuple[str, ...] = ()) -> list[str]:
    """The ``neurobit train CONFIG -o OUT -q FLAGS --set S ...`` command line."""
    return ([sys.executable, "-m", "neurobit.cli", "train", str(config), "-o", str(out), "-q",
             *flags] + [a for s in sets for a in ("--set", s)])


def train_side_by_side(jobs: dict[str, list[str]], log_dir: Path) -> None:
    """Run the training commands ``jobs`` (name -> command) at the same time, each pinned to one
    thread (torch, OpenMP, MKL, numba), logging to ``log_dir/<name>.log``; exit naming the
    failed ones."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    procs = {}
    for name, cmd in jobs.items():
        with open(log_dir / f"{name}.log", "w") as log:   # the child keeps its own handle
            procs[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    failed = [name for name, p in procs.items() if p.wait() != 0]
    if failed:
        raise SystemExit(f"training failed: {', '.join(failed)}; see {log_dir}/<name>.log")


@app.command()
def train(force: bool = typer.Option(False, "--force", help="discard earlier study runs")):
    """Train both models concurrently, one core each, on the configs' time budget."""
    RUNS.mkdir(parents=True, exist_ok=True)
    (RUNS / PARTIAL).unlink(missing_ok=True)   # measurements of earlier models are void
    flag = "--force" if force else "--resume"
    train_side_by_side({m: train_cmd(HERE / "configs" / f"{m}.yaml", RUNS / m, flag)
                        for m in MODELS}, RUNS)


# -- helpers ----------------------------------------------------------------------------------
def _load(m: str):
    from neurobit.train.checkpoint import load_checkpoint, load_model
    from neurobit.train.tokenizer import load_tokenizer
    model, cfg = load_model(RUNS / m)
    model.eval()
    return model, load_tokenizer(RUNS / m / "tokenizer.json"), load_checkpoint(RUNS / m)


def _generation_model(m: str):
    """The model generation runs on: BrainLM compiled (``neurobit compile``: same weights and
    state, the fused per-token kernel; spikes equal the reference except at threshold ties),
    the GPT as trained (float, KV cache)."""
    if m != "brain":
        model, tok, _ = _load(m)
        return model, tok
    from neurobit.compile.lm import compile_checkpoint, load_compiled_lm
    path = RUNS / "brain.nbc"
    compile_checkpoint(RUNS / m, path)
    return load_compiled_lm(path)


def _data():
    from neurobit.train.run_config import load_run_file, prepare_run_data
    return prepare_run_data(load_run_file(RUNS / "brain" / "run.yaml"))


def _val_bpc(model, data, n_batches=64, batch=16, block=128) -> float:
    import torch
    from neurobit.train.loop import lm_loss
    gen = torch.Generator().manual_seed(20261123)
    tot = 0.0
    with torch.no_grad():
        for _ in range(n_batches):
            x, y, w = data.get_batch("val", batch, block, gen)
            tot += float(lm_loss(model, x, y, w))
    return tot / n_batches / math.log(2)


def _train_rate_alone(m: str, cfg, data, steps=10, warm=3) -> float:
    import torch
    from neurobit.models.brain_lm import build_model
    from neurobit.train.loop import lm_loss, make_optimizer
    torch.manual_seed(0)
    model = build_model(cfg.model)
    opt = make_optimizer(model, cfg.train)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(warm + steps):
        x, y, w = data.get_batch("train", cfg.train.batch_size, cfg.train.block_size, gen)
        t = time.perf_counter()
        loss = lm_loss(model, x, y, w)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return cfg.train.batch_size * cfg.train.block_size / (sum(times[warm:]) / steps)


@app.command("memory-probe")
def memory_probe(model_name: str, length: int):
    """(internal) Generate ``length`` tokens greedily in this fresh process; print JSON."""
    import torch
    from neurobit.decode import SamplingConfig
    from neurobit.decode.processors import LogitsPipeline
    from neurobit.models.brain_lm import state_numel
    from neurobit.train.lm_step import lm_step_fn
    torch.set_num_threads(2)
    model, tok = _generation_model(model_name)
    data = _data()
    step = lm_step_fn(model, tok)
    prompt = torch.as_tensor(data.arrays["val"][:16].astype("int64"))
    seq = torch.empty(length + 16, dtype=torch.long)
    seq[:16] = prompt
    step(seq[None, :16], step(seq[None, :15], None)[1])  # warm: the one-token path compiled
    logits, state = step(seq[None, :16], None)
    pipe = LogitsPipeline(SamplingConfig(do_sample=False))
    del data
    import gc
    gc.collect()
    base = _rss_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")   # reset the peak (VmHWM) to the current RSS
    t0 = time.perf_counter()
    for i in range(16, 16 + length):
        seq[i] = pipe.sample(logits, seq[None, :i], None)[0]
        logits, state = step(seq[None, :i + 1], state)
    dt = time.perf_counter() - t0
    peak = _rss_mib("VmHWM")
    print(json.dumps({"model": model_name, "length": length, "rss_before_mib": base,
                      "rss_peak_mib": peak, "growth_mib": peak - base,
                      "state_bytes": state_numel(state.model, nbytes=True), "seconds": dt,
                      "maxrss_process_mib":
                          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _rss_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _memory(m: str) -> list[dict]:
    rows = []
    for n in GEN_LENGTHS:
        out = subprocess.run([sys.executable, __file__, "memory-probe", m, str(n)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def _prompts(data, tok) -> list[tuple[list[int], list[int]]]:
    """50 prompts of 64 characters evenly spaced over the held-out plays, with the true 200
    characters that follow each."""
    val = data.arrays["val"]
    span = len(val) - PROMPT_CHARS - NEW_TOKENS
    starts = [int(i * span / N_PROMPTS) for i in range(N_PROMPTS)]
    return [(val[s:s + PROMPT_CHARS].astype(int).tolist(),
             val[s + PROMPT_CHARS:s + PROMPT_CHARS + NEW_TOKENS].astype(int).tolist())
            for s in starts]


def _degeneration(seqs: list[list[int]], tok) -> dict:
    from neurobit.decode.metrics import distinct_n, rep_l, seq_rep_n
    words = [tok.decode(s).split() for s in seqs]
    mean = lambda xs: sum(xs) / len(xs)
    return {"seq_rep_4": mean([seq_rep_n(s, 4) for s in seqs]),
            "distinct_4": mean([distinct_n(s, 4) for s in seqs]),
            "rep_16": mean([rep_l(s, 16) for s in seqs]),
            "word_seq_rep_2": mean([seq_rep_n(w, 2) for w in words]),
            "mean_length": mean([len(s) for s in seqs])}


ANTI_COLLAPSE = dict(temperature=0.8, top_p=0.95, repetition_penalty=1.1, history_window=64)


def _decoding(model, tok, prompts) -> dict:
    import torch
    from neurobit.decode import CollapseDetector, SamplingConfig, conservative, generate
    from neurobit.train.lm_step import lm_step_fn
    step = lm_step_fn(model, tok)
    out = {}
    greedy = [generate(step, torch.tensor(p), NEW_TOKENS,
                       sampling=SamplingConfig(do_sample=False)).tokens.tolist()
              for p, _ in prompts]
    out["greedy"] = _degeneration(greedy, tok)
    sampling = SamplingConfig(**ANTI_COLLAPSE)
    runs = [generate(step, torch.tensor(p), NEW_TOKENS, sampling=sampling,
                     detector=CollapseDetector(), seed=i,
                     retry_sampling=conservative(sampling))
            for i, (p, _) in enumerate(prompts)]
    out["anti_collapse"] = _degeneration([r.tokens.tolist() for r in runs], tok)
    out["anti_collapse"].update(collapses=sum(len(r.events) for r in runs),
                                retries=sum(r.retries for r in runs),
                                cautious=sum(r.cautious for r in runs))
    out["examples"] = {"prompt": tok.decode(prompts[0][0]), "greedy": tok.decode(greedy[0]),
                       "anti_collapse": tok.decode(runs[0].tokens.tolist())}
    return out


def _training_log(m: str) -> tuple[list, list]:
    """``(train rows, val rows)`` of metrics.jsonl with cumulative training seconds."""
    rows = [json.loads(ln) for ln in (RUNS / m / "metrics.jsonl").read_text().splitlines()
            if ln.strip()]
    cfg = yaml.safe_load((RUNS / m / "config.yaml").read_text())
    per_step = cfg["train"]["batch_size"] * cfg["train"]["block_size"]
    secs, last_step, tr, va, at = 0.0, 0, [], [], {}
    for r in rows:
        if "loss" in r:
            secs += (r["step"] - last_step) * per_step / r["tokens_per_s"]
            last_step = r["step"]
            at[r["step"]] = secs
            tr.append((r["step"], secs, r["loss"]))
        else:
            va.append((r["step"], at.get(r["step"], secs), r["val_loss"]))
    return tr, va


def _figures(results: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig_dir = HERE / "figures"
    fig_dir.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for m in MODELS:
        tr, va = _training_log(m)
        ax.plot([s / 60 for _, s, _ in tr], [x / math.log(2) for *_, x in tr], lw=0.6,
                alpha=0.5, label=f"{LABEL[m]} train")
        ax.plot([s / 60 for _, s, _ in va], [x / math.log(2) for *_, x in va], "o-", ms=3,
                label=f"{LABEL[m]} validation")
    ax.set_xlabel("training time (minutes, one core each)")
    ax.set_ylabel("bits per character")
    ax.set_ylim(1.5, 4.5)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(fig_dir / "lm_study_loss.png", dpi=110)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for m in MODELS:
        rows = results[m]["memory"]
        L = [r["length"] for r in rows]
        a1.plot(L, [r["rss_peak_mib"] for r in rows], "o-", label=LABEL[m])
        a2.plot(L, [r["state_bytes"] / 2**20 for r in rows], "o-", label=LABEL[m])
    for a, t in ((a1, "peak RSS of the process (MiB)"), (a2, "generation state (MiB)")):
        a.set_xscale("log", base=2)
        a.set_xlabel("tokens generated")
        a.set_title(t, fontsize=10)
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(fig_dir / "lm_study_memory.png", dpi=110)


def _table(results: dict) -> str:
    b, g = results["brain"], results["gpt"]
    lines = [
        "# BrainLM vs GPT baseline: Shakespeare characters, equal parameters, equal time",
        "",
        f"Made by `python analysis/lm/study.py train && python analysis/lm/study.py evaluate` "
        f"on {results['machine']} ({results['date']}). Both models trained at the same time, "
        f"one core each, for {b['train_seconds']:.0f} s / {g['train_seconds']:.0f} s of "
        "training steps (configs in `analysis/lm/configs/`).",
        "",
        "| | BrainLM | GPT baseline | ratio |",
        "|---|---:|---:|---:|",
        f"| parameters | {b['params']:,} | {g['params']:,} | {b['params'] / g['params']:.3f} |",
        f"| training steps / characters seen | {b['steps']:,} / {b['tokens_seen']/1e6:.2f} M | "
        f"{g['steps']:,} / {g['tokens_seen']/1e6:.2f} M | |",
        f"| **validation bits/char** | **{b['val_bpc']:.3f}** | **{g['val_bpc']:.3f}** | "
        f"{b['val_bpc'] / g['val_bpc']:.3f} |",
        f"| training tokens/s (study, 1 core each) | {b['train_tps_study']:,.0f} | "
        f"{g['train_tps_study']:,.0f} | {b['train_tps_study'] / g['train_tps_study']:.2f} |",
        f"| training tokens/s (alone on the machine, 2 threads) | {b['train_tps_alone']:,.0f} | "
        f"{g['train_tps_alone']:,.0f} | {b['train_tps_alone'] / g['train_tps_alone']:.2f} |",
        f"| prompt processing tokens/s (512) | {b['prompt_tps']:,.0f} | {g['prompt_tps']:,.0f}"
        f" | {b['prompt_tps'] / g['prompt_tps']:.2f} |",
        f"| generation tokens/s (greedy, batch 1, reference modules) | {b['gen_tps']:,.0f} | "
        f"{g['gen_tps']:,.0f} | {b['gen_tps'] / g['gen_tps']:.2f} |",
        f"| generation tokens/s (BrainLM compiled; GPT as trained) | "
        f"{b['gen_tps_compiled']:,.0f} | {g['gen_tps_compiled']:,.0f} | "
        f"{b['gen_tps_compiled'] / g['gen_tps_compiled']:.2f} |",
        "",
        "Generation (memory and decoding below) runs BrainLM compiled (`neurobit compile`: the "
        "same weights and state, the fused per-token kernel) and the GPT as trained.",
        "",
        "## Generation memory (each length in a fresh process, greedy, batch 1)",
        "",
        "| tokens | BrainLM peak RSS (MiB) | growth during generation | state (KiB) | "
        "GPT peak RSS (MiB) | growth during generation | KV cache (KiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rb, rg in zip(b["memory"], g["memory"]):
        lines.append(f"| {rb['length']:,} | {rb['rss_peak_mib']:.1f} | "
                     f"{rb['growth_mib']:+.1f} | {rb['state_bytes'] / 1024:.1f} | "
                     f"{rg['rss_peak_mib']:.1f} | {rg['growth_mib']:+.1f} | "
                     f"{rg['state_bytes'] / 1024:.1f} |")
    lines += [
        "",
        f"Peak RSS from 512 to 16,384 tokens: BrainLM "
        f"{100 * b['rss_growth_512_to_16k']:+.1f}%, GPT {100 * g['rss_growth_512_to_16k']:+.1f}%. "
        "The GPT uses rotary positions, so it runs at 16k tokens (trained on 128-token windows: "
        "quality that far out is not claimed); its KV cache doubles its buffer when full.",
        "",
        "## Greedy vs anti-collapse decoding (50 prompts from the held-out plays, 200 characters)",
        "",
        f"Anti-collapse: `{ANTI_COLLAPSE}` + CollapseDetector() with one retry "
        "(conservative sampling). Metrics on characters unless marked.",
        "",
        "| model | decoding | seq-rep-4 | distinct-4 | rep/16 | word seq-rep-2 | collapses | "
        "retries | cautious |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in MODELS:
        for k in ("greedy", "anti_collapse"):
            r = results[m]["decoding"][k]
            lines.append(f"| {LABEL[m]} | {k.replace('_', '-')} | {r['seq_rep_4']:.3f} | "
                         f"{r['distinct_4']:.3f} | {r['rep_16']:.3f} | {r['word_seq_rep_2']:.3f} "
                         f"| {r.get('collapses', '')} | {r.get('retries', '')} | "
                         f"{r.get('cautious', '')} |")
    h = results["human"]
    lines.append(f"| held-out text | (true continuation) | {h['seq_rep_4']:.3f} | "
                 f"{h['distinct_4']:.3f} | {h['rep_16']:.3f} | {h['word_seq_rep_2']:.3f} | | | |")
    lines += ["", "## Targets", ""]
    for text, ok in results["targets"].items():
        lines.append(f"- {'met' if ok else 'NOT met'}: {text}")
    lines += ["", "## First prompt, both decodings", ""]
    for m in MODELS:
        ex = results[m]["decoding"]["examples"]
        lines += [f"**{LABEL[m]}**, prompt `{ex['prompt']!r}`", "",
                  f"- greedy: `{ex['greedy']!r}`", f"- anti-collapse: `{ex['anti_collapse']!r}`",
                  ""]
    lines += ["![loss](../figures/lm_study_loss.png)", "",
              "![memory](../figures/lm_study_memory.png)", ""]
    return "\n".join(lines)


@app.command()
def evaluate():
    """Measure both trained models; write the results table, JSON and figures."""
    import torch
    from neurobit.analysis.machine import cpu_model
    from neurobit.models.gpt import count_parameters
    data = _data()
    results = {"machine": f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}",
               "date": time.strftime("%Y-%m-%d"), "python": platform.python_version()}
    prompts = None
    partial = RUNS / PARTIAL   # finished stages, so a rerun resumes
    done = json.loads(partial.read_text()) if partial.exists() else {}

    def stage(m, key, fn):
        if done.get(m, {}).get("_checkpoint") != checkpoint[m]:   # another model: start over
            done[m] = {"_checkpoint": checkpoint[m]}
        if key not in done[m]:
            print(f"{m}: {key}", flush=True)
            done[m][key] = fn()
            atomic_write_text(partial, json.dumps(done))
        return done[m][key]

    checkpoint = {}
    for m in MODELS:
        torch.set_num_threads(2)
        model, tok, ck = _load(m)
        checkpoint[m] = f"step {ck.step}, {ck.train_seconds:.3f} s"
        prompts = prompts or _prompts(data, tok)
        per_step = ck.config.train.batch_size * ck.config.train.block_size
        r = results[m] = {"params": count_parameters(model), "steps": ck.step,
                          "tokens_seen": ck.step * per_step, "train_seconds": ck.train_seconds}
        r["train_tps_study"] = ck.step * per_step / ck.train_seconds
        r["val_bpc"] = stage(m, "val_bpc", lambda: _val_bpc(model, data))
        r["train_tps_alone"] = stage(m, "train_tps_alone",
                                     lambda: _train_rate_alone(m, ck.config, data))
        val = data.arrays["val"]
        r["prompt_tps"], r["gen_tps"] = stage(
            m, "rates_reference", lambda: lm_rates(model, tok, val, repeats=1))
        gmodel, gtok = _generation_model(m)
        r["prompt_tps_compiled"], r["gen_tps_compiled"] = stage(
            m, "rates_generation_model", lambda: lm_rates(gmodel, gtok, val, repeats=1))
        r["memory"] = stage(m, "memory", lambda: _memory(m))
        r["decoding"] = stage(m, "decoding", lambda: _decoding(gmodel, gtok, prompts))
        (HERE / "results").mkdir(exist_ok=True)
        atomic_write_text(HERE / "results" / f"{m}_metrics.jsonl",
                          (RUNS / m / "metrics.jsonl").read_text())
    _, tok, _ = _load("brain")
    results["human"] = _degeneration([c for _, c in prompts], tok)
    for m in MODELS:
        mem = results[m]["memory"]
        results[m]["rss_growth_512_to_16k"] = mem[-1]["rss_peak_mib"] / mem[0]["rss_peak_mib"] - 1
    b, g = results["brain"], results["gpt"]
    mem = b["memory"]
    results["targets"] = {
        f"BrainLM validation bpc within 10% of the baseline ({b['val_bpc']:.3f} vs "
        f"{g['val_bpc']:.3f}: {100 * (b['val_bpc'] / g['val_bpc'] - 1):+.1f}%)":
            b["val_bpc"] <= 1.10 * g["val_bpc"],
        **{f"anti-collapse cuts greedy seq-rep-4 by at least half ({LABEL[m]}: "
           f"{results[m]['decoding']['greedy']['seq_rep_4']:.3f} -> "
           f"{results[m]['decoding']['anti_collapse']['seq_rep_4']:.3f})":
           results[m]["decoding"]["anti_collapse"]["seq_rep_4"]
           <= 0.5 * results[m]["decoding"]["greedy"]["seq_rep_4"] for m in MODELS},
        f"BrainLM generation memory flat within 5% from 512 to 16k tokens (peak RSS "
        f"{mem[0]['rss_peak_mib']:.1f} -> {mem[-1]['rss_peak_mib']:.1f} MiB)":
            mem[-1]["rss_peak_mib"] <= 1.05 * mem[0]["rss_peak_mib"],
    }
    _figures(results)
    md = _table(results)
    atomic_write_text(HERE / "results" / "lm_study.md", md)
    atomic_write_text(HERE / "results" / "lm_study.json", json.dumps(results, indent=1))
    print(md)


if __name__ == "__main__":
    app()
