"""Unit costs and gating norms (demp.core.costs) on hand-computed networks, and the cost-weighted
penalty in DemonPruner: its exact gradient, and weights that follow a removal."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from demp.core.costs import site_costs, unit_weights


class Plain(nn.Module):
    """conv(3->4) bn relu | conv(4->6) bn relu | flatten | linear(6*8*8 -> 5), 8x8 inputs."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 8 * 8, 5)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.fc(x.flatten(1))


class Residual(nn.Module):
    """stem (site) -> conv bn relu conv bn (+ stem) relu -> pool -> linear."""

    def __init__(self):
        super().__init__()
        self.c0, self.b0 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c1, self.b1 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = F.relu(self.b0(self.c0(x)))
        out = F.relu(self.b1(self.c1(x)))
        out = F.relu(self.b2(self.c2(out)) + x)
        return self.fc(out.mean((2, 3)))


class Concat(nn.Module):
    """Two branches (3 and 5 channels) concatenated into a 1x1 conv (8 -> 2), then linear."""

    def __init__(self):
        super().__init__()
        self.ca, self.ba = nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
        self.cb, self.bb = nn.Conv2d(3, 5, 1, bias=False), nn.BatchNorm2d(5)
        self.cc = nn.Conv2d(8, 2, 1)
        self.fc = nn.Linear(2, 5)

    def forward(self, x):
        x = torch.cat([F.relu(self.ba(self.ca(x))), F.relu(self.bb(self.cb(x)))], 1)
        return self.fc(self.cc(x).mean((2, 3)))


class TokenFFN(nn.Module):
    """Pre-LayerNorm FFN on (B, T, C): no norm gates the hidden ReLU units."""

    def __init__(self, dim=8, hidden=16):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.up, self.down = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = x + self.down(F.relu(self.up(self.ln(x))))
        return self.head(x.mean(1))


def conv_flops(cin, cout, k, hw):
    return 2 * cin * cout * k * k * hw


def test_plain_cnn_costs_by_hand():
    model = Plain().eval()
    costs = site_costs(model, torch.randn(2, 3, 8, 8))
    first, second = costs["/relu#0"], costs["/relu#1"]
    # one unit of the first site: its row of c1, plus its input columns of c2
    assert first.flops == conv_flops(3, 4, 3, 64) / 4 + conv_flops(4, 6, 3, 64) / 4
    assert first.params == 3 * 9 + 2 + 6 * 9                      # c1 row, bn scale+shift, c2 column
    # the second site feeds the linear layer through a flatten: 64 inputs per channel
    assert second.flops == conv_flops(4, 6, 3, 64) / 6 + 2 * 64 * 5
    assert second.params == 4 * 9 + 2 + 64 * 5
    assert first.norms == (model.b1,) and second.norms == (model.b2,)
    assert (first.width, second.width) == (4, 6)


def test_residual_gating_goes_through_the_addition_but_not_into_another_site():
    model = Residual().eval()
    costs = site_costs(model, torch.randn(2, 3, 8, 8))
    stem, inner, out = (costs[n] for n in ("/relu#0", "/relu#1", "/relu#2"))
    assert stem.norms == (model.b0,) and inner.norms == (model.b1,)
    assert out.norms == (model.b2,)          # b2 through the addition; b0 sits behind the stem's site
    # the identity skip ties an output channel to the same stem channel: removing one means
    # removing the other, so a unit costs the whole coupled group (c0 row, c1 column, c2 row, fc column)
    group = conv_flops(3, 4, 3, 64) / 4 + conv_flops(4, 4, 3, 64) / 4 * 2 + 2 * 5
    assert out.flops == stem.flops == group


def test_concat_costs_follow_each_branch():
    model = Concat().eval()
    costs = site_costs(model, torch.randn(2, 3, 8, 8))
    a, b = costs["/relu#0"], costs["/relu#1"]
    per_input = conv_flops(8, 2, 1, 64) / 8
    assert a.flops == conv_flops(3, 3, 3, 64) / 3 + per_input
    assert b.flops == conv_flops(3, 5, 1, 64) / 5 + per_input
    assert a.norms == (model.ba,) and b.norms == (model.bb,)


def test_token_ffn_has_no_gating_norm():
    model = TokenFFN().eval()
    costs = site_costs(model, torch.randn(2, 4, 8))
    (site,) = costs.values()
    assert site.norms == () and site.width == 16
    assert site.flops == 2 * 8 * 4 + 2 * 8 * 4       # per call of a (1, 4 tokens) input: row of up, column of down


def test_unit_weights_mean_one_and_power():
    model = Plain().eval()
    costs = site_costs(model, torch.randn(2, 3, 8, 8))
    for power in (1.0, 0.5):
        w = unit_weights(costs, "flops", power)
        units = sum(c.width for c in costs.values())
        assert sum(w[n] * c.width for n, c in costs.items()) / units == pytest.approx(1.0)
        ratio = (costs["/relu#0"].flops / costs["/relu#1"].flops) ** power
        assert w["/relu#0"] / w["/relu#1"] == pytest.approx(ratio)
    assert set(unit_weights(costs, "flops", 0.0).values()) == {1.0}
    assert set(unit_weights(costs, "uniform", 1.0).values()) == {1.0}
    with pytest.raises(ValueError, match="unknown cost measure"):
        unit_weights(costs, "latency", 1.0)
