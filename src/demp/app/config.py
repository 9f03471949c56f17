"""Run configuration: typed dataclasses, loaded from YAML or JSON, with dotted ``--set`` overrides.

``Config()`` is the main job (DemP on Fashion-MNIST, small_cnn, a few minutes on 2 CPU
cores).  ``load_config(path, overrides)`` reads a file over those defaults, applies
``key=value`` overrides (values parsed as YAML scalars or lists) and validates everything
before any work starts; every mistake is a ``DempError`` naming the key and the fix.
"""
from __future__ import annotations

import json
import math
import re
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from demp.app.data import DATASETS, TEXT_DATASET
from demp.app.methods import METHODS, MethodConfig, method_class, setting_keys
from demp.app.methods.base import canonical_name
from demp.app.speed import AUTOCASTS, CHANNELS_LAST
from demp.core.sparsity import SparseConfig
from demp.core.schedules import SCHEDULES
from demp.errors import DempError

OPTIMIZERS = ("adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda")


class YamlLoader(yaml.SafeLoader):
    """YAML with the booleans of YAML 1.2 only (true/false): ``off``, ``on``, ``yes`` and ``no``
    stay strings, so ``--set train.autocast=off`` means the string 'off'."""


YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))


def yaml_load(text: str) -> Any:
    """Parse YAML text with ``YamlLoader`` (config, sweep and study files, ``--set`` values)."""
    return yaml.load(text, Loader=YamlLoader)


@dataclass
class DataConfig:
    """Which dataset to train on, how to feed it, and the examples dead checks look at."""
    name: str = "fashion_mnist"     # fashion_mnist | cifar10 | synthetic | imagefolder | text
    root: Optional[str] = None      # dataset folder (None: the standard place; CIFAR-10: $DEMP_DATA;
                                    # text: the pinned default corpus, else a text file or folder)
    subset: Optional[int] = None    # keep the first N training examples (text: sequences)
    context: int = 128              # text: bytes per sequence
    val_fraction: float = 0.1       # text: the last fraction of the bytes validates
    sha256: Optional[str] = None    # text: SHA-256 of the corpus at data.root (the default corpus is always checked)
    augment: bool = False           # pad-4 random crop + flip (imagefolder: always random-resized-crop)
    resize: Optional[int] = None    # resize images to this side (e.g. 64 for VGG on CIFAR-10)
    probe_size: int = 1536          # un-augmented training images in each dead check
    probe_batch: int = 512
    calib_batches: int = 8          # augmented training batches for BatchNorm re-estimation


@dataclass
class ModelConfig:
    """A model from the zoo (``demp.app.models.list_models()``) at a width multiplier."""
    name: str = "small_cnn"
    width: float = 0.75
    kwargs: dict[str, Any] = field(default_factory=dict)   # extra builder arguments


@dataclass
class TrainConfig:
    """Length of training, batch size, speed settings, and how often to log and checkpoint."""
    epochs: int = 5
    batch_size: int = 128
    max_steps: Optional[int] = None     # cap on optimizer steps (None: epochs * steps per epoch)
    eval_every_epoch: bool = True       # test-set evaluation after every epoch (else only at the end)
    recalibrate_eval: bool = False      # re-estimate BatchNorm statistics before each evaluation
    final_statistics: bool = True       # at the end keep the BatchNorm statistics (trained or re-estimated on
                                        # data.calib_batches) that serve the probe better (core/batchnorm.py)
    checkpoint_every: int = 0           # steps between checkpoints (0: only at epoch ends)
    log_every: int = 50                 # steps between metrics lines
    channels_last: str = "auto"         # auto | on | off; auto: on for CUDA, measured on CPU (app/speed.py)
    autocast: str = "auto"              # auto | off | bf16 | fp16; auto: bf16/fp16 on CUDA, on CPU bf16
                                        # only if native and measured faster (app/speed.py)
    compile: bool = False               # torch.compile the training forward (recompiled from scratch after each removal)


