"""Sweep and study files: their schema, checking them, planning their runs, each run's Config.

Relative paths in both are looked up next to the file, then in the working folder.

Sweep file (``demp sweep SWEEP.yaml``: a grid of training runs, methods x optimizers x knobs
x seeds)::

    name: cifar10_vgg              # optional; default: the file's stem
    out: runs/sweeps/cifar10_vgg   # optional; default runs/sweeps/<name>; --out wins
    base: vgg16_cifar10_adamw.yaml # optional config file for every run (default: demp's defaults)
    set:                           # optional overrides for every run: dotted keys or nested mappings
      train.epochs: 3
    optims:                        # optional, per optimizer (adamw | sgd): a config file that
      adamw: vgg16_cifar10_adamw.yaml   # replaces `base`, or a mapping of overrides on top of it;
      sgd: {optim.lr: 0.05}        # optim.name is always set to the optimizer's name
    grid:                          # one entry per method
      - {method: dense, optim: [adamw, sgd]}
      - {method: demp, optim: [adamw, sgd], knob: [1e-3, 3e-3, 1e-2]}
      - {method: snap, optim: adamw, target: [0.3, 0.5, 0.7, 0.9], set: {method.rounds: 3}}
      - {method: scratch, optim: adamw, from: ["demp-adamw-0.001-s{seed}"]}   # quoted: YAML reads { as a mapping
    seeds: [0]                     # optional; default [0]
    extra_seeds:                   # optional: more seeds where they matter, chosen after the grid
      seeds: [1]
      near_units_removed: [0.5, 0.8]
      methods: [dense, demp, snap]   # optional: only these methods (and optims: [...]) get them;
      variants: false                # optional: not the entries with a variant (default true)

Grid entry keys: ``method`` (a registered method), ``optim`` (a name or list; default
``[adamw]``), ``knob`` (list of values of the method's knob: ``method.reg_peak`` for demp,
``method.target`` for the baselines, none for dense; the knob's own name may be used instead
of ``knob``; for demp ``target`` gives its units budget and ``target_flops`` its FLOPs budget,
both fractions removed), ``set`` (overrides for this entry only), ``variant`` (a name for an
entry that differs from another by ``set``, e.g. an ablation; it goes into the run names and,
as ``label``, into the reports) and ``seeds`` (this entry's seeds instead of the sweep's: an
entry of second seeds placed where its priority is) and, for ``scratch``, ``from`` (a list of
the runs whose final widths it trains, folder names relative to the sweep folder; ``{seed}``
in a name stands for the run's seed, so ``demp-adamw-t0.5-s{seed}`` pairs each seed with the
source of the same seed).  Sweep-wide ``method.*`` settings apply to the methods that have them.

Overrides apply in this order: base file (or the optimizer's file), method.name (another
method than the base file's starts from its own defaults), ``set``, the optimizer's
overrides, the entry's ``set``, then the knob, seed and out.

``extra_seeds``: once the grid has run, for every method and optimizer the knob whose mean
fraction of units removed (over ``seeds``) is nearest to each value of ``near_units_removed``
is run again with each extra seed, and every dense entry is run with the extra seeds too (so
speed-ups compare runs of the same seed); ``demp.experiments.runner.plan_extra_seeds`` chooses them.
Scratch entries get none (give them ``seeds``, and ``{seed}`` in ``from``).

Each run gets the folder ``{method}-{optim}-{knob}-s{seed}`` (``dense-{optim}-s{seed}``) under
the sweep folder; a scratch run ``scratch-{optim}-{source}``, with ``-s{seed}`` added unless the
source's name ends with it (``scratch-adamw-demp-adamw-t0.5-s0``).  A run with a source comes
after it in the plan; how runs are made, resumed, made to wait for their source and reported:
``demp.experiments.runner``.

Study file (``demp study STUDY.yaml``: how hyper-parameters make ReLU units die; a grid of
short runs with the ``count`` method, which counts dead, quasi-dead and revived units without
removing any)::

    name: learning_rate                  # optional; default: the file's stem
    out: results/death-study/learning_rate   # optional; default runs/studies/<name>; --out wins
    base: config.yaml                    # optional config file for every run
    set: {train.epochs: 2, method.reg_peak: 0}   # overrides for every run (method: count)
    vary: optim.lr                       # the varied hyper-parameter (x axis): a dotted key ...
    values: [1.0e-4, 1.0e-3, 1.0e-2]     # ... and its values (numbers or names), or instead a
                                         # mapping label -> overrides (vary is then only a label;
                                         # a label that reads as a number is the x value)
    panels:                              # optional: one plot panel each (label -> overrides)
      adamw: {optim.name: adamw}
      sgd: {optim.name: sgd, optim.lr: 0.1}
    series:                              # optional: one line each (label -> overrides)
      mlp: {model.name: mlp}
    seeds: [0]                           # optional; default [0]

Every panel x series x value x seed is one run, in the folder ``{panel}-{series}-{value}-s{seed}``
(empty labels left out).  Overrides apply in this order: base file, method.name count, ``set``,
the panel's, the series', the value's, then seed and out.  ``study.json`` (``PLAN_NAME``) in the
study folder lists the runs and what each one varies, for the report.

Mistakes raise ``DempError`` naming the file, the place and the valid choices (``fail``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from demp.app.config import (OPTIMIZERS, Config, available_methods, config_from_dict, config_to_dict, load_config,
                             set_dotted, yaml_load)
from demp.app.methods.base import method_class, setting_keys
from demp.errors import DempError

SWEEP_KEYS = ("name", "out", "base", "set", "optims", "grid", "seeds", "extra_seeds")
ENTRY_KEYS = ("method", "optim", "knob", "reg_peak", "target", "target_flops", "set", "variant", "seeds", "from")
SOURCE_SETTING = "widths_from"   # the method setting a grid entry's ``from`` fills (scratch)
KNOB_TAGS = {"target": "t", "target_flops": "f"}
"""Run-name tags of knobs other than the method's own (DemP's units and FLOPs budgets)."""
EXTRA_KEYS = ("seeds", "near_units_removed")
EXTRA_FILTERS = ("methods", "optims", "variants")   # optional: which entries get extra seeds
STUDY_KEYS = ("name", "out", "base", "set", "vary", "values", "panels", "series", "seeds")
STUDY_METHOD = "count"
PLAN_NAME = "study.json"   # the runs of a study and what each varies, in its folder


# ----------------------------------------------------------------------------- checking helpers

def fail(path: Path, where: str, message: str) -> DempError:
    """An error in a sweep or study file, naming the file and the place."""
    return DempError(f"{path}: {where}: {message}")


def check_keys(raw: Any, valid: Sequence[str], path: Path, where: str) -> dict:
    """``raw`` as a mapping whose keys are all in ``valid``; else an error listing them."""
    if not isinstance(raw, dict):
        raise fail(path, where, f"must be a mapping (key: value), got {raw!r}")
    for key in raw:
        if key not in valid:
            raise fail(path, where, f"unknown key '{key}'; valid keys: {', '.join(valid)}")
    return raw


def as_list(value: Any) -> list:
    """A list or tuple as a list, anything else as a list of one (YAML allows both)."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def number(value: Any, kind: Callable = float) -> Any:
    """A number given as a number or as YAML's string form of one ('1e-3'); else None."""
    if isinstance(value, bool):
        return None
    try:
        return kind(str(value))
    except ValueError:
        return None


