"""Unstructured sparsity next to unit removal: masks owned by demp, gradual magnitude pruning and
RigL (docs/method.md, "Sparse training").

``Sparsifier`` keeps one boolean mask per Conv/Linear weight as its own state (a dict from the
weight parameter to its mask; not a parametrization, whose tensors must never change shape).
After every optimizer step it sets masked weights, and their optimizer state, to zero.  Every
``every`` steps it updates the masks:

- ``gmp`` (Zhu & Gupta 2017): density falls from 1 to each layer's target on a cubic schedule
  between fractions ``start`` and ``end`` of training (0.3 and 0.8), keeping the largest weights;
- ``rigl`` (Evci et al. 2020): starts at the target density (random masks); until ``end`` (0.75)
  it drops the smallest active weights, a fraction ``drop_fraction`` (0.3) of them decayed by a
  cosine, and grows as many where the dense gradient is largest, grown weights starting at zero.

Per-layer targets follow ERK (density proportional to the sum over the product of the weight's
dimensions, capped at 1) or are uniform; the first layer (reading the input) stays dense.
Removing units slices a weight; pass ``masks`` to ``remove_units(follow=...)`` (or
``DemonPruner.follow``) and the masks are sliced with it in the same all-or-nothing removal.
A layer's target stays a fraction of its current (live) weights.  With DemP, call
``sparsifier.step()`` after ``pruner.step()``: the noise then never survives on a masked weight.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
import torch.nn as nn

from demp.core.detection import call_model, check_inputs
from demp.core.flops import forward_flops, module_flops
from demp.core.utils import eval_mode
from demp.errors import DempError

SPARSE_METHODS = ("gmp", "rigl")
DISTRIBUTIONS = ("erk", "uniform")
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)
DEFAULT_END = {"gmp": 0.8, "rigl": 0.75}


@dataclass
class SparseConfig:
    """Settings of unstructured sparse training."""
    method: str = "rigl"           # gmp | rigl (none: no sparsity; the run config's default)
    density: float = 0.2           # fraction of each sparse layer's weights kept (overall, by ERK)
    distribution: str = "erk"      # erk | uniform
    every: int = 100               # steps between mask updates
    drop_fraction: float = 0.3     # rigl: fraction of active weights dropped and regrown (cosine-decayed)
    start: float = 0.3             # gmp: fraction of training where density starts falling
    end: Optional[float] = None    # gmp: target reached here (0.8); rigl: last update (0.75)
    seed: int = 0

    def validate(self) -> "SparseConfig":
        """Raise DempError naming the first bad setting; return self."""
        end = self.last
        checks = [
            (self.method in SPARSE_METHODS + ("none",),
             f"unknown sparse method '{self.method}'; choose one of none, {', '.join(SPARSE_METHODS)}"),
            (0 < self.density <= 1, f"sparse density must be the fraction of weights kept, in (0, 1], got {self.density}"),
            (self.distribution in DISTRIBUTIONS,
             f"unknown sparse distribution '{self.distribution}'; choose one of {', '.join(DISTRIBUTIONS)}"),
            (self.every >= 1, f"sparse every must be >= 1 step, got {self.every}"),
            (0 <= self.drop_fraction < 1, f"sparse drop_fraction must be in [0, 1), got {self.drop_fraction}"),
            (0 <= self.start < end <= 1, f"sparse start and end must satisfy 0 <= start < end <= 1, got {self.start}, {end}"),
        ]
        for ok, message in checks:
            if not ok:
                raise DempError(message)
        return self

    @property
    def last(self) -> float:
        """``end``, or the method's default."""
        return self.end if self.end is not None else DEFAULT_END.get(self.method, 0.8)


