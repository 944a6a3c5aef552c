"""``neurobit ablate``: variants validated at load with located errors, the grid resumes
without redoing finished runs, the aggregate is the mean and sample std over seeds, and the
CLI writes the table, the JSON and the figure."""
import json
import math

import pytest
from cli_runner import invoke, one_error_line

from neurobit.ablation.config import load_ablation
from neurobit.ablation.grid import run_grid, run_dir
from neurobit.ablation.table import aggregate
from neurobit.errors import ConfigError

ABLATION = """\
name: tiny
experiment: vision
out: out
seeds: [0, 1]
eval_batch: 32
base:
  model: {layers: [{type: dense, units: 16}], steps: 4}
  data: {source: digits, cache_dir: ./cache}
  train: {epochs: 1, batch_size: 64, lr: 0.005, flip: false, shift: 0, threads: 1}
variants:
  - {name: lif}
  - {name: relu, set: {model.neuron: relu}}
  - {name: float, set: {model.weights: float}}
"""


def write(tmp_path, text=ABLATION):
    p = tmp_path / "ablation.yaml"
    p.write_text(text)
    return p


def test_load_resolves_each_variant(tmp_path):
    cfg, runs = load_ablation(write(tmp_path))
    assert [r["model"].get("neuron") for r in runs] == [None, "relu", None]
    assert runs[2]["model"]["weights"] == "float"
    assert cfg.out == str((tmp_path / "out").resolve())
    assert runs[0]["data"]["cache_dir"] == str((tmp_path / "cache").resolve())


@pytest.mark.parametrize("old,new,where", [
    ("set: {model.neuron: relu}", "set: {model.neuron: tanh}", ":12: variants.1.set.model.neuron: Input should be"),
    ("set: {model.weights: float}", "set: {model.wieghts: float}",
     ":13: variants.2.set.model.wieghts: unknown key"),
    ("steps: 4}", "steps: 0}", ":7: base.model.steps"),
    ("seeds: [0, 1]", "seeds: []", ":4: seeds"),
    ("  - {name: float,", "  - {name: relu,", ":10: variants: duplicate variant names"),
    ("experiment: vision", "experiment: audio", ":2: experiment"),
])
def test_bad_files_give_one_located_line(tmp_path, old, new, where):
    text = ABLATION.replace(old, new)
    assert text != ABLATION
    line = one_error_line(invoke("ablate", write(tmp_path, text), "--dry-run"))
    assert where in line, line


def fake_metrics(run, seed):
    """Deterministic metrics from the config (so resumed and fresh runs can be compared)."""
    q = {"lif": 0.8, "relu": 0.9, "float": 0.85}[run["model"].get("neuron", "lif")
                                                 if run["model"].get("weights") != "float"
                                                 else "float"]
    return {"quality": q + 0.01 * seed, "activity": 0.1 * (seed + 1), "acs": 100.0 * (seed + 1),
            "macs": 0.0, "other_macs": 0.0, "energy_j": 1e-9 * (seed + 1), "params": 10,
            "packed_bytes": 3, "train_seconds": 1.0}


def test_grid_resumes_without_redoing_finished_runs(tmp_path):
    cfg, _ = load_ablation(write(tmp_path))
    calls = []

    def crashing(run, folder, eval_batch, precision):
        calls.append((folder.parent.name, run["train"]["seed"]))
        if len(calls) == 4:
            raise KeyboardInterrupt  # killed during the 4th run
        return fake_metrics(run, run["train"]["seed"])

    with pytest.raises(KeyboardInterrupt):
        run_grid(cfg, crashing, log=lambda m: None)
    assert calls == [("lif", 0), ("lif", 1), ("relu", 0), ("relu", 1)]
    assert not (run_dir(tmp_path / "out", "relu", 1) / "ablation.json").exists()

    calls.clear()

    def counting(run, folder, eval_batch, precision):
        calls.append((folder.parent.name, run["train"]["seed"]))
        return fake_metrics(run, run["train"]["seed"])

    records = run_grid(cfg, counting, log=lambda m: None)
    assert calls == [("relu", 1), ("float", 0), ("float", 1)]  # only the unfinished ones
    assert [r["reused"] for r in records] == [True, True, True, False, False, False]
    calls.clear()
    assert len(run_grid(cfg, counting, log=lambda m: None)) == 6 and calls == []

    # a finished run whose config changed: refused without --force, redone with it
    text = ABLATION.replace("lr: 0.005", "lr: 0.004")
    cfg2, _ = load_ablation(write(tmp_path, text))
    with pytest.raises(ConfigError, match="different config"):
        run_grid(cfg2, counting, log=lambda m: None)
    run_grid(cfg2, counting, force=True, log=lambda m: None, only=["lif"])
    assert calls == [("lif", 0), ("lif", 1)]