def numbers(values: Any, path: Path, where: str, kind: Callable = float) -> tuple:
    """A non-empty list of numbers (YAML reads 1e-3 as a string: accept that too)."""
    out = []
    for v in as_list(values):
        n = number(v, kind)
        if n is None:
            raise fail(path, where, f"expected a number or a list of numbers, got {v!r}")
        out.append(n)
    if not out:
        raise fail(path, where, "must not be empty")
    return tuple(out)


def find_file(name: Any, path: Path, where: str) -> Path:
    """A config file named in the sweep: next to the sweep file, else from the working folder."""
    if not isinstance(name, str):
        raise fail(path, where, f"expected a config file path, got {name!r}")
    for candidate in (path.parent / name, Path(name)):
        if candidate.is_file():
            return candidate
    raise fail(path, where, f"config file '{name}' not found next to the sweep file or in {Path.cwd()}")


def overrides(raw: Any, path: Path, where: str) -> dict[str, Any]:
    """Overrides as {dotted key: value}; nested mappings are flattened."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise fail(path, where, f"must be a mapping of overrides (e.g. train.epochs: 3), got {raw!r}")
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict) and value:
            flat.update({f"{key}.{k}": v for k, v in overrides(value, path, where).items()})
        else:
            flat[str(key)] = value
    return flat


def read_yaml(path: Path, kind: str) -> dict:
    """The top-level mapping of a sweep or study file (``kind``), or a DempError saying why not."""
    if not path.is_file():
        raise DempError(f"{kind} file {path} not found")
    try:
        return yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DempError(f"cannot parse {kind} file {path}: {e}") from None


def build_config(base: Optional[Path], method: str, layers: Sequence[tuple[str, dict[str, Any]]],
                 file: str, run: str) -> Config:
    """A run's validated Config: the base file (or defaults), method.name, then each layer of
    overrides in order; errors name ``file`` (e.g. 'sweep file x.yaml'), the layer and the run."""
    raw = config_to_dict(load_config(str(base)) if base else Config())
    set_dotted(raw, "method.name", method, file)
    for where, layer in layers:
        for key, value in layer.items():
            set_dotted(raw, key, value, f"{file}, {where}")
    source = f"{file} (run {run})"
    try:
        return config_from_dict(raw, source).validate()
    except DempError as e:
        raise DempError(f"{source}: {e}") from None


# ----------------------------------------------------------------------------- sweeps

def knob_field(method: str) -> Optional[str]:
    """The setting a method's knob sets (None: dense has no knob)."""
    return method_class(method).knob


