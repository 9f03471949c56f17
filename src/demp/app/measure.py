"""What a run measures: the size of the current architecture, test accuracy (and bits per byte
for text), live units, and the summary a paper reports (FLOPs counted by ``torch.utils.flop_counter``)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from demp.core.batchnorm import recalibrated
from demp.core.detection import list_sites, scan_units
from demp.core.flops import forward_flops, train_step_flops
from demp.core.utils import count_params, eval_mode

FLOPS_NOTE = "FLOPs = 2 x multiply-adds of matmuls/convs/attention (torch FlopCounterMode)"


class CrossEntropy(nn.CrossEntropyLoss):
    """Cross-entropy over the logits' last dimension: (B, C) image logits and (B, T, V) next-byte
    logits alike (every position of a sequence is one prediction)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(logits.flatten(0, -2), target.flatten())


def bits_per_byte(loss_nats: float) -> float:
    """Mean next-byte cross-entropy in nats as bits per byte (lower is better)."""
    return loss_nats / math.log(2)


@dataclass
class Arch:
    """Size of the current architecture (recounted only after a removal)."""
    units: int
    params: int
    fwd_flops: int           # per example, inference
    train_flops: int         # per example, forward + backward
    widths: dict[str, int]

    @staticmethod
    def measure(model: nn.Module, example: torch.Tensor) -> "Arch":
        sites = list_sites(model, example)
        return Arch(sum(s.width for s in sites), count_params(model), forward_flops(model, example),
                    train_step_flops(model, example), {s.name: s.width for s in sites})


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, autocast: Callable[[], Any],
             calibration: Optional[list] = None) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over every prediction of a whole loader, in eval mode
(text: every position of every sequence, so the loss is nats per byte).

    With ``calibration`` batches, BatchNorm statistics are re-estimated on them first (and
    restored after).
    """
    if calibration is not None:
        with recalibrated(model, calibration):
            return evaluate(model, loader, autocast)
    correct, loss_sum, n = 0, 0.0, 0
    with eval_mode(model):
        for x, y in loader:
            with autocast():
                logits = model(x)
            logits, y = logits.flatten(0, -2), y.flatten()
            loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
    return correct / n, loss_sum / n


def live_units(model: nn.Module, probe: list[torch.Tensor]) -> dict[str, int]:
    """Units per site that are alive (non-zero somewhere) on the probe images."""
    scan = scan_units(model, probe)
    return {s.name: s.width - int(scan.dead[s.name].sum()) for s in scan.sites}


def run_summary(initial: dict, arch: Arch, final: dict, counters: dict, about: dict) -> dict:
    """The numbers a paper reports about one run: accuracy (text: and bits per byte), sizes
    before/after, FLOPs, time."""
    bpb = {"test_bpb": final["test_bpb"], "best_bpb": counters["best_bpb"]} if "test_bpb" in final else {}
    return {
        "test_acc": final["test_acc"], "test_loss": final["test_loss"], "best_acc": counters["best_acc"], **bpb,
        "units_initial": initial["units"], "units_final": arch.units,
        "units_remaining": arch.units / initial["units"],
        "params_initial": initial["params"], "params_final": arch.params,
        "params_remaining": arch.params / initial["params"],
        "fwd_flops_initial": initial["fwd_flops"], "fwd_flops_final": arch.fwd_flops,
        "fwd_flops_remaining": arch.fwd_flops / initial["fwd_flops"],
        "train_flops": counters["train_flops"], "flops_note": FLOPS_NOTE,
        "wall_s": counters["wall_s"], "eval_s": counters["eval_s"], "prune_events": counters["prune_events"],
        **about, "widths_final": arch.widths, "live_units_final": final["live_units"],
    }
