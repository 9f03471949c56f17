"""Which marked units may go: the analysis of a removal, changing nothing (docs/method.md,
"Structural removal").

Input: torch-pruning's dependency graph, each site's graph node, and per site a mask of marked
(dead) units.  Output (``Plan``): the groups to prune with the root channels each loses, per
site the units that go, and per site the reasons marked units stay.  A group is torch-pruning's
set of layers tied to some of a site's channels; its channels go only when the rules allow:

- no member forbids it (tied weights, the model output, an operation demp cannot follow, a
  LayerNorm when exactness is asked);
- exact removal: every layer that consumes the channels reads them through a site where they
  are dead, so it only ever sees zeros;
- width floors (no site below ``min_units``, no layer below one channel), grouped convolutions
  kept balanced, GroupNorm groups removed whole.

Width floors count the units that earlier groups plan away at a site, read from those groups
(``planned_units``), not from a running counter.  Applying a plan is ``demp.core.surgery``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from demp.core import tp_compat
from demp.core.skip import ChannelSelect
from demp.core.tp_compat import GroupItem, node_kind, op_name

_ZERO_PRESERVING = frozenset({"relu", "hardtanh", "mean", "view", "reshapealias", "unsafeview",
                              "permute", "transpose", "clone", "tocopy", "expand", "squeeze",
                              "unsqueeze", "mul", "nativedropout", "alias"})
_ZERO_PRESERVING_PREFIXES = ("maxpool", "avgpool", "adaptiveavgpool", "adaptivemaxpool", "upsample")
"""Ops (autograd names without 'Backward') whose output channel is zero where the input's is."""
_CHANNELWISE = _ZERO_PRESERVING | {"add", "sub", "copyslices"}
"""Ops that act on each channel separately, so a group may contain them."""


@dataclass
class Group:
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


@dataclass
class Plan:
    """What a removal does: groups with the root channels each loses, units going per site, and
    the reasons marked units stay."""
    groups: list[tuple[Group, list[int]]]
    removed: dict[str, torch.Tensor]
    reasons: dict[str, dict[str, int]]


def planned_units(site: str, groups: list[Group]) -> int:
    """Units of ``site`` that ``groups`` remove (each group counting only its fresh channels)."""
    total = 0
    for g in groups:
        it = g.sites.get(site)
        if it is None or site not in g.fresh:
            continue
        idx = torch.as_tensor(it.idxs, dtype=torch.long)[g.fresh[site]]
        root = torch.as_tensor(it.root_idxs, dtype=torch.long)[g.fresh[site]]
        total += int(torch.unique(idx[g.removable[root]]).numel())
    return total


def _zero_preserving(node: Any) -> bool:
    """An op whose output channel is zero wherever its input channel is."""
    kind = node_kind(node)
    if kind in ("concat", "split", "reshape", "expand"):
        return True
    if kind != "elementwise":
        return False
    name = op_name(node)
    return name in _ZERO_PRESERVING or name.startswith(_ZERO_PRESERVING_PREFIXES)


def _weight_op(node: Any) -> bool:
    """An op on a parameter (a Linear's weight transpose), not on the data flowing through."""
    return node_kind(node) == "elementwise" and not node.inputs


_LINEAR_INTERNAL = frozenset({"addmm", "mm", "bmm", "matmul"})
"""Matmuls that nn.Linear runs on 3-D inputs (Conv1D always); tracing shows them as separate ops."""
_FUSED_INTERNAL = frozenset({"nativebatchnorm", "nativegroupnorm"})
"""Norms that a fused norm + activation layer (a norm subclass, timm-style) runs functionally."""


