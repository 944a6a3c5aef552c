"""Benchmark: a 4000-neuron recurrent ternary LIF network in neurobit and in Brian2.

One network, defined once as a neurobit :class:`~neurobit.config.schema.CircuitConfig`, run by
neurobit's two steppers and rebuilt synapse for synapse in Brian2 (numpy, cython and
cpp_standalone targets). Per unit ``i`` and step ``t`` (``dt = 0.1 ms``, 1 s = 10000 steps)::

    u_t[i] = I_pop(i) + sum_j w_ij s_{t-1}[j]          w_ij = weight * code_ij, code in {-1, 0, +1}
    v_t[i] = alpha * v_{t-1}[i] + u_t[i] - beta * s_{t-1}[i]
    s_t[i] = 1[v_t[i] > theta]

- populations ``E`` (3200 units) and ``I`` (800 units), ``tau_mem_ms = 20`` (``alpha =
  exp(-0.1 / 20)``), ``theta = beta = 1``, float64, ``v_{-1} ~ U(0, theta)`` drawn by neurobit
  (``v_init: uniform``) and handed to Brian2 unchanged, ``s_{-1} = 0``;
- four projections E->E, E->I, I->E, I->I, ``connectivity: fixed_indegree`` at density 0.02 (each
  unit receives 64 excitatory and 16 inhibitory synapses; no self-synapses), weights
  ``+2^-4`` (excitatory) and ``-2^-1`` (inhibitory);
- a constant current ``I = 2^-7`` per step into both populations (``current`` stimuli).

All weights and currents are dyadic, so ``u_t`` is exact in any summation order; the rounding of
``alpha * v`` and of the two additions then happens in the same order in every simulator, and the
spikes are identical bit for bit. Brian2 builds the discrete update the way
:mod:`neurobit.interop.brian2_reference` does: one ``run_regularly`` before thresholds
(``u = bias + crec; v = alpha*v + u; v = v - beta*sp; crec = 0; sp = 0``), threshold ``v > theta``,
``on_pre: crec_post += w`` in the synapses slot, reset ``sp = 1``. Brian2's C++ compile flags
default to ``-O3 -ffast-math -march=native``; fast-math allows gcc to fuse ``alpha*v + u`` into an
FMA or to reassociate the sums, which would change the rounding, so by default this script
compiles Brian2's cython and cpp_standalone code with ``-O3 -march=native -ffp-contract=off``
(``--brian2-flags exact``); ``--brian2-flags default`` keeps Brian2's own flags (they gave
identical spikes too on this machine with gcc 12, and the same loop times).

Note (neurobit 0.1.0): ``LIFPopulation`` stores ``alpha`` in torch's default dtype (float32)
before the network is cast to float64, so the float64 run uses ``alpha = 0.9950124621391296``
(``exp(-0.005)`` rounded to float32) rather than ``0.9950124791926824``; Brian2 is given the value
neurobit uses (the results file says which one it was).

Timings (wall clock, seconds):

- neurobit fused: ``Engine.run`` with an in-memory spike sink (build of the CSR layout, the chunk
  drive, the numba kernel and the spike extraction all included), median of ``--repeats`` runs
  after one warm-up run (which compiles/loads the numba kernel); a second row gives the part of
  the same runs spent inside ``neurobit.sim.fused.fused_chunk_kernel`` (wrapped with a timer);
- neurobit reference: one ``Engine.run`` with ``stepper: reference`` (torch, step by step);
- Brian2 numpy / cython: ``device._last_run_time`` = the simulation loop of ``Network.run`` (what
  Brian2 itself reports; code generation and compilation happen before it in ``before_run``).
  The first run in a fresh process with an empty cython cache is also reported whole
  (``Network.run`` wall time, compile included); the loop time is the median of the warm runs
  that follow (network rebuilt, compiled code reused);
- Brian2 cpp_standalone: ``set_device('cpp_standalone', build_on_run=False)``, no OpenMP
  (1 thread); the loop time is ``device._last_run_time`` (the binary's own timing of the run
  loop), median over re-runs of the built binary; the first ``device.build`` (code generation,
  compile and one run) is reported whole.

Every Brian2 target runs in its own subprocess. Spikes of every contender are compared with
neurobit fused as sets of ``(step, node id)``.

Usage::

    python analysis/benchmarks/brian2_network.py           # 1 s; writes results/brian2_network.md
    python analysis/benchmarks/brian2_network.py --quick   # 200 ms smoke run, prints only
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "brian2_network.md"
TARGETS = ("numpy", "cython", "cpp_standalone")
N_E, N_I = 3200, 800
DT_MS = 0.1
DENSITY = 0.02
W_EXC = 2.0 ** -4   # +0.0625
W_INH = 2.0 ** -1   # -0.5
CURRENT = 2.0 ** -7  # 0.0078125 per step
EXACT_FLAGS = ["-w", "-O3", "-march=native", "-ffp-contract=off", "-std=c++11"]


# --------------------------------------------------------------------------------- network
def network_config(duration_ms: float, seed: int, stepper: str) -> dict:
    """The benchmark network as a circuit-file dict (see the module docstring)."""
    pops = {"E": N_E, "I": N_I}
    projections = [
        {"source": src, "target": tgt, "density": DENSITY, "connectivity": "fixed_indegree",
         "weight": W_EXC if src == "E" else W_INH,
         "sign": "excitatory" if src == "E" else "inhibitory"}
        for src in pops for tgt in pops]
    return {
        "name": "brian2_network_benchmark", "dt_ms": DT_MS, "duration_ms": duration_ms,
        "seed": seed, "dtype": "float64", "chunk_steps": 1000, "stepper": stepper,
        "populations": {n: {"size": k, "tau_mem_ms": 20.0, "theta": 1.0, "v_init": "uniform"}
                        for n, k in pops.items()},
        "projections": projections,
        "stimuli": {f"drive_{n}": {"type": "current", "target": n, "amplitude": CURRENT}
                    for n in pops},
        "monitors": {"spikes": list(pops)},
    }


class SpikeSink:
    """Keeps the spikes of all populations as global ``(step, node id)`` arrays in memory."""

    def __init__(self, offsets: dict[str, int]):
        self.offsets = offsets
        self.steps: list[np.ndarray] = []
        self.ids: list[np.ndarray] = []

    def append_spikes(self, name, steps, node_ids, trials) -> None:
        self.steps.append(np.asarray(steps, np.int64))
        self.ids.append(np.asarray(node_ids, np.int64) + self.offsets[name])

    def append_report(self, name, data) -> None:
        pass

    def flush(self) -> None:
        pass

    def mark_steps(self, n_steps_done: int) -> None:
        pass

    def events(self) -> tuple[np.ndarray, np.ndarray]:
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)
        return cat(self.steps), cat(self.ids)


def build(duration_ms: float, seed: int, stepper: str):
    from neurobit.config.schema import CircuitConfig
    from neurobit.sim.run import build_engine
    return build_engine(CircuitConfig.model_validate(network_config(duration_ms, seed, stepper)))


def export_network(engine, path: Path) -> dict:
    """Write what Brian2 needs (the exact arrays the fused kernel uses) to ``path`` (.npz)."""
    from neurobit.sim.fused import build_layout
    net = engine.net
    lay = build_layout(net, [p for p in net.projections if p.cfg.source in net.populations])
    states = engine.initial_states()
    v0 = np.concatenate([states[n].v.reshape(-1).numpy() for n in net.populations])
    bias = np.zeros(lay.n_total)
    for stim in net.cfg.stimuli.values():
        o = lay.offsets[stim.target]
        bias[o:o + net.populations[stim.target].units] += stim.amplitude
    pre, post, w = [], [], []
    for proj in engine._pop_proj:
        codes_t = proj._codes_t.numpy()  # [source units, target units]
        src, tgt = np.nonzero(codes_t)
        pre.append(src + lay.offsets[proj.cfg.source])
        post.append(tgt + lay.offsets[proj.cfg.target])
        w.append(codes_t[src, tgt].astype(np.float64) * float(proj._scale))
    arrays = {"alpha": lay.alpha.astype(np.float64), "theta": lay.theta.astype(np.float64),
              "beta": lay.beta.astype(np.float64), "v0": v0.astype(np.float64), "bias": bias,
              "pre": np.concatenate(pre), "post": np.concatenate(post), "w": np.concatenate(w),
              "n_steps": np.int64(engine.n_steps), "dt_ms": np.float64(net.cfg.dt_ms)}
    np.savez(path, **arrays)
    return {"synapses": int(len(arrays["w"])), "alpha": float(arrays["alpha"][0])}


class _KernelTimer:
    """Wraps ``neurobit.sim.fused.fused_chunk_kernel`` (looked up by the engine at every chunk)
    and adds up the seconds spent inside it."""

    def __init__(self):
        import neurobit.sim.fused as fused
        self.module, self.kernel, self.seconds = fused, fused.fused_chunk_kernel, 0.0

    def __call__(self, *args):
        t0 = time.perf_counter()
        out = self.kernel(*args)
        self.seconds += time.perf_counter() - t0
        return out

    def __enter__(self):
        self.module.fused_chunk_kernel = self
        return self

    def __exit__(self, *exc):
        self.module.fused_chunk_kernel = self.kernel


def run_neurobit(engine, runs: int) -> tuple[list[float], list[float], np.ndarray, np.ndarray]:
    """``runs`` timed ``Engine.run`` calls: (run seconds, seconds inside the fused kernel,
    spike steps, spike node ids of the last run)."""
    offsets = {}
    n = 0
    for name, pop in engine.net.populations.items():
        offsets[name], n = n, n + pop.units
    times, kernel = [], []
    for _ in range(runs):
        sink = SpikeSink(offsets)
        with _KernelTimer() as kt:
            t0 = time.perf_counter()
            engine.run(sink)
            times.append(time.perf_counter() - t0)
        kernel.append(kt.seconds)
    steps, ids = sink.events()
    return times, kernel, steps, ids


# --------------------------------------------------------------------------------- Brian2
_RUN_CODE = """
u = bias + crec
v = alpha * v + u
v = v - beta * sp
crec = 0
sp = 0
"""


def _brian2_network(b2, d: dict):
    b2.start_scope()
    clock = b2.Clock(dt=float(d["dt_ms"]) * b2.ms)
    n = len(d["v0"])
    g = b2.NeuronGroup(n, "v : 1\nsp : 1\ncrec : 1\nbias : 1 (constant)\nalpha : 1 (constant)\n"
                          "theta : 1 (constant)\nbeta : 1 (constant)",
                       threshold="v > theta", reset="sp = 1", clock=clock, name="lif")
    g.v, g.bias, g.alpha, g.theta, g.beta = d["v0"], d["bias"], d["alpha"], d["theta"], d["beta"]
    update = g.run_regularly(_RUN_CODE, when="before_thresholds", order=0, name="lif_update")
    syn = b2.Synapses(g, g, "w : 1 (constant)", on_pre="crec_post += w", clock=clock, name="rec")
    syn.connect(i=d["pre"], j=d["post"])
    syn.w = d["w"]
    mon = b2.SpikeMonitor(g, name="spikes")
    net = b2.Network(g, update, syn, mon)
    return net, mon, int(d["n_steps"]) * clock.dt, float(clock.dt)


def _events(mon, dt: float) -> tuple[list, list]:
    steps = np.round(np.asarray(mon.t_) / dt).astype(np.int64)
    return steps.tolist(), np.asarray(mon.i, dtype=np.int64).tolist()


def brian2_worker(target: str, net_path: str, out_path: str, repeats: int, flags: str) -> None:
    """Run the exported network in Brian2 ``target`` (one fresh process per target)."""
    import brian2 as b2
    d = dict(np.load(net_path))
    b2.prefs.core.default_float_dtype = np.float64
    if flags == "exact":
        b2.prefs.codegen.cpp.extra_compile_args_gcc = list(EXACT_FLAGS)
    res: dict = {"target": target, "flags": list(b2.prefs.codegen.cpp.extra_compile_args_gcc)}
    if target in ("numpy", "cython"):
        b2.prefs.codegen.target = target
        directory = tempfile.mkdtemp(prefix="b2cython_")
        b2.prefs.codegen.runtime.cython.cache_dir = directory  # empty: the first run compiles
        loops, walls = [], []
        for _ in range(1 + repeats):
            net, mon, duration, dt = _brian2_network(b2, d)
            t0 = time.perf_counter()
            net.run(duration)
            walls.append(time.perf_counter() - t0)
            loops.append(float(b2.device._last_run_time))
        res.update(first_wall_s=walls[0], first_loop_s=loops[0], warm_loop_s=loops[1:],
                   warm_wall_s=walls[1:])
    else:
        b2.set_device("cpp_standalone", build_on_run=False)
        b2.prefs.devices.cpp_standalone.openmp_threads = 0  # no OpenMP: one thread
        net, mon, duration, dt = _brian2_network(b2, d)
        net.run(duration)
        directory = tempfile.mkdtemp(prefix="b2standalone_")
        t0 = time.perf_counter()
        b2.device.build(directory=directory, compile=True, run=True, debug=False, clean=True)
        res.update(first_wall_s=time.perf_counter() - t0,
                   first_loop_s=float(b2.device._last_run_time))
        loops, walls = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            b2.device.run(directory=directory, with_output=False)
            walls.append(time.perf_counter() - t0)
            loops.append(float(b2.device._last_run_time))
        res.update(warm_loop_s=loops, warm_wall_s=walls)
    res["steps"], res["ids"] = _events(mon, dt)
    Path(out_path).write_text(json.dumps(res))
    shutil.rmtree(directory, ignore_errors=True)


def run_brian2_target(target: str, net_path: Path, repeats: int, flags: str,
                      timeout_s: float) -> dict:
    out = net_path.with_name(f"brian2_{target}.json")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--brian2-worker", target,
           "--net", str(net_path), "--worker-out", str(out), "--repeats", str(repeats),
           "--brian2-flags", flags]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        return {"target": target, "error": f"exit {proc.returncode}: {tail}"}
    res = json.loads(out.read_text())
    res["process_s"] = time.perf_counter() - t0
    return res


# --------------------------------------------------------------------------------- report
def compare(ref: tuple[np.ndarray, np.ndarray], steps, ids, n_units: int) -> dict:
    """Spike events of a contender against neurobit fused: counts and symmetric difference."""
    key = lambda s, i: np.asarray(s, np.int64) * n_units + np.asarray(i, np.int64)
    a, b = key(*ref), key(steps, ids)
    only_a = np.setdiff1d(a, b, assume_unique=False)
    only_b = np.setdiff1d(b, a, assume_unique=False)
    first = None
    if len(only_a) or len(only_b):
        first = int(min(np.concatenate([only_a, only_b])) // n_units)
    return {"spikes": int(len(b)), "missing": int(len(only_a)), "extra": int(len(only_b)),
            "first_mismatch_step": first, "identical": not len(only_a) and not len(only_b)
            and len(a) == len(b)}


def activity(steps: np.ndarray, ids: np.ndarray, n_units: int, n_steps: int) -> dict:
    """Mean rate (Hz), CV of inter-spike intervals (units with >= 4 spikes, mean), Fano of the
    population count in 1 ms bins."""
    seconds = n_steps * DT_MS / 1000.0
    order = np.lexsort((steps, ids))
    s, i = steps[order], ids[order]
    cvs = []
    for seg in np.split(s, np.flatnonzero(np.diff(i)) + 1):
        if len(seg) >= 4:
            d = np.diff(seg).astype(float)
            cvs.append(d.std() / d.mean())
    binned = np.bincount(steps // 10, minlength=n_steps // 10).astype(float)
    return {"rate_hz": len(steps) / n_units / seconds, "cv_isi": float(np.mean(cvs)) if cvs else
            float("nan"), "fano_1ms": float(binned.var() / max(binned.mean(), 1e-12))}


def machine() -> str:
    sys.path.insert(0, str(HERE))
    from _timing import machine_line
    try:
        gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout
        gcc = gcc.splitlines()[0] if gcc else "gcc not found"
    except OSError:
        gcc = "gcc not found"
    line = machine_line(1, 1, ("neurobit", "brian2", "numba", "numpy", "torch", "Cython"))
    return line.replace("torch threads 1, numba threads 1", "1 thread everywhere") + f"; {gcc}"


def fmt(x: float | None, nd: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def alpha_note(alpha: float) -> str:
    """How neurobit's stored ``alpha`` relates to ``exp(-dt / tau) = exp(-0.005)``."""
    exact = float(np.exp(-DT_MS / 20.0))
    if alpha == exact:
        return "exp(-0.005) in float64"
    if alpha == float(np.float32(exact)):
        return "exp(-0.005) rounded to float32"
    return f"differs from exp(-0.005) = {exact!r}"