def test_aggregate_is_mean_and_sample_std():
    recs = [{"variant": "a", "seed": s, "metrics": {"quality": q, "params": 5, "packed_bytes": 2}}
            for s, q in enumerate([0.80, 0.84, 0.86])]
    agg = aggregate(recs)
    m = (0.80 + 0.84 + 0.86) / 3
    sd = math.sqrt(((0.80 - m) ** 2 + (0.84 - m) ** 2 + (0.86 - m) ** 2) / 2)
    assert agg["a"]["n"] == 3
    assert agg["a"]["quality"] == pytest.approx([m, sd], abs=1e-12)
    assert "activity" not in agg["a"]


def test_cli_runs_the_grid_and_resumes(tmp_path):
    p = write(tmp_path)
    r = invoke("ablate", p)
    assert r.exit_code == 0, r.stderr
    out = tmp_path / "out"
    md = (out / "results.md").read_text()
    data = json.loads((out / "results.json").read_text())
    assert (out / "ablation.png").stat().st_size > 5000
    assert set(data["aggregate"]) == {"lif", "relu", "float"}
    for v in ("lif", "relu", "float"):
        a = data["aggregate"][v]
        assert a["n"] == 2 and 0.1 < a["quality"][0] <= 1.0
        assert f"| {v} | 2 |" in md
    # ternary weights pack to 2 bits, float ones do not
    assert data["aggregate"]["float"]["packed_bytes"] > 10 * data["aggregate"]["lif"]["packed_bytes"]
    # the spiking run only accumulates (binary inputs); its activity is a spike rate
    assert data["aggregate"]["lif"]["macs"][0] == 0 and data["aggregate"]["lif"]["acs"][0] > 0
    r2 = invoke("ablate", p)
    assert r2.exit_code == 0 and r2.stderr.count("done earlier, kept") == 6
    assert json.loads((out / "results.json").read_text())["aggregate"] == data["aggregate"]


def test_a_failing_run_is_reported_and_retried_next_time(tmp_path):
    from neurobit.errors import NeurobitError
    cfg, _ = load_ablation(write(tmp_path))
    calls, relu0 = [], []

    def flaky(run, folder, eval_batch, precision):
        calls.append(folder.parent.name)
        if folder.parent.name == "relu" and run["train"]["seed"] == 0:
            relu0.append(1)
        if len(relu0) == 1 and folder.parent.name == "relu" and run["train"]["seed"] == 0:
            raise NeurobitError("logits: must not contain NaN")
        return fake_metrics(run, run["train"]["seed"])

    failures = []
    records = run_grid(cfg, flaky, log=lambda m: None, failures=failures)
    assert failures == [("relu", 0, "logits: must not contain NaN")]
    assert [(r["variant"], r["seed"]) for r in records] == [
        ("lif", 0), ("lif", 1), ("relu", 1), ("float", 0), ("float", 1)]
    calls.clear()
    records = run_grid(cfg, flaky, log=lambda m: None, failures=failures)
    assert calls == ["relu"] and len(records) == 6


def test_diverged_runs_are_counted_in_the_table(tmp_path):
    from neurobit.ablation.table import markdown
    cfg, _ = load_ablation(write(tmp_path))
    recs = [{"variant": "relu", "seed": s, "metrics": m} for s, m in enumerate([
        {"quality": None, "diverged": True, "params": 1, "packed_bytes": 1},
        {"quality": 0.5, "params": 1, "packed_bytes": 1}])]
    md = markdown(cfg, aggregate(recs), "cmd")
    assert "| relu | 2 | diverged in 1 of 2; others 0.5000 ± 0.0000 |" in md


def test_recount_remeasures_finished_vision_runs(tmp_path):
    p = write(tmp_path, ABLATION.replace("seeds: [0, 1]", "seeds: [0]"))
    assert invoke("ablate", p, "--only", "lif").exit_code == 0
    f = tmp_path / "out" / "lif" / "seed0" / "ablation.json"
    done = json.loads(f.read_text())
    acs = done["metrics"]["acs"]
    done["metrics"]["acs"] = 0.0
    f.write_text(json.dumps(done))
    r = invoke("ablate", p, "--only", "lif", "--recount")
    assert r.exit_code == 0 and "lif seed 0: recounted" in r.stderr
    assert json.loads(f.read_text())["metrics"]["acs"] == acs > 0
