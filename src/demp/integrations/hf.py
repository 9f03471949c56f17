"""DemP for Hugging Face transformers: ``Trainer(callbacks=[DemonPruningCallback(probe)])``, and
saving/reloading pruned models at their per-layer widths.

The core accepts transformers models as they are (dict inputs, ``ModelOutput`` results with
key/value caches, GPT-2's ``Conv1D``); this module adds what a ``Trainer`` needs.  The callback
builds a ``DemonPruner`` when training starts, adds the penalty's exact gradient before each
optimizer step (once per step, whatever the gradient accumulation), and after the step applies
the noise and, every ``prune_every`` steps, the dead check and removal, which slices the torch
optimizer inside accelerate's wrapper in place (the wrapper and the LR scheduler keep working:
they share its param groups).

A pruned model's ``config.json`` still describes the full widths, so plain ``from_pretrained``
cannot load it.  Its widths go into ``demp_shapes.json`` next to the weights (written by
``save_pretrained_pruned``, by the model's ``save_pretrained`` once the callback has seen it, so
by ``trainer.save_model()`` and every checkpoint); ``from_pretrained_pruned(ModelClass, path)``
builds the model from the config, shrinks it to those widths and loads the weights strictly.
``trainer.train(resume_from_checkpoint=...)`` resizes the model the same way before the weights
load, and the checkpoint's ``demp_pruner.pt`` restores the pruner.  One process, one optimizer.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, TypeVar

import torch
import torch.nn as nn

try:
    import safetensors.torch
    import transformers
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError("demp.integrations.hf needs transformers: pip install 'demp[hf]' "
                      "(from a checkout: pip install -e '.[hf]')") from None

from demp.core.atomic import atomic_write_bytes, atomic_write_json
from demp.core.detection import batch_input
from demp.core.persist import module_shapes, resize_to
from demp.core.pruner import DemonPruner, DemPConfig
from demp.core.utils import model_device
from demp.errors import DempError

SHAPES_FILE = "demp_shapes.json"
"""Written next to a pruned model's weights: every module's width attributes and tensor shapes."""
PRUNER_FILE = "demp_pruner.pt"
"""Written into each Trainer checkpoint: the pruner's state (step, noise generator, history, budget)."""
FORMAT = "demp.hf-shapes/1"
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")

M = TypeVar("M", bound=nn.Module)


# ----------------------------------------------------------------------------- widths on disk

def write_shapes(model: nn.Module, folder: str | Path) -> None:
    """Write ``demp_shapes.json`` for ``model`` into ``folder`` (atomically)."""
    atomic_write_json(Path(folder) / SHAPES_FILE, {
        "format": FORMAT, "class": type(model).__qualname__,
        "modules": {name: {a: list(v) if isinstance(v, tuple) else v for a, v in attrs.items()}
                    for name, attrs in module_shapes(model).items()},
        "tensors": {name: list(t.shape) for name, t in model.state_dict().items()}})


def read_shapes(folder: str | Path) -> dict[str, Any]:
    """The ``demp_shapes.json`` of ``folder`` (tuples restored); DempError when missing or foreign."""
    path = Path(folder) / SHAPES_FILE
    if not path.is_file():
        raise DempError(f"{folder} has no {SHAPES_FILE}: it was not saved by demp (save_pretrained_pruned, "
                        "or a Trainer with DemonPruningCallback); a model that was never pruned loads "
                        "with from_pretrained")
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DempError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise DempError(f"{path} is not a demp widths file (format {FORMAT})")
    saved["modules"] = {name: {a: tuple(v) if isinstance(v, list) else v for a, v in attrs.items()}
                        for name, attrs in saved["modules"].items()}
    return saved


def resize_to_pretrained(model: nn.Module, folder: str | Path) -> None:
    """Shrink a full-width ``model`` in place to the widths recorded in ``folder`` (values are left
    for the weights to load): before ``trainer.train(resume_from_checkpoint=folder)`` by hand."""
    saved = read_shapes(folder)
    _resize(model, saved, f"the fresh {type(model).__name__}")


def _resize(model: nn.Module, saved: dict[str, Any], what: str) -> None:
    own = model.state_dict()
    shapes = {name: torch.empty(shape, dtype=own[name].dtype if name in own else torch.float32, device="meta")
              for name, shape in saved["tensors"].items()}
    resize_to(model, saved["modules"], shapes, what)


