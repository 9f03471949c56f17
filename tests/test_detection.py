"""Sites are found wherever a ReLU runs, and death is the AND over probe batches in eval mode."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import demp
from demp import DempError
from demp.core.detection import scan_units


class Mixed(nn.Module):
    """nn.ReLU (in place), one module called twice, F.relu, torch.relu, Tensor.relu, ReLU6."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.shared = nn.ReLU()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 5), nn.Linear(5, 6), nn.Linear(6, 7)
        self.six = nn.ReLU6()
        self.head = nn.Linear(7, 2)

    def forward(self, x):
        x = self.act(self.bn(self.conv(x)))
        x = self.shared(x).mean((2, 3))
        x = self.shared(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(torch.relu(x)).relu()
        return self.head(self.six(x))


def test_every_relu_call_is_a_named_site():
    sites = demp.list_sites(Mixed(), torch.randn(2, 3, 5, 5))
    assert [(s.name, s.width) for s in sites] == [
        ("act", 4), ("shared#0", 4), ("shared#1", 5), ("/relu#0", 6), ("/relu#1", 6),
        ("/relu#2", 7), ("six", 7)]


def test_channel_dim_for_sequences():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.conv = nn.Linear(6, 9), nn.Conv1d(9, 5, 1)

        def forward(self, x):          # x: (B, T, 6)
            h = F.relu(self.lin(x))    # (B, T, 9): units on the last dim
            return F.relu(self.conv(h.transpose(1, 2)))  # (B, 5, T): units on dim 1

    sites = demp.list_sites(Seq(), torch.randn(2, 3, 6))
    assert [(s.width, s.channel_dim) for s in sites] == [(9, 2), (5, 1)]


def test_dead_is_and_over_batches_in_eval_mode():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]]))
        model[0].bias.zero_()
        model[1].bias.copy_(torch.tensor([0.0, -1.0, 0.0]))
    model.train()
    stats = model[1].running_mean.clone()
    pos, neg = torch.tensor([[1.0, 0.0]] * 4), torch.tensor([[-1.0, 0.0]] * 4)
    only_pos = demp.find_dead_units(model, [pos])["2"]
    both = demp.find_dead_units(model, [(pos, None), (neg, None)])["2"]   # tuples: first item
    assert only_pos.tolist() == [False, True, True]
    assert both.tolist() == [False, True, False]
    assert model.training and torch.equal(model[1].running_mean, stats)  # eval used, mode restored


def test_quasi_dead_counts():
    model = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([-1.0, 0.005, 0.5]))
    scan = scan_units(model, [torch.ones(4, 1)], eps=(0.01, 0.1))
    assert scan.dead["1"].tolist() == [True, False, False]
    assert scan.quasi_dead == {0.01: {"1": 2}, 0.1: {"1": 2}}
    assert scan.units == 3 and scan.dead_units == 1


def test_other_activations_warn_and_no_relu_raises():
    gelu = nn.Sequential(nn.Linear(2, 3), nn.GELU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    with pytest.warns(UserWarning, match="gelu.*not a ReLU"):
        assert list(demp.find_dead_units(gelu, [torch.randn(2, 2)])) == ["3"]
    tanh = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    with pytest.raises(DempError, match="no ReLU site"):
        demp.find_dead_units(tanh, [torch.randn(2, 2)])


def test_bad_probes():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    with pytest.raises(DempError, match="probe is empty"):
        demp.find_dead_units(model, [])
    with pytest.raises(DempError, match="probe batch is on meta but the model is on cpu"):
        demp.find_dead_units(model, [torch.randn(2, 2, device="meta")])
