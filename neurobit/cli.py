"""The ``neurobit`` command: thin verbs over the library. Bad input -> one line, exit code 2."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from neurobit.errors import NeurobitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="neurobit: ternary LIF circuits, simulated, recorded and analysed.")

EXIT_BAD_INPUT = 2


def _fail(msg: str) -> None:
    typer.echo(f"neurobit: error: {msg}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def _load(config: Path, overrides: list[str]):
    from neurobit.config.loader import load_circuit
    return load_circuit(config, overrides)


@app.command()
def validate(config: Path = typer.Argument(..., help="circuit YAML file"),
             set_: Optional[List[str]] = typer.Option(None, "--set", help="KEY.PATH=VALUE override")):
    """Check a circuit file and print its resolved form."""
    try:
        cfg = _load(config, set_ or [])
    except NeurobitError as e:
        _fail(str(e))
    from neurobit.sim.run import resolved_yaml
    typer.echo(resolved_yaml(cfg), nl=False)
    typer.echo(f"# {config}: valid", err=True)


@app.command()
def simulate(config: Path = typer.Argument(..., help="circuit YAML file, or a compiled circuit "
                                           "written by `neurobit compile CIRCUIT.yaml`"),
             output: Optional[Path] = typer.Option(None, "-o", "--output", help="output .h5"),
             set_: Optional[List[str]] = typer.Option(None, "--set", help="KEY.PATH=VALUE override"),
             force: bool = typer.Option(False, "--force", help="overwrite an existing output"),
             quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar")):
    """Simulate a circuit file and record spikes/state to HDF5 (SONATA layout)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from neurobit.compile.artifact import is_compiled
    try:
        compiled = is_compiled(config)
        if compiled:
            from neurobit.compile.circuit import load_compiled_circuit, simulate_compiled
            cfg = load_compiled_circuit(config, set_ or [])
        else:
            cfg = _load(config, set_ or [])
        out = output or (Path(cfg.output) if cfg.output else Path(config).with_suffix(".h5"))
        if out.exists() and not force:
            _fail(f"{out}: output exists; use --force to overwrite it")
        if out.parent and not out.parent.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
        from neurobit.sim.run import simulate as run_sim
        from neurobit.sim.run import build_engine  # noqa: F401  (import cost before the bar)
        n_steps = int(round(cfg.duration_ms / cfg.dt_ms))
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), disable=quiet,
                      transient=False) as bar:
            task = bar.add_task(f"simulate {cfg.name}", total=n_steps)
            advance = lambda k: bar.advance(task, k)  # noqa: E731
            if compiled:
                summary = simulate_compiled(config, out, force=force, overrides=set_ or [],
                                            progress=advance)
            else:
                summary = run_sim(cfg, out, force=force, progress=advance)
    except NeurobitError as e:
        _fail(str(e))
    except OSError as e:  # e.g. an unwritable output folder
        _fail(f"{e.filename or output}: {e.strerror or e}")
    total = {n: int(c.sum()) for n, c in summary.spike_counts.items()}
    typer.echo(f"wrote {out}: {summary.steps} steps x {cfg.trials} trial(s); spikes {total}")


@app.command()
def report(run: Path = typer.Argument(..., help="an .h5 file written by neurobit simulate"),
           plot: Optional[Path] = typer.Option(None, "--plot", help="write a raster/rate PNG"),
           trial: int = typer.Option(0, help="trial to summarise and plot")):
    """Summarise a recorded run per population (rates, CV ISI, Fano, activity) and plot it."""
    try:
        from neurobit.analysis.report import print_report
        print_report(run, plot=plot, trial=trial)
    except NeurobitError as e:
        _fail(str(e))


# ------------------------------------------------------------------------- language models

_RUN_FILES = ("latest", "metrics.jsonl", "loss_curve.png", "config.yaml", "run.yaml",
              "tokenizer.json", "data.json")


