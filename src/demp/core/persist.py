"""Saving and reloading pruned models without knowing their widths (docs/method.md, "Structural removal").

A pruned model is stored as the shape attributes of every module (``in_channels``,
``num_features``, ...), its state dict, its non-persistent buffers and, for demp's zoo models,
their spec (how ``create_model`` built them).  Loading takes a freshly built full-width model,
shrinks every module to the saved attributes and tensor shapes, and loads the tensors
strictly: the caller never needs the pruned widths, and no pickled code runs.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from demp.core.atomic import atomic_write_bytes
from demp.errors import DempError

FORMAT = "demp.pruned/1"
SHAPE_ATTRS = ("in_channels", "out_channels", "in_features", "out_features", "num_features",
               "normalized_shape", "num_groups", "num_channels", "groups", "num_parameters",
               "embed_dim", "kdim", "vdim", "num_heads", "head_dim", "nf", "nx")
"""Module attributes that record widths (Conv, Linear, norms, PReLU, ChannelSelect, attention,
transformers' Conv1D)."""


def module_shapes(model: nn.Module) -> dict[str, dict[str, int | tuple]]:
    """Every module's width attributes by qualified name (what a state dict does not record)."""
    return {name: attrs for name, m in model.named_modules() if (attrs := width_attrs(m))}


def width_attrs(module: nn.Module) -> dict[str, int | tuple]:
    """The module's SHAPE_ATTRS that hold integers or integer tuples."""
    values = {a: getattr(module, a, None) for a in SHAPE_ATTRS}
    return {a: v for a, v in values.items() if isinstance(v, (int, tuple)) and not isinstance(v, bool)}


def _loose_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers registered with ``persistent=False``: not in the state dict, but maybe pruned."""
    persistent = model.state_dict().keys()
    return {n: b.detach().cpu() for n, b in model.named_buffers() if n not in persistent}


def resize_to(model: nn.Module, shapes: dict[str, dict[str, Any]], tensors: dict[str, torch.Tensor],
              what: str = "the model") -> None:
    """Shrink ``model`` in place to ``module_shapes`` output and the tensor shapes in ``tensors``
    (values are left for ``load_state_dict``)."""
    modules = dict(model.named_modules())
    unknown = sorted(set(shapes) - set(modules))
    if unknown:
        raise DempError(f"saved modules {unknown[:5]} do not exist in {what}: the file was written "
                        "from another model class or another version of its code")
    for name, module in modules.items():
        for attr, value in shapes.get(name, {}).items():
            setattr(module, attr, value)
        _resize_tensors(module, name, tensors)


def resize_like(model: nn.Module, widths: dict[str, dict[str, Any]],
                tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Shrink a freshly built ``model`` to the saved ``widths`` and load ``tensors`` into it.

    ``widths`` maps module names to width attributes (as ``save_pruned`` stores them) and
    ``tensors`` holds the state dict plus any non-persistent buffers, by name.  Returns ``model``.
    """
    what = type(model).__name__
    resize_to(model, widths, tensors, f"the fresh {what}")
    loose = {n: b for n, b in model.named_buffers() if n not in model.state_dict()}
    try:
        model.load_state_dict({k: v for k, v in tensors.items() if k not in loose}, strict=True)
    except RuntimeError as e:
        raise DempError(f"saved weights do not fit a rebuilt {what}: {e}") from None
    with torch.no_grad():
        for name, buf in loose.items():
            if name in tensors:
                buf.copy_(tensors[name])
    return model


def _resize_tensors(module: nn.Module, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
    """Give the module's own parameters and buffers the saved shapes (values come from load)."""
    dot = f"{prefix}." if prefix else ""
    for store in (module._parameters, module._buffers):
        for key, tensor in list(store.items()):
            saved = tensors.get(dot + key)
            if tensor is None or saved is None or saved.shape == tensor.shape:
                continue
            fresh = torch.empty(saved.shape, dtype=saved.dtype, device=tensor.device)
            store[key] = nn.Parameter(fresh, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else fresh


def save_pruned(model: nn.Module, path: str | Path) -> None:
    """Write ``model`` (atomically) at its pruned widths: width attributes and tensors, no code.

    It loads with ``load_pruned(path, model=MyNet(...))``, a fresh full-width instance; a demp
    zoo model (``demp.app.models.create_model``) also with ``demp.app.export.load_run_model(path)``.
    """
    spec = getattr(model, "demp_spec", None)
    payload = {"format": FORMAT, "class": type(model).__qualname__,
               "spec": dict(spec) if spec is not None else None, "modules": module_shapes(model),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "buffers": _loose_buffers(model)}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_pruned(path: str | Path) -> dict[str, Any]:
    """The payload ``save_pruned`` wrote (format checked; tensors only, no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise DempError(f"no saved model at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # damaged, or not a tensor file written by save_pruned
        raise DempError(f"cannot read {path}: {type(e).__name__} (the file is damaged or was "
                        "not written by demp.save_pruned)") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DempError(f"{path} is not a model saved by demp.save_pruned (format {FORMAT})")
    return payload


def load_pruned(path: str | Path, model: Optional[nn.Module] = None, map_location: str | torch.device = "cpu",
                build: Optional[Callable[[dict], nn.Module]] = None) -> nn.Module:
    """The model saved by ``save_pruned``, at its pruned widths, in eval mode.

    ``model`` is a freshly constructed, full-width instance of the saved model's class; it is
    resized in place and returned.  Without it, ``build(spec)`` makes one from the saved spec
    (``demp.app.export.load_run_model`` does that for demp's zoo models).
    """
    payload = read_pruned(path)
    saved_class, spec = payload.get("class"), payload.get("spec")
    if model is None:
        if spec is None or build is None:
            hint = ("it is a demp zoo model: demp.app.export.load_run_model(path) rebuilds it"
                    if spec is not None else f"pass a freshly built one: load_pruned(path, model={saved_class}(...))")
            raise DempError(f"{path} holds a {saved_class}; {hint}")
        model = build(dict(spec))
    _resize_saved(model, payload, path)
    if spec is not None:
        model.demp_spec = dict(spec)
    return model.to(map_location).eval()


def _resize_saved(model: nn.Module, payload: dict[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """Resize ``model`` (of the saved class) to the payload's widths and load its tensors; returns them."""
    saved_class = payload.get("class")
    if saved_class is not None and type(model).__qualname__ != saved_class:
        raise DempError(f"{path} holds a {saved_class}, but model= is a {type(model).__qualname__}; "
                        f"pass a freshly built {saved_class}")
    tensors = {**payload["state_dict"], **payload.get("buffers", {})}
    resize_like(model, payload["modules"], tensors)
    return tensors


def reset_parameters(model: nn.Module) -> None:
    """Draw every parameter afresh: each module's ``reset_parameters()`` (``_reset_parameters``
    for attention), descendants before ancestors, so a model's own rule (a zoo model's init)
    runs last.  BatchNorm running statistics are reset with the norm's parameters."""
    for module in reversed(list(model.modules())):
        reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
        if callable(reset):
            reset()


def fresh_like(path: str | Path, model: nn.Module) -> nn.Module:
    """``model`` (a freshly built full-width instance of the saved class) shrunk to the widths
    ``save_pruned`` wrote at ``path`` and freshly initialised there: the same pruned architecture
    trained from scratch, the baseline a pruning method is compared with.

    Structure buffers without a reset (a ``ChannelSelect``'s channel pairs) keep the saved
    values; a parameter that no ``reset_parameters`` draws is refused.  Returns ``model`` in
    train mode.
    """
    _resize_saved(model, read_pruned(path), path)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))   # every reset must overwrite these
    reset_parameters(model)
    undrawn = [n for n, p in model.named_parameters() if torch.isnan(p).any()]
    if undrawn:
        raise DempError(f"cannot initialise {type(model).__name__} afresh: no reset_parameters() draws "
                        f"parameters {undrawn[:5]}; give the modules holding them one")
    return model.train()
