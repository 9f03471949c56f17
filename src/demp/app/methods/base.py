"""Training methods as small objects hooked into the training loop's events.

A method (dense, DemP, or a baseline) owns a settings dataclass (``config_class``) and sees
the loop through fixed hooks, called in this order, Lightning-callback style:

0. ``initial_model(model, config)``: only when a run starts (not when it resumes), before the
   optimizer exists: the model to train (``scratch`` returns the widths of an earlier run);
1. ``setup(ctx)``: bind the model, optimizer and data (no change to the model);
2. ``load_state_dict(state)``: only when resuming, with the model already at its pruned widths;
3. ``on_train_start()``: before the first step (again when a run resumes; SNAP-like methods prune here);
4. per step ``penalty()`` (added to the loss) and ``after_step(step, loss)``;
5. ``on_epoch_end(epoch)``, and ``finish()`` after the last step.

Hooks that remove units return a RemovalReport so the loop can log them; ``log_values``
gives what the loop logs each step and ``summary`` what summary.json adds.  ``MethodConfig``
pairs a method's name with an instance of its settings dataclass; the run config keeps them
flat under ``method.``.
"""
from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, ClassVar, Iterable, Optional

import torch
import torch.nn as nn

from demp.core.surgery import RemovalReport
from demp.errors import DempError

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class MethodContext:
    """What a method may use: the live model/optimizer and ways to read training data."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    example_inputs: torch.Tensor
    probe: list[torch.Tensor]                        # un-augmented training images
    total_steps: int
    train_batches: Callable[[int], list[Batch]]      # n -> n fixed augmented training batches
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    seed: int = 0
    calib_batches: int = 8                           # batches for BatchNorm re-estimation (data.calib_batches)
    follow: tuple = ()                               # per-parameter tensors sliced with removals (sparse masks)


@dataclass
class DenseConfig:
    """Dense training has no settings."""

    def validate(self) -> "DenseConfig":
        return self


class Method:
    """Base of the training methods: every hook does nothing (no penalty, no removal).

    A subclass gives its ``name`` and ``config_class`` and is added with ``register_method``.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = DenseConfig
    knob: ClassVar[Optional[str]] = None            # the setting a sweep varies
    aliases: ClassVar[dict[str, str]] = {}          # extra key -> settings field
    app_fields: ClassVar[tuple[str, ...]] = ()      # fields the app fills (not config keys)

    def __init__(self, config: Any = None):
        self.config = (config if config is not None else self.config_class()).validate()
        self.ctx: Optional[MethodContext] = None

    def initial_model(self, model: nn.Module, config: dict[str, Any]) -> nn.Module:
        """The model a new run trains: ``model`` as the run's config (``config``, as in config.yaml)
        built it, or a new one; ``model`` stays the reference of the summary's fractions remaining."""
        return model

    def setup(self, ctx: MethodContext) -> None:
        self.ctx = ctx

    def on_train_start(self) -> Optional[RemovalReport]:
        return None

    def penalty(self) -> torch.Tensor | float:
        return 0.0

    def after_step(self, step: int, loss: Optional[torch.Tensor] = None) -> Optional[RemovalReport]:
        return None

    def on_epoch_end(self, epoch: int) -> Optional[RemovalReport]:
        return None

    def finish(self) -> Optional[RemovalReport]:
        return None

    def log_values(self) -> dict[str, Any]:
        return {}

    def budget(self) -> Optional[dict[str, Any]]:
        """The method's budget as the summary reports it: ``target`` (fraction removed),
        ``measure`` (units | fwd_flops) and, where the method knows, ``met`` and ``gave_up``."""
        target = getattr(self.config, "target", None)
        return {"target": target, "measure": "units"} if target is not None else None

    def collapsed(self) -> Optional[dict[str, Any]]:
        """A collapse the method saw while training (``demp.core.health.Collapse`` as a dict), or None."""
        return None

    def knob_value(self) -> Optional[float]:
        """The value of the method's knob (what a results table sorts runs by)."""
        return getattr(self.config, self.knob) if self.knob else None

    def knob_name(self) -> Optional[str]:
        """The setting ``knob_value`` holds (a sweep varies it)."""
        return self.knob

    def summary(self) -> dict[str, Any]:
        """Fields the method adds to summary.json (none by default)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


METHODS: dict[str, type[Method]] = {}
"""Registered methods by name (``demp.app.methods`` imports each method module explicitly)."""


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method under its ``name``; a missing or taken name is refused."""
    if not cls.name:
        raise DempError(f"method class {cls.__qualname__} has no name; set `name = \"...\"`")
    other = METHODS.get(cls.name)
    if other is not None and other is not cls:
        raise DempError(f"method name '{cls.name}' of {cls.__qualname__} is already taken by "
                        f"{other.__qualname__}")
    METHODS[cls.name] = cls
    return cls


