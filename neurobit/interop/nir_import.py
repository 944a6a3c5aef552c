"""Import a NIR graph as a runnable torch module.

:func:`import_nir` returns one of two things:

1. ``semantics="neurobit"`` (the default when ``graph.metadata["neurobit"]`` is present, i.e.
   the graph came from :func:`neurobit.interop.nir_export.export_nir`): the original
   :class:`MicroCircuit` / :class:`MicroCircuitBank`, rebuilt exactly (same ternary codes and
   scales, same alpha/theta/beta, delayed subtractive reset). Its spikes equal the original's.
2. ``semantics="nir"`` (any graph): a :class:`NIRSimulator`, a clear forward-Euler simulation of
   the NIR equations with step ``dt_s`` (seconds), per step t and node:

   - ``Input``: ``x_t``; ``Output``: identity; ``Linear``: ``W x``; ``Affine``: ``W x + b``;
     ``Scale``: ``s * x``.
   - ``LIF`` (``tau dv/dt = v_leak - v + r I``)::

         v <- v + dt/tau (r I + v_leak - v);   z = 1[v - v_threshold > 0];
         v <- (1 - z) v + z v_reset

   - ``CubaLIF``: first the synaptic current ``I <- I + dt/tau_syn ((0 - I) + w_in S)`` (norse's
     box integrator, whose leak is ``v_leak``), then the LIF step above on ``r I`` with
     ``tau_mem``.
   - ``LI`` and ``CubaLI``: the same without threshold/reset (output ``v``); ``IF``:
     ``v <- v + r I`` with threshold/reset; ``I``: ``v <- v + r I``.

   The input of a node is the sum over its incoming edges. Edges are applied in a
   topological order of the graph without its loops; an edge that closes a loop (found by a
   depth-first search from the inputs) carries its source's output of the previous step
   (zeros at t = 0): recurrence has a one-step delay. States start at rest (``v = v_leak``,
   ``I = 0``). The arithmetic is written in the same order as norse's ``LIFBoxCell`` and
   ``LIBoxCell`` so the two agree bit for bit in float32.

Shapes: input ``[T, B, n_in]`` (one Input node); every node is 1-d (``[n]``).
"""
from __future__ import annotations

import pathlib
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from neurobit.errors import ParameterError
from neurobit.functional.packing import pack_2bit
from neurobit.modules.microcircuit import MicroCircuit
from neurobit.modules.microcircuit_bank import MicroCircuitBank

SEMANTICS = ("auto", "neurobit", "nir")


def _nir():
    import nir
    return nir


def _scalar(x: Any):
    """A metadata value read back from HDF5 (numpy scalar, bytes, 0-d array) as Python."""
    if isinstance(x, bytes):
        return x.decode("utf8")
    if isinstance(x, np.ndarray) and x.ndim == 0:
        return x.item()
    if isinstance(x, np.generic):
        return x.item()
    return x


def _load_graph(graph_or_path):
    nir = _nir()
    if isinstance(graph_or_path, (str, pathlib.Path)):
        path = pathlib.Path(graph_or_path)
        if not path.is_file():
            raise ParameterError(f"graph_or_path: no such file {str(path)!r}")
        try:
            return nir.read(path, type_check=False)
        except (ValueError, KeyError, OSError) as e:
            raise ParameterError(f"graph_or_path: {str(path)!r} is not a readable NIR file "
                                 f"({str(e).splitlines()[0]})") from None
    if not isinstance(graph_or_path, nir.NIRGraph):
        raise ParameterError(f"graph_or_path: expected a nir.NIRGraph or a path, "
                             f"got {type(graph_or_path).__name__}")
    return graph_or_path


