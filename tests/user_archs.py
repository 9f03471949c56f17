"""Architectures written the way users write them, one per failure class of removal.

Each builder returns ``(model, inputs)`` with planted dead units (a norm's scale 0 and shift
< 0, or a Linear/conv row 0 and bias < 0); ``inputs`` is what the model is called with.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm


@torch.no_grad()
def kill(layer: nn.Module, units: list[int]) -> None:
    """Make ``units`` of a norm, Linear or conv output constantly negative."""
    if isinstance(layer, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
        layer.weight[units] = 0
        layer.bias[units] = -1
    else:
        layer.weight[units] = 0
        layer.bias[units] = -1


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class Conv1dDropout(nn.Module):
    """Audio-style: relu(dropout(conv1d(x))) on zero-padded sequences; units are channels."""

    def __init__(self):
        super().__init__()
        self.conv, self.drop, self.head = nn.Conv1d(4, 6, 3, padding=1), nn.Dropout(0.1), nn.Linear(6, 3)

    def forward(self, x):
        return self.head(F.relu(self.drop(self.conv(x))).mean(2))


def conv1d_dropout():
    model = Conv1dDropout()
    kill(model.conv, [1, 4])
    x = _x(8, 4, 10)
    x[:, :, 7:] = 0  # padding: time steps 7.. are zero, and must not look like units
    return model, x


class ChannelsLast(nn.Module):
    """ConvNeXt-style MLP on (B, H, W, C)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(5, 9), nn.Linear(9, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.fc2(F.relu(self.fc1(x))).mean((1, 2)))


def channels_last():
    model = ChannelsLast()
    kill(model.fc1, [0, 3, 7])
    return model, _x(8, 4, 6, 5)


class Siamese(nn.Module):
    """One encoder called on two inputs; a unit may be dead on one call only."""

    def __init__(self):
        super().__init__()
        self.enc, self.head = nn.Linear(4, 6), nn.Linear(12, 2)

    def forward(self, a, b):
        return self.head(torch.cat([F.relu(self.enc(a)), F.relu(self.enc(b))], 1))


def siamese():
    model = Siamese()
    with torch.no_grad():
        model.enc.weight[2] = torch.tensor([1.0, 0, 0, 0])   # live on a (>0), dead on b (<0)
        model.enc.bias[2] = 0
    kill(model.enc, [4])                                     # dead on both calls
    a, b = _x(8, 4), _x(8, 4, seed=1)
    a[:, 0], b[:, 0] = a[:, 0].abs() + 0.1, -b[:, 0].abs() - 0.1
    return model, (a, b)


class TimeConcat(nn.Module):
    """Two branches joined along time, then a ReLU site."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv1d(3, 6, 3, padding=1), nn.Conv1d(3, 6, 1)
        self.bn = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = F.relu(self.bn(torch.cat([self.a(x), self.b(x)], 2)))
        return self.head(h.mean(2))


def time_concat():
    model = TimeConcat()
    kill(model.bn, [1, 2])
    return model, _x(8, 3, 7)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: chunk, a branch, cat, shuffle, then a grouped conv."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        h = c // 2
        self.pw, self.bn1 = nn.Conv2d(h, h, 1, bias=False), nn.BatchNorm2d(h)
        self.gconv, self.bn2 = nn.Conv2d(c, c, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(c)
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        left, right = x.chunk(2, dim=1)
        x = channel_shuffle(torch.cat([left, F.relu(self.bn1(self.pw(right)))], 1), 2)
        return self.head(F.relu(self.bn2(self.gconv(x))).mean((2, 3)))


def shuffle_unit():
    model = ShuffleUnit()
    kill(model.bn0, [1, 6])
    kill(model.bn1, [2])
    kill(model.bn2, [0, 5])
    return model, _x(8, 3, 6, 6)


class ChannelMean(nn.Module):
    """A reduction over the unit dimension before the classifier."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Linear(36, 2)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.conv(x))).mean(1).flatten(1))


def channel_mean():
    model = ChannelMean()
    kill(model.bn, [0, 2])
    return model, _x(8, 3, 6, 6)


class WithFeatures(nn.Module):
    """``return logits, features``: the features are a ReLU site's output."""

    def __init__(self):
        super().__init__()
        self.fc1, self.head = nn.Linear(5, 8), nn.Linear(8, 3)

    def forward(self, x):
        feats = F.relu(self.fc1(x))
        return self.head(feats), feats


def with_features():
    model = WithFeatures()
    kill(model.fc1, [1, 6])
    return model, _x(8, 5)