def save_pretrained_pruned(model: nn.Module, folder: str | Path, **kwargs: Any) -> None:
    """``model.save_pretrained(folder, **kwargs)`` plus the widths file that
    ``from_pretrained_pruned`` needs to rebuild the model at its pruned widths."""
    model.save_pretrained(folder, **kwargs)
    write_shapes(model, folder)


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``save_pretrained`` folder (safetensors, one file or sharded)."""
    single, index = (folder / name for name in _WEIGHTS)
    if single.is_file():
        return safetensors.torch.load_file(single, device="cpu")
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in safetensors.torch.load_file(folder / shard, device="cpu").items()}
    raise DempError(f"{folder} holds no safetensors weights ({' or '.join(_WEIGHTS)}); save with "
                    "save_pretrained_pruned (safetensors is transformers' default)")


def _tied_keys(model: nn.Module) -> set[str]:
    """State-dict keys whose tensor another key also holds (tied weights, saved once)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            tied |= {name, seen[id(t)]}
        seen.setdefault(id(t), name)
    return tied


def load_weights_strictly(model: nn.Module, tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Load ``tensors`` into ``model``: every key must fit, and only tied duplicates may be absent."""
    try:
        missing, unexpected = model.load_state_dict(dict(tensors), strict=False)
    except RuntimeError as e:
        raise DempError(f"the weights in {where} do not match its {SHAPES_FILE} (were they saved from "
                        f"another model, or the widths file copied from elsewhere?): {e}") from None
    missing = sorted(set(missing) - _tied_keys(model))
    if missing or unexpected:
        raise DempError(f"the weights in {where} do not fit {type(model).__name__}: missing {missing[:5]}, "
                        f"unexpected {sorted(unexpected)[:5]}")


def from_pretrained_pruned(cls: type[M], folder: str | Path, **config_kwargs: Any) -> M:
    """A pruned model saved with ``save_pretrained_pruned`` (or by a Trainer running
    ``DemonPruningCallback``), at its per-layer widths, in eval mode.

    ``cls`` is the model class (``OPTForCausalLM``, ...); it is built from the folder's config at
    full width (``config_kwargs`` go to the config), shrunk to the recorded widths, and the weights
    load strictly.  Plain ``cls.from_pretrained(folder)`` does not work on a pruned folder.
    """
    folder = Path(folder)
    saved = read_shapes(folder)
    if saved.get("class") not in (None, cls.__qualname__):
        raise DempError(f"{folder} holds a {saved['class']}, not a {cls.__qualname__}; pass that class")
    config = cls.config_class.from_pretrained(folder, **config_kwargs)
    model = cls(config)
    _resize(model, saved, f"a {cls.__qualname__} built from {folder / 'config.json'}")
    load_weights_strictly(model, _load_weights(folder), str(folder))
    return model.eval()


# ----------------------------------------------------------------------------- Trainer callback

def _head(batch: Any, n: int) -> Any:
    """The first ``n`` examples of a batch of inputs (a tensor, or a dict/tuple of tensors)."""
    if isinstance(batch, torch.Tensor):
        return batch[:n]
    if isinstance(batch, Mapping):
        return {k: _head(v, n) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(_head(v, n) for v in batch)
    return batch


def _to(batch: Any, device: torch.device) -> Any:
    """A batch with its tensors on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` (or the one given)."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer


def _grad_scale(optimizer: Any) -> float:
    """The factor the gradients carry before the optimizer step: the AMP loss scale while they
    are still scaled (clipping unscales them first), else 1."""
    scaler = getattr(optimizer, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return 1.0
    from torch.amp.grad_scaler import OptState
    stage = scaler._per_optimizer_states[id(_torch_optimizer(optimizer))]["stage"]
    return 1.0 if stage is OptState.UNSCALED else float(scaler.get_scale())


def _checkpoint(args: Any, state: Any) -> Path:
    """The folder the Trainer writes the checkpoint of the current step to."""
    return Path(args.output_dir) / f"{transformers.trainer_utils.PREFIX_CHECKPOINT_DIR}-{state.global_step}"


class DemonPruningCallback(transformers.TrainerCallback):
    """Demon Pruning in an unmodified ``transformers.Trainer``.

    ``probe``: re-iterable batches of un-augmented training inputs, each what the model is
    called with (``model(**batch)``: dicts such as the Trainer's own batches); moved to the
    model's device when training starts.  ``example_inputs``: what the model is called with
    during removal (default: two examples of the first probe batch).  Other settings are
    ``DemPConfig``'s, as ``config`` or keywords; ``pruners`` as for ``DemonPruner``.
    ``pruner`` exists once training has started; total steps are the Trainer's ``max_steps``.
    """

    def __init__(self, probe: Iterable[Any], *, example_inputs: Any = None, calibration: Optional[Iterable[Any]] = None,
                 config: Optional[DemPConfig] = None, pruners: Optional[dict] = None, **options: Any):
        self.probe, self.calibration, self.config, self.options = probe, calibration, config, options
        self.example_inputs, self.pruners = example_inputs, pruners
        self.pruner: Optional[DemonPruner] = None
        self._output_dir: Optional[Path] = None

    # ---- set-up
    def on_init_end(self, args, state, control, model=None, **kwargs):
        """Make the model write its widths whenever it is saved, and resize itself to a pruned
        checkpoint's widths before its weights load (``train(resume_from_checkpoint=...)``)."""
        self._output_dir = Path(args.output_dir)
        if model is not None:
            self._instrument(model)

    def _instrument(self, model: nn.Module) -> None:
        if getattr(model, "_demp_instrumented", False):
            return
        model._demp_instrumented = True
        save, load = model.save_pretrained, model.load_state_dict

        def save_pretrained(folder, *args, **kwargs):
            out = save(folder, *args, **kwargs)
            write_shapes(model, folder)
            return out

        def load_state_dict(state_dict, *args, **kwargs):
            self._resize_for(model, state_dict)
            return load(state_dict, *args, **kwargs)
        model.save_pretrained, model.load_state_dict = save_pretrained, load_state_dict

    def _resize_for(self, model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Before weights of other widths load: shrink the model to the checkpoint under the
        output folder whose recorded tensor shapes are theirs."""
        own = model.state_dict()
        if all(k not in own or own[k].shape == v.shape for k, v in state_dict.items()):
            return
        wanted = {k: list(v.shape) for k, v in state_dict.items()}
        folders = sorted(self._output_dir.glob(f"*/{SHAPES_FILE}")) if self._output_dir else []
        for path in folders:
            saved = read_shapes(path.parent)
            if all(saved["tensors"].get(k) == s for k, s in wanted.items()):
                _resize(model, saved, f"the {type(model).__name__} being resumed")
                return
        raise DempError(f"the weights to load have other shapes than {type(model).__name__} and no "
                        f"{SHAPES_FILE} under {self._output_dir} records them; call "
                        "demp.integrations.hf.resize_to_pretrained(model, checkpoint) before "
                        "trainer.train(resume_from_checkpoint=checkpoint)")

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if args.world_size > 1:
            raise DempError("DemonPruningCallback runs in one process; for several, train with DemonPruner and "
                            "demp.integrations.ddp.PrunableDDP (or `demp train` under torchrun)")
        if optimizer is None or state.max_steps < 1:
            raise DempError("DemonPruningCallback needs the Trainer's optimizer and a training length "
                            "(max_steps or num_train_epochs)")
        self._instrument(model)
        device = model_device(model)
        probe = [_to(b, device) for b in self.probe]
        calibration = [_to(b, device) for b in self.calibration] if self.calibration is not None else None
        example = self.example_inputs if self.example_inputs is not None else _head(batch_input(probe[0]), 2)
        self.pruner = DemonPruner(model, _torch_optimizer(optimizer), _to(example, device), int(state.max_steps),
                                  probe, calibration=calibration, config=self.config, pruners=self.pruners,
                                  **self.options)
        if state.global_step > 0:
            self._resume(_checkpoint(args, state))

    def _resume(self, folder: Path) -> None:
        path = folder / PRUNER_FILE
        if not path.is_file():
            raise DempError(f"resuming at step {folder.name} but {path} is missing: the checkpoint was not "
                            "written by a Trainer running DemonPruningCallback")
        self.pruner.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    # ---- training
    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        """The penalty's exact gradient, once per optimizer step: the accumulated task gradients
        are those of the mean loss already (after clipping, so the penalty is not clipped)."""
        self.pruner.add_penalty_grad(_grad_scale(optimizer))

    def on_step_end(self, args, state, control, **kwargs):
        """After the optimizer step: noise, and the periodic dead check and removal."""
        self.pruner.step()

    def on_train_end(self, args, state, control, **kwargs):
        """Final dead check and removal once the last step has run."""
        if self.pruner is not None:
            self.pruner.finish()

    # ---- checkpoints
    def on_save(self, args, state, control, model=None, **kwargs):
        """Next to the checkpoint's weights: the widths and the pruner's state."""
        folder = _checkpoint(args, state)
        if not folder.is_dir() or self.pruner is None:
            return
        write_shapes(self.pruner.model, folder)
        buffer = io.BytesIO()
        torch.save(self.pruner.state_dict(), buffer)
        atomic_write_bytes(folder / PRUNER_FILE, buffer.getvalue())
