"""Model zoo: a registry plus one module per family; importing this package registers them all.

Every image model takes images (B, in_channels, image_size, image_size), returns logits
(B, num_classes) from a final ``head`` Linear, and uses one nn.ReLU module per activation site.
Sequence models (``relu_lm``, ``hf:<ClassName>``) take int64 byte ids (B, T) and return
next-byte logits (B, T, num_classes); the run passes them ``context`` (data.context).
"""
from . import densenet, lm, mlp, mobilenet, resnet, small_cnn, vgg, vit  # noqa: F401  (registers)
from .hf import HF_PREFIX
from .registry import create_model, list_models, register_model

__all__ = ["HF_PREFIX", "create_model", "list_models", "register_model"]
