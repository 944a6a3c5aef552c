"""Brian2 reference: the discrete LIF circuit of :mod:`neurobit` built and run in Brian2.

Brian2 computes the dynamics itself (its own synapses, spike queues, threshold and code
generation); neurobit only hands over the ternary codes, scales and LIF parameters. The run
reproduces, per unit and per step ``t`` (``dt_ms`` each)::

    u_t = w_in_scale * (C_in x_t) + w_rec_scale * (C_rec s_{t-1})
    v_t = alpha * v_{t-1} + u_t - beta * s_{t-1}          (neurobit.functional.lif_step)
    s_t = 1[v_t > theta]

with ``C_in`` ``[N, n_in]`` and ``C_rec`` ``[N, N]`` integer codes in {-1, 0, +1} (BitLinear
layout ``[out, in]``), ``x_t`` ``[n_in]`` binary input spikes (or a float current), ``v`` and
``theta`` in threshold units, ``dt_ms`` only labelling time (the update is per step; ``alpha =
exp(-dt_ms / tau_mem_ms)`` is the exact integral of ``tau dv/dt = -v`` over one step and is applied
as a multiplication, so no ODE solver rounds it).

Phase mapping (Brian2 schedule ``start -> groups -> thresholds -> synapses -> resets -> end``),
one Brian2 time step ``t * dt`` per neurobit step ``t``:

==================  =====================================================================
slot (order)        what happens at step ``t``
==================  =====================================================================
start (0)           ``SpikeGeneratorGroup`` (moved from its default ``thresholds`` slot)
                    emits the input spikes ``x_t``.
start (1)           input pathway ``on_pre: cin_post += w`` (moved from ``synapses``) counts
                    ``C_in x_t`` in the same step. Without the two moves the input would
                    arrive after this step's threshold, i.e. act one step late.
groups (-1)         current input only: summed variable ``iin = sum_j w_ij x_j(t)`` from a
                    ``TimedArray``.
before_thresholds   ONE ``run_regularly``: ``v = alpha*v + u - beta*sp`` with
                    ``u = w_in_scale*cin + w_rec_scale*crec``; then ``cin = crec = sp = 0``.
thresholds          ``v > theta`` -> ``s_t``.
synapses            recurrent pathway ``on_pre: crec_post += w`` counts ``C_rec s_t``: it is
                    read by step ``t+1``'s ``run_regularly``, exactly ``W_rec s_{t-1}``.
resets              ``sp = 1`` for units that spiked (a flag, no change to ``v``): the
                    subtractive reset ``beta * s_{t-1}`` lands inside the next bracket.
end                 ``SpikeMonitor`` / ``StateMonitor`` read ``s_t`` and ``v_t``.
==================  =====================================================================

Exactness: the spikes are identical bit for bit to :func:`neurobit.functional.lif_step` in
float64 when the weight scales are dyadic (e.g. 0.25, 0.125) and the input is binary (or a
dyadic current), so that ``u_t`` is exact in any summation order; the rounding of
``alpha * v`` and of the two additions then happens in the same order on both sides, for any
``alpha``, ``theta``, ``beta``. With non-dyadic scales (``absmean``) the two agree to rounding.
Not built: readout ``W_out``, feedback, biases, activation quantization, circuit banks.

Example::

    out = run_brian2_circuit(c_in, 0.25, c_rec, 0.125, x, alpha=0.875, theta=1.0)
    raster = raster_from_events(out["spike_steps"], out["spike_ids"], x.shape[0], c_in.shape[0])
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from neurobit.errors import BackendError, ParameterError, ShapeError

TARGETS = ("numpy", "cython")
INPUT_KINDS = ("auto", "spikes", "current")

_RUN_CODE = """
u_syn = scale_in * {in_var} + scale_rec * crec
v = alpha * v + u_syn
v = v - beta * sp
{clear_in}
crec = 0
sp = 0
"""


def _import_brian2():
    try:
        import brian2
    except ImportError as e:  # pragma: no cover - brian2 is a declared dependency
        raise BackendError("brian2: not installed; pip install brian2") from e
    return brian2


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ParameterError(f"{name}: contains non-finite values")
    return a


def _codes(x: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    c = _to_numpy(x, name)
    if c.shape != shape:
        raise ShapeError(f"{name}: expected shape {list(shape)}, got {list(c.shape)}")
    if not np.all(np.isin(c, (-1.0, 0.0, 1.0))):
        raise ParameterError(f"{name}: codes must lie in {{-1, 0, +1}}")
    return c


def _per_unit(x: Any, n: int, name: str) -> np.ndarray:
    a = _to_numpy(x, name)
    if a.ndim == 0:
        return np.full(n, float(a))
    if a.shape != (n,):
        raise ShapeError(f"{name}: expected a scalar or shape [{n}], got {list(a.shape)}")
    return a.copy()


def _scale(x: Any, name: str) -> float:
    a = _to_numpy(x, name)
    if a.size != 1:
        raise ParameterError(f"{name}: must be one scalar scale, got shape {list(a.shape)}")
    s = float(a.reshape(()))
    if not s > 0:
        raise ParameterError(f"{name}: must be > 0, got {s}")
    return s


def _input_kind(x: np.ndarray, kind: str) -> str:
    if kind not in INPUT_KINDS:
        raise ParameterError(f"input_kind: unknown {kind!r}; choose one of {list(INPUT_KINDS)}")
    binary = bool(np.all(np.isin(x, (0.0, 1.0))))
    if kind == "spikes" and not binary:
        raise ParameterError("input_kind: 'spikes' needs a 0/1 input")
    if kind == "auto":
        return "spikes" if binary else "current"
    return kind


def raster_from_events(spike_steps: np.ndarray, spike_ids: np.ndarray, n_steps: int,
                       n_units: int) -> np.ndarray:
    """Event lists (step, unit) -> a ``[n_steps, n_units]`` 0/1 ``uint8`` raster."""
    r = np.zeros((n_steps, n_units), dtype=np.uint8)
    r[np.asarray(spike_steps, dtype=np.int64), np.asarray(spike_ids, dtype=np.int64)] = 1
    return r


def run_brian2_circuit(w_in_codes: Any, w_in_scale: float, w_rec_codes: Any | None,
                       w_rec_scale: float | None, input_spikes_or_current: Any, alpha: Any,
                       theta: Any = 1.0, beta: Any | None = None, n_steps: int | None = None,
                       dt_ms: float = 1.0, v0: Any | None = None, target: str = "numpy", *,
                       input_kind: str = "auto", record_v: bool = False,
                       seed: int | None = None) -> dict[str, Any]:
    """Run the circuit in Brian2 (see the module docstring for the equations and phases).

    Args:
        w_in_codes: ``[N, n_in]`` codes in {-1, 0, +1}; ``w_in_scale``: weight of a +1 code.
        w_rec_codes: ``[N, N]`` codes (post, pre) or None (no recurrence); ``w_rec_scale``.
        input_spikes_or_current: ``[T, n_in]`` 0/1 spikes (through a ``SpikeGeneratorGroup``
            and ``Synapses``) or a float current (through a ``TimedArray`` and a summed
            variable); ``input_kind`` = ``auto`` | ``spikes`` | ``current`` picks the path.
        alpha, theta, beta: scalars or ``[N]``; ``beta=None`` means ``theta``.
        n_steps: T (None: the input's length; otherwise it must match it).
        dt_ms: Brian2 time step in ms (labels time only).
        v0: initial membrane ``v_{-1}`` (scalar or ``[N]``; default 0); ``s_{-1} = 0``.
        target: Brian2 code generation target, ``numpy`` (default) or ``cython``
            (compiles for ~30 s the first time).
        record_v: also return ``v`` ``[T, N]`` (membrane after the update, before threshold).
        seed: if given, passed to ``brian2.seed`` (which also reseeds numpy's global generator;
            the network itself draws no random numbers, so the default None leaves it alone).

    Returns:
        dict with ``spike_steps`` (int64, step index of each spike), ``spike_ids`` (int64),
        ``n_steps``, ``n_units``, ``run_s`` (seconds of ``Network.run``) and, with
        ``record_v``, ``v`` (float64 ``[T, N]``).
    """
    if target not in TARGETS:
        raise ParameterError(f"target: unknown {target!r}; choose one of {list(TARGETS)}")
    if not dt_ms > 0:
        raise ParameterError(f"dt_ms: must be > 0, got {dt_ms}")
    x = _to_numpy(input_spikes_or_current, "input_spikes_or_current")
    w_in = _to_numpy(w_in_codes, "w_in_codes")
    if w_in.ndim != 2:
        raise ShapeError(f"w_in_codes: expected [N, n_in], got {list(w_in.shape)}")
    n, n_in = w_in.shape
    w_in = _codes(w_in, (n, n_in), "w_in_codes")
    if x.ndim != 2 or x.shape[1] != n_in:
        raise ShapeError(f"input_spikes_or_current: expected [T, {n_in}], got {list(x.shape)}")
    t_len = x.shape[0]
    if n_steps is None:
        n_steps = t_len
    if int(n_steps) != t_len or t_len < 1:
        raise ShapeError(f"n_steps: {n_steps} must equal the input length {t_len} (>= 1)")
    kind = _input_kind(x, input_kind)
    scale_in = _scale(w_in_scale, "w_in_scale")
    if w_rec_codes is not None:
        w_rec = _codes(w_rec_codes, (n, n), "w_rec_codes")
        if w_rec_scale is None:
            raise ParameterError("w_rec_scale: needed with w_rec_codes")
        scale_rec = _scale(w_rec_scale, "w_rec_scale")
    else:
        w_rec, scale_rec = None, 1.0
    a = _per_unit(alpha, n, "alpha")
    if not np.all((a > 0) & (a < 1)):
        raise ParameterError(f"alpha: must lie in (0, 1), got {a.min():g}..{a.max():g}")
    th = _per_unit(theta, n, "theta")
    if not np.all(th > 0):
        raise ParameterError(f"theta: must be > 0, got min {th.min():g}")
    be = th.copy() if beta is None else _per_unit(beta, n, "beta")
    if not np.all(be >= 0):
        raise ParameterError(f"beta: must be >= 0, got min {be.min():g}")
    v_init = np.zeros(n) if v0 is None else _per_unit(v0, n, "v0")

    b2 = _import_brian2()
    old = (b2.prefs.codegen.target, b2.prefs.core.default_float_dtype)
    b2.prefs.codegen.target = target
    b2.prefs.core.default_float_dtype = np.float64
    try:
        return _build_and_run(b2, w_in, scale_in, w_rec, scale_rec, x, kind, a, th, be, v_init,
                              t_len, dt_ms, record_v, seed)
    finally:
        b2.prefs.codegen.target, b2.prefs.core.default_float_dtype = old


def _build_and_run(b2, w_in, scale_in, w_rec, scale_rec, x, kind, alpha, theta, beta, v_init,
                   t_len, dt_ms, record_v, seed) -> dict[str, Any]:
    n, n_in = w_in.shape
    b2.start_scope()
    if seed is not None:
        b2.seed(seed)
    dt = dt_ms * b2.ms
    clock = b2.Clock(dt=dt)
    in_var = "cin" if kind == "spikes" else "iin"
    group = b2.NeuronGroup(
        n, "v : 1\nsp : 1\ncin : 1\ncrec : 1\niin : 1\n"
           "alpha : 1 (constant)\ntheta : 1 (constant)\nbeta : 1 (constant)",
        threshold="v > theta", reset="sp = 1", clock=clock)
    group.v = v_init
    group.alpha, group.theta, group.beta = alpha, theta, beta
    code = _RUN_CODE.format(in_var=in_var, clear_in="cin = 0" if kind == "spikes" else "")
    update = group.run_regularly(code, when="before_thresholds", order=0)
    objects: list[Any] = [group, update]

    post, pre = np.nonzero(w_in)
    if kind == "spikes":
        steps, ids = np.nonzero(x)
        source = b2.SpikeGeneratorGroup(n_in, ids.astype(np.int64), steps * dt, clock=clock,
                                        when="start", order=0)
        syn_model, on_pre = "w : 1", "cin_post += w"
    else:
        drive = b2.TimedArray(x, dt=dt)
        source = b2.NeuronGroup(n_in, "x = drive(t, i) : 1", clock=clock)
        syn_model, on_pre = "w : 1\niin_post = w * x_pre : 1 (summed)", None
    objects.append(source)
    if len(pre):
        syn_in = b2.Synapses(source, group, syn_model, on_pre=on_pre, clock=clock)
        syn_in.connect(i=pre, j=post)
        syn_in.w = w_in[post, pre]
        if kind == "spikes":
            syn_in.pre.when, syn_in.pre.order = "start", 1
        objects.append(syn_in)
    if w_rec is not None:
        rpost, rpre = np.nonzero(w_rec)
        if len(rpre):
            syn_rec = b2.Synapses(group, group, "w : 1", on_pre="crec_post += w", clock=clock)
            syn_rec.connect(i=rpre, j=rpost)
            syn_rec.w = w_rec[rpost, rpre]
            objects.append(syn_rec)
    spikes = b2.SpikeMonitor(group)
    objects.append(spikes)
    if record_v:
        vmon = b2.StateMonitor(group, "v", record=True, when="end", clock=clock)
        objects.append(vmon)

    net = b2.Network(*objects)
    namespace = {"scale_in": scale_in, "scale_rec": scale_rec}
    if kind == "current":
        namespace["drive"] = drive
    t0 = time.perf_counter()
    net.run(t_len * dt, namespace=namespace)
    run_s = time.perf_counter() - t0

    step_idx = np.round(np.asarray(spikes.t_) / float(dt)).astype(np.int64)
    out: dict[str, Any] = {"spike_steps": step_idx,
                           "spike_ids": np.asarray(spikes.i, dtype=np.int64),
                           "n_steps": t_len, "n_units": n, "run_s": run_s}
    if record_v:
        v = np.asarray(vmon.v, dtype=np.float64).T
        if v.shape != (t_len, n):
            raise BackendError(f"brian2: recorded v has shape {list(v.shape)}, "
                               f"expected {[t_len, n]}")
        out["v"] = v
    return out


def brian2_from_microcircuit(circuit: Any, x_seq: Any, *, dt_ms: float = 1.0,
                             target: str = "numpy", input_kind: str = "auto",
                             v0: Any | None = None) -> np.ndarray:
    """Run a :class:`~neurobit.modules.MicroCircuit` in Brian2 for one trial.

    Reads the codes and scales from ``BitLinear.ternary()`` and ``alpha``, ``theta``, ``beta``
    from ``circuit.lif``; ``x_seq`` ``[T, n_in]`` (binary spikes or a float current).
    Returns the spike raster ``[T, N]`` (``uint8`` 0/1), to compare with
    ``circuit(x_seq[:, None]).spikes[:, 0]``.
    """
    if getattr(circuit.w_in, "banks", None) is not None:
        raise ParameterError("circuit: banks are not supported; run one circuit at a time")
    for name in ("w_in", "w_rec"):
        lin = getattr(circuit, name)
        if lin is not None and (lin.bias is not None or lin.act_bits is not None):
            raise ParameterError(f"circuit.{name}: bias and act_bits are not built in Brian2")
    x = _to_numpy(x_seq, "x_seq")
    if x.ndim != 2 or x.shape[1] != circuit.n_in:
        raise ShapeError(f"x_seq: expected one trial [T, {circuit.n_in}], got {list(x.shape)}")
    q_in = circuit.w_in.ternary()
    rec = None, None
    if circuit.w_rec is not None:
        q_rec = circuit.w_rec.ternary()
        rec = q_rec.codes, q_rec.scale
    lif = circuit.lif
    out = run_brian2_circuit(q_in.codes, q_in.scale, rec[0], rec[1], x, lif.alpha, lif.theta,
                             lif.beta, dt_ms=dt_ms, v0=v0, target=target,
                             input_kind=input_kind)
    return raster_from_events(out["spike_steps"], out["spike_ids"], x.shape[0], circuit.n_units)