@dataclass
class OptimConfig:
    """Optimizer, learning-rate schedule and loss settings."""
    name: str = "adamw"                 # adamw | sgd (with momentum)
    lr: float = 1e-2
    weight_decay: float = 5e-4
    momentum: float = 0.9               # sgd only
    schedule: str = "one_cycle"         # a name of demp.core.schedules.SCHEDULES (the vocabulary of lambda too)
    milestones: tuple[float, ...] = (0.3, 0.6, 0.9)   # step schedules: fractions of training
    gamma: float = 0.2                  # step schedules: factor at each milestone
    warmup_epochs: float = 0.0          # linear warm-up on top of the schedule (not with one_cycle)
    label_smoothing: float = 0.0


def main_job_method() -> MethodConfig:
    """DemP settings of the main job: remove 40% of the units by half of training.

    A budget, not a fixed lambda: with a fixed peak the death cliff turned rounding differences
    between CPUs into a 25x difference in size (1.7% of the parameters left on an AMD EPYC,
    42% on an Intel Xeon, same command).  The controller starts from reg_peak 5e-2 (lr 1e-2 with
    that peak removed about a quarter of the units; 0.2 collapsed the network).
    """
    return MethodConfig("demp", target_units=0.4, target_by=0.5, reg_peak=5e-2, prune_every=100)