def knob_keys(method: str) -> tuple[str, ...]:
    """Grid keys that may give the method's knob values: 'knob', its own name, and 'target' and
    'target_flops' where the method has them (DemP's units and FLOPs budgets)."""
    own = knob_field(method)
    keys = setting_keys(method_class(method))
    extra = tuple(k for k in KNOB_TAGS if k in keys)
    return tuple(dict.fromkeys(("knob", own, *extra))) if own else ()


@dataclass
class GridEntry:
    """One grid line: a method, its optimizers and knob values, extra overrides."""
    method: str
    optims: tuple[str, ...]
    knobs: tuple[Optional[float], ...]          # (None,) for dense
    set: dict[str, Any] = field(default_factory=dict)
    knob_key: Optional[str] = None              # the method setting the knob values go to
    variant: str = ""                           # a name for runs that differ by ``set`` (ablations)
    seeds: Optional[tuple[int, ...]] = None     # this entry's seeds (None: the sweep's)
    sources: tuple[str, ...] = ()               # scratch: runs whose widths it trains ('{seed}': the run's)


@dataclass
class ExtraSeeds:
    """More seeds for the knobs nearest to given fractions of units removed."""
    seeds: tuple[int, ...]
    near_units_removed: tuple[float, ...]
    methods: Optional[tuple[str, ...]] = None    # None: every method
    optims: Optional[tuple[str, ...]] = None     # None: every optimizer
    variants: bool = True                        # False: entries with a variant (ablations) get none

    def covers(self, entry: GridEntry, optim: str) -> bool:
        """Whether the entry's runs with this optimizer get the extra seeds."""
        return ((self.methods is None or entry.method in self.methods)
                and (self.optims is None or optim in self.optims) and (self.variants or not entry.variant))


