"""The one place that touches torch-pruning and autograd internals (tested against torch-pruning 1.6.1).

DemP uses torch-pruning's dependency graph to find which layers share a ReLU site's
channels and to slice them.  Everything version-specific lives here: the patched parameter
replacement that lets the optimizer follow, the grouped-conv input slicer, graph
construction (which must not leave the model in eval mode), group items and node kinds.
"""
from __future__ import annotations

import importlib.metadata
import re
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops as tp_ops
from torch_pruning.dependency import index_mapping as tp_index_mapping, shape_infer as tp_shape_infer
from torch_pruning.pruner import function as tp_fn

from demp.core.utils import kept_modes
from demp.errors import DempError

TESTED_VERSION = "1.6.1"
Slicer = Callable[[torch.Tensor], torch.Tensor]
BasePruningFunc = tp_fn.BasePruningFunc
"""Base class for per-layer pruners (torch-pruning's customised pruners)."""


def _installed_version() -> str:
    """The installed distribution's version (torch_pruning.__version__ says 1.6.0 in 1.6.1)."""
    try:
        return importlib.metadata.version("torch-pruning")
    except importlib.metadata.PackageNotFoundError:
        return getattr(tp, "__version__", "unknown")


def check_version() -> None:
    """Warn when torch-pruning is not the version DemP's patches were written for."""
    found = _installed_version()
    if found != TESTED_VERSION:
        warnings.warn(f"torch-pruning {found} is installed but DemP was tested with "
                      f"{TESTED_VERSION}; removals are still verified and refused when they would "
                      f"change the model, but pin torch-pruning=={TESTED_VERSION} to be safe",
                      stacklevel=2)


check_version()


# ----------------------------------------------------------------------------- nodes and groups

@contextmanager
def _concat_sizes_checked() -> Iterator[None]:
    """Concatenations with an input of unknown width get no index map, as torch-pruning 1.6.1
    intends; it sums the widths before its own check and fails (a key/value cache growing
    along the sequence: ``torch.cat([past, new], dim=-2)`` with the empty past untraced)."""
    original = tp_index_mapping.update_concat_index_mapping

    def update(graph: Any, node: Any) -> None:
        if node.type == tp_ops.OPTYPE.CONCAT and node.module.concat_sizes is None and any(
                tp_shape_infer.infer_channels_between(graph, n, node) is None for n in node.inputs):
            return
        original(graph, node)

    tp_index_mapping.update_concat_index_mapping = update
    try:
        yield
    finally:
        tp_index_mapping.update_concat_index_mapping = original


@dataclass
class GroupItem:
    """One member of a pruning group: graph node, its pruning handler, and index maps.

    ``idxs[k]`` is the member's own channel that root channel ``root_idxs[k]`` maps to.
    """
    node: Any
    handler: Any
    idxs: list[int]
    root_idxs: list[int]


def pruning_group(dg: tp.DependencyGraph, module: nn.Module, idxs: Sequence[int]) -> list[GroupItem]:
    """The layers (and ops) whose channels are tied to output channels ``idxs`` of ``module``."""
    pruner = dg.get_pruner_of_module(module)
    with _concat_sizes_checked():
        group = dg.get_pruning_group(module, pruner.prune_out_channels, list(idxs))
    return [GroupItem(it.dep.target, it.dep.handler, [int(i) for i in it.idxs],
                      [int(i) for i in it.root_idxs]) for it in group]


def prune_out_channels(dg: tp.DependencyGraph, module: nn.Module, idxs: Sequence[int]) -> None:
    """Remove output channels ``idxs`` of ``module`` and every tied channel of the group."""
    pruner = dg.get_pruner_of_module(module)
    with _concat_sizes_checked():
        group = dg.get_pruning_group(module, pruner.prune_out_channels, list(idxs))
    group.prune(record_history=False)


def nodes_by_grad_fn(dg: tp.DependencyGraph) -> dict[Any, Any]:
    """The graph's nodes by the autograd function that produced them (to find a traced op's node)."""
    return {node.grad_fn: node for node in dg.module2node.values()}


def tensor_version(t: torch.Tensor) -> int:
    """Autograd's in-place write counter of a tensor (changes whenever it is written in place)."""
    return t._version


def node_kind(node: Any) -> str:
    """What a graph node is: 'conv', 'depthwise_conv', 'linear', 'bn', 'concat', 'split',
    'reshape', 'slice', 'expand', 'unbind', 'output', 'elementwise', 'customized', ..."""
    return tp_ops.module2type(node.module).name.lower()


def op_name(node: Any) -> str:
    """Autograd op name of a traced op without 'Backward', e.g. 'relu', 'add', 'asstrided'
    ('' for a module node)."""
    grad_fn = getattr(node.module, "_grad_fn", None)
    if grad_fn is None:
        return ""
    return re.sub(r"backward\d*$", "", str(grad_fn).lower().split("::")[-1])