@dataclass
class Config:
    """Everything one run needs; ``Config()`` is the main job."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    method: MethodConfig = field(default_factory=main_job_method)
    sparse: SparseConfig = field(default_factory=lambda: SparseConfig(method="none"))   # unstructured sparsity
    seed: int = 0
    device: str = "auto"                # auto | cpu | cuda
    threads: Optional[int] = None       # torch CPU threads (None: torch's default)
    out: Optional[str] = None           # run folder (None: runs/<dataset>-<model>-<method>-<time>)
    label: Optional[str] = None         # a variant's name in reports (e.g. an ablation: "no-noise")

    def validate(self) -> "Config":
        """Raise DempError for the first bad setting; return self so calls chain."""
        _check_names(self)
        _check_ranges(self)
        self.method.validate()
        try:
            self.sparse.validate()
        except DempError as e:
            raise DempError(f"in the sparse settings (sparse.*): {e}") from None
        return self


# ----------------------------------------------------------------------------- validation

def available_methods() -> list[str]:
    """Registered training methods (dense, demp and the baselines)."""
    return sorted(METHODS)


def _data_names() -> tuple[str, ...]:
    return (*DATASETS, "imagefolder", TEXT_DATASET)


def _check_names(cfg: Config) -> None:
    """Known names everywhere; 'fashion-mnist' is read as 'fashion_mnist' (same for methods)."""
    from demp.app.models import HF_PREFIX, list_models
    cfg.data.name = canonical_name(cfg.data.name, _data_names(), "data.name")
    if not cfg.model.name.startswith(HF_PREFIX):
        cfg.model.name = canonical_name(cfg.model.name, list_models(), "model.name")
    choices = [("optim.name", cfg.optim.name, OPTIMIZERS),
               ("optim.schedule", cfg.optim.schedule, SCHEDULES),
               ("train.autocast", cfg.train.autocast, AUTOCASTS),
               ("train.channels_last", cfg.train.channels_last, CHANNELS_LAST),
               ("device", cfg.device, DEVICES)]
    for key, value, valid in choices:
        if value not in valid:
            raise DempError(f"unknown {key} '{value}'; valid: {', '.join(valid)}")
    if cfg.data.name == "imagefolder" and not cfg.data.root:
        raise DempError("data.name 'imagefolder' needs data.root: the folder holding train/ and "
                        "val/ (or test/) with one sub-folder per class")


def _optional(value: Any, ok) -> bool:
    return value is None or ok(value)


def _check_ranges(cfg: Config) -> None:
    d, m, t, o = cfg.data, cfg.model, cfg.train, cfg.optim
    rules = [
        ("data.subset", d.subset, _optional(d.subset, lambda v: v >= 1), "a number >= 1 or null"),
        ("data.resize", d.resize, _optional(d.resize, lambda v: v >= 1), "a size >= 1 or null"),
        ("data.probe_size", d.probe_size, d.probe_size >= 1, ">= 1"),
        ("data.probe_batch", d.probe_batch, d.probe_batch >= 1, ">= 1"),
        ("data.calib_batches", d.calib_batches, d.calib_batches >= 1, ">= 1"),
        ("data.context", d.context, d.context >= 1, ">= 1"),
        ("data.val_fraction", d.val_fraction, 0 < d.val_fraction < 1, "in (0, 1)"),
        ("data.sha256", d.sha256, _optional(d.sha256, lambda v: re.fullmatch(r"[0-9a-fA-F]{64}", v)),
         "64 hex digits or null"),
        ("model.width", m.width, m.width > 0, "> 0"),
        ("train.epochs", t.epochs, t.epochs >= 1, ">= 1"),
        ("train.batch_size", t.batch_size, t.batch_size >= 1, ">= 1"),
        ("train.max_steps", t.max_steps, _optional(t.max_steps, lambda v: v >= 1), ">= 1 or null"),
        ("train.checkpoint_every", t.checkpoint_every, t.checkpoint_every >= 0,
         ">= 0 (0: checkpoint only at epoch ends)"),
        ("train.log_every", t.log_every, t.log_every >= 1, ">= 1"),
        ("optim.lr", o.lr, o.lr > 0, "> 0"),
        ("optim.weight_decay", o.weight_decay, o.weight_decay >= 0, ">= 0"),
        ("optim.momentum", o.momentum, 0 <= o.momentum < 1, "in [0, 1)"),
        ("optim.gamma", o.gamma, o.gamma > 0, "> 0"),
        ("optim.warmup_epochs", o.warmup_epochs, o.warmup_epochs >= 0, ">= 0"),
        ("optim.milestones", list(o.milestones),
         all(0 < x < 1 for x in o.milestones) and list(o.milestones) == sorted(set(o.milestones)),
         "increasing fractions of training in (0, 1)"),
        ("optim.label_smoothing", o.label_smoothing, 0 <= o.label_smoothing < 1, "in [0, 1)"),
        ("seed", cfg.seed, cfg.seed >= 0, ">= 0"),
        ("threads", cfg.threads, _optional(cfg.threads, lambda v: v >= 1), ">= 1 or null"),
    ]
    for key, value, ok, rule in rules:
        if not ok:
            raise DempError(f"{key} must be {rule}, got {value!r}")
    if o.schedule == "one_cycle" and o.warmup_epochs > 0:
        raise DempError("optim.schedule 'one_cycle' has its own warm-up (to the peak at 30%); "
                        "set optim.warmup_epochs=0")
    if d.name == TEXT_DATASET and (d.augment or d.resize):
        raise DempError("data.augment and data.resize apply to images; set them to false and null "
                        "for data.name 'text'")
    if d.name == "imagefolder" and d.subset is not None:
        raise DempError("data.subset is not supported with data.name 'imagefolder'; "
                        "point data.root at a smaller folder instead")


# ----------------------------------------------------------------------------- building

def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` as type ``hint`` (YAML gives '1e-3' as a string, lists for tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in _WORDS:
            return _WORDS[word]
        raise DempError(f"{key} must be true or false, got {value!r}")
    if hint in (int, float):
        number = _number(value, key)
        if hint is int:
            if not float(number).is_integer():
                raise DempError(f"{key} must be a whole number, got {value!r}")
            return int(number)
        return float(number)
    if hint is str:
        if isinstance(value, bool):  # on/off settings written as true/false
            return "on" if value else "off"
        if isinstance(value, str):
            return value
        raise DempError(f"{key} must be a string, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise DempError(f"{key} must be a mapping (key: value), got {value!r}")
        return dict(value)
    return value


_WORDS = {"true": True, "false": False, "on": True, "off": False, "yes": True, "no": False}
"""Words a boolean setting accepts (YAML 1.2 reads only true/false as booleans)."""


def _number(value: Any, key: str) -> float | int:
    if isinstance(value, bool):
        raise DempError(f"{key} must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        number = value
    else:
        try:
            number = float(str(value))
        except ValueError:
            raise DempError(f"{key} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise DempError(f"{key} must be a finite number, got {value!r}")
    return number


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    """Instance of dataclass ``cls`` from mapping ``raw``; unknown keys list the valid ones."""
    if not isinstance(raw, dict):
        where = f"section '{prefix[:-1]}'" if prefix else "the top level"
        raise DempError(f"{source}: {where} must be a mapping (key: value), got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        section = f"section '{prefix[:-1]}'" if prefix else "the top level"
        raise DempError(f"unknown key '{prefix}{unknown[0]}' in {source}; valid keys of {section}: "
                        f"{', '.join(names)}")
    values = {}
    for name, value in raw.items():
        hint = hints[name]
        if hint is MethodConfig:
            values[name] = _build_method(value, source)
        elif is_dataclass(hint):
            values[name] = _build(hint, value, f"{prefix}{name}.", source)
        else:
            values[name] = _coerce(value, hint, prefix + name)
    return replace(cls(), **values)


def _build_method(raw: Any, source: str) -> MethodConfig:
    """The ``method`` section: its name picks the method, whose own settings are the other keys.

    Without a name, or with the main job's method, keys apply over the main job's settings;
    another method starts from its own defaults.  A key the method does not have is refused.
    """
    if not isinstance(raw, dict):
        raise DempError(f"{source}: section 'method' must be a mapping (key: value), got {raw!r}")
    default = main_job_method()
    cls = method_class(raw.get("name", default.name))
    method = default if cls.name == default.name else MethodConfig(cls.name)
    valid, hints = setting_keys(cls), typing.get_type_hints(cls.config_class)
    values = {}
    for key, value in raw.items():
        if key == "name":
            continue
        if key not in valid:
            raise DempError(f"unknown key 'method.{key}' in {source}: method '{cls.name}' has no such "
                            f"setting; its settings: {', '.join(valid) or 'none'}")
        values[key] = _coerce(value, hints[cls.aliases.get(key, key)], f"method.{key}")
    return method.update(values)


def config_from_dict(raw: dict, source: str = "the config") -> Config:
    """Config from a nested mapping over the main-job defaults (not validated)."""
    return _build(Config, raw or {}, "", source)


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (lists, not tuples), as written to config.yaml."""
    def plain(v: Any) -> Any:
        if isinstance(v, MethodConfig):
            return plain(v.to_dict())
        if is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(cfg)


