"""Making the runs of a sweep or a study (``demp sweep``, ``demp study``), then their report.

Runs are resumable and made sequentially or in worker processes.

A run is a ``Job``: a folder name and its Config for that folder (``demp.experiments.spec``
plans and builds them).  ``run_jobs`` makes the jobs not finished yet into ``folder/<name>``:
finished runs (summary.json) are skipped; a run that failed earlier (error.txt) is skipped
unless ``retry_failed`` (``--retry-failed``); an interrupted run resumes from its checkpoint.
A failing run writes its traceback to error.txt and the others go on.  With ``workers`` N > 1
every run is a fresh process using ``cpu_count // N`` torch threads.  A job ``after`` other
runs (a scratch run, after the run whose widths it trains) starts only once they are done;
until then it is reported as waiting (not failed) and tried again when the other jobs have
run, or at the next ``demp sweep`` of the same folder.

``run_sweep`` runs a sweep's grid, then its extra seeds (``plan_extra_seeds``: chosen from the
finished grid runs), and ``demp.experiments.render.report`` aggregates the sweep folder
(summary.csv, plots, report.md).  ``run_study`` writes the study's plan (study.json), runs it
and writes its report (``demp.experiments.render.study_report``).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from statistics import mean
from typing import Callable, Optional, Sequence

from demp.app.config import Config, config_from_dict, config_to_dict
from demp.app.rundir import CHECKPOINT_NAME, ERROR_NAME, METRICS_NAME, SUMMARY_NAME
from demp.errors import DempError
from demp.experiments.render import report, study_report
from demp.experiments.results import death_checks, load_summary, read_jsonl
from demp.experiments.spec import (PLAN_NAME, PlannedRun, Study, Sweep, load_study, load_sweep, plan_runs,
                                   plan_study, planned_run, run_config, study_config, study_dir_for, sweep_dir_for)

Log = Callable[[str], None]


# ----------------------------------------------------------------------------- runs

@dataclass
class Outcome:
    """What happened to one planned run."""
    name: str
    status: str                 # done | skipped | failed | waiting
    seconds: float = 0.0
    message: str = ""


@dataclass
class Job:
    """A run to make: its folder name and its config for a given folder."""
    name: str
    config: Callable[[Path], Config]
    after: tuple[str, ...] = ()     # runs in the same folder that must be done before this one starts


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


def describe(run_dir: Path) -> str:
    """A run in one line: its state, its error, or its accuracy, sizes and wall time when done."""
    state = run_state(run_dir)
    if state == "failed":
        lines = (run_dir / ERROR_NAME).read_text().strip().splitlines()
        return f"failed: {lines[-1] if lines else 'no message'} (see {run_dir / ERROR_NAME})"
    if state != "done":
        return state
    s = load_summary(run_dir)
    bpb = f", bits/byte {s['test_bpb']:.3f}" if s.get("test_bpb") is not None else ""
    return (f"test acc {100 * s['test_acc']:.2f}%{bpb}, units remaining {100 * s['units_remaining']:.1f}%, "
            f"params remaining {100 * s['params_remaining']:.1f}%, wall {s['wall_s']:.0f} s")


def waiting_for(job: Job, folder: Path) -> list[str]:
    """The runs ``job`` comes after that are not done yet, each with its state."""
    return [f"{name} ({run_state(folder / name)})" for name in job.after if run_state(folder / name) != "done"]


def run_jobs(jobs: Sequence[Job], folder: Path, workers: int = 1, retry_failed: bool = False,
             log: Log = print, describe: Callable[[Path], str] = describe) -> list[Outcome]:
    """Run the jobs not finished yet into ``folder/<name>``, sequentially or in ``workers`` processes;
    ``describe(run_dir)`` is the line logged after each run.  A job whose ``after`` runs are not
    done when its turn comes waits; waiting jobs are tried again while others finish."""
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
    total = len(todo)

    def one(job: Job) -> Outcome:
        run_dir = folder / job.name
        waits = waiting_for(job, folder)
        if waits:
            return Outcome(job.name, "waiting", message=f"waits for {', '.join(waits)}")
        cfg = job.config(run_dir)
        start = time.perf_counter()
        launch(config_to_dict(cfg), str(run_dir), threads)
        seconds = time.perf_counter() - start
        outcome = Outcome(job.name, "done" if run_state(run_dir) == "done" else "failed", seconds,
                          describe(run_dir))
        log(f"[{next(counter)}/{total}] {job.name} ({seconds:.0f} s): {outcome.message}")
        return outcome

    while todo:
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(one, todo))
        else:
            results = [one(job) for job in todo]
        outcomes += [o for o in results if o.status != "waiting"]
        waiting = [o for o in results if o.status == "waiting"]
        if len(waiting) == len(todo):   # nothing ran: what they wait for will not finish in this call
            for o in waiting:
                log(f"{o.name}: {o.message}")
            return outcomes + waiting
        todo = [job for job, o in zip(todo, results) if o.status == "waiting"]
    return outcomes


def _check_workers(workers: int) -> None:
    """Refuse fewer than one worker before anything runs."""
    if workers < 1:
        raise DempError(f"--workers must be >= 1, got {workers}")


def _log_totals(outcomes: Sequence[Outcome], log: Log) -> None:
    """The closing line: runs done, skipped and failed (named)."""
    failed = [o.name for o in outcomes if o.status == "failed"]
    waiting = [o.name for o in outcomes if o.status == "waiting"]
    log(f"{sum(o.status == 'done' for o in outcomes)} runs done, "
        f"{sum(o.status == 'skipped' for o in outcomes)} skipped, {len(failed)} failed"
        + (f" ({', '.join(failed)})" if failed else "")
        + (f", {len(waiting)} waiting for their source ({', '.join(waiting)})" if waiting else ""))


# ----------------------------------------------------------------------------- sweeps

def run_many(sweep: Sweep, runs: Sequence[PlannedRun], sweep_dir: Path, workers: int = 1,
             retry_failed: bool = False, log: Log = print) -> list[Outcome]:
    """Run the planned runs not finished yet, sequentially or in ``workers`` processes."""
    jobs = [Job(run.name, partial(run_config, sweep, run), (run.source,) if run.source else ()) for run in runs]
    return run_jobs(jobs, sweep_dir, workers, retry_failed, log)


def _units_removed(run_dir: Path) -> Optional[float]:
    """The fraction of units a finished run removed (None: not finished)."""
    if not (run_dir / SUMMARY_NAME).is_file():
        return None
    return 1 - float(load_summary(run_dir)["units_remaining"])


def plan_extra_seeds(sweep: Sweep, sweep_dir: Path) -> tuple[list[PlannedRun], list[str]]:
    """Runs for ``extra_seeds`` chosen from the finished grid runs, and notes on curves skipped."""
    if sweep.extra_seeds is None:
        return [], []
    extra, notes = sweep.extra_seeds, []
    chosen: dict[tuple[int, str, Optional[float]], None] = {}
    base_runs = plan_runs(sweep)
    for i, entry in enumerate(sweep.grid):
        for optim in entry.optims:
            if entry.sources or not extra.covers(entry, optim):   # scratch: seeds of its own (docs of spec)
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
    runs = [planned_run(sweep.grid[i], optim, knob, seed)
            for (i, optim, knob) in chosen for seed in extra.seeds if seed not in sweep.seeds]
    return runs, notes


def after_note(run: PlannedRun, planned: Sequence[PlannedRun], sweep_dir: Path) -> str:
    """For a run with a source not done yet: what it waits for (and a hint if nothing plans it)."""
    if run.source is None or run_state(sweep_dir / run.source) == "done":
        return ""
    known = any(r.name == run.source for r in planned)
    return f"  (after {run.source}{'' if known else ': not planned by this sweep nor done in its folder'})"


def describe_plan(sweep: Sweep, sweep_dir: Path) -> list[str]:
    """One line per planned run with its state, then the extra-seed plan."""
    lines = [f"sweep {sweep.name} -> {sweep_dir}"]
    runs = plan_runs(sweep)
    extra, notes = plan_extra_seeds(sweep, sweep_dir)
    for label, group in (("grid", runs), ("extra seeds", extra)):
        lines.append(f"{label}: {len(group)} runs")
        lines += [f"  {r.name:<36} {run_state(sweep_dir / r.name)}{after_note(r, runs, sweep_dir)}" for r in group]
    if sweep.extra_seeds is not None:
        e = sweep.extra_seeds
        lines.append(f"extra seeds {list(e.seeds)} at the knobs nearest to "
                     f"{', '.join(f'{100 * x:.0f}%' for x in e.near_units_removed)} units removed")
    lines += [f"  note: {n}" for n in notes]
    return lines


def run_sweep(path: str | Path, out: Optional[str] = None, workers: int = 1, dry_run: bool = False,
              retry_failed: bool = False, log: Log = print) -> list[Outcome]:
    """Plan, run (grid, then extra seeds) and report a sweep; return every run's outcome."""
    _check_workers(workers)
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
    _log_totals(outcomes, log)
    if any(run_state(sweep_dir / o.name) == "done" for o in outcomes):
        files = report([sweep_dir], sweep_dir, title=f"sweep {sweep.name}")
        log(f"report: {files['summary.csv']}, {files['report.md']}")
    return outcomes


