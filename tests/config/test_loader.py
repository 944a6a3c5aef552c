"""The circuit loader: ``--set`` overrides, the resolved-config round trip, relative paths.

``load_circuit(path, overrides)`` reads YAML, applies ``KEY.PATH=VALUE`` overrides (YAML-typed
values, list indices as path parts), validates against the schema and resolves relative file
paths against the circuit file's folder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from neurobit.cli import app
from neurobit.config.loader import load_circuit
from neurobit.config.schema import CircuitConfig
from neurobit.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SIMS = sorted((REPO / "sims").glob("*.yaml"))

CIRCUIT = """\
name: loader_test
dt_ms: 0.5
duration_ms: 20
populations:
  exc: {size: 12, tau_mem_ms: 10.0}
  inh: {size: 4, tau_mem_ms: 5.0, theta: 0.8}
stimuli:
  drive: {type: poisson, size: 6, rate_hz: 40.0}
projections:
  - {source: drive, target: exc, density: 0.3, weight: 0.4}
  - {source: exc, target: inh, density: 0.2, weight: 0.3}
monitors:
  spikes: [exc, inh]
"""


@pytest.fixture
def circuit(tmp_path) -> Path:
    p = tmp_path / "circuit.yaml"
    p.write_text(CIRCUIT)
    return p


def test_override_nested_key(circuit):
    base = load_circuit(circuit)
    cfg = load_circuit(circuit, ["populations.inh.tau_mem_ms=7.5", "populations.exc.theta=2"])
    assert cfg.populations["inh"].tau_mem_ms == 7.5
    assert cfg.populations["exc"].theta == 2.0
    # untouched neighbours keep their file values
    assert cfg.populations["inh"].theta == 0.8 == base.populations["inh"].theta
    assert cfg.populations["exc"].tau_mem_ms == 10.0


def test_override_list_index(circuit):
    cfg = load_circuit(circuit, ["projections.1.density=0.5", "projections.0.sign=excitatory"])
    assert cfg.projections[1].density == 0.5
    assert cfg.projections[0].sign == "excitatory"
    assert cfg.projections[0].density == 0.3 and cfg.projections[1].sign == "mixed"


def test_override_values_are_yaml_typed(circuit):
    cfg = load_circuit(circuit, ["seed=17", "name=renamed", "monitors.spikes=[inh]",
                                 "dtype=float64", "stimuli.drive.stop_ms=12.5"])
    assert cfg.seed == 17 and isinstance(cfg.seed, int)
    assert cfg.name == "renamed"
    assert cfg.monitors.spikes == ["inh"]
    assert cfg.dtype == "float64"
    assert cfg.stimuli["drive"].stop_ms == 12.5


def test_override_can_add_a_new_nested_key(circuit):
    cfg = load_circuit(circuit, ["stimuli.bias.type=current", "stimuli.bias.target=inh",
                                 "stimuli.bias.amplitude=0.05"])
    assert cfg.stimuli["bias"].type == "current" and cfg.stimuli["bias"].amplitude == 0.05


@pytest.mark.parametrize("item, key, msg", [
    ("populations.exc.size=-1", "populations.exc.size", "greater than or equal to 1"),
    ("populations.exc.size=many", "populations.exc.size", "valid integer"),
    ("populations.exc.tau_mem=3", "populations.exc.tau_mem", "unknown key"),
    ("projections.0.density=2", "projections.0.density", "less than or equal to 1"),
    ("projections.5.density=0.5", "projections.5", "no such list index"),
    ("projections.x.density=0.5", "projections.x", "no such list index"),
    ("seed", "seed", "KEY.PATH=VALUE"),
    ("=3", "=3", "empty key path"),
    ("monitors.spikes=[exc, nope]", "monitors.spikes.1", "unknown population 'nope'"),
    ("name.first=x", "name", "not a mapping"),
])
def test_bad_override_names_the_key(circuit, item, key, msg):
    with pytest.raises(ConfigError) as e:
        load_circuit(circuit, [item])
    text = str(e.value)
    assert key in text and msg in text, text
    assert "\n" not in text


def test_override_error_on_a_key_from_the_file_gives_its_line(circuit):
    with pytest.raises(ConfigError, match=r"circuit\.yaml:6: populations\.inh\.theta: "):
        load_circuit(circuit, ["populations.inh.theta=0"])


def _resolved_via_cli(path: Path, *overrides: str) -> str:
    args = ["validate", str(path)]
    for o in overrides:
        args += ["--set", o]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.stderr
    assert r.stderr.strip().endswith(": valid")
    return r.stdout


def test_resolved_config_round_trip(circuit, tmp_path):
    """``neurobit validate`` prints the resolved config; it loads back to an equal config,
    with every default written out."""
    cfg = load_circuit(circuit, ["seed=5", "projections.0.density=0.25"])
    text = _resolved_via_cli(circuit, "seed=5", "projections.0.density=0.25")
    data = yaml.safe_load(text)
    assert data["populations"]["exc"]["theta"] == 1.0      # a default made explicit
    assert data["chunk_steps"] == 1000 and data["seed"] == 5
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "resolved.yaml").write_text(text)
    back = load_circuit(other / "resolved.yaml")
    assert back == cfg
    assert back.model_dump() == cfg.model_dump()
    assert back != load_circuit(circuit)                   # the overrides survived


@pytest.mark.parametrize("sim", SIMS, ids=[p.stem for p in SIMS])
def test_shipped_circuits_validate_and_round_trip(sim, tmp_path):
    cfg = load_circuit(sim)
    p = tmp_path / "resolved.yaml"
    p.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    assert load_circuit(p) == cfg
    assert CircuitConfig.model_validate(yaml.safe_load(p.read_text())) == cfg


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    """Files named relative to the circuit file are found from any working directory, and the
    resolved config names them absolutely (so it loads again from anywhere)."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "project" / "circuits"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "spikes.csv").write_text("time_ms,node_id\n1.0,0\n3.0,2\n")
    np.save(folder / "data" / "img.npy", np.eye(3))
    (folder / "data" / "words.txt").write_text("abc")
    save_file({"w": torch.zeros(4, 3)}, str(folder / "data" / "w.safetensors"))
    (folder / "c.yaml").write_text("""\
dt_ms: 1.0
duration_ms: 10
populations:
  p: {size: 4, tau_mem_ms: 10.0}
stimuli:
  sf: {type: spike_file, size: 3, path: data/spikes.csv}
  im: {type: image, source: data/img.npy}
  tx: {type: text, path: data/words.txt, vocab: abc}
projections:
  - {source: sf, target: p, checkpoint: data/w.safetensors, key: w}
  - {source: im, target: p}
""")
    cwd = tmp_path / "somewhere_else"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    cfg = load_circuit(Path("..") / "project" / "circuits" / "c.yaml")
    got = {"sf": cfg.stimuli["sf"].path, "im": cfg.stimuli["im"].source,
           "tx": cfg.stimuli["tx"].path, "ckpt": cfg.projections[0].checkpoint}
    want = {"sf": "spikes.csv", "im": "img.npy", "tx": "words.txt", "ckpt": "w.safetensors"}
    for k, name in want.items():
        p = Path(got[k])
        assert p.is_file(), (k, p)
        assert p.is_absolute(), f"{k}: resolved path {p} depends on the working directory"
        assert p.resolve() == (folder / "data" / name).resolve()
    # the resolved form loads from a third folder without the data next to it
    third = tmp_path / "a" / "b" / "third"
    third.mkdir(parents=True)
    (third / "r.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert load_circuit(third / "r.yaml") == cfg
    # a file relative to the working directory but not to the config folder is not found
    (cwd / "data").mkdir()
    (cwd / "data" / "only_here.csv").write_text("time_ms,node_id\n")
    text = (folder / "c.yaml").read_text().replace("data/spikes.csv", "data/only_here.csv")
    (folder / "c2.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"c2\.yaml:6: stimuli\.sf\.path: file not found"):
        load_circuit(folder / "c2.yaml")


def test_missing_file_and_not_utf8(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_circuit(tmp_path / "nope.yaml")
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"\xff\xfe\x00name: x")
    with pytest.raises(ConfigError, match="bin.yaml"):
        load_circuit(bad)


def test_checkpoint_projection_from_a_relative_image(tmp_path, monkeypatch):
    """The checkpoint shape check needs the image's size; the image path is relative to the
    config folder, whatever the working directory."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "cfg"
    folder.mkdir()
    np.save(folder / "img.npy", np.ones((2, 2)))
    save_file({"w": torch.ones(3, 4)}, str(folder / "w.safetensors"))
    (folder / "c.yaml").write_text("""\
populations:
  p: {size: 3, tau_mem_ms: 10.0}
stimuli:
  im: {type: image, source: img.npy}
projections:
  - {source: im, target: p, checkpoint: w.safetensors, key: w}
""")
    monkeypatch.chdir(tmp_path)
    cfg = load_circuit(folder / "c.yaml")
    assert Path(cfg.stimuli["im"].source).resolve() == (folder / "img.npy").resolve()
    # a checkpoint of the wrong shape is still reported against the projection key
    save_file({"w": torch.ones(3, 5)}, str(folder / "w.safetensors"))
    with pytest.raises(ConfigError, match=r"c\.yaml:6: projections\.0\.key: .*\[3, 5\].*\[3, 4\]"):
        load_circuit(folder / "c.yaml")
