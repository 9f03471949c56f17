"""Seeded random architectures with planted dead units, and the removal contract checked on each.

``generate(seed)`` draws a small network from a grammar of the blocks users write (stems,
residual, bottleneck, concatenation, depthwise-separable, inverted residual, grouped conv,
GroupNorm, token FFNs; nn.ReLU, in-place and functional ReLU) and kills some units behind
norm layers and Linear layers.  ``check(seed)`` removes the dead units and asserts the
contract: outputs unchanged (or nothing removed and the model untouched), the optimizer
holding exactly the model's parameters with state shaped like them, one training step runs.

Long run: ``PYTHONPATH=src python tests/random_archs.py 500`` prints the tally.
"""
from __future__ import annotations

import random
import sys
from collections import Counter

import torch
import torch.nn as nn
import torch.nn.functional as F

import demp

ACTS = ("module", "inplace", "functional", "functional_inplace")


class Act(nn.Module):
    """ReLU in one of the spellings users write."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.relu = nn.ReLU(inplace=kind == "inplace") if kind in ("module", "inplace") else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x) if self.relu is not None else F.relu(x, inplace=self.kind == "functional_inplace")


def norm(rng: random.Random, c: int) -> nn.Module:
    """BatchNorm, or a GroupNorm with a group count that divides ``c``."""
    groups = [g for g in (2, 4) if c % g == 0 and c > g]
    return nn.GroupNorm(rng.choice(groups), c) if groups and rng.random() < 0.25 else nn.BatchNorm2d(c)


class CNA(nn.Module):
    """conv, norm, ReLU."""

    def __init__(self, rng: random.Random, cin: int, cout: int, k: int = 3, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False)
        self.norm, self.act = norm(rng, cout), Act(rng.choice(ACTS))

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


class Residual(nn.Module):
    """Basic block: CNA, conv, BN, add the input, ReLU."""

    def __init__(self, rng: random.Random, c: int):
        super().__init__()
        self.a, self.b, self.bn = CNA(rng, c, c), nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.act = Act(rng.choice(ACTS))

    def forward(self, x):
        return self.act(self.bn(self.b(self.a(x))) + x)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand, add the input, ReLU."""

    def __init__(self, rng: random.Random, c: int, mid: int):
        super().__init__()
        self.a, self.b = CNA(rng, c, mid, 1), CNA(rng, mid, mid)
        self.c, self.bn, self.act = nn.Conv2d(mid, c, 1, bias=False), nn.BatchNorm2d(c), Act(rng.choice(ACTS))

    def forward(self, x):
        return self.act(self.bn(self.c(self.b(self.a(x)))) + x)


class Concat(nn.Module):
    """Two CNA branches joined along channels, optionally followed by a norm and ReLU."""

    def __init__(self, rng: random.Random, c: int, w1: int, w2: int):
        super().__init__()
        self.a, self.b = CNA(rng, c, w1, 3), CNA(rng, c, w2, 1)
        self.post = nn.Sequential(norm(rng, w1 + w2), Act(rng.choice(ACTS))) if rng.random() < 0.5 else nn.Identity()

    def forward(self, x):
        return self.post(torch.cat([self.a(x), self.b(x)], 1))


class InvertedResidual(nn.Module):
    """MobileNetV2: 1x1 expand, depthwise 3x3, 1x1 project (linear), add the input."""

    def __init__(self, rng: random.Random, c: int, expand: int):
        super().__init__()
        e = c * expand
        self.a, self.b = CNA(rng, c, e, 1), CNA(rng, e, e, 3, groups=e)
        self.c, self.bn = nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return x + self.bn(self.c(self.b(self.a(x))))


class TokenFFN(nn.Module):
    """Transformer MLP on (B, T, C): x + fc2(relu(fc1(x)))."""

    def __init__(self, rng: random.Random, d: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, hidden), Act(rng.choice(ACTS)), nn.Linear(hidden, d)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


class Head(nn.Module):
    """Global average pooling or flatten, then Linear (with a hidden Linear-ReLU layer or not)."""

    def __init__(self, rng: random.Random, c: int, spatial: int, tokens: bool):
        super().__init__()
        self.flatten = not tokens and rng.random() < 0.3
        self.tokens = tokens
        features = c * spatial if self.flatten else c
        hidden = rng.randint(4, 10) if rng.random() < 0.5 else 0
        layers = [nn.Linear(features, hidden), Act(rng.choice(ACTS)), nn.Linear(hidden, 3)] if hidden else [nn.Linear(features, 3)]
        self.mlp = nn.Sequential(*layers)

    def forward(self, x):
        if self.tokens:
            return self.mlp(x.mean(1))
        return self.mlp(x.flatten(1) if self.flatten else x.mean((2, 3)))


def _image_block(rng: random.Random, c: int) -> tuple[nn.Module, int]:
    """One random image block on ``c`` channels and its output width."""
    kind = rng.choice(["cna", "residual", "bottleneck", "concat", "separable", "inverted", "grouped"])
    if kind == "residual":
        return Residual(rng, c), c
    if kind == "bottleneck":
        return Bottleneck(rng, c, rng.randint(3, 8)), c
    if kind == "concat":
        w1, w2 = rng.randint(2, 8), rng.randint(2, 8)
        return Concat(rng, c, w1, w2), w1 + w2
    if kind == "separable":
        w = rng.randint(4, 12)
        return nn.Sequential(CNA(rng, c, c, 3, groups=c), CNA(rng, c, w, 1)), w
    if kind == "inverted":
        return InvertedResidual(rng, c, rng.choice([2, 3])), c
    if kind == "grouped":
        groups = [g for g in (2, 3, 4) if c % g == 0]
        if groups:
            g = rng.choice(groups)
            w = g * rng.choice([1, 2, 3]) if rng.random() < 0.9 else g  # sometimes one output per group
            return CNA(rng, c, w, 3, groups=g), w
    w = rng.randint(4, 12)
    return CNA(rng, c, w, rng.choice([1, 3])), w


