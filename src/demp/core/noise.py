"""Gaussian noise on the parameters of live units only (docs/method.md, "The noise").

After each optimizer step: theta <- theta + sigma_t * m * N(0, I), outside the optimizer.
``m`` marks entries that received a non-zero gradient from the *task* loss this step; the
regulariser's own gradient is subtracted first, so a dead unit's penalised scale does not
count as live.  Dead units therefore never get kicked back: the demon's one-way door.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import torch

from demp.errors import DempError

NOISE_MODES = ("live", "all", "dead")


def live_mask(p: torch.Tensor, penalty_grad: Optional[torch.Tensor]) -> torch.Tensor:
    """Entries whose task-loss gradient is non-zero (grad minus the penalty's exact share)."""
    if p.grad is None:
        return torch.zeros_like(p, dtype=torch.bool)
    if penalty_grad is None:
        return p.grad != 0
    return p.grad != penalty_grad


STREAMS = 4
"""Independent generator streams; the noise is drawn in STREAMS chunks, in parallel on CPU."""


class NoiseInjector:
    """Draws the noise from its own seeded generators, so runs are reproducible and resumable.

    Drawing a Gaussian per parameter is the main per-step cost of DemP; on CPU one generator
    runs on one core, so the draw is split over fixed streams filled by parallel threads
    (fixed, so the numbers do not depend on the thread count).
    """

    def __init__(self, mode: str = "live", seed: int = 0, device: torch.device | str = "cpu"):
        if mode not in NOISE_MODES:
            raise DempError(f"unknown noise mode '{mode}'; choose one of {', '.join(NOISE_MODES)}")
        self.mode = mode
        self.generators = [torch.Generator(device=device) for _ in range(STREAMS)]
        for i, g in enumerate(self.generators):
            g.manual_seed(seed * STREAMS + i)
        self._pool: Optional[ThreadPoolExecutor] = None

    def _draw(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """n standard normals from the streams (threads only help on CPU)."""
        flat = torch.empty(n, device=like.device, dtype=like.dtype)
        jobs = list(zip(flat.chunk(STREAMS), self.generators))
        if like.device.type == "cpu" and torch.get_num_threads() > 1 and n >= 1 << 16:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(min(STREAMS, torch.get_num_threads()))
            list(self._pool.map(lambda job: job[0].normal_(generator=job[1]), jobs))
        else:
            for chunk, g in jobs:
                chunk.normal_(generator=g)
        return flat

    @torch.no_grad()
    def apply(self, params: Sequence[torch.Tensor], sigma: float,
              penalty_grads: dict[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Add ``sigma`` * mask * N(0, I) to every trainable parameter, in place."""
        params = [p for p in params if p.requires_grad]
        if sigma <= 0 or not params:
            return
        sizes = [p.numel() for p in params]
        flat = self._draw(sum(sizes), params[0])
        noises = [n.view_as(p) for n, p in zip(flat.split(sizes), params)]
        if self.mode == "all":
            torch._foreach_add_(params, noises, alpha=sigma)
            return
        pg = penalty_grads or {}
        for p, n in zip(params, noises):
            live = live_mask(p, pg.get(p))
            p.addcmul_(n, live if self.mode == "live" else ~live, value=sigma)

    def state_dict(self) -> dict:
        return {"mode": self.mode, "generators": [g.get_state() for g in self.generators]}

    def load_state_dict(self, state: dict) -> None:
        self.mode = state["mode"]
        for g, s in zip(self.generators, state["generators"]):
            g.set_state(s)