@dataclass
class Sweep:
    """A parsed sweep file."""
    path: Path
    name: str
    out: Optional[str]
    base: Optional[Path]
    set: dict[str, Any]
    optims: dict[str, Any]                      # optimizer -> config file (Path) or overrides (dict)
    grid: list[GridEntry]
    seeds: tuple[int, ...] = (0,)
    extra_seeds: Optional[ExtraSeeds] = None


@dataclass
class PlannedRun:
    """One run of the sweep: its folder name and what distinguishes it."""
    name: str
    entry: GridEntry
    optim: str
    knob: Optional[float]
    seed: int
    source: Optional[str] = None                # the run it starts from, relative to the sweep folder


def parse_sources(raw: dict, method: str, path: Path, where: str) -> tuple[str, ...]:
    """The entry's ``from``: required by methods that start from another run (scratch), refused
    by the others; each a run folder name in which ``{seed}`` may stand for the run's seed."""
    takes = SOURCE_SETTING in setting_keys(method_class(method))
    if "from" not in raw:
        if takes:
            raise fail(path, where, f"needs 'from': the runs whose final widths {method} trains, e.g. "
                       "from: [demp-adamw-t0.5-s{seed}]")
        return ()
    if not takes:
        raise fail(path, f"{where}.from", f"method {method} does not start from another run; 'from' is for scratch")
    sources = tuple(as_list(raw["from"]))
    for source in sources:
        try:
            ok = isinstance(source, str) and bool(source.strip()) and bool(source.format(seed=0))
        except (KeyError, IndexError, ValueError):
            ok = False
        if not ok:
            raise fail(path, f"{where}.from", f"expected run folder names (with {{seed}} for the run's seed; "
                       f"quote such a name in a [...] list), got {source!r}")
    if not sources:
        raise fail(path, f"{where}.from", "must not be empty")
    return sources


def parse_entry(raw: Any, i: int, path: Path) -> GridEntry:
    """Grid entry ``i`` of the sweep file, checked: method, optimizers, knob values, variant, seeds."""
    where = f"grid[{i}]"
    raw = check_keys(raw, ENTRY_KEYS, path, where)
    methods = available_methods()
    method = raw.get("method")
    if method not in methods:
        raise fail(path, f"{where}.method", f"unknown method {method!r}; valid: {', '.join(methods)}")
    where = f"grid[{i}] ({method})"
    optims = tuple(as_list(raw.get("optim", "adamw")))
    for o in optims:
        if o not in OPTIMIZERS:
            raise fail(path, f"{where}.optim", f"unknown optimizer {o!r}; valid: {', '.join(OPTIMIZERS)}")
    knob_name, allowed = knob_field(method), knob_keys(method)
    given = [k for k in ("knob", "reg_peak", *KNOB_TAGS) if k in raw]
    wrong = [k for k in given if k not in allowed]
    if wrong or len(given) > 1:
        expected = " or ".join(f"'{k}'" for k in allowed) if allowed else "no knob"
        raise fail(path, where, f"got {', '.join(given)}; method {method} takes {expected}")
    if knob_name is None:
        knobs: tuple = (None,)
    elif not given:
        raise fail(path, where, f"needs 'knob': a list of method.{knob_name} values")
    else:
        knobs = numbers(raw[given[0]], path, f"{where}.{given[0]}")
    key = None if knob_name is None else (knob_name if given[0] == "knob" else given[0])
    variant = str(raw.get("variant", ""))
    if variant and not variant.replace("-", "").isalnum():
        raise fail(path, f"{where}.variant", f"use letters, digits and '-', got {variant!r}")
    seeds = numbers(raw["seeds"], path, f"{where}.seeds", int) if "seeds" in raw else None
    return GridEntry(method, optims, knobs, overrides(raw.get("set"), path, f"{where}.set"), key, variant, seeds,
                     parse_sources(raw, method, path, where))


