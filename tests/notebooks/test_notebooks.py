"""Executes notebooks/spike_raster_analysis.ipynb on a small run file written here.

The run comes from ``sims/poisson_microcircuit.yaml`` cut to 300 ms (200 units, 2 trials,
1 ms steps). The notebook runs in a fresh ipykernel started from *this* interpreter: the test
writes its own ``python3`` kernelspec (argv = ``sys.executable -m ipykernel_launcher``) into a
temporary ``JUPYTER_PATH``, which Jupyter searches before every user and system kernel
directory, so a ``python3`` kernelspec elsewhere on the machine cannot take over.

Checks: no cell raises; the notebook read the file named by ``NEUROBIT_RUN``; at least four
PNG figures; the spike total the notebook prints equals the count read with ``read_run``; the
kernel ran on this interpreter; the committed notebook carries no outputs.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import ipykernel.kernelspec
import nbclient
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager

from neurobit.config.loader import load_circuit
from neurobit.record import read_run
from neurobit.sim.run import simulate

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "spike_raster_analysis.ipynb"
PROBE = "import sys; print('KERNEL_EXECUTABLE=' + sys.executable)"


def _stream_text(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs if o.output_type == "stream")


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """``(executed notebook, run path, kernelspec argv)``; the notebook runs once per module."""
    tmp = tmp_path_factory.mktemp("notebook")
    run_path = tmp / "run.h5"
    simulate(load_circuit(ROOT / "sims" / "poisson_microcircuit.yaml", ["duration_ms=300"]),
             run_path)

    prefix = tmp / "jupyter_prefix"
    ipykernel.kernelspec.install(kernel_name="python3", prefix=str(prefix))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))  # which python did the kernel run on?
    with pytest.MonkeyPatch.context() as mp:  # the kernel inherits os.environ when it starts
        mp.setenv("NEUROBIT_RUN", str(run_path))
        mp.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
        mp.setenv("JUPYTER_RUNTIME_DIR", str(tmp / "runtime"))
        mp.setenv("IPYTHONDIR", str(tmp / "ipython"))  # no user startup files
        mp.setenv("MPLBACKEND", "agg")
        argv = KernelSpecManager().get_kernel_spec("python3").argv
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                                resources={"metadata": {"path": str(tmp)}}).execute()
    return nb, run_path, argv


def test_kernelspec_is_this_interpreter(executed):
    nb, _, argv = executed
    assert Path(argv[0]) == Path(sys.executable)
    ran_on = re.findall(r"KERNEL_EXECUTABLE=(.+)", _stream_text(nb))
    assert ran_on and Path(ran_on[-1].strip()) == Path(sys.executable)


def test_no_cell_errored_and_run_file_used(executed):
    nb, run_path, _ = executed
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert errors == []
    m = re.search(r"^file\s+(\S+)$", _stream_text(nb), re.MULTILINE)
    assert m and Path(m.group(1)) == run_path


def test_at_least_four_figures(executed):
    nb, _, _ = executed
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type in ("display_data", "execute_result") and "image/png" in o.data]
    assert len(images) >= 4
    assert all(len(o.data["image/png"]) > 1000 for o in images)  # base64 of a real PNG


def test_reported_spike_total_matches_file(executed):
    nb, run_path, _ = executed
    m = re.search(r"total spikes in trial (\d+): (\d+)", _stream_text(nb))
    assert m, "the notebook no longer prints its spike total"
    trial, total = int(m.group(1)), int(m.group(2))
    with read_run(run_path) as run:
        expected = sum(run.spikes(pop, trial=trial)[0].size for pop in run.populations)
        all_trials = sum(run.spikes(pop)[0].size for pop in run.populations)
    assert expected > 0
    assert expected < all_trials  # 2 trials: the notebook must not count both
    assert total == expected


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert "NEUROBIT_RUN" in code[0].source
