"""Short proxy runs that chose the study's BrainLM settings (and checked the GPT's lr).

    python analysis/lm/tune.py run        # 14 rounds x 2 runs x 240 s of training steps (~70 min)
    python analysis/lm/tune.py report     # -> analysis/lm/results/lm_tuning.md

Every run is ``neurobit train`` on ``configs/brain.yaml`` or ``configs/gpt.yaml`` with the
round's overrides, a 240 s budget of training-step time and one validation of 32 batches
(16 x 128 characters) at the end. The two runs of a round train at the same time, one core
each (as in the study), so compare within a round; step counts also move with the load of the
machine (about +-10% between identical runs here). Overrides are relative to the *original*
study settings (``BASE`` below: every unit decays by alpha 0.9, lr 3e-3), because the configs
now hold the chosen ones.
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
RUNS = ROOT / "runs" / "lm_tuning"
sys.path.insert(0, str(HERE))

BASE = ["model.alpha=0.9", "model.alpha_min=null", "train.lr=3e-3", "train.min_lr=3e-4"]
HET = ["model.alpha_min=0.5", "model.alpha=0.97"]
WIDE = ["model.alpha_min=0.3", "model.alpha=0.99"]
LR6 = ["train.lr=6e-3", "train.min_lr=6e-4"]
LR10 = ["train.lr=1e-2", "train.min_lr=1e-3"]
# (name, model, overrides after BASE, what it asks)
RG = ["model.hub_residual=true", "model.membrane_readout=gain"]  # rounds 13-14
ROUNDS = [
    [("base", "brain", [], "the original settings"),
     ("ss1", "brain", ["model.spike_steps=1"], "one LIF step per character")],
    [("het", "brain", HET, "time constants 1.4..33 steps"),
     ("nofw", "brain", ["model.fast_weights=false"], "no fast weights")],
    [("het_lr6", "brain", HET + LR6, "+ lr 6e-3"),
     ("het_wide", "brain", WIDE, "time constants 0.8..99.5 steps")],
    [("wide_lr6", "brain", WIDE + LR6, "time constants 0.8..99.5 + lr 6e-3 (w6)"),
     ("wide_lr10", "brain", WIDE + LR10, "lr 1e-2")],
    [("gpt_lr3", "gpt", [], "GPT as before"),
     ("gpt_lr6", "gpt", LR6, "GPT at lr 6e-3")],
    [("w6_ss1", "brain", WIDE + LR6 + ["model.spike_steps=1"], "w6, one LIF step"),
     ("w6_lam99", "brain", WIDE + LR6 + ["model.lam=0.99"], "w6, fast-weight decay 0.99")],
    [("w6_slope8", "brain", WIDE + LR6 + ["model.slope=8"], "w6, surrogate slope 8"),
     ("w6_drive3", "brain", WIDE + LR6 + ["model.drive=3"], "w6, input gain 3")],
    [("w6_feedback", "brain", WIDE + LR6 + ["model.hub_feedback=true"],
      "w6, hub feedback into the circuits"),
     ("w6_bs32", "brain", WIDE + LR6 + ["train.batch_size=32"], "w6, batch 32")],
    [("w6_eta3", "brain", WIDE + LR6 + ["model.eta=0.3"], "w6, fast-weight write rate 0.3"),
     ("w6_slope2", "brain", WIDE + LR6 + ["model.slope=2"], "w6, surrogate slope 2")],
    [("w6_ref", "brain", WIDE + LR6, "w6 again (the reference of rounds 8-10)"),
     ("w6_slope1", "brain", WIDE + LR6 + ["model.slope=1"], "w6, surrogate slope 1 (not kept: see README)")],
    [("w6_mread", "brain", WIDE + LR6 + ["model.memory_read=true"],
      "w6, the hub reads the fast-weight memory as values"),
     ("w6_mread_lam99", "brain", WIDE + LR6 + ["model.memory_read=true", "model.lam=0.99"],
      "w6, memory read, decay 0.99")],
    [("w6_mem_bank", "brain", WIDE + LR6 + ["model.membrane_readout=bank"],
      "w6, readout also from the end-of-token membrane (second ternary bank)"),
     ("w6_mem_gain", "brain", WIDE + LR6 + ["model.membrane_readout=gain"],
      "w6, readout of rate + gain * membrane")],
    [("w6_hubres", "brain", WIDE + LR6 + ["model.hub_residual=true"],
      "w6, each circuit keeps its own hub value"),
     ("w6_hubres_gain", "brain", WIDE + LR6 + ["model.hub_residual=true",
                                               "model.membrane_readout=gain"],
      "w6, hub residual + membrane gain readout (rg)")],
    [("w6_rg_mread", "brain", WIDE + LR6 + RG + ["model.memory_read=true"],
      "rg + the hub reads the fast-weight memory as values"),
     ("w6_rg_mread_lam99", "brain", WIDE + LR6 + RG + ["model.memory_read=true",
                                                     "model.lam=0.99"],
      "rg + memory read, decay 0.99")],
]
SECONDS = 240

app = typer.Typer(add_completion=False, no_args_is_help=True)


def _cmd(name: str, model: str, sets: list[str]) -> list[str]:
    import study
    over = (BASE if model == "brain" else BASE[2:]) + sets + [
        f"train.max_seconds={SECONDS}", "train.eval_interval=100000", "train.eval_batches=32",
        "train.checkpoint_interval=100000"]
    return study.train_cmd(HERE / "configs" / f"{model}.yaml", RUNS / name, "--force",
                           sets=tuple(over))


@app.command()
def run(only: str = typer.Option("", help="comma-separated run names (default: all)")):
    """Train every round's two runs at the same time, one core each."""
    import study
    RUNS.mkdir(parents=True, exist_ok=True)
    want = set(filter(None, only.split(",")))
    unknown = want - {name for pair in ROUNDS for name, *_ in pair}
    if unknown:
        raise typer.BadParameter(f"no such run: {', '.join(sorted(unknown))}", param_hint="--only")
    for pair in ROUNDS:
        jobs = {name: _cmd(name, model, sets) for name, model, sets, _ in pair
                if not want or name in want}
        if jobs:
            study.train_side_by_side(jobs, RUNS)