def parse_extra_seeds(raw: Any, path: Path) -> ExtraSeeds:
    """The sweep file's ``extra_seeds``, checked: seeds, fractions in (0, 1), known filters."""
    e = check_keys(raw, EXTRA_KEYS + EXTRA_FILTERS, path, "extra_seeds")
    for key in EXTRA_KEYS:
        if key not in e:
            raise fail(path, "extra_seeds", f"needs '{key}'")
    near = numbers(e["near_units_removed"], path, "extra_seeds.near_units_removed")
    if not all(0 < x < 1 for x in near):
        raise fail(path, "extra_seeds.near_units_removed", f"fractions in (0, 1) expected, got {list(near)}")
    filters: dict[str, Any] = {key: tuple(str(v) for v in as_list(e[key]))
                               for key in ("methods", "optims") if key in e}
    if "variants" in e:
        if not isinstance(e["variants"], bool):
            raise fail(path, "extra_seeds.variants", f"true or false expected, got {e['variants']!r}")
        filters["variants"] = e["variants"]
    for key, valid in (("methods", available_methods()), ("optims", OPTIMIZERS)):
        unknown = sorted(set(filters.get(key, ())) - set(valid))
        if unknown:
            raise fail(path, f"extra_seeds.{key}", f"unknown {unknown}; choose from {', '.join(valid)}")
    return ExtraSeeds(numbers(e["seeds"], path, "extra_seeds.seeds", int), near, **filters)


def load_sweep(path: str | Path) -> Sweep:
    """Parse and check a sweep file; DempError names the bad key and lists the valid ones."""
    path = Path(path)
    raw = check_keys(read_yaml(path, "sweep"), SWEEP_KEYS, path, "top level")
    if not raw.get("grid"):
        raise fail(path, "grid", "missing or empty: list one entry per method, e.g. "
                   "- {method: demp, optim: [adamw], knob: [1e-3, 1e-2]}")
    optims: dict[str, Any] = {}
    for name, value in check_keys(raw.get("optims") or {}, OPTIMIZERS, path, "optims").items():
        optims[name] = (find_file(value, path, f"optims.{name}") if isinstance(value, str)
                        else overrides(value, path, f"optims.{name}"))
    extra = parse_extra_seeds(raw["extra_seeds"], path) if raw.get("extra_seeds") is not None else None
    name = raw.get("name") or path.stem
    grid = [parse_entry(entry, i, path) for i, entry in enumerate(as_list(raw["grid"]))]
    sweep = Sweep(path=path, name=str(name), out=raw.get("out"),
                  base=find_file(raw["base"], path, "base") if raw.get("base") else None,
                  set=overrides(raw.get("set"), path, "set"), optims=optims, grid=grid,
                  seeds=numbers(raw.get("seeds", [0]), path, "seeds", int), extra_seeds=extra)
    plan_runs(sweep)  # duplicate names and bad overrides surface now, before any run
    return sweep


def run_name(method: str, optim: str, knob: Optional[float], seed: int, tag: str = "", variant: str = "",
             source: Optional[str] = None) -> str:
    """The run's folder name: {method}-{optim}-{tag}{knob}[-{variant}]-s{seed} (no knob for dense);
    with a source, {method}-{optim}[-{variant}]-{source}, then -s{seed} unless the source ends with it.

    ``tag`` is 't' when a knob other than the method's own is varied (DemP's ``target``).
    """
    if source is not None:
        origin = Path(source).name
        return "-".join([method, optim, *([variant] if variant else []), origin,
                         *([] if origin.endswith(f"-s{seed}") else [f"s{seed}"])])
    return "-".join([method, optim, *([f"{tag}{knob:g}"] if knob is not None else []),
                     *([variant] if variant else []), f"s{seed}"])


def planned_run(entry: GridEntry, optim: str, knob: Optional[float], seed: int,
                source: Optional[str] = None) -> PlannedRun:
    """The run of a grid entry for one optimizer, knob, seed and source (its ``{seed}`` filled in),
    named by ``run_name``."""
    tag = KNOB_TAGS.get(entry.knob_key, "") if entry.knob_key != knob_field(entry.method) else ""
    origin = source.format(seed=seed) if source is not None else None
    return PlannedRun(run_name(entry.method, optim, knob, seed, tag, entry.variant, origin), entry, optim, knob, seed,
                      origin)


