"""ACC, LearnedACC and MetaController.

Checked: ACC conflict on real MicroCircuitBank readouts is 0 when the circuits are copies,
rises when they are given different weights and reaches its maximum when half the readouts are
inverted; conflict_norm flags an outlier against the running calibration; the learned ACC
ranks wrong outputs above right ones on held-out records (AUC) and is reproducible from its
seed; the MetaController's decision follows its equations, and (hypothesis) under arbitrary
signals -- NaN, inf, negative, huge, tensors, missing, junk keys -- and configs it never runs more
than 1 + max_reflection_steps passes, keeps temperatures finite and within [t_min, t_max], and
returns the last pass's answer.
"""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neurobit.errors import ParameterError, ShapeError
from neurobit.modules import MicroCircuitBank
from neurobit.modules.acc import ACC, FEATURE_NAMES, LearnedACC, acc_features
from neurobit.modules.meta_controller import (Decision, MetaController, MetaControllerConfig,
                                              MetaState, decide, run_with_reflection)

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    """Tensors here are tiny: one intra-op thread avoids spin contention on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------- ACC

def bank_readout(mode: str) -> torch.Tensor:
    """Summed readouts ``[B, C, n_out]`` of 4 circuits driven by the same spike input."""
    torch.manual_seed(0)
    bank = MicroCircuitBank(4, 8, 16, 6, alpha=0.9)
    with torch.no_grad():
        if mode in ("copies", "inverted"):
            for lin in (bank.w_in, bank.w_rec, bank.w_out):
                lin.weight.copy_(lin.weight[:1].expand_as(lin.weight))
        if mode == "inverted":
            bank.w_out.weight[2:] *= -1
    x = (torch.rand(40, 3, 8, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    out = bank(x)
    assert out.spikes.sum() > 0
    return out.y.sum(0).detach()


@pytest.mark.parametrize("measure", ["cosine", "variance", "mean"])
def test_conflict_rises_when_circuits_are_made_to_disagree(measure):
    acc = ACC(conflict_measure=measure)
    agree = acc(bank_readout("copies")).signals["conflict"]
    differ = acc(bank_readout("different")).signals["conflict"]
    oppose = acc(bank_readout("inverted")).signals["conflict"]
    assert torch.equal(agree, torch.zeros(3))
    assert (differ > 0.2).all()
    assert (oppose > differ).all()
    expected = {"cosine": 2 / 3, "variance": 1.0, "mean": 5 / 6}[measure]  # half vs half
    torch.testing.assert_close(oppose, torch.full((3,), expected), rtol=0, atol=1e-5)


def test_signals_uncertainty_divergence_and_calibration(gen):
    acc = ACC()
    B, K = 4, 5
    logits = torch.zeros(B, K)
    logits[0, 1] = 50.0                            # confident
    cands = torch.zeros(B, 2, K)
    cands[:, 0, 0] = cands[:, 1, 1] = 50.0          # candidates disagree completely
    cands[1] = 50.0 * torch.eye(K)[0]               # candidates agree
    cal = acc.initial_calibration()
    # a stream of low-conflict batches calibrates the monitor ...
    for _ in range(20):
        base = torch.randn(B, 1, 8, generator=gen)
        h = base + 0.05 * torch.randn(B, 3, 8, generator=gen)
        cal = acc(h, calibration=cal).calibration
    assert float(cal.count) == 80
    # ... then one normal and one opposing circuit set in a batch
    h = torch.randn(B, 1, 8, generator=gen).expand(B, 3, 8).clone()
    h[2, 1] *= -1
    out = acc(h, logits, cands, calibration=cal)
    s = out.signals
    assert set(s) == {"conflict", "uncertainty", "divergence", "conflict_norm"}
    assert float(s["uncertainty"][0]) < 1e-6 and float(s["uncertainty"][1]) == pytest.approx(1.0)
    assert float(s["divergence"][0]) == pytest.approx(1.0) and float(s["divergence"][1]) < 1e-6
    assert float(s["conflict_norm"][2]) > 0.99 and float(s["conflict_norm"][0]) < 0.5
    assert float(out.calibration.count) == 84
    frozen = acc(h, calibration=cal, update_calibration=False)
    assert frozen.calibration is cal and set(frozen.signals) == {"conflict", "conflict_norm"}
    with pytest.raises(ShapeError, match="logits"):
        acc(h, torch.zeros(B + 1, K))


def synthetic_records(n: int, gen: torch.Generator):
    """Records of a hidden difficulty d: circuits spread and logits flatten as d grows; the
    output is wrong with probability sigmoid(12 (d - 0.5))."""
    d = torch.rand(n, generator=gen)
    base = torch.randn(n, 1, 8, generator=gen)
    h = base + (0.2 + 2 * d)[:, None, None] * torch.randn(n, 4, 8, generator=gen)
    logits = torch.randn(n, 10, generator=gen)
    logits[:, 0] += 8 * (1 - d)
    wrong = (torch.rand(n, generator=gen) < torch.sigmoid(12 * (d - 0.5))).float()
    out = ACC()(h, logits)
    return acc_features(out.signals, logits), wrong


def auc(score: torch.Tensor, label: torch.Tensor) -> float:
    pos, neg = score[label == 1], score[label == 0]
    return float((pos[:, None] > neg[None, :]).float().mean())


def test_learned_acc_predicts_wrong_outputs(gen):
    x, y = synthetic_records(3000, gen)
    assert x.shape == (3000, len(FEATURE_NAMES))
    model = LearnedACC()
    losses = model.fit(x[:2000], y[:2000], epochs=200, lr=0.02, seed=3)
    assert losses[-1] < 0.75 * losses[0]
    p = model.predict(x[2000:])
    assert ((p >= 0) & (p <= 1)).all()
    assert auc(p, y[2000:]) > 0.85
    torch.testing.assert_close(model.feature_mean, x[:2000].mean(0), rtol=1e-5, atol=1e-6)
    again = LearnedACC()
    again.fit(x[:2000], y[:2000], epochs=200, lr=0.02, seed=3)
    torch.testing.assert_close(again.predict(x[2000:]), p, rtol=0, atol=0)
    with pytest.raises(ParameterError, match="labels"):
        model.fit(x[:10], torch.full((10,), 2.0))


def test_learned_acc_calibration_makes_it_unit_free(gen):
    """Features are standardised by the training records' z-score, so rescaling and shifting a
    feature (here: 1000x and +50) changes nothing but rounding."""
    x, y = synthetic_records(600, gen)
    x2 = x.clone()
    x2[:, 0] = x2[:, 0] * 1000 + 50
    a, b = LearnedACC(), LearnedACC()
    a.fit(x[:400], y[:400], epochs=60, lr=0.02, seed=1)
    b.fit(x2[:400], y[:400], epochs=60, lr=0.02, seed=1)
    torch.testing.assert_close(a.predict(x[400:]), b.predict(x2[400:]), rtol=0, atol=1e-3)


# --------------------------------------------------------------------------- MetaController

def test_decision_follows_the_equations():
    cfg = MetaControllerConfig()  # thresholds 0.5 / 0.75, t = 1 - 0.7 c in [0.3, 1.5]
    d = decide({"conflict": 0.9, "uncertainty": 0.7}, MetaState(0), cfg)
    assert d.concern == pytest.approx(0.8)
    assert d.reflection_steps == 2                  # ceil(2 * (0.8 - 0.5) / 0.5) = ceil(1.2)
    assert d.temperature == pytest.approx(1 - 0.7 * 0.8) and d.cautious
    assert decide({"conflict": 0.9, "uncertainty": 0.7}, MetaState(1), cfg).reflection_steps == 1
    calm = decide({"conflict": 0.1}, None, cfg)
    assert calm == Decision(0, pytest.approx(0.93), False, pytest.approx(0.1))
    assert decide({"conflict": float("nan")}, None, cfg).concern == 1.0   # broken monitor
    assert decide({}, None, cfg).reflection_steps == 0
    assert not hasattr(d, "veto")


@pytest.mark.parametrize("bad", [0, 4, True, 2.0, -1])
def test_reflection_bound_is_validated(bad):
    with pytest.raises(ParameterError, match="max_reflection_steps"):
        MetaControllerConfig(max_reflection_steps=bad)


@pytest.mark.parametrize("kw,name", [(dict(t_min=2.0), "t_min"),
                                     (dict(t_base=float("nan")), "t_base"),
                                     (dict(reflect_threshold=1.5), "reflect_threshold"),
                                     (dict(weights={"conflict": -1.0}), "weights")])
def test_bad_config_raises(kw, name):
    with pytest.raises(ParameterError, match=name):
        MetaControllerConfig(**kw)


def test_reflection_loop_runs_the_bound_under_maximal_concern_and_stops_when_calm():
    for m in (1, 2, 3):
        ctl = MetaController(max_reflection_steps=m)
        temps = []
        res = ctl.run(lambda i, prev, dec: temps.append(dec.temperature) or ("ans", i),
                      lambda ans: {"conflict": 1.0, "uncertainty": float("inf")})
        assert res.passes == 1 + m and res.answer == ("ans", m)
        assert temps[0] == 1.0 and all(t == pytest.approx(0.3) for t in temps[1:])
        assert res.decisions[-1].reflection_steps == 0 and res.decisions[-1].cautious
    calm = run_with_reflection(lambda i, p, d: i, lambda a: {"conflict": 0.0}, ctl)
    assert calm.passes == 1 and calm.answer == 0


def test_loop_is_bounded_even_if_the_controller_always_asks_for_more(monkeypatch):
    import neurobit.modules.meta_controller as mc
    monkeypatch.setattr(mc, "decide", lambda *a, **k: Decision(3, 1.0, True, 1.0))
    for m in (1, 2, 3):
        res = mc.run_with_reflection(lambda i, p, d: i, lambda a: {}, MetaControllerConfig(
            max_reflection_steps=m))
        assert res.passes == 1 + m and res.answer == m


finite_or_not = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                          st.integers(-10**30, 10**30), st.booleans(), st.none(),
                          st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32),
                                   max_size=4).map(torch.tensor),
                          st.text(max_size=3))
signal_dicts = st.dictionaries(
    st.sampled_from(["conflict", "uncertainty", "divergence", "conflict_norm", "error_prob",
                     "junk"]), finite_or_not, max_size=6)


@st.composite
def configs(draw):
    t_min = draw(st.floats(0.01, 2.0))
    t_base = t_min + draw(st.floats(0.0, 2.0))
    t_max = t_base + draw(st.floats(0.0, 2.0))
    return MetaControllerConfig(
        max_reflection_steps=draw(st.integers(1, 3)),
        reflect_threshold=draw(st.floats(0.0, 1.0)), cautious_threshold=draw(st.floats(0.0, 1.0)),
        t_base=t_base, t_min=t_min, t_max=t_max, temperature_slope=draw(st.floats(0.0, 1e6)),
        weights=draw(st.dictionaries(st.sampled_from(["conflict", "uncertainty", "divergence",
                                                      "conflict_norm", "error_prob"]),
                                     st.floats(0.0, 1e6), min_size=1).filter(
            lambda w: any(v > 0 for v in w.values()))))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs(), stream=st.lists(signal_dicts, min_size=1, max_size=8),
       as_module=st.booleans())
def test_meta_controller_never_exceeds_its_bound(cfg, stream, as_module):
    calls, answers = [], []

    def step_fn(i, prev, decision):
        assert prev is (answers[-1] if answers else None)
        assert math.isfinite(decision.temperature)
        assert cfg.t_min <= decision.temperature <= cfg.t_max
        calls.append(i)
        answers.append(object())
        return answers[-1]

    def signals_fn(answer):
        return stream[(len(calls) - 1) % len(stream)]

    res = run_with_reflection(step_fn, signals_fn, MetaController(cfg) if as_module else cfg)
    assert 1 <= res.passes <= 1 + cfg.max_reflection_steps
    assert calls == list(range(res.passes))
    assert res.answer is answers[-1] and res.answer is not None
    assert len(res.decisions) == res.passes
    for i, d in enumerate(res.decisions):
        assert 0 <= d.reflection_steps <= cfg.max_reflection_steps - i
        assert math.isfinite(d.temperature) and cfg.t_min <= d.temperature <= cfg.t_max
        assert 0.0 <= d.concern <= 1.0 and isinstance(d.cautious, bool)
    assert res.decisions[-1].reflection_steps == 0 or res.passes == 1 + cfg.max_reflection_steps


@settings(max_examples=300, deadline=None)
@given(cfg=configs(), signals=signal_dicts, done=st.integers(-10**9, 10**9))
def test_decide_is_bounded_for_any_state(cfg, signals, done):
    d = decide(signals, MetaState(done), cfg)
    remaining = cfg.max_reflection_steps - min(cfg.max_reflection_steps, max(0, done))
    assert 0 <= d.reflection_steps <= remaining
    assert math.isfinite(d.temperature) and cfg.t_min <= d.temperature <= cfg.t_max