def is_in_channel_fn(dg: tp.DependencyGraph, handler: Any) -> bool:
    """True when the handler removes input channels (the member consumes the group)."""
    return dg.is_in_channel_pruning_fn(handler)


def is_out_channel_fn(dg: tp.DependencyGraph, handler: Any) -> bool:
    """True when the handler removes output channels (the member produces the group's units)."""
    return dg.is_out_channel_pruning_fn(handler)


def out_channels(dg: tp.DependencyGraph, module: nn.Module) -> Optional[int]:
    """Output channel count as torch-pruning sees it (None for ops without one)."""
    return dg.get_out_channels(module)


def is_depthwise(module: nn.Module) -> bool:
    """torch-pruning's notion of depthwise: groups == out_channels (and > 1)."""
    return tp_ops.module2type(module) == tp_ops.OPTYPE.DEPTHWISE_CONV


class NormActPruner(BasePruningFunc):
    """Pruner for a fused norm + activation layer (timm's BatchNormAct2d, GroupNormAct, ...).

    Register it for the layer's type, ``remove_units(..., pruners={BatchNormAct2d:
    NormActPruner()})``: it slices every per-channel parameter and buffer of the layer (scale,
    shift, running statistics, anything else of the layer's width) and its channel count.
    A subclass must keep ``prune_in_channels`` the same function as ``prune_out_channels``
    (torch-pruning ties a norm's input to its output only then).
    """
    WIDTH_ATTRS = ("num_features", "num_channels")

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        width = self.get_out_channels(layer)
        keep = sorted(set(range(width)) - set(idxs))
        for key, t in list(layer._parameters.items()):
            if t is not None and t.dim() == 1 and t.numel() == width:
                setattr(layer, key, self._prune_parameter_and_grad(t, keep, 0))
        for key, t in list(layer._buffers.items()):
            if t is not None and t.dim() == 1 and t.numel() == width:
                layer._buffers[key] = t.detach()[keep]
        for attr in self.WIDTH_ATTRS:
            if hasattr(layer, attr):
                setattr(layer, attr, len(keep))
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        width = next((getattr(layer, a) for a in self.WIDTH_ATTRS if hasattr(layer, a)), None)
        if width is None:
            raise DempError(f"NormActPruner: {type(layer).__name__} has neither num_features nor "
                            "num_channels; register it only for norm + activation layers")
        return width

    get_in_channels = get_out_channels


class TransposedLinearPruner(BasePruningFunc):
    """Pruner for a linear layer that stores its weight transposed, as (in, out): GPT-2's
    ``transformers.pytorch_utils.Conv1D``.  Output channels are weight columns (and bias
    entries), input channels weight rows; the width attributes (Conv1D: ``nf``, ``nx``) follow.
    """

    def __init__(self, out_attr: str = "nf", in_attr: str = "nx"):
        super().__init__()
        self.out_attr, self.in_attr = out_attr, in_attr

    def _keep(self, width: int, idxs: Sequence[int]) -> list[int]:
        return sorted(set(range(width)) - set(int(i) for i in idxs))

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = self._keep(self.get_out_channels(layer), idxs)
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
        if getattr(layer, "bias", None) is not None:
            layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
        if hasattr(layer, self.out_attr):
            setattr(layer, self.out_attr, len(keep))
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = self._keep(self.get_in_channels(layer), idxs)
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
        if hasattr(layer, self.in_attr):
            setattr(layer, self.in_attr, len(keep))
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.weight.shape[1]

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.weight.shape[0]


_TRANSPOSED: set[type] = set()
"""Layer types some ``pruners=`` mapping gave a TransposedLinearPruner (``graph_pruners``)."""


def transposed_linear_types() -> tuple[type, ...]:
    """Linear layers with a transposed weight: transformers' Conv1D (GPT-2) once transformers is
    loaded (looked up in ``sys.modules``: a model holding one has imported it; core never does),
    and the types a caller registered with a ``TransposedLinearPruner``."""
    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    return ((conv1d,) if conv1d is not None else ()) + tuple(_TRANSPOSED)


def graph_pruners(pruners: Optional[Mapping[Any, BasePruningFunc]]) -> dict[Any, BasePruningFunc]:
    """The pruners a graph is built with: a ``TransposedLinearPruner`` for Conv1D when transformers
    is loaded, then the caller's (whose ``TransposedLinearPruner`` types are remembered, so the
    analysis and the penalty read those layers as linear ones)."""
    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    merged = {**({conv1d: TransposedLinearPruner()} if conv1d is not None else {}), **(pruners or {})}
    _TRANSPOSED.update(k for k, v in merged.items() if isinstance(k, type) and isinstance(v, TransposedLinearPruner)
                       and k is not conv1d)
    return merged