def _checkpoint_step(out: Path) -> Optional[int]:
    """Step of the checkpoint ``out/latest`` names (None: no checkpoint in ``out``)."""
    ptr = out / "latest"
    if ptr.is_file():
        name = ptr.read_text().strip()
        return int(name[5:]) if name.startswith("ckpt_") and name[5:].isdigit() else -1
    return -1 if any(p.is_dir() for p in out.glob("ckpt_*")) else None


def _clear_run(out: Path) -> None:
    """Remove the files a previous ``neurobit train`` wrote into ``out`` (nothing else)."""
    import shutil
    for name in _RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for d in [*out.glob("ckpt_*"), *out.glob(".ckpt_*")]:
        if d.is_dir():
            shutil.rmtree(d)


@app.command()
def train(config: Path = typer.Argument(..., help="language-model run YAML (model/train/data)"),
          output: Optional[Path] = typer.Option(None, "-o", "--output",
                                                help="run directory (default runs/<config name>)"),
          set_: Optional[List[str]] = typer.Option(None, "--set", help="KEY.PATH=VALUE override"),
          resume: bool = typer.Option(False, "--resume", help="continue the run in OUTDIR"),
          force: bool = typer.Option(False, "--force",
                                     help="discard the run in OUTDIR and start over"),
          stop_at: Optional[int] = typer.Option(None, "--stop-at", min=1,
                                                help="stop (checkpointed) after this many steps; "
                                                "continue later with --resume"),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar")):
    """Train a BrainLM or GPT on a corpus: checkpoints, metrics.jsonl, loss curve, tokenizer.

    Writes into OUTDIR: ckpt_<step>/ + latest (safetensors), metrics.jsonl, loss_curve.png,
    config.yaml (model + train), run.yaml (the resolved run file, data included),
    tokenizer.json and data.json (the prepared corpus' manifest).
    """
    import json
    import time

    import torch

    from neurobit.train.run_config import load_run_file, prepare_run_data, resolved_yaml
    try:
        if resume and force:
            _fail("--resume and --force exclude each other")
        run = load_run_file(config, set_ or [])
        out = output or Path("runs") / Path(config).stem
        if out.exists() and not out.is_dir():
            _fail(f"{out}: output exists and is not a directory")
        step = _checkpoint_step(out) if out.is_dir() else None
        if step is not None and not (resume or force):
            at = f" (step {step})" if step >= 0 else ""
            _fail(f"{out}: holds a training checkpoint{at}; use --resume to continue it or "
                  "--force to start over")
        t0 = time.perf_counter()
        data = prepare_run_data(run)
        cfg = run.with_vocab(data.vocab_size)
        for split in ("train", "val"):  # a block longer than a split fails here, not mid-run
            try:
                data.get_batch(split, 1, cfg.train.block_size, torch.Generator())
            except NeurobitError as e:
                raise run.locate(e, "train") from None
        if quiet:
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"progress": False})})
        tok = data.tokenizer()
        m = data.manifest
        t_data = time.perf_counter() - t0
        if resume and step is not None:  # refuse before anything in OUTDIR changes
            from neurobit.models.lm_config import LMRunConfig
            from neurobit.train.checkpoint import latest_checkpoint, load_config
            from neurobit.train.loop import _comparable
            ck = latest_checkpoint(out)
            if ck is not None and _comparable(load_config(ck)) != _comparable(
                    LMRunConfig(model=cfg.model, train=cfg.train)):
                _fail(f"resume: the model/train config differs from the one {ck} was "
                      "trained with (see its config.yaml)")
            if (out / "data.json").is_file() and json.loads(
                    (out / "data.json").read_text()).get("key") != m["key"]:
                _fail(f"resume: the corpus or tokenizer of this config differs from the one "
                      f"{out} was trained on")
        if force and step is not None:
            _clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        tok.save(out / "tokenizer.json")
        (out / "data.json").write_text(json.dumps(m, indent=2))
        (out / "run.yaml").write_text(resolved_yaml(cfg))
        typer.echo(f"data: {m['source']}, {m['tokenizer']['kind']} tokenizer, {data.vocab_size} "
                   f"ids, {m['counts']['train']['tokens']:,} train / "
                   f"{m['counts']['val']['tokens']:,} val tokens "
                   f"({t_data:.1f} s; cache {data.path})", err=True)
        from neurobit.train.loop import train as run_train
        try:
            res = run_train(cfg.model, cfg.train, data, out, resume=resume, stop_at=stop_at)
        except NeurobitError as e:
            raise run.locate(run.locate(e, "train"), "model") from None
    except NeurobitError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"{e.filename or output}: {e.strerror or e}")
    if not res.steps:
        typer.echo(f"{out}: already trained to step {res.resumed_from}; nothing to do")
        return
    first = res.steps[0] - 1
    val = f", val {res.val_losses[-1][1]:.4f}" if res.val_losses else ""
    typer.echo(f"trained {out}: steps {first} -> {res.steps[-1]} of {cfg.train.steps}, loss "
               f"{res.losses[0]:.4f} -> {res.losses[-1]:.4f}{val}, "
               f"{res.tokens_per_s:,.0f} tokens/s, {res.n_params:,} parameters")


