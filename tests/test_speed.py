"""The training format: configured, defaulted for short runs, or measured (demp.app.speed)."""
import pytest
import torch
import torch.nn as nn

from demp import DempError
from demp.app import speed
from demp.app.speed import Speed, measure

CPU = torch.device("cpu")


def conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def batch():
    return torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,))


def fake_times(monkeypatch, times):
    """Make ``measure`` report ``times`` ({(channels_last, autocast): seconds}) for what it is asked."""
    monkeypatch.setattr(speed, "measure", lambda model, b, candidates, timer=None: {c: times[c] for c in candidates})


def test_configured_formats_are_taken_as_given():
    s = Speed.choose("on", "off", CPU, conv_net(), batch(), 10_000)
    assert (s.channels_last, s.autocast, s.how) == (True, "off", "configured")
    assert s.dtype is None and s.name == "float32 + channels-last"
    with pytest.raises(DempError, match="needs a GPU"):
        Speed.choose("off", "fp16", CPU, conv_net(), batch(), 10_000)
    with pytest.raises(DempError, match="train.channels_last"):
        Speed.choose("yes", "off", CPU, conv_net(), batch(), 10_000)


def test_short_runs_take_plain_float32_without_measuring(monkeypatch):
    monkeypatch.setattr(speed, "measure", lambda *a, **k: pytest.fail("a short run must not measure"))
    s = Speed.choose("auto", "auto", CPU, conv_net(), batch(), speed.MEASURE_MIN_STEPS - 1)
    assert (s.channels_last, s.autocast) == (False, "off") and s.how.startswith("default")


def test_auto_picks_the_fastest_measured_format(monkeypatch):
    monkeypatch.setattr(speed, "bf16_native", lambda: True)
    fake_times(monkeypatch, {(False, "off"): 1.0, (True, "off"): 0.2, (False, "bf16"): 0.5, (True, "bf16"): 0.1})
    s = Speed.choose("auto", "auto", CPU, conv_net(), batch(), 10_000)
    assert (s.channels_last, s.autocast, s.how) == (True, "bf16", "measured")
    assert s.step_ms == {"float32": 1000.0, "float32+channels_last": 200.0, "bf16": 500.0,
                         "bf16+channels_last": 100.0}
    record = s.record()
    assert Speed.from_record(record) == s and record["format"] == "bf16 + channels-last"


def test_bf16_must_beat_float32_by_a_margin(monkeypatch):
    monkeypatch.setattr(speed, "bf16_native", lambda: True)
    fake_times(monkeypatch, {(False, "off"): 1.0, (True, "off"): 0.2, (False, "bf16"): 0.5, (True, "bf16"): 0.19})
    s = Speed.choose("auto", "auto", CPU, conv_net(), batch(), 10_000)
    assert (s.channels_last, s.autocast) == (True, "off")


def test_bf16_is_no_candidate_where_it_is_emulated(monkeypatch):
    monkeypatch.setattr(speed, "bf16_native", lambda: False)
    fake_times(monkeypatch, {(False, "off"): 1.0, (True, "off"): 0.2})
    s = Speed.choose("auto", "auto", CPU, conv_net(), batch(), 10_000)
    assert (s.channels_last, s.autocast) == (True, "off") and set(s.step_ms) == {"float32", "float32+channels_last"}


def test_a_model_without_convolutions_has_no_layout_to_choose(monkeypatch):
    monkeypatch.setattr(speed, "bf16_native", lambda: False)
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    s = Speed.choose("auto", "auto", CPU, mlp, (torch.randn(8, 4), torch.randint(0, 2, (8,))), 10_000)
    assert (s.channels_last, s.autocast, s.how) == (False, "off", "configured")


def test_measure_times_every_candidate_and_leaves_the_model_as_it_was():
    model = conv_net().train()
    params = [p.detach().clone() for p in model.parameters()]
    buffers = [b.detach().clone() for b in model.buffers()]
    data = batch()
    rng = torch.get_rng_state()
    candidates = [(False, "off"), (True, "off")]
    times = measure(model, data, candidates)
    assert set(times) == set(candidates) and all(t > 0 for t in times.values())
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in model.parameters())