def after_sources(runs: Sequence[PlannedRun]) -> list[PlannedRun]:
    """``runs`` in order, except that a run whose source is planned later moves to just after it."""
    planned = {r.name for r in runs}
    ordered: dict[str, PlannedRun] = {}
    held: dict[str, list[PlannedRun]] = {}

    def place(run: PlannedRun) -> None:
        ordered[run.name] = run
        for waiting in held.pop(run.name, []):
            place(waiting)
    for run in runs:
        if run.source in planned and run.source not in ordered:
            held.setdefault(run.source, []).append(run)
        else:
            place(run)
    return list(ordered.values()) + [r for waiting in held.values() for r in waiting]   # a circle: as planned


def plan_runs(sweep: Sweep, seeds: Optional[Sequence[int]] = None) -> list[PlannedRun]:
    """Every grid run for ``seeds`` (default: the sweep's seeds), configs checked; a run with a
    source (scratch) after that source."""
    runs, seen = [], {}
    for i, entry in enumerate(sweep.grid):
        for optim in entry.optims:
            for knob in entry.knobs:
                for source in entry.sources or (None,):
                    for seed in seeds if seeds is not None else (entry.seeds or sweep.seeds):
                        run = planned_run(entry, optim, knob, seed, source)
                        if run.name in seen:
                            raise fail(sweep.path, f"grid[{i}]", f"run {run.name} is already planned by "
                                       f"grid[{seen[run.name]}]; each method/optimizer/knob/seed runs once")
                        seen[run.name] = i
                        run_config(sweep, run)
                        runs.append(run)
    return after_sources(runs)


def run_config(sweep: Sweep, run: PlannedRun, out: Optional[Path] = None) -> Config:
    """The run's validated Config: base file, sweep/optimizer/entry overrides, method, knob, seed."""
    optim = sweep.optims.get(run.optim, {})
    own = set(setting_keys(method_class(run.entry.method)))
    shared = {k: v for k, v in sweep.set.items()  # sweep-wide method settings: where the method has them
              if not k.startswith("method.") or k.split(".", 1)[1] in own}
    fixed = {"optim.name": run.optim, "seed": run.seed, "out": str(out) if out else None,
             "label": run.entry.variant or None}
    if run.knob is not None:
        fixed[f"method.{run.entry.knob_key}"] = run.knob
    if run.source is not None:   # next to the run's folder (the sweep folder); as named while only planning
        fixed[f"method.{SOURCE_SETTING}"] = str(out.parent / run.source) if out else run.source
    layers = [("set", shared), (f"optims.{run.optim}", {} if isinstance(optim, Path) else optim),
              (f"grid entry {run.entry.method}", run.entry.set), (f"run {run.name}", fixed)]
    return build_config(optim if isinstance(optim, Path) else sweep.base, run.entry.method, layers,
                        f"sweep file {sweep.path}", run.name)


def sweep_dir_for(sweep: Sweep, out: Optional[str] = None) -> Path:
    """--out, else the sweep file's out, else runs/sweeps/<name>."""
    return Path(out or sweep.out or Path("runs") / "sweeps" / sweep.name)


# ----------------------------------------------------------------------------- studies

@dataclass
class Study:
    """A parsed study file."""
    path: Path
    name: str
    out: Optional[str]
    base: Optional[Path]
    set: dict[str, Any]
    vary: str
    values: dict[str, dict[str, Any]]          # value label -> overrides
    x: dict[str, Any]                          # value label -> its number (None: a name)
    panels: dict[str, dict[str, Any]] = field(default_factory=lambda: {"": {}})
    series: dict[str, dict[str, Any]] = field(default_factory=lambda: {"": {}})
    seeds: tuple[int, ...] = (0,)


@dataclass
class StudyRun:
    """One run of a study and what distinguishes it (as listed in study.json)."""
    name: str
    panel: str
    series: str
    value: str
    x: Optional[float]
    seed: int