def _layer_internal(node: Any) -> bool:
    """An autograd op that is part of the layer it feeds, not a data op: a Linear's matmul on
    3-D input, or the functional norm inside a fused norm + activation layer."""
    if node_kind(node) != "elementwise" or not node.outputs:
        return False
    name = op_name(node)
    return ((name in _LINEAR_INTERNAL and all(tp_compat.is_linear(o.module) for o in node.outputs))
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
    return tp_compat.is_linear(m) or isinstance(m, ChannelSelect)


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
    if tp_compat.is_linear(m) or isinstance(m, (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm,
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
    """The rules, applied group by group; holds only the graph and the masks (no running state)."""

    def __init__(self, dg: Any, site_nodes: dict[str, Any],
                 masks: dict[str, torch.Tensor], exact: bool, min_units: int, shared: set[int]):
        self.dg, self.site_nodes, self.masks, self.shared = dg, site_nodes, masks, shared
        self.node_site = {node: name for name, node in site_nodes.items()}
        self.exact, self.min_units = exact, min_units

    def group(self, name: str, channels: list[int], decided: list[Group]) -> Group:
        """The group of the site's ``channels`` (root indices stay the site's own numbering),
        decided after the groups in ``decided``."""
        node = self.site_nodes[name]
        width = self.masks[name].numel()
        try:
            items = tp_compat.pruning_group(self.dg, node.module, channels)
            sites = {self.node_site[it.node]: it for it in items if it.node in self.node_site}
            g = Group(name, width, items, sites)
            self._decide(g, decided)
            out_of_range = [n for n, it in sites.items() if max(it.idxs, default=-1) >= self.masks[n].numel()]
            if out_of_range and not g.blocked:
                raise IndexError(f"site '{out_of_range[0]}' mapped beyond its width")
            g.sites = {n: it for n, it in sites.items() if n not in out_of_range}
        except Exception as e:  # torch-pruning cannot map this graph shape: keep the group whole
            root = GroupItem(node, None, list(channels), list(channels))
            g = Group(name, width, [root], {name: root})
            g.block(f"torch-pruning cannot map its channels ({type(e).__name__}: {e})")
        return g

    def _decide(self, g: Group, decided: list[Group]) -> None:
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
        g.removable = self._constrain(g, removable, decided)

    def _guarded(self, g: Group) -> torch.Tensor:
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

    def whole_groupnorm_groups(self, groups: list[Group]) -> None:
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
                    others = [h for h in groups if h is not g]
                    g.removable, changed = self._constrain(g, removable, others), True
            if not changed:
                return

    def coupled_reason(self, g: Group) -> str:
        """Why dead units of an unblocked group stay: a norm right after a ReLU, or live partners."""
        if not self.exact:
            return "not marked at every coupled site"
        norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
        if any(isinstance(it.node.module, norms) and any(i in self.node_site for i in it.node.inputs)
               for it in g.items):
            return "a norm layer after the ReLU turns its zeros into non-zeros"
        return "a unit it is tied to is not dead (coupled channels)"

    def _constrain(self, g: Group, removable: torch.Tensor, decided: list[Group]) -> torch.Tensor:
        """Apply width floors and balanced grouped convs, to a fixpoint."""
        removable = removable.clone()
        for _ in range(16):
            before = removable.clone()
            for it in g.items:
                removable = self._constrain_item(it, removable, decided)
            if torch.equal(before, removable):
                break
        return removable

    def _constrain_item(self, it: GroupItem, removable: torch.Tensor, decided: list[Group]) -> torch.Tensor:
        m = it.node.module
        idx = torch.as_tensor(it.idxs, dtype=torch.long)
        root = torch.as_tensor(it.root_idxs, dtype=torch.long)
        local = removable[root]  # per mapped channel of this member
        name = self.node_site.get(it.node)
        if name is not None or (not tp_compat.is_in_channel_fn(self.dg, it.handler)
                                and (isinstance(m, nn.modules.conv._ConvNd) or tp_compat.is_linear(m))):
            width = self.masks[name].numel() if name is not None else tp_compat.out_channels(self.dg, m)
            floor = self.min_units if name is not None else 1
            gone = torch.unique(idx[local])
            excess = gone.numel() + (planned_units(name, decided) if name is not None else 0) - (width - floor)
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



def plan(dg: Any, site_nodes: dict[str, Any], masks: dict[str, torch.Tensor], exact: bool, min_units: int,
         shared: set[int]) -> Plan:
    """Split the sites' channels into disjoint groups and decide what each may lose.

    ``masks``: per site, the marked (dead) units.  A group rooted at one site can cover part of
    another site's channels (a concat), so each site is rooted only at channels no earlier
    group covered.
    """
    analysis = _Analysis(dg, site_nodes, masks, exact, min_units, shared)
    full = masks
    reasons: dict[str, dict[str, int]] = {n: {} for n in masks}
    covered = {n: torch.zeros_like(m) for n, m in full.items()}
    groups: list[Group] = []
    for name in analysis.site_nodes:
        todo = (~covered[name]).nonzero().flatten()
        if todo.numel() == 0 or (analysis.exact and not full[name][todo].any()):
            continue
        g = analysis.group(name, todo.tolist(), groups)
        if any(covered[s][it.idxs].any() for s, it in g.sites.items()):  # groups are disjoint or wrong
            g.block("torch-pruning maps its channels into another site's group (unsupported graph)")
        for sname, it in g.sites.items():
            idx = torch.as_tensor(it.idxs, dtype=torch.long)
            g.fresh[sname] = ~covered[sname][idx]
            covered[sname][idx] = True
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
            add_reason(reasons[sname], "minimum width, whole GroupNorm groups or balanced grouped conv", floor)
            add_reason(reasons[sname], g.blocked or analysis.coupled_reason(g), int(kept.sum()) - floor)
        gone = g.removable.nonzero().flatten().tolist()
        if gone:
            plans.append((g, gone))
    return Plan(plans, removed, reasons)


def add_reason(reasons: dict[str, int], reason: str, count: int) -> None:
    """Count ``count`` marked units kept for ``reason`` (nothing for 0)."""
    if count > 0:
        reasons[reason] = reasons.get(reason, 0) + count
