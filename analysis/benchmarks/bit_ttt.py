"""Benchmark: tokens/s of one Bit-TTT layer on this CPU, beside the Bit-TTT notes' claim.

The Bit-TTT notes (github.com/imonoonoko/Bit-TTT-Engine, ``release/BIT_TTT_SPEC.md``) claim
"~60,000 TPS on CPU" for their Rust engine on a "standard consumer CPU" without naming the CPU;
the configuration comes from their ``release/benchmark.py`` (``hidden_dim = 128``,
``inner_lr = 0.1``, one sequence of 1000 tokens, timed after a 10-token warm-up, inference) and
their prototype layer (``legacy/python_proto/ttt_layer.py``: ternary down-projection to
``hidden_dim / 4 = 32``, a ``32 x 32`` state, ternary up-projection). Their timing includes
Python<->C call overhead. neurobit's layer (:class:`neurobit.models.bit_ttt.BitTTT`) is run in
the same configuration: ``d = 128``, ``d_state = 32``, ``eta = 0.1``, B = 1, T = 1000,
inference (``torch.no_grad``). It computes three features (k, v, q) where their prototype
reconstructs one, so it does slightly more work per token.

Contenders (median of ``--repeats`` timed calls after ``--warmup`` calls, round-robin):

- ``torch loop``: ``BitTTT.forward`` (projections hoisted over the sequence, a Python loop of
  :func:`ttt_linear_step` over tokens: about 5 small torch ops per token, dispatch-bound);
- ``torch loop, B=16``: the same with 16 sequences at once (tokens/s counts all of them);
- ``numba scan``: the per-token recurrence as one compiled numba loop over tokens (projections
  still torch GEMMs over the whole sequence), checked against ``torch loop`` in the same run
  (max abs difference printed; the script exits 1 above 1e-4): what a compiled engine like
  theirs can reach on this CPU;
- ``train fwd+bwd``: training throughput of the layer (B = 16, T = 64, backpropagation through
  time, ``autograd.grad`` of a sum of the outputs with respect to the parameters).

Usage::

    python analysis/benchmarks/bit_ttt.py              # writes results/bit_ttt.md
    python analysis/benchmarks/bit_ttt.py --quick      # smoke run, prints only
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import numba
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine_line, summarize, time_round_robin  # noqa: E402

from neurobit.models.bit_ttt import BitTTT  # noqa: E402

CLAIM_TPS = 60_000
RESULTS = Path(__file__).resolve().parent / "results" / "bit_ttt.md"


@numba.njit(cache=False)
def _ttt_scan_numba(W0, k, v, q, eta, z, loss):  # pragma: no cover (compiled)
    """The update of ``neurobit.models.bit_ttt.ttt_linear_step`` as one loop over tokens
    (benchmark only; checked against it): W0 ``[B, n, n]``, k, v, q ``[B, T, n]`` -> z, loss."""
    B, T, n = k.shape
    r = np.empty(n, dtype=k.dtype)
    for b in range(B):
        W = W0[b].copy()
        for t in range(T):
            acc = 0.0
            for i in range(n):
                s = -v[b, t, i]
                for j in range(n):
                    s += W[i, j] * k[b, t, j]
                r[i] = s
                acc += s * s
            loss[b, t] = 0.5 * acc
            for i in range(n):
                e = eta * r[i]
                s = 0.0
                for j in range(n):
                    W[i, j] -= e * k[b, t, j]
                    s += W[i, j] * q[b, t, j]
                z[b, t, i] = s


def numba_forward(layer: BitTTT, x: torch.Tensor) -> torch.Tensor:
    """``layer(x).y`` with the recurrence in :func:`_ttt_scan_numba` (inference only)."""
    k, v, q = (t.contiguous().numpy() for t in layer.features(x))
    B, T, n = k.shape
    z = np.empty((B, T, n), dtype=np.float32)
    loss = np.empty((B, T), dtype=np.float32)
    W0 = layer.initial_state(B).contiguous().numpy()
    _ttt_scan_numba(W0, k, v, q, np.float32(layer.eta), z, loss)
    return layer.up(torch.from_numpy(z))


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--d-state", type=int, default=32)
    ap.add_argument("--eta", type=float, default=0.1)
    ap.add_argument("--T", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: these per-token ops are too small to split)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="T = 200, 3 repeats, print only")
    ap.add_argument("--out", default=str(RESULTS))
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.quick:
        args.T, args.repeats = 200, 3
    command = " ".join(["python analysis/benchmarks/bit_ttt.py",
                        shlex.join(sys.argv[1:] if argv is None else argv)]).strip()
    load_before = f"{os.getloadavg()[0]:.1f}"
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    torch.manual_seed(args.seed)
    layer = BitTTT(args.d, args.d_state, eta=args.eta).eval()
    with torch.no_grad():
        layer.W0.normal_(0, 0.1)          # a trained-looking initial state, not zeros
    x1 = torch.randn(1, args.T, args.d)
    x16 = torch.randn(16, args.T, args.d)
    xt = torch.randn(16, 64, args.d)
    params = list(layer.parameters())

    with torch.no_grad():
        ref = layer(x1).y
        diff = float((numba_forward(layer, x1) - ref).abs().max())

    def fwd1():
        with torch.no_grad():
            layer(x1)

    def fwd16():
        with torch.no_grad():
            layer(x16)

    def fwd_numba():
        with torch.no_grad():
            numba_forward(layer, x1)

    def train():
        torch.autograd.grad(layer(xt).y.sum(), params)

    fns = {"torch loop": fwd1, "torch loop, B=16": fwd16, "numba scan": fwd_numba,
           "train fwd+bwd (B=16, T=64)": train}
    tokens = {"torch loop": args.T, "torch loop, B=16": 16 * args.T, "numba scan": args.T,
              "train fwd+bwd (B=16, T=64)": 16 * 64}
    samples = time_round_robin(fns, args.warmup, args.repeats)
    rows = []
    for name, s in samples.items():
        med, iqr = summarize(s)
        tps = tokens[name] / (med / 1e3)
        rows.append((name, tokens[name], med, iqr, tps, tps / CLAIM_TPS))
    machine = machine_line(args.threads, numba.get_num_threads(), ("torch", "numba", "numpy"))
    lines = [
        "# One Bit-TTT layer: tokens/s on this CPU beside the Bit-TTT notes' ~60,000 tokens/s",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}; load average before the run {load_before}, after "
        f"{os.getloadavg()[0]:.1f} (other processes share the 2 cores: absolute numbers are "
        "noisy, the ratios between rows less so)",
        "",
        f"Layer: `BitTTT(d={args.d}, d_state={args.d_state}, eta={args.eta})` (ternary absmean "
        "down 128 -> 3 x 32 and up 32 -> 128 projections, L2-normalised k/v/q, a 32 x 32 state "
        "updated per token), float32, seed "
        f"{args.seed}; T = {args.T} tokens per sequence; {args.warmup} warm-up calls, median of "
        f"{args.repeats} timed calls (round-robin). numba scan vs torch loop max |diff| = "
        f"{diff:.2e}.",
        "",
        "The configuration is the one of the notes' `release/benchmark.py` (hidden_dim 128, "
        "inner_lr 0.1, 1000 tokens, one sequence) with their prototype's down-projection to "
        "hidden_dim / 4. Their claim names no CPU and no model size beyond this; their engine is "
        "Rust with AVX2 and rayon threads and their timing includes Python<->C overhead.",
        "",
        "| contender | tokens per call | median ms | IQR ms | tokens/s | / 60,000 claimed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, n, med, iqr, tps, ratio in rows:
        lines.append(f"| {name} | {n} | {med:.2f} | {iqr:.2f} | {tps:,.0f} | {ratio:.2f} |")
    r = {name: ratio for name, _, _, _, _, ratio in rows}
    one, comp = r["torch loop"], r["numba scan"]
    lines += [
        "",
        "Reading: the per-token recurrence is sequential, so one sequence in a Python loop of "
        "torch ops is bound by dispatch overhead (a few small ops per token), not by arithmetic "
        f"(about 6 n^2 = {6 * args.d_state ** 2:,} flops per token for n = {args.d_state}). "
        f"Here that loop reaches {one:.2f}x the claimed 60,000 tokens/s; the same update compiled "
        f"into one loop (numba) reaches {comp:.2f}x, and batching 16 sequences amortises the "
        f"dispatch of the torch loop ({r['torch loop, B=16']:.2f}x). The claim is "
        + ("consistent with" if comp >= 1 else "above")
        + " what a compiled single-sequence loop does at this size on this CPU; "
        + ("the plain torch loop on one sequence does not reach it." if one < 1 else
           "even the plain torch loop reaches it.")
        + " Without the CPU model and their exact timing the comparison is indicative only.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0 if diff <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
