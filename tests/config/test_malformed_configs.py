"""A corpus of malformed circuit files, each refused by the real CLI with one clear line.

Every file in ``tests/config/malformed/`` is a small variant of a valid circuit with one flaw.
For each, ``neurobit simulate`` must: exit with code 2, print exactly one line on stderr that
starts with ``neurobit: error:`` and names the key path and (where the YAML has one) the line
``FILE:LINE``, print no traceback, and leave no output file. A representative subset runs the
CLI in a subprocess (``python -m neurobit.cli``, all at once in parallel); the rest call the
typer app in-process. Cases that need binary files (a 3-D ``.npy`` image, safetensors
checkpoints with a missing key or a wrong shape) are written to ``tmp_path`` by the test.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import yaml

from neurobit.config.loader import load_circuit

from cli_runner import invoke

HERE = Path(__file__).parent
CORPUS = HERE / "malformed"


class Case(NamedTuple):
    """Expected error: ``key`` substring, ``line`` in ``where`` (default: the YAML file itself;
    None: no line number may appear), ``msg`` substring of the message."""

    name: str
    key: str
    line: int | None
    msg: str
    where: str | None = None


CASES = [
    Case("unknown_top_key", "durashun_ms", 4, "unknown key"),
    Case("unknown_nested_key", "populations.exc.tau_mem", 8, "unknown key"),
    Case("unknown_projection_key", "projections.1.wieght", 15, "unknown key"),
    Case("size_wrong_type", "populations.exc.size", 7, "valid integer"),
    Case("size_negative", "populations.exc.size", 8, "greater than or equal to 1"),
    Case("size_zero", "populations.exc.size", 6, "greater than or equal to 1"),
    Case("missing_size", "populations.exc.size", 6, "missing"),
    Case("tau_nonpositive", "populations.exc.tau_mem_ms", 9, "greater than 0"),
    Case("alpha_out_of_range", "populations.exc.alpha", 8, "less than 1"),
    Case("theta_nonpositive", "populations.exc.theta", 9, "greater than 0"),
    Case("dt_longer_than_tau", "populations.exc.tau_mem_ms", 8, "dt_ms (5.0) > tau_mem_ms (2.0)"),
    Case("projection_unknown_target", "projections.1.target", 11, "unknown population 'inh'"),
    Case("projection_unknown_source", "projections.0.source", 10, "'drvie'"),
    Case("current_unknown_target", "stimuli.bias.target", 10, "unknown population 'excc'"),
    Case("spike_file_missing", "stimuli.input.path", 11, "file not found"),
    # CSV content is read when the network is built: the error names the CSV file and its line
    Case("spike_file_bad_header", "time_ms,node_id", 1, "header", where="bad_header_spikes.csv"),
    Case("spike_file_bad_row", "'soon'", 4, "expected 'time_ms,node_id'",
         where="bad_row_spikes.csv"),
    Case("checkpoint_missing", "projections.0.checkpoint", 10, "file not found"),
    Case("checkpoint_without_key", "projections.0", 8, "needs the tensor key"),
    Case("empty", "empty.yaml", None, "file is empty"),
    Case("not_yaml", "not valid YAML", 5, "expected ','"),
    Case("tab_indent", "not valid YAML", 4, "'\\t'"),
    Case("list_root", "<root>", 1, "expected a mapping"),
    Case("too_large", "populations", 5, "GiB"),
    Case("stop_before_start", "stimuli.drive.stop_ms", 13, "must be > start_ms"),
    Case("monitor_unknown_population", "monitors.spikes.1", 8, "unknown population 'inh'"),
    Case("state_monitor_unknown_population", "monitors.state.1.population", 12, "'ihn'"),
    Case("monitor_index_out_of_range", "monitors.state.0.indices", 10, "index 10 out of range"),
    Case("unknown_stimulus_type", "stimuli.noise", 8, "'gaussian'"),
    Case("duplicate_name", "stimuli.exc", 8, "already used by a population"),
    Case("norse_beta_default", "populations.exc.backend", 9, "norse"),
    Case("duration_negative", "duration_ms", 4, "greater than 0"),
    Case("trials_zero", "trials", 5, "greater than or equal to 1"),
    Case("text_both_sources", "stimuli.words.text", 10, "exactly one of text or path"),
    Case("density_above_one", "projections.0.density", 8, "less than or equal to 1"),
    Case("image_digit_out_of_range", "stimuli.img.source", 10, "digits index"),
    Case("no_populations", "populations", 5, "at least one population"),
]
BY_NAME = {c.name: c for c in CASES}
# run through a real subprocess (console entry point, import, exit code, stderr as a user sees it)
SUBPROCESS = ["unknown_nested_key", "size_wrong_type", "not_yaml", "empty", "too_large",
              "spike_file_bad_row"]
IN_PROCESS = [c.name for c in CASES if c.name not in SUBPROCESS]


def check_refusal(case: Case, cfg: Path, rc: int, stderr: str, stdout: str, out: Path) -> None:
    assert rc == 2, f"{case.name}: exit code {rc}, stderr {stderr!r}"
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), f"{case.name}: not one line: {stderr!r}"
    line = lines[0]
    assert line.startswith("neurobit: error: "), line
    assert case.key in line, f"{case.name}: key {case.key!r} not in {line!r}"
    assert case.msg in line, f"{case.name}: {case.msg!r} not in {line!r}"
    where = case.where or cfg.name
    if case.line is None:
        assert where in line and not re.search(re.escape(where) + r":\d", line), line
    else:
        want = f"{where}:{case.line}: "
        assert want in line, f"{case.name}: want {want!r} in {line!r}"
    assert not out.exists(), f"{case.name}: output file was created"


def test_corpus_is_complete():
    """Every corpus file has an expectation and every expectation a file (>= 24 cases)."""
    files = {p.stem for p in CORPUS.glob("*.yaml")}
    assert files == set(BY_NAME)
    assert len(files) >= 24
    for c in CASES:
        if c.where:
            assert (CORPUS / c.where).is_file()


@pytest.fixture(scope="module")
def subprocess_results(tmp_path_factory):
    """Run the CLI for the SUBPROCESS cases, all processes at once (2-3 s of imports each)."""
    tmp = tmp_path_factory.mktemp("cli")
    procs = {}
    for name in SUBPROCESS:
        out = tmp / f"{name}.h5"
        cmd = [sys.executable, "-m", "neurobit.cli", "simulate", str(CORPUS / f"{name}.yaml"),
               "-o", str(out)]
        procs[name] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, cwd=tmp), out)
    results = {}
    for name, (p, out) in procs.items():
        stdout, stderr = p.communicate(timeout=120)
        results[name] = (p.returncode, stderr, stdout, out)
    return results


@pytest.mark.parametrize("name", SUBPROCESS)
def test_cli_subprocess_refuses(name, subprocess_results):
    rc, stderr, stdout, out = subprocess_results[name]
    check_refusal(BY_NAME[name], CORPUS / f"{name}.yaml", rc, stderr, stdout, out)


@pytest.mark.parametrize("name", IN_PROCESS)
def test_cli_in_process_refuses(name, tmp_path):
    cfg = CORPUS / f"{name}.yaml"
    out = tmp_path / "out.h5"
    r = invoke("simulate", cfg, "-o", out, "-q")
    check_refusal(BY_NAME[name], cfg, r.exit_code, r.stderr, r.stdout, out)


@pytest.mark.parametrize("name", [c.name for c in CASES if c.where is None])
def test_validate_refuses(name):
    """``neurobit validate`` refuses the same files (exit 2, the same one-line message)."""
    cfg = CORPUS / f"{name}.yaml"
    r = invoke("validate", cfg)
    check_refusal(BY_NAME[name], cfg, r.exit_code, r.stderr, r.stdout, cfg.with_suffix(".none"))
    assert r.stdout == ""


def test_validate_refuses_bad_spike_file_content():
    """A spike file whose content cannot be read is an invalid circuit: ``validate`` must say
    so (naming the key path and the CSV line), not only ``simulate`` once it builds the network."""
    for name, csv_line in (("spike_file_bad_row", "bad_row_spikes.csv:4"),
                           ("spike_file_bad_header", "bad_header_spikes.csv:1")):
        r = invoke("validate", CORPUS / f"{name}.yaml")
        assert r.exit_code == 2, f"{name}: validate accepted it: {r.stderr!r}"
        assert "stimuli.input.path" in r.stderr and csv_line in r.stderr, r.stderr


def test_validate_subprocess_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "neurobit.cli", "validate",
                        str(CORPUS / "size_negative.yaml")], capture_output=True, text=True,
                       timeout=120)
    check_refusal(BY_NAME["size_negative"], CORPUS / "size_negative.yaml", r.returncode,
                  r.stderr, r.stdout, tmp_path / "none.h5")


# ------------------------------------------------------------------ cases built in tmp_path
BASE = """\
name: base
dt_ms: 1.0
duration_ms: 50
populations:
  exc: {size: 10, tau_mem_ms: 20.0}
