"""Reference vs compiled: circuit simulation, BrainLM generation and prompt processing, model
bytes; beside a same-size float GPT with a KV cache and Brian2's cpp_standalone loop.

    python analysis/benchmarks/compile.py            # -> results/compile.md

- **Circuits**: every shipped ``sims/*.yaml`` (durations as shipped) run by the reference
  stepper (torch modules) and by the fused stepper (the compiled circuit path: numba,
  event-driven packed codes); steps/s of ``Engine.run`` (median of 3 after a warm-up), spikes
  identical or not. The 4000-unit network of ``brian2_network.py`` (1 s at 0.1 ms) against
  Brian2 cpp_standalone's own loop time in the same run.
- **Language models** (batch 1, one thread per torch/numba pool): the study's BrainLM
  (``runs/lm_study/brain`` when trained, else the same config freshly initialised) as the
  reference ``BrainLM`` (``neurobit generate CHECKPOINT``) and compiled
  (``neurobit compile`` -> ``neurobit generate MODEL``): greedy generation tokens/s over 512
  tokens through the generation loop and through a bare ``model.step`` loop, prompt
  processing tokens/s over a 512-token prompt;
  the same for the parameter-matched GPT baseline (float, KV cache, ``runs/lm_study/gpt``).
- **Bytes**: checkpoint ``model.safetensors`` vs compiled file; bits per stored ternary weight.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from _timing import lm_rates  # noqa: E402
RESULTS = HERE / "results" / "compile.md"
STUDY = ROOT / "runs" / "lm_study"


def _median(xs):
    return float(np.median(np.asarray(xs)))


# -- circuits ---------------------------------------------------------------------------------
class _Raster:
    """Engine sink keeping every spike ``(population, step, unit, trial)`` in memory."""

    def __init__(self):
        self.events = []

    def append_spikes(self, name, steps, node_ids, trials) -> None:
        self.events.append((name, np.asarray(steps, np.int64), np.asarray(node_ids, np.int64),
                            np.asarray(trials, np.int64)))

    def append_report(self, name, data) -> None:
        pass

    def append_signal(self, name, data) -> None:
        pass

    def flush(self) -> None:
        pass

    def mark_steps(self, n_steps_done: int) -> None:
        pass

    def key(self) -> dict:
        """Per population: the sorted (trial, step, unit) triples of all its spikes."""
        out = {}
        for name, st, ids, tr in self.events:
            out.setdefault(name, []).append(np.stack([tr, st, ids], 1))
        return {n: np.unique(np.concatenate(v), axis=0) for n, v in out.items()}


def _engine(path: Path, stepper: str):
    from neurobit.config.loader import load_circuit
    from neurobit.sim.run import build_engine
    return build_engine(load_circuit(path, [f"stepper={stepper}"]))


def _time_engine(path: Path, stepper: str, runs: int = 3):
    eng = _engine(path, stepper)
    first = _Raster()
    eng.run(first)              # warm-up (numba compile, caches); its raster is compared
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        eng.run(_Raster())
        times.append(time.perf_counter() - t0)
    return _median(times), eng.n_steps * eng.net.cfg.trials, first


def circuits() -> list[dict]:
    from neurobit.sim.fused import fused_supported
    rows = []
    for path in sorted((ROOT / "sims").glob("*.yaml")):
        eng = _engine(path, "reference")
        why = fused_supported(eng.net, len(eng.blocks))
        ref_s, steps, ref_sink = _time_engine(path, "reference", runs=1)
        row = {"circuit": path.name, "steps": steps, "reference_s": ref_s}
        if why is None:
            fus_s, _, fus_sink = _time_engine(path, "fused")
            a, b = ref_sink.key(), fus_sink.key()
            row.update(compiled_s=fus_s, identical=a.keys() == b.keys() and all(
                np.array_equal(a[n], b[n]) for n in a))
        else:
            row.update(compiled_s=None, identical=None, note=why)
        rows.append(row)
        print(row, flush=True)
    return rows


def network_4000() -> dict:
    import brian2_network as bn
    eng = bn.build(1000.0, 0, "fused")
    bn.run_neurobit(eng, 1)
    times, kernel, steps, ids = bn.run_neurobit(eng, 3)
    ref = bn.build(1000.0, 0, "reference")
    ref_t, _, rsteps, rids = bn.run_neurobit(ref, 1)
    with tempfile.TemporaryDirectory() as d:
        net = Path(d) / "net.npz"
        bn.export_network(eng, net)
        cpp = bn.run_brian2_target("cpp_standalone", net, 3, "exact", 900)
    n_units = sum(p.units for p in eng.net.populations.values())
    same_cpp = (bn.compare((steps, ids), cpp["steps"], cpp["ids"], n_units)["identical"]
                if "steps" in cpp else None)
    return {"fused_s": _median(times), "kernel_s": _median(kernel), "reference_s": ref_t[0],
            "ref_identical": bool(np.array_equal(steps, rsteps) and np.array_equal(ids, rids)),
            "cpp_s": _median(cpp["warm_loop_s"]) if "warm_loop_s" in cpp else None,
            "cpp_identical": same_cpp, "cpp_error": cpp.get("error"), "spikes": int(len(ids))}


# -- language models --------------------------------------------------------------------------
def _model_rate(model, n=512) -> float:
    """Greedy generation tokens/s calling ``model.step`` directly (no sampling pipeline)."""
    import torch
    rates = []
    with torch.no_grad():
        for _ in range(3):
            st, tok = model.initial_state(1), torch.tensor([1])
            t = time.perf_counter()
            for _ in range(n):
                logits, st = model.step(tok, None, st)
                tok = logits.argmax(-1)
            rates.append(n / (time.perf_counter() - t))
    return _median(rates)


def _study_model(kind: str, workdir: Path) -> Path:
    """The trained study run of ``kind``, or a fresh run directory of its config (0 steps)."""
    run = STUDY / kind
    if (run / "latest").is_file():
        return run
    import subprocess
    out = workdir / kind
    subprocess.run([sys.executable, "-m", "neurobit.cli", "train",
                    str(ROOT / "analysis" / "lm" / "configs" / f"{kind}.yaml"), "-o", str(out),
                    "-q", "--set", "train.steps=1", "--set", "train.max_seconds=null"],
                   check=True)
    return out


def language_models(workdir: Path) -> dict:
    import torch
    from neurobit.compile.artifact import ternary_storage
    from neurobit.compile.lm import compile_checkpoint, load_compiled_lm
    from neurobit.train.checkpoint import latest_checkpoint, load_model
    from neurobit.train.run_config import load_run_file, prepare_run_data
    from neurobit.train.tokenizer import load_tokenizer
    torch.set_num_threads(1)
    out = {}
    for kind in ("brain", "gpt"):
        run = _study_model(kind, workdir)
        data = prepare_run_data(load_run_file(run / "run.yaml"))
        val = data.arrays["val"]
        tok = load_tokenizer(run / "tokenizer.json")
        model, cfg = load_model(run)
        model.eval()
        ref_p, ref_g = lm_rates(model, tok, val)
        ref_m = _model_rate(model)
        compiled = workdir / f"{kind}.nbc"
        compile_checkpoint(run, compiled)
        cmodel, ctok = load_compiled_lm(compiled)
        com_p, com_g = lm_rates(cmodel, ctok, val)
        com_m = _model_rate(cmodel)
        fmodel, _ = load_compiled_lm(compiled, "reference")   # modules, quantized once
        frz_p, frz_g = lm_rates(fmodel, ctok, val)
        st = ternary_storage(compiled)
        ck = latest_checkpoint(run) / "model.safetensors"
        out[kind] = {"trained": run.parent == STUDY, "params": sum(p.numel() for p in
                                                                   model.parameters()),
                     "ref_prompt": ref_p, "ref_gen": ref_g, "frozen_prompt": frz_p,
                     "frozen_gen": frz_g, "com_prompt": com_p, "ref_model": ref_m,
                     "com_model": com_m,
                     "com_gen": com_g, "checkpoint_bytes": ck.stat().st_size, **st}
        print(kind, out[kind], flush=True)
    return out


# -- report -----------------------------------------------------------------------------------
def write(circ: list[dict], net: dict, lms: dict, machine: str) -> str:
    f = lambda x, nd=3: "n/a" if x is None else f"{x:.{nd}f}"
    lines = ["# Compiled vs reference: circuits, BrainLM generation, model bytes", "",
             "Command: `python analysis/benchmarks/compile.py`", "", f"Machine: {machine}", "",
             "## Circuit simulation (`Engine.run`, median of 3 after a warm-up; reference: 1 run)",
             "", "| circuit | steps x trials | reference (s) | compiled/fused (s) | speed-up | "
             "identical spikes |", "|---|---:|---:|---:|---:|---|"]
    for r in circ:
        sp = r["reference_s"] / r["compiled_s"] if r["compiled_s"] else None
        ident = {True: "yes", False: "NO", None: f"n/a ({r.get('note', '')})"}[r["identical"]]
        lines.append(f"| {r['circuit']} | {r['steps']:,} | {f(r['reference_s'])} | "
                     f"{f(r['compiled_s'])} | {f(sp, 1)}{'x' if sp else ''} | {ident} |")
    lines += ["", "## 4000-unit network, 1 s at 0.1 ms (analysis/benchmarks/brian2_network.py)",
              "", "| contender | loop (s) | identical spikes |", "|---|---:|---|",
              f"| neurobit reference stepper | {f(net['reference_s'])} | "
              f"{'yes' if net['ref_identical'] else 'NO'} |",
              f"| neurobit compiled/fused, `Engine.run` | {f(net['fused_s'])} | (reference) |",
              f"| neurobit compiled/fused, inside the kernel | {f(net['kernel_s'])} | |",
              f"| Brian2 cpp_standalone, its own loop time | {f(net['cpp_s'])} | "
              f"{net['cpp_identical'] if net['cpp_identical'] is not None else net['cpp_error']}"
              " |", ""]
    lines += ["## Language models (batch 1, greedy, 512 tokens; tokens/s)", "",
              "Reference: the checkpoint's modules as trained (they re-quantize the master "
              "weights at every call); frozen: the same modules from the compiled file, "
              "quantized once (`load_compiled_lm(path, 'reference')`); compiled: "
              "`neurobit generate MODEL` (BrainLM: the fused per-token kernel).", "",
              "| model | params | prompt: reference | prompt: compiled | generation: reference |"
              " generation: frozen | generation: compiled | speed-up vs reference / frozen | "
              "model.step loop: reference | model.step loop: compiled | speed-up | "
              "checkpoint bytes | compiled bytes | bits / ternary weight |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, r in lms.items():
        name = {"brain": "BrainLM", "gpt": "GPT (float, KV cache)"}[kind]
        name += "" if r["trained"] else " (untrained)"
        bits = f(r["bits_per_ternary_weight"], 2) if r["ternary_weights"] else "no ternary"
        lines.append(f"| {name} | {r['params']:,} | {r['ref_prompt']:,.0f} | "
                     f"{r['com_prompt']:,.0f} | {r['ref_gen']:,.0f} | {r['frozen_gen']:,.0f} | "
                     f"{r['com_gen']:,.0f} | {r['com_gen'] / r['ref_gen']:.1f}x / "
                     f"{r['com_gen'] / r['frozen_gen']:.1f}x | {r['ref_model']:,.0f} | "
                     f"{r['com_model']:,.0f} | {r['com_model'] / r['ref_model']:.1f}x | "
                     f"{r['checkpoint_bytes']:,} | "
                     f"{r['file_bytes']:,} | {bits} |")
    b = lms["brain"]
    fused_ok = [r for r in circ if r["compiled_s"]]
    worst = min((r["reference_s"] / r["compiled_s"] for r in fused_ok), default=None)
    lines += ["", "## Targets", "",
              f"- generation at least 10x the reference (the model's token step): "
              f"{'met' if b['com_model'] >= 10 * b['ref_model'] else 'NOT met'} "
              f"({b['com_model'] / b['ref_model']:.1f}x); through the whole `generate` loop "
              f"(sampling pipeline, word hashing) {b['com_gen'] / b['ref_gen']:.1f}x, and "
              f"{b['com_gen'] / b['frozen_gen']:.1f}x the frozen modules",
              f"- circuit simulation at least 5x the reference: "
              f"{'met' if worst and worst >= 5 else 'NOT met'} (smallest speed-up "
              f"{f(worst, 1)}x over the circuits the fused stepper runs)",
              f"- 4000-unit network at least as fast as Brian2 cpp_standalone's loop: "
              f"{'met' if net['cpp_s'] and net['fused_s'] <= net['cpp_s'] else 'NOT met'} "
              f"({f(net['fused_s'])} s vs {f(net['cpp_s'])} s)",
              f"- at most 2 bits per ternary weight stored: "
              f"{'met' if b['bits_per_ternary_weight'] <= 2 else 'NOT met'} "
              f"({b['bits_per_ternary_weight']:.2f})", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--skip-circuits", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    from _timing import machine_line
    machine = machine_line(1, 1, ("torch", "numba", "brian2"))
    with tempfile.TemporaryDirectory() as d:
        lms = language_models(Path(d))
    circ = [] if args.skip_circuits else circuits()
    net = network_4000()
    md = write(circ, net, lms, machine)
    args.out.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
