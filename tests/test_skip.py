"""The residual skip path as a 0/1 channel selection (demp.core.skip): forward, backward, the
plain-op form used for export, and independent pruning of its two sides."""
import torch

from demp.core.skip import ChannelSelect, ChannelSelectPruner


def test_starts_as_the_identity_and_its_two_forms_agree():
    sel = ChannelSelect(4)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = sel(x)
    assert torch.equal(out, x)
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    assert torch.equal(sel._plain_forward(x), sel(x))


def test_sides_prune_independently_and_the_selection_follows():
    sel, pruner = ChannelSelect(4), ChannelSelectPruner()
    pruner.prune_in_channels(sel, [1])            # input channel 1 gone: output channel 1 reads nothing
    pruner.prune_out_channels(sel, [3])           # output channel 3 gone
    assert (sel.in_channels, sel.out_channels) == (3, 3)
    assert sel.src.tolist() == [0, 1] and sel.dst.tolist() == [0, 2]
    x = torch.randn(2, 3, 2, 2, requires_grad=True)    # old input channels 0, 2, 3
    out = sel(x)
    assert torch.equal(out[:, 0], x[:, 0]) and torch.equal(out[:, 2], x[:, 1])
    assert torch.equal(out[:, 1], torch.zeros_like(out[:, 1]))
    assert torch.equal(sel._plain_forward(x), out)
    out.sum().backward()
    assert x.grad[:, 2].abs().sum() == 0 and x.grad[:, 0].eq(1).all()   # old channel 3 feeds nothing now
    assert (pruner.get_in_channels(sel), pruner.get_out_channels(sel)) == (3, 3)
