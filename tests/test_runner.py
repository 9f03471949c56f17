"""The run loop: run states, a tiny grid on synthetic data that runs, records a failing run,
resumes without redoing finished runs, adds extra seeds and writes summary.csv; worker
processes; a tiny death study that runs, resumes and reports."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from demp.cli import main
from demp.experiments.results import COLUMNS, death_checks
from demp.experiments.runner import describe, plan_extra_seeds, run_state, run_study, run_sweep
from demp.experiments.spec import load_sweep
from test_spec import write_study, write_sweep


def test_run_states_and_their_lines(tmp_path: Path):
    run = tmp_path / "run"
    assert run_state(run) == "new" and describe(run) == "new"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"")
    assert run_state(run) == "partial"
    (run / "error.txt").write_text("Traceback\nValueError: boom\n")
    assert run_state(run) == "failed" and describe(run).startswith("failed: ValueError: boom (see ")
    (run / "summary.json").write_text(json.dumps({"test_acc": 0.9, "units_remaining": 0.5,
                                                  "params_remaining": 0.25, "wall_s": 12.0}))
    assert run_state(run) == "done"
    assert describe(run) == "test acc 90.00%, units remaining 50.0%, params remaining 25.0%, wall 12 s"


def test_tiny_grid_runs_resumes_and_reports(tmp_path: Path, capsys):
    path = write_sweep(tmp_path, grid=[
        {"method": "dense"},
        {"method": "demp", "knob": [0.01, 0.3]},
        {"method": "snap", "target": [0.5]},
        {"method": "random", "target": [0.5], "set": {"model.kwargs.bogus": 1}},   # fails to build
    ], extra_seeds={"seeds": [1], "near_units_removed": [0.5]})
    out = tmp_path / "out"
    run_sweep(path, out=str(out), dry_run=True)
    planned = capsys.readouterr().out
    assert "grid: 5 runs" in planned and "demp-adamw-0.3-s0" in planned and "new" in planned
    assert not out.exists()

    outcomes = {o.name: o for o in run_sweep(path, out=str(out))}
    assert outcomes["random-adamw-0.5-s0"].status == "failed"
    assert "bogus" in (out / "random-adamw-0.5-s0" / "error.txt").read_text()
    done = {n for n, o in outcomes.items() if o.status == "done"}
    grid = {"dense-adamw-s0", "demp-adamw-0.01-s0", "demp-adamw-0.3-s0", "snap-adamw-0.5-s0"}
    assert grid | {"dense-adamw-s1", "snap-adamw-0.5-s1"} <= done        # extra seeds: dense + snap
    assert len([n for n in done if n.startswith("demp-") and n.endswith("-s1")]) == 1
    with (out / "summary.csv").open() as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 1 + len(done)
    assert (out / "report.md").is_file() and (out / "acc_vs_units.png").is_file()
    summary = json.loads((out / "dense-adamw-s0" / "summary.json").read_text())
    assert summary["method"] == "dense" and summary["seed"] == 0

    stamps = {n: (out / n / "summary.json").stat().st_mtime_ns for n in done}
    again = run_sweep(path, out=str(out))
    assert all(o.status == "skipped" for o in again) and len(again) == len(outcomes)
    assert stamps == {n: (out / n / "summary.json").stat().st_mtime_ns for n in done}
    assert "0 runs done" in capsys.readouterr().out


def test_extra_seeds_can_be_limited_to_methods_and_optimizers(tmp_path: Path):
    path = write_sweep(tmp_path, grid=[{"method": "dense", "optim": ["adamw", "sgd"]},
                                       {"method": "dense", "variant": "ablation"},
                                       {"method": "snap", "target": [0.5]}],
                       extra_seeds={"seeds": [1], "near_units_removed": [0.5], "methods": ["dense"],
                                    "optims": ["adamw"], "variants": False})
    runs, _ = plan_extra_seeds(load_sweep(path), tmp_path / "none")
    assert [r.name for r in runs] == ["dense-adamw-s1"]


def test_workers_run_in_processes(tmp_path: Path):
    path = write_sweep(tmp_path, grid=[{"method": "dense", "optim": ["adamw", "sgd"]}])
    outcomes = run_sweep(path, out=str(tmp_path / "out"), workers=2, log=lambda _: None)
    assert sorted(o.status for o in outcomes) == ["done", "done"]
    cfg = yaml.safe_load((tmp_path / "out" / "dense-sgd-s0" / "config.yaml").read_text())
    assert cfg["optim"]["name"] == "sgd" and cfg["out"] == str(tmp_path / "out" / "dense-sgd-s0")


def test_tiny_study_runs_resumes_and_reports(tmp_path: Path, capsys):
    path = write_study(tmp_path, name="tiny", vary="optim.lr", values=[1e-3, 1e-1],
                       panels={"adamw": {"optim.name": "adamw"}, "sgd": {"optim.name": "sgd"}})
    out = tmp_path / "out"
    outcomes = run_study(path, out=str(out))
    assert [o.status for o in outcomes] == ["done"] * 4
    assert "units (ever dead" in capsys.readouterr().out
    for name in ("dead_over_training.png", "final_dead.png", "overlap.png", "report.md", "study.csv"):
        assert (out / name).is_file(), name
    with (out / "study.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["adamw-0.001-s0", "adamw-0.1-s0", "sgd-0.001-s0", "sgd-0.1-s0"]
    assert all(r["units"] == "48" and 0 <= float(r["dead_frac"]) <= 1 for r in rows)
    assert {(r["dataset"], r["model"]) for r in rows} == {("synthetic", "mlp")}     # in every table
    metrics = [json.loads(x) for x in (out / "sgd-0.1-s0" / "metrics.jsonl").read_text().splitlines()]
    steps = [c["step"] for c in death_checks(metrics)]
    assert steps == [0, 2, 4]                                     # every 2 steps and after the last
    assert "| synthetic | mlp | adamw |" in (out / "report.md").read_text()

    stamps = {r["run"]: (out / r["run"] / "summary.json").stat().st_mtime_ns for r in rows}
    assert all(o.status == "skipped" for o in run_study(path, out=str(out)))
    assert stamps == {n: (out / n / "summary.json").stat().st_mtime_ns for n in stamps}

    (out / "report.md").unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").is_file() and "3 plots" in capsys.readouterr().out



def test_scratch_runs_after_its_source_and_waits_for_one_not_done(tmp_path: Path, capsys):
    """A scratch entry listed first runs after its source; one whose source failed or is not in
    the folder waits (not failed), says for what, and runs at a later sweep once the source is done."""
    path = write_sweep(tmp_path, grid=[
        {"method": "scratch", "from": ["snap-adamw-0.5-s{seed}", "demp-adamw-0.3-s0"]},
        {"method": "snap", "target": [0.5]},
        {"method": "demp", "knob": [0.3], "set": {"model.kwargs.bogus": 1}}])   # fails to build
    out = tmp_path / "out"
    run_sweep(path, out=str(out), dry_run=True)
    planned = capsys.readouterr().out
    assert planned.index("snap-adamw-0.5-s0 ") < planned.index("scratch-adamw-snap-adamw-0.5-s0 ")
    assert "scratch-adamw-snap-adamw-0.5-s0      new  (after snap-adamw-0.5-s0)" in planned

    lines = []
    outcomes = {o.name: o for o in run_sweep(path, out=str(out), log=lines.append)}
    def logged(name: str) -> int:
        return next(i for i, line in enumerate(lines) if f"] {name} (" in line)
    assert logged("snap-adamw-0.5-s0") < logged("scratch-adamw-snap-adamw-0.5-s0")
    assert outcomes["scratch-adamw-snap-adamw-0.5-s0"].status == "done"
    summary = json.loads((out / "scratch-adamw-snap-adamw-0.5-s0" / "summary.json").read_text())
    assert summary["widths_from"]["path"] == str(out / "snap-adamw-0.5-s0") and summary["knob"] == 0.5
    waiting = outcomes["scratch-adamw-demp-adamw-0.3-s0"]
    assert (waiting.status, waiting.message) == ("waiting", "waits for demp-adamw-0.3-s0 (failed)")
    assert not (out / waiting.name).exists()
    assert "1 failed (demp-adamw-0.3-s0), 1 waiting for their source (scratch-adamw-demp-adamw-0.3-s0)" in lines[-2]

    (out / "demp-adamw-0.3-s0").rename(out / "failed")   # stands for the source finished elsewhere
    (out / "snap-adamw-0.5-s0").rename(out / "demp-adamw-0.3-s0")
    again = {o.name: o.status for o in run_sweep(path, out=str(out), log=lambda _: None)}
    assert again["scratch-adamw-demp-adamw-0.3-s0"] == "done"
