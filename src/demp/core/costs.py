"""What one unit of each ReLU site costs, and which norm scales gate it (docs/method.md,
"The cost-aware penalty").

The cost of a unit is what removing that one unit saves at the current widths: forward FLOPs
(its producer's FLOPs per output channel plus every consumer's FLOPs per input channel it
feeds; after a flatten a channel feeds one input per spatial position) or parameters.  Both
are read off torch-pruning's dependency group of the site's channel 0, so any architecture
that traces works, and all units of a site cost the same.

A norm layer *gates* a site when its output channels are the site's pre-activations through
element-wise operations only (a residual addition included): shrinking that scale can kill
the unit, so only gating scales are penalised.  A LayerNorm before attention or an FFN gates
nothing and is left alone.  Where no norm gates a site (a transformer FFN, a conv without
norm), the layers that produce its pre-activations directly are its *producers* and the
layers that read its units one input channel each are its *consumers*: a unit's weights in
both are what the penalty shrinks instead (``demp.core.regulariser``, the unit groups).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch.nn as nn

from demp.core import tp_compat
from demp.core.flops import module_flops
from demp.core.surgery import build_graph

COST_MEASURES = ("uniform", "flops", "params")
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
_PASS_THROUGH = frozenset({"add", "sub", "mul", "clone", "tocopy", "alias", "nativedropout"})
"""Element-wise ops between a gating norm and its ReLU (autograd names without 'Backward')."""


@dataclass(frozen=True)
class SiteCost:
    """One site: its width, what one of its units costs, and the norm layers that gate it."""
    width: int
    flops: float                    # forward FLOPs (per example) saved by removing one unit
    params: float                   # parameters removed with one unit
    norms: tuple[nn.Module, ...]    # norm layers whose scales gate the site's units
    producers: tuple[nn.Module, ...] = ()   # without norms: the conv/linear layers feeding it directly
    consumers: tuple[nn.Module, ...] = ()   # ... and those reading its units, one input channel each
    tied: int = 1                   # sites sharing one unit's cost (a residual stream: every site on it)

    def cost(self, measure: str) -> float:
        return 1.0 if measure == "uniform" else float(getattr(self, measure))


def norm_width(m: nn.Module) -> Optional[int]:
    """Channels of a norm layer (None for a LayerNorm over more than the last dimension)."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return m.num_features
    if isinstance(m, nn.GroupNorm):
        return m.num_channels
    shape = tuple(m.normalized_shape)
    return shape[0] if len(shape) == 1 else None


def _gates(node: Any, sites: set, width: int) -> tuple[tuple[nn.Module, ...], tuple[nn.Module, ...]]:
    """Norm layers, and conv/linear layers, reached backwards from a site through element-wise
    ops only, of the site's width: (norms, producers); producers only where no norm is found."""
    norms: list[nn.Module] = []
    layers: list[nn.Module] = []
    stack, seen = list(node.inputs), set()
    while stack:
        n = stack.pop()
        if n in seen or n in sites:
            continue
        seen.add(n)
        m = n.module
        if isinstance(m, NORM_TYPES):
            if norm_width(m) == width and m not in norms:
                norms.append(m)
        elif _is_layer(m):
            if (_layer_channels(m, consumer=False) == width and not getattr(m, "transposed", False)
                    and m not in layers):
                layers.append(m)
        elif tp_compat.node_kind(n) == "elementwise" and tp_compat.op_name(n) in _PASS_THROUGH:
            stack.extend(n.inputs)
    return tuple(norms), (() if norms else tuple(layers))


def _is_layer(m: nn.Module) -> bool:
    """A conv or linear layer (transposed-weight linear layers such as GPT-2's Conv1D included)."""
    return isinstance(m, nn.modules.conv._ConvNd) or tp_compat.is_linear(m)


