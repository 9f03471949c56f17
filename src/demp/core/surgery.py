"""Physical removal of units, and of their optimizer state (docs/method.md, "Structural removal").

torch-pruning's dependency graph finds, for each ReLU site, the *group* of layers whose
channels are tied to the site's units (the producing conv/linear and its norm layer, the
consumers' input columns, flatten/concat index maps, residual additions).  A channel of a
group is removed only when removal keeps the network's function on the probe data: every
layer that consumes the group's channels must read them through a site where the channel
is dead (so it only ever sees zeros).  Every parameter replacement that torch-pruning makes
goes through one recorded function, which slices the optimizer state the same way.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from demp.core import tp_compat
from demp.core.detection import (SiteTracer, call_model, check_device, check_inputs, check_model_device,
                                 list_sites)
from demp.core.skip import ChannelSelect, ChannelSelectPruner
from demp.core.tp_compat import GroupItem, Slicer, node_kind, op_name
from demp.core.utils import count_params, eval_mode, kept_buffers, kept_modes, model_device
from demp.core.verify import Snapshot, compare_outputs, flatten_outputs
from demp.errors import DempError

_ZERO_PRESERVING = frozenset({"relu", "hardtanh", "mean", "view", "reshapealias", "unsafeview",
                              "permute", "transpose", "clone", "tocopy", "expand", "squeeze",
                              "unsqueeze", "mul", "nativedropout", "alias"})
_ZERO_PRESERVING_PREFIXES = ("maxpool", "avgpool", "adaptiveavgpool", "adaptivemaxpool", "upsample")
"""Ops (autograd names without 'Backward') whose output channel is zero where the input's is."""
_CHANNELWISE = _ZERO_PRESERVING | {"add", "sub", "copyslices"}
"""Ops that act on each channel separately, so a group may contain them."""


@dataclass
class SiteRemoval:
    """What happened at one site: units removed, and dead units kept with the reason."""
    width_before: int
    removed: int = 0
    dead: int = 0
    kept_dead: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def width_after(self) -> int:
        return self.width_before - self.removed


@dataclass
class RemovalReport:
    """Summary of one removal event."""
    units_before: int
    units_removed: int
    params_before: int
    params_after: int
    sites: dict[str, SiteRemoval]
    seconds: float = 0.0

    @property
    def units_after(self) -> int:
        return self.units_before - self.units_removed

    @property
    def widths(self) -> dict[str, int]:
        return {name: s.width_after for name, s in self.sites.items()}



# ----------------------------------------------------------------------------- optimizer

