"""demp: Demon Pruning (DemP) for PyTorch.

Trains a network while pushing ReLU units to death (scheduled L1 on normalisation scales,
live-only noise) and physically removing the dead ones, optimizer state included.

Layers: ``demp.core`` is the library a training loop imports (detection, schedules,
regulariser, noise, surgery, pruner); ``demp.app`` is the application behind ``demp train``
(config, data, models, methods, training, checkpoints, export); ``demp.experiments`` builds
on many runs (sweeps, reports).  The public names below load on first use, so importing
``demp`` (or ``demp.cli``) does not import torch by itself.
"""
from importlib import import_module
from typing import Any

_PUBLIC = {
    "ChannelSelect": "demp.core.skip",
    "DempError": "demp.errors",
    "DemonPruner": "demp.core.pruner",
    "DemPConfig": "demp.core.pruner",
    "NormActPruner": "demp.core.tp_compat",
    "RemovalEvent": "demp.core.pruner",
    "RemovalReport": "demp.core.surgery",
    "Site": "demp.core.detection",
    "SiteRemoval": "demp.core.surgery",
    "UnitScan": "demp.core.detection",
    "count_params": "demp.core.utils",
    "find_dead_units": "demp.core.detection",
    "fresh_like": "demp.core.persist",
    "list_sites": "demp.core.detection",
    "load_pruned": "demp.core.persist",
    "remove_units": "demp.core.surgery",
    "recalibrate_bn": "demp.core.batchnorm",
    "save_pruned": "demp.core.persist",
    "scan_units": "demp.core.detection",
}

__version__ = "0.1.0"
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'demp' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
