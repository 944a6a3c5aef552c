"""The ternary spiking image classifier: encodings against their closed forms, the layer
equations against a step-by-step LIF loop, learning on real digits, and the exported circuit
reproducing the model's spikes and logits in ``neurobit simulate``."""
import math

import numpy as np
import pytest
import torch
from cli_runner import invoke, one_error_line
from pydantic import ValidationError

from neurobit.functional.encoding import encode, latency_code, rate_code, regular_code
from neurobit.functional.lif import LIFParameters, initial_state, lif_step
from neurobit.functional.synapse import conv_as_dense
from neurobit.models.classifier_export import export_circuit, predicted_class
from neurobit.models.spiking_classifier import ClassifierConfig, SpikingClassifier
from neurobit.record.sonata_reader import read_run
from neurobit.train.classifier import VisionRunConfig, load_classifier, train_classifier
from neurobit.train.images import load_images

TINY = dict(input_shape=(1, 12, 12), n_classes=4, steps=5,
            layers=[{"type": "conv", "channels": 3, "kernel": 3, "stride": 2, "padding": 1},
                    {"type": "dense", "units": 7}])


def test_regular_code_counts_and_rate_code_mean():
    p = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.73, 1.0])
    s = regular_code(p, 40)
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(s.sum(0).numpy(), np.floor(40 * p.double().numpy() + 0.5))
    # spikes are spread out: every prefix count is floor(t p + 1/2)
    t = torch.arange(1, 41).view(-1, 1).double()
    np.testing.assert_array_equal(s.cumsum(0).numpy(), torch.floor(t * p.double() + 0.5).numpy())
    g = torch.Generator().manual_seed(0)
    r = rate_code(torch.full((2000,), 0.3), 50, g)
    assert abs(r.mean().item() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 1e5)
    lat = latency_code(torch.tensor([1.0, 0.5, 0.06, 0.01]), 10, window_ms=10, dt_ms=1,
                       min_intensity=0.05)
    assert lat.sum(0).tolist() == [1.0, 1.0, 1.0, 0.0]  # one spike each; below 0.05 silent
    assert lat.argmax(0)[:3].tolist() == [0, 5, 9]              # floor((1 - I) * 10), clipped
    with pytest.raises(Exception, match="encoding"):
        encode(p, "burst", 4)


def test_conv_as_dense_is_the_convolution():
    g = torch.Generator().manual_seed(1)
    k = torch.randint(-1, 2, (4, 2, 3, 3), generator=g).double()
    x = torch.rand(2, 9, 7, generator=g, dtype=torch.float64)
    D = conv_as_dense(k, (2, 9, 7), stride=2, padding=1)
    want = torch.nn.functional.conv2d(x[None], k, None, 2, 1).flatten()
    assert D.shape == (4 * 5 * 4, 2 * 9 * 7)
    np.testing.assert_allclose((D @ x.flatten()).numpy(), want.numpy(), atol=1e-12)


def test_forward_equals_a_step_by_step_lif_loop():
    torch.manual_seed(0)
    m = SpikingClassifier(ClassifierConfig(**TINY)).double()
    with torch.no_grad():
        m.log_gain.copy_(torch.tensor([1.2, 0.8, 0.3]))  # make the layers fire
    img = torch.rand(3, 144, dtype=torch.float64)
    out = m(img)
    # by hand: effective weights, stimulus in the same step, populations one step late
    torch.set_grad_enabled(False)
    W1 = conv_as_dense(m.synapses[0].quantized().codes * m.synapses[0].quantized().scale,
                       (1, 12, 12), 2, 1) * m.gains()[0]
    W2 = m.synapses[1].effective_weight() * m.gains()[1]
    Wo = m.readout.effective_weight() * m.gains()[2]
    p = LIFParameters(alpha=0.9, theta=1.0)
    x = regular_code(img, 5, dtype=torch.float64)
    s1 = initial_state((3, W1.shape[0]), torch.float64)
    s2 = initial_state((3, 7), torch.float64)
    v_out = torch.zeros(3, 4, dtype=torch.float64)
    spikes1, spikes2 = [], []
    for t in range(5):
        u2 = s1.s @ W2.T        # previous step's spikes
        r = s2.s @ Wo.T
        _, s1 = lif_step(x[t] @ W1.T, s1, p)
        _, s2 = lif_step(u2, s2, p)
        v_out = 0.9 * v_out + r
        spikes1.append(s1.s)
        spikes2.append(s2.s)
    np.testing.assert_array_equal(out.spikes[0].detach().numpy(), torch.stack(spikes1).numpy())
    np.testing.assert_array_equal(out.spikes[1].detach().numpy(), torch.stack(spikes2).numpy())
    np.testing.assert_allclose(out.logits.detach().numpy(), v_out.numpy(), atol=1e-10)
    assert torch.stack(spikes2).sum() > 0 and torch.stack(spikes1).sum() > 0
    n1 = W1.shape[0]
    want_act = (torch.stack(spikes1).mean() * n1 + torch.stack(spikes2).mean() * 7) / (n1 + 7)
    assert abs(float(out.activity) - float(want_act)) < 1e-12
    torch.set_grad_enabled(True)


