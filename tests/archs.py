"""Small architectures covering every graph shape the surgery must handle, plus planting helpers."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

import demp
from demp.core.skip import ChannelSelect


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(12, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        x = x.flatten(1)
        return self.out(F.relu(self.fc2(torch.relu(self.fc1(x)))))


class VGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(*cbr(3, 8), nn.MaxPool2d(2), *cbr(8, 16), nn.MaxPool2d(2))
        self.fc = nn.Sequential(nn.Linear(16 * 2 * 2, 12, bias=False), nn.BatchNorm1d(12), nn.ReLU(),
                                nn.Dropout(0.1), nn.Linear(12, 5))

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class Basic(nn.Module):
    """ResNet basic block; identity shortcut as ChannelSelect (or a plain add if coupled)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, coupled: bool = False):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)  # one module, called twice: two sites
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.short = nn.Identity() if coupled else ChannelSelect(cin)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.short(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int = 1):
        super().__init__()
        cout = mid * 4
        self.body = nn.Sequential(*cbr(cin, mid, 1), *cbr(mid, mid, 3, stride),
                                  nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = ChannelSelect(cin) if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.body(x) + self.short(x))


class ResNet(nn.Module):
    def __init__(self, coupled: bool = False):
        super().__init__()
        self.stem = nn.Sequential(*cbr(3, 8))
        self.b1 = Basic(8, 8, coupled=coupled)
        self.b2 = Basic(8, 8, coupled=coupled)
        self.b3 = Basic(8, 16, stride=2)
        self.b4 = Bottleneck(16, 4)
        self.b5 = Bottleneck(16, 4)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.b5(self.b4(self.b3(self.b2(self.b1(self.stem(x))))))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int = 4):
        super().__init__()
        h = c * expand
        self.body = nn.Sequential(*cbr(c, h, 1), *cbr(h, h, 3, groups=h),
                                  nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


class MobileNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*cbr(3, 8))
        self.blocks = nn.Sequential(InvertedResidual(8), InvertedResidual(8))
        self.head = nn.Sequential(*cbr(8, 16, 1))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.head(self.blocks(self.stem(x))).mean((2, 3)))


class DenseNet(nn.Module):
    def __init__(self, growth: int = 4):
        super().__init__()
        self.stem = nn.Sequential(*cbr(3, 6))
        self.l1 = nn.Sequential(*cbr(6, growth))
        self.l2 = nn.Sequential(*cbr(6 + growth, growth))
        self.trans = nn.Sequential(*cbr(6 + 2 * growth, 8, 1))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.l1(x)], 1)
        x = torch.cat([x, self.l2(x)], 1)
        return self.fc(F.adaptive_avg_pool2d(self.trans(x), 1).flatten(1))


class PreActDense(nn.Module):
    """DenseNet-style layers that normalise and activate the concatenation (a site spanning groups)."""

    def __init__(self, growth: int = 4):
        super().__init__()
        self.stem = nn.Sequential(*cbr(3, 6))
        self.l1 = nn.Sequential(nn.Conv2d(6, growth, 3, padding=1, bias=False), nn.BatchNorm2d(growth), nn.ReLU())
        self.pre = nn.Sequential(nn.BatchNorm2d(6 + growth), nn.ReLU())
        self.conv = nn.Conv2d(6 + growth, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.l1(x)], 1)
        return self.fc(self.conv(self.pre(x)).mean((2, 3)))


class Transformer(nn.Module):
    """Pre-LN transformer block with a ReLU FFN, on 4x4 patches."""

    def __init__(self, dim: int = 16, hidden: int = 24):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.ln1, self.attn = nn.LayerNorm(dim), nn.MultiheadAttention(dim, 2, batch_first=True)
        self.ln2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.act = nn.ReLU()
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.fc2(self.act(self.fc1(self.ln2(x))))
        return self.head(x.mean(1))


class Grouped(nn.Module):
    """Grouped (non-depthwise) conv and GroupNorm between ReLU sites."""

    def __init__(self):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.n2 = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(8)
        self.c3, self.n3 = nn.Conv2d(8, 8, 1, bias=False), nn.GroupNorm(4, 8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.n1(self.c1(x)))
        x = F.relu(self.n2(self.c2(x)))
        x = F.relu(self.n3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


ARCHS = {"mlp": MLP, "vgg": VGG, "resnet": ResNet, "mobilenet": MobileNet,
         "densenet": DenseNet, "preact_dense": PreActDense, "transformer": Transformer,
         "grouped": Grouped}


def example(name: str, n: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 2, 2, generator=g) if name == "mlp" else torch.randn(n, 3, 8, 8, generator=g)


@torch.no_grad()
def randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Give norm layers non-trivial affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@torch.no_grad()
def plant_dead(model: nn.Module, fraction: float = 0.4, seed: int = 0) -> None:
    """Kill a fraction of the units behind every norm layer (gamma 0, beta < 0) or Linear (w 0, b < 0)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
            n = m.weight.numel()
            idx = torch.randperm(n, generator=g)[: max(1, int(n * fraction))]
            m.weight[idx] = 0
            m.bias[idx] = -1
    if isinstance(model, (MLP, Transformer)):
        for lin in ([model.fc1, model.fc2] if isinstance(model, MLP) else [model.fc1]):
            n = lin.out_features
            idx = torch.randperm(n, generator=g)[: int(n * fraction)]
            lin.weight[idx] = 0
            lin.bias[idx] = -1


def id_model(model: nn.Module) -> nn.Module:
    """A copy whose parameter entries hold their own flat index, to see what surgery kept."""
    ids = copy.deepcopy(model).double()
    with torch.no_grad():
        for p in ids.parameters():
            p.copy_(torch.arange(p.numel(), dtype=torch.float64).view_as(p))
    return ids


def kept_indices(model: nn.Module, dead: dict, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """For each parameter name, the flat indices of the original entries that survive removal."""
    ids = id_model(model)
    demp.remove_units(ids, dead, x.double())
    return {n: p.detach().flatten().long() for n, p in ids.named_parameters()}
