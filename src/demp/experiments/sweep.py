"""``demp sweep SWEEP.yaml``: a grid of training runs (methods x optimizers x knobs x seeds),
resumable, sequential or in worker processes, then one report over all of them.

Sweep file (YAML; relative paths are looked up next to the sweep file, then in the working
folder)::

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
entry of second seeds placed where its priority is).  Sweep-wide ``method.*`` settings apply to the methods that have them.

Overrides apply in this order: base file (or the optimizer's file), method.name (another
method than the base file's starts from its own defaults), ``set``, the optimizer's
overrides, the entry's ``set``, then the knob, seed and out.

``extra_seeds``: once the grid has run, for every method and optimizer the knob whose mean
fraction of units removed (over ``seeds``) is nearest to each value of ``near_units_removed``
is run again with each extra seed, and every dense entry is run with the extra seeds too (so
speed-ups compare runs of the same seed).

Each run gets the folder ``{method}-{optim}-{knob}-s{seed}`` (``dense-{optim}-s{seed}``) under
the sweep folder.  Finished runs (summary.json) are skipped; a run that failed earlier
(error.txt) is skipped unless ``--retry-failed``; an interrupted run resumes from its checkpoint.
A failing run writes its traceback to error.txt and the sweep goes on.  With ``--workers N > 1``
every run is a fresh process using ``cpu_count // N`` torch threads.  At the end
``demp.experiments.reporting.report`` aggregates the sweep folder (summary.csv, plots, report.md).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from statistics import mean
from typing import Any, Callable, Optional, Sequence

import yaml

from demp.app.config import (OPTIMIZERS, Config, available_methods, config_from_dict, config_to_dict, load_config,
                             set_dotted, yaml_load)
from demp.app.methods.base import method_class, setting_keys
from demp.app.rundir import CHECKPOINT_NAME, ERROR_NAME, SUMMARY_NAME
from demp.errors import DempError

TOP_KEYS = ("name", "out", "base", "set", "optims", "grid", "seeds", "extra_seeds")
ENTRY_KEYS = ("method", "optim", "knob", "reg_peak", "target", "target_flops", "set", "variant", "seeds")
KNOB_TAGS = {"target": "t", "target_flops": "f"}
"""Run-name tags of knobs other than the method's own (DemP's units and FLOPs budgets)."""
EXTRA_KEYS = ("seeds", "near_units_removed")
EXTRA_FILTERS = ("methods", "optims", "variants")   # optional: which entries get extra seeds


# ----------------------------------------------------------------------------- schema

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


@dataclass
class ExtraSeeds:
    """More seeds for the knobs nearest to given fractions of units removed."""
    seeds: tuple[int, ...]
    near_units_removed: tuple[float, ...]
    methods: Optional[tuple[str, ...]] = None    # None: every method
    optims: Optional[tuple[str, ...]] = None     # None: every optimizer
    variants: bool = True                        # False: entries with a variant (ablations) get none

    def covers(self, entry: "GridEntry", optim: str) -> bool:
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


def _fail(path: Path, where: str, message: str) -> DempError:
    """An error in a sweep or study file, naming the file and the place."""
    return DempError(f"{path}: {where}: {message}")


def _check_keys(raw: Any, valid: Sequence[str], path: Path, where: str) -> dict:
    if not isinstance(raw, dict):
        raise _fail(path, where, f"must be a mapping (key: value), got {raw!r}")
    for key in raw:
        if key not in valid:
            raise _fail(path, where, f"unknown key '{key}'; valid keys: {', '.join(valid)}")
    return raw


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _numbers(values: Any, path: Path, where: str, kind: Callable = float) -> tuple:
    """A list of numbers (YAML reads 1e-3 as a string: accept that too)."""
    out = []
    for v in _as_list(values):
        try:
            number = kind(str(v)) if not isinstance(v, bool) else None
        except ValueError:
            number = None
        if number is None:
            raise _fail(path, where, f"expected a number or a list of numbers, got {v!r}")
        out.append(number)
    if not out:
        raise _fail(path, where, "must not be empty")
    return tuple(out)


def _find_file(name: Any, path: Path, where: str) -> Path:
    """A config file named in the sweep: next to the sweep file, else from the working folder."""
    if not isinstance(name, str):
        raise _fail(path, where, f"expected a config file path, got {name!r}")
    for candidate in (path.parent / name, Path(name)):
        if candidate.is_file():
            return candidate
    raise _fail(path, where, f"config file '{name}' not found next to the sweep file or in {Path.cwd()}")


def _overrides(raw: Any, path: Path, where: str) -> dict[str, Any]:
    """Overrides as {dotted key: value}; nested mappings are flattened."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _fail(path, where, f"must be a mapping of overrides (e.g. train.epochs: 3), got {raw!r}")
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict) and value:
            flat.update({f"{key}.{k}": v for k, v in _overrides(value, path, where).items()})
        else:
            flat[str(key)] = value
    return flat


