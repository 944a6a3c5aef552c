"""How much of the circuits' diversity gets through each BrainBlock's CorticalHub.

    python analysis/lm/hub_mixing.py RUN_DIR [RUN_DIR ...]   # -> results/hub_mixing.md

For each trained BrainLM (a ``neurobit train`` output directory) and each block, over 8 fixed
validation windows of 16 x 128 characters (the study's data):

- attention entropy ``H = -sum_j a_ij ln a_ij`` of each circuit's weights over its group, as a
  fraction of ``ln S`` (S = group size; 1.0 = uniform: every circuit gets the group's mean);
- for the circuit outputs ``h`` ``[C, D]`` entering the hub and the hub outputs ``h'`` ``[C, d]``
  leaving it, per token, the share of the squared Frobenius norm in the top singular value,
  ``sigma_1^2 / sum_k sigma_k^2`` (1.0: all C circuits carry one vector up to scale; 1/C at
  most diversity).

A hub whose ``h'`` is near rank one passes about ``d`` numbers per token to the residual
stream instead of ``C d``. This measurement is why ``model.hub_residual`` exists
(analysis/lm/README.md).
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "hub_mixing.md"


def measure(run_dir: Path, n_batches: int = 8, batch: int = 16, block: int = 128) -> list[dict]:
    """Per block: mean attention entropy / ln S, top-singular-value share of h and h'."""
    from neurobit.train.checkpoint import load_model
    from neurobit.train.run_config import load_run_file, prepare_run_data
    model, _ = load_model(run_dir)
    model.eval()
    data = prepare_run_data(load_run_file(run_dir / "run.yaml"))
    seen: dict[int, list] = {i: [] for i in range(len(model.blocks))}
    hooks = [blk.hub.register_forward_hook(
        lambda mod, inp, out, i=i: seen[i].append((inp[0].detach(), out)))
        for i, blk in enumerate(model.blocks)]
    gen = torch.Generator().manual_seed(20261123)
    with torch.no_grad():
        for _ in range(n_batches):
            x, _, _ = data.get_batch("val", batch, block, gen)
            model(x)
    for h in hooks:
        h.remove()
    rows = []
    for i, caps in seen.items():
        hub = model.blocks[i].hub
        S = hub.layout.group_size
        ent, top_h, top_hp = [], [], []
        for h, out in caps:                                  # h [T, B, C, D]
            a = out.attn
            ent.append(float(-(a * a.clamp_min(1e-30).log()).sum(-1).mean()) / math.log(S))
            for name, z, acc in (("h", h, top_h), ("h'", out.h_prime, top_hp)):
                sv = torch.linalg.svdvals(z.flatten(0, 1).double())
                acc.append(float((sv[:, 0] ** 2 / (sv ** 2).sum(-1).clamp_min(1e-30)).mean()))
        mean = lambda v: sum(v) / len(v)  # noqa: E731
        rows.append(dict(block=i, circuits=hub.n_circuits, entropy=mean(ent), top_h=mean(top_h),
                         top_hp=mean(top_hp), residual=hub.residual))
    return rows


def _fail(message: str) -> None:
    """One-line error on stderr, exit code 2 (bad input), nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(run_dirs: list[str]) -> None:
    if not run_dirs:
        _fail("usage: python analysis/lm/hub_mixing.py RUN_DIR [RUN_DIR ...]")
    lines = ["# BrainLM hub mixing", "",
             f"Made by `python analysis/lm/hub_mixing.py {' '.join(run_dirs)}` "
             f"({time.strftime('%Y-%m-%d')}); 8 validation windows of 16 x 128 characters. "
             "Attention entropy as a fraction of ln(group size) (1 = uniform); top-sv share = "
             "sigma_1^2 / sum sigma_k^2 of the per-token [C, dim] matrix (1 = all circuits one "
             "vector, 1/C = most diverse).", "",
             "| run | hub residual | block | attention entropy / ln S | top-sv share of h (into "
             "the hub) | top-sv share of h' (out of the hub) |",
             "|---|---|---:|---:|---:|---:|"]
    for d in run_dirs:                      # check every argument before measuring any
        if not (Path(d) / "run.yaml").is_file():
            _fail(f"{d}: not a neurobit train directory (no run.yaml)")
    for d in run_dirs:
        path = Path(d)
        for r in measure(path):
            lines.append(f"| {path.name} | {r['residual']} | {r['block']} | {r['entropy']:.3f} | "
                         f"{r['top_h']:.3f} | {r['top_hp']:.3f} |")
    from neurobit._atomic import atomic_write_text
    atomic_write_text(OUT, "\n".join(lines) + "\n")
    print(OUT)


if __name__ == "__main__":
    main(sys.argv[1:])