class FrozenConv(nn.Module):
    """A frozen backbone conv with a trainable BatchNorm after it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv.weight.requires_grad_(False)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.conv(x))).mean((2, 3)))


def frozen_conv():
    model = FrozenConv()
    kill(model.bn, [1, 4])
    return model, _x(8, 3, 6, 6)


class FrozenBN(nn.Module):
    """torchvision's FrozenBatchNorm2d: an affine map held in buffers."""

    def __init__(self, c: int):
        super().__init__()
        self.register_buffer("weight", torch.rand(c) + 0.5)
        self.register_buffer("bias", torch.rand(c) * 0.2)

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class BufferNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 6, 3, padding=1), FrozenBN(6)
        self.conv2, self.head = nn.Conv2d(6, 4, 1), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.conv2(F.relu(self.norm(self.conv(x)))).mean((2, 3)))


def buffer_norm():
    model = BufferNorm()
    kill(model.conv, [0, 3])
    return model, _x(8, 3, 6, 6)


class Tied(nn.Module):
    """Two convs sharing one weight Parameter."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.c2.weight = self.c1.weight
        self.stem, self.head = nn.Conv2d(3, 4, 1), nn.Linear(4, 2)

    def forward(self, x):
        x = F.relu(self.stem(x))
        return self.head(F.relu(self.c2(F.relu(self.c1(x)))).mean((2, 3)))


def tied():
    model = Tied()
    kill(model.stem, [1])
    with torch.no_grad():
        model.c1.bias[2] = -50.0
    return model, _x(8, 3, 6, 6)


class WeightNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.head = weight_norm(nn.Linear(4, 6)), nn.Linear(6, 2)

    def forward(self, x):
        return self.head(F.relu(self.fc1(x)))


def weight_normed():
    model = WeightNorm()
    with torch.no_grad():
        model.fc1.bias[[1, 3]] = -50.0
    return model, _x(8, 4)


class TwoInputs(nn.Module):
    """Image and metadata inputs, called with keywords or positionally."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.meta, self.head = nn.Linear(2, 4), nn.Linear(10, 2)

    def forward(self, image, meta):
        a = F.relu(self.bn(self.conv(image))).mean((2, 3))
        return self.head(torch.cat([a, F.relu(self.meta(meta))], 1))


def two_inputs():
    model = TwoInputs()
    kill(model.bn, [2])
    kill(model.meta, [0, 3])
    return model, (_x(8, 3, 6, 6), _x(8, 2))


class BatchNormAct2d(nn.BatchNorm2d):
    """timm-style fused layer: functional batch norm, then the activation."""

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, self.momentum, self.eps)
        return F.relu(x)


class FusedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), BatchNormAct2d(8)
        self.c2, self.n2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), BatchNormAct2d(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.n2(self.c2(self.n1(self.c1(x)))).mean((2, 3)))


def fused():
    model = FusedNet()
    kill(model.n1, [0, 3, 5])
    kill(model.n2, [1, 2, 6])
    return model, _x(8, 3, 6, 6)


class PostNorm(nn.Module):
    """ReLU before its BatchNorm: the norm's shift makes a dead unit's channel non-zero."""

    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.head = nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.bn(F.relu(self.fc1(x))))


def post_norm():
    model = PostNorm()
    kill(model.fc1, [1, 2])
    with torch.no_grad():
        model.bn.bias.fill_(0.5)
    return model, _x(8, 4)


class ChannelScale(nn.Module):
    """A learnable per-channel scale (layer-scale) tied to a site's channels."""

    def __init__(self):
        super().__init__()
        self.fc1, self.head = nn.Linear(4, 6), nn.Linear(6, 2)
        self.gamma = nn.Parameter(torch.rand(6) + 0.5)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        return self.head(h * self.gamma) + h.sum(1, keepdim=True) * 0


def channel_scale():
    model = ChannelScale()
    kill(model.fc1, [0, 5])
    return model, _x(8, 4)


class TokenFFN(nn.Module):
    """Token MLP on (B, T, C) with an in-place ReLU."""

    def __init__(self, act: str = "module"):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(6, 10), nn.Linear(10, 6), nn.Linear(6, 2)
        self.act, self.kind = nn.ReLU(inplace=True), act

    def forward(self, x):
        h = self.fc1(x)
        h = self.act(h) if self.kind == "module" else F.relu(h, inplace=True)
        return self.head((x + self.fc2(h)).mean(1))


def token_ffn(act: str = "module"):
    model = TokenFFN(act)
    kill(model.fc1, [2, 5, 9])
    return model, _x(8, 5, 6)


class CatFlatten(nn.Module):
    """Concatenation, then flatten and a Linear (no global pooling)."""

    def __init__(self):
        super().__init__()
        self.a, self.na = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.b, self.nb = nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4)
        self.head = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        h = torch.cat([F.relu(self.na(self.a(x))), F.relu(self.nb(self.b(x)))], 1)
        return self.head(h.flatten(1))


def cat_flatten():
    model = CatFlatten()
    kill(model.na, [1])
    kill(model.nb, [0, 3])
    return model, _x(8, 3, 4, 4)


