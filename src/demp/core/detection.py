"""Finding ReLU units and the dead ones among them (docs/method.md, "Units and death").

A *site* is one call of a ReLU in the forward pass: an ``nn.ReLU`` module (a module called
at several places gives one site per call, named ``name#k``), or a functional
``F.relu``/``torch.relu``/``Tensor.relu`` call, named after the module that made it
(``owner/relu``).  A unit is one channel (conv) or feature (linear) of a site's output.
A unit is dead on a batch when its activation summed over batch and positions is <= 0, and
dead when it is dead on every probe batch.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from demp.core.utils import eval_mode, model_device
from demp.errors import DempError

RELU_FUNCS = frozenset({F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu,
                        torch.Tensor.relu_, F.relu6})
"""Functions whose output is a ReLU site (ReLU6 is dead exactly where ReLU is)."""

OTHER_ACTIVATIONS = frozenset({F.gelu, F.silu, F.elu, F.leaky_relu, F.selu, F.celu, F.mish,
                               F.softplus, F.hardswish, F.prelu, F.rrelu, F.glu})
"""Activations that are not sites: their units are skipped with a warning."""



def _is_relu_call(func, args: tuple, kwargs: dict) -> bool:
    """ReLU-family calls; hardtanh counts when its floor is 0 (that is how nn.ReLU6 runs)."""
    if func in RELU_FUNCS:
        return True
    if func is F.hardtanh:
        floor = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
        return floor == 0
    return False


_CHANNEL_FIRST_3D = (nn.Conv1d, nn.BatchNorm1d, nn.GroupNorm, nn.InstanceNorm1d, nn.MaxPool1d,
                     nn.AvgPool1d)
_CHANNELS_FIRST_FUNCS = frozenset({F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
                                   F.conv_transpose3d, F.batch_norm, F.group_norm, F.instance_norm})
_CHANNELS_LAST_FUNCS = frozenset({F.linear, F.layer_norm})
"""Layers that produce channels: on dim 1 (convs, norms) or on the last dim (Linear, LayerNorm)."""


@dataclass(frozen=True)
class SiteCall:
    """One ReLU call seen during a forward pass, before its name is resolved."""
    index: int          # order among site calls in this forward pass
    owner: str          # qualified name of the module that made the call ("" = root)
    module_site: bool   # True when the owner is the ReLU module itself
    channel_dim: int


@dataclass(frozen=True)
class Site:
    """A ReLU site: its name, number of units and the dimension that holds them."""
    name: str
    width: int
    channel_dim: int


def _site_names(calls: Sequence[SiteCall]) -> list[str]:
    """Name calls: module name (or ``owner/relu``), with ``#k`` when the owner calls twice."""
    bases = [c.owner if c.module_site else f"{c.owner}/relu" for c in calls]
    totals = Counter(bases)
    seen: Counter = Counter()
    names = []
    for base in bases:
        names.append(base if totals[base] == 1 else f"{base}#{seen[base]}")
        seen[base] += 1
    return names


def _out_of_place(func, args: tuple, kwargs: dict) -> tuple[Any, tuple, dict]:
    """The out-of-place form of an in-place ReLU-family call (``relu_``, ``inplace=True``)."""
    if func in (F.relu_, torch.relu_, torch.Tensor.relu_):
        return torch.relu, args[:1], {}
    if func in (F.relu, F.relu6, F.hardtanh):
        kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
        positional = 3 if func is F.hardtanh else 1       # inplace is hardtanh's 4th, relu's 2nd argument
        return func, args[:positional], kwargs
    return func, args, kwargs


