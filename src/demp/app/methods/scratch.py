"""``scratch``: the final architecture of an earlier run, trained from scratch (the baseline of
structured pruning: does the method find better widths, or only a smaller network?).

``method.widths_from`` names a finished run folder (or its ``model.pt``).  When the run starts,
``initial_model`` checks that the source run finished and trained the same model (zoo name,
width, builder arguments, classes, channels, image size) on the same dataset, builds the
configured model afresh, shrinks it to the source's final per-module widths and draws every
parameter again with the model's own initialisation at those widths
(``demp.core.persist.fresh_like``: none of the trained weights is kept).  Then it trains densely
with the run's own protocol; a source trained with another one (epochs, batch, optimizer,
schedule, augmentation) is trained anyway, with a warning naming the differences.

The summary places a scratch run at its source's point: its ``units_remaining``,
``params_remaining`` and ``fwd_flops_remaining`` are fractions of the full-width configured
network (as the source's are), its ``knob`` and ``knob_name`` are the source's (DemP's
``target_units`` 0.5, SNAP's ``target`` 0.8, ...), its ``label`` is the source's variant name
(``demp``, ``demp-flops``) unless the run has a label of its own, and ``widths_from`` records
the source: its folder, method, label, knob, seed, optimizer, accuracy and sizes.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import yaml

from demp.app.export import build_zoo_model, example_input
from demp.app.methods.base import Method, register_method
from demp.app.runfiles import CONFIG_NAME, MODEL_NAME, SUMMARY_NAME
from demp.core.persist import fresh_like, module_shapes, read_pruned
from demp.core.utils import eval_mode
from demp.errors import DempError

PROTOCOL = ("train.epochs", "train.batch_size", "train.max_steps", "optim.name", "optim.lr",
            "optim.weight_decay", "optim.momentum", "optim.schedule", "optim.milestones", "optim.gamma",
            "optim.warmup_epochs", "optim.label_smoothing", "data.subset", "data.augment")
"""Settings a scratch run should share with its source (a difference is trained, with a warning)."""
SOURCE_FIELDS = ("method", "label", "knob", "knob_name", "seed", "optimizer", "test_acc",
                 "units_remaining", "params_remaining", "fwd_flops_remaining")
"""What ``widths_from`` in the summary keeps of the source run's summary."""


@dataclass
class ScratchConfig:
    """The run whose final widths to train from scratch."""
    widths_from: str = ""           # a finished run folder, or its model.pt

    def validate(self) -> "ScratchConfig":
        if not self.widths_from:
            raise DempError("method scratch needs widths_from: the folder of a finished run (or its "
                            "model.pt) whose final widths to train from scratch")
        return self


def setting(config: dict[str, Any], key: str) -> Any:
    """``config['a']['b']`` for the dotted key 'a.b' of a config.yaml mapping (None if absent)."""
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def source_files(path: str | Path) -> tuple[Path, Path]:
    """The finished run folder named by ``path`` (the folder or its model file) and the model file."""
    path = Path(path)
    folder, model = (path.parent, path) if path.is_file() else (path, path / MODEL_NAME)
    if not folder.is_dir():
        raise DempError(f"method.widths_from: {path} does not exist; give the folder of a finished run "
                        f"(or its {MODEL_NAME})")
    if not (folder / CONFIG_NAME).is_file():
        raise DempError(f"method.widths_from: {folder} is not a run folder (no {CONFIG_NAME}); give the "
                        "--out of a `demp train` run")
    if not (folder / SUMMARY_NAME).is_file():
        raise DempError(f"method.widths_from: the run {folder} has not finished (no {SUMMARY_NAME}); "
                        f"finish it first (demp train --resume {folder})")
    if not model.is_file():
        raise DempError(f"method.widths_from: {folder} has no {model.name}; its final model is needed")
    return folder, model


def spec_differences(saved: dict[str, Any], built: dict[str, Any]) -> list[str]:
    """'key saved -> built' for every builder argument that differs between two zoo specs."""
    return [f"{k} {saved.get(k)!r} -> {built.get(k)!r}" for k in sorted(set(saved) | set(built))
            if saved.get(k) != built.get(k)]