class OnePerGroup(nn.Module):
    """A grouped conv with one output per group after a layer with dead units."""

    def __init__(self):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.n2 = nn.Conv2d(8, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = F.relu(self.n1(self.c1(x)))
        return self.head(F.relu(self.n2(self.c2(x))).mean((2, 3)))


def one_per_group():
    model = OnePerGroup()
    kill(model.n1, [0, 1, 5])
    return model, _x(8, 3, 6, 6)


class GroupNormCat(nn.Module):
    """GroupNorm(4, 16) over a concatenation of 6 + 10 channels, then a ReLU site: group 1
    (channels 4-7) straddles the seam."""

    def __init__(self):
        super().__init__()
        self.a, self.na = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.b, self.nb = nn.Conv2d(3, 10, 1, bias=False), nn.BatchNorm2d(10)
        self.gn, self.head = nn.GroupNorm(4, 16), nn.Conv2d(16, 3, 1)

    def forward(self, x):
        h = torch.cat([F.relu(self.na(self.a(x))), F.relu(self.nb(self.b(x)))], 1)
        return self.head(F.relu(self.gn(h))).mean((2, 3))


def groupnorm_cat(whole: bool = False):
    """Dead units on the left of the seam (and, with ``whole``, on the right: the whole group)."""
    model = GroupNormCat()
    kill(model.na, [4, 5])
    kill(model.gn, [4, 5, 6, 7] if whole else [4, 5])
    if whole:
        kill(model.nb, [0, 1])
    return model, _x(8, 3, 6, 6)


class MultiCat(nn.Module):
    """One BN-ReLU site over a triple concatenation (pre-activation dense block)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.bn, self.conv, self.head = nn.BatchNorm2d(12), nn.Conv2d(12, 5, 1), nn.Linear(5, 2)

    def forward(self, x):
        h = F.relu(torch.cat([F.relu(self.a(x)), F.relu(self.b(x)), F.relu(self.c(x))], 1))
        return self.head(self.conv(F.relu(self.bn(h))).mean((2, 3)))


def multi_cat():
    model = MultiCat()
    kill(model.a, [1])
    kill(model.b, [2])
    kill(model.bn, [9, 10])
    return model, _x(8, 3, 6, 6)


class InputResidual(nn.Module):
    """relu(bn(fc(x)) + x) as the first layer: the raw input is on the residual path."""

    def __init__(self):
        super().__init__()
        self.fc, self.bn, self.head = nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.fc(x)) + x))


def input_residual():
    model = InputResidual()
    kill(model.bn, [1, 4])
    with torch.no_grad():
        model.bn.bias[[1, 4]] = -50.0
    return model, _x(8, 6)


class UserNet(nn.Module):
    """A user's own CNN: grouped and depthwise convs, flatten into a Linear, a non-persistent buffer."""

    def __init__(self):
        super().__init__()
        self.stem, self.n0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.group, self.n1 = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(8)
        self.dw, self.n2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)
        self.pw, self.n3 = nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6)
        self.fc, self.head = nn.Linear(6 * 4 * 4, 10), nn.Linear(10, 3)
        self.register_buffer("scale", torch.ones(3), persistent=False)

    def forward(self, x):
        x = F.relu(self.n0(self.stem(x)))
        x = F.relu(self.n1(self.group(x)))
        x = F.relu(self.n2(self.dw(x)), inplace=True)
        x = F.relu(self.n3(self.pw(x)))
        return self.head(F.relu(self.fc(x.flatten(1)))) * self.scale


def user_net():
    model = UserNet()
    kill(model.n0, [0, 5])
    kill(model.n1, [1, 2, 5, 6])
    kill(model.n2, [3])
    kill(model.n3, [2])
    kill(model.fc, [4, 7])
    with torch.no_grad():
        model.scale.copy_(torch.tensor([1.0, 2.0, 3.0]))
    return model, _x(8, 3, 4, 4)


CASES = {
    "1_conv1d_dropout": conv1d_dropout, "1_channels_last": channels_last, "2_siamese": siamese,
    "3_time_concat": time_concat, "3_shuffle": shuffle_unit, "4_channel_mean": channel_mean,
    "5_with_features": with_features, "6_frozen_conv": frozen_conv, "6_buffer_norm": buffer_norm,
    "7_tied": tied, "8_weight_norm": weight_normed, "9_two_inputs": two_inputs, "10_fused": fused,
    "11_post_norm": post_norm, "11_channel_scale": channel_scale,
    "12_token_ffn": token_ffn, "12_token_ffn_functional": lambda: token_ffn("functional"),
    "13_cat_flatten": cat_flatten, "14_one_per_group": one_per_group,
    "15_groupnorm_cat": groupnorm_cat, "15_groupnorm_cat_whole": lambda: groupnorm_cat(whole=True),
    "16_multi_cat": multi_cat, "17_input_residual": input_residual,
}
