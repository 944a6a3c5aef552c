"""Export a neurobit circuit to a NIR graph (Neuromorphic Intermediate Representation).

neurobit's discrete LIF (one step of ``dt_ms``)::

    v_t = alpha v_{t-1} + u_t - beta s_{t-1};   s_t = 1[v_t > theta]

is written as NIR's continuous LIF ``tau dv/dt = (v_leak - v) + r I`` (spike when
``v > v_threshold``, then ``v = v_reset``) whose forward-Euler step of ``dt`` is
``v_t = v + dt/tau (v_leak - v + r I) = alpha v + u`` with::

    tau = dt / (1 - alpha)      (seconds: NIR times are in seconds here, dt = dt_ms * 1e-3)
    r   = tau / dt              (so that dt/tau * r * I = I: the input current enters unscaled)
    v_leak = 0,  v_threshold = theta,  v_reset = 0

Synapses become ``nir.Linear`` nodes holding the *effective* weights ``scale * codes``
(``[out, in]``, float32). Recurrence is an edge from the LIF node through the ``w_rec`` Linear
back into the LIF node (the NIR convention, as in the Braille graph norse ships); simulators
delay that loop by one step, which is neurobit's ``W_rec s_{t-1}``.

Lossy part: NIR's LIF resets *to* ``v_reset`` in the step of the spike; neurobit *subtracts*
``beta`` one step later. NIR cannot express that, so :func:`export_nir` warns
(:class:`NIRResetWarning`) and stores everything needed to rebuild the circuit exactly in
``graph.metadata["neurobit"]`` (reset kind, alpha, theta, beta, dt_ms, per-layer scales, version).
:func:`neurobit.interop.nir_import.import_nir` uses it for a lossless round trip.

A :class:`MicroCircuitBank` of ``M`` circuits is exported as one flat population of ``M * N``
units with block-diagonal weights (input ``[M * n_in]``, circuit-major: unit ``m * N + i``).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from neurobit._version import __version__
from neurobit.errors import ParameterError
from neurobit.modules.bitlinear import BitLinear
from neurobit.modules.microcircuit import MicroCircuit
from neurobit.modules.microcircuit_bank import MicroCircuitBank

RESET_KIND = "subtract_delayed"


class NIRResetWarning(UserWarning):
    """NIR cannot express neurobit's delayed subtractive reset (the graph resets to zero)."""


def _nir():
    try:
        import nir
    except ImportError as e:  # pragma: no cover - nir is a dependency of norse
        from neurobit.errors import BackendError
        raise BackendError("nir: not installed; `pip install nir`") from e
    return nir


def _block_diag(w: torch.Tensor) -> np.ndarray:
    """``[M, out, in]`` -> block-diagonal ``[M * out, M * in]``; ``[out, in]`` unchanged."""
    if w.dim() == 2:
        return w.numpy()
    return torch.block_diag(*w.unbind(0)).numpy()


def _layer(layer: BitLinear) -> tuple[np.ndarray, np.ndarray]:
    """Effective weight (dense, block-diagonal for banks; float32) and the per-bank scale."""
    if layer.bias is not None or layer.act_bits is not None:
        raise ParameterError("circuit: NIR export supports BitLinear without bias and act_bits")
    q = layer.quantized()
    w = (q.codes * q.scale).detach().to(torch.float32).cpu()
    scale = q.scale.detach().to(torch.float64).cpu().reshape(-1).numpy()
    return _block_diag(w), scale


def _per_unit(x: torch.Tensor | None, n_units: int, n_circuits: int) -> np.ndarray:
    """A scalar or ``[N]`` LIF parameter as ``[M * N]`` float64 (exact copy of float32 values)."""
    x = torch.as_tensor(x).detach().to(torch.float64).cpu()
    return torch.broadcast_to(x, (n_units,)).repeat(n_circuits).numpy().copy()


def _as_1d(x) -> np.ndarray:
    return np.atleast_1d(torch.as_tensor(x).detach().double().cpu().numpy()).copy()