def _parse_entry(raw: Any, i: int, path: Path) -> GridEntry:
    where = f"grid[{i}]"
    raw = _check_keys(raw, ENTRY_KEYS, path, where)
    methods = available_methods()
    method = raw.get("method")
    if method not in methods:
        raise _fail(path, f"{where}.method", f"unknown method {method!r}; valid: {', '.join(methods)}")
    where = f"grid[{i}] ({method})"
    optims = tuple(_as_list(raw.get("optim", "adamw")))
    for o in optims:
        if o not in OPTIMIZERS:
            raise _fail(path, f"{where}.optim", f"unknown optimizer {o!r}; valid: {', '.join(OPTIMIZERS)}")
    knob_name, allowed = knob_field(method), knob_keys(method)
    given = [k for k in ("knob", "reg_peak", *KNOB_TAGS) if k in raw]
    wrong = [k for k in given if k not in allowed]
    if wrong or len(given) > 1:
        expected = " or ".join(f"'{k}'" for k in allowed) if allowed else "no knob"
        raise _fail(path, where, f"got {', '.join(given)}; method {method} takes {expected}")
    if knob_name is None:
        knobs: tuple = (None,)
    elif not given:
        raise _fail(path, where, f"needs 'knob': a list of method.{knob_name} values")
    else:
        knobs = _numbers(raw[given[0]], path, f"{where}.{given[0]}")
    key = None if knob_name is None else (knob_name if given[0] == "knob" else given[0])
    variant = str(raw.get("variant", ""))
    if variant and not variant.replace("-", "").isalnum():
        raise _fail(path, f"{where}.variant", f"use letters, digits and '-', got {variant!r}")
    seeds = _numbers(raw["seeds"], path, f"{where}.seeds", int) if "seeds" in raw else None
    return GridEntry(method, optims, knobs, _overrides(raw.get("set"), path, f"{where}.set"), key, variant, seeds)


def load_sweep(path: str | Path) -> Sweep:
    """Parse and check a sweep file; DempError names the bad key and lists the valid ones."""
    path = Path(path)
    if not path.is_file():
        raise DempError(f"sweep file {path} not found")
    try:
        raw = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DempError(f"cannot parse sweep file {path}: {e}") from None
    raw = _check_keys(raw, TOP_KEYS, path, "top level")
    if not raw.get("grid"):
        raise _fail(path, "grid", "missing or empty: list one entry per method, e.g. "
                    "- {method: demp, optim: [adamw], knob: [1e-3, 1e-2]}")
    optims: dict[str, Any] = {}
    for name, value in _check_keys(raw.get("optims") or {}, OPTIMIZERS, path, "optims").items():
        optims[name] = (_find_file(value, path, f"optims.{name}") if isinstance(value, str)
                        else _overrides(value, path, f"optims.{name}"))
    extra = None
    if raw.get("extra_seeds") is not None:
        e = _check_keys(raw["extra_seeds"], EXTRA_KEYS + EXTRA_FILTERS, path, "extra_seeds")
        for key in EXTRA_KEYS:
            if key not in e:
                raise _fail(path, "extra_seeds", f"needs '{key}'")
        near = _numbers(e["near_units_removed"], path, "extra_seeds.near_units_removed")
        if not all(0 < x < 1 for x in near):
            raise _fail(path, "extra_seeds.near_units_removed", f"fractions in (0, 1) expected, got {list(near)}")
        filters: dict[str, Any] = {key: tuple(str(v) for v in _as_list(e[key]))
                                   for key in ("methods", "optims") if key in e}
        if "variants" in e:
            if not isinstance(e["variants"], bool):
                raise _fail(path, "extra_seeds.variants", f"true or false expected, got {e['variants']!r}")
            filters["variants"] = e["variants"]
        for key, valid in (("methods", available_methods()), ("optims", OPTIMIZERS)):
            unknown = sorted(set(filters.get(key, ())) - set(valid))
            if unknown:
                raise _fail(path, f"extra_seeds.{key}", f"unknown {unknown}; choose from {', '.join(valid)}")
        extra = ExtraSeeds(_numbers(e["seeds"], path, "extra_seeds.seeds", int), near, **filters)
    name = raw.get("name") or path.stem
    grid = [_parse_entry(entry, i, path) for i, entry in enumerate(_as_list(raw["grid"]))]
    sweep = Sweep(path=path, name=str(name), out=raw.get("out"),
                  base=_find_file(raw["base"], path, "base") if raw.get("base") else None,
                  set=_overrides(raw.get("set"), path, "set"), optims=optims, grid=grid,
                  seeds=_numbers(raw.get("seeds", [0]), path, "seeds", int), extra_seeds=extra)
    plan_runs(sweep)  # duplicate names and bad overrides surface now, before any run
    return sweep


