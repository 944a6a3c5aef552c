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
def simulate(config: Path = typer.Argument(..., help="circuit YAML file"),
             output: Optional[Path] = typer.Option(None, "-o", "--output", help="output .h5"),
             set_: Optional[List[str]] = typer.Option(None, "--set", help="KEY.PATH=VALUE override"),
             force: bool = typer.Option(False, "--force", help="overwrite an existing output"),
             quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar")):
    """Simulate a circuit file and record spikes/state to HDF5 (SONATA layout)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    try:
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
            summary = run_sim(cfg, out, force=force, progress=lambda k: bar.advance(task, k))
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


def main() -> None:  # console script entry point
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        typer.echo("neurobit: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