def _require_checkpoint_dir(checkpoint: Path) -> None:
    if not checkpoint.exists():
        _fail(f"{checkpoint}: no such checkpoint")
    if not checkpoint.is_dir() or not ((checkpoint / "latest").is_file()
                                       or (checkpoint / "model.safetensors").is_file()):
        _fail(f"{checkpoint}: not a neurobit checkpoint (expected a run directory holding "
              "'latest' or a ckpt_* directory holding model.safetensors)")


def _load_lm(checkpoint: Path):
    """(model, tokenizer) of a run directory, a ckpt_* directory or a compiled file; one-line
    errors."""
    from neurobit.compile.artifact import is_compiled
    from neurobit.train.checkpoint import load_model
    from neurobit.train.tokenizer import load_tokenizer
    if not checkpoint.exists():
        _fail(f"{checkpoint}: no such checkpoint")
    if is_compiled(checkpoint):
        from neurobit.compile.lm import load_compiled_lm
        model, tok = load_compiled_lm(checkpoint)
        if tok is None:
            _fail(f"{checkpoint}: the compiled model holds no tokenizer")
        return model, tok
    _require_checkpoint_dir(checkpoint)
    try:
        model, _ = load_model(checkpoint)
    except NeurobitError:
        raise
    except Exception as e:  # safetensors/json/yaml errors of a damaged checkpoint
        _fail(f"{checkpoint}: unreadable checkpoint: {str(e).splitlines()[0] if str(e) else e!r}")
    tok_path = next((p for p in (checkpoint / "tokenizer.json",
                                 checkpoint.parent / "tokenizer.json") if p.is_file()), None)
    if tok_path is None:
        _fail(f"{checkpoint}: no tokenizer.json next to the checkpoint (runs written by "
              "`neurobit train` have one)")
    tok = load_tokenizer(tok_path)
    if tok.vocab_size != model.cfg.vocab_size:
        _fail(f"{tok_path}: {tok.vocab_size} ids, but the model has vocab_size "
              f"{model.cfg.vocab_size}")
    return model, tok


def _describe_event(ev, attempt: int, tok) -> str:
    if ev.reason == "repeat":
        unit = tok.decode(list(ev.substring))
        what = f"repeat of {unit!r} ({len(ev.substring)} tokens) twice"
    else:
        what = (f"frequency: {tok.decode([ev.token])!r} is {ev.fraction:.0%} of the last "
                "tokens")
    return f"collapse: attempt {attempt}: {what}; continuation cut at token {ev.position}"