@register_method
class Dense(Method):
    """Dense training: the reference every pruning method is compared with."""
    name = "dense"


def canonical_name(name: str, valid: Iterable[str], what: str) -> str:
    """The valid name ``name`` means, ignoring case, '-' and '_' ('Fashion-MNIST' is
    'fashion_mnist'); an unknown name lists the valid ones and the closest."""
    valid = list(valid)

    def key(n: str) -> str:
        return str(n).strip().lower().replace("-", "").replace("_", "")
    found = [v for v in valid if key(v) == key(name)]
    if found:
        return found[0]
    close = difflib.get_close_matches(str(name).lower().replace("-", "_"), valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise DempError(f"unknown {what} '{name}'{hint}; valid: {', '.join(valid)}")


def method_class(name: str) -> type[Method]:
    """The registered method class called ``name``."""
    return METHODS[canonical_name(name, sorted(METHODS), "method.name")]


def setting_keys(cls: type[Method]) -> list[str]:
    """The ``method.<key>`` names a method accepts."""
    return [f.name for f in fields(cls.config_class) if f.name not in cls.app_fields] + list(cls.aliases)


class MethodConfig:
    """A method's name and its own settings (an instance of the method's ``config_class``).

    ``MethodConfig("snap", target=0.5)``; attribute reads go to the settings
    (``cfg.target``).  A key the method does not have is refused with its valid keys.
    """

    def __init__(self, name: str = "dense", settings: Any = None, **values: Any):
        cls = method_class(name)
        self.name = cls.name
        if settings is None:
            settings = cls.config_class()
        self.settings = settings
        self.update(values)

    def update(self, values: dict[str, Any]) -> "MethodConfig":
        """Set settings by key (aliases allowed); unknown keys are refused."""
        cls = METHODS[self.name]
        valid = setting_keys(cls)
        for key, value in values.items():
            if key not in valid:
                raise DempError(f"method '{self.name}' has no setting '{key}' (method.{key}); its "
                                f"settings: {', '.join(valid) or 'none'}")
            setattr(self.settings, cls.aliases.get(key, key), value)
        return self

    def __getattr__(self, key: str) -> Any:
        if key in ("settings", "name") or key.startswith("__"):
            raise AttributeError(key)
        cls = METHODS[self.name]
        return getattr(self.settings, cls.aliases.get(key, key))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, MethodConfig) and self.name == other.name
                and self.settings == other.settings)

    def __repr__(self) -> str:
        return f"MethodConfig({self.name!r}, {self.settings!r})"

    def to_dict(self) -> dict[str, Any]:
        """``{'name': ..., key: value, ...}`` as written under ``method:`` in config.yaml."""
        cls = METHODS[self.name]
        return {"name": self.name, **{k: v for k, v in asdict(self.settings).items()
                                      if k not in cls.app_fields}}

    def hints(self) -> dict[str, Any]:
        """Type hints of the settings' fields (for parsing YAML values)."""
        import typing
        return typing.get_type_hints(type(self.settings))

    def validate(self) -> "MethodConfig":
        try:
            self.settings.validate()
        except DempError as e:
            raise DempError(f"in the method settings (method.*): {e}") from None
        return self


def create_method(config: MethodConfig) -> Method:
    """The method named by ``config.name``, with its settings."""
    return METHODS[config.name](config.settings)