def check_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Refuse optimizers whose per-parameter state cannot be sliced like the parameter."""
    own = {id(p) for p in model.parameters()}
    for p, state in optimizer.state.items():
        if id(p) not in own:
            continue
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != p.shape:
                raise DempError(
                    f"{type(optimizer).__name__} keeps state '{key}' of shape {tuple(value.shape)} "
                    f"for a parameter of shape {tuple(p.shape)}; DemP can only slice optimizer "
                    "state shaped like its parameter (SGD, Adam, AdamW, RMSprop, ...)")


def move_optimizer_state(optimizer: torch.optim.Optimizer, old: nn.Parameter,
                         new: nn.Parameter, slicer: Slicer) -> None:
    """Point the optimizer at ``new`` instead of ``old``, slicing state tensors like the param."""
    for group in optimizer.param_groups:
        params = group["params"]
        for i, p in enumerate(params):
            if p is old:
                params[i] = new
    state = optimizer.state.pop(old, None)
    if state is not None:
        optimizer.state[new] = {k: slicer(v) if torch.is_tensor(v) and v.dim() > 0
                                and v.shape == old.shape else v for k, v in state.items()}


# ----------------------------------------------------------------------------- the graph

@dataclass
class _Group:
    """One torch-pruning group rooted at a site, with the analysis of what may go."""
    root_site: str
    root_width: int
    items: list[GroupItem]
    sites: dict[str, GroupItem]            # sites in the group -> their item
    removable: torch.Tensor = None     # BoolTensor over root channels
    allowed: torch.Tensor = None       # removable before width/group constraints
    blocked: str = ""                  # reason the whole group is kept
    fresh: dict[str, torch.Tensor] = field(default_factory=dict)  # per site: items no earlier group had

    def block(self, reason: str) -> None:
        """Keep every channel of the group, for ``reason``."""
        self.blocked = reason
        self.removable = self.allowed = torch.zeros(self.root_width, dtype=torch.bool)


def _zero_preserving(node: Any) -> bool:
    kind = node_kind(node)
    if kind in ("concat", "split", "reshape", "expand"):
        return True
    if kind != "elementwise":
        return False
    name = op_name(node)
    return (name in _ZERO_PRESERVING or name.startswith(_ZERO_PRESERVING_PREFIXES)
            or (name == "asstrided" and _identity_view(node)))


def _weight_op(node: Any) -> bool:
    """An op on a parameter (a Linear's weight transpose), not on the data flowing through."""
    return node_kind(node) == "elementwise" and not node.inputs


def _identity_view(node: Any) -> bool:
    """An as_strided that views its whole input unchanged: how autograd records an in-place
    ReLU on a view (a Linear's output on 3-D input); the ReLU itself sits in a CopySlices."""
    fn = node.grad_fn
    size, stride = tuple(fn._saved_size), tuple(fn._saved_stride)
    contiguous = tuple(torch.empty(size, device="meta").stride())
    return stride == contiguous and fn._saved_storage_offset == 0


_LINEAR_INTERNAL = frozenset({"addmm", "mm", "bmm", "matmul"})
"""Matmuls that nn.Linear runs on 3-D inputs; tracing shows them as separate ops."""
_FUSED_INTERNAL = frozenset({"nativebatchnorm", "nativegroupnorm"})
"""Norms that a fused norm + activation layer (a norm subclass, timm-style) runs functionally."""


def _layer_internal(node: Any) -> bool:
    """An autograd op that is part of the layer it feeds, not a data op: a Linear's matmul on
    3-D input, or the functional norm inside a fused norm + activation layer."""
    if node_kind(node) != "elementwise" or not node.outputs:
        return False
    name = op_name(node)
    return ((name in _LINEAR_INTERNAL and all(isinstance(o.module, nn.Linear) for o in node.outputs))
            or (name in _FUSED_INTERNAL and all(isinstance(o.module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm))
                                                for o in node.outputs)))


def _data_inputs(node: Any) -> list[Any]:
    """The nodes whose values a layer reads, looking through a Linear's own matmul."""
    out = []
    for inp in node.inputs:
        if _layer_internal(inp):
            out.extend(i for i in inp.inputs if i.inputs or node_kind(i) != "elementwise")
        else:
            out.append(inp)
    return out


def _is_consumer(dg: Any, item: GroupItem) -> bool:
    """A layer that mixes the group's channels into others: its input must see zeros."""
    m = item.node.module
    if not tp_compat.is_in_channel_fn(dg, item.handler):
        return False
    if isinstance(m, nn.modules.conv._ConvNd):
        return not tp_compat.is_depthwise(m)
    return isinstance(m, (nn.Linear, ChannelSelect))


def _blocking_member(item: GroupItem, exact: bool, shared: set[int]) -> str:
    """Why a group member forbids any removal in the group ('' when it does not)."""
    m = item.node.module
    kind = node_kind(item.node)
    if isinstance(m, nn.Module) and any(id(p) in shared for p in m._parameters.values()):
        return f"{type(m).__name__} shares its weight with another layer (tied parameters)"
    if kind == "output":
        return "its channels reach the model output"
    if isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups == m.out_channels != m.in_channels:
        return "a grouped conv with one output per group (torch-pruning would treat it as depthwise)"
    if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm,
                      nn.GroupNorm, ChannelSelect)):
        return ""
    if isinstance(m, nn.LayerNorm):
        return "" if not exact else "a LayerNorm normalises over its channels (not exact)"
    if kind in ("concat", "split", "reshape", "slice", "expand"):
        return ""
    if kind == "elementwise" and (
            _weight_op(item.node) or _layer_internal(item.node) or op_name(item.node) in _CHANNELWISE or _zero_preserving(item.node)):
        return ""
    if kind == "parameter":
        return f"a per-channel parameter of shape {tuple(m.shape)} is tied to its channels"
    what = op_name(item.node) if kind == "elementwise" else type(m).__name__
    return f"unsupported operation '{what}' is tied to its channels"


def _map_to_root(item: GroupItem, values: torch.Tensor, width: int) -> torch.Tensor:
    """Bool over root channels: AND of ``values[idx]`` over the idxs each root channel maps to."""
    out = torch.ones(width, dtype=torch.bool)
    covered = torch.zeros(width, dtype=torch.bool)
    idx = torch.as_tensor(item.idxs, dtype=torch.long)
    root = torch.as_tensor(item.root_idxs, dtype=torch.long)
    covered[root] = True
    out.scatter_reduce_(0, root, values[idx], reduce="amin")
    return out & covered