# ----------------------------------------------------------------------------- studies

def write_plan(study: Study, folder: Path) -> None:
    """study.yaml (the file as given) and study.json (the runs and what they vary) for the report."""
    folder.mkdir(parents=True, exist_ok=True)
    if study.path.resolve() != (folder / "study.yaml").resolve():
        shutil.copyfile(study.path, folder / "study.yaml")
    plan = {"name": study.name, "vary": study.vary, "runs": [asdict(r) for r in plan_study(study)]}
    (folder / PLAN_NAME).write_text(json.dumps(plan, indent=1) + "\n")


def describe_study_run(run_dir: Path) -> str:
    """A finished study run in one line: dead units at the end, ever dead, test accuracy."""
    if run_state(run_dir) != "done":
        return describe(run_dir)
    checks = death_checks(read_jsonl(run_dir / METRICS_NAME))
    summary = load_summary(run_dir)
    last = checks[-1]
    return (f"dead {100 * last['dead'] / last['units']:.1f}% of {last['units']} units "
            f"(ever dead {100 * last['ever_dead'] / last['units']:.1f}%), test acc "
            f"{100 * summary['test_acc']:.2f}%")


def run_study(path: str | Path, out: Optional[str] = None, workers: int = 1, dry_run: bool = False,
              retry_failed: bool = False, log: Log = print) -> list[Outcome]:
    """Plan, run and report a study; return every run's outcome."""
    _check_workers(workers)
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
    outcomes = run_jobs(jobs, folder, workers, retry_failed, log, describe_study_run)
    _log_totals(outcomes, log)
    if any(run_state(folder / run.name) == "done" for run in runs):
        files = study_report(folder)
        log(f"report: {files['report.md']}")
    return outcomes
