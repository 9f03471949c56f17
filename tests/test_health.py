"""Collapse detection: probe loss jumps, outputs that stop depending on the input, chance accuracy."""
import math

import torch

from demp.core.health import CollapseWatch, ProbeOutputs, at_chance


def seen(logits: torch.Tensor, target: torch.Tensor | None = None) -> ProbeOutputs:
    out = ProbeOutputs()
    out.add((torch.zeros(len(logits)), target) if target is not None else torch.zeros(len(logits)), logits)
    return out


def test_loss_and_spread_are_measured_over_the_batches():
    torch.manual_seed(0)
    logits, target = torch.randn(64, 10), torch.randint(0, 10, (64,))
    one = ProbeOutputs()
    for a, b in zip(logits.split(16), target.split(16)):
        one.add((a, b), a)
    assert math.isclose(one.loss, float(torch.nn.functional.cross_entropy(logits, target)), rel_tol=1e-5)
    assert math.isclose(one.spread, float(logits.std(0, unbiased=False).mean()), rel_tol=1e-4)
    assert seen(logits).loss is None and seen(logits).spread is not None    # no targets: spread only


def test_sequence_outputs_use_the_last_dimension():
    """A language model's (batch, time, vocab) logits with (batch, time) targets."""
    logits, target = torch.randn(4, 8, 256), torch.randint(0, 256, (4, 8))
    s = seen(logits, target)
    assert math.isclose(s.loss, float(torch.nn.functional.cross_entropy(logits.reshape(-1, 256), target.reshape(-1))),
                        rel_tol=1e-5)


def test_a_loss_jump_is_a_collapse_and_a_drift_is_not():
    torch.manual_seed(0)
    target = torch.randint(0, 10, (256,))
    good = torch.nn.functional.one_hot(target, 10).float() * 4     # confident and right: loss ~0.1
    watch = CollapseWatch()
    assert watch.observe(0, seen(torch.randn(256, 10), target), "c") is None   # the first check: a baseline
    assert watch.observe(1, seen(good, target), "c") is None                   # learning: loss falls
    assert watch.observe(2, seen(good * 0.9, target), "c") is None             # drift: a small rise
    dent = torch.nn.functional.one_hot(target, 10).float() * 1.5              # loss x5, but far from chance
    assert watch.observe(3, seen(dent, target), "c") is None
    found = watch.observe(4, seen(torch.zeros(256, 10) + torch.randn(1, 10), target), "too strong")
    assert found is not None and found.signal == "probe loss" and found.cause == "too strong"
    assert found.after > 0.75 * math.log(10) and "step 4" in found.line()


def test_outputs_that_stop_depending_on_the_input_are_a_collapse_without_labels():
    torch.manual_seed(0)
    watch = CollapseWatch()
    assert watch.observe(0, seen(torch.randn(128, 10) * 2), "c") is None
    assert watch.observe(1, seen(torch.randn(128, 10) * 0.5), "c") is None     # 4x narrower: still a function
    flat = torch.randn(1, 10) + 1e-3 * torch.randn(128, 10)
    found = watch.observe(2, seen(flat), "c")
    assert found is not None and found.signal == "output spread" and found.after < 0.05 * found.before


def test_watch_state_round_trips():
    watch = CollapseWatch()
    watch.observe(0, seen(torch.randn(32, 10)), "c")
    twin = CollapseWatch()
    twin.load_state_dict(watch.state_dict())
    assert twin == watch


def test_chance_accuracy():
    assert at_chance(0.10, 10) and at_chance(0.12, 10)
    assert at_chance(0.5, 2) and not at_chance(0.7, 2)
    assert not at_chance(0.258, 10) and not at_chance(0.0, 1)