# ----------------------------------------------------------------------------- planning

def run_name(method: str, optim: str, knob: Optional[float], seed: int, tag: str = "", variant: str = "") -> str:
    """The run's folder name: {method}-{optim}-{tag}{knob}[-{variant}]-s{seed} (no knob for dense).

    ``tag`` is 't' when a knob other than the method's own is varied (DemP's ``target``).
    """
    return "-".join([method, optim, *([f"{tag}{knob:g}"] if knob is not None else []),
                     *([variant] if variant else []), f"s{seed}"])


def entry_run_name(entry: GridEntry, optim: str, knob: Optional[float], seed: int) -> str:
    tag = KNOB_TAGS.get(entry.knob_key, "") if entry.knob_key != knob_field(entry.method) else ""
    return run_name(entry.method, optim, knob, seed, tag, entry.variant)


def plan_runs(sweep: Sweep, seeds: Optional[Sequence[int]] = None) -> list[PlannedRun]:
    """Every grid run for ``seeds`` (default: the sweep's seeds), configs checked."""
    runs, seen = [], {}
    for i, entry in enumerate(sweep.grid):
        for optim in entry.optims:
            for knob in entry.knobs:
                for seed in seeds if seeds is not None else (entry.seeds or sweep.seeds):
                    run = PlannedRun(entry_run_name(entry, optim, knob, seed), entry, optim, knob, seed)
                    if run.name in seen:
                        raise _fail(sweep.path, f"grid[{i}]", f"run {run.name} is already planned by "
                                    f"grid[{seen[run.name]}]; each method/optimizer/knob/seed runs once")
                    seen[run.name] = i
                    run_config(sweep, run)
                    runs.append(run)
    return runs


def run_config(sweep: Sweep, run: PlannedRun, out: Optional[Path] = None) -> Config:
    """The run's validated Config: base file, sweep/optimizer/entry overrides, method, knob, seed."""
    optim = sweep.optims.get(run.optim, {})
    base = optim if isinstance(optim, Path) else sweep.base
    raw = config_to_dict(load_config(str(base)) if base else Config())
    set_dotted(raw, "method.name", run.entry.method, f"sweep file {sweep.path}")
    own = set(setting_keys(method_class(run.entry.method)))
    shared = {k: v for k, v in sweep.set.items()  # sweep-wide method settings: where the method has them
              if not k.startswith("method.") or k.split(".", 1)[1] in own}
    layers = [("set", shared), (f"optims.{run.optim}", {} if isinstance(optim, Path) else optim),
              (f"grid entry {run.entry.method}", run.entry.set)]
    fixed = {"optim.name": run.optim, "seed": run.seed, "out": str(out) if out else None,
             "label": run.entry.variant or None}
    if run.knob is not None:
        fixed[f"method.{run.entry.knob_key}"] = run.knob
    layers.append((f"run {run.name}", fixed))
    for where, overrides in layers:
        for key, value in overrides.items():
            set_dotted(raw, key, value, f"sweep file {sweep.path}, {where}")
    source = f"sweep file {sweep.path} (run {run.name})"
    try:
        return config_from_dict(raw, source).validate()
    except DempError as e:
        raise DempError(f"{source}: {e}") from None


def _units_removed(run_dir: Path) -> Optional[float]:
    summary = run_dir / SUMMARY_NAME
    if not summary.is_file():
        return None
    return 1 - float(json.loads(summary.read_text())["units_remaining"])