def export_nir(circuit: MicroCircuit, dt_ms: float = 1.0):
    """Export ``circuit`` (:class:`MicroCircuit` or :class:`MicroCircuitBank`) as ``nir.NIRGraph``.

    Args:
        circuit: the circuit; its current ternary codes and scales are exported.
        dt_ms: the simulation step in ms the discrete update stands for (> 0).

    Returns:
        ``nir.NIRGraph`` with nodes ``input``, ``w_in`` (Linear), ``lif`` (LIF), ``w_rec``
        (Linear, recurrent only), ``w_out`` (Linear, if the circuit has a readout), ``output``;
        the output is ``w_out``'s, else the LIF spikes. Times in seconds.

    Warns:
        NIRResetWarning: always (NIR resets to ``v_reset``; neurobit subtracts ``beta`` later).

    Example:
        >>> g = export_nir(MicroCircuit(8, 16, 4, quant="fixed", fixed_scale=0.5, alpha=0.9))
        >>> nir.write("circuit.nir", g)
    """
    nir = _nir()
    if not isinstance(circuit, MicroCircuit):
        raise ParameterError(f"circuit: expected a MicroCircuit or MicroCircuitBank, "
                             f"got {type(circuit).__name__}")
    if not dt_ms > 0:
        raise ParameterError(f"dt_ms: must be > 0, got {dt_ms}")
    if circuit.lif.backend != "native":
        raise ParameterError(f"circuit.lif.backend: export needs the native backend, "
                             f"got {circuit.lif.backend!r}")
    bank = isinstance(circuit, MicroCircuitBank)
    m = circuit.n_circuits if bank else 1
    n = circuit.n_units
    p = circuit.lif.params
    alpha = _per_unit(p.alpha, n, m)
    theta = _per_unit(p.theta, n, m)
    beta = _per_unit(p.reset, n, m)
    dt_s = float(dt_ms) * 1e-3
    tau = dt_s / (1.0 - alpha)
    r = tau / dt_s

    layers = {"w_in": circuit.w_in, "w_rec": circuit.w_rec, "w_out": circuit.w_out}
    nodes, scales = {}, {}
    n_in = circuit.n_in * m
    nodes["input"] = nir.Input(input_type={"input": np.array([n_in])})
    for name, layer in layers.items():
        if layer is not None:
            w, scales[name] = _layer(layer)
            nodes[name] = nir.Linear(weight=w)
    nodes["lif"] = nir.LIF(tau=tau, r=r, v_leak=np.zeros_like(tau), v_threshold=theta,
                           v_reset=np.zeros_like(tau))
    n_out = (circuit.n_out if circuit.w_out is not None else n) * m
    nodes["output"] = nir.Output(output_type={"output": np.array([n_out])})

    edges = [("input", "w_in"), ("w_in", "lif")]
    if circuit.w_rec is not None:
        edges += [("lif", "w_rec"), ("w_rec", "lif")]
    edges += [("lif", "w_out"), ("w_out", "output")] if circuit.w_out is not None else [
        ("lif", "output")]

    meta = {
        "version": __version__, "kind": "MicroCircuitBank" if bank else "MicroCircuit",
        "n_in": int(circuit.n_in), "n_units": int(n), "n_out": int(circuit.n_out or 0),
        "n_circuits": int(m), "recurrent": int(circuit.w_rec is not None),
        "quant": circuit.w_in.quant, "fixed_scale": float(circuit.w_in.fixed_scale or 0.0),
        "dt_ms": float(dt_ms), "reset": RESET_KIND,
        # LIF parameters as given to LIFPopulation (scalar or [N]; float64 copies of the buffers)
        # (1-d: HDF5 cannot compress 0-d datasets; a single value means a scalar)
        "alpha": _as_1d(p.alpha), "theta": _as_1d(p.theta), "beta": _as_1d(p.reset),
        "lif_dtype": str(circuit.lif.alpha.dtype).replace("torch.", ""),
        "surrogate": p.surrogate, "slope": float(p.slope), "detach_reset": int(p.detach_reset),
        "scales": scales,
    }
    warnings.warn(
        "export_nir: NIR's LIF resets v to v_reset=0 in the step of a spike; neurobit subtracts "
        "beta one step later (reset='subtract_delayed'). A NIR simulator will give different "
        "spikes after a unit's first spike; the exact parameters are kept in "
        "graph.metadata['neurobit'] for a lossless neurobit round trip.",
        NIRResetWarning, stacklevel=2)
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"neurobit": meta})
