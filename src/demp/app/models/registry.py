"""Model registry: names -> builders, so runs and checkpoints name a model by string."""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from .hf import HF_PREFIX, build_hf

Builder = Callable[..., nn.Module]

_REGISTRY: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(num_classes, in_channels, width, image_size, **kw)``."""

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def create_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 1.0,
    image_size: int = 32,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, or a transformers one named ``hf:<ClassName>`` (``demp.app.models.hf``),
    and record the call in ``model.demp_spec`` for rebuilding."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    if name.startswith(HF_PREFIX):
        model = build_hf(name[len(HF_PREFIX):], num_classes=num_classes, width=width, **kwargs)
    elif name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())} "
                         f"or {HF_PREFIX}<transformers class>")
    else:
        model = _REGISTRY[name](
            num_classes=num_classes, in_channels=in_channels, width=width, image_size=image_size, **kwargs
        )
    model.demp_spec = {
        "name": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "width": width,
        "image_size": image_size,
        **kwargs,
    }
    return model