def sparse_layers(model: nn.Module, example_inputs: Any) -> list[tuple[str, nn.Module]]:
    """Conv and Linear layers in call order, without the first one (it reads the input)."""
    order: list[tuple[str, nn.Module]] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = [m.register_forward_hook(lambda m, i, o: order.append((names[m], m)) if (names[m], m) not in order else None)
             for m in model.modules() if isinstance(m, _LAYERS)]
    try:
        with eval_mode(model), torch.no_grad():
            call_model(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return order[1:]


def erk_densities(shapes: dict[str, tuple[int, ...]], density: float, distribution: str = "erk") -> dict[str, float]:
    """Per-layer densities whose weighted mean is ``density``: ERK (proportional to the sum over
    the product of the dimensions, layers capped at 1 dense) or uniform."""
    if distribution == "uniform" or density >= 1:
        return {n: density for n in shapes}
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = density * sum(sizes.values()) - sum(sizes[n] for n in dense)
        free = {n: raw[n] * sizes[n] for n in shapes if n not in dense}
        eps = budget / sum(free.values())
        capped = [n for n in free if eps * raw[n] > 1]
        if not capped:
            return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}
        dense.update(capped)


def _keep_largest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A mask of the ``k`` largest entries of ``scores`` (ties by position)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        mask[torch.topk(scores.flatten(), k, sorted=False).indices] = True
    return mask.view_as(scores)


