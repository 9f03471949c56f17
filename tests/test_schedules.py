"""Schedules for lambda_t and sigma_t: closed-form values, OneCycleLR agreement, validation."""
import math

import pytest
import torch

from demp.core.schedules import SCHEDULES, Schedule, make_schedule


def test_one_cycle_key_points() -> None:
    s = make_schedule("one_cycle", peak=2.0, span=1000)
    assert s(0) == pytest.approx(2.0 / 25, rel=1e-12)
    assert s(300) == pytest.approx(2.0, rel=1e-12)
    assert s(1000) == pytest.approx(2.0 / 2.5e5, rel=1e-12)
    assert s(5000) == s(1000)  # stays at the floor after the span


def test_one_cycle_rises_then_falls() -> None:
    s = make_schedule("one_cycle", peak=1.0, span=200)
    values = [s(t) for t in range(201)]
    rise, fall = values[:61], values[60:]
    assert all(a < b for a, b in zip(rise, rise[1:]))
    assert all(a > b for a, b in zip(fall, fall[1:]))


@pytest.mark.parametrize("span,frac", [(100, 0.3), (37, 0.25), (1000, 0.5)])
def test_one_cycle_matches_torch_one_cycle_lr(span: int, frac: float) -> None:
    # OneCycleLR peaks at step pct_start*total_steps - 1 and bottoms out at total_steps - 1;
    # choose total_steps and pct_start so both land where ours do (warmup_frac*span, span).
    total = span + 1
    pct_start = (frac * span + 1) / total
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    torch_sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.05, total_steps=total, pct_start=pct_start, anneal_strategy="cos",
        cycle_momentum=False, div_factor=25.0, final_div_factor=1e4,
    )
    ours = make_schedule("one_cycle", peak=0.05, span=span, warmup_frac=frac)
    for t in range(span + 1):
        assert ours(t) == pytest.approx(torch_sched.get_last_lr()[0], rel=1e-9, abs=0), t
        if t < span:
            opt.step()
            torch_sched.step()


def test_one_cycle_custom_divisors() -> None:
    s = make_schedule("one_cycle", peak=1.0, span=10, div_start=10.0, div_final=100.0)
    assert s(0) == pytest.approx(0.1) and s(10) == pytest.approx(1e-3)


def test_constant() -> None:
    s = make_schedule("constant", peak=0.7, span=10)
    assert [s(t) for t in (0, 5, 10, 99)] == [0.7] * 4


def test_cosine() -> None:
    s = make_schedule("cosine", peak=4.0, span=100)
    assert s(0) == 4.0
    assert s(50) == pytest.approx(2.0)
    assert s(25) == pytest.approx(4.0 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert s(100) == pytest.approx(0.0, abs=1e-15)
    assert s(101) == 0.0


def test_linear_warmup() -> None:
    s = make_schedule("linear_warmup", peak=3.0, span=100, warmup_frac=0.2)
    assert s(0) == 0.0
    assert s(10) == pytest.approx(1.5)
    assert s(20) == 3.0 and s(100) == 3.0 and s(1000) == 3.0


def test_step_decay() -> None:
    s = make_schedule("step", peak=1.0, span=100, milestones=[0.5, 0.8], gamma=0.5)
    assert s.milestones == (0.5, 0.8)
    assert [s(t) for t in (0, 49, 50, 79, 80, 500)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_default_step_milestones() -> None:
    s = make_schedule("step", peak=1.0, span=8)
    assert [s(t) for t in (3, 4, 6)] == pytest.approx([1.0, 0.1, 0.01])


def test_zero_peak_is_allowed() -> None:
    for kind in SCHEDULES:
        assert make_schedule(kind, peak=0.0, span=5)(2) == 0.0


def test_schedule_is_frozen() -> None:
    s = make_schedule("constant", peak=1.0, span=3)
    with pytest.raises(AttributeError):
        s.peak = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "kind,peak,span,kw,match",
    [
        ("exp", 1.0, 10, {}, "one_cycle"),
        ("constant", 1.0, 0, {}, "span"),
        ("constant", 1.0, 2.5, {}, "span"),
        ("constant", -1.0, 10, {}, "peak"),
        ("constant", float("nan"), 10, {}, "peak"),
        ("one_cycle", 1.0, 10, {"warmup_frac": 1.0}, "warmup_frac"),
        ("one_cycle", 1.0, 10, {"warmup_frac": 0.0}, "warmup_frac"),
        ("linear_warmup", 1.0, 10, {"warmup_frac": 1.5}, "warmup_frac"),
        ("one_cycle", 1.0, 10, {"div_start": 0.0}, "div_start"),
        ("one_cycle", 1.0, 10, {"div_final": -1.0}, "div_final"),
        ("step", 1.0, 10, {"gamma": -0.1}, "gamma"),
        ("step", 1.0, 10, {"milestones": (0.8, 0.5)}, "milestones"),
        ("step", 1.0, 10, {"milestones": (0.5, 1.5)}, "milestone"),
        ("constant", 1.0, 10, {"warmup": 0.1}, "warmup_frac"),
    ],
)
def test_bad_arguments_raise(kind: str, peak: float, span: int, kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_schedule(kind, peak, span, **kw)


def test_direct_construction_validates_and_negative_step_raises() -> None:
    with pytest.raises(ValueError, match="span"):
        Schedule("cosine", 1.0, 0)
    with pytest.raises(ValueError, match="step"):
        make_schedule("constant", 1.0, 5)(-1)