def _value_label(value: Any) -> str:
    """A value's label in run names: numbers in short form (0.001), names as given."""
    n = number(value)
    return f"{n:g}" if n is not None else str(value)


def _labelled(raw: Any, path: Path, where: str) -> dict[str, dict[str, Any]]:
    """A mapping label -> overrides (panels, series, labelled values)."""
    if raw is None:
        return {"": {}}
    if not isinstance(raw, dict) or not raw:
        raise fail(path, where, f"must be a mapping label -> overrides, e.g. {{adamw: {{optim.name: adamw}}}}, "
                   f"got {raw!r}")
    return {str(label): overrides(value, path, f"{where}.{label}") for label, value in raw.items()}


def _values(raw: dict, path: Path) -> tuple[str, dict[str, dict[str, Any]], dict[str, Any]]:
    """The varied key, its value labels with their overrides, and their numbers."""
    vary, values = raw.get("vary"), raw.get("values")
    if not isinstance(vary, str) or not vary:
        raise fail(path, "vary", "missing: name the varied hyper-parameter, e.g. vary: optim.lr")
    if isinstance(values, dict):
        labelled = _labelled(values, path, "values")
        return vary, labelled, {label: number(label) for label in labelled}   # '16' is a number
    values = as_list(values) if values is not None else []
    if not values:
        raise fail(path, "values", f"missing or empty: list the values of {vary}, e.g. [1.0e-3, 1.0e-2]")
    labelled = {_value_label(v): {vary: number(v) if number(v) is not None else v} for v in values}
    if len(labelled) != len(values):
        raise fail(path, "values", f"repeated value in {values}")
    return vary, labelled, {label: over[vary] if number(over[vary]) is not None else None
                            for label, over in labelled.items()}


def load_study(path: str | Path) -> Study:
    """Parse and check a study file; every run's config is built (and checked) now."""
    path = Path(path)
    raw = check_keys(read_yaml(path, "study"), STUDY_KEYS, path, "top level")
    vary, values, x = _values(raw, path)
    study = Study(path=path, name=str(raw.get("name") or path.stem), out=raw.get("out"),
                  base=find_file(raw["base"], path, "base") if raw.get("base") else None,
                  set=overrides(raw.get("set"), path, "set"), vary=vary, values=values, x=x,
                  panels=_labelled(raw.get("panels"), path, "panels"),
                  series=_labelled(raw.get("series"), path, "series"),
                  seeds=numbers(raw.get("seeds", [0]), path, "seeds", int))
    for run in plan_study(study):
        study_config(study, run)
    return study


def plan_study(study: Study) -> list[StudyRun]:
    """Every panel x series x value x seed, in that order."""
    return [StudyRun("-".join(part for part in (panel, series, value, f"s{seed}") if part),
                     panel, series, value, study.x[value], seed)
            for panel in study.panels for series in study.series for value in study.values
            for seed in study.seeds]


def study_config(study: Study, run: StudyRun, out: Optional[Path] = None) -> Config:
    """The run's validated Config: base, method count, study/panel/series/value overrides, seed, out."""
    layers = [("set", study.set), (f"panels.{run.panel}", study.panels[run.panel]),
              (f"series.{run.series}", study.series[run.series]),
              (f"value {run.value}", study.values[run.value]),
              (f"run {run.name}", {"seed": run.seed, "out": str(out) if out else None})]
    for where, layer in layers:
        if "method.name" in layer:
            raise DempError(f"study file {study.path}, {where}: a study always trains with method "
                            f"'{STUDY_METHOD}' (it counts dead units without removing them); "
                            "drop method.name")
    return build_config(study.base, STUDY_METHOD, layers, f"study file {study.path}", run.name)


def study_dir_for(study: Study, out: Optional[str] = None) -> Path:
    """--out, else the study file's out, else runs/studies/<name>."""
    return Path(out or study.out or Path("runs") / "studies" / study.name)