def import_nir(graph_or_path, *, semantics: str = "auto", dt_s: float | None = None,
               dtype: torch.dtype = torch.float32) -> nn.Module:
    """Build a neurobit module that simulates a NIR graph (see the module docstring).

    Args:
        graph_or_path: ``nir.NIRGraph`` or a path to a ``.nir`` (HDF5) file.
        semantics: ``auto`` (neurobit if the graph has neurobit metadata, else nir),
            ``neurobit`` (exact rebuild; needs the metadata) or ``nir`` (:class:`NIRSimulator`).
        dt_s: Euler step in seconds for ``semantics="nir"``; default: the graph's neurobit
            ``dt_ms`` if present. Required otherwise (snntorch exports use 1e-4).
        dtype: dtype of the :class:`NIRSimulator` (the rebuilt circuit keeps its own).

    Returns:
        :class:`MicroCircuit` / :class:`MicroCircuitBank` (``forward(x_seq)`` ->
        ``MicroCircuitOutput``) or :class:`NIRSimulator` (``forward(x_seq)`` -> ``NIRRun``).

    Example:
        >>> sim = import_nir("braille.nir", dt_s=1e-4)
        >>> run = sim(x_seq)            # x_seq [T, B, 12] -> run.output [T, B, 7]
    """
    if semantics not in SEMANTICS:
        raise ParameterError(f"semantics: unknown {semantics!r}; choose one of {list(SEMANTICS)}")
    graph = _load_graph(graph_or_path)
    meta = (graph.metadata or {}).get("neurobit") if isinstance(graph.metadata, dict) else None
    if semantics == "neurobit" and meta is None:
        raise ParameterError("semantics: 'neurobit' needs graph.metadata['neurobit'] "
                             "(a graph written by export_nir)")
    if semantics == "neurobit" or (semantics == "auto" and meta is not None):
        return rebuild_circuit(graph, meta)
    if dt_s is None:
        if meta is None:
            raise ParameterError("dt_s: the graph carries no time step; pass dt_s in seconds "
                                 "(e.g. 1e-4 for graphs exported by snntorch)")
        dt_s = float(_scalar(meta["dt_ms"])) * 1e-3
    return NIRSimulator(graph, dt_s=dt_s, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# 1. exact rebuild of a neurobit circuit from export_nir's metadata
# ---------------------------------------------------------------------------------------------

def _blocks(w: np.ndarray, m: int, out: int, inp: int, node: str) -> torch.Tensor:
    """Block-diagonal ``[m*out, m*inp]`` -> ``[m, out, inp]`` (``[out, inp]`` when m = 1)."""
    w = torch.from_numpy(np.asarray(w, dtype=np.float32))
    if tuple(w.shape) != (m * out, m * inp):
        raise ParameterError(f"node {node!r}: weight shape {list(w.shape)} does not match the "
                             f"metadata ({m * out}, {m * inp})")
    if m == 1:
        return w
    blocks = torch.stack([w[i * out:(i + 1) * out, i * inp:(i + 1) * inp] for i in range(m)])
    if not torch.equal(torch.block_diag(*blocks.unbind(0)), w):
        raise ParameterError(f"node {node!r}: weights outside the diagonal blocks of a bank")
    return blocks


def _load_layer(layer, w: torch.Tensor, scale: np.ndarray, node: str) -> None:
    """Freeze ``layer`` to codes ``w / scale`` and ``scale`` (exactly the exported forward)."""
    with torch.no_grad():
        if layer.quant == "float":
            layer.weight.copy_(w.reshape(layer.weight.shape))
            return
        s = torch.as_tensor(np.asarray(scale, dtype=np.float64)).to(torch.float32)
        s = s.reshape(-1, 1, 1) if layer.banks is not None else s.reshape(())
        codes = torch.round(w / s)
        if not bool(((codes.abs() <= 1) & (codes * s == w)).all()):
            raise ParameterError(f"node {node!r}: weights are not scale * ternary codes with the "
                                 f"scale stored in metadata")
        layer.load_packed({"codes": pack_2bit(codes), "scale": s,
                           "shape": torch.tensor(list(layer.weight.shape))})


def rebuild_circuit(graph, meta: dict) -> MicroCircuit:
    """The :class:`MicroCircuit` (or bank) that :func:`export_nir` wrote into ``graph``."""
    g = {k: _scalar(v) for k, v in meta.items() if k != "scales"}
    if g.get("reset") != "subtract_delayed":
        raise ParameterError(f"metadata.neurobit.reset: unknown reset {g.get('reset')!r}")
    dtype = getattr(torch, str(g["lif_dtype"]))

    def t(key):  # scalar when stored as one value, else per-unit [N]
        v = torch.as_tensor(np.asarray(meta[key], dtype=np.float64), dtype=dtype)
        return v.reshape(()) if v.numel() == 1 else v
    fixed = float(g.get("fixed_scale", 0.0)) or None
    lif = dict(alpha=t("alpha"), theta=t("theta"), beta=t("beta"), surrogate=str(g["surrogate"]),
               slope=float(g["slope"]), detach_reset=bool(g["detach_reset"]), dtype=dtype)
    n_in, n, m = int(g["n_in"]), int(g["n_units"]), int(g["n_circuits"])
    n_out = int(g["n_out"]) or None
    kw = dict(recurrent=bool(g["recurrent"]), quant=str(g["quant"]), fixed_scale=fixed, **lif)
    if g["kind"] == "MicroCircuitBank":
        circuit = MicroCircuitBank(m, n_in, n, n_out, **kw)
    elif g["kind"] == "MicroCircuit":
        circuit = MicroCircuit(n_in, n, n_out, **kw)
    else:
        raise ParameterError(f"metadata.neurobit.kind: unknown {g['kind']!r}")
    shapes = {"w_in": (n, n_in), "w_rec": (n, n), "w_out": (n_out, n)}
    for name in ("w_in", "w_rec", "w_out"):
        layer = getattr(circuit, name)
        if layer is None:
            continue
        if name not in graph.nodes:
            raise ParameterError(f"node {name!r}: missing from the graph (metadata expects it)")
        w = _blocks(graph.nodes[name].weight, m, *shapes[name], node=name)
        _load_layer(layer, w, meta["scales"][name], name)
    return circuit


# ---------------------------------------------------------------------------------------------
# 2. NIR semantics: a forward-Euler simulator of any graph of the supported node types
# ---------------------------------------------------------------------------------------------

class NIRRun(NamedTuple):
    """``output`` ``[T, B, n_out]``; ``spikes``: per spiking node ``[T, B, n]``; final ``state``."""

    output: torch.Tensor
    spikes: dict
    state: dict


def _node_sizes(node, name: str) -> tuple[int, int]:
    """(input size, output size) of a 1-d node; ParameterError naming the node otherwise."""
    nir = _nir()
    if isinstance(node, (nir.Linear, nir.Affine)):
        w = np.asarray(node.weight)
        if w.ndim != 2:
            raise ParameterError(f"node {name!r}: weight must be 2-d [out, in], "
                                 f"got {list(w.shape)}")
        if isinstance(node, nir.Affine) and np.asarray(node.bias).shape not in ((w.shape[0],), ()):
            raise ParameterError(f"node {name!r}: bias shape {list(np.shape(node.bias))} does not "
                                 f"match weight rows {w.shape[0]}")
        return int(w.shape[1]), int(w.shape[0])
    if isinstance(node, (nir.Input, nir.Output)):
        shape = np.asarray(next(iter((node.input_type if isinstance(node, nir.Output)
                                      else node.output_type).values()))).reshape(-1)
        if shape.size != 1:
            raise ParameterError(f"node {name!r}: only 1-d inputs/outputs are supported, "
                                 f"got shape {shape.tolist()}")
        return int(shape[0]), int(shape[0])
    field = {nir.LIF: "v_threshold", nir.CubaLIF: "v_threshold", nir.IF: "v_threshold",
             nir.LI: "tau", nir.CubaLI: "tau_mem", nir.I: "r", nir.Scale: "scale"}
    for cls, attr in field.items():
        if type(node) is cls:
            shape = np.asarray(getattr(node, attr)).shape
            if len(shape) != 1:
                raise ParameterError(f"node {name!r}: parameters must be 1-d, got {list(shape)}")
            return int(shape[0]), int(shape[0])
    raise ParameterError(f"node {name!r}: unsupported NIR node type {type(node).__name__}; "
                         f"supported: Input, Output, Linear, Affine, Scale, LIF, CubaLIF, LI, "
                         f"CubaLI, IF, I")


def _schedule(nodes: dict, edges: list) -> tuple[list[str], set]:
    """Topological order of the graph without loop-closing edges, and those edges.

    A loop-closing (delayed) edge is one that a depth-first search from the Input nodes meets
    pointing back into the current search path.
    """
    nir = _nir()
    succ = {k: [] for k in nodes}
    for a, b in edges:
        succ[a].append(b)
    back, state = set(), {}  # state: 1 on the path, 2 done

    def dfs(u):
        state[u] = 1
        for v in succ[u]:
            if state.get(v) == 1:
                back.add((u, v))
            elif v not in state:
                dfs(v)
        state[u] = 2

    roots = [k for k, n in nodes.items() if isinstance(n, nir.Input)] + list(nodes)
    for r in roots:
        if r not in state:
            dfs(r)
    indeg = {k: 0 for k in nodes}
    for a, b in edges:
        if (a, b) not in back:
            indeg[b] += 1
    order, ready = [], [k for k in nodes if indeg[k] == 0]
    while ready:
        u = ready.pop(0)
        order.append(u)
        for v in succ[u]:
            if (u, v) not in back:
                indeg[v] -= 1
                if indeg[v] == 0:
                    ready.append(v)
    return order, back


class NIRSimulator(nn.Module):
    """Forward-Euler simulation of a NIR graph with step ``dt_s`` (seconds); see module doc.

    ``forward(x_seq [T, B, n_in], state=None) -> NIRRun``. ``state`` maps node names to their
    tensors (``v``, ``i``) and ``"__out__"`` to every node's last output (for delayed edges).
    """

    def __init__(self, graph, dt_s: float, dtype: torch.dtype = torch.float32):
        super().__init__()
        nir = _nir()
        if not dt_s > 0:
            raise ParameterError(f"dt_s: must be > 0 (seconds), got {dt_s}")
        self.dt = float(dt_s)
        self.nodes = dict(graph.nodes)
        self.edges = [(str(a), str(b)) for a, b in graph.edges]
        for a, b in self.edges:
            for end in (a, b):
                if end not in self.nodes:
                    raise ParameterError(f"node {end!r}: named in edge ({a!r}, {b!r}) but not in "
                                         f"the graph")
        sizes = {k: _node_sizes(n, k) for k, n in self.nodes.items()}
        for a, b in self.edges:
            if sizes[a][1] != sizes[b][0]:
                raise ParameterError(f"node {b!r}: input size {sizes[b][0]} does not match the "
                                     f"output size {sizes[a][1]} of {a!r}")
        self.sizes = sizes
        inputs = [k for k, n in self.nodes.items() if isinstance(n, nir.Input)]
        outputs = [k for k, n in self.nodes.items() if isinstance(n, nir.Output)]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ParameterError(f"graph: needs exactly one Input and one Output node, got "
                                 f"{inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.order, self.delayed = _schedule(self.nodes, self.edges)
        self.sources = {k: [a for a, b in self.edges if b == k] for k in self.nodes}
        self.dtype = dtype
        self.params = {k: self._params(n) for k, n in self.nodes.items()}

    def _params(self, node) -> dict:
        """Node parameters as tensors; ``*_inv`` are ``1 / tau`` as norse computes them."""
        nir = _nir()
        t = lambda x: torch.as_tensor(np.asarray(x), dtype=self.dtype)  # noqa: E731
        if isinstance(node, nir.Affine):
            return {"w": t(node.weight), "b": t(node.bias)}
        if isinstance(node, nir.Linear):
            return {"w": t(node.weight)}
        if isinstance(node, nir.Scale):
            return {"s": t(node.scale)}
        if isinstance(node, nir.LIF):
            return {"tau_inv": 1 / t(node.tau), "r": t(node.r), "v_leak": t(node.v_leak),
                    "v_th": t(node.v_threshold), "v_reset": t(node.v_reset)}
        if isinstance(node, nir.CubaLIF):
            return {"syn_inv": 1 / t(node.tau_syn), "tau_inv": 1 / t(node.tau_mem),
                    "r": t(node.r), "w_in": t(node.w_in), "v_leak": t(node.v_leak),
                    "v_th": t(node.v_threshold), "v_reset": t(node.v_reset)}
        if isinstance(node, nir.LI):
            return {"tau_inv": 1 / t(node.tau), "r": t(node.r), "v_leak": t(node.v_leak)}
        if isinstance(node, nir.CubaLI):
            return {"syn_inv": 1 / t(node.tau_syn), "tau_inv": 1 / t(node.tau_mem),
                    "r": t(node.r), "w_in": t(node.w_in), "v_leak": t(node.v_leak)}
        if isinstance(node, nir.IF):
            return {"r": t(node.r), "v_th": t(node.v_threshold), "v_reset": t(node.v_reset)}
        if isinstance(node, nir.I):
            return {"r": t(node.r)}
        return {}

    def initial_state(self, batch_size: int) -> dict:
        """Rest: ``v = v_leak`` (0 without a leak), synaptic ``i = 0``, all outputs 0."""
        state = {"__out__": {k: torch.zeros(batch_size, self.sizes[k][1], dtype=self.dtype)
                             for k in self.nodes}}
        for k, p in self.params.items():
            if "v_th" in p or "tau_inv" in p or isinstance(self.nodes[k], _nir().I):
                v = p.get("v_leak", torch.zeros(self.sizes[k][0], dtype=self.dtype))
                state[k] = {"v": v.expand(batch_size, -1).clone()}
                if "syn_inv" in p:
                    state[k]["i"] = torch.zeros(batch_size, self.sizes[k][0], dtype=self.dtype)
        return state

    def _node_step(self, name: str, x: torch.Tensor, st: dict | None):
        """One Euler step of node ``name`` on input ``x`` [B, n]: (output, new node state)."""
        node, p, dt = self.nodes[name], self.params[name], self.dt
        nir = _nir()
        if isinstance(node, (nir.Input, nir.Output)):
            return x, st
        if isinstance(node, nir.Affine):
            return torch.nn.functional.linear(x, p["w"], p["b"]), st
        if isinstance(node, nir.Linear):
            return torch.nn.functional.linear(x, p["w"]), st
        if isinstance(node, nir.Scale):
            return p["s"] * x, st
        st = dict(st)
        if "syn_inv" in p:  # CubaLIF / CubaLI: synaptic current first (norse LIBoxCell order)
            i_in = p["w_in"] * x
            st["i"] = st["i"] + dt * p["syn_inv"] * ((0.0 - st["i"]) + i_in)
            x = st["i"]
        if isinstance(node, (nir.I, nir.IF)):
            v = st["v"] + p["r"] * x
        elif isinstance(node, (nir.LI, nir.CubaLI)):  # LIBoxCell: dt/tau ((v_leak - v) + r I)
            v = st["v"] + dt * p["tau_inv"] * ((p["v_leak"] - st["v"]) + p["r"] * x)
        else:  # LIF / CubaLIF: LIFBoxCell: dt/tau (r I + v_leak - v)
            v = st["v"] + dt * p["tau_inv"] * (p["r"] * x + p["v_leak"] - st["v"])
        if "v_th" not in p:
            st["v"] = v
            return v, st
        z = torch.gt(v - p["v_th"], 0.0).to(v.dtype)
        st["v"] = (1 - z) * v + z * p["v_reset"]
        return z, st

    @torch.no_grad()
    def forward(self, x_seq: torch.Tensor, state: dict | None = None) -> NIRRun:
        n_in = self.sizes[self.input_name][0]
        if x_seq.dim() != 3 or x_seq.shape[-1] != n_in:
            from neurobit.errors import ShapeError
            raise ShapeError(f"x_seq: expected [T, B, {n_in}], got {list(x_seq.shape)}")
        x_seq = x_seq.to(self.dtype)
        state = state if state is not None else self.initial_state(x_seq.shape[1])
        spiking = [k for k, p in self.params.items() if "v_th" in p]
        outs, spikes = [], {k: [] for k in spiking}
        prev = state["__out__"]
        for x in x_seq.unbind(0):
            cur = {}
            new_state = {"__out__": cur}
            for name in self.order:
                if name == self.input_name:
                    inp = x
                else:
                    inp = None
                    for src in self.sources[name]:
                        val = prev[src] if (src, name) in self.delayed else cur[src]
                        inp = val if inp is None else inp + val
                    if inp is None:
                        inp = torch.zeros(x.shape[0], self.sizes[name][0], dtype=self.dtype)
                cur[name], st = self._node_step(name, inp, state.get(name))
                if st is not None:
                    new_state[name] = st
            state, prev = new_state, cur
            outs.append(cur[self.output_name])
            for k in spiking:
                spikes[k].append(cur[k])
        output = torch.stack(outs, 0)
        return NIRRun(output, {k: torch.stack(v, 0) for k, v in spikes.items()}, state)