def _read_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise DempError(f"config file {path} not found")
    text = p.read_text()
    try:
        raw = json.loads(text) if p.suffix == ".json" else yaml_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise DempError(f"cannot parse config file {path}: {e}") from None
    return raw or {}


def set_dotted(raw: dict, key: str, value: Any, where: str) -> None:
    """raw[a][b][c] = value for key 'a.b.c'; an unknown section lists the valid ones.

    Setting ``method.name`` to another method clears the old method's settings (they belong
    to it), so ``--set method.name=snap`` works over a DemP config file.
    """
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        if part not in node:
            here = f"section '{'.'.join(parents[:i])}'" if i else "the top level"
            raise DempError(f"unknown key '{'.'.join(parents[:i + 1])}' in {where}; valid keys "
                            f"of {here}: {', '.join(node)}")
        if not isinstance(node[part], dict):
            raise DempError(f"{where}: '{'.'.join(parents[:i + 1])}' is a value, not a section")
        node = node[part]
    if key == "method.name" and value != node.get("name"):
        node.clear()
    node[leaf] = value


def apply_override(raw: dict, override: str) -> None:
    """Apply ``a.b.c=value`` to nested dict ``raw``; the value is parsed as a YAML scalar or list."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise DempError(f"--set expects key=value (e.g. train.epochs=1), got '{override}'")
    try:
        value = yaml_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise DempError(f"--set {key}: cannot parse value '{text}': {e}") from None
    set_dotted(raw, key, value, f"--set {key}")


BUDGET_KEYS = ("target_units", "target_flops")
"""DemP's two budgets: the one given last replaces the other (a config file's or the main job's)."""


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """Main-job defaults, then the YAML/JSON file at ``path``, then ``key=value`` overrides; validated."""
    source = path or "the defaults"
    file_raw = _read_file(path) if path else {}
    cfg = config_from_dict(file_raw, f"config file {path}" if path else source)
    _check_unused_sparse(cfg, _file_sparse_keys(file_raw, f"config file {path}"), f"config file {path}")
    if overrides:
        raw = config_to_dict(cfg)
        given = []
        for override in overrides:
            apply_override(raw, override)
            given.append(override.partition("=")[0].strip())
        _keep_last_budget(raw, given)
        cfg = config_from_dict(raw, "--set")
        _check_unused_sparse(cfg, [k for k in given if k.startswith("sparse.") and k != "sparse.method"], "--set")
    return cfg.validate()


