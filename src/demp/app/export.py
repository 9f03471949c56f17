"""A run's pruned model: its zoo spec, rebuilding it without knowing its widths, and ONNX export.

Saving and loading any pruned model is ``demp.core.persist``; this module adds what knows the
zoo (``demp.app.models``): the architecture record a checkpoint keeps, and rebuilding a zoo
model from its spec.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from demp.core.atomic import atomic_write_bytes
from demp.core.persist import load_pruned, module_shapes, resize_like
from demp.core.utils import eval_mode
from demp.errors import DempError


def architecture(model: nn.Module) -> dict[str, Any]:
    """The zoo spec plus every module's width attributes: what rebuilding needs besides tensors."""
    spec = getattr(model, "demp_spec", None)
    if spec is None:
        raise DempError(f"{type(model).__name__} has no demp_spec (it was not built with "
                        "demp.app.models.create_model), so it cannot be rebuilt from its spec")
    return {"spec": dict(spec), "modules": module_shapes(model)}


def build_zoo_model(spec: dict[str, Any]) -> nn.Module:
    """A fresh full-width zoo model from its spec."""
    from demp.app.models import create_model
    try:
        model = create_model(**spec)
    except (TypeError, ValueError) as e:
        raise DempError(f"cannot rebuild model from spec {spec}: {e}") from None
    return model


def build_pruned(arch: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild a zoo model from ``architecture()`` output and load ``tensors`` (its state dict)."""
    spec = dict(arch["spec"])
    model = resize_like(build_zoo_model(spec), arch["modules"], tensors)
    model.demp_spec = spec
    return model


def load_run_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """A run's ``model.pt`` (or any zoo model ``save_pruned`` wrote), rebuilt at its pruned widths."""
    return load_pruned(path, map_location=map_location, build=build_zoo_model)


def example_input(model: nn.Module, batch: int = 1) -> torch.Tensor:
    """A zero input batch of the shape the model's spec was built for (sequence models: byte ids
    of the full context)."""
    spec = getattr(model, "demp_spec", None)
    if spec is None:
        raise DempError("the model has no demp_spec, so its input shape is unknown; pass an example")
    if spec.get("context") is not None:
        return torch.zeros(batch, spec["context"], dtype=torch.long)
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
