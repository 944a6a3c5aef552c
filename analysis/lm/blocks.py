"""Every LM block type under one equal, short budget: BrainLM, GPT, MoIE, DynSIHA, Bit-TTT,
Bit-Llama on Shakespeare characters (the configs of ``analysis/lm/configs/``, about 0.83M
parameters each).

    python analysis/lm/blocks.py --seconds 300      # -> results/lm_blocks.md

Each kind trains for ``--seconds`` of training-step time (``train.max_seconds``; the cosine
schedule follows the budget), two runs at a time, one core (one torch and numba thread)
each, into ``runs/lm_blocks/<kind>``. Then, per kind: validation bits per character on the
study's 64 fixed held-out windows (``study._val_bpc``), training tokens/s (tokens / training
seconds), parameters, and activity: BrainLM's mean spike rate of the circuit units, the SBL
kinds' mean gate activation rate (fraction of gate weights > 0); none for the others.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from neurobit._atomic import atomic_write_text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RUNS = ROOT / "runs" / "lm_blocks"
KINDS = ("brain", "gpt", "moie", "dynsiha", "bit_ttt", "bit_llama")
LABEL = {"brain": "BrainLM (spiking circuits + hub)", "gpt": "GPT baseline",
         "moie": "MoIE (SBL FFN)", "dynsiha": "DynSIHA (SBL attention + MoIE)",
         "bit_ttt": "Bit-TTT", "bit_llama": "Bit-Llama"}
sys.path.insert(0, str(HERE))


def _train_all(seconds: float) -> None:
    import study
    RUNS.mkdir(parents=True, exist_ok=True)
    sets = (f"train.max_seconds={seconds}", "train.eval_interval=100000")
    for pair in (KINDS[i:i + 2] for i in range(0, len(KINDS), 2)):
        study.train_side_by_side({k: study.train_cmd(HERE / "configs" / f"{k}.yaml", RUNS / k,
                                                     "--force", sets=sets) for k in pair}, RUNS)


def _activity(model, data) -> float | None:
    import torch
    gen = torch.Generator().manual_seed(7)
    x, _, w = data.get_batch("val", 4, 128, gen)
    with torch.no_grad():
        if hasattr(model, "forward_aux"):
            return model.activity(model.forward_aux(x, w))
        if model.cfg.kind != "brain":
            return None
        rates = []
        state = model.initial_state(4)
        for t in range(x.shape[1]):
            _, state = model.step(x[:, t], w[:, t], state)
            rates += [float(b.circuits.lif.s.mean()) for b in state.blocks]
        return sum(rates) / len(rates)


def evaluate() -> dict:
    import torch
    import study
    from neurobit.models.gpt import count_parameters
    from neurobit.train.checkpoint import load_checkpoint, load_model
    torch.set_num_threads(2)
    data = None
    rows = {}
    for k in KINDS:
        model, cfg = load_model(RUNS / k)
        model.eval()
        if data is None:
            from neurobit.train.run_config import load_run_file, prepare_run_data
            data = prepare_run_data(load_run_file(RUNS / k / "run.yaml"))
        ck = load_checkpoint(RUNS / k)
        per_step = cfg.train.batch_size * cfg.train.block_size
        rows[k] = {"params": count_parameters(model), "steps": ck.step,
                   "train_seconds": ck.train_seconds,
                   "train_tps": ck.step * per_step / ck.train_seconds,
                   "val_bpc": study._val_bpc(model, data), "activity": _activity(model, data)}
        print(k, rows[k], flush=True)
    return rows


def table(rows: dict, seconds: float, machine: str) -> str:
    g = rows["gpt"]["val_bpc"]
    lines = [f"# Every block type, {seconds:.0f} s of training each (Shakespeare characters)", "",
             f"Made by `python analysis/lm/blocks.py --seconds {seconds:.0f}` on {machine} "
             f"({time.strftime('%Y-%m-%d')}). Two runs at a time, one core each; configs in "
             "`analysis/lm/configs/` (sized to BrainLM's parameter count within 5%); the pairs "
             "(BrainLM, GPT), (MoIE, DynSIHA), (Bit-TTT, Bit-Llama) ran together, so compare "
             "tokens/s within a pair: a load average above 2 means other jobs shared the cores. "
             "The 20-minute BrainLM vs GPT comparison is `results/lm_study.md`.", "",
             "| block type | parameters | steps | training tokens/s | validation bits/char | "
             "vs GPT | activity |", "|---|---:|---:|---:|---:|---:|---:|"]
    for k, r in rows.items():
        act = "n/a" if r["activity"] is None else f"{r['activity']:.3f}"
        lines.append(f"| {LABEL[k]} | {r['params']:,} | {r['steps']:,} | {r['train_tps']:,.0f} "
                     f"| {r['val_bpc']:.3f} | {r['val_bpc'] / g:.3f} | {act} |")
    lines += ["", "Activity: BrainLM, the mean spike rate of its circuit units per LIF step "
              "(teacher-forced on 4 held-out windows); MoIE/DynSIHA, the mean fraction of "
              "Sparse-Bayesian gate weights above zero; GPT and the TTT kinds have no sparse "
              "activity to report.", ""]
    return "\n".join(lines)


def main(seconds: float = typer.Option(300.0, help="training-step seconds per kind"),
         skip_training: bool = typer.Option(False, help="evaluate existing runs only")):
    from neurobit.analysis.machine import cpu_model
    import os
    if not skip_training:
        _train_all(seconds)
    load = os.getloadavg()[2]
    rows = evaluate()
    md = table(rows, seconds, f"{cpu_model()}, {os.cpu_count()} cores, 15-min load average "
               f"{load:.1f} at the end of training")
    (HERE / "results").mkdir(exist_ok=True)
    atomic_write_text(HERE / "results" / "lm_blocks.md", md)
    atomic_write_text(HERE / "results" / "lm_blocks.json", json.dumps(rows, indent=1))
    print(md)


if __name__ == "__main__":
    typer.run(main)
