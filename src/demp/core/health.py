"""Whether the network is still alive: collapse detection at the dead checks.

A push that is too strong kills the network, not some of its units: the outputs become
(nearly) constant and the accuracy falls to chance, while a budget counting removed units
reports success.  At every dead check the pruner measures the probe outputs (in the same
eval-mode pass, with the same re-estimated statistics) and ``CollapseWatch`` compares them
with what came before:

- with (input, target) probe batches: the probe loss (cross-entropy over the last dimension
  of the first output).  A collapse is a jump to ``jump`` times the lowest loss seen so far
  that also lands within reach of guessing: at least ``near_chance`` times the chance-level
  loss, log(number of classes).  A loss that rises but stays far from chance is a dent that
  training may recover from, not a dead network (the DDP example's digits CNN went from 0.18
  to 1.18 when four units died, and trains on);
- always: the spread of the outputs (the standard deviation of each output across the probe
  examples, averaged).  A collapse is a spread below ``flat`` times the largest seen so far:
  outputs that no longer depend on the input.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F

from demp.core.verify import flatten_outputs


@dataclass
class ProbeOutputs:
    """Running sums over the probe batches of one check: loss and output moments."""
    loss_sum: float = 0.0
    loss_count: int = 0
    labelled: bool = True
    classes: int = 0
    _sum: Optional[torch.Tensor] = None
    _sq: Optional[torch.Tensor] = None
    _n: int = 0

    def add(self, batch: Any, output: Any) -> None:
        """Account for one probe batch and the model's output on it."""
        tensors = flatten_outputs(output)
        if not tensors or not tensors[0].is_floating_point() or tensors[0].dim() < 2:
            self.labelled = False
            return
        logits = tensors[0].detach().float()
        flat = logits.reshape(-1, logits.shape[-1])
        self.classes = flat.shape[-1]
        target = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
        if (isinstance(target, torch.Tensor) and not target.is_floating_point()
                and target.numel() == flat.shape[0]):
            self.loss_sum += float(F.cross_entropy(flat, target.reshape(-1).to(flat.device), reduction="sum"))
            self.loss_count += flat.shape[0]
        else:
            self.labelled = False
        s, q = flat.sum(0), flat.pow(2).sum(0)
        self._sum = s if self._sum is None else self._sum + s
        self._sq = q if self._sq is None else self._sq + q
        self._n += flat.shape[0]

    @property
    def loss(self) -> Optional[float]:
        return self.loss_sum / self.loss_count if self.labelled and self.loss_count else None

    @property
    def spread(self) -> Optional[float]:
        """Mean over outputs of their standard deviation across the probe examples."""
        if self._sum is None or self._n < 2:
            return None
        mean = self._sum / self._n
        var = (self._sq / self._n - mean.pow(2)).clamp_min(0)
        return float(var.sqrt().mean())


@dataclass
class Collapse:
    """A detected collapse: when, what was seen, and the likely cause."""
    step: int
    signal: str          # "probe loss" | "output spread" | "final accuracy"
    before: float
    after: float
    cause: str

    def line(self) -> str:
        return (f"the network collapsed at step {self.step}: {self.signal} {self.before:.4g} -> "
                f"{self.after:.4g}; likely cause: {self.cause}")


@dataclass
class CollapseWatch:
    """Compares each check's probe measurements with the earlier ones (state is plain numbers)."""
    jump: float = 1.5
    near_chance: float = 0.75
    flat: float = 0.05
    best_loss: Optional[float] = None
    top_spread: Optional[float] = None
    history: list[dict] = field(default_factory=list)

    def observe(self, step: int, seen: ProbeOutputs, cause: str) -> Optional[Collapse]:
        """Record one check; a Collapse when it shows one (``cause``: the likely reason)."""
        loss, spread = seen.loss, seen.spread
        self.history.append({"step": step, "loss": loss, "spread": spread})
        found = None
        if loss is not None and self.best_loss is not None:
            chance = math.log(max(2, seen.classes))
            if loss >= self.jump * self.best_loss and loss >= self.near_chance * chance:
                found = Collapse(step, "probe loss", self.best_loss, loss, cause)
        if found is None and spread is not None and self.top_spread and spread < self.flat * self.top_spread:
            found = Collapse(step, "output spread", self.top_spread, spread, cause)
        if loss is not None:
            self.best_loss = loss if self.best_loss is None else min(self.best_loss, loss)
        if spread is not None:
            self.top_spread = spread if self.top_spread is None else max(self.top_spread, spread)
        return found

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def at_chance(accuracy: float, num_classes: int, margin: float = 1.25) -> bool:
    """Whether an accuracy is no better than guessing (within ``margin`` times 1/classes)."""
    return num_classes > 1 and accuracy <= margin / num_classes