@app.command("compile")
def compile_(checkpoint: Path = typer.Argument(..., help="language-model run directory, "
                                               "ckpt_* directory, or circuit YAML file"),
             output: Path = typer.Option(..., "-o", "--output", help="compiled model file"),
             packing: str = typer.Option("2bit", "--packing", help="2bit | trit5"),
             force: bool = typer.Option(False, "--force", help="overwrite OUTPUT")):
    """Lower a trained model or a circuit to a frozen inference file: ternary weights packed,
    scales and config stored (tokenizer included for language models). `neurobit generate
    OUTPUT` runs a compiled language model (BrainLM: fused per-token kernel), `neurobit
    simulate OUTPUT` a compiled circuit (fused stepper)."""
    from neurobit.compile.artifact import ternary_storage
    from neurobit.compile.lm import compile_checkpoint
    try:
        if output.exists() and not force:
            _fail(f"{output}: exists; pass --force to overwrite")
        if packing not in ("2bit", "trit5"):
            _fail(f"--packing: unknown {packing!r}; choose 2bit or trit5")
        if checkpoint.is_file() and checkpoint.suffix in (".yaml", ".yml"):
            from neurobit.compile.circuit import compile_circuit
            path = compile_circuit(checkpoint, output, packing)
        else:
            _require_checkpoint_dir(checkpoint)
            path = compile_checkpoint(checkpoint, output, packing)
        st = ternary_storage(path)
    except NeurobitError as e:
        _fail(str(e))
    typer.echo(f"{path}: {st['file_bytes']:,} bytes; {st['ternary_weights']:,} ternary weights "
               f"in {st['code_bytes']:,} bytes ({st['bits_per_ternary_weight']:.2f} bits each)")


@app.command()
def generate(checkpoint: Path = typer.Argument(..., help="run directory, ckpt_* directory or "
                                               "compiled model file"),
             prompt: str = typer.Option(..., "--prompt", help="text to continue"),
             max_new_tokens: int = typer.Option(200, "--max-new-tokens", min=1),
             temperature: float = typer.Option(1.0, "--temperature", min=0.0),
             top_k: Optional[int] = typer.Option(None, "--top-k", min=1),
             top_p: Optional[float] = typer.Option(None, "--top-p"),
             repetition_penalty: float = typer.Option(1.0, "--repetition-penalty"),
             no_repeat_ngram: int = typer.Option(0, "--no-repeat-ngram", min=0),
             greedy: bool = typer.Option(False, "--greedy", help="argmax instead of sampling"),
             seed: int = typer.Option(0, "--seed"),
             no_collapse_guard: bool = typer.Option(False, "--no-collapse-guard",
                                                    help="no collapse detection, no retry")):
    """Continue a prompt with a trained model; prints prompt + continuation.

    With the collapse guard (default) a degenerate repetition ends the attempt, which is
    retried once from the prompt with conservative sampling (seed + 1); collapse events,
    retries and the cautious flag go to stderr, one line each.
    """
    import time

    import torch

    from neurobit.decode import CollapseDetector, SamplingConfig, conservative
    from neurobit.decode import generate as run_generate
    from neurobit.train.lm_step import lm_step_fn
    try:
        if prompt == "":
            _fail("--prompt: must not be empty")
        sampling = SamplingConfig(temperature=temperature, do_sample=not greedy, top_k=top_k,
                                  top_p=top_p, repetition_penalty=repetition_penalty,
                                  no_repeat_ngram_size=no_repeat_ngram)
        model, tok = _load_lm(checkpoint)
        ids = tok.encode(prompt)
        if tok.kind == "char" and 0 in ids:
            typer.echo(f"neurobit: warning: {ids.count(0)} prompt character(s) are not in the "
                       "vocabulary (read as <unk>)", err=True)
        detector = retry = None
        if not no_collapse_guard:
            detector = (CollapseDetector() if tok.kind == "char"
                        else CollapseDetector(min_repeat_len=4, max_repeat_len=32))
            retry = conservative(sampling)
            if tok.kind == "char" and retry.history_window is None:
                retry = retry.replace(history_window=64)  # a trigram ban over all text
        t0 = time.perf_counter()
        res = run_generate(lm_step_fn(model, tok), torch.tensor(ids, dtype=torch.long),
                           max_new_tokens, sampling=sampling, detector=detector, seed=seed,
                           retry_sampling=retry)
        dt = time.perf_counter() - t0
    except NeurobitError as e:
        _fail(str(e))
    typer.echo(prompt + tok.decode(res.tokens.tolist()))
    for attempt, ev in enumerate(res.events):
        typer.echo(_describe_event(ev, attempt, tok), err=True)
    typer.echo(f"retries: {res.retries}", err=True)
    typer.echo("cautious: " + ("yes (both attempts collapsed; the longer cut continuation)"
                               if res.cautious else "no"), err=True)
    typer.echo(f"generated {len(res.tokens)} tokens (stopped: {res.stopped_reason}) in "
               f"{dt:.2f} s, {res.step_calls / max(dt, 1e-9):,.0f} tokens/s over all attempts",
               err=True)


