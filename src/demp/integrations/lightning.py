"""DemP for an unmodified LightningModule: ``Trainer(callbacks=[DemonPruning(probe)])``.

The callback creates a ``DemonPruner`` when fitting starts, adds the penalty's exact gradient
after each backward (the module's ``training_step`` and loss stay as they are), and after each
optimizer step applies the noise and, every ``prune_every`` steps, the dead check and removal,
which slices the optimizer Lightning holds in place (its LR schedulers keep working).
Checkpoints carry the pruned widths and the pruner's state: ``fit(ckpt_path=...)`` resizes
the module before Lightning loads the weights, and ``load_checkpoint(cls, path)`` does the
same for a fresh module outside a trainer.  One process, one optimizer (DDP under Lightning
would need its wrapper rebuilt after each removal, which Lightning's strategies do not offer).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Optional, TypeVar

import torch

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError("demp.integrations.lightning needs Lightning: pip install 'demp[lightning]' "
                      "(from a checkout: pip install -e '.[lightning]')") from None

from demp.core.persist import module_shapes, resize_to
from demp.core.detection import batch_input
from demp.core.pruner import DemonPruner, DemPConfig
from demp.errors import DempError

SHAPES_KEY = "demp_shapes"
"""Checkpoint entry holding the pruned module's width attributes (``module_shapes``)."""

M = TypeVar("M", bound=pl.LightningModule)


class DemonPruning(pl.Callback):
    """Demon Pruning as a Lightning callback.

    ``probe``: re-iterable batches of un-augmented training inputs (tensors or (input, target)
    pairs) on the module's device; ``example_inputs``: what the module is called with during
    removal (default: two examples of the first probe batch).  Other settings are
    ``DemPConfig``'s, as ``config`` or keywords.  ``pruner`` exists once fitting has started.
    """

    def __init__(self, probe: Iterable[Any], *, example_inputs: Any = None, calibration: Optional[Iterable[Any]] = None,
                 config: Optional[DemPConfig] = None, **options: Any):
        self.probe, self.calibration, self.config, self.options = probe, calibration, config, options
        self.example_inputs = example_inputs
        self.pruner: Optional[DemonPruner] = None
        self._resume_state: Optional[dict] = None
        self._stepped = -1                 # trainer.global_step at the last pruner step

    # ---- fitting
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Make Lightning's checkpoint restore resize the module first (before its weights load)."""
        if getattr(pl_module, "_demp_resizes_on_load", False):
            return
        pl_module._demp_resizes_on_load = True
        user_hook = pl_module.on_load_checkpoint

        def on_load_checkpoint(checkpoint: dict) -> None:
            resize_to_checkpoint(pl_module, checkpoint)
            user_hook(checkpoint)
        pl_module.on_load_checkpoint = on_load_checkpoint

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            raise DempError("DemonPruning runs in one process; for several, train with DemonPruner and "
                            "demp.integrations.ddp.PrunableDDP (or `demp train` under torchrun)")
        if len(trainer.optimizers) != 1:
            raise DempError(f"DemonPruning needs exactly one optimizer holding the module's parameters, "
                            f"got {len(trainer.optimizers)}")
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise DempError("DemonPruning needs a finite training length: give the Trainer max_steps or max_epochs")
        example = self.example_inputs
        if example is None:
            example = batch_input(next(iter(self.probe)))[:2]
        self.pruner = DemonPruner(pl_module, trainer.optimizers[0], example, int(total), self.probe,
                                  calibration=self.calibration, config=self.config, **self.options)
        if self._resume_state is not None:
            self.pruner.load_state_dict(self._resume_state)
            self._resume_state = None
        self._stepped = trainer.global_step

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The penalty's gradient, scaled like the task gradients (AMP loss scale, accumulation)."""
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        loss_scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        self.pruner.add_penalty_grad(loss_scale / trainer.accumulate_grad_batches)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        """After an optimizer step: noise, and the periodic dead check and removal."""
        if trainer.global_step == self._stepped:
            return          # gradients are still accumulating
        self._stepped = trainer.global_step
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self.pruner.step(loss if isinstance(loss, torch.Tensor) else None)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Final dead check and removal once the last step has run."""
        self.pruner.finish()

    # ---- checkpoints
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[SHAPES_KEY] = module_shapes(pl_module)

    def state_dict(self) -> dict:
        return self.pruner.state_dict() if self.pruner is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        """Kept until fitting starts (the pruner is built then, on the resized module)."""
        self._resume_state = state_dict or None


def resize_to_checkpoint(module: torch.nn.Module, checkpoint: dict) -> None:
    """Shrink a full-width module to the widths a DemonPruning checkpoint recorded (no-op without them)."""
    shapes = checkpoint.get(SHAPES_KEY)
    if shapes is not None:
        resize_to(module, shapes, checkpoint["state_dict"], f"a fresh {type(module).__name__}")


@contextmanager
def _resizing_loads(cls: type) -> Iterator[None]:
    """``cls.on_load_checkpoint`` resizes the module first, inside the block."""
    own = "on_load_checkpoint" in vars(cls)
    user_hook = cls.on_load_checkpoint

    def on_load_checkpoint(self: pl.LightningModule, checkpoint: dict) -> None:
        resize_to_checkpoint(self, checkpoint)
        user_hook(self, checkpoint)
    cls.on_load_checkpoint = on_load_checkpoint
    try:
        yield
    finally:
        if own:
            cls.on_load_checkpoint = user_hook
        else:
            del cls.on_load_checkpoint


def load_checkpoint(cls: type[M], path: str, **kwargs: Any) -> M:
    """``cls.load_from_checkpoint(path, **kwargs)`` for a checkpoint of a pruned run: the fresh
    module is built at full width, resized to the saved widths, then the weights load strictly."""
    with _resizing_loads(cls):
        return cls.load_from_checkpoint(path, **kwargs)
