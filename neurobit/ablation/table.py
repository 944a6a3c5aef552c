"""Aggregate an ablation grid: mean +/- sample std over seeds per variant, a markdown table
with the energy constants cited, a JSON of everything, and a figure."""
from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path

from neurobit._atomic import atomic_write, atomic_write_text
from neurobit.ablation.config import AblationConfig
from neurobit.ablation.experiments import QUALITY
from neurobit.analysis.opcount import ENERGY_PJ

COLUMNS = ("quality", "activity", "acs", "macs", "other_macs", "energy_j", "seq_rep_4",
           "train_seconds", "steps")


def _mean_std(xs: list) -> tuple[float, float] | None:
    xs = [float(x) for x in xs if x is not None]
    if not xs:
        return None
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def aggregate(records: list[dict]) -> dict[str, dict]:
    """variant -> {"n": seeds, column: [mean, std], "params", "packed_bytes"}."""
    out: dict[str, dict] = {}
    for r in records:
        out.setdefault(r["variant"], {"runs": []})["runs"].append(r["metrics"])
    for v, d in out.items():
        runs = d.pop("runs")
        d["n"] = len(runs)
        for c in COLUMNS:
            ms = _mean_std([m.get(c) for m in runs])
            if ms is not None:
                d[c] = list(ms)
        d["diverged"] = sum(bool(m.get("diverged")) for m in runs)
        d["params"] = runs[0].get("params")
        d["packed_bytes"] = runs[0].get("packed_bytes")
    return out


def _fmt(ms, scale=1.0, digits=3) -> str:
    if ms is None:
        return "-"
    m, s = ms
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def _si(ms, unit="") -> str:
    if ms is None:
        return "-"
    m, s = ms
    for k, p in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(m) >= k:
            return f"{m / k:.2f} ± {s / k:.2f} {p}{unit}"
    return f"{m:.1f} ± {s:.1f} {unit}"


def _energy(ms) -> str:
    """Joules as mean ± std in the largest unit that keeps the mean >= 1 (pJ .. J)."""
    if ms is None:
        return "-"
    m, s = ms
    for k, unit in ((1.0, "J"), (1e-3, "mJ"), (1e-6, "µJ"), (1e-9, "nJ")):
        if abs(m) >= k:
            return f"{m / k:.3g} ± {s / k:.2g} {unit}"
    return f"{m / 1e-12:.3g} ± {s / 1e-12:.2g} pJ"


def markdown(cfg: AblationConfig, agg: dict, command: str) -> str:
    qname, better = QUALITY[cfg.experiment]
    per = "image" if cfg.experiment == "vision" else "token"
    e = ENERGY_PJ[cfg.energy_precision]
    lines = [
        f"# Ablation `{cfg.name}` ({cfg.experiment})", "",
        f"Command: `{command}`  ", f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}; seeds "
        f"{cfg.seeds}; mean ± sample std over seeds.", "",
        f"- quality: {qname} ({better} is better); activity: mean fraction of active units "
        "per step (spikes for LIF units, non-zero outputs otherwise).",
        f"- operations per {per}, counted while running (`neurobit.analysis.opcount`): AC = "
        "accumulates (spike inputs: active input x non-zero synapse pairs; ternary weights on "
        "dense inputs: one add per non-zero weight), MAC = dense multiply-accumulates, other = "
        "matmuls outside layers (attention scores, fast-weight reads).",
        f"- energy per {per} = AC x {e['add']:g} pJ + (MAC + other) x "
        f"{e['add'] + e['mult']:.4g} pJ "
        f"({cfg.energy_precision} add {e['add']} pJ, multiply {e['mult']} pJ: M. Horowitz, "
        "\"Computing's energy problem (and what we can do about it)\", ISSCC 2014, 45 nm). "
        "An estimate from counted operations, not a measurement of any chip; memory traffic "
        "is not included.",
        "- packed bytes: ternary weights at 2 bits, float parameters at 4 bytes.", "",
        f"| variant | seeds | {qname} | activity | AC/{per} | MAC/{per} | other MAC/{per} | "
        f"energy/{per} | seq-rep-4 | params | packed bytes | train s | steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in cfg.variants:
        d = agg.get(v.name)
        if d is None:
            continue
        quality = _fmt(d.get('quality'), digits=4)
        if d.get("diverged"):
            quality = (f"diverged in {d['diverged']} of {d['n']}" +
                       (f"; others {quality}" if d.get("quality") else ""))
        lines.append(
            f"| {v.name} | {d['n']} | {quality} | "
            f"{_fmt(d.get('activity'))} | {_si(d.get('acs'))} | {_si(d.get('macs'))} | "
            f"{_si(d.get('other_macs'))} | "
            f"{_energy(d.get('energy_j'))} | "
            f"{_fmt(d.get('seq_rep_4'))} | {d['params']:,} | {d['packed_bytes']:,} | "
            f"{_fmt(d.get('train_seconds'), digits=0)} | {_fmt(d.get('steps'), digits=0)} |")
    lines += ["", "Variants (overrides of the base):", ""]
    lines += [f"- `{v.name}`: " + (", ".join(f"`{k}={val}`" for k, val in v.set.items())
                                   or "the base") for v in cfg.variants]
    return "\n".join(lines) + "\n"


def figure(cfg: AblationConfig, agg: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [v.name for v in cfg.variants if v.name in agg]
    qname, _ = QUALITY[cfg.experiment]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, label, scale in ((axes[0], "quality", qname, 1.0),
                                  (axes[1], "activity", "activity", 1.0),
                                  (axes[2], "energy_j", "energy per sample (nJ)", 1e9)):
        ms = [agg[n].get(key) or [float("nan"), 0.0] for n in names]
        ax.bar(range(len(names)), [m[0] * scale for m in ms],
               yerr=[m[1] * scale for m in ms], capsize=3, color="tab:blue")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_title(label)
        if key == "quality":
            vals = [m[0] for m in ms if m[0] == m[0]]
            if vals:
                lo, hi = min(vals), max(vals)
                pad = (hi - lo) * 0.5 + 1e-3
                ax.set_ylim(lo - pad, hi + pad)
    fig.suptitle(f"ablation {cfg.name}: mean ± std over seeds {cfg.seeds}")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def write_results(cfg: AblationConfig, records: list[dict], command: str) -> dict:
    out = Path(cfg.out)
    agg = aggregate(records)
    for name, text in (("results.md", markdown(cfg, agg, command)),
                       ("results.json", json.dumps({"name": cfg.name, "experiment": cfg.experiment,
                                                    "seeds": cfg.seeds, "aggregate": agg,
                                                    "runs": records}, indent=2, default=float))):
        atomic_write_text(out / name, text)
    figure(cfg, agg, out / "ablation.png")
    return agg
