"""``demp study STUDY.yaml``: how hyper-parameters make ReLU units die.

A study trains a grid of short runs with the ``count`` method (DemP's penalty and noise, dead
checks that count dead, quasi-dead and revived units without removing any), through the same
training loop, run folders and resumable runner as ``demp sweep``, then reports it
(``demp.experiments.study_report``).

Study file (YAML; relative paths are looked up next to the file, then in the working folder)::

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
the panel's, the series', the value's, then seed and out.  ``study.json`` in the study folder
lists the runs and what each one varies, for the report.
"""
from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from demp.app.rundir import METRICS_NAME, SUMMARY_NAME
from demp.app.config import Config, config_from_dict, config_to_dict, load_config, set_dotted, yaml_load
from demp.errors import DempError
from demp.experiments.reporting import read_jsonl
from demp.experiments.study_report import PLAN_NAME, StudyRun, death_checks, study_report
from demp.experiments.sweep import (Job, Outcome, _as_list, _check_keys, _describe, _fail, _find_file,
                                    _numbers, _overrides, run_jobs, run_state)

TOP_KEYS = ("name", "out", "base", "set", "vary", "values", "panels", "series", "seeds")
STUDY_METHOD = "count"


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


def _number(value: Any) -> Optional[float]:
    """A number given as a number or as YAML's string form of one ('1e-3'); else None."""
    if isinstance(value, bool):
        return None
    try:
        return float(str(value))
    except ValueError:
        return None


def _label(value: Any) -> str:
    number = _number(value)
    return f"{number:g}" if number is not None else str(value)


def _labelled(raw: Any, path: Path, where: str) -> dict[str, dict[str, Any]]:
    """A mapping label -> overrides (panels, series, labelled values)."""
    if raw is None:
        return {"": {}}
    if not isinstance(raw, dict) or not raw:
        raise _fail(path, where, f"must be a mapping label -> overrides, e.g. {{adamw: {{optim.name: adamw}}}}, "
                    f"got {raw!r}")
    return {str(label): _overrides(value, path, f"{where}.{label}") for label, value in raw.items()}


def _values(raw: dict, path: Path) -> tuple[str, dict[str, dict[str, Any]], dict[str, Any]]:
    """The varied key, its value labels with their overrides, and their numbers."""
    vary, values = raw.get("vary"), raw.get("values")
    if not isinstance(vary, str) or not vary:
        raise _fail(path, "vary", "missing: name the varied hyper-parameter, e.g. vary: optim.lr")
    if isinstance(values, dict):
        labelled = _labelled(values, path, "values")
        return vary, labelled, {label: _number(label) for label in labelled}   # '16' is a number
    values = _as_list(values) if values is not None else []
    if not values:
        raise _fail(path, "values", f"missing or empty: list the values of {vary}, e.g. [1.0e-3, 1.0e-2]")
    labelled = {_label(v): {vary: _number(v) if _number(v) is not None else v} for v in values}
    if len(labelled) != len(values):
        raise _fail(path, "values", f"repeated value in {values}")
    return vary, labelled, {label: over[vary] if _number(over[vary]) is not None else None
                            for label, over in labelled.items()}


def load_study(path: str | Path) -> Study:
    """Parse and check a study file; every run's config is built (and checked) now."""
    path = Path(path)
    if not path.is_file():
        raise DempError(f"study file {path} not found")
    try:
        raw = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DempError(f"cannot parse study file {path}: {e}") from None
    raw = _check_keys(raw, TOP_KEYS, path, "top level")
    vary, values, x = _values(raw, path)
    study = Study(path=path, name=str(raw.get("name") or path.stem), out=raw.get("out"),
                  base=_find_file(raw["base"], path, "base") if raw.get("base") else None,
                  set=_overrides(raw.get("set"), path, "set"), vary=vary, values=values, x=x,
                  panels=_labelled(raw.get("panels"), path, "panels"),
                  series=_labelled(raw.get("series"), path, "series"),
                  seeds=_numbers(raw.get("seeds", [0]), path, "seeds", int))
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
    raw = config_to_dict(load_config(str(study.base)) if study.base else Config())
    set_dotted(raw, "method.name", STUDY_METHOD, f"study file {study.path}")
    layers = [("set", study.set), (f"panels.{run.panel}", study.panels[run.panel]),
              (f"series.{run.series}", study.series[run.series]),
              (f"value {run.value}", study.values[run.value]),
              (f"run {run.name}", {"seed": run.seed, "out": str(out) if out else None})]
    for where, overrides in layers:
        for key, value in overrides.items():
            if key == "method.name":
                raise DempError(f"study file {study.path}, {where}: a study always trains with method "
                                f"'{STUDY_METHOD}' (it counts dead units without removing them); "
                                "drop method.name")
            set_dotted(raw, key, value, f"study file {study.path}, {where}")
    source = f"study file {study.path} (run {run.name})"
    try:
        return config_from_dict(raw, source).validate()
    except DempError as e:
        raise DempError(f"{source}: {e}") from None


