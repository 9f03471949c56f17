"""Saving and reloading pruned models without knowing their widths, and ONNX export.

A pruned model is stored as the shape attributes of every module (``in_channels``,
``num_features``, ...), its state dict, its non-persistent buffers and, for zoo models, its spec
(``model.demp_spec``: how ``create_model`` built it).  Loading takes a freshly built full-width
model (from the spec, or the user's own instance), shrinks every module to the saved attributes
and tensor shapes, and loads the tensors strictly: the caller never needs the pruned widths,
and no pickled code runs.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from demp.app.checkpoint import atomic_write_bytes
from demp.core.utils import eval_mode
from demp.errors import DempError

FORMAT = "demp.pruned/1"
SHAPE_ATTRS = ("in_channels", "out_channels", "in_features", "out_features", "num_features",
               "normalized_shape", "num_groups", "num_channels", "groups", "num_parameters",
               "embed_dim", "kdim", "vdim", "num_heads", "head_dim")
"""Module attributes that record widths (Conv, Linear, norms, PReLU, ChannelSelect, attention)."""


def architecture(model: nn.Module) -> dict[str, Any]:
    """The zoo spec plus every module's width attributes: what rebuilding needs besides tensors."""
    spec = getattr(model, "demp_spec", None)
    if spec is None:
        raise DempError(f"{type(model).__name__} has no demp_spec (it was not built with "
                        "demp.models.create_model), so it cannot be rebuilt from its spec")
    return {"spec": dict(spec), "modules": module_shapes(model)}


def module_shapes(model: nn.Module) -> dict[str, dict[str, int | tuple]]:
    """Every module's width attributes by qualified name (what a state dict does not record)."""
    return {name: attrs for name, m in model.named_modules() if (attrs := _width_attrs(m))}


def _width_attrs(module: nn.Module) -> dict[str, int | tuple]:
    """The module's SHAPE_ATTRS that hold integers or integer tuples."""
    values = {a: getattr(module, a, None) for a in SHAPE_ATTRS}
    return {a: v for a, v in values.items() if isinstance(v, (int, tuple)) and not isinstance(v, bool)}


def _loose_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers registered with ``persistent=False``: not in the state dict, but maybe pruned."""
    persistent = model.state_dict().keys()
    return {n: b.detach().cpu() for n, b in model.named_buffers() if n not in persistent}


def build_pruned(arch: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild a zoo model from ``architecture()`` output and load ``tensors`` (its state dict)."""
    from demp.app.models import create_model
    spec = dict(arch["spec"])
    try:
        model = create_model(**spec)
    except (TypeError, ValueError) as e:
        raise DempError(f"cannot rebuild model from spec {spec}: {e}") from None
    resize_like(model, arch["modules"], tensors)
    model.demp_spec = spec
    return model


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

    A zoo model (built by ``demp.models.create_model``) loads with ``load_pruned(path)``; any
    other model with ``load_pruned(path, model=MyNet(...))``, a fresh full-width instance.
    """
    spec = getattr(model, "demp_spec", None)
    payload = {"format": FORMAT, "class": type(model).__qualname__,
               "spec": dict(spec) if spec is not None else None, "modules": module_shapes(model),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "buffers": _loose_buffers(model)}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_pruned(path: str | Path, map_location: str | torch.device = "cpu",
                model: Optional[nn.Module] = None) -> nn.Module:
    """The model saved by ``save_pruned``, at its pruned widths, in eval mode.

    ``model`` is a freshly constructed, full-width instance of the saved model's class; it is
    resized in place and returned.  It may be omitted for zoo models, which are rebuilt from
    their spec.
    """
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
    tensors = {**payload["state_dict"], **payload.get("buffers", {})}
    saved_class = payload.get("class")
    if model is None:
        if payload.get("spec") is None:
            raise DempError(f"{path} holds a {saved_class}, not a demp zoo model; pass a freshly "
                            f"built one: load_pruned(path, model={saved_class}(...))")
        return build_pruned(payload, tensors).to(map_location).eval()
    if saved_class is not None and type(model).__qualname__ != saved_class:
        raise DempError(f"{path} holds a {saved_class}, but model= is a {type(model).__qualname__}; "
                        f"pass a freshly built {saved_class}")
    resize_like(model, payload["modules"], tensors)
    if payload.get("spec") is not None:
        model.demp_spec = dict(payload["spec"])
    return model.to(map_location).eval()


def example_input(model: nn.Module, batch: int = 1) -> torch.Tensor:
    """A zero input batch of the shape the model's spec was built for."""
    spec = getattr(model, "demp_spec", None)
    if spec is None:
        raise DempError("the model has no demp_spec, so its input shape is unknown; pass an example")
    size = spec.get("image_size", 32)
    return torch.zeros(batch, spec.get("in_channels", 3), size, size)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = 17) -> None:
    """Write ``model`` (eval mode) as ONNX with a dynamic batch axis: input 'input', output 'logits'."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise DempError("ONNX export needs the onnx package: pip install 'demp[onnx]'") from None
    buffer = io.BytesIO()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX form
    try:
        with eval_mode(model), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    atomic_write_bytes(path, buffer.getvalue())
