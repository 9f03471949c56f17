"""Shared helpers (demp.core.utils): devices, parameter counts, and modes/buffers/RNG kept intact."""
import torch
import torch.nn as nn

from demp.core.utils import count_params, eval_mode, kept_buffers, kept_modes, model_device


def test_model_device_and_shared_parameters_counted_once():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert count_params(model) == 12 and model_device(model).type == "cpu"
    assert model_device(nn.Sequential()).type == "cpu"      # an empty model
    assert model_device(nn.Linear(2, 2).to("meta")).type == "meta"


def test_modes_come_back_as_they_were_even_when_mixed():
    model = nn.Sequential(nn.BatchNorm1d(2), nn.Dropout(), nn.Linear(2, 2))
    model.train()
    model[1].eval()                                         # a deliberately mixed state
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, False, True]
    with kept_modes(model):
        model.eval()
    assert [m.training for m in model.modules()] == [True, True, False, True]


def test_kept_buffers_restores_statistics_and_the_rng():
    bn = nn.BatchNorm1d(3)
    mean = bn.running_mean.clone()
    rng = torch.get_rng_state()
    with kept_buffers(bn, rng=True):
        bn(torch.randn(8, 3) + 5)                          # updates statistics and draws numbers
    assert torch.equal(bn.running_mean, mean) and torch.equal(torch.get_rng_state(), rng)
    with kept_buffers(bn):
        torch.randn(1)
    assert not torch.equal(torch.get_rng_state(), rng)     # without rng=True the draw stays drawn
