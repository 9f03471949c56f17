"""Measured FLOP and parameter counts for the reported metrics (docs/method.md, "Reported metrics").

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``: one multiply-add counts as 2
FLOPs, and only matrix products, convolutions and attention are counted.  Biases,
normalisation, activations, pooling and other elementwise work add nothing, so a
``Linear(10, 5)`` costs 2*10*5 = 100 FLOPs per example with or without its bias.

Attention is counted on the CPU too: torch's counter knows the CUDA kernels of
``scaled_dot_product_attention`` but not the CPU one, and ``nn.MultiheadAttention``'s eval-mode
fast path is one fused op it does not know at all (a ViT's inference FLOPs left out every
attention layer).  ``counter()`` adds the CPU kernel's formulas and turns the fast path off while
counting, so the attention of a transformer is in every count.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from demp.core.detection import call_model
from demp.core.utils import eval_mode, kept_buffers, kept_modes


def _cpu_sdpa(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of the CPU attention kernel's forward (the CUDA kernels' formula)."""
    return flop_counter.sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None,
                       **kwargs: Any) -> int:
    """FLOPs of the CPU attention kernel's backward."""
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward}
"""Formulas for the CPU attention kernels, which torch's counter lacks."""


@contextmanager
def counter() -> Iterator[FlopCounterMode]:
    """A FlopCounterMode that counts attention on the CPU (and MultiheadAttention's fast path)."""
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as mode:
            yield mode
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def _counted(run: Callable[[], object]) -> int:
    """FLOPs executed by ``run()``."""
    with counter() as mode:
        run()
    return mode.get_total_flops()


def _one_example(example: Any) -> Any:
    """A tensor input cut to one example; a tuple or dict of inputs is counted as given."""
    return example[:1] if isinstance(example, torch.Tensor) else example


def forward_flops(model: nn.Module, example: Any) -> int:
    """Inference FLOPs in eval mode without autograd: per example for a tensor input
    (``example[:1]``), per call for a tuple of positional or a dict of keyword inputs."""
    with eval_mode(model), torch.no_grad():
        return _counted(lambda: call_model(model, _one_example(example)))


def module_flops(model: nn.Module, example: Any) -> dict[nn.Module, int]:
    """Inference FLOPs of each submodule (its calls summed), counted as ``forward_flops`` counts."""
    with eval_mode(model), torch.no_grad(), counter() as mode:
        call_model(model, _one_example(example))
    by_name = {f"{type(model).__name__}.{name}": m for name, m in model.named_modules() if name}
    return {by_name[name]: sum(ops.values()) for name, ops in mode.get_flop_counts().items()
            if name in by_name}


def train_step_flops(model: nn.Module, example: torch.Tensor) -> int:
    """Forward+backward FLOPs per example in train mode, leaving the model exactly as found.

    Two examples are run (BatchNorm1d cannot train on one) and the count is halved; the
    counted ops are linear in the batch size.  Gradients go through ``torch.autograd.grad``,
    so ``.grad`` fields are never touched, and only trainable parameters get gradients, as
    in a real step.  Modes, buffers and the RNG state are restored afterwards.
    """
    batch = example[:2]
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        out = model(batch)
        if out.requires_grad:
            torch.autograd.grad(out, params, torch.ones_like(out), allow_unused=True)

    with kept_modes(model), kept_buffers(model, rng=True):
        model.train()
        return _counted(step) // len(batch)

