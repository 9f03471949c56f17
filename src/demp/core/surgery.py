"""Physical removal of units, and of their optimizer state (docs/method.md, "Structural removal").

torch-pruning's dependency graph finds, for each ReLU site, the *group* of layers whose
channels are tied to the site's units (the producing conv/linear and its norm layer, the
consumers' input columns, flatten/concat index maps, residual additions).  Which channels may
go is ``demp.core.analysis``; this module applies a plan: it prunes the groups, verifies that
the pruned network computes what the original did with the removed units zeroed, and restores
model and optimizer exactly (then retries site by site) when it does not.  Every parameter
replacement that torch-pruning makes goes through one recorded function, which slices the
optimizer state the same way.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, MutableMapping, Optional, Sequence

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from demp.core import tp_compat
from demp.core.detection import (SiteTracer, call_model, check_device, check_inputs, check_model_device,
                                 list_sites)
from demp.core.analysis import Group, add_reason, plan
from demp.core.skip import ChannelSelect, ChannelSelectPruner
from demp.core.tp_compat import Slicer
from demp.core.utils import count_params, eval_mode, kept_buffers, kept_modes
from demp.core.verify import Snapshot, compare_outputs, flatten_outputs
from demp.errors import DempError



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
            return flatten_outputs(call_model(m, x))   # tensors only: no caches or other objects

    pruners = {ChannelSelect: ChannelSelectPruner(), **tp_compat.graph_pruners(pruners)}
    try:
        dg = tp_compat.build_dependency(model, example_inputs, forward, pruners)
    except DempError:
        raise
    except Exception as e:
        raise _graph_error(model, example_inputs, e, pruners) from None
    names = tracer.names()
    by_grad_fn = tp_compat.nodes_by_grad_fn(dg)
    nodes = {n: by_grad_fn[g] for n, g in zip(names, grad_fns) if g is not None and g in by_grad_fn}
    return dg, nodes, dict(zip(names, widths))


def _graph_error(model: nn.Module, example_inputs: Any, error: Exception, pruners: Mapping[Any, Any]) -> DempError:
    """Why tracing failed: the model itself fails on the inputs, or torch-pruning cannot build
    its dependency graph (then the layer types it has no pruner for are named)."""
    name = type(model).__name__
    try:
        with eval_mode(model), torch.no_grad():
            call_model(model, example_inputs)
    except Exception as e:
        return DempError(f"{name} cannot run on example_inputs ({type(e).__name__}: {e}); give inputs of "
                         "the shape it expects: a tensor, a tuple of positional inputs or a dict of "
                         "keyword inputs")
    unknown = tp_compat.unknown_layer_types(model, pruners)
    hint = (f"; layer types with weights that torch-pruning has no pruner for: {', '.join(unknown)}; "
            f"register one with pruners={{{unknown[0]}: MyPruner()}} (a subclass of "
            "demp.core.tp_compat.BasePruningFunc)" if unknown else
            "; if a custom layer causes it, register a pruner for its type with pruners={Layer: "
            "MyPruner()} (a subclass of demp.core.tp_compat.BasePruningFunc)")
    return DempError(f"the dependency graph of {name} could not be built (the model runs on "
                     f"example_inputs, but torch-pruning failed tracing it: {type(error).__name__}: "
                     f"{error}){hint}")


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
    follow: tuple = ()                  # per-parameter tensors (dicts param -> tensor) sliced with it


def _prune_all(dg: Any, site_nodes: dict[str, Any], plans: list[tuple[Group, list[int]]],
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
        for mapping in opts.follow:
            if old in mapping:
                mapping[new] = slicer(mapping.pop(old))

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
            add_reason(sites[n].reasons, "its output does not reach the model output", sites[n].dead)
    result = plan(dg, site_nodes, full, opts.exact, opts.min_units, _shared_params(model))
    for n, rec in sites.items():
        for reason, count in result.reasons[n].items():
            add_reason(rec.reasons, reason, count)
        rec.removed = int(result.removed[n].sum())
        rec.kept_dead = int((full[n] & ~result.removed[n]).sum())
    return result.groups, result.removed, sites, full


@dataclass
class TiedUnits:
    """Dead units that can go only together: one dependency group's removable channels.

    ``channels[k]`` lists, per site, the units that the group's k-th removable root channel
    takes (one site for a plain layer; every site of a residual stream, a concatenation or a
    depthwise pair for a coupled one).  A budget spends whole channels, so each request it
    makes is one that surgery accepts.
    """
    root: str                                  # the site the group is rooted at
    width: int                                 # the root site's width
    channels: list[dict[str, list[int]]]

    @property
    def units_per_channel(self) -> float:
        """Units one channel takes, over every site it is tied to."""
        return sum(sum(len(v) for v in c.values()) for c in self.channels) / max(1, len(self.channels))

    def masks(self, take: int, widths: Mapping[str, int]) -> dict[str, torch.Tensor]:
        """Per site, the units of the first ``take`` channels (True = remove)."""
        out: dict[str, torch.Tensor] = {}
        for channel in self.channels[:take]:
            for site, units in channel.items():
                out.setdefault(site, torch.zeros(widths[site], dtype=torch.bool))[units] = True
        return out


def removal_groups(model: nn.Module, dead: Mapping[str, Any], example_inputs: Any, *, min_units: int = 1,
                   pruners: Optional[Mapping[Any, Any]] = None
                   ) -> tuple[list[TiedUnits], dict[str, dict[str, int]]]:
    """What ``remove_units`` would take out of ``dead`` (``{site: BoolTensor}``), as groups of
    tied units, and per site the reasons the other dead units stay (tied to live ones, width
    floors), found without changing anything.  Lets a caller choose among units that can go (a
    budget, rounded widths) in whole channels."""
    _check_request(model, dead, example_inputs, None, min_units)
    dg, site_nodes, widths = build_graph(model, example_inputs, pruners)
    opts = _Options(min_units, exact=True, verify=False, train_check=False, pruners=dict(pruners or {}))
    plans, _, sites, full = _analyse(model, dg, site_nodes, widths, dead, opts)
    out = []
    for g, gone in plans:
        per_root: dict[int, dict[str, list[int]]] = {r: {} for r in gone}
        for site, it in g.sites.items():
            for idx, root, fresh in zip(it.idxs, it.root_idxs, g.fresh[site].tolist()):
                if fresh and root in per_root and bool(full[site][idx]):
                    per_root[root].setdefault(site, []).append(int(idx))
        channels = [per_root[r] for r in gone if per_root[r]]
        if channels:
            out.append(TiedUnits(g.root_site, widths[g.root_site], channels))
    return out, {n: dict(rec.reasons) for n, rec in sites.items() if rec.reasons}


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
        snapshot = Snapshot(model, optimizer, opts.follow)
        try:
            own, removed = _attempt(model, {name: full[name][alive[name]]}, example_inputs, optimizer, opts)
        except _Refused as failure:
            snapshot.restore()
            add_reason(sites[name].reasons, f"removing them would not be exact: {failure.why}", int(todo.sum()))
            continue
        except BaseException:
            snapshot.restore()
            raise
        for n, r in removed.items():
            idx = alive[n].nonzero().flatten()
            alive[n][idx[r]] = False
        for reason, count in own[name].reasons.items():
            add_reason(sites[name].reasons, reason, count)
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
                 exact: bool = True, verify: bool = True, pruners: Optional[Mapping[Any, Any]] = None,
                 follow: Sequence[MutableMapping[Any, torch.Tensor]] = ()) -> RemovalReport:
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
    ``follow``: dicts from parameters to tensors shaped like them (sparsity masks) whose entries
    are sliced and re-keyed with their parameter, and restored with the model on a refusal.
    """
    start = time.perf_counter()
    _check_request(model, dead, example_inputs, optimizer, min_units)
    params_before = count_params(model)
    train_check = verify and not _train_forward(model, example_inputs)
    opts = _Options(min_units, exact, verify, train_check, dict(pruners or {}), tuple(follow))
    snapshot = Snapshot(model, optimizer, opts.follow)
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
