"""FLOP counts: closed forms for linear and conv layers, train/forward ratio, no side effects."""
import torch
import torch.nn as nn

from demp.core.flops import forward_flops, train_step_flops
from demp.core.utils import count_params


def _conv_flops(cin: int, cout: int, k: int, hout: int, wout: int, groups: int = 1) -> int:
    """2 x MACs of a conv layer for one example (bias not counted)."""
    return 2 * cout * hout * wout * (cin // groups) * k * k


def _conv_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(16, 10),
    )


# per-example FLOPs of _conv_net's layers on 8x8 inputs
CONV1, CONV2, FC = _conv_flops(3, 8, 3, 8, 8), _conv_flops(8, 16, 3, 4, 4), 2 * 16 * 10


def test_linear_forward_flops_ignore_bias() -> None:
    x = torch.randn(4, 10)
    assert forward_flops(nn.Linear(10, 5), x) == 2 * 10 * 5
    assert forward_flops(nn.Linear(10, 5, bias=False), x) == 2 * 10 * 5


def test_conv_forward_flops_closed_form() -> None:
    x = torch.randn(2, 4, 9, 9)
    assert forward_flops(nn.Conv2d(4, 6, 3), x) == _conv_flops(4, 6, 3, 7, 7)
    grouped = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    assert forward_flops(grouped, x) == _conv_flops(4, 6, 3, 5, 5, groups=2)


def test_conv_net_forward_and_train_closed_form() -> None:
    net, x = _conv_net(), torch.randn(5, 3, 8, 8)
    forward = forward_flops(net, x)
    assert forward == CONV1 + CONV2 + FC
    # backward = weight grads + input grads (2x forward), except the first layer's input grad
    train = train_step_flops(net, x)
    assert train == 3 * forward - CONV1
    assert train >= 2.5 * forward


def test_train_flops_skip_frozen_layers_and_are_per_example() -> None:
    net = _conv_net()
    net[0].requires_grad_(False)  # the frozen first conv needs neither weight nor input grads
    want = 3 * (CONV1 + CONV2 + FC) - 2 * CONV1
    assert train_step_flops(net, torch.randn(7, 3, 8, 8)) == want
    assert train_step_flops(net, torch.randn(1, 3, 8, 8)) == want


def test_no_side_effects_on_modes_grads_buffers_or_rng() -> None:
    net, x = _conv_net(), torch.randn(4, 3, 8, 8)
    net.train()
    net[1].eval()  # a mixed-mode model must come back mixed
    modes = [m.training for m in net.modules()]
    net[0].weight.grad = torch.ones_like(net[0].weight)
    grads = [p.grad for p in net.parameters()]
    buffers = [b.clone() for b in net.buffers()]
    torch.manual_seed(123)
    forward_flops(net, x)
    train_step_flops(net, x)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))  # dropout in train mode drew nothing visible
    assert [m.training for m in net.modules()] == modes
    assert all(p.grad is g for p, g in zip(net.parameters(), grads))
    assert torch.equal(net[0].weight.grad, torch.ones_like(net[0].weight))
    assert all(torch.equal(b, saved) for b, saved in zip(net.buffers(), buffers))
    net.eval()
    forward_flops(net, x)
    assert not any(m.training for m in net.modules())


def test_count_params_counts_shared_and_frozen_once() -> None:
    shared = nn.Linear(4, 4)
    net = nn.Sequential(nn.Linear(3, 4).requires_grad_(False), shared, nn.ReLU(), shared)
    assert count_params(net) == (3 * 4 + 4) + (4 * 4 + 4)


def test_attention_is_counted_on_the_cpu_and_through_the_fast_path():
    """nn.MultiheadAttention in eval mode (its fused fast path) and F.scaled_dot_product_attention
    on the CPU: projections 2*L*d*4d, scores and weighted values 2*2*L*L*d per example."""
    import torch.nn.functional as F
    from demp.core.flops import forward_flops, train_step_flops
    L, d = 16, 32

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(d, 4, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    expected = 2 * L * d * 4 * d + 2 * 2 * L * L * d
    assert forward_flops(Attention(), torch.randn(2, L, d)) == expected
    assert torch.backends.mha.get_fastpath_enabled()            # switched off only while counting

    class Sdpa(torch.nn.Module):
        def forward(self, x):
            return F.scaled_dot_product_attention(x, x, x, is_causal=True)

    assert forward_flops(Sdpa(), torch.randn(2, 4, L, d // 4)) == 2 * 2 * L * L * d
    assert train_step_flops(torch.nn.Sequential(torch.nn.Linear(d, d), Sdpa()), torch.randn(2, 4, L, d)) > 0
