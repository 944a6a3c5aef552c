"""The Fashion-MNIST ternary spiking classifier: train, report, and ship as a circuit.

    python analysis/ablations/fmnist.py train     # runs/fmnist/classifier (resumes if killed)
    python analysis/ablations/fmnist.py report    # results/fmnist_classifier.md/.json + figure
    python analysis/ablations/fmnist.py export    # sims/fmnist_classifier.yaml (+ weights,
                                                  # + one encoded test image), then simulates it

Targets (issue 7): test accuracy >= 90% on the 10,000 test images, <= 2 MB packed, mean
activity <= 20%. The model config is ``configs/fmnist_classifier.yaml``.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import typer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CONFIG = HERE / "configs" / "fmnist_classifier.yaml"
RUN = ROOT / "runs" / "fmnist" / "classifier"
SIM = ROOT / "sims" / "fmnist_classifier.yaml"
SIM_IMAGE = ROOT / "sims" / "data" / "fmnist_test_0.npy"

app = typer.Typer(add_completion=False)


@app.command()
def train():
    import torch
    import yaml

    from neurobit.train.classifier import VisionRunConfig, train_classifier
    torch.set_num_threads(1)
    cfg = VisionRunConfig.model_validate(yaml.safe_load(CONFIG.read_text()))
    res = train_classifier(cfg, RUN, progress=True)
    print(json.dumps(res["test"]))


@app.command()
def report():
    import numpy as np
    import torch

    from neurobit.train.classifier import load_classifier
    from neurobit.train.images import FASHION_MNIST_CLASSES, load_images
    res = json.loads((RUN / "result.json").read_text())
    model, cfg = load_classifier(RUN)
    test = load_images("fashion_mnist").test
    gen = torch.Generator().manual_seed(1234)
    preds, layer_act = [], []
    with torch.no_grad():
        for i in range(0, len(test.labels), 1000):
            o = model(torch.from_numpy(test.as_float(slice(i, i + 1000))), gen)
            preds.append(o.logits.argmax(1).numpy())
            layer_act.append([float(s.mean()) for s in o.spikes])
    pred = np.concatenate(preds)
    acc = float((pred == test.labels).mean())
    per_class = {FASHION_MNIST_CLASSES[c]: float((pred[test.labels == c] == c).mean())
                 for c in range(10)}
    layer_act = np.mean(layer_act, 0).tolist()
    packed = model.packed_nbytes()
    act = res["test"]["activity"]
    out = {"accuracy": acc, "packed_bytes": packed, "activity": act, "layer_activity": layer_act,
           "per_class": per_class, "params": model.n_params(), "epochs": res["epochs"],
           "train_seconds": res["train_seconds"], "log": res["log"],
           "targets": {"accuracy>=0.90": acc >= 0.90, "packed<=2MB": packed <= 2_000_000,
                       "activity<=0.20": act <= 0.20}}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "fmnist_classifier.json").write_text(json.dumps(out, indent=2))
    layers = ", ".join(f"layer {i + 1} {100 * a:.1f}%" for i, a in enumerate(layer_act))
    md = [
        "# Fashion-MNIST ternary spiking classifier", "",
        "Commands: `python analysis/ablations/fmnist.py train` then `... report` "
        f"(config `analysis/ablations/configs/fmnist_classifier.yaml`).  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, one torch thread, "
        f"{time.strftime('%Y-%m-%d')}; trained {res['epochs']:.0f} epochs in "
        f"{res['train_seconds'] / 60:.1f} min on the 60,000 training images.", "",
        "Network: regular (deterministic rate) code of the image over 6 steps -> ternary conv "
        "5x5/2 -> 32x14x14 LIF -> ternary conv 3x3/2 -> 64x7x7 LIF -> ternary dense -> 256 LIF "
        "-> ternary readout (a leaky integrator; the class is the argmax of its membrane after "
        "the last step). Every synapse ternary (absmean, 2 bits packed), one scale x gain per "
        "layer; no biases, no batch norm.", "",
        "| measure | value | target | met |", "|---|---|---|---|",
        f"| test accuracy (10,000 images) | {100 * acc:.2f}% | >= 90% | "
        f"{'yes' if acc >= 0.9 else 'NO'} |",
        f"| packed size | {packed:,} bytes ({packed / 1e6:.3f} MB) | <= 2 MB | "
        f"{'yes' if packed <= 2e6 else 'NO'} |",
        f"| mean activity (spikes per unit per step, all LIF layers) | {100 * act:.1f}% | "
        f"<= 20% | {'yes' if act <= 0.2 else 'NO'} |", "",
        f"Parameters {model.n_params():,}. Activity per layer: {layers}.", "",
        "Per class: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in per_class.items()) + ".", "",
        "Training log (per epoch, training loss with augmentation and activity penalty): " +
        ", ".join(f"{e['loss']:.3f}" for e in res["log"]) + "."]
    stages = sorted(RUN.parent.glob("result_*epochs.json"),
                    key=lambda p: int(p.stem.split("_")[1].removesuffix("epochs")))
    if stages:  # the run's earlier schedules (see the config's header)
        parts = []
        for p in stages:
            r = json.loads(p.read_text())
            parts.append(f"{r['epochs']:.0f} epochs: {100 * r['test']['accuracy']:.2f}% "
                         f"(activity {100 * r['test']['activity']:.1f}%)")
        md += ["", "History: the run was trained with a cosine schedule, then resumed from its "
               "last checkpoint with a larger `epochs` (the schedule recomputed, so each "
               "extension is another, lower learning-rate cycle); test accuracy at the end of "
               "each schedule: " + "; ".join(parts) + f"; {res['epochs']:.0f} epochs: "
               f"{100 * acc:.2f}%."]
    (HERE / "results" / "fmnist_classifier.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


@app.command()
def export(index: int = 0):
    """Write the shipped circuit (sims/fmnist_classifier.yaml) from the trained run and check
    that the simulator predicts the model's class for the shipped test image."""
    import numpy as np
    import torch

    from neurobit.models.classifier_export import export_circuit
    from neurobit.train.classifier import load_classifier
    from neurobit.train.images import load_images
    model, cfg = load_classifier(RUN)
    test = load_images("fashion_mnist").test
    SIM_IMAGE.parent.mkdir(parents=True, exist_ok=True)
    img = test.images[index].reshape(28, 28)
    np.save(SIM_IMAGE, np.array(img), allow_pickle=False)   # uint8 0..255
    export_circuit(model, SIM, f"data/{SIM_IMAGE.name}", name="fmnist_classifier")
    text = SIM.read_text()
    SIM.write_text(text.replace(
        "# exported by", f"# input: Fashion-MNIST test image {index} (label {int(test.labels[index])})"
        "; run: neurobit simulate sims/fmnist_classifier.yaml\n# exported by", 1))
    with torch.no_grad():
        logits = model.double()(torch.from_numpy(img.reshape(1, -1) / 255.0)).logits
    out = ROOT / "runs" / "fmnist" / "sim_check.h5"
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "neurobit.cli", "simulate", str(SIM), "-o", str(out),
                    "--force", "-q"], check=True, cwd=ROOT)
    from neurobit.models.classifier_export import predicted_class
    from neurobit.record.sonata_reader import read_run
    with read_run(out) as run:
        _, _, v = run.report(run.reports[0])
    sim_class = int(predicted_class(v[..., 0]))
    print(f"label {int(test.labels[index])}, model {int(logits.argmax())}, simulator {sim_class}")
    if sim_class != int(logits.argmax()):
        raise SystemExit("the simulated circuit disagrees with the model")


if __name__ == "__main__":
    app()
