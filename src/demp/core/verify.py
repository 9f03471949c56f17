"""The safety net around surgery: exact rollback, and a check that the function is unchanged.

A removal is exact or refused, never a silent change (docs/method.md).  ``Snapshot`` records
a model and optimizer so that a failed removal can be undone object for object: the same
Parameter objects, module attributes, buffers, optimizer state and param groups, and the
per-parameter tensors that follow a removal (sparsity masks).
``compare_outputs`` decides whether two forward results agree (every tensor of a tuple,
list or dict output, shape and values, within a tolerance scaled to the output).
"""
from __future__ import annotations

import copy
from typing import Any, MutableMapping, Optional, Sequence

import torch
import torch.nn as nn

from demp.core.tp_compat import tensor_version

_CONTAINERS = (dict, list, set)


def _contents(value: Any) -> Any:
    """A shallow copy of a container attribute (its object is restored in place), else None."""
    return copy.copy(value) if isinstance(value, _CONTAINERS) else None


def _refill(target: Any, saved: Any) -> None:
    """Put ``saved``'s entries back into the container object ``target``."""
    if isinstance(target, list):
        target[:] = saved
    else:
        target.clear()
        target.update(saved)


class Snapshot:
    """Everything surgery may change, kept so that ``restore()`` undoes it exactly.

    Costs one copy of the parameters and buffers (surgery replaces tensors rather than
    writing into them, but a faulty or custom pruner might write in place).
    """

    def __init__(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                 follow: Sequence[MutableMapping[Any, torch.Tensor]] = ()):
        self.modules = [(m, {k: (v, _contents(v)) for k, v in m.__dict__.items()})
                        for m in model.modules()]
        tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
        self.tensors = [(t, t.detach().clone(), tensor_version(t), t.grad) for t in tensors.values()]
        self.follow = [(mapping, dict(mapping)) for mapping in follow]
        self.optimizer = optimizer
        if optimizer is not None:
            self.groups = [(g, dict(g), list(g["params"])) for g in optimizer.param_groups]
            self.state = [(p, s, dict(s)) for p, s in optimizer.state.items()]

    def restore(self) -> None:
        """Put the model and optimizer back exactly as they were at construction."""
        for module, attrs in self.modules:
            module.__dict__.clear()
            for key, (value, contents) in attrs.items():
                if contents is not None:
                    _refill(value, contents)
                module.__dict__[key] = value
        with torch.no_grad():
            for t, value, version, grad in self.tensors:
                if tensor_version(t) != version or t.shape != value.shape:
                    t.data = value
                t.grad = grad
        for mapping, entries in self.follow:
            _refill(mapping, entries)
        if self.optimizer is not None:
            for group, entries, params in self.groups:
                group.clear()
                group.update(entries)
                group["params"] = params
            self.optimizer.state.clear()
            for p, s, entries in self.state:
                _refill(s, entries)
                self.optimizer.state[p] = s


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """Every tensor of a model's output, in a fixed order (tuples, lists, dicts, dataclasses)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in out for t in flatten_outputs(out[k])]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in flatten_outputs(v)]
    if hasattr(out, "__dataclass_fields__"):
        return [t for k in out.__dataclass_fields__ for t in flatten_outputs(getattr(out, k))]
    return []


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance for a removal that only reorders sums: sqrt(machine eps) / 4."""
    return (torch.finfo(dtype).eps ** 0.5) / 4 if dtype.is_floating_point else 0.0


def compare_outputs(before: list[torch.Tensor], after: list[torch.Tensor]) -> str:
    """'' when the outputs agree; otherwise a one-line description of the first difference."""
    if len(before) != len(after):
        return f"the model returned {len(after)} tensors instead of {len(before)}"
    for k, (a, b) in enumerate(zip(before, after)):
        if a.shape != b.shape:
            return f"output {k} changed shape from {tuple(a.shape)} to {tuple(b.shape)}"
        if not a.dtype.is_floating_point:
            if not torch.equal(a, b):
                return f"output {k} changed"
            continue
        a64, b64 = a.double(), b.double()
        finite = torch.isfinite(a64)
        if not torch.equal(finite, torch.isfinite(b64)):
            return f"output {k} gained or lost non-finite values"
        if not finite.any():
            continue
        scale = float(torch.maximum(a64[finite].abs().max(), b64[finite].abs().max()))
        err = float((a64[finite] - b64[finite]).abs().max()) if finite.any() else 0.0
        if err > tolerance(a.dtype) * max(scale, 1e-30):
            return f"output {k} changed by {err:.3g} (relative {err / max(scale, 1e-30):.3g})"
    return ""
