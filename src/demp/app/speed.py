"""Memory format and mixed precision of the training steps, chosen by measuring on this machine.

What is fast differs by CPU: on an AVX-512 Xeon with native bf16 a VGG step was 1.7x faster in
channels-last with bf16 autocast; on an AVX2 EPYC bf16 is emulated and 30x slower, while
channels-last alone is 5-10x faster than the default.  So with ``auto`` the CPU formats are
timed at the start of a run (a few forward+backward passes of the real model on a real batch,
in alternating rounds) and the fastest is used.  bf16 is a candidate only where oneDNN runs it
natively, and must beat float32 by ``BF16_MARGIN`` (it changes the numerics).  On CUDA, AMP
(bf16, else fp16) and channels-last are used without measuring.  Dead checks always run in
float32.  The choice is made once per run and kept in the checkpoint (widths that shrink
later are not re-measured).
"""
from __future__ import annotations

import copy
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from demp.core.utils import kept_buffers
from demp.errors import DempError

CHANNELS_LAST = ("auto", "on", "off")
AUTOCASTS = ("auto", "off", "bf16", "fp16")
MEASURE_MIN_STEPS = 200
"""Runs shorter than this take float32 without channels-last instead of measuring (the
measurement costs a few seconds, and short runs stay reproducible from machine to machine)."""
BF16_MARGIN = 1.1
"""bf16 must be this many times faster than the best float32 format to be chosen."""
ROUNDS = 3


@dataclass
class Speed:
    """Memory format and mixed precision of the training steps (dead checks stay float32)."""
    channels_last: bool
    autocast: str                        # off | bf16 | fp16
    device_type: str
    how: str = "configured"              # configured | measured | default (run too short to measure)
    step_ms: dict[str, float] = field(default_factory=dict)   # measured candidates

    @property
    def dtype(self) -> Optional[torch.dtype]:
        return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.autocast]

    @property
    def name(self) -> str:
        return f"{'float32' if self.autocast == 'off' else self.autocast}{' + channels-last' if self.channels_last else ''}"

    def record(self) -> dict:
        """What summary.json and the checkpoint keep."""
        return {**asdict(self), "format": self.name}

    @staticmethod
    def from_record(record: dict) -> "Speed":
        return Speed(**{k: v for k, v in record.items() if k != "format"})

    @staticmethod
    def choose(channels_last: str, autocast: str, device: torch.device, model: nn.Module,
               batch: tuple[torch.Tensor, torch.Tensor], total_steps: int,
               timer: Callable[[], float] = time.perf_counter) -> "Speed":
        """The format for this run: as configured, or measured where a setting is ``auto``."""
        if channels_last not in CHANNELS_LAST:
            raise DempError(f"train.channels_last must be one of {', '.join(CHANNELS_LAST)}, got {channels_last!r}")
        if autocast not in AUTOCASTS:
            raise DempError(f"train.autocast must be one of {', '.join(AUTOCASTS)}, got {autocast!r}")
        if device.type == "cuda":
            amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if autocast == "auto" else autocast
            return Speed(channels_last != "off", amp, "cuda", "configured")
        if autocast == "fp16":
            raise DempError("train.autocast 'fp16' needs a GPU; on CPU use 'bf16', 'off' or 'auto'")
        conv = any(p.dim() == 4 for p in model.parameters())
        layouts = [channels_last == "on"] if channels_last != "auto" else ([False, True] if conv else [False])
        dtypes = [autocast] if autocast != "auto" else ["off"] + (["bf16"] if bf16_native() else [])
        candidates = [(cl, dt) for dt in dtypes for cl in layouts]
        if len(candidates) == 1:
            cl, dt = candidates[0]
            return Speed(cl, dt, "cpu", "configured")
        if total_steps < MEASURE_MIN_STEPS:
            return Speed(channels_last == "on", "off" if autocast == "auto" else autocast, "cpu",
                         f"default (a run of {total_steps} steps is too short to measure)")
        times = measure(model, batch, candidates, timer)
        best = _pick(times)
        return Speed(best[0], best[1], "cpu", "measured", {_label(c): round(1e3 * t, 2) for c, t in times.items()})

    def autocast_context(self) -> Any:
        return torch.autocast(self.device_type, dtype=self.dtype) if self.dtype else nullcontext()

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)

    def model(self, model: nn.Module) -> nn.Module:
        """channels_last for 4-D weights (again after each removal); parameters keep their identity."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


def bf16_native() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 BF16 or AMX); else it is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _label(candidate: tuple[bool, str]) -> str:
    cl, dt = candidate
    return f"{'float32' if dt == 'off' else dt}{'+channels_last' if cl else ''}"


def _pick(times: dict[tuple[bool, str], float]) -> tuple[bool, str]:
    """The fastest float32 format, unless a bf16 one beats it by BF16_MARGIN."""
    fp32 = min((c for c in times if c[1] == "off"), key=times.get, default=None)
    low = min((c for c in times if c[1] != "off"), key=times.get, default=None)
    if fp32 is None or (low is not None and times[low] * BF16_MARGIN < times[fp32]):
        return low
    return fp32


def measure(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], candidates: list[tuple[bool, str]],
            timer: Callable[[], float] = time.perf_counter) -> dict[tuple[bool, str], float]:
    """Seconds per forward+backward pass of each candidate (median of ROUNDS alternating rounds).

    Each candidate runs on its own copy of the model; the model, its buffers and the RNG are
    left as they were.  A candidate whose warm-up pass is 4x slower than the fastest warm-up
    so far is dropped (emulated bf16 costs seconds per pass).
    """
    x, y = batch
    copies = {}
    with kept_buffers(model, rng=True):
        for cl, dt in candidates:
            m = copy.deepcopy(model).train()
            copies[(cl, dt)] = (m.to(memory_format=torch.channels_last) if cl else m,
                                x.contiguous(memory_format=torch.channels_last) if cl and x.dim() == 4 else x)

        def one(c: tuple[bool, str]) -> float:
            m, xb = copies[c]
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if c[1] == "bf16" else nullcontext()
            t0 = timer()
            with ctx:
                loss = F.cross_entropy(m(xb).float().flatten(0, -2), y.flatten())   # (B, T, V) logits too
            params = [p for p in m.parameters() if p.requires_grad]
            torch.autograd.grad(loss, params, allow_unused=True)
            return timer() - t0

        one(candidates[0])   # the first pass pays one-time costs (lazy kernels, allocator): no candidate's own
        warm: dict[tuple[bool, str], float] = {}
        for c in candidates:
            warm[c] = one(c)
        fastest = min(warm.values())
        alive = [c for c in candidates if warm[c] <= 4 * fastest]
        samples: dict[tuple[bool, str], list[float]] = {c: [] for c in alive}
        for _ in range(ROUNDS):
            for c in alive:
                samples[c].append(one(c))
    return {c: statistics.median(s) for c, s in samples.items()}