class SiteTracer(TorchFunctionMode):
    """Sees every ReLU call of ``model``'s forward and hands its output to ``on_site``.

    ``on_site(call, output)`` may return a tensor to use instead of the output (used for
    gates by the baselines).  ``calls`` lists the calls of the last forward pass.  With
    ``out_of_place`` an in-place ReLU runs out of place: for tracing the dependency graph,
    where autograd would otherwise record an in-place ReLU on a Linear's 3-D output as a
    rewrite of that output (CopySlices), hiding the layer that produced it.
    """

    def __init__(self, model: nn.Module, on_site: Callable[[SiteCall, torch.Tensor], Any],
                 out_of_place: bool = False):
        super().__init__()
        self.model = model
        self.on_site = on_site
        self.out_of_place = out_of_place
        self.calls: list[SiteCall] = []
        self._stack: list[tuple[str, nn.Module]] = []
        self._last_leaf: Optional[nn.Module] = None
        self._producer: Optional[tuple[int, int]] = None  # (unit dim, width) of the last layer
        self._handles: list[Any] = []
        self._warned: set[str] = set()

    def __enter__(self):
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._push(name)))
            self._handles.append(module.register_forward_hook(self._pop, always_call=True))
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return super().__exit__(*exc)

    def _push(self, name: str):
        def hook(module, args):
            self._stack.append((name, module))
        return hook

    def _pop(self, module, args, output):
        if self._stack and self._stack[-1][1] is module:
            self._stack.pop()
        if not any(True for _ in module.children()):
            self._last_leaf = module

    def reset(self) -> None:
        """Forget the calls of the previous forward pass."""
        self.calls = []
        self._producer = None

    def names(self) -> list[str]:
        return _site_names(self.calls)

    def _channel_dim(self, out: torch.Tensor) -> int:
        """The unit dimension: where the last channel-producing layer put its channels.

        Its output width is looked up in the activation (a transpose since may have moved
        it); without a match, 3-D activations fall back to the last leaf module's kind.
        """
        if out.dim() == 2:
            return 1
        if self._producer is not None:
            natural, width = self._producer
            candidates = [natural % out.dim()] + [d for d in range(1, out.dim()) if d != natural % out.dim()]
            for d in candidates:
                if out.shape[d] == width:
                    return d
        if out.dim() != 3:
            return 1
        return 1 if isinstance(self._last_leaf, _CHANNEL_FIRST_3D) else out.dim() - 1

    def _note_producer(self, func, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.dim() >= 2:
            if func in _CHANNELS_FIRST_FUNCS:
                self._producer = (1, out.shape[1])
            elif func in _CHANNELS_LAST_FUNCS:
                self._producer = (-1, out.shape[-1])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.out_of_place and _is_relu_call(func, args, kwargs):
            func, args, kwargs = _out_of_place(func, args, kwargs)
        out = func(*args, **kwargs)
        self._note_producer(func, out)
        if _is_relu_call(func, args, kwargs) and isinstance(out, torch.Tensor) and out.dim() >= 2:
            owner, module = self._stack[-1] if self._stack else ("", self.model)
            call = SiteCall(len(self.calls), owner,
                            isinstance(module, (nn.ReLU, nn.ReLU6)), self._channel_dim(out))
            self.calls.append(call)
            replaced = self.on_site(call, out)
            if isinstance(replaced, torch.Tensor):
                return replaced
        elif func in OTHER_ACTIVATIONS:
            where = self._stack[-1][0] if self._stack else "<root>"
            key = f"{getattr(func, '__name__', func)}@{where}"
            if key not in self._warned:
                self._warned.add(key)
                warnings.warn(f"activation {getattr(func, '__name__', func)} in '{where}' is not "
                              "a ReLU: DemP does not check or remove its units", stacklevel=2)
        return out



def batch_input(batch: Any) -> Any:
    """The input of a probe batch: the batch itself, or the first item of a tuple/list."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise DempError("a probe batch is an empty tuple; give tensors or (input, target) pairs")
        return batch[0]
    return batch


def check_inputs(x: Any, what: str = "input") -> None:
    """Refuse input containers the model cannot be called with unambiguously."""
    if isinstance(x, list):
        raise DempError(f"{what} is a list; give a tensor, a tuple of positional inputs "
                        "(model(*inputs)) or a dict of keyword inputs (model(**inputs))")


def _input_tensors(x: Any) -> list[Any]:
    """The top-level items of an input: a tensor, a tuple's items or a dict's values."""
    if isinstance(x, dict):
        return list(x.values())
    return list(x) if isinstance(x, (tuple, list)) else [x]


def check_device(model: nn.Module, x: Any, what: str = "input") -> None:
    """Raise a clear error when tensor input ``x`` is on another device than the model."""
    dev = model_device(model)
    for t in _input_tensors(x):
        if isinstance(t, torch.Tensor) and t.device != dev:
            raise DempError(f"{what} is on {t.device} but the model is on {dev}; "
                            f"move it with .to('{dev}') first")


def check_model_device(model: nn.Module) -> None:
    """Refuse a model on the meta device (it has shapes but no values to run)."""
    if model_device(model).type == "meta":
        raise DempError("the model is on the meta device (it has no values); load or initialise "
                        "its weights and move it to a real device first")


def call_model(model: nn.Module, x: Any) -> Any:
    """Run the model on an input tensor, a tuple of positional inputs or a dict of keyword inputs."""
    if isinstance(x, dict):
        return model(**x)
    return model(*x) if isinstance(x, tuple) else model(x)


def main_output(out: Any) -> torch.Tensor:
    """The tensor a loss reads from a model's result: the result itself, the ``logits`` of a
    dict-like one (transformers' ``ModelOutput``), else its first tensor (a tuple's first item)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        if isinstance(out.get("logits"), torch.Tensor):
            return out["logits"]
        out = list(out.values())
    for item in out if isinstance(out, (tuple, list)) else ():
        if isinstance(item, torch.Tensor):
            return item
    raise DempError(f"the model returned a {type(out).__name__} without a tensor to score; return "
                    "logits (a tensor, or a dict with 'logits')")



def _unit_sums(out: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Activation summed over every dimension except the unit dimension, in float32."""
    dims = [d for d in range(out.dim()) if d != channel_dim % out.dim()]
    return out.float().sum(dim=dims)


@dataclass
class UnitScan:
    """Result of a probe pass: dead masks per site and quasi-dead counts per eps."""
    sites: list[Site]
    dead: dict[str, torch.Tensor]
    quasi_dead: dict[float, dict[str, int]] = field(default_factory=dict)
    num_batches: int = 0

    @property
    def units(self) -> int:
        return sum(s.width for s in self.sites)

    @property
    def dead_units(self) -> int:
        return int(sum(int(m.sum()) for m in self.dead.values()))


def scan_units(model: nn.Module, batches: Iterable[Any], eps: Sequence[float] = (),
               on_output: Optional[Callable[[Any, Any], None]] = None) -> UnitScan:
    """Run the probe batches in eval mode and AND the per-batch dead masks of every site.

    ``eps`` adds quasi-dead counts: units whose mean activation per position is <= eps on
    every batch (logged, never pruned).  ``on_output(batch, output)`` sees each batch's output
    (the pruner's collapse watch reads it from the same pass).
    """
    eps = tuple(float(e) for e in eps)
    sums: list[torch.Tensor] = []
    tracer = SiteTracer(model, lambda call, out: sums.append(_unit_sums(out, call.channel_dim)
                                                             / max(1, out.numel() // out.shape[call.channel_dim])))
    dead: Optional[list[torch.Tensor]] = None
    quasi: Optional[list[list[torch.Tensor]]] = None
    sites: list[Site] = []
    n = 0
    with eval_mode(model), torch.no_grad(), tracer:
        for batch in batches:
            x = batch_input(batch)
            if n == 0:
                check_model_device(model)
                check_device(model, x, "probe batch")
            tracer.reset()
            sums.clear()
            try:
                out = call_model(model, x)
            except DempError:
                raise
            except Exception as e:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise DempError(f"{type(model).__name__} cannot run on probe batch {n} (input {shape}): "
                                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; give probe "
                                "batches of the inputs the model trains on (tensors, or (input, target) "
                                "pairs)") from None
            if on_output is not None:
                on_output(batch, out)
            if n == 0:
                if not tracer.calls:
                    raise DempError(f"{type(model).__name__} has no ReLU site (nn.ReLU, F.relu, "
                                    "torch.relu): DemP only finds dead ReLU units")
                names = tracer.names()
                sites = [Site(nm, s.numel(), c.channel_dim) for nm, s, c in zip(names, sums, tracer.calls)]
                dead = [s <= 0 for s in sums]
                quasi = [[s <= e for s in sums] for e in eps]
            else:
                if len(sums) != len(sites) or any(s.numel() != st.width for s, st in zip(sums, sites)):
                    raise DempError("the model's ReLU calls differ between probe batches; "
                                    "DemP needs the same sites on every forward pass")
                dead = [d & (s <= 0) for d, s in zip(dead, sums)]
                quasi = [[q & (s <= e) for q, s in zip(qs, sums)] for qs, e in zip(quasi, eps)]
            n += 1
    if n == 0:
        raise DempError("the probe is empty: give at least one batch of training inputs")
    masks = {s.name: d.cpu() for s, d in zip(sites, dead)}
    quasi_counts = {e: {s.name: int(q.sum()) for s, q in zip(sites, qs)} for e, qs in zip(eps, quasi)}
    return UnitScan(sites, masks, quasi_counts, n)


def find_dead_units(model: nn.Module, batches: Iterable[Any]) -> dict[str, torch.Tensor]:
    """``{site name: BoolTensor[num_units]}``, True where the unit is dead on every batch."""
    return scan_units(model, batches).dead


def list_sites(model: nn.Module, example_inputs: Any) -> list[Site]:
    """The model's ReLU sites in call order, found with one eval-mode forward pass.

    ``example_inputs`` is passed as ``remove_units`` passes it: a tuple holds several
    positional inputs (not an (input, target) batch).
    """
    check_inputs(example_inputs, "example_inputs")
    return scan_units(model, [(example_inputs,)]).sites