def test_bad_configs_name_the_key():
    with pytest.raises(ValidationError, match="layers.1: a conv layer cannot follow"):
        ClassifierConfig(layers=[{"type": "dense", "units": 4},
                                 {"type": "conv", "channels": 2}])
    with pytest.raises(ValidationError, match="layers.0: kernel 9 does not fit"):
        ClassifierConfig(input_shape=(1, 4, 4), layers=[{"type": "conv", "channels": 2,
                                                         "kernel": 9}])
    with pytest.raises(ValidationError, match="neuron"):
        ClassifierConfig(layers=[{"type": "dense", "units": 4}], neuron="tanh")


def test_packed_bytes_by_hand():
    m = SpikingClassifier(ClassifierConfig(**TINY))
    n = [3 * 1 * 9, 7 * 3 * 6 * 6, 4 * 7]           # conv kernel, dense, readout weights
    assert m.packed_nbytes() == sum(math.ceil(k / 4) + 4 for k in n) + 4 * 3
    f = SpikingClassifier(ClassifierConfig(**{**TINY, "weights": "float"}))
    assert f.packed_nbytes() == 4 * sum(n) + 4 * 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small conv classifier trained on the 8x8 digits (zero-padded to 28x28)."""
    out = tmp_path_factory.mktemp("digits_run")
    cfg = VisionRunConfig.model_validate({
        "model": {"layers": [{"type": "conv", "channels": 8, "kernel": 5, "stride": 2,
                              "padding": 2}, {"type": "dense", "units": 64}], "steps": 6},
        "data": {"source": "digits", "cache_dir": str(out / "cache")},
        "train": {"epochs": 12, "batch_size": 64, "lr": 0.005, "flip": False, "shift": 0,
                  "threads": 1}})
    torch.set_num_threads(1)
    return out, train_classifier(cfg, out)


def test_learns_the_digits(trained):
    """1,442 training digits, 12 epochs: >= 85% on the 355 held out (chance 10%); the loss of
    the last epoch is below a third of the first."""
    out, res = trained
    assert res["test"]["accuracy"] >= 0.85, res["test"]
    assert res["log"][-1]["loss"] < res["log"][0]["loss"] / 3, res["log"]
    assert 0 < res["test"]["activity"] <= 0.2
    model, _ = load_classifier(out)
    assert model.packed_nbytes() == res["packed_bytes"]


def test_exported_circuit_reproduces_the_model(trained, tmp_path):
    """The circuit simulated by ``neurobit simulate`` fires exactly the model's spikes
    (float64) and its readout membrane at the last step is the model's logits."""
    out, _ = trained
    model, cfg = load_classifier(out)
    model = model.double()
    test = load_images("digits", cfg.data.cache_dir).test
    for i in (0, 7):
        img = test.as_float(i).reshape(28, 28)
        np.save(tmp_path / f"img{i}.npy", img.astype(np.float64), allow_pickle=False)
        circuit = export_circuit(model, tmp_path / f"c{i}.yaml", f"img{i}.npy")
        r = invoke("simulate", circuit, "-o", tmp_path / f"c{i}.h5", "-q")
        assert r.exit_code == 0, r.stderr
        o = model(torch.from_numpy(img.reshape(1, -1)).double())
        with read_run(tmp_path / f"c{i}.h5") as run:
            for li, spikes in enumerate(o.spikes):
                t, ids = run.spikes(f"layer{li + 1}", trial=0)
                raster = np.zeros(spikes.shape[::2], bool)
                raster[np.round(t / cfg.model.dt_ms).astype(int), ids] = True
                np.testing.assert_array_equal(raster, spikes[:, 0].detach().numpy() > 0)
                assert raster.sum() > 0
            _, _, v = run.report(run.reports[0])
        np.testing.assert_allclose(v[-1, :, 0], o.logits[0].detach().numpy(), rtol=1e-6,  # float32 report
                                   atol=1e-6)
        assert predicted_class(v[..., 0]) == int(o.logits.argmax())


def test_export_refuses_non_spiking_models(tmp_path):
    m = SpikingClassifier(ClassifierConfig(**{**TINY, "neuron": "relu"}))
    with pytest.raises(Exception, match="only LIF units"):
        export_circuit(m, tmp_path / "x.yaml", "img.npy")


def test_simulate_names_a_conv_shape_mismatch(trained, tmp_path):
    out, _ = trained
    model, cfg = load_classifier(out)
    np.save(tmp_path / "img.npy", np.zeros((28, 28)), allow_pickle=False)
    circuit = export_circuit(model, tmp_path / "c.yaml", "img.npy")
    text = circuit.read_text().replace("in_shape:\n    - 1\n    - 28\n    - 28",
                                       "in_shape:\n    - 1\n    - 27\n    - 28")
    assert text != circuit.read_text()
    circuit.write_text(text)
    line = one_error_line(invoke("simulate", circuit, "-o", tmp_path / "c.h5", "-q"))
    assert "projections.0.conv.in_shape" in line and "784" in line
