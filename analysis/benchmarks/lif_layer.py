"""Benchmark: one Linear -> LIF layer, neurobit against snntorch, norse and spikingjelly.

Every contender runs the same layer on the same data with the same weights, in one process:

    u_t = W x_t                     (no bias; one GEMM over all T steps, hoisted, for everyone)
    v_t = alpha v_{t-1} + u_t - beta s_{t-1},   s_t = 1[v_t > theta]

- ``x``: Poisson (Bernoulli) input spikes ``[T, B, n_in]`` float32 (default T = 500 steps of
  1 ms, B = 16, rate 0.1 per step); ``W``: one shared float32 matrix ``[n_out, n_in]``.
- ``alpha = 0.875`` (tau = 8 steps): ``alpha``, ``1 - alpha`` and ``1 / (1 - alpha)`` are exact
  in float32, so parameter rounding is not a source of spike mismatches; ``theta = 1``.
- modes: ``fwd`` (under ``torch.no_grad``, inference) and ``fwd+bwd`` (``loss = spikes.sum()``,
  ``torch.autograd.grad(loss, W)``); every contender uses a fast-sigmoid-shaped surrogate.

Contenders, each written the way a careful user of that library would write it (the input
projection hoisted out of the time loop, the sequence read with ``unbind(0)``):

- ``neurobit``: ``LIFPopulation(n, alpha, theta)`` (numba ``lif_scan`` with hand-written
  backward), beta = theta, surrogate ``fast_sigmoid`` slope 25.
- ``snntorch``: ``snn.Leaky(beta=alpha, threshold=theta, reset_mechanism="subtract")``, a Python
  loop over steps, ``surrogate.fast_sigmoid(slope=25)``. Same dynamics as neurobit (beta = theta,
  delayed reset): spikes must agree bit for bit.
- ``norse``: ``LIFBoxCell`` (norse 1.1 has no sequence module for it) in a Python loop, with
  ``reset_subtract``, ``dt = 1``, ``tau_mem_inv = 1 - alpha`` and input ``u / (1 - alpha)``;
  surrogate ``super`` (SuperSpike, same shape as fast sigmoid), alpha 25. norse subtracts theta in
  the spiking step, before the next decay, so it computes beta = alpha * theta; it is compared
  with neurobit run at beta = alpha * theta. Its reset is not detached and norse 1.1's SuperSpike
  backward ignores its alpha (``1 / (|x| + 1)^2``), so its gradient is compared with neurobit's
  ``detach_reset=False, slope=1``.
- ``spikingjelly``: ``LIFNode(step_mode="m")`` (2.0 dispatches to its CPU custom op: a torch step
  loop inside one op with a hand-written backward; 2.0 has no ``backend=`` argument any more),
  ``tau = 1 / (1 - alpha) = 8``, ``decay_input=False`` (so ``h = v - v / tau + x = alpha v + u``
  and the input needs no scaling), ``v_reset=None`` (soft reset, in the same step),
  ``detach_reset=True``, surrogate ``SoftSign(alpha=25)`` (fast-sigmoid shape, 12.5x the scale).
  Same-step soft reset again means beta = alpha * theta; it also fires on ``v >= theta``.

Spike agreement is the fraction of (t, b, unit) entries that differ from neurobit configured to
the dynamics the peer expresses; ``dW cos`` is the cosine between the peer's and neurobit's
weight gradient (scale-free, so surrogate scale does not matter).

Usage::

    python analysis/benchmarks/lif_layer.py                 # full run, writes results/lif_layer.md
    python analysis/benchmarks/lif_layer.py --quick         # T = 50 smoke run, prints only
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path
from typing import Callable, NamedTuple

# norse and spikingjelly declare torchvision; importing it breaks next to torch 2.13. Make any
# attempt fail as a plain ImportError instead of crashing inside torchvision's C++ ops.
sys.modules.setdefault("torchvision", None)

import numba  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine_line, summarize, time_round_robin  # noqa: E402

from neurobit.modules import LIFPopulation  # noqa: E402

ALPHA = 0.875  # decay per step (tau = 8 steps); exact in float32, as are 1 - alpha, 1/(1 - alpha)
THETA = 1.0
SLOPE = 25.0
RESULTS = Path(__file__).resolve().parent / "results" / "lif_layer.md"
PEERS = ("snntorch", "norse", "spikingjelly")

NOTES = (
    "neurobit: `LIFPopulation(n, alpha, theta=1)` (numba `lif_scan`, hand-written backward), "
    "beta = theta, surrogate fast_sigmoid slope 25.",
    "snntorch: `snn.Leaky(beta=alpha, threshold=1, reset_mechanism='subtract')`, per-step loop, "
    "`surrogate.fast_sigmoid(slope=25)`; same dynamics as neurobit (must agree bit for bit).",
    "norse: `LIFBoxCell` (`reset_subtract`, `dt=1`, `tau_mem_inv = 1 - alpha`, input "
    "`u / (1 - alpha)`, surrogate `super` alpha 25), per-step loop; same-step subtractive reset "
    "= neurobit with beta = alpha * theta; its reset is not detached and its SuperSpike backward "
    "ignores alpha (norse 1.1 uses `1 / (|x| + 1)^2`, slope 1), so its gradient is compared with "
    "neurobit's `detach_reset=False, slope=1`.",
    "spikingjelly: `LIFNode(tau=1/(1-alpha)=8, decay_input=False, v_reset=None, "
    "detach_reset=True, step_mode='m')`, surrogate `SoftSign(alpha=25)`; one multi-step call "
    "(2.0 dispatches to its CPU op: torch step loop, hand-written backward); same-step soft reset "
    "= neurobit with beta = alpha * theta; fires on `v >= theta`.",
)

Run = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [T,B,n_in], W) -> s [T,B,n_out]


class Contender(NamedTuple):
    name: str
    run: Run
    ref: tuple  # (beta, detach_reset, slope) of the neurobit run with the peer's dynamics


# -- contenders -----------------------------------------------------------------------------------
def make_neurobit(n_out: int, beta: float | None = None, detach_reset: bool = True,
                  slope: float = SLOPE) -> Run:
    pop = LIFPopulation(n_out, alpha=ALPHA, theta=THETA, beta=beta, surrogate="fast_sigmoid",
                        slope=slope, detach_reset=detach_reset)

    def run(x, W):
        s, _ = pop(F.linear(x, W))
        return s
    return run


def make_snntorch(n_out: int) -> Run:
    import snntorch as snn
    from snntorch import surrogate

    leaky = snn.Leaky(beta=ALPHA, threshold=THETA, reset_mechanism="subtract",
                      spike_grad=surrogate.fast_sigmoid(slope=SLOPE))

    def run(x, W):
        mem = leaky.init_leaky()
        out = []
        for u_t in F.linear(x, W).unbind(0):
            spk, mem = leaky(u_t, mem)
            out.append(spk)
        return torch.stack(out)
    return run


def make_norse(n_out: int) -> Run:
    from norse.torch import LIFBoxCell, LIFBoxParameters
    from norse.torch.functional.reset import reset_subtract

    p = LIFBoxParameters(tau_mem_inv=torch.tensor(1.0 - ALPHA), v_leak=torch.tensor(0.0),
                         v_th=torch.tensor(THETA), v_reset=torch.tensor(0.0), method="super",
                         alpha=torch.tensor(SLOPE), reset_method=reset_subtract)
    cell = LIFBoxCell(p, dt=1.0)

    def run(x, W):
        state = None
        out = []
        for i_t in (F.linear(x, W) / (1.0 - ALPHA)).unbind(0):
            z, state = cell(i_t, state)
            out.append(z)
        return torch.stack(out)
    return run


def make_spikingjelly(n_out: int) -> Run:
    from spikingjelly.activation_based import neuron, surrogate

    if sys.modules.get("torchvision") is not None:  # pragma: no cover
        raise RuntimeError("spikingjelly imported torchvision; this benchmark must not")
    node = neuron.LIFNode(tau=1.0 / (1.0 - ALPHA), decay_input=False, v_threshold=THETA,
                          v_reset=None, surrogate_function=surrogate.SoftSign(alpha=SLOPE),
                          detach_reset=True, step_mode="m")

    def run(x, W):
        node.reset()
        return node(F.linear(x, W))
    return run


def contenders(n_out: int, names: tuple[str, ...]) -> list[Contender]:
    same_step = ALPHA * THETA  # a reset in the spiking step, before the next decay
    makers = {"neurobit": (make_neurobit, (None, True, SLOPE)),
              "snntorch": (make_snntorch, (None, True, SLOPE)),
              # norse's reset carries gradient, and its SuperSpike backward ignores alpha
              # (norse 1.1 functional/superspike.py: 1 / (|x| + 1)^2), i.e. slope 1
              "norse": (make_norse, (same_step, False, 1.0)),
              "spikingjelly": (make_spikingjelly, (same_step, True, SLOPE))}
    return [Contender(n, makers[n][0](n_out), makers[n][1]) for n in names]


# -- data -----------------------------------------------------------------------------------------
def make_data(T: int, B: int, n_in: int, n_out: int, rate: float, seed: int):
    """Input spikes ``[T, B, n_in]`` (Bernoulli ``rate``) and ``W`` ``[n_out, n_in]``.

    ``W ~ N(mu, sigma)`` scaled so that ``u`` has mean 0.1 and std 0.5 per step whatever
    ``n_in`` is (units fire at a moderate rate, roughly 10-20 % of steps).
    """
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(T, B, n_in, generator=g) < rate).float()
    k = n_in * rate  # expected active inputs per step
    W = torch.randn(n_out, n_in, generator=g) * (0.5 / math.sqrt(k)) + 0.1 / k
    return x, W.requires_grad_(True)


# -- agreement ------------------------------------------------------------------------------------
def check_agreement(cs: list[Contender], x, W) -> dict[str, dict[str, float]]:
    """Spike mismatch fraction and dW cosine of each contender against neurobit."""
    n_out = W.shape[0]
    ref_out = {}
    out = {}
    for c in cs:
        if c.ref not in ref_out:
            s = make_neurobit(n_out, *c.ref)(x, W)
            (dW,) = torch.autograd.grad(s.sum(), W)
            ref_out[c.ref] = (s.detach(), dW)
        s = c.run(x, W)
        (dW,) = torch.autograd.grad(s.sum(), W)
        s_ref, dW_ref = ref_out[c.ref]
        diff = s.detach() != s_ref
        out[c.name] = {
            "mismatch": diff.double().mean().item(),
            "units_hit": diff.any(0).double().mean().item(),
            "cos": F.cosine_similarity(dW.double().flatten(), dW_ref.double().flatten(),
                                       dim=0).item(),
            "rate": s.detach().mean().item(),
        }
    return out


# -- timing ---------------------------------------------------------------------------------------
def time_modes(cs: list[Contender], x, W, warmup: int, repeats: int) -> dict[str, dict[str, list]]:
    def fwd(run):
        def f():
            with torch.no_grad():
                run(x, W)
        return f

    def fwd_bwd(run):
        def f():
            torch.autograd.grad(run(x, W).sum(), W)
        return f

    return {
        "fwd": time_round_robin({c.name: fwd(c.run) for c in cs}, warmup, repeats),
        "fwd+bwd": time_round_robin({c.name: fwd_bwd(c.run) for c in cs}, warmup, repeats),
    }


# -- report ---------------------------------------------------------------------------------------
def render(rows: list[dict], agreement: dict, args, command: str, machine: str) -> str:
    lines = [
        "# Linear -> LIF layer: neurobit vs snntorch, norse, spikingjelly",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}",
        "",
        f"T = {args.T} steps, batch {args.batch}, input rate {args.rate}, alpha = {ALPHA}, "
        f"theta = {THETA}, no bias, seed {args.seed}; {args.warmup} warm-up calls, median of "
        f"{args.repeats} repeats, run round-robin (one call of each contender per round). "
        "`fwd` runs under `torch.no_grad()`; `fwd+bwd` is `autograd.grad(spikes.sum(), W)`. "
        "The input GEMM `x @ W^T` over all steps is inside every timed call.",
        "",
        "Ratio: median / median of the fastest peer (snntorch, norse, spikingjelly) at the same "
        "size and mode. Spike mismatch: fraction of (t, b, unit) entries differing from neurobit "
        "with the dynamics the peer expresses (snntorch: beta = theta; norse and spikingjelly: "
        "beta = alpha * theta, same-step reset); units hit: fraction of (b, unit) traces with any "
        "difference. dW cos: cosine (float64) between the peer's weight gradient and that of the "
        "same neurobit configuration (norse: also `detach_reset=False`, slope 1); "
        "spikingjelly's SoftSign surrogate has 12.5x the scale of the others, which the cosine "
        "ignores.",
        "",
        "Contenders (same hoisted GEMM `F.linear(x, W)` over all steps first; peers loop over "
        "`u.unbind(0)` where they need a Python loop):",
        "",
        *[f"- {line}" for line in NOTES],
        "",
        "| contender | size | mode | median ms | IQR ms | ratio to fastest peer | "
        "spike mismatch | units hit | dW cos | firing rate |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        a = agreement[r["size"]][r["name"]]
        mm = "reference" if r["name"] == "neurobit" else f"{a['mismatch']:.2e}"
        hit = "" if r["name"] == "neurobit" else f"{a['units_hit']:.2e}"
        cos = "" if r["name"] == "neurobit" else f"{a['cos']:.6f}"
        lines.append(
            f"| {r['name']} | {r['size']} | {r['mode']} | {r['median']:.1f} | {r['iqr']:.1f} | "
            f"{r['ratio']:.2f} | {mm} | {hit} | {cos} | {a['rate']:.4f} |")
    lines += ["", "Targets:", ""] + targets(rows)
    return "\n".join(lines) + "\n"


TARGETS = {"512x512": (2.0, "at least 2x faster than the fastest peer"),
           "512x4096": (1.0, "no slower than any peer")}


def targets(rows: list[dict]) -> list[str]:
    """One line per size with a target (the issue's): neurobit fwd+bwd speed-up vs fastest peer."""
    out = []
    by = {(r["name"], r["size"], r["mode"]): r for r in rows}
    for size, (need, goal) in TARGETS.items():
        mode = "fwd+bwd"
        peers = [by[(p, size, mode)] for p in PEERS if (p, size, mode) in by]
        if ("neurobit", size, mode) not in by or not peers:
            continue
        r = by[("neurobit", size, mode)]
        best = min(peers, key=lambda p: p["median"])
        speedup = best["median"] / r["median"]
        out.append(f"- {size} fwd+bwd: neurobit {r['median']:.1f} ms, fastest peer {best['name']} "
                   f"{best['median']:.1f} ms, speed-up {speedup:.2f}x; target {goal}: "
                   f"{'met' if speedup >= need else 'NOT met'}.")
    return out or ["- (no size with a target was run)"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="512x512,512x4096",
                    help="comma-separated n_in x n_out sizes (default: 512x512,512x4096)")
    ap.add_argument("--T", type=int, default=500, help="timesteps (default 500)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rate", type=float, default=0.1, help="input spike probability per step")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats (median over them)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    ap.add_argument("--threads", type=int, default=2, help="torch and numba threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--contenders", default="neurobit,snntorch,norse,spikingjelly")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: T = 50, 3 repeats, 1 warm-up; prints, writes no file")
    ap.add_argument("--out", default=None,
                    help="markdown output (default analysis/benchmarks/results/lif_layer.md; "
                         "none with --quick)")
    args = ap.parse_args(argv)
    if args.quick:
        args.T, args.repeats, args.warmup = 50, 3, 1
    if args.out is None and not args.quick:
        args.out = str(RESULTS)
    names = tuple(n.strip() for n in args.contenders.split(","))
    bad = [n for n in names if n not in ("neurobit",) + PEERS]
    if bad or "neurobit" not in names:
        ap.error(f"--contenders: must include neurobit, from {('neurobit',) + PEERS}; got {names}")
    args.names = names
    try:
        args.size_list = [tuple(int(v) for v in s.lower().split("x"))
                          for s in args.sizes.split(",")]
        assert all(len(s) == 2 and min(s) > 0 for s in args.size_list)
    except (ValueError, AssertionError):
        ap.error(f"--sizes: expected e.g. 512x512,512x4096, got {args.sizes!r}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    command = " ".join(["python analysis/benchmarks/lif_layer.py",
                        shlex.join(sys.argv[1:] if argv is None else argv)]).strip()
    machine = machine_line(torch.get_num_threads(), numba.get_num_threads(),
                           ("torch", "numba", "numpy", "snntorch", "norse", "spikingjelly"))
    print(machine, flush=True)
    rows, agreement = [], {}
    for n_in, n_out in args.size_list:
        size = f"{n_in}x{n_out}"
        x, W = make_data(args.T, args.batch, n_in, n_out, args.rate, args.seed)
        cs = contenders(n_out, args.names)
        agreement[size] = check_agreement(cs, x, W)
        for name, a in agreement[size].items():
            print(f"{size} {name}: mismatch {a['mismatch']:.2e}, units hit {a['units_hit']:.2e}, "
                  f"dW cos {a['cos']:.6f}, rate {a['rate']:.4f}", flush=True)
        times = time_modes(cs, x, W, args.warmup, args.repeats)
        for mode, samples in times.items():
            med = {n: summarize(v) for n, v in samples.items()}
            peer_best = min((med[n][0] for n in med if n in PEERS), default=float("nan"))
            for n, (m, iqr) in med.items():
                rows.append({"name": n, "size": size, "mode": mode, "median": m, "iqr": iqr,
                             "ratio": m / peer_best})
                print(f"{size} {mode:8s} {n:13s} median {m:9.1f} ms  IQR {iqr:7.1f}  "
                      f"ratio {m / peer_best:.2f}", flush=True)
        del x, W
    text = render(rows, agreement, args, command, machine)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    bad = [f"{s}/{n}" for s, d in agreement.items() for n, a in d.items()
           if (n == "snntorch" and a["mismatch"] > 0) or a["mismatch"] > 1e-3]
    if bad:
        print(f"spike agreement out of tolerance: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