def study_dir_for(study: Study, out: Optional[str] = None) -> Path:
    """--out, else the study file's out, else runs/studies/<name>."""
    return Path(out or study.out or Path("runs") / "studies" / study.name)


def write_plan(study: Study, folder: Path) -> None:
    """study.yaml (the file as given) and study.json (the runs and what they vary) for the report."""
    folder.mkdir(parents=True, exist_ok=True)
    if study.path.resolve() != (folder / "study.yaml").resolve():
        shutil.copyfile(study.path, folder / "study.yaml")
    plan = {"name": study.name, "vary": study.vary, "runs": [asdict(r) for r in plan_study(study)]}
    (folder / PLAN_NAME).write_text(json.dumps(plan, indent=1) + "\n")


def describe_run(run_dir: Path) -> str:
    """A finished study run in one line: dead units at the end, ever dead, test accuracy."""
    if run_state(run_dir) != "done":
        return _describe(run_dir)
    checks = death_checks(read_jsonl(run_dir / METRICS_NAME))
    summary = json.loads((run_dir / SUMMARY_NAME).read_text())
    last = checks[-1]
    return (f"dead {100 * last['dead'] / last['units']:.1f}% of {last['units']} units "
            f"(ever dead {100 * last['ever_dead'] / last['units']:.1f}%), test acc "
            f"{100 * summary['test_acc']:.2f}%")


def run_study(path: str | Path, out: Optional[str] = None, workers: int = 1, dry_run: bool = False,
              retry_failed: bool = False, log: Callable[[str], None] = print) -> list[Outcome]:
    """Plan, run and report a study; return every run's outcome."""
    if workers < 1:
        raise DempError(f"--workers must be >= 1, got {workers}")
    study = load_study(path)
    folder = study_dir_for(study, out)
    runs = plan_study(study)
    if dry_run:
        log(f"study {study.name} -> {folder}: {len(runs)} runs varying {study.vary}")
        for run in runs:
            log(f"  {run.name:<36} {run_state(folder / run.name)}")
        return []
    write_plan(study, folder)
    jobs = [Job(run.name, partial(study_config, study, run)) for run in runs]
    outcomes = run_jobs(jobs, folder, workers, retry_failed, log, describe_run)
    failed = [o.name for o in outcomes if o.status == "failed"]
    log(f"{sum(o.status == 'done' for o in outcomes)} runs done, "
        f"{sum(o.status == 'skipped' for o in outcomes)} skipped, {len(failed)} failed"
        + (f" ({', '.join(failed)})" if failed else ""))
    if any(run_state(folder / run.name) == "done" for run in runs):
        files = study_report(folder)
        log(f"report: {files['report.md']}")
    return outcomes


def add_study_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``demp study``."""
    parser.add_argument("study", metavar="STUDY.yaml",
                        help="study file (schema: python -m pydoc demp.experiments.study)")
    parser.add_argument("--out", default=None, help="study folder (default: the file's out, else runs/studies/<name>)")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs at once, each in its own process with cpu_count/N threads (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="print the planned runs and their state, run nothing")
    parser.add_argument("--retry-failed", action="store_true", help="run again the runs that failed earlier")


def study_main(args: argparse.Namespace) -> int:
    """``demp study``: exit status 1 when a run failed, else 0."""
    outcomes = run_study(args.study, out=args.out, workers=args.workers, dry_run=args.dry_run,
                         retry_failed=args.retry_failed)
    return int(any(o.status == "failed" for o in outcomes))