def plan_extra_seeds(sweep: Sweep, sweep_dir: Path) -> tuple[list[PlannedRun], list[str]]:
    """Runs for ``extra_seeds`` chosen from the finished grid runs, and notes on curves skipped."""
    if sweep.extra_seeds is None:
        return [], []
    extra, notes = sweep.extra_seeds, []
    chosen: dict[tuple[int, str, Optional[float]], None] = {}
    base_runs = plan_runs(sweep)
    for i, entry in enumerate(sweep.grid):
        for optim in entry.optims:
            if not extra.covers(entry, optim):
                continue
            if entry.method == "dense":
                chosen[(i, optim, None)] = None
                continue
            removed = {}
            for knob in entry.knobs:
                values = [_units_removed(sweep_dir / r.name) for r in base_runs
                          if r.entry is entry and r.optim == optim and r.knob == knob]
                values = [v for v in values if v is not None]
                if values:
                    removed[knob] = mean(values)
            if not removed:
                notes.append(f"{entry.method}/{optim}: no finished grid run yet, extra seeds chosen later")
                continue
            for target in extra.near_units_removed:
                chosen[(i, optim, min(removed, key=lambda k: abs(removed[k] - target)))] = None
    runs = [PlannedRun(entry_run_name(sweep.grid[i], optim, knob, seed), sweep.grid[i], optim, knob, seed)
            for (i, optim, knob) in chosen for seed in extra.seeds if seed not in sweep.seeds]
    return runs, notes


# ----------------------------------------------------------------------------- running

@dataclass
class Outcome:
    """What happened to one planned run."""
    name: str
    status: str                 # done | skipped | failed
    seconds: float = 0.0
    message: str = ""


def run_state(run_dir: Path) -> str:
    """done (summary.json), failed (error.txt), partial (checkpoint to resume from) or new."""
    if (run_dir / SUMMARY_NAME).is_file():
        return "done"
    if (run_dir / ERROR_NAME).is_file():
        return "failed"
    return "partial" if (run_dir / CHECKPOINT_NAME).is_file() else "new"


def execute_run(cfg_dict: dict, run_dir: str, threads: Optional[int] = None) -> None:
    """Train one run into ``run_dir`` (resuming its checkpoint); a failure goes to error.txt."""
    from demp.app.training import train
    if threads:
        import torch
        torch.set_num_threads(threads)
    folder = Path(run_dir)
    try:
        resume = run_state(folder) == "partial"
        if not resume and folder.exists():  # a failed or never-checkpointed attempt: start over
            shutil.rmtree(folder)
        train(config_from_dict(cfg_dict, f"{folder}/config"), str(folder), resume=resume, progress=False)
    except Exception:  # noqa: BLE001 - any failure is recorded and the sweep goes on
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ERROR_NAME).write_text(traceback.format_exc())


def _in_child(cfg_dict: dict, run_dir: str, threads: Optional[int]) -> None:
    """Run in a fresh spawned process; a crash of the process itself is recorded too."""
    proc = multiprocessing.get_context("spawn").Process(target=execute_run, args=(cfg_dict, run_dir, threads))
    proc.start()
    proc.join()
    folder = Path(run_dir)
    if proc.exitcode != 0 and run_state(folder) != "done":
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ERROR_NAME).write_text(f"worker process died with exit code {proc.exitcode}\n")


def _describe(run_dir: Path) -> str:
    state = run_state(run_dir)
    if state == "failed":
        lines = (run_dir / ERROR_NAME).read_text().strip().splitlines()
        return f"failed: {lines[-1] if lines else 'no message'} (see {run_dir / ERROR_NAME})"
    if state != "done":
        return state
    s = json.loads((run_dir / SUMMARY_NAME).read_text())
    return (f"test acc {100 * s['test_acc']:.2f}%, units remaining {100 * s['units_remaining']:.1f}%, "
            f"params remaining {100 * s['params_remaining']:.1f}%, wall {s['wall_s']:.0f} s")


@dataclass
class Job:
    """A run to make: its folder name and its config for a given folder."""
    name: str
    config: Callable[[Path], Config]


def run_many(sweep: Sweep, runs: Sequence[PlannedRun], sweep_dir: Path, workers: int = 1,
             retry_failed: bool = False, log: Callable[[str], None] = print) -> list[Outcome]:
    """Run the planned runs not finished yet, sequentially or in ``workers`` processes."""
    jobs = [Job(run.name, partial(run_config, sweep, run)) for run in runs]
    return run_jobs(jobs, sweep_dir, workers, retry_failed, log)


