"""Model zoo: a registry plus one module per family; importing this package registers them all.

Every model takes images (B, in_channels, image_size, image_size), returns logits
(B, num_classes) from a final ``head`` Linear, and uses one nn.ReLU module per activation site.
"""
from . import densenet, mlp, mobilenet, resnet, small_cnn, vgg, vit  # noqa: F401  (registers)
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