def is_linear(module: Any) -> bool:
    """An ``nn.Linear`` or a linear layer with a transposed weight."""
    return isinstance(module, (nn.Linear, *transposed_linear_types()))


def unknown_layer_types(model: nn.Module, customized: Mapping[Any, Any]) -> list[str]:
    """Names of the model's layer types that hold weights but have no torch-pruning pruner
    (built in or in ``customized``): the likely cause when the dependency graph fails."""
    names: list[str] = []
    for m in model.modules():
        own = any(p is not None for p in m._parameters.values())
        known = (tp_ops.module2type(m) != tp_ops.OPTYPE.ELEMENTWISE or m in customized
                 or any(isinstance(m, k) for k in customized if isinstance(k, type)))
        if own and not known and type(m).__name__ not in names:
            names.append(type(m).__name__)
    return names


# ----------------------------------------------------------------------------- graph

def build_dependency(model: nn.Module, example_inputs: Any, forward_fn: Callable[[nn.Module, Any], Any],
                     customized_pruners: Mapping[Any, BasePruningFunc]) -> tp.DependencyGraph:
    """torch-pruning's dependency graph, traced in eval mode; every module's mode is kept.

    ``DependencyGraph.build_dependency`` calls ``model.eval()`` and never undoes it.  Frozen
    parameters are traced as if trainable: autograd, and so the graph, would not see their layers.
    """
    frozen = [p for p in model.parameters() if not p.requires_grad]
    try:
        with kept_modes(model), torch.enable_grad(), _concat_sizes_checked():
            model.eval()
            for p in frozen:
                p.requires_grad_(True)
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, forward_fn=forward_fn,
                customized_pruners=dict(customized_pruners), verbose=False)
    finally:
        for p in frozen:
            p.requires_grad_(False)


# ----------------------------------------------------------------------------- recording

def _select(dim: int, keep: torch.Tensor) -> Slicer:
    return lambda t: t.index_select(dim, keep.to(t.device))


def _grouped_in_slicer(layer: nn.modules.conv._ConvNd, idxs: Sequence[int]) -> tuple[Slicer, int]:
    """Input-column removal for a grouped (non-depthwise) conv: each group keeps its own columns."""
    g = layer.groups
    per = layer.in_channels // g
    removed = set(idxs)
    local = [[c - j * per for c in range(j * per, (j + 1) * per) if c not in removed] for j in range(g)]
    if len({len(k) for k in local}) != 1:
        raise DempError(f"grouped conv {layer}: removal must take the same number of input "
                        "channels from every group")
    rows_per = layer.out_channels // g
    index = torch.tensor([local[r // rows_per] for r in range(layer.out_channels)], dtype=torch.long)

    def slicer(t: torch.Tensor) -> torch.Tensor:
        idx = index.to(t.device).view(t.shape[0], -1, *([1] * (t.dim() - 2))).expand(
            -1, -1, *t.shape[2:])
        return torch.gather(t, 1, idx)
    return slicer, len(local[0]) * g


@contextmanager
def recording(on_replace: Callable[[nn.Parameter, nn.Parameter, Slicer], None]) -> Iterator[None]:
    """Route every torch-pruning parameter replacement through ``on_replace``.

    Also keeps ``requires_grad`` of frozen parameters and prunes grouped convs' input
    columns group by group (torch-pruning 1.6.1 does neither).
    """
    base, conv = tp_fn.BasePruningFunc, tp_fn.ConvPruner
    orig_param, orig_conv_in = base._prune_parameter_and_grad, conv.prune_in_channels

    def replace(old: nn.Parameter, slicer: Slicer) -> nn.Parameter:
        new = nn.Parameter(slicer(old.detach()).contiguous(), requires_grad=old.requires_grad)
        if old.grad is not None:
            new.grad = slicer(old.grad).contiguous()
        on_replace(old, new, slicer)
        return new

    def prune_param(self, weight, keep_idxs, dim):
        keep = torch.as_tensor(list(keep_idxs), dtype=torch.long, device=weight.device)
        return replace(weight, _select(dim, keep))

    def prune_conv_in(self, layer, idxs):
        if layer.groups == 1 or layer.transposed:
            return orig_conv_in(self, layer, idxs)
        slicer, new_in = _grouped_in_slicer(layer, idxs)
        layer.weight = replace(layer.weight, slicer)
        layer.in_channels = new_in
        return layer

    base._prune_parameter_and_grad = prune_param
    conv.prune_in_channels = prune_conv_in
    try:
        yield
    finally:
        base._prune_parameter_and_grad = orig_param
        conv.prune_in_channels = orig_conv_in