# ------------------------------------------------------------------------- continual learning

@app.command()
def learn(checkpoint: Path = typer.Argument(..., help="language-model run or ckpt_* directory"),
          data: Path = typer.Option(..., "--data", help="UTF-8 text file: the session's "
                                    "experience"),
          sessions_dir: Optional[Path] = typer.Option(
              None, "--sessions-dir", help="the model instance's directory (lifecycle log, "
              "episodes, incremental checkpoints); default CHECKPOINT/lifecycle"),
          session: Optional[str] = typer.Option(None, "--session", help="session name "
                                                "(default session-<n>)"),
          window: Optional[int] = typer.Option(None, "--window", min=1,
                                               help="tokens per window (default: block size)"),
          max_windows: int = typer.Option(256, "--max-windows", min=1),
          select: int = typer.Option(192, "--select", min=1, help="episodes replayed"),
          old_sequences: int = typer.Option(256, "--old-sequences", min=0,
                                            help="windows of the original training data "
                                            "replayed (0: none)"),
          rank: int = typer.Option(8, "--rank", min=1, help="adapter rank (first session)"),
          lr: float = typer.Option(5e-3, "--lr"),
          max_lr: float = typer.Option(1e-2, "--max-lr", help="hard ceiling of --lr"),
          steps: int = typer.Option(40, "--steps", min=0, help="optimizer steps"),
          batch_size: int = typer.Option(16, "--batch-size", min=1),
          replay_ratio: float = typer.Option(0.5, "--replay-ratio",
                                             help="share of each batch from old data"),
          min_interval: float = typer.Option(0.0, "--min-interval",
                                             help="seconds between consolidations"),
          seed: int = typer.Option(0, "--seed"),
          export: Optional[Path] = typer.Option(
              None, "--export", help="also write the learned model, adapters merged into the "
              "ternary weights, as a run directory for `neurobit generate`")):
    """One session of experience and consolidation: store the text's windows as episodes
    (loss, surprise, ACC signals, state), replay the valuable ones plus old training data into
    low-rank adapters (bounded lr, scaled by prediction integrity), checkpoint incrementally,
    log the update. `neurobit history CHECKPOINT` shows the log. The defaults are the
    adapters arm of analysis/continual (results/continual.md)."""
    from neurobit.memory.consolidation import ConsolidationConfig
    from neurobit.memory.session import (SessionConfig, export_merged, read_text_file,
                                         run_session, summary_lines)
    try:
        _require_checkpoint_dir(checkpoint)
        if export is not None and export.exists() and (not export.is_dir()
                                                       or any(export.iterdir())):
            _fail(f"--export: {export} exists and is not an empty directory")
        text = read_text_file(data)
        ccfg = ConsolidationConfig(lr=lr, max_lr=max_lr, max_steps=steps, batch_size=batch_size,
                                   replay_ratio=replay_ratio, min_interval_s=min_interval,
                                   seed=seed)
        cfg = SessionConfig(window=window, max_windows=max_windows, select=select,
                            old_sequences=old_sequences, rank=rank, seed=seed,
                            consolidation=ccfg, session=session)
        res = run_session(checkpoint, text, cfg, root=sessions_dir, source=str(data))
        exported = (export_merged(checkpoint, export, sessions_dir) if export is not None
                    else None)
    except NeurobitError as e:
        msg = str(e).splitlines()[0]
        name = msg.split(":", 1)[0]
        if name in ("lr", "max_lr", "replay_ratio", "batch_size", "min_interval_s"):
            msg = "--" + name.removesuffix("_s").replace("_", "-") + msg[len(name):]
        _fail(msg)
    except OSError as e:
        _fail(f"{e.filename or sessions_dir}: {e.strerror or e}")
    typer.echo("\n".join(summary_lines(res)))
    if exported is not None:
        path, flipped, n = exported
        typer.echo(f"exported {path} (adapters merged, {flipped:,} of {n:,} ternary codes "
                   f"changed): neurobit generate {export} --prompt ...")