def _keep_last_budget(raw: dict, given: Sequence[str]) -> None:
    """A budget set with --set replaces the other kind from the file or the main job, so
    ``--set method.target_flops=0.5`` alone runs to a FLOPs budget."""
    method = raw.get("method", {})
    named = ["target_units" if k == "method.target" else k.split(".", 1)[1] for k in given
             if k in ("method.target", "method.target_units", "method.target_flops")]
    if not named or len(set(named)) > 1:
        return   # none given, or both: validation names a conflict
    last = named[-1]
    value = method.get("target" if "method.target" in given and last == "target_units" else last)
    other = next(b for b in BUDGET_KEYS if b != last)
    if value is not None and other in method:
        method[other] = None


def _file_sparse_keys(raw: dict, where: str) -> list[str]:
    """``sparse.*`` keys a config file sets to other values than the defaults (besides the method);
    a sparse section that names no method is refused (it would turn RigL on unasked)."""
    section = raw.get("sparse") if isinstance(raw, dict) else None
    if not isinstance(section, dict) or not section:
        return []
    if "method" not in section:
        raise DempError(f"{where}: the sparse section sets {', '.join(sorted(section))} but no sparse.method; "
                        "name it: rigl, gmp, or none")
    defaults = asdict(SparseConfig())
    return [f"sparse.{k}" for k, v in section.items() if k != "method" and k in defaults and v != defaults[k]]


def _check_unused_sparse(cfg: Config, keys: Sequence[str], where: str) -> None:
    """Refuse sparse settings that would be ignored because no sparse method is on."""
    if keys and cfg.sparse.method == "none":
        raise DempError(f"{where}: {', '.join(keys)} has no effect while sparse.method is 'none'; also "
                        "set sparse.method (rigl or gmp), e.g. --set sparse.method=rigl")


def flat_config(cfg: Config) -> dict[str, Any]:
    """``{dotted key: value}`` of every setting (``model.kwargs`` stays one value)."""
    def flat(d: dict, prefix: str) -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict) and k != "kwargs":
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[prefix + k] = v
        return out
    return flat(config_to_dict(cfg), "")


def config_diff(a: Config, b: Config, ignore: Sequence[str] = ()) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    fa, fb = flat_config(a), flat_config(b)
    return sorted(k for k in fa if k not in ignore and fa[k] != fb[k])
