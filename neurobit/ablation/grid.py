"""Run an ablation grid: every variant x every seed, each in its own folder, resumable.

Layout of the output folder::

    <out>/<variant>/seed<k>/      the run (the experiment's checkpoint and outputs)
    <out>/<variant>/seed<k>/ablation.json   {"config_hash", "config", "metrics"}: written last
                                            and atomically; its presence marks the run done
    <out>/results.json            every finished run's metrics + the aggregate
    <out>/results.md              the table (mean +/- std over seeds)
    <out>/ablation.png            quality and energy per variant

A run whose ``ablation.json`` exists with the same config hash is not redone; a run killed
before it was written continues from its own checkpoint (the experiment resumes) or starts
over. A finished run whose config changed is an error unless ``force`` (then it is redone).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

from neurobit._atomic import atomic_write_json
from neurobit.ablation.config import AblationConfig, config_hash, variant_config
from neurobit.errors import ConfigError, NeurobitError

DONE = "ablation.json"


def run_dir(out: Path, variant: str, seed: int) -> Path:
    return out / variant / f"seed{seed}"


def finished(folder: Path) -> dict | None:
    f = folder / DONE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except ValueError:
        return None


def run_grid(cfg: AblationConfig, runner: Callable[[dict, Path, int, str], dict] | None = None,
             force: bool = False, log: Callable[[str], None] = print,
             only: list[str] | None = None, failures: list | None = None) -> list[dict]:
    """Run what is not finished; returns one record per finished (variant, seed) in grid
    order: ``{"variant", "seed", "metrics", "reused"}``. A run that raises a
    :class:`NeurobitError` is logged, left unfinished (retried next time) and, if
    ``failures`` is a list, appended to it as ``(variant, seed, message)``; without that list
    the error propagates."""
    from neurobit.ablation.experiments import RUNNERS
    runner = runner or RUNNERS[cfg.experiment]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    variants = [v for v in cfg.variants if only is None or v.name in only]
    total = len(variants) * len(cfg.seeds)
    for v in variants:
        for seed in cfg.seeds:
            run = variant_config(cfg.base, v, seed, cfg.experiment)
            h = config_hash(run)
            folder = run_dir(out, v.name, seed)
            prev = finished(folder)
            n = len(records) + 1
            if prev is not None and prev.get("config_hash") == h:
                log(f"[{n}/{total}] {v.name} seed {seed}: done earlier, kept")
                records.append({"variant": v.name, "seed": seed, "metrics": prev["metrics"],
                                "reused": True})
                continue
            if prev is not None:
                if not force:
                    raise ConfigError(f"{folder}: finished with a different config; rerun with "
                                      "--force to redo it, or use another out folder")
                shutil.rmtree(folder)
            elif folder.exists() and (folder / "config.hash").is_file() and \
                    (folder / "config.hash").read_text() != h:
                shutil.rmtree(folder)  # an unfinished run of another config: start over
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.hash").write_text(h)
            log(f"[{n}/{total}] {v.name} seed {seed}: running")
            t0 = time.perf_counter()
            try:
                metrics = runner(run, folder, cfg.eval_batch, cfg.energy_precision)
            except NeurobitError as e:
                if failures is None:
                    raise
                msg = str(e).splitlines()[0]
                log(f"[{n}/{total}] {v.name} seed {seed}: FAILED: {msg}")
                failures.append((v.name, seed, msg))
                continue
            metrics["wall_seconds"] = time.perf_counter() - t0
            atomic_write_json(folder / DONE, {"config_hash": h, "config": run, "metrics": metrics})
            records.append({"variant": v.name, "seed": seed, "metrics": metrics,
                            "reused": False})
    return records


def recount(cfg: AblationConfig, log: Callable[[str], None] = print) -> int:
    """Re-measure the operations and energy of every finished vision run (after a change of
    the counting rules) without retraining; returns the number of runs updated."""
    from neurobit.ablation.experiments import vision_ops
    if cfg.experiment != "vision":
        raise ConfigError("--recount: only vision grids can be recounted (LM runs count "
                          "operations inside the run)")
    n = 0
    for v in cfg.variants:
        for seed in cfg.seeds:
            folder = run_dir(Path(cfg.out), v.name, seed)
            done = finished(folder)
            if done is None:
                continue
            done["metrics"].update(vision_ops(folder, cfg.eval_batch, cfg.energy_precision))
            atomic_write_json(folder / DONE, done)
            log(f"{v.name} seed {seed}: recounted")
            n += 1
    return n