class Sparsifier:
    """Masks on the Conv/Linear weights of ``model`` (the first layer dense), kept by demp.

    Call ``step()`` after every optimizer step (after ``DemonPruner.step()`` when both run).
    The masks are drawn and applied at once; with ``state`` (a ``state_dict()``, to resume) they
    are the saved ones and the model, already holding its saved weights, is left as it is.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, example_inputs: Any,
                 total_steps: int, config: Optional[SparseConfig] = None, state: Optional[dict] = None,
                 **options: Any):
        self.config = SparseConfig(**{**(asdict(config) if config else {}), **options}).validate()
        if self.config.method == "none":
            raise DempError("sparse method 'none' makes nothing sparse; choose gmp or rigl")
        check_inputs(example_inputs, "example_inputs")
        if total_steps < 1:
            raise DempError(f"total_steps must be >= 1, got {total_steps}")
        layers = sparse_layers(model, example_inputs)
        if not layers:
            raise DempError(f"{type(model).__name__} has no Conv or Linear layer besides the first: "
                            "nothing to make sparse")
        self.model, self.optimizer, self.total_steps = model, optimizer, total_steps
        self.layers = dict(layers)                              # name -> module (modules outlive surgery)
        c = self.config
        self.densities = erk_densities({n: tuple(m.weight.shape) for n, m in layers}, c.density, c.distribution)
        g = torch.Generator().manual_seed(c.seed)
        self.masks: dict[nn.Parameter, torch.Tensor] = {}
        for name, m in layers:
            w = m.weight
            if c.method == "rigl":
                scores = torch.rand(w.shape, generator=g).to(w.device)
                self.masks[w] = _keep_largest(scores, self._target(name))
            else:
                self.masks[w] = torch.ones_like(w, dtype=torch.bool)
        self.step_count = 0
        if state is not None:
            self.load_state_dict(state)
        else:
            self.apply()

    # ------------------------------------------------------------------ per step
    def _target(self, name: str, density: Optional[float] = None) -> int:
        """Active weights the layer should hold now (a fraction of its current size)."""
        w = self.layers[name].weight
        return max(1, round((self.densities[name] if density is None else density) * w.numel()))

    @torch.no_grad()
    def apply(self) -> None:
        """Zero masked weights and the optimizer state of masked entries (one fused call)."""
        targets, masks = [], []
        for m in self.layers.values():
            w = m.weight
            mask = self.masks[w]
            for t in [w, *self.optimizer.state.get(w, {}).values()]:
                if torch.is_tensor(t) and t.shape == w.shape and t.is_floating_point():
                    targets.append(t)
                    masks.append(mask)
        torch._foreach_mul_(targets, masks)

    def step(self) -> None:
        """After an optimizer step: update the masks when due, then apply them."""
        c, t = self.config, self.step_count
        if t % c.every == 0 and t > 0:
            progress = t / self.total_steps
            if c.method == "gmp" and c.start <= progress <= c.last + c.every / self.total_steps:
                self._prune_to(min(1.0, (progress - c.start) / (c.last - c.start)))
            elif c.method == "rigl" and progress < c.last:
                self._drop_and_grow(c.drop_fraction / 2 * (1 + math.cos(math.pi * progress / c.last)))
        self.apply()
        self.step_count += 1

    @torch.no_grad()
    def _prune_to(self, done: float) -> None:
        """GMP: each layer keeps its largest weights, at density d + (1 - d)(1 - done)^3."""
        for name, m in self.layers.items():
            d = self.densities[name]
            w = m.weight
            mask = self.masks[w]
            keep = min(int(mask.sum()), self._target(name, d + (1 - d) * (1 - done) ** 3))
            self.masks[w] = _keep_largest(w.abs().masked_fill(~mask, -1.0), keep)

    @torch.no_grad()
    def _drop_and_grow(self, fraction: float) -> None:
        """RigL: drop the smallest active weights, grow where the dense gradient is largest; the
        layer ends at its target number of active weights (which follows its current size)."""
        for name, m in self.layers.items():
            w = m.weight
            if w.grad is None:
                continue
            mask = self.masks[w]
            active, target = int(mask.sum()), self._target(name)
            n_drop = math.floor(fraction * min(active, target))
            kept = _keep_largest(w.abs().masked_fill(~mask, -1.0), active - n_drop)
            grow = target - (active - n_drop)
            scores = w.grad.abs().masked_fill(kept, -1.0)
            grown = _keep_largest(scores, grow) & ~kept
            self.masks[w] = kept | grown
            w[grown] = 0.0                                     # grown weights start at zero
            for value in self.optimizer.state.get(w, {}).values():
                if torch.is_tensor(value) and value.shape == w.shape:
                    value[grown] = 0.0

    # ------------------------------------------------------------------ counts
    def density_of(self, name: str) -> float:
        """The fraction of a sparse layer's current weights that is active."""
        mask = self.masks[self.layers[name].weight]
        return float(mask.float().mean())

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """Step, settings, per-layer targets and the masks (by layer name)."""
        return {"step": self.step_count, "config": asdict(self.config), "densities": dict(self.densities),
                "masks": {n: self.masks[m.weight].cpu() for n, m in self.layers.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict()``; the model must already have the widths it was saved at."""
        if asdict(self.config) != state["config"]:
            raise DempError("sparse settings differ from the checkpoint; resume with the settings the run started with")
        for name, mask in state["masks"].items():
            w = self.layers[name].weight
            if tuple(mask.shape) != tuple(w.shape):
                raise DempError(f"sparse mask of '{name}' has shape {tuple(mask.shape)} but the layer's weight "
                                f"{tuple(w.shape)}; rebuild the model at its pruned widths first")
        self.masks.clear()                      # in place: remove_units(follow=...) holds this dict
        self.masks.update({self.layers[n].weight: mask.to(self.layers[n].weight.device)
                           for n, mask in state["masks"].items()})
        self.densities = dict(state["densities"])
        self.step_count = int(state["step"])


def nonzero_params(model: nn.Module) -> int:
    """Parameter entries that are not zero (masked weights count as gone)."""
    return sum(int(p.count_nonzero()) for p in model.parameters())


def sparse_flops(model: nn.Module, example: Any) -> int:
    """Forward FLOPs a sparse kernel would need: each Conv/Linear layer's FLOPs times the fraction
    of its weights that are non-zero (non-zero multiply-adds, as the RigL paper counts them)."""
    saved = sum(flops * (1 - int(m.weight.count_nonzero()) / m.weight.numel())
                for m, flops in module_flops(model, example).items() if isinstance(m, _LAYERS))
    return round(forward_flops(model, example) - saved)