def write_table(rows: list[dict], meta: dict, out: Path | None) -> str:
    fused = rows[0]["loop_s"]  # Engine.run of the fused stepper
    lines = [
        "# 4000-neuron recurrent ternary LIF network: neurobit vs Brian2", "",
        f"Command: `{meta['command']}`", "",
        f"Machine: {meta['machine']}", "",
        f"Network: {N_E} E + {N_I} I LIF units, fixed in-degree {DENSITY:.0%} ternary synapses "
        f"({meta['synapses']} in all: 64 excitatory of +2^-4 and 16 inhibitory of -2^-1 per unit), "
        f"current 2^-7 per step into every unit, tau_mem = 20 ms (alpha = {meta['alpha']!r} "
        f"as stored by neurobit: {alpha_note(meta['alpha'])}), "
        "theta = beta = 1, float64, v0 ~ U(0, 1) drawn by neurobit "
        f"(seed {meta['seed']}) and passed to Brian2; {meta['duration_ms']:g} ms at "
        f"dt = {DT_MS} ms ({meta['n_steps']} steps). Activity (neurobit fused): "
        f"{meta['rate_hz']:.1f} Hz mean rate, "
        f"mean ISI CV {meta['cv_isi']:.2f}, Fano factor of the 1-ms population count "
        f"{meta['fano_1ms']:.1f}.", "",
        "Loop time: neurobit fused = `Engine.run` (layout, drive, numba kernel, spike extraction; "
        f"median of {meta['repeats']} after a warm-up run; the row below it is the part of the "
        "same runs spent inside `fused_chunk_kernel`); neurobit reference = one `Engine.run`; "
        "Brian2 = `device._last_run_time` (the simulation loop Brian2 times itself, after code "
        f"generation/compilation; median of {meta['repeats']} warm runs). Ratio = loop time / "
        "neurobit fused `Engine.run` time (above 1: neurobit fused is faster). First run: whole "
        "first "
        "`Network.run` (numpy, cython with an empty cache: compile included) or the first "
        "`device.build` (cpp_standalone: code generation + compile + one run). Identical: the "
        "(step, node id) spike sets equal neurobit fused's exactly. Brian2 C++ flags: "
        f"`{' '.join(meta['flags_used'])}`.", "",
        "| contender | loop time (s) | ratio vs neurobit fused | first run (s) | spikes "
        "| identical | mismatches (missing/extra) |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | error | | | | | {r['error'][:120]!r} |")
            continue
        ratio = r["loop_s"] / fused if fused else float("nan")
        lines.append(
            f"| {r['name']} | {fmt(r['loop_s'])} | {ratio:.2f} | {fmt(r.get('first_s'), 2)} | "
            f"{r['cmp']['spikes']} | {'yes' if r['cmp']['identical'] else 'no'} | "
            f"{r['cmp']['missing']}/{r['cmp']['extra']}"
            + (f" (first at step {r['cmp']['first_mismatch_step']})"
               if r['cmp']['first_mismatch_step'] is not None else "") + " |")
    by_name = {r["name"]: r for r in rows if "error" not in r}
    cy = by_name.get("Brian2 cython")
    if cy is not None and fused:
        verdict = "met" if fused < cy["loop_s"] else "not met"
        lines += ["", f"Target of the issue (neurobit fused faster than Brian2 cython's loop): "
                  f"{verdict} in this run ({fused:.3f} s vs {cy['loop_s']:.3f} s)."]
    lines += ["", "All samples (s):", ""]
    for r in rows:
        if "samples" in r:
            lines.append(f"- {r['name']}: " + ", ".join(f"{x:.4f}" for x in r["samples"]))
    lines += ["", "Numbers from a shared 2-core machine are noisy; re-run the command on a quiet "
              "machine before quoting them.", ""]
    text = "\n".join(lines)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return text


