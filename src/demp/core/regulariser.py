"""The sparsity penalty DemP adds to the task loss (docs/method.md, "The regulariser").

The published method uses ``l1`` on normalisation scales (BatchNorm/LayerNorm/GroupNorm
weights); the other forms and the ``all_weights`` target serve the ablations.  Besides the
penalty itself, ``penalty_grad`` gives its exact gradient so that callers can remove the
penalty's share from ``p.grad`` and see which entries got gradient from the task loss alone.
"""
from __future__ import annotations

import torch
import torch.nn as nn

REG_FORMS = ("l1", "l2", "l1_pos", "l2_pos")
REG_TARGETS = ("norm_scales", "all_weights")
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _check(name: str, value: str, valid: tuple[str, ...]) -> None:
    """Raise ValueError naming the bad choice and the valid ones."""
    if value not in valid:
        raise ValueError(f"unknown regulariser {name} {value!r}; choose one of {valid}")


def _unique_trainable(params: list[nn.Parameter]) -> list[nn.Parameter]:
    """Trainable parameters in first-seen order, each once (shared modules appear once)."""
    seen: set[int] = set()
    out = []
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def norm_scale_params(model: nn.Module) -> list[nn.Parameter]:
    """Trainable scale (weight) parameters of every BatchNorm*, LayerNorm and GroupNorm."""
    scales = [
        m.weight
        for m in model.modules()
        if isinstance(m, NORM_TYPES) and isinstance(m.weight, nn.Parameter)
    ]
    return _unique_trainable(scales)


def regularised_params(model: nn.Module, target: str) -> list[nn.Parameter]:
    """The parameters the penalty applies to: norm scales, or all matrices/kernels plus them."""
    _check("target", target, REG_TARGETS)
    scales = norm_scale_params(model)
    if target == "norm_scales":
        return scales
    scale_ids = {id(p) for p in scales}
    return _unique_trainable([p for p in model.parameters() if p.dim() > 1 or id(p) in scale_ids])


def penalty(params: list[torch.Tensor], form: str) -> torch.Tensor:
    """Sum of the elementwise penalty over every entry of ``params`` (a 0-dim tensor)."""
    _check("form", form, REG_FORMS)
    if not params:
        return torch.zeros(())
    if form == "l1":
        per_tensor = torch._foreach_norm(params, 1)  # sum |p|, one fused call
    else:
        base = params if form == "l2" else [torch.relu(p) for p in params]
        elementwise = base if form == "l1_pos" else torch._foreach_pow(base, 2)
        per_tensor = [e.sum() for e in elementwise]
    return torch.stack(per_tensor).sum()


def penalty_grad(params: list[torch.Tensor], form: str, scale: float) -> list[torch.Tensor]:
    """Gradient of ``scale * penalty(params, form)``, bit-identical to what autograd gives.

    The subgradient at 0 is 0 for every form (torch's abs' and relu' at 0).
    """
    _check("form", form, REG_FORMS)
    if not params:
        return []
    with torch.no_grad():
        if form == "l1":
            return torch._foreach_mul(torch._foreach_sign(params), scale)
        if form == "l1_pos":
            grads = [torch.full_like(p, scale) for p in params]
        else:  # same operation order as autograd's pow backward: scale * (2 * p)
            grads = torch._foreach_mul(torch._foreach_mul(params, 2.0), scale)
        if form != "l2":
            for g, p in zip(grads, params):
                g.masked_fill_(p <= 0, 0.0)  # relu passes no gradient at or below 0
        return grads


# ---------------------------------------------------------------- the shift push (demp's addition)
# An L1 penalty drives a unit's scale to zero, but a BatchNorm unit with scale 0 and a positive
# shift outputs the constant relu(shift): it is silenced, not dead, and no dead check can
# remove it.  On VGG-16-BN/CIFAR-10 such units were 17% of all units at the end of budgeted
# runs.  The push adds lambda * shift to the loss for every silenced unit (scale below
# ``below`` times the largest scale of its layer), which walks the shift down until the unit
# is dead; a constant input is mostly absorbed by the next normalisation, so this costs little.
# docs/method.md, "Where demp departs".

def shift_pairs(model: nn.Module) -> list[tuple[nn.Parameter, nn.Parameter]]:
    """(scale, shift) of every BatchNorm with trainable affine parameters."""
    return [(m.weight, m.bias) for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and isinstance(m.weight, nn.Parameter) and isinstance(m.bias, nn.Parameter)
            and m.weight.requires_grad and m.bias.requires_grad and m.weight.numel() > 1]


@torch.no_grad()
def silenced(scale: torch.Tensor, below: float) -> torch.Tensor:
    """Mask of units whose scale is below ``below`` times the largest |scale| of the layer."""
    mag = scale.detach().abs()
    return mag < below * mag.max()


def shift_push(pairs: list[tuple[nn.Parameter, nn.Parameter]], below: float) -> torch.Tensor:
    """Sum of the shifts of the silenced units (a 0-dim tensor; its gradient is the mask)."""
    terms = [(shift * silenced(scale, below)).sum() for scale, shift in pairs]
    return torch.stack(terms).sum() if terms else torch.zeros(())


@torch.no_grad()
def shift_push_grad(pairs: list[tuple[nn.Parameter, nn.Parameter]], below: float,
                    scale: float) -> list[torch.Tensor]:
    """Gradient of ``scale * shift_push(pairs, below)`` for each pair's shift."""
    return [silenced(gamma, below).to(shift.dtype) * scale for gamma, shift in pairs]