stimuli:
  drive: {type: poisson, size: 5, rate_hz: 50.0}
monitors:
  spikes: [exc]
projections:
  - {source: drive, target: exc, density: 0.5, weight: 0.5}
"""


def test_base_circuit_is_valid(tmp_path):
    """The circuit the corpus varies is itself valid and runs: the errors come from the flaws."""
    cfg = tmp_path / "base.yaml"
    cfg.write_text(BASE)
    load_circuit(cfg)
    r = invoke("simulate", cfg, "-o", tmp_path / "out.h5", "-q")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "out.h5").is_file()


def _write_checkpoint(path: Path, tensors: dict) -> None:
    import torch
    from safetensors.torch import save_file
    save_file({k: torch.as_tensor(v, dtype=torch.float32) for k, v in tensors.items()}, str(path))


def _image_case(tmp: Path) -> tuple[str, Case]:
    np.save(tmp / "cube.npy", np.ones((4, 4, 3)))
    data = yaml.safe_load(BASE)
    data["stimuli"]["img"] = {"type": "image", "source": "cube.npy"}
    text = yaml.safe_dump(data, sort_keys=False)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "source: cube.npy" in t)
    return text, Case("image_3d", "stimuli.img.source", line,
                      "expected a 2-D array, got shape [4, 4, 3]")


def _checkpoint_text(key: str) -> str:
    return BASE + ("  - source: exc\n"
                   "    target: exc\n"
                   "    checkpoint: w.safetensors\n"
                   f"    key: {key}\n")


@pytest.mark.parametrize("kind", ["image_3d", "checkpoint_key_missing", "checkpoint_shape"])
def test_generated_file_cases(kind, tmp_path):
    """Binary inputs made here: a 3-D .npy image, a checkpoint without the key, a checkpoint
    tensor of the wrong shape. All refused before anything is written."""
    _write_checkpoint(tmp_path / "w.safetensors", {"w_rec": np.zeros((10, 10)),
                                                   "w_wrong": np.zeros((10, 7))})
    if kind == "image_3d":
        text, case = _image_case(tmp_path)
    elif kind == "checkpoint_key_missing":
        text = _checkpoint_text("w_missing")
        case = Case(kind, "projections.1.key", 15, "'w_missing' not in w.safetensors")
    else:
        text = _checkpoint_text("w_wrong")
        case = Case(kind, "projections.1.key", 15,
                    "shape [10, 7] does not match the projection [10, 10]")
    cfg = tmp_path / f"{kind}.yaml"
    cfg.write_text(text)
    out = tmp_path / "out.h5"
    r = invoke("simulate", cfg, "-o", out, "-q")
    check_refusal(case, cfg, r.exit_code, r.stderr, r.stdout, out)
    # and the well-formed checkpoint is accepted (the flaw is what is refused)
    if kind != "image_3d":
        good = tmp_path / "good.yaml"
        good.write_text(_checkpoint_text("w_rec"))
        assert invoke("validate", good).exit_code == 0


def test_bad_override_is_refused_like_a_bad_file(tmp_path):
    """``--set populations.exc.size=-1`` fails naming the key; nothing is written."""
    cfg = tmp_path / "base.yaml"
    cfg.write_text(BASE)
    out = tmp_path / "out.h5"
    r = invoke("simulate", cfg, "-o", out, "--set", "populations.exc.size=-1")
    check_refusal(Case("override", "populations.exc.size", 5, "greater than or equal to 1"), cfg,
                  r.exit_code, r.stderr, r.stdout, out)