def _final(name: str) -> tuple[int, float] | None:
    path = RUNS / name / "metrics.jsonl"
    if not path.exists():
        return None
    vals = [json.loads(line) for line in path.read_text().splitlines() if "val_loss" in line]
    return (vals[-1]["step"], vals[-1]["val_loss"]) if vals else None


def _rows(table: Path) -> dict[str, tuple[int, float]]:
    """``(steps, val loss)`` of the runs in an earlier ``lm_tuning.md``, by run name."""
    if not table.exists():
        return {}
    rows = [line.split("|") for line in table.read_text().splitlines() if line.startswith("| ")]
    return {r[2].strip(): (int(r[5]), float(r[6])) for r in rows[1:] if r[5].strip() != "-"}


@app.command()
def report():
    """Write ``results/lm_tuning.md`` from the runs' last validation losses."""
    import math
    lines = ["# BrainLM settings: 240 s proxy runs", "",
             f"Made by `python analysis/lm/tune.py run && python analysis/lm/tune.py report` "
             f"({time.strftime('%Y-%m-%d')}); each run 240 s of training steps, the two runs of "
             "a round at the same time, one core each; validation loss on 32 batches of "
             "16 x 128 held-out characters at the end. Compare within a round (the machine's "
             "speed drifts between rounds, and the kernels got faster between rounds 2 and 3 "
             "and between rounds 6 and 7; rounds 8-10 ran ten days later on a fresh machine, "
             "about 25% more steps in 240 s: round 10 repeats w6 as their "
             "reference; rounds 11-14 (new model options: hub memory read, membrane readout, "
             "hub residual) compare with it, on the same machine an hour later). Runs whose directory is gone keep their numbers from the earlier table.", "",
             "| round | run | model | overrides of the original settings | steps | val loss (nats) | bits/char | note |",
             "|---:|---|---|---|---:|---:|---:|---|"]
    out = HERE / "results" / "lm_tuning.md"
    earlier = _rows(out)
    for i, pair in enumerate(ROUNDS, 1):
        for name, model, sets, note in pair:
            fin = _final(name) or earlier.get(name)   # run directory gone: the earlier row
            steps, loss = fin if fin else ("-", float("nan"))
            sets_s = ", ".join(f"`{s}`" for s in sets) or "-"
            lines.append(f"| {i} | {name} | {model} | {sets_s} | {steps} | {loss:.4f} | "
                         f"{loss / math.log(2):.3f} | {note} |")
    out.parent.mkdir(exist_ok=True)
    atomic_write_text(out, "\n".join(lines) + "\n")
    print(out)


if __name__ == "__main__":
    app()