def run_jobs(jobs: Sequence[Job], folder: Path, workers: int = 1, retry_failed: bool = False,
             log: Callable[[str], None] = print, describe: Callable[[Path], str] = _describe) -> list[Outcome]:
    """Run the jobs not finished yet into ``folder/<name>``, sequentially or in ``workers`` processes;
    ``describe(run_dir)`` is the line logged after each run."""
    todo, outcomes = [], []
    for job in jobs:
        state = run_state(folder / job.name)
        if state == "done" or (state == "failed" and not retry_failed):
            outcomes.append(Outcome(job.name, "skipped", message=f"{state} earlier"))
        else:
            todo.append(job)
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    launch = _in_child if workers > 1 else execute_run
    counter = iter(range(1, len(todo) + 1))

    def one(job: Job) -> Outcome:
        run_dir = folder / job.name
        cfg = job.config(run_dir)
        start = time.perf_counter()
        launch(config_to_dict(cfg), str(run_dir), threads)
        seconds = time.perf_counter() - start
        outcome = Outcome(job.name, "done" if run_state(run_dir) == "done" else "failed", seconds,
                          describe(run_dir))
        log(f"[{next(counter)}/{len(todo)}] {job.name} ({seconds:.0f} s): {outcome.message}")
        return outcome

    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            outcomes += list(pool.map(one, todo))
    else:
        outcomes += [one(job) for job in todo]
    return outcomes


def sweep_dir_for(sweep: Sweep, out: Optional[str] = None) -> Path:
    """--out, else the sweep file's out, else runs/sweeps/<name>."""
    return Path(out or sweep.out or Path("runs") / "sweeps" / sweep.name)


def describe_plan(sweep: Sweep, sweep_dir: Path) -> list[str]:
    """One line per planned run with its state, then the extra-seed plan."""
    lines = [f"sweep {sweep.name} -> {sweep_dir}"]
    runs = plan_runs(sweep)
    extra, notes = plan_extra_seeds(sweep, sweep_dir)
    for label, group in (("grid", runs), ("extra seeds", extra)):
        lines.append(f"{label}: {len(group)} runs")
        lines += [f"  {r.name:<36} {run_state(sweep_dir / r.name)}" for r in group]
    if sweep.extra_seeds is not None:
        e = sweep.extra_seeds
        lines.append(f"extra seeds {list(e.seeds)} at the knobs nearest to "
                     f"{', '.join(f'{100 * x:.0f}%' for x in e.near_units_removed)} units removed")
    lines += [f"  note: {n}" for n in notes]
    return lines


def run_sweep(path: str | Path, out: Optional[str] = None, workers: int = 1, dry_run: bool = False,
              retry_failed: bool = False, log: Callable[[str], None] = print) -> list[Outcome]:
    """Plan, run (grid, then extra seeds) and report a sweep; return every run's outcome."""
    if workers < 1:
        raise DempError(f"--workers must be >= 1, got {workers}")
    sweep = load_sweep(path)
    sweep_dir = sweep_dir_for(sweep, out)
    if dry_run:
        for line in describe_plan(sweep, sweep_dir):
            log(line)
        return []
    sweep_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sweep.path, sweep_dir / "sweep.yaml")
    outcomes = run_many(sweep, plan_runs(sweep), sweep_dir, workers, retry_failed, log)
    extra, notes = plan_extra_seeds(sweep, sweep_dir)
    for note in notes:
        log(f"note: {note}")
    outcomes += run_many(sweep, extra, sweep_dir, workers, retry_failed, log)
    failed = [o.name for o in outcomes if o.status == "failed"]
    log(f"{sum(o.status == 'done' for o in outcomes)} runs done, "
        f"{sum(o.status == 'skipped' for o in outcomes)} skipped, {len(failed)} failed"
        + (f" ({', '.join(failed)})" if failed else ""))
    if any(run_state(sweep_dir / o.name) == "done" for o in outcomes):
        from demp.experiments.reporting import report
        files = report([sweep_dir], sweep_dir, title=f"sweep {sweep.name}")
        log(f"report: {files['summary.csv']}, {files['report.md']}")
    return outcomes


def add_sweep_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``demp sweep``."""
    parser.add_argument("sweep", metavar="SWEEP.yaml", help="sweep file (schema: python -m pydoc demp.experiments.sweep)")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs at once, each in its own process with cpu_count/N threads (default 1)")
    parser.add_argument("--out", default=None, help="sweep folder (default: the file's out, else runs/sweeps/<name>)")
    parser.add_argument("--dry-run", action="store_true", help="print the planned runs and their state, run nothing")
    parser.add_argument("--retry-failed", action="store_true", help="run again the runs that failed earlier")


def sweep_main(args: argparse.Namespace) -> int:
    """``demp sweep``: exit status 1 when a run failed, else 0."""
    outcomes = run_sweep(args.sweep, out=getattr(args, "out", None), workers=getattr(args, "workers", 1),
                         dry_run=getattr(args, "dry_run", False),
                         retry_failed=getattr(args, "retry_failed", False))
    return int(any(o.status == "failed" for o in outcomes))