def generate(seed: int) -> tuple[nn.Module, torch.Tensor]:
    """A random network (eval mode, random norm statistics, planted dead units) and its input."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    if rng.random() < 0.25:  # tokens: (B, T, C)
        d = rng.randint(4, 10)
        layers = [nn.Linear(5, d)] + [TokenFFN(rng, d, rng.randint(6, 16)) for _ in range(rng.randint(1, 3))]
        layers.append(Head(rng, d, 1, tokens=True))
        x = torch.randn(8, 6, 5, generator=torch.Generator().manual_seed(seed))
    else:
        c = rng.randint(4, 10)
        layers = [CNA(rng, 3, c)]  # stem
        for _ in range(rng.randint(1, 4)):
            block, c = _image_block(rng, c)
            layers.append(block)
        layers.append(Head(rng, c, 16, tokens=False))
        x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    model = nn.Sequential(*layers)
    plant(model, rng)
    return model.eval(), x


@torch.no_grad()
def plant(model: nn.Module, rng: random.Random) -> None:
    """Random norm statistics, then kill units behind norms and Linear layers followed by a ReLU.

    A killed unit has scale (or weight row) 0 and shift -1; a GroupNorm loses whole groups or
    single channels.  Norms before a residual addition are killed too (those units are not dead).
    """
    g = torch.Generator().manual_seed(rng.randint(0, 2**31))
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    for m in model.modules():
        if rng.random() < 0.4:
            continue
        if isinstance(m, nn.GroupNorm) and rng.random() < 0.5:
            per = m.num_channels // m.num_groups
            group = rng.randrange(m.num_groups)
            units = list(range(group * per, (group + 1) * per))
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            units = rng.sample(range(m.num_features if isinstance(m, nn.BatchNorm2d) else m.num_channels),
                               rng.randint(1, max(1, m.weight.numel() // 2)))
        elif isinstance(m, nn.Linear) and m.out_features > 3:
            units = rng.sample(range(m.out_features), rng.randint(1, m.out_features // 2))
        else:
            continue
        m.weight[units] = 0
        m.bias[units] = -1


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    model.train()
    opt.zero_grad()
    F.cross_entropy(model(x), torch.arange(len(x)) % 3).backward()
    opt.step()
    model.eval()


def check(seed: int) -> tuple[str, demp.RemovalReport]:
    """Remove the dead units of ``generate(seed)`` and assert the contract.

    Returns the report and 'exact' (every dead unit went), 'partial' (some went, others kept
    with reasons), 'refused' (none went) or 'no dead units'.
    """
    model, x = generate(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _train_step(model, opt, x)  # the optimizer holds state to slice
    with torch.no_grad():
        before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    dead = demp.find_dead_units(model, [x])
    report = demp.remove_units(model, dead, x, optimizer=opt)
    with torch.no_grad():
        after = model(x)
    assert after.shape == before.shape, f"seed {seed}: output shape {after.shape} != {before.shape}"
    err = float((after - before).abs().max() / before.abs().max().clamp_min(1e-12))
    assert err < 1e-5, f"seed {seed}: output changed by {err:.3g} ({report.sites})"
    if report.units_removed == 0:
        assert [id(p) for p in model.parameters()] == params, f"seed {seed}: parameters replaced"
        now = model.state_dict()
        assert all(torch.equal(v, now[k]) for k, v in state.items()), f"seed {seed}: model changed"
    held = [p for group in opt.param_groups for p in group["params"]]
    assert [id(p) for p in held] == [id(p) for p in model.parameters()], f"seed {seed}: optimizer params"
    for p, s in opt.state.items():
        shaped = [k for k, v in s.items() if torch.is_tensor(v) and v.dim() > 0 and v.shape != p.shape]
        assert not shaped, f"seed {seed}: optimizer state {shaped} not shaped like its parameter"
    for rec in report.sites.values():
        # >=: after a refused removal, a later site's retry may take units an earlier one kept
        assert rec.kept_dead <= rec.dead and sum(rec.reasons.values()) >= rec.kept_dead, f"seed {seed}: {rec}"
        assert all(len(r) < 200 and "tensor(" not in r for r in rec.reasons), rec.reasons
    _train_step(model, opt, x)
    assert all(torch.isfinite(p).all() for p in model.parameters()), f"seed {seed}: training diverged"
    if not any(r.dead for r in report.sites.values()):
        return "no dead units", report
    if not any(r.kept_dead for r in report.sites.values()):
        return "exact", report
    return ("partial" if report.units_removed else "refused"), report


def tally(seeds: range) -> tuple[Counter, Counter]:
    """Outcome counts over ``seeds``, and the reasons dead units were kept (units per reason)."""
    outcomes, reasons = Counter(), Counter()
    for seed in seeds:
        outcome, report = check(seed)
        outcomes[outcome] += 1
        for rec in report.sites.values():
            reasons.update({r.split(" (at ")[0][:90]: n for r, n in rec.reasons.items()})
    return outcomes, reasons


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    outcomes, reasons = tally(range(n))
    print(f"{n} random architectures: " + ", ".join(f"{k} {v}" for k, v in outcomes.most_common()))
    for reason, units in reasons.most_common():
        print(f"{units:6d} units kept: {reason}")
