"""Hugging Face ``transformers`` causal LMs built from a config, as zoo models (``hf:<ClassName>``).

``model.name=hf:OPTForCausalLM`` with ``model.kwargs`` holding the config's keys (``vocab_size``,
``hidden_size``, ``ffn_dim``, ...) builds ``OPTForCausalLM(OPTConfig(**kwargs))`` with fresh
weights; nothing is downloaded.  ``HFLogits`` wraps it so that it takes a tensor of byte ids
and returns the logits tensor, as the training loop calls every model.  transformers is an
optional dependency (tested with 5.25.0).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

HF_PREFIX = "hf:"


class HFLogits(nn.Module):
    """A transformers causal LM called with ``input_ids``, returning only its logits (no cache)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=x, use_cache=False).logits


def hf_class(class_name: str) -> type:
    """The transformers model class called ``class_name``; ValueError saying how to fix it."""
    try:
        import transformers
    except ImportError:
        raise ValueError(f"model '{HF_PREFIX}{class_name}' needs the transformers package: "
                         "pip install transformers (tested with 5.25.0)") from None
    cls = getattr(transformers, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)
            and getattr(cls, "config_class", None) is not None):
        raise ValueError(f"transformers has no model class '{class_name}' with a config class; "
                         f"use a class name such as OPTForCausalLM (transformers {transformers.__version__})")
    return cls


def build_hf(class_name: str, num_classes: int, width: float, context: Optional[int] = None,
             **config: Any) -> HFLogits:
    """``class_name`` built from ``config`` (the vocabulary defaults to ``num_classes`` and the
    position table to ``context``), wrapped to return logits.  Sizes come from ``config``, so
    ``width`` must be 1."""
    cls = hf_class(class_name)
    if width != 1:
        raise ValueError(f"model.width {width} does not apply to '{HF_PREFIX}{class_name}' (its sizes are "
                         "the config keys in model.kwargs); set model.width=1")
    config.setdefault("vocab_size", num_classes)
    if config["vocab_size"] != num_classes:
        raise ValueError(f"vocab_size {config['vocab_size']} differs from the data's {num_classes} classes "
                         f"(byte text has 256)")
    settings = cls.config_class(**config)
    if context is not None and hasattr(settings, "max_position_embeddings") \
            and "max_position_embeddings" not in config:
        settings.max_position_embeddings = context
    return HFLogits(cls(settings))