@app.command()
def history(checkpoint: Path = typer.Argument(..., help="language-model checkpoint directory "
                                              "(or the instance directory itself)"),
            sessions_dir: Optional[Path] = typer.Option(
                None, "--sessions-dir", help="the model instance's directory; default "
                "CHECKPOINT/lifecycle")):
    """Print the lifecycle log of a model instance: one line per update."""
    from neurobit.memory.lifecycle import IDENTITY, history_lines
    root = sessions_dir or (checkpoint if (checkpoint / IDENTITY).is_file()
                            else checkpoint / "lifecycle")
    if not (root / IDENTITY).is_file():
        _fail(f"{root}: no model instance here (run `neurobit learn {checkpoint} --data FILE` "
              "first)")
    try:
        lines = history_lines(root)
    except NeurobitError as e:
        _fail(str(e).splitlines()[0])
    typer.echo("\n".join(lines))


@app.command()
def ablate(config: Path = typer.Argument(..., help="ablation YAML (experiment, base, variants, "
                                         "seeds)"),
           only: Optional[List[str]] = typer.Option(None, "--only", help="run only these "
                                                    "variants (repeatable)"),
           force: bool = typer.Option(False, "--force", help="redo finished runs whose "
                                      "config changed"),
           dry_run: bool = typer.Option(False, "--dry-run", help="validate and list the runs"),
           recount: bool = typer.Option(False, "--recount", help="re-measure operations and "
                                        "energy of finished vision runs (no training), then "
                                        "rewrite the table")):
    """Run a grid of variants x seeds over a base experiment (resumes where it stopped), then
    write OUT/results.md, results.json and ablation.png."""
    from neurobit.ablation.config import load_ablation
    from neurobit.ablation.grid import finished, recount as recount_runs, run_dir, run_grid
    from neurobit.ablation.table import write_results
    try:
        cfg, _ = load_ablation(config)
        if only:
            unknown = sorted(set(only) - {v.name for v in cfg.variants})
            if unknown:
                _fail(f"--only: unknown variants {unknown}")
        if dry_run:
            for v in cfg.variants:
                for seed in cfg.seeds:
                    done = finished(run_dir(Path(cfg.out), v.name, seed)) is not None
                    typer.echo(f"{v.name} seed {seed}: {'done' if done else 'to run'}")
            return
        if recount:
            recount_runs(cfg, log=lambda m: typer.echo(m, err=True))
        failures: list = []
        records = run_grid(cfg, force=force, only=only, failures=failures,
                           log=lambda m: typer.echo(m, err=True))
        command = "neurobit ablate " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else \
            f"neurobit ablate {config}"
        write_results(cfg, records, command)
    except NeurobitError as e:
        _fail(str(e).splitlines()[0])
    if failures:
        v, seed, msg = failures[0]
        _fail(f"{len(failures)} run(s) failed and stay unfinished (rerun to retry); first: "
              f"{v} seed {seed}: {msg}")
    typer.echo(f"{Path(cfg.out) / 'results.md'}")


def main() -> None:  # console script entry point
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        typer.echo("neurobit: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
