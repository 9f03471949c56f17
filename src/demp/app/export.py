"""Saving and reloading pruned models without knowing their widths, and ONNX export.

A pruned model is stored as its zoo spec (``model.demp_spec``: how ``create_model`` built it),
the shape attributes of every module (``in_channels``, ``num_features``, ...) and its state
dict.  Loading builds the full-width model, shrinks every module to the saved attributes and
tensor shapes, and loads the state dict strictly: the caller never needs the pruned widths.
"""
from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from demp.app.checkpoint import atomic_write_bytes
from demp.core.utils import eval_mode
from demp.errors import DempError

FORMAT = "demp.pruned/1"
SHAPE_ATTRS = ("in_channels", "out_channels", "in_features", "out_features", "num_features",
               "normalized_shape", "num_groups", "num_channels", "groups",
               "embed_dim", "kdim", "vdim", "num_heads", "head_dim")
"""Module attributes that record widths (Conv, Linear, norms, ChannelSelect, attention)."""


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


def build_pruned(arch: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild a model from ``architecture()`` output and load ``state_dict`` strictly."""
    from demp.app.models import create_model
    spec = dict(arch["spec"])
    try:
        model = create_model(**spec)
    except (TypeError, ValueError) as e:
        raise DempError(f"cannot rebuild model from spec {spec}: {e}") from None
    resize_to(model, arch["modules"], state_dict, f"a fresh {spec['name']}")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise DempError(f"saved weights do not fit a rebuilt {spec['name']}: {e}") from None
    model.demp_spec = spec
    return model


def resize_to(model: nn.Module, shapes: dict[str, dict], state_dict: dict[str, torch.Tensor],
              what: str = "the model") -> None:
    """Shrink ``model`` in place to ``module_shapes`` output and the tensor shapes of ``state_dict``
    (values are left for ``load_state_dict``)."""
    modules = dict(model.named_modules())
    unknown = sorted(set(shapes) - set(modules))
    if unknown:
        raise DempError(f"saved modules {unknown[:5]} do not exist in {what}: "
                        "the file was written by another version of the model code")
    for name, module in modules.items():
        for attr, value in shapes.get(name, {}).items():
            setattr(module, attr, value)
        _resize_tensors(module, name, state_dict)


def _resize_tensors(module: nn.Module, prefix: str, state_dict: dict[str, torch.Tensor]) -> None:
    """Give the module's own parameters and buffers the saved shapes (values come from load)."""
    dot = f"{prefix}." if prefix else ""
    for store in (module._parameters, module._buffers):
        for key, tensor in list(store.items()):
            saved = state_dict.get(dot + key)
            if tensor is None or saved is None or saved.shape == tensor.shape:
                continue
            fresh = torch.empty(saved.shape, dtype=saved.dtype, device=tensor.device)
            store[key] = nn.Parameter(fresh, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else fresh


def save_pruned(model: nn.Module, path: str | Path) -> None:
    """Write ``model`` (atomically) so that ``load_pruned(path)`` returns it at its pruned widths.

    Models built by ``demp.models.create_model`` (they carry ``demp_spec``) are stored as spec,
    width attributes and state dict, which load without running pickled code.  Any other model
    is stored by pickling the whole module (``torch.save(model)``): loading that needs the
    model's class importable and ``load_pruned(path, allow_pickle=True)``.
    """
    if getattr(model, "demp_spec", None) is None:
        payload: Any = model
    else:
        payload = {"format": FORMAT, **architecture(model),
                   "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_pruned(path: str | Path, map_location: str | torch.device = "cpu",
                allow_pickle: bool = False) -> nn.Module:
    """The model saved by ``save_pruned``, at its pruned widths, in eval mode.

    ``allow_pickle=True`` is needed only for a model saved without ``demp_spec`` (a pickled
    module); unpickling runs code from the file, so allow it only for files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise DempError(f"no saved model at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        if not allow_pickle:
            raise DempError(f"{path} holds a pickled module (saved from a model without demp_spec); "
                            "if you trust the file, load it with load_pruned(path, allow_pickle=True)") from None
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError) as e:
        raise DempError(f"cannot read {path}: {e} (the file is damaged or not a demp model)") from None
    if isinstance(payload, nn.Module):
        return payload.eval()
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DempError(f"{path} is not a model saved by demp.save_pruned (format {FORMAT})")
    return build_pruned(payload, payload["state_dict"]).to(map_location).eval()


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
