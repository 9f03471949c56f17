"""Training-time methods as small objects hooked into the training loop's events.

A method (dense, DemP, or a baseline) sees the loop through five calls, Lightning-callback
style: ``setup`` before the first step, ``penalty`` added to each loss, ``after_step`` after
each optimizer step, ``on_epoch_end`` and ``finish``.  Removal events return a
RemovalReport so the loop can log them.  On resume the loop calls ``load_state_dict`` and
then ``setup`` (with the model already at its pruned widths).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn

from demp.errors import DempError
from demp.core.pruner import DemonPruner
from demp.core.surgery import RemovalReport


@dataclass
class MethodConfig:
    """Settings of every method; each method reads the ones it needs."""
    name: str = "demp"
    # DemP
    reg_peak: float = 1e-3
    noise_peak: float = 5e-5
    prune_every: int = 1000
    schedule: str = "one_cycle"
    reg_span: float = 1.0           # fraction of training the schedules cover
    reg_form: str = "l1"
    reg_target: str = "norm_scales"
    noise_mode: str = "live"
    noise_every: int = 1
    probe_size: int = 1536          # training images in each dead check
    probe_batch: int = 512
    quasi_eps: tuple[float, ...] = ()
    min_units: int = 1
    # baselines
    target: float = 0.5             # fraction of units to remove
    rounds: int = 5                 # pruning rounds for SNAP / CroP-it-S
    score_batches: int = 4          # training batches for saliency scores
    slimming_reg: float = 1e-4      # L1 on BN gamma for network slimming
    prune_at: float = 0.5           # slimming: fraction of training at which to prune
    prune_start: float = 0.1        # magnitude/random: cubic schedule start (fraction)
    prune_end: float = 0.6          # magnitude/random: cubic schedule end (fraction)
    prune_steps: int = 5            # magnitude/random: number of pruning events


@dataclass
class MethodContext:
    """What a method may use: the live model/optimizer and ways to read training data."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    example_inputs: torch.Tensor
    probe: list[torch.Tensor]                        # un-augmented training images
    total_steps: int
    steps_per_epoch: int
    train_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]  # n -> n batches
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    seed: int = 0


class Method:
    """Base method: dense training (no penalty, no removal)."""

    name = "dense"

    def __init__(self, config: MethodConfig):
        self.config = config
        self.ctx: Optional[MethodContext] = None

    def setup(self, ctx: MethodContext) -> Optional[RemovalReport]:
        self.ctx = ctx
        return None

    def penalty(self) -> torch.Tensor | float:
        return 0.0

    def after_step(self, step: int, loss: Optional[torch.Tensor] = None) -> Optional[RemovalReport]:
        return None

    def on_epoch_end(self, epoch: int) -> Optional[RemovalReport]:
        return None

    def finish(self) -> Optional[RemovalReport]:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class DemPMethod(Method):
    """Demon Pruning through DemonPruner."""

    name = "demp"
    _resume_state: Optional[dict] = None

    def setup(self, ctx: MethodContext) -> Optional[RemovalReport]:
        super().setup(ctx)
        c = self.config
        self.pruner = DemonPruner(
            ctx.model, ctx.optimizer, ctx.example_inputs, total_steps=ctx.total_steps,
            probe=ctx.probe, reg_peak=c.reg_peak, noise_peak=c.noise_peak,
            prune_every=c.prune_every, schedule=c.schedule,
            reg_span=max(1, round(c.reg_span * ctx.total_steps)), reg_form=c.reg_form,
            reg_target=c.reg_target, noise_mode=c.noise_mode, noise_every=c.noise_every,
            quasi_eps=tuple(c.quasi_eps), min_units=c.min_units, seed=ctx.seed)
        if self._resume_state is not None:
            self.pruner.load_state_dict(self._resume_state)
            self._resume_state = None
        return None

    def penalty(self) -> torch.Tensor:
        return self.pruner.penalty()

    def after_step(self, step: int, loss: Optional[torch.Tensor] = None) -> Optional[RemovalReport]:
        return self.pruner.step(loss)

    def finish(self) -> Optional[RemovalReport]:
        return self.pruner.finish()

    def state_dict(self) -> dict:
        return self.pruner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore now if set up, else when ``setup`` builds the pruner (the resume order)."""
        if hasattr(self, "pruner"):
            self.pruner.load_state_dict(state)
        else:
            self._resume_state = state


METHODS: dict[str, type[Method]] = {"dense": Method, "demp": DemPMethod}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method under its ``name``."""
    METHODS[cls.name] = cls
    return cls


def create_method(config: MethodConfig) -> Method:
    """The method named by ``config.name``; unknown names list the valid ones."""
    from demp.app.methods import baselines  # noqa: F401  (registers the baseline methods)
    if config.name not in METHODS:
        raise DempError(f"unknown method '{config.name}'; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[config.name](config)