def _layer_channels(m: nn.Module, consumer: bool) -> int:
    """A conv's or linear layer's input (``consumer``) or output channels."""
    if isinstance(m, nn.modules.conv._ConvNd):
        return m.in_channels if consumer else m.out_channels
    transposed = isinstance(m, tp_compat.transposed_linear_types())   # weight (in, out), not (out, in)
    return m.weight.shape[int(consumer) ^ int(transposed)]


def _consumers(dg: Any, items: list, width: int) -> tuple[nn.Module, ...]:
    """Conv/linear layers (ungrouped) that read the group's channel 0 as exactly one input
    channel of the site's width (no flatten or concatenation in between)."""
    out = []
    for it in items:
        m = it.node.module
        if (_is_layer(m) and tp_compat.is_in_channel_fn(dg, it.handler) and len(it.idxs) == 1
                and _layer_channels(m, consumer=True) == width and getattr(m, "groups", 1) == 1
                and not getattr(m, "transposed", False) and m not in out):
            out.append(m)
    return tuple(out)


def _norm_channel_params(m: nn.Module) -> float:
    """Affine parameters (scale, shift) of one channel of a norm layer."""
    return sum(p.numel() for p in (m.weight, m.bias) if isinstance(p, nn.Parameter)) / (norm_width(m) or 1)


def _unit_cost(dg: Any, items: list, flops: Mapping[nn.Module, int]) -> tuple[float, float]:
    """FLOPs and parameters that one root channel of a group carries."""
    total_flops = total_params = 0.0
    for it in items:
        m = it.node.module
        consumer = tp_compat.is_in_channel_fn(dg, it.handler)
        if _is_layer(m):
            share = len(it.idxs) / _layer_channels(m, consumer)
            total_flops += flops.get(m, 0) * share
            weight_share = m.weight.numel() * share
            bias = 1 if not consumer and m.bias is not None else 0
            total_params += weight_share + bias * len(it.idxs)
        elif isinstance(m, NORM_TYPES):
            total_params += _norm_channel_params(m) * len(it.idxs)
    return total_flops, total_params


def site_costs(model: nn.Module, example_inputs: Any,
               pruners: Optional[Mapping[Any, Any]] = None) -> dict[str, SiteCost]:
    """``{site name: SiteCost}`` at the model's current widths (one graph trace)."""
    dg, nodes, widths = build_graph(model, example_inputs, pruners)
    flops = module_flops(model, example_inputs)
    site_nodes = set(nodes.values())
    out: dict[str, SiteCost] = {}
    for name, width in widths.items():
        node = nodes.get(name)
        if node is None:
            out[name] = SiteCost(width, 0.0, 0.0, ())
            continue
        try:
            items = tp_compat.pruning_group(dg, node.module, [0])
        except Exception:  # noqa: BLE001 - a graph torch-pruning cannot map: no cost known
            items = []
        f, p = _unit_cost(dg, items, flops)
        norms, producers = _gates(node, site_nodes, width)
        consumers = _consumers(dg, items, width) if producers else ()
        tied = max(1, len({it.node for it in items if it.node in site_nodes}))
        out[name] = SiteCost(width, f, p, norms, producers, consumers, tied)
    return out


def unit_weights(costs: Mapping[str, SiteCost], measure: str, power: float) -> dict[str, float]:
    """Per-site weight of a unit's penalty: cost ** power, normalised to a mean of 1 over the
    units of penalised sites (gated by norms or fed by producers), so a uniform strength means
    the same for every measure."""
    if measure not in COST_MEASURES:
        raise ValueError(f"unknown cost measure {measure!r}; choose one of {COST_MEASURES}")
    gated = {n: c for n, c in costs.items() if c.norms or c.producers}
    raw = {n: c.cost(measure) ** power if c.cost(measure) > 0 else 0.0 for n, c in gated.items()}
    units = sum(c.width for c in gated.values())
    mean = sum(raw[n] * c.width for n, c in gated.items()) / units if units else 0.0
    return {n: (w / mean if mean > 0 else 1.0) for n, w in raw.items()}