class _Analysis:
    """Decides, group by group, which root channels may be removed."""

    def __init__(self, dg: Any, site_nodes: dict[str, Any],
                 masks: dict[str, torch.Tensor], exact: bool, min_units: int, shared: set[int]):
        self.dg, self.site_nodes, self.masks, self.shared = dg, site_nodes, masks, shared
        self.node_site = {node: name for name, node in site_nodes.items()}
        self.exact, self.min_units = exact, min_units
        self.already = {name: 0 for name in masks}  # units planned away by earlier groups

    def group(self, name: str, channels: list[int]) -> _Group:
        """The group of the site's ``channels`` (root indices stay the site's own numbering)."""
        node = self.site_nodes[name]
        width = self.masks[name].numel()
        try:
            items = tp_compat.pruning_group(self.dg, node.module, channels)
            sites = {self.node_site[it.node]: it for it in items if it.node in self.node_site}
            g = _Group(name, width, items, sites)
            self._decide(g)
            out_of_range = [n for n, it in sites.items() if max(it.idxs, default=-1) >= self.masks[n].numel()]
            if out_of_range and not g.blocked:
                raise IndexError(f"site '{out_of_range[0]}' mapped beyond its width")
            g.sites = {n: it for n, it in sites.items() if n not in out_of_range}
        except Exception as e:  # torch-pruning cannot map this graph shape: keep the group whole
            root = GroupItem(node, None, list(channels), list(channels))
            g = _Group(name, width, [root], {name: root})
            g.block(f"torch-pruning cannot map its channels ({type(e).__name__}: {e})")
        return g

    def _decide(self, g: _Group) -> None:
        for it in g.items:
            reason = _blocking_member(it, self.exact, self.shared)
            if reason:
                g.block(reason)
                return
        if self.exact:
            removable = self._guarded(g)
        else:  # remove what is marked at every site of the group
            removable = torch.ones(g.root_width, dtype=torch.bool)
            for name, it in g.sites.items():
                removable &= _map_to_root(it, self.masks[name], g.root_width)
        g.allowed = removable
        g.removable = self._constrain(g, removable)

    def _guarded(self, g: _Group) -> torch.Tensor:
        """Root channels that every consumer reads through a dead site (so only as zeros)."""
        members = {it.node: it for it in g.items}
        memo: dict[Any, torch.Tensor] = {}
        none = torch.zeros(g.root_width, dtype=torch.bool)

        def covered(it: GroupItem) -> torch.Tensor:
            cov = none.clone()
            cov[torch.as_tensor(it.root_idxs, dtype=torch.long)] = True
            return cov

        def through(inputs: list[Any]) -> torch.Tensor:
            """Root channels that are zero in every input carrying them (a shared layer's
            calls, a concatenation's parts), and carried by at least one."""
            acc, carried = ~none, none.clone()
            for inp in inputs:
                if inp in members and not _weight_op(inp):
                    cov = covered(members[inp])
                    acc &= zero(inp) | ~cov
                    carried |= cov
            return acc & carried

        def zero(node: Any) -> torch.Tensor:
            if node in memo:
                return memo[node]
            memo[node] = none  # cycles are impossible, but stay safe
            it = members.get(node)
            if it is None:
                return none
            result = none.clone()
            name = self.node_site.get(node)
            if name is not None:
                result |= _map_to_root(it, self.masks[name], g.root_width)
            if name is not None or _zero_preserving(node):
                result |= through(node.inputs)
            memo[node] = result
            return result

        removable = torch.ones(g.root_width, dtype=torch.bool)
        has_consumer = False
        for it in g.items:
            if _is_consumer(self.dg, it):
                has_consumer = True
                removable &= through(_data_inputs(it.node)) | ~covered(it)
        if not has_consumer:
            return torch.zeros(g.root_width, dtype=torch.bool)
        # never remove a channel that no site of the group reports dead
        anydead = torch.zeros(g.root_width, dtype=torch.bool)
        for name, it in g.sites.items():
            anydead |= _map_to_root(it, self.masks[name], g.root_width)
        return removable & anydead

    def whole_groupnorm_groups(self, groups: list[_Group]) -> None:
        """Keep every part of a GroupNorm group that is not removed whole.

        A concatenation seam inside a GroupNorm group splits the group's channels between
        pruning groups, which each see only their part: the group goes only if every part goes.
        """
        for _ in range(16):
            gone: dict[nn.GroupNorm, torch.Tensor] = {}
            members = [(g, it) for g in groups for it in g.items if isinstance(it.node.module, nn.GroupNorm)]
            for g, it in members:
                m = it.node.module
                mark = gone.setdefault(m, torch.zeros(m.num_channels, dtype=torch.bool))
                mark[torch.as_tensor(it.idxs, dtype=torch.long)] |= g.removable[torch.as_tensor(it.root_idxs)]
            changed = False
            for g, it in members:
                m = it.node.module
                per_group = gone[m].view(m.num_groups, -1).sum(1)
                partial = (per_group > 0) & (per_group < m.num_channels // m.num_groups)
                idx, root = torch.as_tensor(it.idxs, dtype=torch.long), torch.as_tensor(it.root_idxs)
                drop = partial[idx // (m.num_channels // m.num_groups)] & g.removable[root]
                if drop.any():
                    removable = g.removable.clone()
                    removable[root[drop]] = False
                    self.claim(g, -1)
                    g.removable, changed = self._constrain(g, removable), True
                    self.claim(g, +1)
            if not changed:
                return

    def coupled_reason(self, g: _Group) -> str:
        """Why dead units of an unblocked group stay: a norm right after a ReLU, or live partners."""
        if not self.exact:
            return "not marked at every coupled site"
        norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
        if any(isinstance(it.node.module, norms) and any(i in self.node_site for i in it.node.inputs)
               for it in g.items):
            return "a norm layer after the ReLU turns its zeros into non-zeros"
        return "a unit it is tied to is not dead (coupled channels)"

    def claim(self, g: _Group, sign: int) -> None:
        """Count (+1) or uncount (-1) the units ``g`` removes at its sites, for the width floors."""
        for sname, it in g.sites.items():
            idx = torch.as_tensor(it.idxs, dtype=torch.long)[g.fresh[sname]]
            root = torch.as_tensor(it.root_idxs, dtype=torch.long)[g.fresh[sname]]
            self.already[sname] += sign * int(torch.unique(idx[g.removable[root]]).numel())

    def _constrain(self, g: _Group, removable: torch.Tensor) -> torch.Tensor:
        """Apply width floors and balanced grouped convs, to a fixpoint."""
        removable = removable.clone()
        for _ in range(16):
            before = removable.clone()
            for it in g.items:
                removable = self._constrain_item(it, removable)
            if torch.equal(before, removable):
                break
        return removable

    def _constrain_item(self, it: GroupItem, removable: torch.Tensor) -> torch.Tensor:
        m = it.node.module
        idx = torch.as_tensor(it.idxs, dtype=torch.long)
        root = torch.as_tensor(it.root_idxs, dtype=torch.long)
        local = removable[root]  # per mapped channel of this member
        name = self.node_site.get(it.node)
        if name is not None or (not tp_compat.is_in_channel_fn(self.dg, it.handler)
                                and isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))):
            width = self.masks[name].numel() if name is not None else tp_compat.out_channels(self.dg, m)
            floor = self.min_units if name is not None else 1
            gone = torch.unique(idx[local])
            excess = gone.numel() + self.already.get(name, 0) - (width - floor)
            if excess > 0:  # keep the highest-index removable channels of this member
                keep_back = set(gone[-excess:].tolist())
                drop = torch.tensor([int(i) in keep_back for i in idx.tolist()], dtype=torch.bool)
                removable[root[drop]] = False
        if isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups \
                and not tp_compat.is_depthwise(m):
            size = m.in_channels if tp_compat.is_in_channel_fn(self.dg, it.handler) else m.out_channels
            per = size // m.groups
            counts = torch.zeros(m.groups, dtype=torch.long).scatter_add_(
                0, idx // per, local.long())
            # an output side keeps 2 per group: at 1, torch-pruning takes the conv for depthwise
            keep = 2 if not tp_compat.is_in_channel_fn(self.dg, it.handler) and m.in_channels > m.groups else 1
            quota = max(0, min(int(counts.min()), per - keep))
            taken = torch.zeros(m.groups, dtype=torch.long)
            for k in range(len(idx)):
                if local[k]:
                    grp = int(idx[k]) // per
                    if taken[grp] >= quota:
                        removable[root[k]] = False
                    else:
                        taken[grp] += 1
        return removable


# ----------------------------------------------------------------------------- entry point

def build_graph(model: nn.Module, example_inputs: Any, pruners: Optional[Mapping[Any, Any]] = None
                ) -> tuple[Any, dict[str, Any], dict[str, int]]:
    """Trace the model once: its dependency graph, each site's graph node, and site widths.

    ``pruners`` adds torch-pruning pruners for layer types (or instances) it cannot see into.
    """
    grad_fns: list[Any] = []
    widths: list[int] = []

    def on_site(call, out):
        grad_fns.append(out.grad_fn)
        widths.append(out.shape[call.channel_dim])

    tracer = SiteTracer(model, on_site, out_of_place=True)

    def forward(m, x):
        with tracer:
            return call_model(m, x)

    try:
        dg = tp_compat.build_dependency(model, example_inputs, forward,
                                        {ChannelSelect: ChannelSelectPruner(), **(pruners or {})})
    except DempError:
        raise
    except Exception as e:
        raise DempError(f"{type(model).__name__} cannot run on example_inputs ({type(e).__name__}: "
                        f"{e}); give inputs of the shape it expects: a tensor, a tuple of positional "
                        "inputs or a dict of keyword inputs") from None
    names = tracer.names()
    by_grad_fn = {node.grad_fn: node for node in dg.module2node.values()}
    nodes = {n: by_grad_fn[g] for n, g in zip(names, grad_fns) if g is not None and g in by_grad_fn}
    return dg, nodes, dict(zip(names, widths))


def _validate_masks(dead: Mapping[str, Any], widths: dict[str, int]) -> dict[str, torch.Tensor]:
    masks: dict[str, torch.Tensor] = {}
    for name, mask in dead.items():
        if name not in widths:
            known = ", ".join(list(widths)[:12]) + (" ..." if len(widths) > 12 else "")
            raise DempError(f"unknown site '{name}'; the model's ReLU sites are: {known}")
        t = torch.as_tensor(mask)
        if t.dtype != torch.bool or t.dim() != 1:
            raise DempError(f"mask for site '{name}' must be a 1-D BoolTensor, got "
                            f"{t.dtype} of shape {tuple(t.shape)}")
        if t.numel() != widths[name]:
            raise DempError(f"mask for site '{name}' has {t.numel()} entries but the site has "
                            f"{widths[name]} units")
        masks[name] = t.cpu()
    return masks


def _check_finite(model: nn.Module) -> None:
    """Refuse NaN or inf in parameters and floating-point buffers (BatchNorm statistics)."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise DempError(f"parameter '{name}' holds NaN or inf (did training diverge? lower "
                            "the learning rate or reg_peak); nothing was removed")
    for name, b in model.named_buffers():
        if b.is_floating_point() and not torch.isfinite(b).all():
            raise DempError(f"buffer '{name}' holds NaN or inf (normalisation statistics went "
                            "bad: re-estimate them or restart from a checkpoint); nothing was removed")


def _plan(analysis: _Analysis, full: dict[str, torch.Tensor],
          sites: dict[str, SiteRemoval]) -> tuple[list[tuple[_Group, list[int]]], dict[str, torch.Tensor]]:
    """Split the sites' channels into disjoint groups and decide what each may lose.

    A group rooted at one site can cover part of another site's channels (a concat), so
    each site is rooted only at channels no earlier group covered.  Fills ``sites``;
    returns the groups to prune and, per site, the units that will go.
    """
    covered = {n: torch.zeros_like(m) for n, m in full.items()}
    groups: list[_Group] = []
    for name in analysis.site_nodes:
        todo = (~covered[name]).nonzero().flatten()
        if todo.numel() == 0 or (analysis.exact and not full[name][todo].any()):
            continue
        g = analysis.group(name, todo.tolist())
        if any(covered[s][it.idxs].any() for s, it in g.sites.items()):  # groups are disjoint or wrong
            g.block("torch-pruning maps its channels into another site's group (unsupported graph)")
        for sname, it in g.sites.items():
            idx = torch.as_tensor(it.idxs, dtype=torch.long)
            g.fresh[sname] = ~covered[sname][idx]
            covered[sname][idx] = True
        analysis.claim(g, +1)
        groups.append(g)
    analysis.whole_groupnorm_groups(groups)
    removed = {n: torch.zeros_like(m) for n, m in full.items()}
    plans = []
    for g in groups:
        for sname, it in g.sites.items():
            idx = torch.as_tensor(it.idxs, dtype=torch.long)[g.fresh[sname]]
            root = torch.as_tensor(it.root_idxs, dtype=torch.long)[g.fresh[sname]]
            removed[sname][idx] = g.removable[root]
            kept = torch.zeros_like(removed[sname])
            kept[idx] = full[sname][idx] & ~g.removable[root]
            floor = int((kept[idx] & g.allowed[root]).sum())
            _add_reason(sites[sname], "minimum width, whole GroupNorm groups or balanced grouped conv", floor)
            _add_reason(sites[sname], g.blocked or analysis.coupled_reason(g), int(kept.sum()) - floor)
        gone = g.removable.nonzero().flatten().tolist()
        if gone:
            plans.append((g, gone))
    for n, rec in sites.items():
        rec.removed = int(removed[n].sum())
        rec.kept_dead = int((full[n] & ~removed[n]).sum())
    return plans, removed


def _add_reason(rec: SiteRemoval, reason: str, count: int) -> None:
    if count > 0:
        rec.reasons[reason] = rec.reasons.get(reason, 0) + count


class _Refused(Exception):
    """A removal that failed inside surgery or would change the model: where, and why."""

    def __init__(self, where: str, why: str):
        super().__init__(f"{why} (at {where})")
        self.where, self.why = where, why


@dataclass(frozen=True)
class _Options:
    min_units: int
    exact: bool
    verify: bool
    train_check: bool                   # the unpruned model runs in train mode, so must the pruned
    pruners: Mapping[Any, Any]


def _prune_all(dg: Any, site_nodes: dict[str, Any], plans: list[tuple[_Group, list[int]]],
               widths: dict[str, int]) -> None:
    """Prune the planned groups one after another, each in its root's current numbering.

    A group applied earlier may already have taken some of a later root site's channels
    (one site spanning several concatenations), which shifts that root's indices down.
    """
    done = {n: torch.zeros(w, dtype=torch.bool) for n, w in widths.items()}
    for g, gone in plans:
        shift = torch.cumsum(done[g.root_site].long(), 0)
        now = [i - int(shift[i]) for i in gone]
        per_group = {it.node.module: it.node.module.num_channels // it.node.module.num_groups
                     for it in g.items if isinstance(it.node.module, nn.GroupNorm)}
        try:
            tp_compat.prune_out_channels(dg, site_nodes[g.root_site].module, now)
        except Exception as e:  # torch-pruning's own errors (IndexError, KeyError, ...)
            raise _Refused(f"site '{g.root_site}'", f"torch-pruning failed: {type(e).__name__}: {e}") from e
        for gn, per in per_group.items():  # GroupNorms keep their channels-per-group
            gn.num_groups = gn.num_channels // per
        for name, it in g.sites.items():
            idx = torch.as_tensor(it.idxs, dtype=torch.long)
            done[name][idx] |= g.removable[torch.as_tensor(it.root_idxs, dtype=torch.long)]


def _outputs(model: nn.Module, example_inputs: Any, zero: list[Optional[torch.Tensor]]) -> list[torch.Tensor]:
    """Eval-mode outputs with the units ``zero[k]`` of the k-th site call forced to 0."""
    def on_site(call, out):
        mask = zero[call.index] if call.index < len(zero) else None
        if mask is not None and bool(mask.any()):
            shape = [1] * out.dim()
            shape[call.channel_dim] = -1
            out.masked_fill_(mask.to(out.device).view(shape), 0)  # in place: callers of ReLU_ keep `out`
        return out

    with eval_mode(model), torch.no_grad(), SiteTracer(model, on_site):
        return [t.detach().clone() for t in flatten_outputs(call_model(model, example_inputs))]


def _train_forward(model: nn.Module, example_inputs: Any) -> str:
    """'' when one train-mode forward runs; modes, buffers and RNG are left as they were."""
    try:
        with kept_modes(model), kept_buffers(model, rng=True), torch.no_grad():
            call_model(model.train(), example_inputs)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return ""


def _verify(model: nn.Module, example_inputs: Any, reference: list[torch.Tensor], train_check: bool) -> str:
    """'' when the pruned model computes ``reference`` and still runs in train mode."""
    try:
        problem = compare_outputs(reference, _outputs(model, example_inputs, []))
    except Exception as e:
        return f"the pruned model's forward pass fails ({type(e).__name__}: {e})"
    if not problem and train_check:
        failed = _train_forward(model, example_inputs)
        problem = f"the pruned model fails in train mode ({failed})" if failed else ""
    return problem


def _attempt(model: nn.Module, dead: Mapping[str, Any], example_inputs: Any,
             optimizer: Optional[torch.optim.Optimizer], opts: _Options
             ) -> tuple[dict[str, SiteRemoval], dict[str, torch.Tensor]]:
    """Plan and apply one removal; ``_Refused`` (model possibly half changed) when it is not exact.

    The removal must equal zeroing, at each site, the units that go and were marked: a unit
    that goes without being marked (a shared layer's other call, a coupled live channel)
    is then a difference, and so is any channel that left without passing through a site.
    """
    def on_replace(old, new, slicer):
        if optimizer is not None:
            move_optimizer_state(optimizer, old, new, slicer)

    # one recording context for tracing and pruning: the graph binds the patched handlers
    with tp_compat.recording(on_replace):
        dg, site_nodes, widths = build_graph(model, example_inputs, opts.pruners)
        plans, removed, sites, full = _analyse(model, dg, site_nodes, widths, dead, opts)
        if not plans:
            return sites, removed
        reference = (_outputs(model, example_inputs, [removed[n] & full[n] for n in widths])
                     if opts.verify else [])
        _prune_all(dg, site_nodes, plans, widths)
    if opts.verify:
        problem = _verify(model, example_inputs, reference, opts.train_check)
        if problem:
            where = ", ".join(f"'{n}'" for n in widths if removed[n].any())
            raise _Refused(f"site(s) {where}", problem)
    return sites, removed


def _analyse(model: nn.Module, dg: Any, site_nodes: dict[str, Any], widths: dict[str, int],
             dead: Mapping[str, Any], opts: _Options) -> tuple[list, dict[str, torch.Tensor],
                                                              dict[str, SiteRemoval], dict[str, torch.Tensor]]:
    """The groups to prune, the units each site loses, the per-site record, and the masks."""
    if not widths:
        raise DempError(f"{type(model).__name__} has no ReLU site (nn.ReLU, F.relu, torch.relu)")
    masks = _validate_masks(dead, widths)
    full = {n: masks.get(n, torch.zeros(w, dtype=torch.bool)) for n, w in widths.items()}
    sites = {n: SiteRemoval(w, dead=int(full[n].sum())) for n, w in widths.items()}
    for n in widths:
        if n not in site_nodes:
            _add_reason(sites[n], "its output does not reach the model output", sites[n].dead)
    analysis = _Analysis(dg, site_nodes, full, opts.exact, opts.min_units, _shared_params(model))
    plans, removed = _plan(analysis, full, sites)
    return plans, removed, sites, full


def planned_removal(model: nn.Module, dead: Mapping[str, Any], example_inputs: Any, *, min_units: int = 1,
                    pruners: Optional[Mapping[Any, Any]] = None) -> dict[str, torch.Tensor]:
    """The units ``remove_units`` would take out of ``dead`` (``{site: BoolTensor}``), found
    without changing anything: dead units tied to live ones, or kept by width floors, are not in
    it.  Lets a caller choose among units that can go (a budget, rounded widths)."""
    _check_request(model, dead, example_inputs, None, min_units)
    dg, site_nodes, widths = build_graph(model, example_inputs, pruners)
    opts = _Options(min_units, exact=True, verify=False, train_check=False, pruners=dict(pruners or {}))
    _, removed, _, full = _analyse(model, dg, site_nodes, widths, dead, opts)
    return {n: removed[n] & full[n] for n in widths}


def _retry_by_site(model: nn.Module, dead: Mapping[str, Any], example_inputs: Any,
                   optimizer: Optional[torch.optim.Optimizer], opts: _Options) -> dict[str, SiteRemoval]:
    """After a refused removal, try each site's units on their own; keep what is exact."""
    widths = {s.name: s.width for s in list_sites(model, example_inputs)}
    full = {n: torch.as_tensor(dead[n]).cpu() if n in dead else torch.zeros(w, dtype=torch.bool)
            for n, w in widths.items()}
    alive = {n: torch.ones(w, dtype=torch.bool) for n, w in widths.items()}
    sites = {n: SiteRemoval(w, dead=int(full[n].sum())) for n, w in widths.items()}
    for name in widths:
        todo = full[name] & alive[name]
        if not todo.any():
            continue
        snapshot = Snapshot(model, optimizer)
        try:
            own, removed = _attempt(model, {name: full[name][alive[name]]}, example_inputs, optimizer, opts)
        except _Refused as failure:
            snapshot.restore()
            _add_reason(sites[name], f"removing them would not be exact: {failure.why}", int(todo.sum()))
            continue
        except BaseException:
            snapshot.restore()
            raise
        for n, r in removed.items():
            idx = alive[n].nonzero().flatten()
            alive[n][idx[r]] = False
        for reason, count in own[name].reasons.items():
            _add_reason(sites[name], reason, count)
    for n, rec in sites.items():
        rec.removed = int((~alive[n]).sum())
        rec.kept_dead = int((full[n] & alive[n]).sum())
    return sites


def _shared_params(model: nn.Module) -> set[int]:
    """ids of Parameters that more than one module holds (tied weights)."""
    seen: dict[int, int] = {}
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                seen[id(p)] = seen.get(id(p), 0) + 1
    return {i for i, k in seen.items() if k > 1}


def _check_request(model: nn.Module, dead: Any, example_inputs: Any,
                   optimizer: Optional[torch.optim.Optimizer], min_units: int) -> None:
    """Refuse bad arguments with a DempError before anything is touched."""
    if min_units < 1:
        raise DempError(f"min_units must be >= 1 (a layer may never reach zero width), got {min_units}")
    if not isinstance(dead, Mapping):
        raise DempError("dead must be a dict {site name: BoolTensor}, as returned by find_dead_units")
    check_model_device(model)
    check_inputs(example_inputs, "example_inputs")
    check_device(model, example_inputs, "example_inputs")
    parametrized = [n for n, m in model.named_modules() if parametrize.is_parametrized(m)]
    if parametrized:
        raise DempError(f"module '{parametrized[0]}' has a parametrization (weight_norm, "
                        "spectral_norm, ...), which DemP cannot slice yet; remove it with "
                        "torch.nn.utils.parametrize.remove_parametrizations before removal")
    if optimizer is not None:
        own = {id(p) for p in model.parameters()}
        if not any(id(p) in own for g in optimizer.param_groups for p in g["params"]):
            raise DempError("the optimizer holds none of the model's parameters (was it built "
                            "for another model, or before the model was replaced?)")
        check_optimizer(optimizer, model)
    _check_finite(model)


def remove_units(model: nn.Module, dead: Mapping[str, Any], example_inputs: Any,
                 optimizer: Optional[torch.optim.Optimizer] = None, *, min_units: int = 1,
                 exact: bool = True, verify: bool = True,
                 pruners: Optional[Mapping[Any, Any]] = None) -> RemovalReport:
    """Remove the given units from ``model`` in place and slice ``optimizer``'s state to match.

    ``dead`` maps site names to BoolTensors (True = remove).  With ``exact`` (the default)
    a unit goes only when removal keeps the network's function on the data the masks came
    from; dead units that must stay are reported with the reason.  ``exact=False`` removes
    marked units even if they are live (used by the baselines).

    With ``verify`` (the default) the removal is all-or-nothing: the pruned model must give,
    on ``example_inputs``, the outputs of the original with the removed units set to zero,
    and still run in train mode.  Otherwise the model and optimizer are restored exactly
    and each site is retried alone; units whose removal is not exact stay, with the reason.
    ``example_inputs`` is a tensor, a tuple of positional inputs or a dict of keyword inputs.
    ``pruners`` maps layer types (or instances) to extra torch-pruning pruners
    (``demp.core.tp_compat.BasePruningFunc``) for layers the dependency graph cannot see into.
    """
    start = time.perf_counter()
    _check_request(model, dead, example_inputs, optimizer, min_units)
    params_before = count_params(model)
    train_check = verify and not _train_forward(model, example_inputs)
    opts = _Options(min_units, exact, verify, train_check, dict(pruners or {}))
    snapshot = Snapshot(model, optimizer)
    try:
        sites, _ = _attempt(model, dead, example_inputs, optimizer, opts)
    except _Refused:
        snapshot.restore()
        sites = _retry_by_site(model, dead, example_inputs, optimizer, opts)
    except BaseException:
        snapshot.restore()
        raise
    return RemovalReport(units_before=sum(s.width_before for s in sites.values()),
                         units_removed=sum(s.removed for s in sites.values()),
                         params_before=params_before, params_after=count_params(model),
                         sites=sites, seconds=time.perf_counter() - start)