# --------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 ms smoke run; prints, writes nothing")
    ap.add_argument("--duration-ms", type=float, default=None, help="default 1000 (quick: 200)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per contender (median)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", default=",".join(TARGETS), help="Brian2 targets, comma-separated")
    ap.add_argument("--no-reference", action="store_true", help="skip neurobit's reference stepper")
    ap.add_argument("--brian2-flags", choices=("exact", "default"), default="exact")
    ap.add_argument("--timeout-s", type=float, default=900.0, help="per Brian2 target")
    ap.add_argument("--out", type=Path, default=None, help=f"default {RESULTS} (not with --quick)")
    ap.add_argument("--brian2-worker", choices=TARGETS, help=argparse.SUPPRESS)
    ap.add_argument("--net", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.brian2_worker:
        brian2_worker(args.brian2_worker, args.net, args.worker_out, args.repeats,
                      args.brian2_flags)
        return 0
    if args.repeats < 1:
        ap.error("--repeats: must be >= 1")
    targets = [t for t in args.targets.split(",") if t]
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        ap.error(f"--targets: unknown {bad}; choose from {list(TARGETS)}")
    duration = args.duration_ms or (200.0 if args.quick else 1000.0)
    out = None if args.quick else (args.out or RESULTS)
    command = " ".join(["python analysis/benchmarks/brian2_network.py"] + [
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)])

    import numba
    import torch
    numba.set_num_threads(1)
    torch.set_num_threads(1)

    engine = build(duration, args.seed, "fused")
    n_units = sum(p.units for p in engine.net.populations.values())
    print(f"neurobit fused: warm-up + {args.repeats} runs of {engine.n_steps} steps", flush=True)
    times, kernel, steps, ids = run_neurobit(engine, 1 + args.repeats)
    assert engine.stepper == "fused", engine.stepper
    ref = (steps, ids)
    same = compare(ref, steps, ids, n_units)
    rows = [{"name": "neurobit fused (numba, event-driven CSR), `Engine.run`",
             "loop_s": statistics.median(times[1:]), "first_s": times[0], "samples": times[1:],
             "cmp": same},
            {"name": "neurobit fused: time inside the numba kernel only (same runs)",
             "loop_s": statistics.median(kernel[1:]), "first_s": kernel[0],
             "samples": kernel[1:], "cmp": same}]
    print(f"  {rows[0]['loop_s']:.3f} s (kernel {rows[1]['loop_s']:.3f} s), {len(steps)} spikes",
          flush=True)
    act = activity(steps, ids, n_units, engine.n_steps)
    if not args.no_reference:
        print("neurobit reference: 1 run", flush=True)
        eng_ref = build(duration, args.seed, "reference")
        t_ref, _, s_ref, i_ref = run_neurobit(eng_ref, 1)
        rows.append({"name": "neurobit reference (torch step loop)", "loop_s": t_ref[0],
                     "samples": t_ref, "cmp": compare(ref, s_ref, i_ref, n_units)})
        print(f"  {t_ref[0]:.3f} s, identical {rows[-1]['cmp']['identical']}", flush=True)

    flags_used = EXACT_FLAGS
    with tempfile.TemporaryDirectory(prefix="nb_b2bench_") as tmp:
        net_path = Path(tmp) / "network.npz"
        info = export_network(engine, net_path)
        for target in targets:
            print(f"brian2 {target}: first run + {args.repeats} warm runs", flush=True)
            res = run_brian2_target(target, net_path, args.repeats, args.brian2_flags,
                                    args.timeout_s)
            name = f"Brian2 {target}" + (" (1 thread)" if target == "cpp_standalone" else "")
            if "error" in res:
                rows.append({"name": name, "error": res["error"]})
                print("  ERROR", res["error"], flush=True)
                continue
            flags_used = res["flags"]
            rows.append({"name": name, "loop_s": statistics.median(res["warm_loop_s"]),
                         "first_s": res["first_wall_s"], "samples": res["warm_loop_s"],
                         "cmp": compare(ref, res["steps"], res["ids"], n_units)})
            c = rows[-1]["cmp"]
            print(f"  loop {rows[-1]['loop_s']:.3f} s (first run {res['first_wall_s']:.2f} s), "
                  f"{c['spikes']} spikes, identical {c['identical']} "
                  f"(missing {c['missing']}, extra {c['extra']})", flush=True)
    meta = {"command": command, "machine": machine(), "seed": args.seed, "duration_ms": duration,
            "n_steps": engine.n_steps, "repeats": args.repeats, "flags_used": flags_used,
            **info, **act}
    text = write_table(rows, meta, out)
    print()
    print(text)
    if out is not None:
        print(f"wrote {out}")
    ok = all("error" not in r and r["cmp"]["identical"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