def wider_than(saved: dict[str, dict[str, Any]], full: dict[str, dict[str, Any]]) -> list[str]:
    """Saved width attributes larger than the full-width model's (pruning only narrows)."""
    def flat(v: Any) -> tuple:
        return tuple(v) if isinstance(v, tuple) else (v,)
    return [f"{name}.{attr} {value} > {full[name][attr]}"
            for name, attrs in saved.items() for attr, value in attrs.items() if name in full and attr in full[name]
            and any(a > b for a, b in zip(flat(value), flat(full[name][attr])))]


def check_source(folder: Path, payload: dict[str, Any], model: nn.Module, config: dict[str, Any],
                 summary: dict[str, Any]) -> None:
    """Refuse a source that trained another model or dataset, or whose widths do not fit the model."""
    spec = payload.get("spec")
    built = getattr(model, "demp_spec", None)
    if spec is None or built is None:
        raise DempError(f"method.widths_from: {folder} holds a {payload.get('class')} not built by demp's "
                        "model zoo; scratch rebuilds zoo models (model.name) only")
    differences = spec_differences(spec, built)
    if differences:
        raise DempError(f"method.widths_from: {folder} trained another model than this config builds "
                        f"({'; '.join(differences)}); use the source run's model.* settings and dataset")
    dataset = setting(config, "data.name")
    if summary.get("dataset") != dataset:
        raise DempError(f"method.widths_from: {folder} trained on {summary.get('dataset')!r}, this config on "
                        f"{dataset!r}; train scratch on the source run's dataset")
    wide = wider_than(payload["modules"], module_shapes(model))
    if wide:
        raise DempError(f"method.widths_from: the widths saved in {folder} do not fit the configured model, "
                        f"they are wider than its full width ({'; '.join(wide[:5])})")


def protocol_differences(source: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """PROTOCOL settings whose values differ between the source's config.yaml and this run's."""
    return [f"{k} {setting(source, k)!r} -> {setting(config, k)!r}" for k in PROTOCOL
            if setting(source, k) != setting(config, k)]


def variant_name(summary: dict[str, Any]) -> str:
    """The source's variant as reports name it in a label: 'demp', or 'demp-flops' for a labelled one."""
    return "-".join(str(x) for x in (summary.get("method"), summary.get("label")) if x)


@register_method
class Scratch(Method):
    """Dense training of a fresh network at the final widths of ``method.widths_from``."""

    name = "scratch"
    config_class = ScratchConfig

    def __init__(self, config: Any = None):
        super().__init__(config)
        self.source: dict[str, Any] = {}
        self.label: Optional[str] = None

    def initial_model(self, model: nn.Module, config: dict[str, Any]) -> nn.Module:
        """A fresh copy of ``model`` at the source's final widths (``model`` itself is not changed)."""
        folder, model_file = source_files(self.config.widths_from)
        summary = json.loads((folder / SUMMARY_NAME).read_text())
        check_source(folder, read_pruned(model_file), model, config, summary)
        differences = protocol_differences(yaml.safe_load((folder / CONFIG_NAME).read_text()) or {}, config)
        if differences:
            warnings.warn(f"scratch trains with another protocol than its source {folder}: {'; '.join(differences)}")
        fresh = build_zoo_model(dict(model.demp_spec))
        try:
            fresh_like(model_file, fresh)
            with torch.no_grad(), eval_mode(fresh):
                fresh(example_input(fresh, 2))
        except (DempError, RuntimeError) as e:
            raise DempError(f"method.widths_from: the widths saved in {folder} do not fit the configured "
                            f"model: {e}") from None
        self.source = {"path": str(folder), **{k: summary.get(k) for k in SOURCE_FIELDS}}
        self.label = config.get("label") or variant_name(summary)
        return fresh

    def knob_value(self) -> Optional[float]:
        return self.source.get("knob")

    def knob_name(self) -> Optional[str]:
        return self.source.get("knob_name")

    def summary(self) -> dict[str, Any]:
        return {"widths_from": dict(self.source), "label": self.label}

    def state_dict(self) -> dict:
        return {"source": dict(self.source), "label": self.label}

    def load_state_dict(self, state: dict) -> None:
        self.source, self.label = dict(state["source"]), state["label"]
