"""Gaussian noise on the parameters of live units only (spec section 4).

After each optimizer step: theta <- theta + sigma_t * m * N(0, I), outside the optimizer.
``m`` marks entries that received a non-zero gradient from the *task* loss this step; the
regulariser's own gradient is subtracted first, so a dead unit's penalised scale does not
count as live.  Dead units therefore never get kicked back: the demon's one-way door.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .errors import DempError

NOISE_MODES = ("live", "all", "dead")


def live_mask(p: torch.Tensor, penalty_grad: Optional[torch.Tensor]) -> torch.Tensor:
    """Entries whose task-loss gradient is non-zero (grad minus the penalty's exact share)."""
    if p.grad is None:
        return torch.zeros_like(p, dtype=torch.bool)
    if penalty_grad is None:
        return p.grad != 0
    return p.grad != penalty_grad


class NoiseInjector:
    """Draws the noise from its own seeded generator, so runs are reproducible and resumable."""

    def __init__(self, mode: str = "live", seed: int = 0, device: torch.device | str = "cpu"):
        if mode not in NOISE_MODES:
            raise DempError(f"unknown noise mode '{mode}'; choose one of {', '.join(NOISE_MODES)}")
        self.mode = mode
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    @torch.no_grad()
    def apply(self, params: Sequence[torch.Tensor], sigma: float,
              penalty_grads: dict[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Add ``sigma`` * mask * N(0, I) to every trainable parameter, in place."""
        params = [p for p in params if p.requires_grad]
        if sigma <= 0 or not params:
            return
        sizes = [p.numel() for p in params]
        flat = torch.randn(sum(sizes), generator=self.generator, device=params[0].device,
                           dtype=params[0].dtype)
        noises = [n.view_as(p) for n, p in zip(flat.split(sizes), params)]
        if self.mode != "all":
            pg = penalty_grads or {}
            for p, n in zip(params, noises):
                live = live_mask(p, pg.get(p))
                n.mul_(live if self.mode == "live" else ~live)
        torch._foreach_add_(params, noises, alpha=sigma)

    def state_dict(self) -> dict:
        return {"mode": self.mode, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.mode = state["mode"]
        self.generator.set_state(state["generator"])
